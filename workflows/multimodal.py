"""``init_multimodal_coreg_wf``: another contrast (T2w, FLAIR, ...) onto the T1w image."""
from __future__ import annotations

import re

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from inrreg_pipeline.interfaces.base import fail
from inrreg_pipeline.interfaces.registration import inr_settings
from inrreg_pipeline.presets import available_presets

from .base import LiterateWorkflow
from .registration import init_inr_registration_wf

INPUT_FIELDS = ["t1w", "t1w_mask", "source_file", "source_mask", "source_labels", "t1w_labels"]
OUTPUT_FIELDS = ["source_in_t1w", "labels_in_t1w", "composite_transform", "inverse_composite_transform",
                 "forward_transforms", "forward_invert_flags", "reverse_forward_transforms",
                 "reverse_forward_invert_flags", "reverse_transforms", "reverse_invert_flags", "warped_image",
                 "jacobian", "metadata", "quality_tsv", "out_report", "jacobian_report"]


#: The shipped preset of the co-registrations: rigid (6 dof), two image channels (issue 16; see its description)
DEFAULT_MULTIMODAL_PRESET = "coreg-rigid-multimodal"


def default_multimodal_preset() -> str:
    """The preset another contrast of the same head is co-registered to the T1w with.

    ``coreg-rigid-multimodal``: a rigid (6 degrees of freedom) two-network registration with one
    image channel per contrast, as fMRIPrep co-registers T2w/FLAIR/PDw to the T1w rigidly by mutual
    information; deforming there usually does harm. It replaced ``two-network-deformable``, whose
    single image channel stored both contrasts in one and moved an already aligned synthetic pair by
    4.2 mm on average (benchmarks/results/multimodal_coreg_cpu.md). ``multimodal`` (mutual
    information, affine + deformable) if the preset is missing from the installed package.
    """
    return DEFAULT_MULTIMODAL_PRESET if DEFAULT_MULTIMODAL_PRESET in available_presets() else "multimodal"


def init_multimodal_coreg_wf(*, contrast: str = "T2w", preset: str | None = None, method: str = "auto",
                             device: str = "auto", use_gpu: bool | None = None, seed: int = 0, omp_nthreads: int = 1,
                             mem_gb: float = 4.0, orientation: str = "RAS", n4: bool = True, use_masks: bool = False,
                             resolution: float | list[float] | None = None, label_maps: bool = False,
                             t1w_labels: bool = False, sloppy: bool = False,
                             name: str = "multimodal_coreg_wf") -> LiterateWorkflow:
    """Co-register a ``contrast`` image (T2w, FLAIR, PDw, ...) to the T1w image of the same subject.

    The INR registration runs with :func:`default_multimodal_preset` (``coreg-rigid-multimodal``:
    rigid, 6 degrees of freedom, a two-channel image network, so each contrast has its own channel);
    pass ``preset`` to choose another (e.g. ``two-network-deformable-multimodal`` or ``multimodal``
    for a deformable co-registration). The T1w image is the fixed image, so the outputs live on its
    grid; the transforms map T1w world points (RAS mm) to source world points, as ANTs' do.

    ``inputnode``: ``t1w, t1w_mask, source_file, source_mask`` (masks read with ``use_masks``),
    ``source_labels`` (list, with ``label_maps``), ``t1w_labels`` (report contours, with ``t1w_labels``).
    ``outputnode``: ``source_in_t1w`` (the source image on the T1w grid), ``labels_in_t1w``, the
    ``ants.Registration``-named transforms, ``warped_image`` (preprocessed source on the
    preprocessed T1w), ``jacobian, metadata, quality_tsv, out_report`` (flicker SVG), ``jacobian_report``.
    """
    if not re.fullmatch(r"[A-Za-z0-9]+", contrast or ""):
        raise fail("contrast", f"'{contrast}' must be a BIDS suffix such as T2w or FLAIR")
    preset = default_multimodal_preset() if preset is None else preset
    workflow = LiterateWorkflow(name=name)
    settings = inr_settings(method, preset)
    kind = ("a rigid (6 degrees of freedom) multi-modal" if settings.method == "two-network"
            and settings.two_network.motion == "affine-param" and settings.two_network.affine_param_rigid
            else "a multi-modal")
    workflow.__desc__ = (f"The {contrast} image was co-registered to the T1w image with {kind} "
                         f"registration (preset `{preset}`), the T1w image being the fixed image. ")
    inputnode = pe.Node(niu.IdentityInterface(fields=INPUT_FIELDS), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=OUTPUT_FIELDS), name="outputnode")
    reg_wf = init_inr_registration_wf(method=method, preset=preset, device=device, use_gpu=use_gpu, seed=seed,
                                      omp_nthreads=omp_nthreads, mem_gb=mem_gb, orientation=orientation, n4=n4,
                                      use_masks=use_masks, resolution=resolution, label_maps=label_maps,
                                      fixed_labels=t1w_labels, label=f"{contrast}-to-T1w", sloppy=sloppy,
                                      name="inr_registration_wf")
    inputs = [("t1w", "fixed_image"), ("source_file", "moving_image")]
    if use_masks:
        inputs += [("t1w_mask", "fixed_mask"), ("source_mask", "moving_mask")]
    if label_maps:
        inputs += [("source_labels", "moving_labels")]
    if t1w_labels:
        inputs += [("t1w_labels", "fixed_labels")]
    outputs = [("moving_in_fixed", "source_in_t1w"), ("composite_transform", "composite_transform"),
               ("inverse_composite_transform", "inverse_composite_transform")] + \
        [(f, f) for f in OUTPUT_FIELDS[4:]]
    if label_maps:
        outputs.append(("labels_in_fixed", "labels_in_t1w"))
    workflow.connect([
        (inputnode, reg_wf, [(src, f"inputnode.{dst}") for src, dst in inputs]),
        (reg_wf, outputnode, [(f"outputnode.{src}", dst) for src, dst in outputs]),
    ])
    return workflow
