"""Shared pieces of inrreg's Nipype interfaces: input checks with one-line messages, output names.

Every interface here writes only into its node directory (``runtime.cwd``) and reports a bad input
as :class:`InterfaceInputError`, a ``ValueError`` whose message is one line that starts with the
name of the offending input (``"fixed_image: '/x.nii.gz' is 4-D ..."``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from nipype.interfaces.base import isdefined


class InterfaceInputError(ValueError):
    """A bad interface input; the message is one line naming the input."""


def one_line(text: str) -> str:
    """The first non-empty line of ``text`` (what a user needs to read), whitespace collapsed."""
    for line in str(text).splitlines():
        if line.strip():
            return " ".join(line.split())
    return str(text).strip() or "invalid value"


def fail(name: str, message: str) -> InterfaceInputError:
    """``InterfaceInputError("name: message")`` (one line)."""
    return InterfaceInputError(f"{name}: {one_line(message)}")


def optional(value: Any) -> Any:
    """``value`` if defined (and not an empty list), else ``None``."""
    if not isdefined(value):
        return None
    if isinstance(value, (list, tuple)) and len(value) == 0:
        return None
    return value


def single_file(value: Any, name: str) -> str | None:
    """One path from a ``File`` or a one-element ``InputMultiObject`` (as ants.Registration takes)."""
    value = optional(value)
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise fail(name, f"takes one image, got {len(value)} (multi-metric registration is not supported)")
        value = value[0]
    return os.fspath(value)


def output_path(runtime_cwd: str, name: str) -> str:
    """``name`` inside the node directory; a name with a folder part is refused (outputs stay inside)."""
    if not name or os.path.basename(name) != name or name in (".", ".."):
        raise fail("output name", f"'{name}' must be a plain file name (outputs are written in the node directory)")
    return os.path.join(runtime_cwd, name)


def derived_name(in_file: str, suffix: str, ext: str | None = None) -> str:
    """``<stem of in_file><suffix><ext>``; ``ext`` defaults to the input's (``.nii.gz`` kept whole)."""
    base = os.path.basename(os.fspath(in_file))
    for known in (".nii.gz", ".nii", ".tsv", ".csv", ".json", ".h5", ".mat", ".txt", ".svg"):
        if base.endswith(known):
            stem, in_ext = base[: -len(known)], known
            break
    else:
        stem, in_ext = os.path.splitext(base)
    return f"{stem}{suffix}{ext if ext is not None else in_ext}"


def registration_outputs(paths: dict[str, Path], metadata: dict | None = None) -> dict[str, Any]:
    """Nipype outputs of a registration from the paths ``register_files`` / ``run_ants`` return.

    Names and order follow ``nipype.interfaces.ants.Registration`` with
    ``collapse_output_transforms=True`` (checked against its ``_list_outputs`` in the tests):

    * ``forward_transforms`` = ``[0GenericAffine.mat, 1Warp.nii.gz]`` (stage order), flags
      ``[False, False]``; ``reverse_forward_transforms`` is the same list reversed, the order
      ``antsApplyTransforms`` takes to bring the moving image onto the fixed grid;
    * ``reverse_transforms`` = ``[0GenericAffine.mat, 1InverseWarp.nii.gz]`` with
      ``reverse_invert_flags`` ``[True, False]`` (fixed image onto the moving grid).
    """
    affine, warp, inverse_warp = (os.fspath(paths[k]) for k in ("affine", "warp", "inverse_warp"))
    out: dict[str, Any] = {
        "forward_transforms": [affine, warp],
        "forward_invert_flags": [False, False],
        "reverse_forward_transforms": [warp, affine],
        "reverse_forward_invert_flags": [False, False],
        "reverse_transforms": [affine, inverse_warp],
        "reverse_invert_flags": [True, False],
        "composite_transform": os.fspath(paths["composite"]),
        "inverse_composite_transform": os.fspath(paths["inverse_composite"]),
        "warped_image": os.fspath(paths["warped"]),
        "inverse_warped_image": os.fspath(paths["inverse_warped"]),
        "jacobian": os.fspath(paths["jacobian"]),
        "metadata": os.fspath(paths["metadata"]),
    }
    metadata = metadata or {}
    runtime = metadata.get("runtime_s")
    total = runtime.get("total") if isinstance(runtime, dict) else runtime
    if isinstance(total, (int, float)):
        out["elapsed_time"] = float(total)
    loss = metadata.get("loss")
    metric = loss.get("similarity_final") if isinstance(loss, dict) else None
    if isinstance(metric, (int, float)):
        out["metric_value"] = float(metric)
    return out


def resolve_device_for_node(device: str, use_gpu: bool) -> tuple[str, str | None]:
    """The device a node runs on, and a note when a GPU-flagged node falls back to the CPU.

    ``use_gpu`` marks the node for Nipype's GPU slots; with ``device='auto'`` it asks for CUDA and
    falls back to the CPU (with a note, no error) when none is visible. An explicit ``cuda`` with no
    CUDA stays an error (raised by the core's ``resolve_device``).
    """
    spec = (device or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return "cuda", None
        note = "use_gpu=True but no CUDA device is visible: ran on the CPU" if use_gpu else None
        return "cpu", note
    return spec, None
