"""Spectrum sources opened by URL, pyserial-style.

A :class:`Source` yields :class:`Acquisition` objects: one spectrum as the instrument
delivered it (pixel or Raman-shift axis), plus when, where and in what order.
Back-ends register a URL scheme; :func:`open_source` picks one::

    sim://?minerals=Calcite,Quartz&rate=5&seed=1
    replay:///data/raw_train.npz?loop=0
    serial:///dev/ttyUSB0?baud=115200&protocol=raman-edge
    usb://2457:4000                            (Ocean STS through python-seabreeze; extra 'usb')
"""
from __future__ import annotations

import abc
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs, urlsplit

from calibration.axis import AxisCalibration
from calibration.errors import SourceConfigError, SourceError
from calibration.spectrum import Spectrum

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Acquisition:
    """One spectrum as acquired.

    Attributes
    ----------
    seq : int
        Sequence number assigned by the source (monotonic per source session).
    spectrum : Spectrum
        Intensities on the instrument's axis (``pixel`` for a detector, ``raman_shift``
        for files that are already calibrated).
    acquired_at : float
        UTC POSIX time of the acquisition (wall clock, for the record).
    source : str
        The URL of the source.
    calibration : AxisCalibration or None
        Axis calibration the instrument reports for pixel-axis spectra.
    truth : str or None
        Known label (replayed labelled data, or the simulator's mineral), for benchmarking.
    meta : dict
        Anything else (integration time, detector temperature, file name, ...).
    """

    seq: int
    spectrum: Spectrum
    acquired_at: float
    source: str
    calibration: AxisCalibration | None = None
    truth: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class Source(abc.ABC):
    """A stream of acquisitions.  Use as a context manager and iterate, or call :meth:`read`."""

    #: URL scheme this back-end serves (``sim``, ``replay``, ...).
    scheme: str = ""

    def __init__(self, url: str) -> None:
        self.url = url

    @abc.abstractmethod
    def open(self) -> None:
        """Acquire the underlying resource (file, port, device)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release it; safe to call twice."""

    @abc.abstractmethod
    def read(self, timeout: float | None = None) -> Acquisition | None:
        """Next acquisition; ``None`` on timeout; raises ``StopIteration`` when exhausted."""

    def __enter__(self) -> "Source":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Acquisition]:
        while True:
            try:
                acq = self.read()
            except StopIteration:
                return
            if acq is not None:
                yield acq


SourceFactory = Callable[[str], Source]
_REGISTRY: dict[str, SourceFactory] = {}


def register_scheme(scheme: str, factory: SourceFactory) -> None:
    """Make ``scheme://`` URLs open with ``factory(url)``."""
    _REGISTRY[scheme] = factory


def query_params(url: str) -> dict[str, str]:
    """The URL's query as a flat dict (last value wins), for back-end options."""
    return {k: v[-1] for k, v in parse_qs(urlsplit(url).query, keep_blank_values=True).items()}


def open_source(url: str) -> Source:
    """Create (not yet open) the source for ``url``.

    Creating a source only parses its URL; files, ports and devices are touched in
    :meth:`Source.open`.  So every :class:`SourceError` raised here is a configuration
    error (restarting cannot fix the URL) and comes out as :class:`SourceConfigError`,
    exit status 2, whichever back-end raised it.

    Raises
    ------
    SourceConfigError
        No or unknown scheme, unknown option, bad option value; names the URL.
    """
    # Import built-in back-ends here so that registering them has no import-order trap.
    from . import link, replay, sim, usb  # noqa: F401

    try:
        scheme = urlsplit(url).scheme
    except ValueError as e:  # e.g. an unbalanced '[' in the host part
        raise SourceConfigError(f"source {url!r} is not a valid URL: {e}") from None
    if not scheme:
        raise SourceConfigError(f"source {url!r} has no scheme; "
                                "use e.g. sim://, replay://PATH or serial:///dev/ttyUSB0")
    try:
        factory = _REGISTRY[scheme]
    except KeyError:
        raise SourceConfigError(f"source {url!r}: unknown scheme {scheme!r}; known: {sorted(_REGISTRY)}") from None
    try:
        return factory(url)
    except SourceConfigError:
        raise
    except SourceError as e:  # a back-end that parses its URL with plain SourceError
        raise SourceConfigError(str(e)) from e
