"""``DerivativeSink``: copy one file into the derivatives tree atomically, with its JSON sidecar.

A small stand-in for niworkflows' ``DerivativesDataSink``: the target name is computed by the
workflow builder (BIDS entities known at build time), the copy goes to a temporary name in the
target folder and is renamed with ``os.replace``, so a file appears only when complete. The
temporary name carries the writing process (``.inrreg-sink-<pid>@<host>-<name>.<random>``,
:func:`~inrreg_pipeline.io.images.staging_prefix`): one left by a killed process is removed by the
next run (:func:`~inrreg_pipeline.io.images.remove_stale_staging`).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, isdefined, traits

from inrreg_pipeline.io.images import staging_prefix

#: keys of the registration metadata JSON copied into sidecars
_META_KEYS = ("method", "preset", "seed", "device", "device_name", "threads", "runtime_s", "elapsed_time",
              "settings", "versions", "ants_preset", "scale_iterations")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file beside it and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{staging_prefix('sink')}{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_copy(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` through a temporary file beside it and a rename."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{staging_prefix('sink')}{dst.name}.", dir=dst.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class DerivativeSinkInputSpec(BaseInterfaceInputSpec):
    in_file = traits.Either(File(exists=True), traits.List(File(exists=True)), mandatory=True,
                            desc="file to copy (a one-element list is accepted: MapNode outputs)")
    out_file = traits.Str(mandatory=True, desc="absolute target path inside the derivatives folder")
    metadata = traits.Dict(desc="JSON sidecar content (written next to out_file when given)")
    registration_json = File(exists=True, desc="registration metadata JSON: runtime, device, settings copied "
                                               "into the sidecar under 'Registration'")


class DerivativeSinkOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the file written")
    out_meta = File(desc="its JSON sidecar")


class DerivativeSink(SimpleInterface):
    input_spec = DerivativeSinkInputSpec
    output_spec = DerivativeSinkOutputSpec

    def _run_interface(self, runtime):
        src = self.inputs.in_file
        if isinstance(src, (list, tuple)):
            if len(src) != 1:
                raise ValueError(f"in_file: expected one file, got {len(src)}")
            src = src[0]
        dst = Path(self.inputs.out_file)
        meta = dict(self.inputs.metadata) if isdefined(self.inputs.metadata) else None
        if isdefined(self.inputs.registration_json):
            reg = json.loads(Path(self.inputs.registration_json).read_text())
            meta = meta or {}
            meta["Registration"] = {k: reg[k] for k in _META_KEYS if k in reg}
        if meta is not None:
            name = dst.name
            for ext in (".nii.gz", ".nii", ".h5", ".tsv", ".txt", ".svg"):
                if name.endswith(ext):
                    name = name[: -len(ext)]
                    break
            sidecar = dst.with_name(name + ".json")
            atomic_write_text(sidecar, json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
            self._results["out_meta"] = str(sidecar)
        atomic_copy(Path(src), dst)
        self._results["out_file"] = str(dst)
        return runtime
