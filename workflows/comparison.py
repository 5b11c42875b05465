"""``init_registration_comparison_wf``: the same pair through inrreg and ANTs, evaluated side by side."""
from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from inrreg_pipeline.interfaces import ComparisonFigure, LabelOverlap, LandmarkError, MergeTables
from inrreg_pipeline.interfaces.base import fail

from .base import LiterateWorkflow, version
from .registration import init_ants_registration_wf, init_inr_registration_wf

INPUT_FIELDS = ["fixed_image", "moving_image", "fixed_mask", "moving_mask", "fixed_labels", "moving_labels",
                "fixed_landmarks", "moving_landmarks"]
OUTPUT_FIELDS = ["comparison_tsv", "labels_tsv", "landmarks_tsv", "comparison_figure",
                 "inr_report", "ants_report", "inr_jacobian_report", "ants_jacobian_report",
                 "inr_labels_in_fixed", "ants_labels_in_fixed", "inr_moving_in_fixed", "ants_moving_in_fixed",
                 "inr_composite_transform", "ants_composite_transform"]


def init_registration_comparison_wf(*, has_labels: bool = True, has_landmarks: bool = False,
                                    method: str = "auto", preset: str | None = None, device: str = "auto",
                                    use_gpu: bool | None = None, ants_preset: str = "ants-syn-cc",
                                    scale_iterations: float = 1.0, seed: int = 0, omp_nthreads: int = 1,
                                    mem_gb: float = 4.0, orientation: str = "RAS", n4: bool = True,
                                    use_masks: bool = False, resolution: float | list[float] | None = None,
                                    landmark_convention: str = "auto", sloppy: bool = False,
                                    name: str = "registration_comparison_wf") -> LiterateWorkflow:
    """Register the same pair with inrreg and with ANTs and evaluate both the same way.

    With ``has_labels``, ``moving_labels`` (one label map) is brought onto the fixed grid by each
    method and compared with ``fixed_labels`` (Dice, Jaccard, HD95, ASSD per label); with
    ``has_landmarks``, the fixed landmarks are mapped through each transform and compared with the
    moving landmarks (TRE). Transform quality (folding, SD log det J, inverse consistency) and runtime
    come from each registration workflow. Everything is merged into one TSV with one row per method
    (``method`` = ``inr`` / ``ants``) and drawn in one comparison figure.

    ``inputnode``: ``fixed_image, moving_image, fixed_mask, moving_mask, fixed_labels, moving_labels,
    fixed_landmarks, moving_landmarks``.
    ``outputnode``: ``comparison_tsv`` (one row per method), ``labels_tsv`` (per-label rows of both),
    ``landmarks_tsv`` (per-landmark rows of both), ``comparison_figure`` (SVG), ``inr_report`` /
    ``ants_report`` (flicker SVGs), ``inr_jacobian_report`` / ``ants_jacobian_report``,
    ``inr_labels_in_fixed`` / ``ants_labels_in_fixed``, ``inr_moving_in_fixed`` / ``ants_moving_in_fixed``,
    ``inr_composite_transform`` / ``ants_composite_transform``.
    """
    if not (has_labels or has_landmarks):
        raise fail("has_labels", "the comparison needs fixed/moving labels and/or landmarks to evaluate")
    workflow = LiterateWorkflow(name=name)
    evaluations = []
    if has_labels:
        evaluations.append("the overlap of the moving label map, resampled through each method's transforms, with the "
                           "fixed label map (Dice and Jaccard coefficients, 95th-percentile Hausdorff distance and "
                           "average symmetric surface distance in mm, per label)")
    if has_landmarks:
        evaluations.append("the target registration error of corresponding landmarks (mm)")
    workflow.__desc__ = (
        "The same image pair, after the same preprocessing, was registered with inrreg and with ANTs. "
    )
    workflow.__postdesc__ = (
        f"Both results were evaluated by {' and by '.join(evaluations)}, together with the transforms' folding, "
        f"log-Jacobian spread, inverse consistency and runtime; tables and figures were made with nilearn "
        f"{version('nilearn')} [@nilearn] and matplotlib {version('matplotlib')}. "
    )

    inputnode = pe.Node(niu.IdentityInterface(fields=INPUT_FIELDS), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=OUTPUT_FIELDS), name="outputnode")

    common = dict(seed=seed, omp_nthreads=omp_nthreads, mem_gb=mem_gb, orientation=orientation, n4=n4,
                  use_masks=use_masks, resolution=resolution, label_maps=has_labels, fixed_labels=has_labels,
                  sloppy=sloppy)
    branches = {
        "inr": init_inr_registration_wf(method=method, preset=preset, device=device, use_gpu=use_gpu, label="inr",
                                        name="inr_registration_wf", **common),
        "ants": init_ants_registration_wf(preset=ants_preset, scale_iterations=scale_iterations, label="ants",
                                          name="ants_registration_wf", **common),
    }
    n_tables = 1 + int(has_labels) + int(has_landmarks)
    summaries = pe.Node(niu.Merge(n_tables * 2), name="collect_summaries", run_without_submitting=True)
    if has_labels:
        per_label = pe.Node(niu.Merge(2), name="collect_label_tables", run_without_submitting=True)
    if has_landmarks:
        per_point = pe.Node(niu.Merge(2), name="collect_landmark_tables", run_without_submitting=True)
    fields = ["fixed_image", "moving_image"] + (["fixed_mask", "moving_mask"] if use_masks else []) + \
        (["fixed_labels"] if has_labels else [])
    slot = 1
    for b, (key, wf) in enumerate(branches.items()):
        workflow.connect([(inputnode, wf, [(f, f"inputnode.{f}") for f in fields])])
        if has_labels:
            workflow.connect(inputnode, ("moving_labels", _as_list), wf, "inputnode.moving_labels")
        workflow.connect([
            (wf, outputnode, [("outputnode.out_report", f"{key}_report"),
                              ("outputnode.jacobian_report", f"{key}_jacobian_report"),
                              ("outputnode.moving_in_fixed", f"{key}_moving_in_fixed"),
                              ("outputnode.composite_transform", f"{key}_composite_transform")]),
            (wf, summaries, [("outputnode.quality_tsv", f"in{slot}")]),
        ])
        slot += 1
        if has_labels:
            overlap = pe.Node(LabelOverlap(tags={"method": key}), name=f"{key}_label_overlap", mem_gb=1.0)
            workflow.connect([
                (inputnode, overlap, [("fixed_labels", "reference")]),
                (wf, overlap, [(("outputnode.labels_in_fixed", _first), "test")]),
                (wf, outputnode, [(("outputnode.labels_in_fixed", _first), f"{key}_labels_in_fixed")]),
                (overlap, summaries, [("out_summary", f"in{slot}")]),
                (overlap, per_label, [("out_labels", f"in{b + 1}")]),
            ])
            slot += 1
        if has_landmarks:
            tre = pe.Node(LandmarkError(tags={"method": key}, convention=landmark_convention),
                          name=f"{key}_landmark_error", mem_gb=0.5)
            workflow.connect([
                (inputnode, tre, [("fixed_landmarks", "fixed_landmarks"), ("moving_landmarks", "moving_landmarks")]),
                (wf, tre, [("outputnode.reverse_forward_transforms", "transforms"),
                           ("outputnode.reverse_forward_invert_flags", "invert_transform_flags")]),
                (tre, summaries, [("out_summary", f"in{slot}")]),
                (tre, per_point, [("out_points", f"in{b + 1}")]),
            ])
            slot += 1

    merge = pe.Node(MergeTables(join_on=["method"], out_name="comparison.tsv"), name="merge_summaries",
                    run_without_submitting=True)
    figure = pe.Node(ComparisonFigure(), name="comparison_figure", mem_gb=0.5)
    workflow.connect([
        (summaries, merge, [("out", "in_files")]),
        (merge, outputnode, [("out_file", "comparison_tsv")]),
        (merge, figure, [("out_file", "summary_tsv")]),
        (figure, outputnode, [("out_report", "comparison_figure")]),
    ])
    if has_labels:
        merge_labels = pe.Node(MergeTables(out_name="label_overlap.tsv"), name="merge_label_tables",
                               run_without_submitting=True)
        workflow.connect([(per_label, merge_labels, [("out", "in_files")]),
                          (merge_labels, outputnode, [("out_file", "labels_tsv")]),
                          (merge_labels, figure, [("out_file", "labels_tsv")])])
    if has_landmarks:
        merge_points = pe.Node(MergeTables(out_name="landmark_error.tsv"), name="merge_landmark_tables",
                               run_without_submitting=True)
        workflow.connect([(per_point, merge_points, [("out", "in_files")]),
                          (merge_points, outputnode, [("out_file", "landmarks_tsv")])])
    return workflow


def _first(value):
    """First element of a list (MapNode output) or the value itself."""
    return value[0] if isinstance(value, (list, tuple)) else value


def _as_list(value):
    """A label map or a list of them, as a list."""
    return list(value) if isinstance(value, (list, tuple)) else [value]
