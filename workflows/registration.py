"""Registration workflows: preprocessing of both images, registration (INR or ANTs), application of
the transforms to the moving image and label maps, transform quality, and reportlets.

``init_inr_registration_wf`` and ``init_ants_registration_wf`` build the same graph around a
different registration node (:class:`~inrreg_pipeline.interfaces.INRRegistration` or
:class:`~inrreg_pipeline.interfaces.ANTsRegistration`); their ``outputnode`` fields are the same.
"""
from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from inrreg_pipeline.interfaces import (ANTS_PRESETS, ANTsRegistration, ApplyTransforms, INRRegistration,
                                        JacobianReport, RegistrationFlicker, Resample, TransformQuality)
from inrreg_pipeline.interfaces.base import fail
from inrreg_pipeline.interfaces.registration import describe_inr

from .base import LiterateWorkflow, inrreg_version, pick_warp, version, wants_gpu
from .preprocessing import init_preproc_wf

#: ``inputnode`` fields of the registration workflows.
INPUT_FIELDS = ["fixed_image", "moving_image", "fixed_mask", "moving_mask", "moving_labels", "fixed_labels"]
#: ``outputnode`` fields of the registration workflows.
OUTPUT_FIELDS = [
    # ants.Registration's names (registration of the preprocessed images)
    "forward_transforms", "forward_invert_flags", "reverse_forward_transforms", "reverse_forward_invert_flags",
    "reverse_transforms", "reverse_invert_flags", "composite_transform", "inverse_composite_transform",
    "warped_image", "inverse_warped_image", "jacobian", "metadata",
    # the moving image and label maps on the fixed image's own grid
    "moving_in_fixed", "labels_in_fixed",
    # preprocessing, quality, reports
    "fixed_preproc", "moving_preproc", "fixed_preproc_mask", "quality_tsv", "out_report", "jacobian_report",
]
_REG_OUTPUTS = OUTPUT_FIELDS[:12]


