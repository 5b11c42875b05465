"""Report interfaces: fMRIPrep-style before/after "flicker" SVGs, Jacobian figures, comparison plots.

The flicker reportlet is built as niworkflows' ``SimpleBeforeAfter`` builds it: two mosaics of the
same slices drawn by nilearn's ``plot_anat`` (one per image: the fixed image, and the moving image
warped onto it), the same contours on both (the fixed image's labels or tissue boundaries), saved
as SVG and stacked in one SVG whose top layer fades in and out while the pointer is over it (CSS
animation, the ``background-svg`` / ``foreground-svg`` classes of niworkflows' ``compose_view``).
``nireports``/``svgutils`` are not needed: the two matplotlib SVGs are nested as they are.
"""
from __future__ import annotations

import csv
import hashlib
import io
import math
import re

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from ..io.images import InputError, load_image
from .base import fail, optional, output_path

_LABEL_COLOURS = ("#ff3b30", "#34c759", "#0a84ff", "#ffcc00", "#bf5af2", "#ff9f0a", "#64d2ff", "#ff2d55")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _nifti(path: str, name: str):
    try:
        load_image(path, name)  # the usual checks (exists, 2-/3-D, finite, affine)
    except InputError as err:
        raise fail(name, str(err)) from None
    img = nib.load(path)
    data = np.asarray(img.get_fdata(dtype=np.float32))
    while data.ndim > 3:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[:, :, None]
    out = nib.Nifti1Image(data, img.affine)
    return out


def _world_foreground_bbox(img, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    data = np.asarray(img.dataobj)
    if mask is None:
        finite = data[np.isfinite(data)]
        thr = np.percentile(finite, 99) * 0.1 if finite.size else 0
        mask = data > thr
    if not mask.any():
        mask = np.ones(data.shape, bool)
    idx = np.argwhere(mask)
    lo, hi = idx.min(0), idx.max(0)
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])], float)
    world = corners @ img.affine[:3, :3].T + img.affine[:3, 3]
    return world.min(0), world.max(0)


def cuts_from_bbox(img, n_cuts: int = 7, mask: np.ndarray | None = None) -> dict[str, list[float]]:
    """World coordinates of ``n_cuts`` evenly spaced slices per axis inside the foreground (as
    niworkflows' ``cuts_from_bbox``); a 2-D image (one slice thick) gives its single axial cut."""
    lo, hi = _world_foreground_bbox(img, mask)
    if 1 in img.shape[:3]:
        return {"z": [float((lo[2] + hi[2]) / 2)]}
    cuts = {}
    for axis, mode in enumerate("xyz"):
        cuts[mode] = [float(v) for v in np.linspace(lo[axis], hi[axis], n_cuts + 2)[1:-1]]
    return cuts


