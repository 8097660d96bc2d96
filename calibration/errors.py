"""The one exception tree of raman-edge.

It lives in the lowest layer (``calibration``) so that every layer above can raise
and catch the same types without importing upwards.  Every message names *what*
was wrong and *where* (file, line, field, spectrum index, URL).
"""
from __future__ import annotations


class RamanEdgeError(Exception):
    """Base of every error raman-edge raises on purpose.

    ``exit_code`` is what the command line exits with, so a supervisor can tell a
    configuration or storage fault (do not restart) from a transient one: 1 runtime
    (a restart may fix it), 2 configuration, 3 storage.  README.md, "Exit status",
    is the reference.
    """

    exit_code = 1


class InputError(RamanEdgeError):
    """A file, array or value given to raman-edge is malformed or out of range."""


class SpectrumError(InputError):
    """A spectrum is unusable: NaN/inf, wrong axis, too short, flat, mismatched lengths."""


class ReaderError(InputError):
    """A spectrum file could not be parsed (names the file and line)."""


class CalibrationError(RamanEdgeError):
    """An axis calibration is missing, invalid or does not apply."""


class SourceError(RamanEdgeError):
    """A spectrum source (sim, replay, serial, usb) failed or was mis-specified."""


class BundleError(RamanEdgeError):
    """A model bundle is missing, corrupt, or does not match its manifest.

    A configuration error: the model is what the operator chose to run, and no
    restart can make a damaged or unknown one usable.
    """

    exit_code = 2


class StorageError(RamanEdgeError):
    """The results database cannot be opened or written (disk full, read-only, corrupt)."""

    exit_code = 3


class ConfigError(RamanEdgeError):
    """A configuration option is invalid."""

    exit_code = 2


class SourceConfigError(SourceError, ConfigError):
    """A source URL is mis-specified: unknown scheme, unknown option, bad option value.

    A :class:`SourceError` (so a daemon's ``except SourceError`` still sees it) with the
    exit status of a :class:`ConfigError`: restarting cannot fix a wrong URL.
    """

    exit_code = 2


class MissingExtraError(RamanEdgeError):
    """An optional back-end is not installed; names the pip extra that provides it."""

    def __init__(self, what: str, extra: str, module: str) -> None:
        super().__init__(
            f"{what} needs the optional package '{module}', which is not installed; "
            f"install it with: pip install 'raman-edge[{extra}]'"
        )
        self.extra = extra
        self.module = module
