"""One labelled training file assembled from RRUFF archives, folders of RRUFF files and ``.npz`` files.

Sources (each a path):

folder
    Every ``*.txt`` file below it (recursively, hidden files skipped, sorted by path),
    read as RRUFF ``.txt`` (:func:`calibration.readers.read_rruff`); other files are
    counted as ignored.
zip archive
    As RRUFF publishes them (``LR-Raman.zip``, ``excellent_unoriented.zip``, ...): every
    ``*.txt`` member, sorted by name, read as RRUFF ``.txt``.  Members are extracted one
    at a time into a private temporary folder under their base name (never their path),
    and one larger than :data:`calibration.instruments.MAX_TEXT_BYTES` is refused unread.
``.npz``
    A labelled dataset (:func:`calibration.dataset.load_dataset`); its optional ``files``,
    ``specimens``, ``kind`` and ``laser_nm`` arrays are used when present.
a single RRUFF ``.txt`` file
    One spectrum.

Every spectrum is resampled onto one grid with the shared preprocessing's own
``resample`` step (:mod:`calibration.preprocess`: linear, zero outside the measured
range, at least half of the grid covered), its name normalised
(:func:`normalise_name`, :func:`class_names`), and exact duplicates (the same float32
values on the grid) are dropped, the first occurrence kept.  See docs/library.md.
"""
from __future__ import annotations

import collections
import logging
import math
import os
import re
import tempfile
import unicodedata
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

# The specimen rule lives with the dataset format, which splits by it (Dataset.specimen_ids).
from .dataset import SPECIMEN_ID, file_sha256, load_dataset, specimen_from_file
from .errors import ConfigError, InputError, RamanEdgeError
from .instruments import MAX_POINTS, MAX_TEXT_BYTES, quote
from .preprocess import SPEC_VERSION, Preprocessor, make_grid

log = logging.getLogger(__name__)

#: Sang et al.'s RRUFF axis (30–1599 cm⁻¹), which holds the model grid (200–1591 cm⁻¹): every
#: point of every shared dataset is kept, and training resamples onto its own grid anyway.
DEFAULT_GRID = "30:1599:1"
#: Share of the grid a spectrum's measured range must cover (the preprocessing's default).
MIN_OVERLAP = 0.5
#: Fewest points a library grid may have (a RRUFF reader's minimum).
MIN_GRID_POINTS = 16
KINDS = ("raw", "processed", "unknown")

# Spelled-out Greek letters, so that "Roselite-β" and "Roselite-beta" stay one name and never
# collapse into "Roselite" when the non-alphanumerics are removed.
_GREEK = {"α": "alpha", "β": "beta", "γ": "gamma", "δ": "delta", "ε": "epsilon", "θ": "theta", "κ": "kappa",
          "λ": "lambda", "μ": "mu", "ξ": "xi", "π": "pi", "σ": "sigma", "τ": "tau", "φ": "phi", "χ": "chi",
          "ψ": "psi", "ω": "omega"}
_WORDS = re.compile(r"[^a-z0-9]+")


# --------------------------------------------------------------------------- names and file-name fields


def normalise_name(name: str) -> str:
    """A mineral name in RRUFF's file-name form: letters and digits only, first letter upper case.

    Unicode is decomposed (NFKD) and combining marks dropped (``Bastnäsite`` → ``Bastnasite``),
    Greek letters spelled out (``β`` → ``beta``), then every character that is not a letter or
    digit removed (``Agardite-(Y)`` → ``AgarditeY``, ``Alum (K)`` → ``AlumK``, ``Calcite_2`` →
    ``Calcite2``).  Digits are kept: they are polytypes (``Magnesiotaaffeite2N2S``) or formulas
    (``AlSO4OH``), not copy numbers.  An empty result means the name had no letters or digits.
    """
    text = unicodedata.normalize("NFKD", str(name))
    text = "".join(_GREEK.get(ch.lower(), ch) for ch in text if not unicodedata.combining(ch))
    text = "".join(ch for ch in text if ch.isalnum())
    return text[:1].upper() + text[1:]