def init_inr_registration_wf(*, method: str = "auto", preset: str | None = None, device: str = "auto",
                             use_gpu: bool | None = None, seed: int = 0, omp_nthreads: int = 1, mem_gb: float = 4.0,
                             orientation: str = "RAS", n4: bool = True, use_masks: bool = False,
                             resolution: float | list[float] | None = None, label_maps: bool = False,
                             fixed_labels: bool = False, label: str = "inr", sloppy: bool = False,
                             name: str = "inr_registration_wf") -> LiterateWorkflow:
    """Register ``moving_image`` to ``fixed_image`` with inrreg (an untrained INR per pair).

    Parameters
    ----------
    method, preset
        As :class:`~inrreg_pipeline.interfaces.INRRegistration` (checked now: a bad pair raises
        ``ValueError`` naming ``method`` or ``preset`` before anything runs).
    device, use_gpu
        Torch device; ``use_gpu=None`` flags the registration node as a GPU node when the device
        will be CUDA (``cuda*``, or ``auto`` with CUDA visible). A flagged node gets ``n_procs=1``
        (Nipype counts GPU slots in ``n_procs``) and falls back to the CPU if no GPU is there.
    use_masks
        Read ``inputnode.fixed_mask`` / ``moving_mask`` (brain masks) for preprocessing and registration.
    resolution
        Processing voxel size (mm) both images are resampled to; ``None`` keeps their grids.
    label_maps
        Apply the transforms to ``inputnode.moving_labels`` (a list of label maps) with label-aware
        interpolation, onto the fixed image's grid (``outputnode.labels_in_fixed``).
    fixed_labels
        Draw the contours of ``inputnode.fixed_labels`` (fixed-space labels or tissues) in the
        report, instead of tissue boundaries estimated from the fixed image.
    label
        Value of the ``method`` column in the quality table.
    omp_nthreads, mem_gb
        CPU threads (``n_procs``) of the registration and N4 nodes; memory estimate (GB) of the
        registration node, for MultiProc's scheduling.
    sloppy
        Fewer N4 iterations (tests and quick looks; pair it with a short preset).

    ``inputnode``: ``fixed_image, moving_image, fixed_mask, moving_mask, moving_labels, fixed_labels``.
    ``outputnode``: the ``ants.Registration`` outputs (``forward_transforms`` ... ``inverse_warped_image``)
    plus ``jacobian, metadata``; ``moving_in_fixed`` (moving image on the fixed grid), ``labels_in_fixed``;
    ``fixed_preproc, moving_preproc, fixed_preproc_mask, quality_tsv, out_report`` (flicker SVG),
    ``jacobian_report`` (SVG).
    """
    info = describe_inr(method, preset)  # a bad method/preset fails now, naming the input, not inside the graph
    gpu = wants_gpu(device, use_gpu)
    reg = pe.Node(INRRegistration(method=method, device=device, use_gpu=gpu, random_seed=seed),
                  name="inr_registration", mem_gb=mem_gb)
    if preset is not None:
        reg.inputs.preset = preset
    reg.n_procs = 1 if gpu else omp_nthreads  # also sets num_threads

    desc = [f"The moving image was then registered to the fixed image with *inrreg* {inrreg_version()}, which fits "
            f"an untrained implicit neural representation of the transform to each image pair [@idir] "
            f"(method `{info['method']}`, preset `{info['preset']}`)."]
    if info["method"] == "two-network":
        desc.append(f"Two untrained networks on multi-resolution hash encodings were fitted jointly: one "
                    f"representing the images and one the {info.get('motion', '')} motion"
                    + (f", MLPs of {info['hidden_layers']} hidden layers of {info['hidden_features']} units"
                       if "hidden_layers" in info else "")
                    + (f", with {info['iterations']} Adam steps on {info.get('points')} random voxels per image"
                       if "iterations" in info else "") + ".")
    if info.get("affine") and info["method"] != "two-network":
        desc.append(f"A centre-of-mass, rigid and affine initialisation was optimised by gradient descent on "
                    f"{str(info.get('affine_similarity', '')).upper()} at shrink factors "
                    f"{', '.join(str(f) for f in info.get('shrink_factors', []))}.")
    if info["method"] == "svf":
        if info.get("svf_network") == "hash-grid":
            network = (f"a coordinate MLP with {info['hidden_layers']} hidden layer(s) of {info['hidden_features']} "
                       f"ReLU units{'' if info.get('hash_hidden_bias', True) else ' without biases'} on a "
                       f"multi-resolution hash encoding [@instantngp] of {info['hash_levels']} levels "
                       f"(cells from the image's extent / {info['hash_base_resolution'] - 1} down to "
                       f"{info['hash_finest_mm']:g} mm) gave the velocity"
                       + (f", its finer levels fading in over the first {info['hash_coarse_to_fine_steps']} steps "
                          f"so that the velocity was smooth while the large-scale alignment was found"
                          if info.get("hash_coarse_to_fine_steps") else ""))
        else:
            network = (f"a coordinate MLP with {info['hidden_layers']} hidden layers of {info['hidden_features']} "
                       f"units and sine activations [@siren] gave the velocity")
        smoothing = info.get("velocity_smoothing_mm") or 0
        if smoothing > 0:
            network += f", Gaussian-smoothed (sigma {smoothing:g} mm) as SyN smooths its flow [@ants]"
        desc.append(f"The transform was the group exponential of a stationary velocity field, diffeomorphic by "
                    f"construction: {network}, which was "
                    f"integrated by {info['squaring_steps']} scalings and squarings [@arsigny] on "
                    + (f"control grids of {_mm_list(info['svf_level_control_spacing_mm'])} mm "
                       f"at the successive levels"
                       if info.get("svf_level_control_spacing_mm")
                       else f"a {info['control_spacing_mm']:g} mm control grid")
                    + " and optimised with Adam on the whole image "
                    + (f"resampled to {_mm_list(info['svf_level_spacing_mm'])} mm voxels "
                       if info.get("svf_level_spacing_mm") else
                       f"at shrink factors {', '.join(str(f) for f in info['svf_shrink_factors'])} ")
                    + f"({', '.join(str(n) for n in info['svf_iterations'])} steps) to minimise "
                    f"{str(info.get('similarity', '')).upper()} dissimilarity{_lncc_windows(info)}{_mind_term(info)} plus "
                    + _svf_regularisers(info) + "." + _frozen_hash_levels(info))
    if "hidden_layers" in info and info["method"] not in ("two-network", "svf"):
        desc.append(f"The displacement field was a coordinate MLP with {info['hidden_layers']} hidden layers of "
                    f"{info['hidden_features']} units and {info['activation']} activations"
                    + (f" [@siren] (omega = {info['omega']:g})" if info.get("activation") == "sine" else "") + ",")
        desc.append(f"optimised with {info.get('iterations')} {info.get('optimizer', 'adam')} steps (learning rate "
                    f"{info.get('lr', 0):g}) on {info.get('patches')} random patches of {info.get('patch_size')} "
                    f"voxels per side to minimise {str(info.get('similarity', '')).upper()} dissimilarity plus "
                    f"{info.get('alpha', 0):g} times a {info.get('regulariser')} regulariser.")
    where = ("on a GPU (CUDA) when available, else on the CPU" if gpu or device == "auto"
             else f"on device `{device}`")
    desc.append(f"It ran {where} with random seed {seed} (PyTorch {version('torch')}), and its transforms were "
                f"written as ANTs/ITK files (affine, displacement field and their inverse).")
    desc = " ".join(desc) + " "
    return _init_registration_wf(reg, desc=desc, label=label, omp_nthreads=omp_nthreads, orientation=orientation,
                                 n4=n4, use_masks=use_masks, resolution=resolution, label_maps=label_maps,
                                 fixed_labels=fixed_labels, sloppy=sloppy, name=name)


