"""No empty folder left behind in ``$TMPDIR`` by a registration (issue 16, defect 7).

Constructing a ``torch.optim`` optimiser imports TorchDynamo, which creates the TorchInductor cache
folder ``$TMPDIR/torchinductor_<user>`` even though inrreg never compiles anything. Every run used to
leave that empty folder behind. :func:`no_empty_inductor_cache` removes it after the work when it did
not exist before and is still empty (``os.rmdir`` refuses a non-empty folder, so a concurrent process
that does use it keeps its files). A user-chosen ``TORCHINDUCTOR_CACHE_DIR`` is left alone.
"""
from __future__ import annotations

import contextlib
import getpass
import os
import re
import tempfile
from typing import Iterator


def inductor_cache_dir() -> str | None:
    """The folder TorchInductor would create by default, or None when the user chose one."""
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return None
    # torch's rule (torch._inductor.runtime.cache_dir_utils.default_cache_dir), spelled out: importing that
    # module is what creates the folder (tests/test_registration.py checks both agree)
    try:
        user = getpass.getuser()
    except (KeyError, ModuleNotFoundError, OSError):
        user = f"uid_{os.getuid()}"
    return os.path.join(tempfile.gettempdir(), "torchinductor_" + re.sub(r'[\\/:*?"<>|]', "_", user))


@contextlib.contextmanager
def no_empty_inductor_cache() -> Iterator[None]:
    """Run the block; afterwards remove the TorchInductor cache folder if the block created it empty."""
    path = inductor_cache_dir()
    existed = path is None or os.path.exists(path)
    try:
        yield
    finally:
        if not existed:
            with contextlib.suppress(OSError):
                os.rmdir(path)