def class_names(spellings: Mapping[str, int]) -> dict[str, str]:
    """Each spelling → its class name.

    Spellings whose :func:`normalise_name` forms are equal ignoring case are one class,
    named by the form of the spelling with the most spectra (ties: the form that sorts
    first), so the result does not depend on the order of the sources.

    Parameters
    ----------
    spellings : mapping
        Spelling as found in a source → number of spectra carrying it.
    """
    groups: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for spelling, n in spellings.items():
        form = normalise_name(spelling)
        groups[form.casefold()][form] += n
    chosen = {key: min(forms.items(), key=lambda kv: (-kv[1], kv[0]))[0] for key, forms in groups.items()}
    return {s: chosen[normalise_name(s).casefold()] for s in spellings}


def laser_from_file(name: str) -> float:
    """Laser wavelength of a RRUFF file name (``..__Raman__514__..`` → 514.0), else NaN."""
    parts = Path(str(name)).name.split("__")
    if len(parts) > 3 and parts[2].lower() == "raman":
        try:
            value = float(parts[3])
        except ValueError:
            return math.nan
        return value if math.isfinite(value) and value > 0 else math.nan
    return math.nan


def kind_from_text(text: str | None) -> str:
    """``"raw"``, ``"processed"`` or ``"unknown"`` from a ``##FILETYPE`` value or a file name."""
    words = set(_WORDS.split(str(text or "").lower()))
    if "raw" in words:
        return "raw"
    if "processed" in words:
        return "processed"
    return "unknown"


def printable(text: str, limit: int = 120) -> str:
    """``text`` for a one-line report: as is when printable, else quoted with escapes."""
    text = str(text)
    if text.isprintable() and len(text) <= limit:
        return text
    return quote(text, limit)


# --------------------------------------------------------------------------- grid


