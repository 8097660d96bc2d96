"""``replay://PATH``: play recorded spectra as if an instrument were acquiring them.

PATH is one of

* a labelled ``.npz`` dataset: each row is an acquisition on the dataset's Raman-shift
  axis, ``truth`` = its label;
* a folder of spectrum files of any format :func:`calibration.readers.read` knows
  (RRUFF ``.txt``, Wasatch ENLIGHTEN ``.csv``, Horiba and Renishaw ``.txt``, OpenRAMAN
  ``.csv``, ``.npz``), played file by file in name order (:data:`SPECTRUM_SUFFIXES`;
  hidden files and ``README``/``LICENSE`` files are passed over, and so are other
  suffixes such as ``.json`` or ``.png``: they are logged once at open).  A file with
  several spectra (an ``.npz``, a Renishaw map) plays each in file order;
  ``truth`` = the mineral or label the file names;
* a single spectrum file of any of those formats (refused at open when it cannot be
  read at all: there is nothing to replay).

Nothing read is passed over silently: a file in a folder that cannot be read (malformed,
truncated, binary, oversized, NaN or inf in a text file) is delivered as one acquisition
with ``meta["unreadable"]`` = the reason and an empty spectrum, which the pipeline logs
as an unreadable-priority row (priority 3), and is recorded in :attr:`ReplaySource.skipped`
(once, however many loop passes).  A row with NaN or inf in an ``.npz`` is delivered as
it is and refused by the pipeline the same way.

``replay:///abs/path.npz`` is an absolute path; ``replay://rel/path.npz`` (or
``replay:rel/path.npz``) is relative to the working directory.  Characters such as
``?``, ``#`` or ``%`` in a path must be percent-encoded.

Query options:

``rate``
    acquisitions per second (float, default 0 = as fast as the reader asks).
``loop``
    start again after the last item (bool, default false).
``start``, ``count``
    play only items ``start .. start+count-1`` (by position in the dataset or the
    sorted folder; default all).
``shuffle``, ``seed``
    play that selection in a random order, reshuffled on every loop pass
    (deterministic for a given seed).

Example: ``replay:///data/raw_train.npz?rate=5&loop=1&shuffle=1&seed=7``.
"""
from __future__ import annotations

import logging
import math
import re
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np

from calibration.dataset import Dataset, load_dataset
from calibration.errors import ConfigError, ReaderError, SourceError
from calibration.readers import dataset_spectrum, read, sniff_format
from calibration.spectrum import Spectrum

from .source import Acquisition, Source, query_params, register_scheme

log = logging.getLogger(__name__)

#: File suffixes a folder replay reads (case-insensitive); every other file is passed over.
SPECTRUM_SUFFIXES = (".txt", ".csv", ".tsv", ".npz")
# Documentation beside exports ("README.txt", "LICENSE"): never a spectrum.
_NOT_SPECTRA = re.compile(r"^(readme|licen[cs]e|changelog|notes)([._-]|$)", re.IGNORECASE)

