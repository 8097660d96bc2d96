"""Spectrum file readers, and :func:`read`, which picks one by sniffing the file.

Formats so far:

``rruff``
    RRUFF database ``.txt`` files: ``##KEY=value`` headers (values may continue on
    following lines that do not start with ``##``), ``x, y`` data lines, ``##END=``.
``npz``
    The project's labelled-spectra ``.npz`` (see :mod:`calibration.dataset`).

Instrument exports (registered at the end of this module; see their modules):
``wasatch`` (:mod:`calibration.wasatch`, ENLIGHTEN CSV), ``horiba`` (:mod:`calibration.horiba`,
LabSpec .txt), ``renishaw`` (:mod:`calibration.renishaw`, WiRE .txt, maps as a list),
``xy_csv`` (:mod:`calibration.openraman`, ``Pixel,Intensity`` CSVs).

Bounds (refused with a :class:`~calibration.errors.ReaderError` before the file is loaded):
a single-spectrum text export of more than :data:`MAX_TEXT_BYTES` (8 MiB), a Renishaw WiRE
file (maps) of more than :data:`MAX_MAP_BYTES` (32 MiB), an ``.npz`` whose arrays exceed
:data:`calibration.dataset.MAX_NPZ_BYTES` (512 MiB), and any spectrum of more than
:data:`MAX_POINTS` (65,536) points.  Binary content is refused without being quoted;
lines quoted in messages are ``repr()``-escaped and cut to 60 characters.

More formats slot in with :func:`register_reader`: a *sniff* function that looks at the first bytes of a file
and a *reader* that parses it.  Every failure is a :class:`~calibration.errors.ReaderError`
whose message names the file and, for text formats, the line.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

import numpy as np

from .dataset import Dataset, load_dataset
from .errors import ReaderError, SpectrumError
from .instruments import (
    MAX_MAP_BYTES,
    MAX_POINTS,
    MAX_TEXT_BYTES,
    ascending_merge,
    binary_reason,
    check_points,
    check_size,
    quote,
    read_bytes,
)
from .spectrum import Spectrum

log = logging.getLogger(__name__)

#: Fewest points a file must hold to be a spectrum (matches :meth:`Spectrum.validated`).
MIN_POINTS = 16

#: Bytes read from the start of a file for sniffing.
SNIFF_BYTES = 8192

ReadResult = Union[Spectrum, list[Spectrum]]

# --------------------------------------------------------------------------- text helpers

# Data columns are separated by a comma, semicolon or tab (with optional spaces), or by spaces.
_SPLIT = re.compile(r"\s*[,;\t]\s*|\s+")
_HARD_SEP = re.compile(r"[,;\t]")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
# RRUFF sample ids: specimen R040063, sub-sample -4 (other letter prefixes exist).
_SAMPLE_ID = re.compile(r"(?:^|__)([A-Z]\d{6}-\d+)(?:__|$)")
_LASER = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*(?:nm)?\s*$", re.IGNORECASE)


def _decode_text(raw: bytes, path: Path) -> str:
    """UTF-8 text of ``raw``; binary or undecodable content is a :class:`ReaderError` with its line."""

    def line_of(offset: int) -> int:
        return len(_LINE_BREAK.split(raw[:offset].decode("latin-1"))) if offset else 1

    nul = raw.find(b"\x00")
    if nul >= 0:
        raise ReaderError(f"{path}, line {line_of(nul)}: binary content (NUL byte at offset {nul}); not a text file")
    why = binary_reason(raw)
    if why is not None:
        raise ReaderError(f"{path}: {why}; not a text spectrum file")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ReaderError(
            f"{path}, line {line_of(e.start)}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})"
        ) from None


def _split_columns(line: str) -> tuple[list[str], bool]:
    """Column tokens of a data line, and whether a comma/semicolon/tab separated them."""
    s = line.strip()
    # A trailing separator ("146.8, 0.5,") is common in exports and carries no column.
    s = s[:-1].rstrip() if s[-1:] in ",;" else s
    return _SPLIT.split(s), bool(_HARD_SEP.search(s))


def _is_float(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _looks_like_data(line: str) -> bool:
    """Whether a line before the data block is an attempt at a data line (not header text).

    Header values may continue on plain-text lines, some of which begin with a number
    ("2 mm crystals"); those must not start the data block.  A line counts as data when
    its first token is a number and it has one token, only numeric tokens, or exactly
    two tokens split by a comma/semicolon/tab ("146.8, abc" is a broken data line).
    """
    tokens, hard = _split_columns(line)
    if not tokens or not _is_float(tokens[0]):
        return False
    return len(tokens) == 1 or all(_is_float(t) for t in tokens) or (len(tokens) == 2 and hard)


def _header_get(header: dict[str, str], key: str) -> str | None:
    """Header value by case-insensitive key."""
    for k, v in header.items():
        if k.strip().upper() == key:
            return v
    return None


# --------------------------------------------------------------------------- RRUFF


def read_rruff(path: str | Path) -> Spectrum:
    """Read one RRUFF ``.txt`` spectrum file.

    Parameters
    ----------
    path : str or pathlib.Path
        The file.  UTF-8 (with or without BOM), any line ends; data columns split by
        commas, semicolons, tabs or spaces.

    Returns
    -------
    Spectrum
        On an ascending ``raman_shift`` axis, duplicate axis points averaged.  ``meta``:

        ``header``
            every ``##KEY=value`` header, keys as in the file; a value continued on
            following lines is joined with ``"\\n"``.  A header key repeated later in
            the file keeps its first value here; later values go to ``header_repeats``
            (``{key: [value, ...]}``).  Text lines not attached to any header (after a
            blank line) go to ``header_unattached`` (list of str).
        ``where``, ``file``
            ``str(path)`` and the file name.
        ``mineral``
            from ``##NAMES`` (else from a RRUFF-style file name), or ``None``.
        ``rruff_id``
            from ``##RRUFFID`` (else the specimen part of ``sample_id``), or ``None``.
        ``sample_id``
            e.g. ``R040063-4``, from the file name, or ``None``.
        ``filetype``
            ``"RAW"`` or ``"Processed"`` (from ``##FILETYPE`` or the file name), the header
            text for other types, or ``None``.
        ``laser_nm``
            ``##RAMAN WAVELENGTH`` as a float when it is a number, else ``None``.
        ``duplicate_points``
            how many repeated axis points were averaged away.
        ``format``
            ``"rruff"``.

    Raises
    ------
    ReaderError
        Naming the file and line: unreadable or binary file, non-numeric data, a data
        line without exactly two columns, NaN/inf values, a non-monotonic axis, no data,
        or fewer than :data:`MIN_POINTS` points.
    """
    path = Path(path)
    text = _decode_text(read_bytes(path), path)
    lines = _LINE_BREAK.split(text)

    header: dict[str, str] = {}
    repeats: dict[str, list[str]] = {}
    unattached: list[str] = []
    last_key: str | None = None          # header the next continuation line belongs to
    xs: list[float] = []
    ys: list[float] = []
    line_nos: list[int] = []
    end_line: int | None = None

    for no, line in enumerate(lines, start=1):
        stripped = line.strip()
        if stripped.startswith("##"):
            key, _, value = stripped[2:].partition("=")
            key, value = key.strip(), value.strip()
            if key.upper() == "END":
                end_line = no
                break
            if key in header:
                repeats.setdefault(key, []).append(value)
            else:
                header[key] = value
            last_key = key
            continue
        if not stripped:
            # A blank line ends a multi-line header value.
            last_key = None
            continue
        if not xs and not _looks_like_data(stripped):
            if last_key is None:
                unattached.append(stripped)
            elif last_key in repeats:
                repeats[last_key][-1] += "\n" + stripped
            else:
                header[last_key] += "\n" + stripped
            continue
        x, y = _parse_data_line(stripped, path, no)
        xs.append(x)
        ys.append(y)
        line_nos.append(no)
        last_key = None

    last_line = end_line if end_line is not None else len(lines)
    if not xs:
        raise ReaderError(f"{path}, line {last_line}: no data lines found (expected 'shift, intensity' lines)")
    if end_line is None:
        log.warning("%s: no ##END= line; the file may be truncated", path)

    axis = np.asarray(xs, dtype=np.float64)
    intensities = np.asarray(ys, dtype=np.float64)
    axis, intensities, n_dup = _ascending_unique(axis, intensities, line_nos, path)
    check_points(axis.size, path, line_nos[-1])
    if axis.size < MIN_POINTS:
        raise ReaderError(
            f"{path}, line {line_nos[-1]}: only {axis.size} distinct data points "
            f"(lines {line_nos[0]}-{line_nos[-1]}); at least {MIN_POINTS} needed"
        )

    meta = _rruff_meta(path, header)
    meta.update(duplicate_points=n_dup)
    if repeats:
        meta["header_repeats"] = repeats
    if unattached:
        meta["header_unattached"] = unattached
    try:
        return Spectrum(intensities, axis, "raman_shift", meta).validated(unit="raman_shift", min_points=MIN_POINTS)
    except SpectrumError as e:  # defensive: the checks above should have caught it
        raise ReaderError(f"{path}, line {line_nos[0]}: {e}") from None


def _parse_data_line(line: str, path: Path, no: int) -> tuple[float, float]:
    tokens, _ = _split_columns(line)
    if len(tokens) != 2:
        raise ReaderError(
            f"{path}, line {no}: expected 2 columns (Raman shift, intensity), found {len(tokens)}: {quote(line)}"
        )
    values = []
    for tok in tokens:
        try:
            v = float(tok)
        except ValueError:
            raise ReaderError(f"{path}, line {no}: non-numeric value {quote(tok, 40)} in data line {quote(line)}") from None
        if not math.isfinite(v):
            raise ReaderError(f"{path}, line {no}: NaN/inf value {quote(tok, 40)} in data line {quote(line)}")
        values.append(v)
    return values[0], values[1]


def _ascending_unique(
    axis: np.ndarray, intensities: np.ndarray, line_nos: list[int], path: Path
) -> tuple[np.ndarray, np.ndarray, int]:
    """Ascending axis with repeated points averaged; a back-and-forth axis is an error (one column of
    :func:`calibration.instruments.ascending_merge`)."""
    axis, columns, n_dup = ascending_merge(axis, np.asarray(intensities)[None, :], np.asarray(line_nos), path)
    return axis, columns[0], n_dup


def _rruff_meta(path: Path, header: dict[str, str]) -> dict:
    name_fields = path.stem.split("__")
    m = _SAMPLE_ID.search(path.stem)
    sample_id = m.group(1) if m else None

    mineral = _header_get(header, "NAMES")
    mineral = mineral.strip() if mineral else None
    if not mineral and sample_id and name_fields[0]:
        mineral = name_fields[0]  # RRUFF names files Mineral__R040063-4__...

    rruff_id = (_header_get(header, "RRUFFID") or "").strip() or (sample_id.split("-")[0] if sample_id else None)

    filetype_text = (_header_get(header, "FILETYPE") or "").strip()
    probe = (filetype_text or path.stem).lower()
    if "raw" in re.split(r"[\s_]+", probe):
        filetype: str | None = "RAW"
    elif "processed" in probe:
        filetype = "Processed"
    else:
        filetype = filetype_text or None

    laser_nm = None
    m_laser = _LASER.match(_header_get(header, "RAMAN WAVELENGTH") or "")
    if m_laser and float(m_laser.group(1)) > 0:
        laser_nm = float(m_laser.group(1))

    return {
        "where": str(path),
        "file": path.name,
        "format": "rruff",
        "header": header,
        "mineral": mineral,
        "rruff_id": rruff_id,
        "sample_id": sample_id,
        "filetype": filetype,
        "laser_nm": laser_nm,
    }


def _sniff_rruff(path: Path, head: bytes) -> bool:
    if b"\x00" in head:
        return False
    text = head.decode("utf-8-sig", errors="replace").lstrip()
    return text.startswith("##")


# --------------------------------------------------------------------------- npz


def dataset_spectrum(dataset: Dataset, i: int) -> Spectrum:
    """Row ``i`` of a loaded dataset as a :class:`Spectrum` on its Raman-shift axis.

    ``meta``: ``where`` (``"<path>[i]"``), ``index``, ``label``, and ``file`` when the
    dataset has a ``files`` array.
    """
    meta = {"where": f"{dataset.path}[{i}]", "index": int(i), "label": str(dataset.labels[i]), "format": "npz"}
    files = dataset.extras.get("files")
    if files is not None and files.shape[:1] == dataset.labels.shape:
        meta["file"] = str(files[i])
    return Spectrum(dataset.spectra[i], dataset.wavenumbers, "raman_shift", meta)


def read_npz_spectra(path: str | Path) -> list[Spectrum]:
    """All spectra of a labelled ``.npz`` (see :func:`calibration.dataset.load_dataset`).

    Parameters
    ----------
    path : str or pathlib.Path
        The ``.npz`` file.

    Returns
    -------
    list of Spectrum
        One per row, as built by :func:`dataset_spectrum`.

    Raises
    ------
    ReaderError
        When the file is missing, not an ``.npz``, or fails the dataset checks.
    """
    ds = load_dataset(path)
    return [dataset_spectrum(ds, i) for i in range(len(ds))]


def _sniff_npz(path: Path, head: bytes) -> bool:
    # .npz is a zip archive; the suffix decides for empty or truncated files.
    return head.startswith(b"PK\x03\x04") or path.suffix.lower() == ".npz"


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class ReaderFormat:
    """A file format :func:`read` knows: how to recognise it and how to parse it.

    Attributes
    ----------
    name : str
        Short name (``"rruff"``, ``"npz"``).
    sniff : callable
        ``sniff(path, head) -> bool``; ``head`` is up to :data:`SNIFF_BYTES` bytes from
        the start of the file.  Must not raise.
    reader : callable
        ``reader(path) -> Spectrum | list[Spectrum]``; raises :class:`ReaderError`.
    description : str
        One line for error messages and help.
    """

    name: str
    sniff: Callable[[Path, bytes], bool]
    reader: Callable[[Path], ReadResult]
    description: str = ""


_FORMATS: list[ReaderFormat] = []


def register_reader(
    name: str,
    sniff: Callable[[Path, bytes], bool],
    reader: Callable[[Path], ReadResult],
    description: str = "",
    *,
    first: bool = False,
) -> None:
    """Teach :func:`read` a format; a later registration of the same name replaces it.

    Formats are tried in registration order; ``first=True`` puts this one ahead (for a
    sniff that is more specific than an existing one).
    """
    fmt = ReaderFormat(name, sniff, reader, description)
    _FORMATS[:] = [f for f in _FORMATS if f.name != name]
    _FORMATS.insert(0, fmt) if first else _FORMATS.append(fmt)


def formats() -> list[ReaderFormat]:
    """The registered formats, in the order :func:`read` tries them."""
    return list(_FORMATS)


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(SNIFF_BYTES)
    except FileNotFoundError:
        raise ReaderError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ReaderError(f"{path}: is a folder, not a spectrum file") from None
    except OSError as e:
        raise ReaderError(f"{path}: cannot read ({e.strerror or e})") from None


def sniff_format(path: str | Path) -> ReaderFormat | None:
    """The first registered format whose sniff accepts ``path``, or ``None``.

    Raises
    ------
    ReaderError
        When the file cannot be opened.
    """
    path = Path(path)
    head = _head(path)
    for fmt in _FORMATS:
        try:
            if fmt.sniff(path, head):
                return fmt
        except Exception:  # a sniff bug must not hide the other formats
            log.exception("sniffing %s as %s failed", path, fmt.name)
    return None


def read(path: str | Path) -> ReadResult:
    """Read a spectrum file of any registered format.

    Parameters
    ----------
    path : str or pathlib.Path
        The file.

    Returns
    -------
    Spectrum or list of Spectrum
        One spectrum for single-spectrum formats (RRUFF ``.txt``, instrument exports), a
        list for collections (``.npz``, Renishaw maps: one per position, in file order).

    Raises
    ------
    ReaderError
        When the file is missing or unreadable, its format is not recognised (the
        message lists the known ones), or its reader refuses it.
    """
    path = Path(path)
    if not _head(path).startswith(b"PK\x03\x04"):
        # No text format reads more than a map may hold: refuse a larger file before sniffing,
        # whatever its first bytes; each reader then applies its own bound.
        check_size(path, MAX_MAP_BYTES)
    fmt = sniff_format(path)
    if fmt is None:
        head = _head(path)
        known = "; ".join(f.name for f in _FORMATS)
        why = binary_reason(head)
        if why is not None:  # never quote binary content: it is noise at best, terminal escapes at worst
            raise ReaderError(f"{path}: {why}; not a spectrum file of any known format ({known})")
        first = next((ln.strip() for ln in head.decode("utf-8", errors="replace").splitlines() if ln.strip()), "")
        raise ReaderError(f"{path}: unknown spectrum file format (starts with {quote(first)}); known formats: {known} "
                          "(see calibration.readers.formats())")
    log.debug("reading %s as %s", path, fmt.name)
    return fmt.reader(path)


register_reader("rruff", _sniff_rruff, read_rruff, "RRUFF .txt with ##KEY=value headers and 'shift, intensity' lines")
register_reader("npz", _sniff_npz, read_npz_spectra, "labelled .npz with spectra, labels, wavenumbers")

# Instrument exports (issue 7).  These modules never import this one, so there is no cycle.
from . import horiba, openraman, renishaw, wasatch  # noqa: E402

for _fmt in (wasatch.FORMAT, horiba.FORMAT, renishaw.FORMAT, openraman.FORMAT):
    register_reader(*_fmt)
