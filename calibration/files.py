"""Checks on the files a command will write, made before any work is done.

A command that computes for a minute and then finds it cannot write its result has
wasted the minute and, worse, may have changed state on the way (rows logged, a pass
marked).  Output paths given as options are therefore checked first; what is wrong is
a configuration error (exit status 2) naming the option and the path.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError


def check_writable_dir(folder: str | Path, what: str) -> Path:
    """Refuse ``folder`` unless it is an existing directory this process may create files in.

    Parameters
    ----------
    folder : path
        The directory.
    what : str
        The option and value the directory came from, for the message (``"--out x/y.json"``).

    Raises
    ------
    ConfigError
        It does not exist, is not a directory, or is not writable.
    """
    folder = Path(folder) if str(folder) else Path(".")
    if not folder.exists():
        raise ConfigError(f"{what}: folder {folder} does not exist")
    if not folder.is_dir():
        raise ConfigError(f"{what}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{what}: folder {folder} is not writable")
    return folder


def check_output_file(path: str | Path, option: str) -> Path:
    """Refuse an output file path that cannot be written: a folder, or a file in a missing or read-only folder.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ConfigError
        Naming ``option``, the path and what is wrong.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{option} {path}: is a folder; give a file name")
    check_writable_dir(path.parent, f"{option} {path}")
    return path


def check_output_dir(path: str | Path, option: str) -> Path:
    """Refuse an output folder that cannot be created or written (it may be missing: it is made with its parents).

    Raises
    ------
    ConfigError
        ``path`` exists and is not a folder, or its nearest existing ancestor is not a writable folder.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path}: exists and is not a folder")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    check_writable_dir(existing, f"{option} {path}")
    return path
