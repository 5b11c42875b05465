"""``ApplyTransforms``: resample an image or a label map through ANTs/ITK transform files.

The inputs are those of ``nipype.interfaces.ants.ApplyTransforms`` (``input_image``,
``reference_image``, ``transforms``, ``invert_transform_flags``, ``interpolation``,
``output_image``), so it takes the transform lists of a registration node as they are; the work is
done by :func:`inrreg_pipeline.apply.apply_transforms` (PyTorch/SimpleITK, no ANTs binaries).
"""
from __future__ import annotations

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from ..apply import apply_transforms
from ..io.images import InputError
from .base import derived_name, fail, optional, output_path

#: ANTs' interpolator names and inrreg's, mapped to inrreg's.
INTERPOLATIONS = {"Linear": "linear", "NearestNeighbor": "nearest", "GenericLabel": "label",
                  "MultiLabel": "label", "linear": "linear", "nearest": "nearest", "label": "label"}


class ApplyTransformsInputSpec(BaseInterfaceInputSpec):
    input_image = File(exists=True, mandatory=True, desc="image or label map to resample")
    reference_image = File(exists=True, mandatory=True, desc="grid of the output")
    transforms = InputMultiObject(
        File(exists=True), mandatory=True,
        desc="transform files in antsApplyTransforms order (e.g. [1Warp, 0GenericAffine] or [Composite.h5])")
    invert_transform_flags = InputMultiObject(
        traits.Bool(), desc="one flag per transform (True inverts a linear transform)")
    interpolation = traits.Enum(
        "Linear", "NearestNeighbor", "GenericLabel", "MultiLabel", "linear", "nearest", "label",
        usedefault=True, desc="Linear for intensities; GenericLabel (label-aware) or NearestNeighbor for labels")
    output_image = traits.Str(desc="output file name (in the node directory); default <input>_trans.nii.gz")
    out_postfix = traits.Str("_trans", usedefault=True, desc="postfix of the default output name")
    device = traits.Str("cpu", usedefault=True, desc="cpu, auto, cuda or cuda:N")


class ApplyTransformsOutputSpec(TraitedSpec):
    output_image = File(exists=True, desc="resampled image on the reference grid")


class ApplyTransforms(SimpleInterface):
    """Resample ``input_image`` onto ``reference_image`` through ``transforms``.

    Label maps (``GenericLabel``/``MultiLabel``/``NearestNeighbor``) keep integer values.
    """

    input_spec = ApplyTransformsInputSpec
    output_spec = ApplyTransformsOutputSpec

    def _run_interface(self, runtime):
        transforms = list(self.inputs.transforms)
        flags = optional(self.inputs.invert_transform_flags)
        flags = [False] * len(transforms) if flags is None else [bool(f) for f in flags]
        if len(flags) != len(transforms):
            raise fail("invert_transform_flags", f"has {len(flags)} flag(s) for {len(transforms)} transform(s)")
        chain = [f"[{path},1]" if inv else str(path) for path, inv in zip(transforms, flags)]
        name = optional(self.inputs.output_image)
        if name is None:
            name = derived_name(self.inputs.input_image, self.inputs.out_postfix, ".nii.gz")
        out = output_path(runtime.cwd, name)
        try:
            apply_transforms(self.inputs.input_image, self.inputs.reference_image, chain, out,
                             interpolation=INTERPOLATIONS[self.inputs.interpolation], device=self.inputs.device)
        except InputError as err:
            text = str(err)
            key = ("input_image" if text.startswith("input image") else
                   "reference_image" if text.startswith("reference image") else
                   "output_image" if text.startswith("output") else
                   "device" if "device" in text.split(" ")[:3] else "transforms")
            raise fail(key, text) from None
        self._results["output_image"] = out
        return runtime