_TRUE = {"", "1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ReplayConfigError(SourceError, ConfigError):
    """A ``replay://`` URL that cannot work as written (bad option, missing path, nothing to play): exit status 2."""


def replay_path(url: str) -> Path:
    """The file or folder a ``replay://`` URL names.

    ``replay:///abs/x.npz`` → ``/abs/x.npz``; ``replay://rel/x.npz`` → ``rel/x.npz``
    (the "host" part is the first path component of a relative path).

    Raises
    ------
    SourceError
        When the URL is not ``replay:`` or names no path.
    """
    parts = urlsplit(url)
    if parts.scheme != "replay":
        raise ReplayConfigError(f"{url!r} is not a replay:// URL")
    raw = unquote(parts.netloc + parts.path)
    if not raw:
        raise ReplayConfigError(f"{url!r} names no file; use replay:///abs/path.npz or replay://relative/path.npz")
    return Path(raw).expanduser()


def folder_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """``(played, passed_over)``: the spectrum files of ``folder`` in name order, and the rest.

    Played: plain files with a suffix in :data:`SPECTRUM_SUFFIXES`, except hidden ones
    and documentation (``README``, ``LICENSE``, ...).  Sub-folders are not entered.
    """
    played: list[Path] = []
    passed: list[Path] = []
    for p in sorted(folder.iterdir(), key=lambda q: q.name):
        if not p.is_file():
            continue
        ok = p.suffix.lower() in SPECTRUM_SUFFIXES and not p.name.startswith(".") and not _NOT_SPECTRA.match(p.name)
        (played if ok else passed).append(p)
    return played, passed


def unreadable_spectrum(where: str, name: str | None = None) -> Spectrum:
    """The empty stand-in for a spectrum that could not be read (its row keeps the reason)."""
    meta = {"where": where} if name is None else {"where": where, "file": name}
    return Spectrum(np.zeros(0), np.zeros(0), "raman_shift", meta)


class ReplaySource(Source):
    """Plays a dataset, a folder of spectrum files or one spectrum file (see the module doc).

    Attributes
    ----------
    path : pathlib.Path
        What is replayed.
    rate : float
        Acquisitions per second; 0 means no pacing.
    loop, shuffle : bool
    start : int
    count : int or None
    seed : int or None
    skipped : list of (str, str)
        ``(file, ReaderError message)`` for each unreadable file (each file once,
        however many loop passes); each also became an unreadable acquisition.
    """

    scheme = "replay"
    OPTIONS = ("rate", "loop", "start", "count", "shuffle", "seed")

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.path = replay_path(url)
        opts = query_params(url)
        unknown = sorted(set(opts) - set(self.OPTIONS))
        if unknown:
            raise ReplayConfigError(f"{url}: unknown option(s) {unknown}; known: {list(self.OPTIONS)}")
        self.rate = self._number(opts, "rate", float, 0.0)
        self.start = self._number(opts, "start", int, 0)
        count = self._number(opts, "count", int, -1)
        self.count: int | None = None if count < 0 else count
        self.seed: int | None = self._number(opts, "seed", int, None)
        self.loop = self._flag(opts, "loop")
        self.shuffle = self._flag(opts, "shuffle")
        if "count" in opts and count < 1:
            raise ReplayConfigError(f"{url}: count must be at least 1, got {opts['count']!r}")
        self.skipped: list[tuple[str, str]] = []
        self._reset()

    # -- options ---------------------------------------------------------------
    def _number(self, opts: dict[str, str], name: str, kind: type, default):
        if name not in opts:
            return default
        try:
            value = kind(opts[name])
        except ValueError:
            raise ReplayConfigError(f"{self.url}: option {name}={opts[name]!r} is not a valid {kind.__name__}") from None
        if value < 0 or not math.isfinite(value):  # math: Python ints of any size, numpy would overflow
            raise ReplayConfigError(f"{self.url}: option {name}={opts[name]!r} must be a finite number ≥ 0")
        return value

    def _flag(self, opts: dict[str, str], name: str) -> bool:
        v = opts.get(name, "0").strip().lower()
        if v in _TRUE:
            return True
        if v in _FALSE:
            return False
        raise ReplayConfigError(f"{self.url}: option {name}={opts[name]!r} is not a boolean (use 1/0, true/false)")

    # -- state -----------------------------------------------------------------
    def _reset(self) -> None:
        self._opened = False
        self._dataset: Dataset | None = None
        self._files: list[Path] = []
        self._spectra: list[Spectrum] = []
        self._selection = np.zeros(0, dtype=np.int64)
        self._order = self._selection
        self._pos = 0
        self._pass = 0
        self._emitted_in_pass = 0
        self._bad: set[int] = set()
        self._queued: list[_Item] = []
        self._pending: _Item | None = None
        self._seq = 0
        self._due = 0.0

    def declared_axis(self) -> tuple[str | None, float | None]:
        """``(axis unit, laser nm)`` of every spectrum this replay will deliver, where known before it runs.

        A labelled ``.npz`` is on a Raman-shift axis (laser not recorded); a single file
        declares what it holds when it can be read; a folder declares nothing (its
        files may differ, so each spectrum is checked on its own).
        """
        path = self.path
        if not path.is_file():
            return None, None
        fmt = self._sniff(path)
        if fmt == "npz":
            return "raman_shift", None
        try:
            got = read(path)
        except ReaderError:
            return None, None  # the replay itself reports it, as an unreadable row
        spectra = got if isinstance(got, list) else [got]
        units = {sp.unit for sp in spectra}
        lasers = {sp.meta.get("laser_nm") for sp in spectra}
        return (units.pop() if len(units) == 1 else None), (lasers.pop() if len(lasers) == 1 else None)

    @staticmethod
    def _sniff(path: Path) -> str | None:
        try:
            fmt = sniff_format(path)
        except ReaderError:
            return None
        return None if fmt is None else fmt.name

    def open(self) -> None:
        """Load the dataset / list the folder / read the file.

        Raises
        ------
        SourceError
            A single file cannot be read at all; a :class:`ReplayConfigError` (exit
            status 2) when the path does not exist, a folder holds no spectrum files, or
            the selection is empty.  An unreadable file in a folder is
            not an error here: it becomes an unreadable acquisition.
        """
        self.close()
        path = self.path
        if not path.exists():
            raise ReplayConfigError(f"{self.url}: no such file or folder: {path}")
        if path.is_dir():
            self._files, passed = folder_files(path)
            if passed:
                log.info("replay %s: passing over %d file(s) that are not spectra by name: %s", self.url, len(passed),
                         ", ".join(p.name for p in passed[:10]) + (", ..." if len(passed) > 10 else ""))
            if not self._files:
                raise ReplayConfigError(f"{self.url}: folder {path} holds no spectrum files "
                                  f"({', '.join(SPECTRUM_SUFFIXES)})")
            n = len(self._files)
        else:
            n = self._open_file(path)
        stop = n if self.count is None else self.start + self.count
        self._selection = np.arange(n)[self.start:stop]
        if self._selection.size == 0:
            raise ReplayConfigError(f"{self.url}: start={self.start} is past the {n} items in {path}")
        self._rng = np.random.default_rng(self.seed)
        self._order = self._new_order()
        self._opened = True
        self._due = time.monotonic()
        log.info("replaying %d of %d items from %s", self._selection.size, n, path)

    def _open_file(self, path: Path) -> int:
        """Load one file's spectra as the items; returns how many.

        A single file that cannot be read at all leaves nothing to replay: a
        :class:`SourceError` (bad rows inside a readable file still become rows).
        """
        try:
            if self._sniff(path) == "npz":
                self._dataset = load_dataset(path, allow_nonfinite=True)
                return len(self._dataset)
            got = read(path)
        except ReaderError as e:
            raise SourceError(f"{self.url}: {e}") from e
        self._spectra = got if isinstance(got, list) else [got]
        return len(self._spectra)

    def close(self) -> None:
        """Drop the loaded data; safe to call twice.  :attr:`skipped` is kept for inspection."""
        skipped = self.skipped
        self._reset()
        self.skipped = skipped

    # -- playback ----------------------------------------------------------------
    def _new_order(self) -> np.ndarray:
        return self._rng.permutation(self._selection) if self.shuffle else self._selection

    def _read_file(self, i: int) -> list[_Item]:
        """Every spectrum of folder file ``i`` as items; an unreadable file is one unreadable item."""
        path = self._files[i]
        try:
            if self._sniff(path) == "npz":
                ds = load_dataset(path, allow_nonfinite=True)
                spectra = [dataset_spectrum(ds, k) for k in range(len(ds))]
            else:
                got = read(path)
                spectra = got if isinstance(got, list) else [got]
        except ReaderError as e:
            self._bad.add(i)
            self.skipped.append((str(path), str(e)))
            log.warning("replay %s: unreadable, logged as such: %s", self.url, e)
            return [(i, unreadable_spectrum(str(path), path.name), None, str(e))]
        return [(i, sp, _truth(sp), None) for sp in spectra]

    def _load(self, i: int) -> list[_Item]:
        if self._dataset is not None:
            spectrum = dataset_spectrum(self._dataset, i)
            return [(i, spectrum, spectrum.meta["label"], None)]
        if self._files:
            return self._read_file(i)
        return [(i, self._spectra[i], _truth(self._spectra[i]), None)]

    def _next_item(self) -> _Item:
        while not self._queued:
            if self._pos >= len(self._order):
                if not self.loop:
                    raise StopIteration
                if self._emitted_in_pass == 0:
                    log.error("%s: nothing to play in a whole pass; stopping the replay", self.url)
                    raise StopIteration
                self._pass += 1
                self._pos = 0
                self._emitted_in_pass = 0
                self._order = self._new_order()
            i = int(self._order[self._pos])
            self._pos += 1
            if i in self._bad:
                continue  # an unreadable file is logged once, not on every loop pass
            self._queued = self._load(i)
        self._emitted_in_pass += 1
        return self._queued.pop(0)

    def read(self, timeout: float | None = None) -> Acquisition | None:
        """Next acquisition, paced by ``rate``.

        Returns ``None`` when the next one is not due within ``timeout`` seconds;
        raises ``StopIteration`` when the replay is over (never with ``loop``, unless
        a whole pass has nothing to play).  An unreadable spectrum arrives with
        ``meta["unreadable"]`` set to the reason and an empty spectrum.
        """
        if not self._opened:
            raise SourceError(f"{self.url}: source is not open; call open() or use it in a with-block")
        if self._pending is None:
            self._pending = self._next_item()
        if self.rate > 0:
            wait = self._due - time.monotonic()
            if wait > 0:
                if timeout is not None and wait > timeout:
                    time.sleep(max(timeout, 0.0))
                    return None
                time.sleep(wait)
            period = 1.0 / self.rate
            now = time.monotonic()
            # Keep a steady schedule, but after a stall restart it rather than burst to catch up.
            self._due = self._due + period if now - self._due < period else now + period
        i, spectrum, truth, error = self._pending
        self._pending = None
        acq = Acquisition(seq=self._seq, spectrum=spectrum, acquired_at=time.time(), source=self.url,
                          calibration=None, truth=truth, meta=self._meta(i, spectrum, error))
        self._seq += 1
        return acq

    def _meta(self, i: int, spectrum: Spectrum, error: str | None) -> dict:
        meta: dict = {"index": i, "pass": self._pass, "where": spectrum.where}
        if "file" in spectrum.meta:
            meta["file"] = spectrum.meta["file"]
        # The laser travels in the acquisition's meta: a deferred row is rebuilt from it.
        if spectrum.meta.get("laser_nm") is not None:
            meta["laser_nm"] = spectrum.meta["laser_nm"]
        if error is not None:
            meta["unreadable"] = error
        return meta


def _truth(spectrum: Spectrum) -> str | None:
    return spectrum.meta.get("label") or spectrum.meta.get("mineral")


#: ``(item index, spectrum, truth, reason it is unreadable or None)``.
_Item = tuple[int, Spectrum, "str | None", "str | None"]


register_scheme("replay", ReplaySource)
