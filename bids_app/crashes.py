"""Reading Nipype's text crash files: the node and the error line a user needs to see."""
from __future__ import annotations

import re
from pathlib import Path


def crash_summary(path: Path) -> str:
    """``"node: error line"`` of a Nipype text crash file (the file's name when it cannot be read)."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return path.name
    node = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Node:")), path.name)
    err = next((ln for ln in reversed(lines) if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", ln)), lines[-1])
    return f"{node}: {err}"
