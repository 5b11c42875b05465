"""``init_participant_wf``: one participant (and session) of ``inrreg-bids``.

The graph is built from ``inrreg_pipeline.workflows`` factories; every derivative reaches the
output folder through a :class:`~.interfaces.DerivativeSink` (atomic copy + JSON sidecar), so the
names are decided here, at build time, from the BIDS entities of the inputs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from inrreg_pipeline.interfaces import ApplyMask, ApplyTransforms, LabelOverlap, MergeTables
from inrreg_pipeline.workflows import (LiterateWorkflow, init_ants_registration_wf, init_inr_registration_wf,
                                       init_multimodal_coreg_wf)

from .interfaces import DerivativeSink

#: anatomical contrasts co-registered to the T1w (BIDS suffixes; ce-T1w is a T1w with a ``ce`` entity)
OTHER_SUFFIXES = ("T2w", "FLAIR", "PDw", "PD", "T2starw", "T1w")
#: (pybids entity, BIDS key) kept in the names of co-registered contrasts, in BIDS order
_NAME_ENTITIES = (("acquisition", "acq"), ("ceagent", "ce"), ("reconstruction", "rec"), ("run", "run"))


@dataclass
class Template:
    name: str
    t1w: Path
    mask: Path | None = None
    dseg: Path | None = None          # evaluation labels (None: no Dice)
    contours: Path | None = None      # report contours (dseg, or tissue classes of nilearn's template)
    standard: bool = False
    reference_uri: str | None = None  # SpatialReference of the space, when not a standard one
    description: str = ""
    image_entities: str = ""          # after space-<name> in image names: TemplateFlow's [_cohort-N]_res-N
    xfm_entities: str = ""            # after to-/from-<name> in transform and table names: [_cohort-N]
    metadata: dict = field(default_factory=dict)  # sidecar fields of the space (e.g. Resolution)

    @property
    def space(self) -> str:
        """The ``space-`` value and entities of images on this template's grid (``MNI152NLin2009cAsym_res-2``)."""
        return self.name + self.image_entities

    @property
    def xfm(self) -> str:
        """The ``to-``/``from-`` value and entities of transforms to this template (``MNI152NLin2009cAsym``)."""
        return self.name + self.xfm_entities


@dataclass
class Contrast:
    path: Path
    suffix: str
    entities: dict = field(default_factory=dict)

    @property
    def name_entities(self) -> str:
        return name_entities(self.entities)


def name_entities(entities: dict) -> str:
    """``_acq-X_ce-Y_rec-Z_run-N`` from pybids entities: what tells images of one session apart."""
    return "".join(f"_{key}-{entities[ent]}" for ent, key in _NAME_ENTITIES if entities.get(ent) not in (None, ""))


@dataclass
class Participant:
    """One T1w image of a participant (and session) with what is processed alongside it.

    ``t1w_entities`` (pybids) name the image among several T1w of the session (``acq``, ``rec``,
    ``run``); its outputs carry them, e.g. ``sub-01_run-2_space-..._desc-preproc_T1w``.
    """

    subject: str
    session: str | None
    t1w: Path
    others: list[Contrast] = field(default_factory=list)
    dseg: Path | None = None
    t1w_entities: dict = field(default_factory=dict)

    @property
    def session_prefix(self) -> str:
        return f"sub-{self.subject}" + (f"_ses-{self.session}" if self.session else "")

    @property
    def prefix(self) -> str:
        return self.session_prefix + name_entities(self.t1w_entities)

    @property
    def wf_name(self) -> str:
        entities = _slug(name_entities(self.t1w_entities))
        return (f"sub_{self.subject}" + (f"_ses_{self.session}" if self.session else "")
                + (f"_{entities}" if entities else "") + "_wf")


@dataclass
class Settings:
    method: str = "auto"
    preset: str | None = None
    multimodal_preset: str | None = None
    device: str = "auto"
    compare_ants: str | None = None
    ants_scale: float = 1.0
    seed: int = 0
    omp_nthreads: int = 1
    mem_gb: float = 4.0
    skull_stripped: bool = False
    sloppy: bool = False


