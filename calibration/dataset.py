"""The project's labelled-spectra ``.npz`` format (as in ``../shared/data``).

Keys: ``spectra`` float (n, points), ``labels`` str (n,), ``wavenumbers`` float
(points,), optional ``files`` str (n,) (RRUFF file names), ``specimens`` str (n,)
(RRUFF specimen ids, as ``raman-edge dataset build`` writes them) and boolean split
masks (``in_10pct`` ...).  Loaded with ``allow_pickle=False``: an object array is
refused, never unpickled.
"""
from __future__ import annotations

import hashlib
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import ReaderError

REQUIRED_KEYS = ("spectra", "labels", "wavenumbers")

#: Largest total of uncompressed array data an ``.npz`` may hold (about 100,000
#: spectra of 1,392 float32 points); checked from the archive's directory before
#: any array is loaded.
MAX_NPZ_BYTES = 512 * 1024 * 1024
#: Most points per spectrum (the same bound as every text reader).
MAX_POINTS = 65_536

#: A RRUFF specimen id: a capital letter and six digits at the start of a sample field
#: (``R040063-4``, ``R060353_a``, ``X070005.3`` and ``R040022 perp to fiber axes`` are
#: samples of specimens ``R040063``, ``R060353``, ``X070005`` and ``R040022``).
SPECIMEN_ID = re.compile(r"^([A-Z]\d{6})(?!\d)")
#: Prefix of the group :meth:`Dataset.specimen_ids` gives a spectrum without a specimen id
#: (followed by its row); RRUFF ids never start with it.
NO_SPECIMEN = "#"


def specimen_from_file(name: str) -> str:
    """RRUFF specimen of a RRUFF file name, else ``""``.

    The second ``__`` field's leading letter and six digits (:data:`SPECIMEN_ID`):
    ``Calcite__R040063-4__Raman_Data_Processed__...`` gives ``R040063``; ``R050177-3_1``,
    ``R060353_a`` and ``X070005.3`` give ``R050177``, ``R060353`` and ``X070005``.
    """
    parts = Path(str(name)).name.split("__")
    m = SPECIMEN_ID.match(parts[1]) if len(parts) > 1 else None
    return m.group(1) if m else ""


@dataclass(frozen=True)
class Dataset:
    """Spectra sharing one Raman-shift axis, with their labels."""

    spectra: np.ndarray          # float32 (n, points)
    labels: np.ndarray           # str (n,)
    wavenumbers: np.ndarray      # float64 (points,), strictly increasing
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    path: Path | None = None

    def __len__(self) -> int:
        return int(self.spectra.shape[0])

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels.tolist()))

    def subset(self, idx: np.ndarray) -> "Dataset":
        extras = {k: v[idx] for k, v in self.extras.items() if v.shape[:1] == self.labels.shape}
        return Dataset(self.spectra[idx], self.labels[idx], self.wavenumbers, extras, self.path)

    def specimen_ids(self) -> np.ndarray | None:
        """Specimen per spectrum, the unit a split must keep on one side; ``None`` without ids.

        Taken from the ``specimens`` column when there is one, else from ``files``
        (:func:`specimen_from_file`); a value holding a RRUFF sample id (``R040063-4``)
        counts as its specimen (``R040063``), any other non-empty value as given.  A
        spectrum with no id is a specimen of its own (``"#<row>"``, :data:`NO_SPECIMEN`):
        spectra whose origin is unknown are never pooled into one group.

        Returns
        -------
        numpy.ndarray or None
            str (n,); ``None`` when the dataset has neither column.
        """
        n = len(self)
        specimens, files = self.extras.get("specimens"), self.extras.get("files")
        if specimens is not None and specimens.shape == (n,):
            ids = [_specimen_of(str(v).strip()) for v in specimens.tolist()]
        elif files is not None and files.shape == (n,):
            ids = [specimen_from_file(str(f)) for f in files.tolist()]
        else:
            return None
        return np.asarray([s or f"{NO_SPECIMEN}{i}" for i, s in enumerate(ids)])