def _intensity_range(data: np.ndarray) -> tuple[float, float]:
    values = data[np.isfinite(data) & (data != 0)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, [2, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1)


def tissue_levels(data: np.ndarray, n_classes: int = 3) -> list[float]:
    """Contour levels between intensity classes of the foreground (1-D k-means): tissue boundaries."""
    values = data[np.isfinite(data)]
    values = values[values > np.percentile(values, 99) * 0.1] if values.size else values
    if values.size < n_classes:
        return []
    centres = np.percentile(values, np.linspace(15, 85, n_classes))
    for _ in range(50):
        assign = np.argmin(np.abs(values[:, None] - centres[None]), axis=1)
        new = np.array([values[assign == k].mean() if np.any(assign == k) else centres[k] for k in range(n_classes)])
        if np.allclose(new, centres):
            break
        centres = new
    centres = np.sort(centres)
    return [float(v) for v in (centres[:-1] + centres[1:]) / 2]


def _label_edges(labels: np.ndarray) -> np.ndarray:
    """Voxels whose label differs from a face neighbour's (boundaries of every label at once)."""
    edge = np.zeros(labels.shape, bool)
    for axis in range(labels.ndim):
        if labels.shape[axis] < 2:
            continue
        diff = np.diff(labels, axis=axis) != 0
        pad_lo = [(0, 0)] * labels.ndim
        pad_hi = [(0, 0)] * labels.ndim
        pad_lo[axis] = (1, 0)
        pad_hi[axis] = (0, 1)
        edge |= np.pad(diff, pad_lo) | np.pad(diff, pad_hi)
    return edge


def _add_contours(display, contour_img, contour_kind: str, fixed_img) -> None:
    if contour_img is not None:
        labels = np.rint(np.asarray(contour_img.dataobj)).astype(np.int64)
        values = [int(v) for v in np.unique(labels) if v != 0]
        if contour_kind == "labels" and 0 < len(values) <= len(_LABEL_COLOURS):
            for value, colour in zip(values, _LABEL_COLOURS):
                binary = nib.Nifti1Image((labels == value).astype(np.float32), contour_img.affine)
                display.add_contours(binary, levels=[0.5], colors=[colour], linewidths=0.6)
        elif values:
            edges = nib.Nifti1Image(_label_edges(labels).astype(np.float32), contour_img.affine)
            display.add_contours(edges, levels=[0.5], colors=["#ff3b30"], linewidths=0.4)
        return
    levels = tissue_levels(np.asarray(fixed_img.dataobj))
    if levels:
        colours = ["#0a84ff", "#ff3b30", "#ffcc00"][: len(levels)]
        display.add_contours(fixed_img, levels=levels, colors=colours, linewidths=0.6)


def plot_mosaic_svg(img, cuts: dict[str, list[float]], contour_img, contour_kind: str, fixed_img, salt: str,
                    title: str | None = None, fmt: str = "svg"):
    """One nilearn ``plot_anat`` row per axis in ``cuts``, with contours; returns the SVG text
    (or PNG bytes with ``fmt='png'``, for a look without an SVG viewer)."""
    from nilearn.plotting import plot_anat

    plt = _pyplot()
    vmin, vmax = _intensity_range(np.asarray(img.dataobj))
    rows = list(cuts)
    ncut = max(len(v) for v in cuts.values())
    fig = plt.figure(figsize=(1.6 * ncut, 1.9 * len(rows)), facecolor="black")
    try:
        for r, mode in enumerate(rows):
            height = 1.0 / len(rows)
            display = plot_anat(img, display_mode=mode, cut_coords=cuts[mode], figure=fig,
                                axes=[0.0, 1.0 - (r + 1) * height, 1.0, height], annotate=True,
                                draw_cross=False, black_bg=True, dim=0, vmin=vmin, vmax=vmax, colorbar=False,
                                title=title if r == 0 else None)
            _add_contours(display, contour_img, contour_kind, fixed_img)

        with plt.rc_context({"svg.hashsalt": salt, "svg.fonttype": "none"}):
            buffer = io.StringIO() if fmt == "svg" else io.BytesIO()
            fig.savefig(buffer, format=fmt, facecolor="black")
        return buffer.getvalue()
    finally:
        plt.close(fig)


def _format(path: str) -> str:
    """Figure format from the output name (``.svg`` unless another matplotlib format is named)."""
    suffix = path.rsplit(".", 1)[-1].lower() if "." in path else ""
    return suffix if suffix in ("svg", "png", "pdf") else "svg"


def _strip_prolog(svg: str) -> str:
    svg = re.sub(r"<\?xml[^>]*\?>", "", svg)
    svg = re.sub(r"<!DOCTYPE[^>]*>", "", svg, flags=re.S)
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    return svg.strip()


def _prefix_ids(svg: str, prefix: str) -> str:
    """Give every ``id`` of ``svg`` the prefix (and a suffix where matplotlib repeated one), and
    point ``url(#...)`` / ``href="#..."`` references at the renamed first occurrence, so two
    layers nested in one document never share an id."""
    mapping: dict[str, str] = {}
    seen: dict[str, int] = {}

    def rename(match: re.Match) -> str:
        old = match.group(1)
        count = seen.get(old, 0)
        seen[old] = count + 1
        new = f"{prefix}-{old}" if count == 0 else f"{prefix}-{old}-{count}"
        mapping.setdefault(old, new)
        return f'id="{new}"'

    svg = re.sub(r'\bid="([^"]+)"', rename, svg)

    def point(match: re.Match) -> str:
        return f"{match.group(1)}{mapping.get(match.group(2), match.group(2))}"

    return re.sub(r'(url\(#|href="#)([^")]+)', point, svg)


def compose_flicker(before_svg: str, after_svg: str) -> str:
    """One SVG with ``before`` below and ``after`` on top; hovering plays an opacity flicker of the
    top layer (niworkflows' ``compose_view`` markup and CSS)."""
    match = re.search(r"<svg[^>]*?\swidth=\"([^\"]+)\"[^>]*?\sheight=\"([^\"]+)\"[^>]*?viewBox=\"([^\"]+)\"",
                      before_svg, flags=re.S)
    width, height, viewbox = match.groups() if match else ("100%", "100%", "0 0 100 100")
    key = hashlib.sha1((before_svg + after_svg).encode()).hexdigest()[:8]
    return (
        '<?xml version="1.0" encoding="utf-8" standalone="no"?>\n'
        f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" version="1.1" '
        f'width="{width}" height="{height}" viewBox="{viewbox}" preserveAspectRatio="xMidYMid meet">\n'
        '<style type="text/css">\n'
        f"@keyframes flickerAnimation{key} {{ 0% {{opacity: 1;}} 100% {{opacity: 0;}} }}\n"
        f".foreground-svg {{ animation: 1s ease-in-out 0s alternate none infinite paused flickerAnimation{key}; }}\n"
        ".foreground-svg:hover { animation-play-state: running; }\n"
        "</style>\n"
        f'<g class="background-svg">\n{_prefix_ids(_strip_prolog(before_svg), "before")}\n</g>\n'
        f'<g class="foreground-svg">\n{_prefix_ids(_strip_prolog(after_svg), "after")}\n</g>\n'
        "</svg>\n"
    )


# --------------------------------------------------------------------------------------------
class RegistrationFlickerInputSpec(BaseInterfaceInputSpec):
    fixed_image = File(exists=True, mandatory=True, desc="fixed image (the 'before' / reference layer)")
    warped_image = File(exists=True, mandatory=True, desc="moving image warped onto the fixed grid (the 'after' layer)")
    contours = File(exists=True, desc="label map or tissue segmentation in fixed space whose boundaries are drawn "
                                      "on both layers (default: tissue boundaries from the fixed intensities)")
    contour_kind = traits.Enum("labels", "edges", usedefault=True,
                               desc="'labels': one colour per label (<= 8 labels); 'edges': all boundaries in one colour")
    mask = File(exists=True, desc="region used to place the slices (default: foreground of the fixed image)")
    n_cuts = traits.Range(low=1, high=20, value=7, usedefault=True, desc="slices per axis")
    before_label = traits.Str("fixed", usedefault=True, desc="title of the bottom layer")
    after_label = traits.Str("warped moving", usedefault=True, desc="title of the top layer")
    out_report = traits.Str("registration_flicker.svg", usedefault=True, desc="output name (node directory)")


class RegistrationFlickerOutputSpec(TraitedSpec):
    out_report = File(exists=True, desc="before/after flicker SVG")


class RegistrationFlicker(SimpleInterface):
    """fMRIPrep-style before/after reportlet of a registration (fixed vs warped moving + contours)."""

    input_spec = RegistrationFlickerInputSpec
    output_spec = RegistrationFlickerOutputSpec

    def _run_interface(self, runtime):
        fixed = _nifti(self.inputs.fixed_image, "fixed_image")
        warped = _nifti(self.inputs.warped_image, "warped_image")
        if fixed.shape != warped.shape or not np.allclose(fixed.affine, warped.affine, atol=1e-3):
            raise fail("warped_image", f"'{self.inputs.warped_image}' is not on the fixed image's grid "
                                       f"(shape {warped.shape} vs {fixed.shape})")
        contour_img = _nifti(self.inputs.contours, "contours") if optional(self.inputs.contours) else None
        mask = None
        if optional(self.inputs.mask):
            mask_img = _nifti(self.inputs.mask, "mask")
            if mask_img.shape != fixed.shape:
                raise fail("mask", f"'{self.inputs.mask}' is not on the fixed image's grid")
            mask = np.asarray(mask_img.dataobj) > 0
        cuts = cuts_from_bbox(fixed, self.inputs.n_cuts, mask)
        kind = self.inputs.contour_kind
        before = plot_mosaic_svg(fixed, cuts, contour_img, kind, fixed, "before", self.inputs.before_label)
        after = plot_mosaic_svg(warped, cuts, contour_img, kind, fixed, "after", self.inputs.after_label)
        out = output_path(runtime.cwd, self.inputs.out_report)
        with open(out, "w") as fh:
            fh.write(compose_flicker(before, after))
        self._results["out_report"] = out
        return runtime


# --------------------------------------------------------------------------------------------
class JacobianReportInputSpec(BaseInterfaceInputSpec):
    jacobian = File(exists=True, mandatory=True, desc="det J image on the fixed grid")
    fixed_image = File(exists=True, mandatory=True, desc="background (fixed image)")
    mask = File(exists=True, desc="region for the histogram and the folding count (default: whole grid)")
    n_cuts = traits.Range(low=1, high=20, value=7, usedefault=True, desc="axial slices")
    title = traits.Str("Jacobian determinant", usedefault=True, desc="figure title")
    out_report = traits.Str("jacobian.svg", usedefault=True, desc="output name (node directory)")


class JacobianReportOutputSpec(TraitedSpec):
    out_report = File(exists=True, desc="SVG: log det J over the fixed image, folded voxels outlined, histogram")


class JacobianReport(SimpleInterface):
    """log(det J) as a nilearn stat map over the fixed image, folding outlined, plus its histogram."""

    input_spec = JacobianReportInputSpec
    output_spec = JacobianReportOutputSpec

    def _run_interface(self, runtime):
        from nilearn.plotting import plot_stat_map

        plt = _pyplot()
        jac = _nifti(self.inputs.jacobian, "jacobian")
        fixed = _nifti(self.inputs.fixed_image, "fixed_image")
        det = np.asarray(jac.dataobj, dtype=np.float64)
        mask = np.ones(det.shape, bool)
        if optional(self.inputs.mask):
            mask_img = _nifti(self.inputs.mask, "mask")
            if mask_img.shape != det.shape:
                raise fail("mask", f"'{self.inputs.mask}' is not on the grid of the jacobian")
            mask = np.asarray(mask_img.dataobj) > 0
        log_det = np.log(np.clip(det, 1e-3, None))
        log_det[det <= 0] = np.log(1e-3)
        vmax = float(max(0.05, np.percentile(np.abs(log_det[mask]), 99))) if mask.any() else 1.0
        folded = 100.0 * float(np.mean(det[mask] <= 0)) if mask.any() else float("nan")
        cuts = cuts_from_bbox(fixed, self.inputs.n_cuts, mask if mask.any() else None)
        mode = "z"
        fig = plt.figure(figsize=(1.6 * len(cuts[mode]) + 3.0, 2.4), facecolor="white")
        try:
            display = plot_stat_map(
                nib.Nifti1Image((log_det * mask).astype(np.float32), jac.affine), bg_img=fixed, display_mode=mode,
                cut_coords=cuts[mode], figure=fig, axes=[0.0, 0.0, 0.78, 0.9], threshold=1e-6, vmax=vmax,
                cmap="RdBu_r", symmetric_cbar=True, draw_cross=False, black_bg=True, dim=0, colorbar=True,
                title=f"{self.inputs.title}: log det J ({folded:.3f}% folded)")
            if np.any(mask & (det <= 0)):
                display.add_contours(nib.Nifti1Image((mask & (det <= 0)).astype(np.float32), jac.affine),
                                     levels=[0.5], colors=["yellow"], linewidths=0.8)
            ax = fig.add_axes([0.83, 0.2, 0.15, 0.65])
            values = det[mask] if mask.any() else det.ravel()
            ax.hist(values, bins=60, color="#555555")
            ax.axvline(1.0, color="#0a84ff", lw=0.8)
            if np.any(values <= 0):
                ax.axvline(0.0, color="#ff3b30", lw=0.8)
            ax.set_xlabel("det J", fontsize=7)
            ax.tick_params(labelsize=6)
            out = output_path(runtime.cwd, self.inputs.out_report)
            with plt.rc_context({"svg.hashsalt": "jacobian", "svg.fonttype": "none"}):
                fig.savefig(out, format=_format(out))
        finally:
            plt.close(fig)
        self._results["out_report"] = out
        return runtime


# --------------------------------------------------------------------------------------------
class ComparisonFigureInputSpec(BaseInterfaceInputSpec):
    summary_tsv = File(exists=True, mandatory=True, desc="one row per method (column 'method')")
    labels_tsv = File(exists=True, desc="per-label overlap rows of every method (columns method, label, dice)")
    out_report = traits.Str("comparison.svg", usedefault=True, desc="output name (node directory)")


class ComparisonFigureOutputSpec(TraitedSpec):
    out_report = File(exists=True, desc="SVG comparing the methods")


_SUMMARY_PANELS = (("mean_dice", "mean Dice"), ("mean_hd95_mm", "mean HD95 (mm)"), ("tre_mean_mm", "TRE (mm)"),
                   ("folding_percent", "% det J <= 0"), ("log_jacobian_std", "SD log det J"),
                   ("inverse_consistency_mm", "inverse consistency (mm)"), ("runtime_s", "runtime (s)"))


def _as_float(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")


class ComparisonFigure(SimpleInterface):
    """Side-by-side figure of the methods: Dice per label, then one bar panel per summary metric."""

    input_spec = ComparisonFigureInputSpec
    output_spec = ComparisonFigureOutputSpec

    def _run_interface(self, runtime):
        plt = _pyplot()
        with open(self.inputs.summary_tsv, newline="") as fh:
            summary = list(csv.DictReader(fh, delimiter="\t"))
        if not summary or "method" not in summary[0]:
            raise fail("summary_tsv", f"'{self.inputs.summary_tsv}' needs rows with a 'method' column")
        methods = [row["method"] for row in summary]
        per_label: dict[str, list[float]] = {}
        if optional(self.inputs.labels_tsv):
            with open(self.inputs.labels_tsv, newline="") as fh:
                for row in csv.DictReader(fh, delimiter="\t"):
                    if row.get("method") in methods and row.get("status", "ok") in ("ok", "missing_in_test"):
                        per_label.setdefault(row["method"], []).append(_as_float(row.get("dice")))
        panels = [(k, t) for k, t in _SUMMARY_PANELS
                  if any(math.isfinite(_as_float(row.get(k))) for row in summary)]
        n = len(panels) + (1 if per_label else 0)
        fig, axes = plt.subplots(1, max(n, 1), figsize=(2.3 * max(n, 1), 2.6), squeeze=False)
        colours = ["#0a84ff", "#ff9f0a", "#34c759", "#bf5af2"]
        try:
            i = 0
            if per_label:
                ax = axes[0, 0]
                data = [per_label.get(m, []) for m in methods]
                ax.boxplot([d if d else [np.nan] for d in data], widths=0.5)
                for j, values in enumerate(data):
                    jitter = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else [0.0]
                    ax.scatter(np.full(len(values), j + 1) + jitter, values, s=6, color=colours[j % 4], zorder=3)
                ax.set_xticks(range(1, len(methods) + 1), methods, fontsize=7)
                ax.set_title("Dice per label", fontsize=8)
                ax.tick_params(labelsize=6)
                i = 1
            for key, title in panels:
                ax = axes[0, i]
                values = [_as_float(row.get(key)) for row in summary]
                ax.bar(range(len(methods)), [v if math.isfinite(v) else 0 for v in values],
                       color=[colours[j % 4] for j in range(len(methods))])
                ax.set_xticks(range(len(methods)), methods, fontsize=7)
                ax.set_title(title, fontsize=8)
                ax.tick_params(labelsize=6)
                i += 1
            fig.tight_layout()
            out = output_path(runtime.cwd, self.inputs.out_report)
            with plt.rc_context({"svg.hashsalt": "comparison", "svg.fonttype": "none"}):
                fig.savefig(out, format=_format(out))
        finally:
            plt.close(fig)
        self._results["out_report"] = out
        return runtime
