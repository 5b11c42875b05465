"""``init_preproc_wf``: reorient, N4, mask, normalise, resample one anatomical image."""
from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from inrreg_pipeline.interfaces import (ApplyMask, ForegroundMask, N4BiasFieldCorrection, NormalizeIntensity,
                                        Reorient, Resample)

from .base import LiterateWorkflow, version


def init_preproc_wf(*, orientation: str = "RAS", n4: bool = True, n4_backend: str = "auto",
                    use_mask: bool = False, normalise: bool = True, resolution: float | list[float] | None = None,
                    omp_nthreads: int = 1, sloppy: bool = False, name: str = "preproc_wf") -> LiterateWorkflow:
    """Prepare one image for registration.

    Steps: reorientation to ``orientation`` (axes only; world geometry kept), N4 bias-field
    correction, brain-mask application (``use_mask``), percentile clipping and rescaling to [0, 1],
    resampling to ``resolution`` mm (same field of view). Every output keeps world coordinates, so
    a transform estimated on ``out_file`` applies to ``in_file`` unchanged.

    Inputs (``inputnode``)
        ``in_file``: image; ``in_mask``: brain mask on its grid (read when ``use_mask``).
    Outputs (``outputnode``)
        ``out_file``: preprocessed image (processing grid); ``out_mask``: the brain mask on the
        processing grid (``use_mask``) or a foreground mask; ``reoriented``: the reoriented input at
        its own resolution; ``bias_image``: N4's bias field (``n4``).
    """
    workflow = LiterateWorkflow(name=name)
    res = None if resolution is None else [float(r) for r in
                                            (resolution if isinstance(resolution, (list, tuple)) else [resolution])]
    steps = [f"reoriented to {orientation.upper()} (voxel axes only, world coordinates unchanged)"]
    if n4:
        backend = {"antspyx": f"antspyx {version('antspyx')}", "simpleitk": f"SimpleITK {version('SimpleITK')}"}
        impl = backend.get(n4_backend, f"antspyx {version('antspyx')} or SimpleITK {version('SimpleITK')}")
        steps.append(f"corrected for intensity non-uniformity with N4 [@n4] ({impl})")
    if use_mask:
        steps.append("masked with the given brain mask")
    if normalise:
        steps.append("intensity-normalised (clipped to the 0.5th-99.5th percentiles and rescaled to [0, 1])")
    if res:
        steps.append(f"resampled to {' x '.join(f'{r:g}' for r in res)} mm voxels over the same field of view")
    workflow.__desc__ = f"Each image was {'; '.join(steps[:-1]) + '; and ' + steps[-1] if len(steps) > 1 else steps[0]}. "

    inputnode = pe.Node(niu.IdentityInterface(fields=["in_file", "in_mask"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["out_file", "out_mask", "reoriented", "bias_image"]),
                         name="outputnode")

    reorient = pe.Node(Reorient(orientation=orientation), name="reorient", mem_gb=0.5, run_without_submitting=True)
    workflow.connect([(inputnode, reorient, [("in_file", "in_file")]),
                      (reorient, outputnode, [("out_file", "reoriented")])])
    current = (reorient, "out_file")

    mask_src = None
    if use_mask:
        reorient_mask = pe.Node(Reorient(orientation=orientation), name="reorient_mask", mem_gb=0.5,
                                run_without_submitting=True)
        workflow.connect(inputnode, "in_mask", reorient_mask, "in_file")
        mask_src = (reorient_mask, "out_file")

    if n4:
        n4_node = pe.Node(N4BiasFieldCorrection(backend=n4_backend, num_threads=omp_nthreads), name="n4",
                          n_procs=omp_nthreads, mem_gb=1.0)
        if sloppy:
            n4_node.inputs.n_iterations = [20, 10]
        workflow.connect([(current[0], n4_node, [(current[1], "in_file")]),
                          (n4_node, outputnode, [("bias_image", "bias_image")])])
        if mask_src:
            workflow.connect(mask_src[0], mask_src[1], n4_node, "mask_file")
        current = (n4_node, "out_file")

    if use_mask:
        apply_mask = pe.Node(ApplyMask(), name="apply_mask", mem_gb=0.5, run_without_submitting=True)
        workflow.connect([(current[0], apply_mask, [(current[1], "in_file")]),
                          (mask_src[0], apply_mask, [(mask_src[1], "in_mask")])])
        current = (apply_mask, "out_file")
    else:
        fg_mask = pe.Node(ForegroundMask(), name="foreground_mask", mem_gb=0.5, run_without_submitting=True)
        workflow.connect(current[0], current[1], fg_mask, "in_file")
        mask_src = (fg_mask, "out_mask")

    if normalise:
        norm = pe.Node(NormalizeIntensity(), name="normalise", mem_gb=0.5, run_without_submitting=True)
        workflow.connect([(current[0], norm, [(current[1], "in_file")]),
                          (mask_src[0], norm, [(mask_src[1], "in_mask")])])
        current = (norm, "out_file")

    if res:
        resample = pe.Node(Resample(resolution=res), name="resample", mem_gb=1.0)
        resample_mask = pe.Node(Resample(resolution=res, interpolation="nearest"), name="resample_mask", mem_gb=1.0)
        workflow.connect([(current[0], resample, [(current[1], "in_file")]),
                          (mask_src[0], resample_mask, [(mask_src[1], "in_file")])])
        current, mask_src = (resample, "out_file"), (resample_mask, "out_file")

    workflow.connect([(current[0], outputnode, [(current[1], "out_file")]),
                      (mask_src[0], outputnode, [(mask_src[1], "out_mask")])])
    return workflow