def _specimen_of(value: str) -> str:
    m = SPECIMEN_ID.match(value)
    return m.group(1) if m else value


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_npz(path: str | Path, required: Sequence[str], where: str | None = None) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, refusing pickles, truncation and missing ``required`` keys.

    Raises
    ------
    ReaderError
        Naming ``where`` (default: the path) and what was wrong.
    """
    path = Path(path)
    where = where or str(path)
    _check_npz_size(path, where)
    try:
        z = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ReaderError(f"{where}: no such file") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ReaderError(f"{where}: not a readable .npz file ({e})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ReaderError(f"{where}: a single .npy array, not an .npz archive with {', '.join(map(repr, required))}")
    with z:
        try:
            keys = set(z.files)
        except Exception as e:  # a truncated zip can fail here
            raise ReaderError(f"{where}: not a readable .npz file ({e})") from None
        missing = [k for k in required if k not in keys]
        if missing:
            raise ReaderError(f"{where}: missing key(s) {missing}; found {sorted(keys)}")
        try:
            return {k: z[k] for k in keys}
        except ValueError as e:  # object arrays need pickle, which we refuse
            raise ReaderError(f"{where}: contains an object array (pickle), refused: {e}") from None
        except Exception as e:
            raise ReaderError(f"{where}: corrupt array data ({e})") from None


def _check_npz_size(path: Path, where: str) -> None:
    """Refuse an archive whose arrays would take more than :data:`MAX_NPZ_BYTES` once loaded."""
    try:
        with zipfile.ZipFile(path) as zf:
            total = sum(info.file_size for info in zf.infolist())
    except FileNotFoundError:
        raise ReaderError(f"{where}: no such file") from None
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return  # not a readable zip: np.load below says so in its own words
    if total > MAX_NPZ_BYTES:
        raise ReaderError(f"{where}: arrays of {total / 2**20:.0f} MiB uncompressed, above the "
                          f"{MAX_NPZ_BYTES / 2**20:g} MiB an .npz may hold; refused unread (split the dataset)")


def load_dataset(path: str | Path, allow_nonfinite: bool = False) -> Dataset:
    """Load and validate a labelled ``.npz``; raise :class:`ReaderError` naming the problem.

    Parameters
    ----------
    path : str or Path
    allow_nonfinite : bool
        Keep rows with NaN/inf instead of refusing the file.  Replay uses this so
        one bad spectrum is logged as an error row while the good ones go on.
    """
    path = Path(path)
    arrays = read_npz(path, REQUIRED_KEYS)
    spectra, labels, wn = arrays.pop("spectra"), arrays.pop("labels"), arrays.pop("wavenumbers")
    if spectra.ndim != 2 or not np.issubdtype(spectra.dtype, np.number):
        raise ReaderError(f"{path}: 'spectra' must be a 2-D numeric array, got {spectra.dtype} {spectra.shape}")
    n, points = spectra.shape
    if n == 0:
        raise ReaderError(f"{path}: 'spectra' is empty")
    if points > MAX_POINTS:
        raise ReaderError(f"{path}: spectra of {points} points; at most {MAX_POINTS} are accepted")
    if wn.ndim != 1 or wn.size != points:
        raise ReaderError(f"{path}: 'wavenumbers' has shape {wn.shape}, expected ({points},) to match 'spectra'")
    if labels.shape != (n,):
        raise ReaderError(f"{path}: 'labels' has shape {labels.shape}, expected ({n},)")
    labels = labels.astype(str)
    wn = wn.astype(np.float64)
    if not np.all(np.isfinite(wn)) or not np.all(np.diff(wn) > 0):
        raise ReaderError(f"{path}: 'wavenumbers' must be finite and strictly increasing")
    bad = ~np.isfinite(spectra).all(axis=1)
    if bad.any() and not allow_nonfinite:
        rows = np.nonzero(bad)[0]
        raise ReaderError(f"{path}: {rows.size} spectra contain NaN or inf (first: row {int(rows[0])})")
    return Dataset(spectra.astype(np.float32), labels, wn, arrays, path)