def parse_grid(text: str) -> np.ndarray:
    """The grid ``START:STOP:STEP`` (cm⁻¹, inclusive) as an array.

    Raises
    ------
    ConfigError
        Naming ``--grid`` and what is wrong.
    """
    parts = str(text).split(":")
    try:
        start, stop, step = (float(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--grid {quote(str(text))}: expected START:STOP:STEP in cm-1, e.g. {DEFAULT_GRID}") from None
    if not all(math.isfinite(v) for v in (start, stop, step)):
        raise ConfigError(f"--grid {quote(str(text))}: values must be finite numbers")
    if not (step > 0 and stop > start):
        raise ConfigError(f"--grid {quote(str(text))}: needs STOP > START and STEP > 0")
    n = int(round((stop - start) / step)) + 1
    if not MIN_GRID_POINTS <= n <= MAX_POINTS:
        raise ConfigError(f"--grid {quote(str(text))}: {n} points; between {MIN_GRID_POINTS} and {MAX_POINTS} allowed")
    return make_grid(start, stop, step)


def resampler(grid: np.ndarray) -> Preprocessor:
    """The preprocessing's ``resample`` step alone, onto ``grid`` (zeros outside the measured range)."""
    step = float(grid[1] - grid[0])
    spec = {"version": SPEC_VERSION, "grid": {"start": float(grid[0]), "stop": float(grid[-1]), "step": step},
            "steps": [{"op": "resample", "fill": 0.0, "min_overlap": MIN_OVERLAP}]}
    return Preprocessor(spec)


# --------------------------------------------------------------------------- what a source gives


@dataclass(frozen=True)
class Unreadable:
    """A file or row that gave no spectrum, and why."""

    source: str
    item: str
    reason: str


@dataclass
class Part:
    """The spectra one source gave, on the library grid, with their columns."""

    source: str
    path: Path
    form: str                                   # "folder", "zip", "npz" or "rruff"
    spectra: list[np.ndarray] = field(default_factory=list)
    spellings: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    specimens: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    lasers: list[float] = field(default_factory=list)
    origins: list[str] = field(default_factory=list)
    unreadable: list[Unreadable] = field(default_factory=list)
    ignored: int = 0
    sha256: str | None = None

    def add(self, y: np.ndarray, spelling: str, file: str, specimen: str, kind: str, laser: float,
            origin: str) -> None:
        self.spectra.append(y)
        self.spellings.append(spelling)
        self.files.append(file)
        self.specimens.append(specimen)
        self.kinds.append(kind)
        self.lasers.append(laser)
        self.origins.append(origin)

    def refuse(self, item: str, reason: str) -> None:
        self.unreadable.append(Unreadable(self.source, item, reason))


def _checked(y: np.ndarray, grid: np.ndarray) -> str | None:
    """Why a resampled spectrum cannot be trained on, or ``None``."""
    if not np.all(np.isfinite(y)):
        return "NaN or inf intensities"
    if not float(np.max(y)) > 0:
        return f"no positive signal on the grid {grid[0]:g}-{grid[-1]:g} cm-1 (cannot be normalised)"
    return None


def _read_rruff_file(part: Part, path: Path, item: str, pre: Preprocessor, grid: np.ndarray,
                     hide: str | None = None, file: str | None = None) -> None:
    """One RRUFF ``.txt`` into ``part`` (or its reason into ``part.unreadable``).

    ``hide``: a temporary path to replace by the item's origin in messages; ``file``: the
    name for the ``files`` column when ``path`` is not the original's.
    """
    from .readers import read_rruff  # readers registers every instrument format; keep importing this module cheap

    origin = f"{part.source}:{item}" if part.form != "rruff" else part.source
    try:
        s = read_rruff(path)
        y = pre.batch(s.intensities[None, :], s.axis, where=[origin])[0]
    except RamanEdgeError as e:
        reason = str(e).replace(hide, origin) if hide else str(e)
        part.refuse(item, printable(reason, 300))
        return
    why = _checked(y, grid)
    name = s.meta.get("mineral") or ""
    if why is None and not normalise_name(name):
        why = "no mineral name (no ##NAMES header and no RRUFF-style file name)" if not name else \
            f"mineral name {quote(name)} has no letters or digits"
    if why is not None:
        part.refuse(item, why)
        return
    file = file or path.name
    m = SPECIMEN_ID.match((s.meta.get("rruff_id") or "").strip())
    specimen = m.group(1) if m else specimen_from_file(file)
    laser = s.meta.get("laser_nm")
    laser = float(laser) if laser else laser_from_file(file)
    kind = kind_from_text(s.meta.get("filetype")) if s.meta.get("filetype") else kind_from_text(file)
    part.add(y.astype(np.float32), str(name), file, specimen, kind, laser, origin)


def _read_folder(part: Part, pre: Preprocessor, grid: np.ndarray) -> None:
    root = part.path
    for p in sorted(root.rglob("*"), key=lambda q: q.relative_to(root).as_posix()):
        rel = p.relative_to(root)
        if any(x.startswith(".") for x in rel.parts) or not p.is_file():
            continue
        if p.suffix.lower() != ".txt":
            part.ignored += 1
            continue
        _read_rruff_file(part, p, rel.as_posix(), pre, grid)


def _read_zip(part: Part, pre: Preprocessor, grid: np.ndarray) -> None:
    try:
        zf = zipfile.ZipFile(part.path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise InputError(f"{part.path}: not a readable zip archive ({e}); nothing usable") from None
    with zf, tempfile.TemporaryDirectory(prefix="raman-edge-library-") as tmp:
        members = sorted((i for i in zf.infolist() if not i.is_dir()), key=lambda i: i.filename)
        for info in members:
            base = info.filename.replace("\\", "/").rsplit("/", 1)[-1]
            if (base.startswith(".") or info.filename.startswith("__MACOSX/")
                    or not base.lower().endswith(".txt")):
                part.ignored += 1
                continue
            item = printable(info.filename, 300)
            if info.file_size > MAX_TEXT_BYTES:
                part.refuse(item, f"{info.file_size / 2**20:.1f} MiB uncompressed, above the "
                                  f"{MAX_TEXT_BYTES / 2**20:g} MiB a spectrum file may have; refused unread")
                continue
            # The member's base name carries the RRUFF fields the reader parses; a fixed folder keeps
            # the archive's paths (which may hold '..') off the file system.
            target = Path(tmp) / (base if base.isprintable() and "/" not in base else "member.txt")
            try:
                with zf.open(info) as src:
                    data = src.read(MAX_TEXT_BYTES + 1)
            except (zipfile.BadZipFile, OSError, RuntimeError, ValueError, EOFError, NotImplementedError) as e:
                part.refuse(item, f"cannot be extracted ({e})")
                continue
            target.write_bytes(data)
            try:
                _read_rruff_file(part, target, item, pre, grid, hide=str(target), file=printable(base, 300))
            finally:
                target.unlink(missing_ok=True)


def _column(arrays: Mapping[str, np.ndarray], key: str, n: int) -> np.ndarray | None:
    v = arrays.get(key)
    return v if v is not None and v.shape == (n,) else None


def _read_npz(part: Part, pre: Preprocessor, grid: np.ndarray) -> None:
    ds = load_dataset(part.path, allow_nonfinite=True)
    n = len(ds)
    files = _column(ds.extras, "files", n)
    specimens = _column(ds.extras, "specimens", n)
    kinds = _column(ds.extras, "kind", n)
    lasers = _column(ds.extras, "laser_nm", n)
    # Without per-spectrum columns, the kind the file's own name states ("raw_train.npz").
    default_kind = kind_from_text(part.path.stem)
    items = [str(files[i]) if files is not None else f"[{i}]" for i in range(n)]
    where = [f"{part.source}[{i}]" for i in range(n)]
    finite = np.isfinite(ds.spectra).all(axis=1)
    for i in np.nonzero(~finite)[0]:
        part.refuse(items[i], "NaN or inf intensities")
    keep = np.nonzero(finite)[0]
    if keep.size == 0:
        return
    try:
        y = pre.batch(ds.spectra[keep], ds.wavenumbers, where=[where[i] for i in keep])
    except RamanEdgeError as e:  # the axis is shared: every row fails alike
        for i in keep:
            part.refuse(items[i], str(e))
        return
    for row, i in zip(y, keep):
        label = str(ds.labels[i])
        why = _checked(row, grid)
        if why is None and not normalise_name(label):
            why = f"label {quote(label)} has no letters or digits"
        if why is not None:
            part.refuse(items[i], why)
            continue
        file = str(files[i]) if files is not None else f"{part.source}[{i}]"
        specimen = str(specimens[i]) if specimens is not None else specimen_from_file(file)
        kind = str(kinds[i]) if kinds is not None and str(kinds[i]) in KINDS else \
            (kind_from_text(file) if files is not None else "unknown")
        kind = default_kind if kind == "unknown" else kind
        laser = float(lasers[i]) if lasers is not None else laser_from_file(file)
        part.add(row.astype(np.float32), label, file, specimen, kind, laser, f"{part.source}[{i}]")


def source_form(path: Path) -> str:
    """``"folder"``, ``"npz"``, ``"zip"`` or ``"rruff"`` for a source path.

    Raises
    ------
    ConfigError
        The path does not exist.
    InputError
        A file that is none of these.
    """
    if path.is_dir():
        return "folder"
    if not path.exists():
        raise ConfigError(f"{path}: no such file or folder")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from None
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return "npz"
    if suffix == ".zip" or head.startswith(b"PK\x03\x04"):
        if head.startswith(b"PK") and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                names = [i.filename for i in zf.infolist() if not i.is_dir()]
            if names and all(n.endswith(".npy") for n in names):
                return "npz"
            return "zip"
        raise InputError(f"{path}: not a zip archive (it does not start with a zip header); nothing usable")
    if head.startswith(b"##") or head.startswith(b"\xef\xbb\xbf#"):
        return "rruff"
    raise InputError(f"{path}: not a folder, a zip archive of RRUFF files, an .npz or a RRUFF .txt file")


def source_names(paths: Sequence[Path]) -> list[str]:
    """Each source's name in the ``source`` column, unique: its base name, else the path as given,
    else the path with ``#2``, ``#3`` ... for a source given more than once."""
    names = [p.name or str(p) for p in paths]
    counts = collections.Counter(names)
    names = [n if counts[n] == 1 else str(p) for n, p in zip(names, paths)]
    seen: collections.Counter = collections.Counter()
    out = []
    for n in names:
        seen[n] += 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


def read_source(path: Path, name: str, grid: np.ndarray, pre: Preprocessor | None = None) -> Part:
    """Every spectrum of one source on ``grid``, and every file or row that gave none.

    Raises
    ------
    ConfigError
        The path does not exist.
    InputError
        The source as a whole is unusable: not a known kind of source, a broken archive, an
        unreadable ``.npz``, or nothing in it gave a spectrum.
    """
    path = Path(path)
    form = source_form(path)
    pre = pre or resampler(grid)
    part = Part(source=name, path=path, form=form)
    if form != "folder":
        part.sha256 = file_sha256(path)
    if form == "folder":
        _read_folder(part, pre, grid)
    elif form == "zip":
        _read_zip(part, pre, grid)
    elif form == "npz":
        _read_npz(part, pre, grid)
    else:
        _read_rruff_file(part, path, path.name, pre, grid)
    if not part.spectra:
        if part.unreadable:
            first = part.unreadable[0]
            raise InputError(f"{path}: nothing usable: none of {len(part.unreadable)} spectra could be read "
                             f"(first: {first.item}: {first.reason})")
        raise InputError(f"{path}: nothing usable: no RRUFF .txt file in it"
                         + (f" ({part.ignored} other files ignored)" if part.ignored else ""))
    log.info("%s: %d spectra, %d unreadable, %d ignored", name, len(part.spectra), len(part.unreadable), part.ignored)
    return part


# --------------------------------------------------------------------------- the library


@dataclass(frozen=True)
class Duplicate:
    """A spectrum dropped because the same values were already in the library."""

    kept: str
    dropped: str
    kept_label: str
    dropped_label: str
    kept_source: str
    dropped_source: str

    @property
    def conflict(self) -> bool:
        return self.kept_label != self.dropped_label


@dataclass
class Library:
    """The assembled training file and what happened on the way."""

    wavenumbers: np.ndarray
    spectra: np.ndarray
    labels: np.ndarray
    files: np.ndarray
    specimens: np.ndarray
    kind: np.ndarray
    laser_nm: np.ndarray
    source: np.ndarray
    parts: list[Part]
    renamed: dict[str, str]
    merged: dict[str, list[str]]
    duplicates: list[Duplicate]
    dropped_per_source: dict[str, int]

    def __len__(self) -> int:
        return int(self.spectra.shape[0])

    def classes_lost(self) -> list[str]:
        """Classes every spectrum of which duplicated a spectrum of another class (a label conflict)."""
        kept = set(self.labels.tolist())
        return sorted({d.dropped_label for d in self.duplicates} - kept)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"spectra": self.spectra, "labels": self.labels, "wavenumbers": self.wavenumbers,
                "files": self.files, "specimens": self.specimens, "kind": self.kind,
                "laser_nm": self.laser_nm, "source": self.source}

    def save(self, path: str | Path) -> str:
        """Write the ``.npz`` (atomically, byte-for-byte reproducible) and return its sha256.

        Members are written with a fixed time stamp, so the same inputs give the same file.

        Raises
        ------
        OSError
            When the file cannot be written.
        """
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                for key, arr in self.arrays().items():
                    info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                    info.compress_type = zipfile.ZIP_DEFLATED
                    info.external_attr = 0o644 << 16
                    with zf.open(info, "w", force_zip64=True) as f:
                        np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return file_sha256(path)

    def report(self) -> dict[str, Any]:
        """Counts per source, kinds, lasers, classes, specimens, names, duplicates and unreadable files."""
        classes = collections.Counter(self.labels.tolist())
        pairs: collections.Counter = collections.Counter()
        for d in self.duplicates:
            pairs[(d.kept_source, d.dropped_source)] += 1
        lasers = collections.Counter("unknown" if math.isnan(v) else f"{v:g}" for v in self.laser_nm.tolist())
        src = collections.Counter(self.source.tolist())
        return {
            "spectra": len(self),
            "grid": {"start": float(self.wavenumbers[0]), "stop": float(self.wavenumbers[-1]),
                     "step": float(self.wavenumbers[1] - self.wavenumbers[0]), "points": int(self.wavenumbers.size)},
            "classes": len(classes),
            "specimens": len({s for s in self.specimens.tolist() if s}),
            "without_specimen": int(sum(1 for s in self.specimens.tolist() if not s)),
            "sources": [{"source": p.source, "path": str(p.path), "form": p.form, "sha256": p.sha256,
                         "read": len(p.spectra), "kept": int(src.get(p.source, 0)),
                         "duplicates_dropped": int(self.dropped_per_source.get(p.source, 0)),
                         "unreadable": len(p.unreadable), "ignored": p.ignored} for p in self.parts],
            "kinds": dict(sorted(collections.Counter(self.kind.tolist()).items())),
            "laser_nm": dict(sorted(lasers.items())),
            "names": {"spellings_renamed": dict(sorted(self.renamed.items())),
                      "classes_merged": {k: v for k, v in sorted(self.merged.items())},
                      "classes_lost_to_duplicates": self.classes_lost()},
            "duplicates": {"dropped": len(self.duplicates),
                           "by_sources": [{"kept_in": a, "dropped_from": b, "count": n}
                                          for (a, b), n in sorted(pairs.items())],
                           "label_conflicts": [d.__dict__ for d in self.duplicates if d.conflict],
                           "pairs": [d.__dict__ for d in self.duplicates]},
            "unreadable": [u.__dict__ for p in self.parts for u in p.unreadable],
            "class_counts": dict(sorted(classes.items())),
        }


def build(paths: Iterable[str | Path], grid: np.ndarray | str = DEFAULT_GRID) -> Library:
    """Assemble every source into one library on ``grid``.

    Parameters
    ----------
    paths : iterable of path
        Folders, zip archives, ``.npz`` files or RRUFF ``.txt`` files, in the order their
        spectra enter the library (the first of two identical spectra is the one kept).
    grid : array or str
        The library grid, or ``START:STOP:STEP`` (default :data:`DEFAULT_GRID`).

    Raises
    ------
    ConfigError
        A bad grid, or a source that does not exist (checked before any is read).
    InputError
        A source that gave no spectrum at all.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ConfigError("no source given")
    grid = parse_grid(grid) if isinstance(grid, str) else np.asarray(grid, dtype=np.float64)
    for p in paths:
        if not p.exists():
            raise ConfigError(f"{p}: no such file or folder")
    pre = resampler(grid)
    parts = [read_source(p, name, grid, pre) for p, name in zip(paths, source_names(paths))]

    spellings = collections.Counter(s for part in parts for s in part.spellings)
    names = class_names(spellings)
    renamed = {s: c for s, c in names.items() if s != c}
    by_class: dict[str, list[str]] = collections.defaultdict(list)
    for s, c in names.items():
        by_class[c].append(s)
    merged = {c: sorted(v) for c, v in by_class.items() if len(v) > 1}

    seen: dict[bytes, tuple[str, str, str]] = {}
    duplicates: list[Duplicate] = []
    dropped: collections.Counter = collections.Counter()
    keep: list[tuple[Part, int]] = []
    for part in parts:
        for i, y in enumerate(part.spectra):
            label = names[part.spellings[i]]
            key = (y + np.float32(0.0)).tobytes()  # -0.0 and 0.0 are the same intensity
            if key in seen:
                origin, first_label, first_source = seen[key]
                duplicates.append(Duplicate(origin, part.origins[i], first_label, label, first_source, part.source))
                dropped[part.source] += 1
                continue
            seen[key] = (part.origins[i], label, part.source)
            keep.append((part, i))

    def col(attr: str, dtype: Any) -> np.ndarray:
        return np.asarray([getattr(p, attr)[i] for p, i in keep], dtype=dtype)

    return Library(
        wavenumbers=grid.astype(np.float32),
        spectra=np.stack([p.spectra[i] for p, i in keep]).astype(np.float32),
        labels=np.asarray([names[p.spellings[i]] for p, i in keep], dtype=str),
        files=col("files", str), specimens=col("specimens", str), kind=col("kinds", str),
        laser_nm=col("lasers", np.float64), source=np.asarray([p.source for p, _ in keep], dtype=str),
        parts=parts, renamed=renamed, merged=merged, duplicates=duplicates, dropped_per_source=dict(dropped))