def init_ants_registration_wf(*, preset: str = "ants-syn-cc", scale_iterations: float = 1.0, seed: int = 0,
                              omp_nthreads: int = 1, mem_gb: float = 4.0, orientation: str = "RAS", n4: bool = True,
                              use_masks: bool = False, resolution: float | list[float] | None = None,
                              label_maps: bool = False, fixed_labels: bool = False, label: str = "ants",
                              sloppy: bool = False, name: str = "ants_registration_wf") -> LiterateWorkflow:
    """The same graph as :func:`init_inr_registration_wf` around the ANTs baseline (antspyx).

    ``preset`` is one of ``ants-syn``, ``ants-syn-cc``, ``ants-precise``; ``scale_iterations``
    multiplies every stage's iteration count (small for sloppy/test runs). Same ``inputnode`` and
    ``outputnode`` fields as :func:`init_inr_registration_wf`.
    """
    if preset not in ANTS_PRESETS:
        raise fail("preset", f"unknown ANTs preset '{preset}' (choose from {', '.join(ANTS_PRESETS)})")
    if not scale_iterations > 0:
        raise fail("scale_iterations", f"must be > 0, got {scale_iterations}")
    reg = pe.Node(ANTsRegistration(preset=preset, scale_iterations=float(scale_iterations), random_seed=seed),
                  name="ants_registration", mem_gb=mem_gb)
    reg.n_procs = omp_nthreads
    scaled = "" if scale_iterations == 1.0 else f", iteration counts scaled by {scale_iterations:g}"
    desc = (
        f"The moving image was then registered to the fixed image with `antsRegistration` "
        f"(ANTs [@ants], through antspyx {version('antspyx')}), preset `{preset}` of inrreg's benchmark "
        f"(affine initialisation followed by symmetric normalisation, SyN){scaled}; random seed {seed}. "
    )
    return _init_registration_wf(reg, desc=desc, label=label, omp_nthreads=omp_nthreads, orientation=orientation,
                                 n4=n4, use_masks=use_masks, resolution=resolution, label_maps=label_maps,
                                 fixed_labels=fixed_labels, sloppy=sloppy, name=name)


def _frozen_hash_levels(info: dict) -> str:
    """The clause for ``svf.level_frozen_hash_levels``: which coarse hash levels each level held."""
    held = [int(n) for n in info.get("svf_level_frozen_hash_levels") or []]
    if not any(held):
        return ""
    return (f" At the successive levels the coarsest {', '.join(str(n) for n in held)} hash levels kept the "
            f"values the earlier levels had given them, so that a finer level refined detail without moving "
            f"the large-scale alignment.")


