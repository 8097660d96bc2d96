"""edge: the on-board daemon, classifier, results log and bench (no torch)."""
from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def _version() -> str:
    """The installed distribution's version, else the one setup.py declares (a source tree)."""
    try:
        return version("raman-edge")
    except PackageNotFoundError:
        pass
    setup_py = Path(__file__).resolve().parents[1] / "setup.py"
    try:
        m = re.search(r"""version\s*=\s*["']([^"']+)["']""", setup_py.read_text(encoding="utf-8"))
    except OSError:
        m = None
    return m.group(1) if m else "0+unknown"


__version__ = _version()

__all__ = ["__version__"]