def anat_dir(output_dir: Path, p: Participant) -> Path:
    d = Path(output_dir) / f"sub-{p.subject}"
    if p.session:
        d = d / f"ses-{p.session}"
    return d / "anat"


def figures_dir(output_dir: Path, p: Participant) -> Path:
    return Path(output_dir) / f"sub-{p.subject}" / "figures"


def init_participant_wf(*, participant: Participant, template: Template, output_dir: Path, settings: Settings,
                        source_uri, name: str | None = None) -> LiterateWorkflow:
    """Register ``participant.t1w`` to ``template`` (INR, and ANTs with ``settings.compare_ants``),
    co-register the other contrasts to the T1w, evaluate, and sink everything into ``output_dir``.

    ``source_uri(path) -> str`` gives the ``bids:`` URI of an input file (JSON ``Sources``).
    """
    p, tpl, s = participant, template, settings
    wf = LiterateWorkflow(name=name or p.wf_name)
    anat, figs = anat_dir(output_dir, p), figures_dir(output_dir, p)
    pre = p.prefix
    has_labels = p.dseg is not None and tpl.dseg is not None
    t1_src = [source_uri(p.t1w)] + ([source_uri(p.dseg)] if has_labels else [])
    spatial = {**tpl.metadata, **({"SpatialReference": tpl.reference_uri} if tpl.reference_uri else {})}
    wf.__desc__ = (f"Each participant's T1w image was registered to the {tpl.description or tpl.name} template "
                   f"(space `{tpl.space}`)" + (" (inputs skull-stripped beforehand)" if s.skull_stripped else "")
                   + (", with inrreg and, for comparison, with ANTs" if s.compare_ants else "") + ". ")

    methods = {"inr": init_inr_registration_wf(
        method=s.method, preset=s.preset, device=s.device, seed=s.seed, omp_nthreads=s.omp_nthreads,
        mem_gb=s.mem_gb, label_maps=has_labels, fixed_labels=tpl.contours is not None, label="inr",
        sloppy=s.sloppy, name="t1w_to_template_inr_wf")}
    if s.compare_ants:
        methods["ants"] = init_ants_registration_wf(
            preset=s.compare_ants, scale_iterations=s.ants_scale, seed=s.seed, omp_nthreads=s.omp_nthreads,
            mem_gb=s.mem_gb, label_maps=has_labels, fixed_labels=tpl.contours is not None, label="ants",
            sloppy=s.sloppy, name="t1w_to_template_ants_wf")

    def sink(node_name, src_node, src_field, out_path, metadata=None, reg_json_from=None):
        node = pe.Node(DerivativeSink(out_file=str(out_path)), name=node_name, run_without_submitting=True,
                       overwrite=True)
        if metadata is not None:
            node.inputs.metadata = metadata
        wf.connect(src_node, src_field, node, "in_file")
        if reg_json_from is not None:
            wf.connect(reg_json_from[0], reg_json_from[1], node, "registration_json")
        return node

    tables = pe.Node(niu.Merge(2 * len(methods)), name="collect_tables", run_without_submitting=True)
    label_tables = pe.Node(niu.Merge(len(methods)), name="collect_label_tables", run_without_submitting=True)
    slot = 1
    for b, (key, reg_wf) in enumerate(methods.items()):
        reg_wf.inputs.inputnode.fixed_image = str(tpl.t1w)
        reg_wf.inputs.inputnode.moving_image = str(p.t1w)
        if tpl.contours is not None:
            reg_wf.inputs.inputnode.fixed_labels = str(tpl.contours)
        if has_labels:
            reg_wf.inputs.inputnode.moving_labels = [str(p.dseg)]
        wf.add_nodes([reg_wf])
        desc_ents = "" if key == "inr" else f"_desc-{key}"
        img_desc = {"inr": "preproc"}.get(key, f"{key}preproc")
        jac_desc = {"inr": "jacobian"}.get(key, f"{key}jacobian")
        what = "inrreg (INR)" if key == "inr" else f"ANTs ({s.compare_ants})"
        reg_out = (reg_wf, "outputnode.metadata")
        common = {"Sources": t1_src, "RegistrationMethod": what, **spatial}
        sink(f"ds_{key}_xfm", reg_wf, "outputnode.composite_transform",
             anat / f"{pre}_from-T1w_to-{tpl.xfm}_mode-image{desc_ents}_xfm.h5",
             {**common, "Description": f"T1w to {tpl.name}: ITK/ANTs composite (antsApplyTransforms resamples the "
                                       f"T1w onto the template grid with it)"}, reg_out)
        sink(f"ds_{key}_inv_xfm", reg_wf, "outputnode.inverse_composite_transform",
             anat / f"{pre}_from-{tpl.xfm}_to-T1w_mode-image{desc_ents}_xfm.h5",
             {**common, "Description": f"{tpl.name} to T1w: inverse of the composite above"}, reg_out)
        sink(f"ds_{key}_t1w_std", reg_wf, "outputnode.moving_in_fixed",
             anat / f"{pre}_space-{tpl.space}_desc-{img_desc}_T1w.nii.gz",
             {**common, "Description": f"T1w resampled onto the {tpl.name} grid (linear)"}, reg_out)
        sink(f"ds_{key}_jacobian", reg_wf, "outputnode.jacobian",
             anat / f"{pre}_space-{tpl.space}_desc-{jac_desc}_T1w.nii.gz",
             {**common, "Description": "Jacobian determinant det(I + du/dx) of the deformable part of the "
                                       "T1w-to-template transform, on the template processing grid; <= 0: folding",
              "Units": "arbitrary (volume ratio)"})
        sink(f"ds_{key}_flicker", reg_wf, "outputnode.out_report",
             figs / f"{pre}_space-{tpl.space}_desc-{key}_T1w.svg")
        sink(f"ds_{key}_jacobian_report", reg_wf, "outputnode.jacobian_report",
             figs / f"{pre}_space-{tpl.space}_desc-{key}jacobian_T1w.svg")
        wf.connect(reg_wf, "outputnode.quality_tsv", tables, f"in{slot}")
        slot += 1
        if has_labels:
            sink(f"ds_{key}_dseg", reg_wf, "outputnode.labels_in_fixed",
                 anat / f"{pre}_space-{tpl.space}{desc_ents}_dseg.nii.gz",
                 {**common, "Description": f"participant labels resampled onto the {tpl.name} grid "
                                           f"(label-aware interpolation)"})
            overlap = pe.Node(LabelOverlap(reference=str(tpl.dseg), tags={"method": key}),
                              name=f"{key}_label_overlap", mem_gb=1.0)
            wf.connect([(reg_wf, overlap, [(("outputnode.labels_in_fixed", _first), "test")]),
                        (overlap, tables, [("out_summary", f"in{slot}")]),
                        (overlap, label_tables, [("out_labels", f"in{b + 1}")])])
        slot += 1

    # evaluation table: one row per method (transform quality, runtime, device and label overlap)
    merge = pe.Node(MergeTables(join_on=["method"], out_name="evaluation.tsv"), name="merge_evaluation",
                    run_without_submitting=True)
    wf.connect(tables, ("out", _present), merge, "in_files")
    sink("ds_evaluation", merge, "out_file", anat / f"{pre}_from-T1w_to-{tpl.xfm}_desc-evaluation_metrics.tsv",
         {"Sources": t1_src, **spatial,
          "Description": "One row per method: folding_percent (% voxels with det J <= 0 in the template mask), "
                         "log_jacobian_std, inverse consistency (mm), runtime, device"
                         + ("; Dice/Jaccard/HD95/ASSD means between the warped participant labels and the "
                            "template labels" if has_labels else "")})
    if has_labels:
        merge_labels = pe.Node(MergeTables(out_name="labels.tsv"), name="merge_label_tables",
                               run_without_submitting=True)
        wf.connect(label_tables, "out", merge_labels, "in_files")
        sink("ds_label_evaluation", merge_labels, "out_file",
             anat / f"{pre}_from-T1w_to-{tpl.xfm}_desc-labels_metrics.tsv",
             {"Sources": t1_src + [source_uri(tpl.dseg)] if tpl.reference_uri is None else t1_src,
              "Description": "Per label and method: Dice, Jaccard, volumes, HD95 and ASSD (mm)"})

    inr = methods["inr"]
    if not s.skull_stripped and tpl.mask is not None:
        # brain mask: the template mask brought back onto the T1w grid through the inverse transform
        mask_to_t1w = pe.Node(ApplyTransforms(input_image=str(tpl.mask), reference_image=str(p.t1w),
                                              interpolation="NearestNeighbor", output_image="brain_mask.nii.gz"),
                              name="template_mask_to_t1w", mem_gb=1.0)
        wf.connect(inr, ("outputnode.inverse_composite_transform", _as_list), mask_to_t1w, "transforms")
        sink("ds_brain_mask", mask_to_t1w, "output_image", anat / f"{pre}_desc-brain_mask.nii.gz",
             {"Sources": [source_uri(p.t1w)], "Type": "Brain",
              "Description": f"Brain mask on the T1w grid: the {tpl.name} brain mask resampled through the "
                             f"inverse of the INR T1w-to-template transform (nearest neighbour); no separate "
                             f"skull-stripping step"})
        skullstrip = pe.Node(ApplyMask(in_file=str(p.t1w)), name="apply_brain_mask", mem_gb=0.5)
        wf.connect(mask_to_t1w, "output_image", skullstrip, "in_mask")
        sink("ds_brain_t1w", skullstrip, "out_file", anat / f"{pre}_desc-brain_T1w.nii.gz",
             {"Sources": [source_uri(p.t1w)],
              "Description": "T1w with the brain mask above applied (voxels outside set to 0)"})
        wf.__postdesc__ = ("A brain mask of the T1w image was obtained by resampling the template's brain mask "
                           "through the inverse of the estimated transform, and applied to it (the registration itself used "
                           "the whole image). ")

    # other anatomical contrasts onto the T1w (the session's first T1w when it has several: named by
    # the contrast's own entities; the JSON's Sources say which T1w)
    session = p.session_prefix  # not p.prefix: the contrast is named by its own entities
    for c in p.others:
        contrast = c.suffix if not c.entities.get("ceagent") else f"ce{c.entities['ceagent']}{c.suffix}"
        contrast = "".join(ch for ch in contrast if ch.isalnum())
        ents = c.name_entities
        co = init_multimodal_coreg_wf(contrast=contrast, preset=s.multimodal_preset, method="auto",
                                      device=s.device, seed=s.seed, omp_nthreads=s.omp_nthreads, mem_gb=s.mem_gb,
                                      sloppy=s.sloppy, name=f"{contrast.lower()}{_slug(ents)}_to_t1w_wf")
        co.inputs.inputnode.t1w = str(p.t1w)
        co.inputs.inputnode.source_file = str(c.path)
        wf.add_nodes([co])
        key = f"{contrast.lower()}{_slug(ents)}"
        meta = {"Sources": [source_uri(c.path), source_uri(p.t1w)]}
        sink(f"ds_{key}_t1w", co, "outputnode.source_in_t1w",
             anat / f"{session}{ents}_space-T1w_desc-preproc_{c.suffix}.nii.gz",
             {**meta, "Description": f"{c.suffix} co-registered and resampled onto the T1w grid"},
             (co, "outputnode.metadata"))
        sink(f"ds_{key}_xfm", co, "outputnode.composite_transform",
             anat / f"{session}{ents}_from-{c.suffix}_to-T1w_mode-image_xfm.h5", meta, (co, "outputnode.metadata"))
        sink(f"ds_{key}_inv_xfm", co, "outputnode.inverse_composite_transform",
             anat / f"{session}{ents}_from-T1w_to-{c.suffix}_mode-image_xfm.h5", meta, (co, "outputnode.metadata"))
        sink(f"ds_{key}_flicker", co, "outputnode.out_report",
             figs / f"{session}{ents}_space-T1w_desc-coreg_{c.suffix}.svg")
    return wf


def _first(value):
    return value[0] if isinstance(value, (list, tuple)) else value


def _as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _present(values):
    """Merge's output without the empty slots (no label table for a method without labels)."""
    return [v for v in values if v]


def _slug(ents: str) -> str:
    return "".join(ch for ch in ents if ch.isalnum())