def _mm_list(values) -> str:
    """``"8, 4, 2"``: per-level millimetre values as the boilerplate writes them."""
    return ", ".join(f"{m:g}" for m in values)


def _svf_regularisers(info: dict) -> str:
    """The clause that lists an svf preset's regularisation terms with their weights: the main one
    (``loss.alpha`` times the log-Jacobian or the diffusion energy), the velocity's diffusion energy
    when ``svf.diffusion_alpha`` adds it, and the folded-cell penalty when ``svf.folding_alpha`` is set."""
    jacobian = info.get("regulariser") == "jacobian"
    terms = [f"{info.get('alpha', 0):g} times the "
             + ("mean squared log Jacobian determinant of the transform" if jacobian
                else "diffusion energy of the velocity")]
    diffusion = info.get("svf_diffusion_alpha") or 0
    if diffusion > 0:
        terms.append(f"{diffusion:g} times the diffusion energy of the velocity (its mean squared gradient"
                     + (", which unlike the log Jacobian also penalises shear and rotation)" if jacobian else ")"))
    folding = info.get("svf_folding_alpha") or 0
    if folding > 0:
        terms.append(f"{folding:g} times a penalty on every control cell that keeps less than "
                     f"{info.get('svf_folding_floor', 0):g} of its volume")
    return terms[0] if len(terms) == 1 else ", ".join(terms[:-1]) + " and " + terms[-1]


def _mind_term(info: dict) -> str:
    """The clause that adds an svf preset's MIND-SSC term with its weight at each level
    (:func:`inrreg_pipeline.core.svf.level_mind_alphas`); ``""`` when it has none."""
    weights = info.get("svf_mind_alpha")
    if not weights:
        return ""
    where = (f"{weights[0]:g} times" if len(set(weights)) == 1 else
             f"{_mm_list(weights)} times (at the successive levels)")
    return (f", {where} the mean squared difference of MIND-SSC self-similarity descriptors [@mind] "
            f"(neighbours {info['svf_mind_distance_mm']:g} mm apart)")


def _lncc_windows(info: dict) -> str:
    """The clause that names an svf preset's LNCC window(s) in mm (:func:`inrreg_pipeline.core.svf.level_lncc_windows`;
    each level rounds its window to an odd voxel count); ``""`` when it has no LNCC term."""
    windows = info.get("svf_lncc_window_mm")
    if not windows:
        return ""
    if len(set(windows)) == 1:
        return f" (LNCC window {windows[0]:g} mm, an odd number of voxels at each level)"
    return f" (LNCC windows of {_mm_list(windows)} mm at the successive levels, each an odd number of voxels)"


def _init_registration_wf(reg: pe.Node, *, desc: str, label: str, omp_nthreads: int, orientation: str, n4: bool,
                          use_masks: bool, resolution, label_maps: bool, fixed_labels: bool, sloppy: bool,
                          name: str) -> LiterateWorkflow:
    workflow = LiterateWorkflow(name=name)
    after = [("The moving image and its label maps were" if label_maps else "The moving image was") +
             " resampled onto the fixed image's grid in a single step through the estimated transforms"
             + (" (label-aware interpolation for labels, as ANTs' GenericLabel)" if label_maps else "") + ".",
             "Folding (% of voxels with det J <= 0), the spread of log det J and inverse consistency were measured "
             "on the fixed grid."]
    # preprocessing (nested workflows) first, then the registration and what follows it
    workflow.__postdesc__ = [desc, " ".join(after) + " "]

    inputnode = pe.Node(niu.IdentityInterface(fields=INPUT_FIELDS), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=OUTPUT_FIELDS), name="outputnode")

    preproc = {}
    for role in ("fixed", "moving"):
        wf = init_preproc_wf(orientation=orientation, n4=n4, use_mask=use_masks, resolution=resolution,
                             omp_nthreads=omp_nthreads, sloppy=sloppy, name=f"{role}_preproc_wf")
        workflow.connect(inputnode, f"{role}_image", wf, "inputnode.in_file")
        if use_masks:
            workflow.connect(inputnode, f"{role}_mask", wf, "inputnode.in_mask")
        preproc[role] = wf

    workflow.connect([
        (preproc["fixed"], reg, [("outputnode.out_file", "fixed_image")]),
        (preproc["moving"], reg, [("outputnode.out_file", "moving_image")]),
        (preproc["fixed"], outputnode, [("outputnode.out_file", "fixed_preproc"),
                                        ("outputnode.out_mask", "fixed_preproc_mask")]),
        (preproc["moving"], outputnode, [("outputnode.out_file", "moving_preproc")]),
        (reg, outputnode, [(field, field) for field in _REG_OUTPUTS]),
    ])
    if use_masks:
        workflow.connect([
            (preproc["fixed"], reg, [("outputnode.out_mask", "fixed_image_mask")]),
            (preproc["moving"], reg, [("outputnode.out_mask", "moving_image_mask")]),
        ])

    # the moving image itself (not its preprocessed copy) on the fixed image's own grid
    apply_moving = pe.Node(ApplyTransforms(interpolation="Linear", output_image="moving_in_fixed.nii.gz"),
                           name="apply_moving", mem_gb=1.0)
    workflow.connect([
        (inputnode, apply_moving, [("moving_image", "input_image"), ("fixed_image", "reference_image")]),
        (reg, apply_moving, [("reverse_forward_transforms", "transforms"),
                             ("reverse_forward_invert_flags", "invert_transform_flags")]),
        (apply_moving, outputnode, [("output_image", "moving_in_fixed")]),
    ])
    if label_maps:
        apply_labels = pe.MapNode(ApplyTransforms(interpolation="GenericLabel"), iterfield=["input_image"],
                                  name="apply_labels", mem_gb=1.0)
        workflow.connect([
            (inputnode, apply_labels, [("moving_labels", "input_image"), ("fixed_image", "reference_image")]),
            (reg, apply_labels, [("reverse_forward_transforms", "transforms"),
                                 ("reverse_forward_invert_flags", "invert_transform_flags")]),
            (apply_labels, outputnode, [("output_image", "labels_in_fixed")]),
        ])

    quality = pe.Node(TransformQuality(tags={"method": label}), name="transform_quality", mem_gb=1.0)
    workflow.connect([
        (reg, quality, [(("forward_transforms", pick_warp), "warp"),
                        (("reverse_transforms", pick_warp), "inverse_warp"), ("metadata", "metadata")]),
        (preproc["fixed"], quality, [("outputnode.out_mask", "mask")]),
        (quality, outputnode, [("out_tsv", "quality_tsv")]),
    ])

    flicker = pe.Node(RegistrationFlicker(before_label="fixed", after_label=f"moving, {label}"),
                      name="flicker_report", mem_gb=1.0)
    workflow.connect([
        (preproc["fixed"], flicker, [("outputnode.out_file", "fixed_image"), ("outputnode.out_mask", "mask")]),
        (reg, flicker, [("warped_image", "warped_image")]),
        (flicker, outputnode, [("out_report", "out_report")]),
    ])
    if fixed_labels:
        contours = pe.Node(Resample(interpolation="label"), name="contours_to_processing_grid", mem_gb=1.0)
        workflow.connect([
            (inputnode, contours, [("fixed_labels", "in_file")]),
            (preproc["fixed"], contours, [("outputnode.out_file", "reference_image")]),
            (contours, flicker, [("out_file", "contours")]),
        ])

    jac_report = pe.Node(JacobianReport(title=f"{label}: Jacobian determinant"), name="jacobian_report",
                         mem_gb=1.0)
    workflow.connect([
        (quality, jac_report, [("jacobian", "jacobian")]),
        (preproc["fixed"], jac_report, [("outputnode.out_file", "fixed_image"), ("outputnode.out_mask", "mask")]),
        (jac_report, outputnode, [("out_report", "jacobian_report")]),
    ])
    return workflow
