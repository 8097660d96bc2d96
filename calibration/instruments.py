"""Shared machinery of the instrument-export readers, and :class:`SpectrumMap`.

The readers themselves live in one module per format:

:mod:`calibration.wasatch`
    Wasatch ENLIGHTEN ``.csv`` (metadata block, then Pixel/Wavelength/Wavenumber/Processed).
:mod:`calibration.horiba`
    Horiba LabSpec ``.txt`` (``#key=<tab>value`` header, then shift/intensity).
:mod:`calibration.renishaw`
    Renishaw WiRE ``.txt`` exports: single spectra (``#Wave #Intensity``) and maps
    (``#X #Y #Wave #Intensity``, one spectrum per position).
:mod:`calibration.openraman`
    Two-column ``Pixel,Intensity`` CSVs: the OpenRAMAN (pixel axis) and the Wasatch
    WP-532X files of the instrument comparison, whose "Pixel" column holds Raman shifts.

:func:`calibration.readers.read` detects all of them.  What lives here is what they
share: decoding (UTF-8 with or without BOM, UTF-16 with BOM, and the Windows "ANSI"
code page LabSpec writes its ``°`` and ``¹`` in), line splitting (``\\r\\n``, ``\\r``,
``\\n``, even mixed within one file), a number parser that knows the file's column
separator and decimal mark (``1234,5;678,9`` is two numbers with decimal commas;
``1234,5,678,9`` is refused as ambiguous rather than guessed), the axis-unit decision
(from column labels, else from the values, never silently), and the final step every
reader shares: ascending axis, repeated axis points averaged, validated
:class:`~calibration.spectrum.Spectrum`.

Every reader puts the same normalised keys into ``Spectrum.meta`` (``None`` when the
file does not say): ``where``, ``file``, ``format``, ``instrument``, ``header`` (every
metadata field of the file, keys and values as text), ``laser_nm``,
``integration_ms``, ``serial``, ``wavelength_poly``, ``encoding``,
``duplicate_points``, ``axis_unit_from`` (``"header"``, ``"values"`` or ``"caller"``)
and, when the unit was inferred, ``axis_note`` saying why.
"""
from __future__ import annotations

import codecs
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .errors import ReaderError, SpectrumError
from .spectrum import AXIS_UNITS, Spectrum

log = logging.getLogger(__name__)

#: Fewest points a spectrum must have; the same as :data:`calibration.readers.MIN_POINTS`
#: (not imported from there: :mod:`calibration.readers` imports the format modules).
MIN_POINTS = 16

#: Axis ranges a unit can plausibly take.  A Raman shift axis may start in the
#: anti-Stokes side (Wasatch exports start near -600 cm-1); a wavelength axis of a
#: Raman spectrometer lies within the range of silicon and InGaAs detectors and spans
#: at most a few hundred nanometres.
RAMAN_SHIFT_RANGE = (-2500.0, 5000.0)
WAVELENGTH_RANGE_NM = (150.0, 1700.0)
WAVELENGTH_MAX_SPAN_NM = 700.0

#: Largest single-spectrum text export read, in bytes.  A spectrum of :data:`MAX_POINTS`
#: points is about 3 MB of text even with four columns; parsing costs about 15 bytes of
#: memory per byte of file, so this bounds a read to roughly 130 MB.
MAX_TEXT_BYTES = 8 * 1024 * 1024
#: Largest map export (many spectra in one text file, e.g. a Renishaw map) read, in
#: bytes: about 800 positions of 1,000 points.  Larger maps must be exported in parts.
MAX_MAP_BYTES = 32 * 1024 * 1024
#: Most points one spectrum may have (every format): a longer one would become a
#: results-log row no downlink budget can carry.
MAX_POINTS = 65_536

UNIT_WORDS = {"raman_shift": "Raman shift (cm-1)", "wavelength_nm": "wavelength (nm)", "pixel": "pixel index"}

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_DECIMAL_MARK = re.compile(r"\d([.,])\d", re.ASCII)
_COMMA_DECIMAL_TOKEN = re.compile(r"[+-]?\d*,\d+(?:[eE][+-]?\d+)?", re.ASCII)


# --------------------------------------------------------------------------- text


@dataclass(frozen=True)
class TextFile:
    """A decoded text file split into lines (line ``i`` of the file is ``lines[i - 1]``)."""

    path: Path
    lines: list[str]
    encoding: str


def quote(text: str, limit: int = 60) -> str:
    """``text`` quoted for a one-line message: ``repr()`` (control characters escaped), cut to ``limit`` characters."""
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def check_size(path: Path, limit: int = MAX_TEXT_BYTES) -> None:
    """Refuse a file larger than ``limit`` bytes before any of it is read.

    Raises
    ------
    ReaderError
        When the file is larger (or cannot be examined).
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ReaderError(f"{path}: no such file") from None
    except OSError as e:
        raise ReaderError(f"{path}: cannot read ({e.strerror or e})") from None
    if size > limit:
        raise ReaderError(f"{path}: file is {size / 2**20:.1f} MiB, above the {limit / 2**20:g} MiB a spectrum file "
                          "may have; refused unread (split it, or export fewer points)")


def binary_reason(raw: bytes) -> str | None:
    """Why ``raw`` is binary rather than a text export, or ``None`` when it looks like text.

    Binary: a NUL byte (outside UTF-16 text), more than a few control characters other
    than tab and line ends, or more invalid UTF-8 than the odd ``°``/``¹`` an ANSI
    (Windows-1252) LabSpec header holds.
    """
    probe = raw[:65536]
    nul = probe.find(b"\x00")
    if nul >= 0:
        return f"binary content (NUL byte at offset {nul})"
    controls = sum(probe.count(bytes([c])) for c in _CONTROL_BYTES)
    if controls > 8:
        return f"binary content ({controls} control bytes in the first {len(probe)} bytes)"
    bad = _invalid_utf8(probe)
    if bad > max(16, len(probe) // 100):
        return f"binary content ({bad} bytes of the first {len(probe)} are not UTF-8 text)"
    return None


_CONTROL_BYTES = tuple(c for c in range(32) if c not in (9, 10, 12, 13)) + (127,)


def _invalid_utf8(raw: bytes) -> int:
    """About how many invalid UTF-8 sequences ``raw`` holds (each becomes one replacement character)."""
    return raw.decode("utf-8", errors="replace").count("\ufffd") - raw.decode("utf-8", errors="ignore").count("\ufffd")


def read_bytes(path: Path, limit: int = MAX_TEXT_BYTES) -> bytes:
    """The file's bytes; a missing, folder, unreadable or too large path is a :class:`ReaderError`."""
    check_size(path, limit)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ReaderError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ReaderError(f"{path}: is a folder, not a spectrum file") from None
    except OSError as e:
        raise ReaderError(f"{path}: cannot read ({e.strerror or e})") from None


def _looks_utf16(raw: bytes) -> str | None:
    """``"utf-16-le"``/``"utf-16-be"`` for BOM-less UTF-16 text (every other byte NUL)."""
    probe = raw[:512]
    if len(probe) < 4 or len(probe) % 2:
        return None
    if not any(probe[1::2]) and all(probe[0::2]):
        return "utf-16-le"
    if not any(probe[0::2]) and all(probe[1::2]):
        return "utf-16-be"
    return None


def decode_text(raw: bytes, path: Path) -> tuple[str, str]:
    """Decode a text export; returns ``(text, encoding)``.

    UTF-16 with a BOM (or in the tell-tale every-other-byte-NUL pattern), UTF-8 with
    or without BOM, else Windows-1252/Latin-1, which is what LabSpec writes (its
    header has ``°C`` and ``cm-¹`` as single bytes).  Other binary content (a NUL
    byte) is refused with the line it is on.
    """
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or _looks_utf16(raw):
        enc = "utf-16" if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else _looks_utf16(raw)
        try:
            return raw.decode(enc), "utf-16"
        except UnicodeDecodeError as e:
            raise ReaderError(f"{path}: not valid UTF-16 text (bad bytes at offset {e.start})") from None
    nul = raw.find(b"\x00")
    if nul >= 0:
        line = len(_LINE_BREAK.split(raw[:nul].decode("latin-1")))
        raise ReaderError(f"{path}, line {line}: binary content (NUL byte at offset {nul}); not a text file")
    why = binary_reason(raw)
    if why is not None:
        raise ReaderError(f"{path}: {why}; not a text spectrum file")
    try:
        return raw.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        return raw.decode("cp1252"), "cp1252"
    except UnicodeDecodeError:
        return raw.decode("latin-1"), "latin-1"


def load_text(path: str | Path, limit: int = MAX_TEXT_BYTES) -> TextFile:
    """Read and decode ``path`` (at most ``limit`` bytes) and split it into lines (any line ends)."""
    path = Path(path)
    text, encoding = decode_text(read_bytes(path, limit), path)
    return TextFile(path, _LINE_BREAK.split(text), encoding)


def head_lines(head: bytes, n: int = 80) -> list[str]:
    """Up to ``n`` non-blank, stripped lines of a file's first bytes, for sniffing (never raises)."""
    try:
        if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or _looks_utf16(head):
            enc = "utf-16" if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else _looks_utf16(head)
            text = head[: len(head) // 2 * 2].decode(enc, errors="replace")
        elif b"\x00" in head:
            return []
        else:
            text = head.decode("utf-8-sig", errors="replace")
    except Exception:  # a sniff must never raise
        return []
    return [s for s in (ln.strip() for ln in _LINE_BREAK.split(text)) if s][:n]


# --------------------------------------------------------------------------- numbers


@dataclass(frozen=True)
class NumberFormat:
    """How a file writes its numbers: column separator and decimal mark.

    Attributes
    ----------
    delimiter : str
        ``","``, ``";"``, or ``" "`` (any run of spaces and tabs).
    decimal : str
        ``"."`` or ``","``.  A decimal comma is only possible when the columns are not
        comma-separated.
    """

    delimiter: str = " "
    decimal: str = "."

    def split(self, line: str) -> list[str]:
        """Column tokens of a stripped, non-blank line."""
        s = line.strip()
        if self.delimiter == " ":
            return s.split()
        # A trailing separator ("146.8,0.5,") is common in exports and carries no column.
        if s.endswith(self.delimiter):
            s = s[:-1]
        return [t.strip() for t in s.split(self.delimiter)]

    def describe(self) -> str:
        sep = {",": "commas", ";": "semicolons", " ": "tabs/spaces"}[self.delimiter]
        return f"columns separated by {sep}, decimal mark {self.decimal!r}"


def detect_number_format(lines: Sequence[str], start: int, path: Path, *, delimiter: str | None = None) -> NumberFormat:
    """Work out a data block's separator and decimal mark from its first data lines.

    Parameters
    ----------
    lines : sequence of str
        The file's lines.
    start : int
        0-based index of the first line of the data block.
    path : pathlib.Path
        For error messages.
    delimiter : str, optional
        The separator when the format fixes it (``","`` for CSV); else detected from
        the first non-blank data line: a tab or space run, ``;`` or ``,``.

    Returns
    -------
    NumberFormat
        With ``decimal=","`` only when the separator is not a comma and the first
        decimal mark in the block's first 50 data lines is a comma.
    """
    sample = [ln.strip() for ln in lines[start : start + 200] if ln.strip()][:50]
    if not sample:
        return NumberFormat(delimiter or " ", ".")
    first = sample[0]
    if delimiter is None:
        if "\t" in first:
            delimiter = " "
        elif ";" in first:
            delimiter = ";"
        elif "," in first:
            tokens = first.split()
            # "1234,5 678,9": spaces between, a decimal comma inside each number.
            comma_decimals = len(tokens) >= 2 and all(_COMMA_DECIMAL_TOKEN.fullmatch(t) for t in tokens)
            delimiter = " " if comma_decimals else ","
        else:
            delimiter = " "
    decimal = "."
    if delimiter != ",":
        for ln in sample:
            m = _DECIMAL_MARK.search(ln)
            if m:
                decimal = m.group(1)
                break
    return NumberFormat(delimiter, decimal)


def parse_number(token: str, fmt: NumberFormat, missing: frozenset[str] = frozenset()) -> float | None:
    """``token`` as a finite float, ``nan`` when it is a missing-value marker, else ``None``."""
    if token in missing:
        return float("nan")
    if fmt.decimal == ",":
        if "." in token:
            return None  # "1.234,5": a thousands separator or a mixed file; refuse
        token = token.replace(",", ".", 1)
    if not _NUMBER.fullmatch(token):
        return None
    v = float(token)
    return v if np.isfinite(v) else None


def parse_rows(
    lines: Sequence[str],
    start: int,
    path: Path,
    fmt: NumberFormat,
    columns: Sequence[str],
    *,
    missing: frozenset[str] = frozenset(),
    stop: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Parse a block of numeric rows with a fixed number of columns.

    Parameters
    ----------
    lines : sequence of str
        The file's lines.
    start, stop : int
        0-based line range of the block (``stop`` defaults to the end of the file).
        Blank lines are skipped.
    path : pathlib.Path
        For error messages.
    fmt : NumberFormat
        Separator and decimal mark.
    columns : sequence of str
        Column names, for messages; their count is the expected number of columns.
    missing : frozenset of str
        Tokens that mean "no value" (``NaN`` in the result), e.g. ENLIGHTEN's ``NA``.

    Returns
    -------
    values : numpy.ndarray
        ``(rows, len(columns))`` float64.
    line_nos : numpy.ndarray
        1-based file line number of each row.

    Raises
    ------
    ReaderError
        Naming the file and line: wrong column count, a non-numeric or non-finite value
        (with a hint when it looks like a decimal comma), or no data rows at all.
    """
    ncols = len(columns)
    rows: list[list[float]] = []
    nos: list[int] = []
    stop = len(lines) if stop is None else stop
    for i in range(start, stop):
        line = lines[i]
        if not line.strip():
            continue
        no = i + 1
        tokens = fmt.split(line)
        if len(tokens) != ncols:
            hint = ""
            if fmt.delimiter == "," and re.search(r"\d,\d", line) and len(tokens) > ncols:
                hint = "; the commas may be decimal commas, which a comma-separated file cannot use unambiguously"
            raise ReaderError(
                f"{path}, line {no}: expected {ncols} columns ({', '.join(columns)}), found {len(tokens)} "
                f"({fmt.describe()}): {quote(line.strip())}{hint}"
            )
        row = []
        for tok, name in zip(tokens, columns):
            v = parse_number(tok, fmt, missing)
            if v is None:
                hint = ""
                if fmt.decimal == "." and re.fullmatch(r"[+-]?\d*,\d+", tok):
                    hint = " (a decimal comma, while the file's first decimal mark was '.')"
                elif fmt.decimal == "," and "." in tok:
                    hint = " (a '.' in a file that uses decimal commas)"
                raise ReaderError(
                    f"{path}, line {no}: {name} value {quote(tok, 40)} is not a finite number{hint}: {quote(line.strip())}"
                )
            row.append(v)
        rows.append(row)
        nos.append(no)
    if not rows:
        last = last_line_no(lines[:stop])
        raise ReaderError(f"{path}, line {last}: no data rows found (expected {ncols} columns: {', '.join(columns)})")
    return np.asarray(rows, dtype=np.float64), np.asarray(nos, dtype=np.int64)


def last_line_no(lines: Sequence[str]) -> int:
    """1-based number of the last non-blank line (1 for an empty file), for end-of-file messages."""
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].strip():
            return i + 1
    return 1


# --------------------------------------------------------------------------- axis units


def unit_from_label(label: str | None) -> str | None:
    """The axis unit a column label or unit string names, or ``None`` when it names none.

    ``Pixel``/``Pixels #``/``pix`` → ``"pixel"``; ``Wavenumber``, ``Raman shift``,
    ``cm-1``, ``1/cm`` → ``"raman_shift"``; ``Wavelength``, ``nm`` → ``"wavelength_nm"``.
    Renishaw's ``#Wave`` names no unit (WiRE writes it for shifts and wavelengths alike).
    """
    if not label:
        return None
    s = label.strip().lower()
    if re.search(r"pixel|\bpix\b|\bpx\b", s):
        return "pixel"
    if re.search(r"wavenumber|raman\s*shift|\bshift\b|cm\s*-\s*1|cm\^-1|1\s*/\s*cm|cm⁻¹|cm-¹|cm\s*¹", s):
        return "raman_shift"
    if re.search(r"wavelength|\bnm\b|lambda|λ", s):
        return "wavelength_nm"
    return None


def plausible_units(axis: np.ndarray) -> dict[str, str]:
    """Units (other than pixel) the axis values could be in, each with the reason why not-others.

    Returns ``{unit: why}`` for each plausible unit; empty when none fits.
    """
    lo, hi = float(np.min(axis)), float(np.max(axis))
    out: dict[str, str] = {}
    wl_ok = WAVELENGTH_RANGE_NM[0] <= lo and hi <= WAVELENGTH_RANGE_NM[1] and hi - lo <= WAVELENGTH_MAX_SPAN_NM
    rs_ok = RAMAN_SHIFT_RANGE[0] <= lo and hi <= RAMAN_SHIFT_RANGE[1]
    if rs_ok:
        if lo < WAVELENGTH_RANGE_NM[0]:
            why = f"values down to {lo:g} cannot be wavelengths in nm"
        elif hi > WAVELENGTH_RANGE_NM[1]:
            why = f"values up to {hi:g} lie beyond any Raman detector's wavelength range in nm"
        else:
            why = f"a span of {hi - lo:g} is too wide for a Raman spectrometer's wavelength range in nm"
        out["raman_shift"] = why
    if wl_ok:
        out["wavelength_nm"] = f"values {lo:g}..{hi:g} fit a wavelength range in nm"
    return out


def resolve_unit(
    axis: np.ndarray, *, label: str | None, path: Path, line: int, unit: str | None = None, reader: str = "the reader"
) -> tuple[str, dict[str, Any]]:
    """Decide the axis unit; returns ``(unit, meta)`` with ``axis_unit_from`` and maybe ``axis_note``.

    Order: the caller's ``unit``; else the unit the column ``label`` names (checked
    against the values: a "Pixel" column must hold whole numbers, a "Wavelength"
    column plausible nanometres); else the values alone when exactly one unit fits
    them (logged as a warning and noted in ``axis_note``).  Pixels are never inferred
    from values (a 1 cm-1 grid looks like pixel indices).

    Raises
    ------
    ReaderError
        When the label contradicts the values, or the values fit both or neither of
        Raman shift and wavelength (the message says so and how to pass ``unit=``).
    """
    lo, hi = float(np.min(axis)), float(np.max(axis))
    if unit is not None:
        if unit not in AXIS_UNITS:
            raise ReaderError(f"{path}: unknown axis unit {unit!r} requested; expected one of {AXIS_UNITS}")
        return unit, {"axis_unit_from": "caller", "axis_note": None}
    declared = unit_from_label(label)
    note = ""
    if declared == "pixel":
        if np.all(axis == np.round(axis)):
            return "pixel", {"axis_unit_from": "header", "axis_note": None}
        note = f"column {label!r} is labelled as pixels but holds non-integer values {lo:g}..{hi:g}"
    elif declared is not None:
        if declared not in plausible_units(axis):
            raise ReaderError(
                f"{path}, line {line}: column {label!r} says {UNIT_WORDS[declared]}, "
                f"but its values {lo:g}..{hi:g} are not plausible for that unit"
            )
        return declared, {"axis_unit_from": "header", "axis_note": None}
    options = plausible_units(axis)
    if note:
        named = note
    elif label:
        named = f"column {label!r} names no unit"
    else:
        named = "the file names no axis unit"
    if len(options) == 1:
        (u, why), = options.items()
        msg = f"{named}; read as {UNIT_WORDS[u]} because {why}"
        # A label the data contradicts deserves a warning; a format that never names
        # its unit (WiRE's "#Wave") is routine, and the note in meta is enough.
        log.log(logging.WARNING if note else logging.INFO, "%s: %s", path, msg)
        return u, {"axis_unit_from": "values", "axis_note": msg}
    if not options:
        raise ReaderError(
            f"{path}, line {line}: cannot tell the axis unit: {named}, and values {lo:g}..{hi:g} "
            f"fit neither a Raman shift (cm-1) nor a wavelength (nm); pass unit=... to {reader}"
        )
    raise ReaderError(
        f"{path}, line {line}: axis unit is ambiguous: {named}, and values {lo:g}..{hi:g} fit both a "
        f"Raman shift (cm-1) and a wavelength (nm); pass unit='raman_shift' or unit='wavelength_nm' to {reader}"
    )


# --------------------------------------------------------------------------- spectra


def ascending_merge(
    axis: np.ndarray, columns: np.ndarray, line_nos: np.ndarray, path: Path
) -> tuple[np.ndarray, np.ndarray, int]:
    """Ascending axis with repeated axis points averaged (in every column).

    Parameters
    ----------
    axis : numpy.ndarray
        ``(n,)`` axis values in file order.
    columns : numpy.ndarray
        ``(k, n)`` values that travel with the axis (intensities first).
    line_nos : numpy.ndarray
        ``(n,)`` file line of each point, for messages.
    path : pathlib.Path
        For messages.

    Returns
    -------
    axis, columns, n_duplicates

    Raises
    ------
    ReaderError
        When the axis runs back and forth (naming the first offending line).
    """
    d = np.diff(axis)
    if (d > 0).any() and (d < 0).any():
        direction = np.sign(d[np.nonzero(d)[0][0]])
        i = int(np.nonzero(np.sign(d) == -direction)[0][0]) + 1
        raise ReaderError(
            f"{path}, line {int(line_nos[i])}: axis is not monotonic ({axis[i]:g} follows {axis[i - 1]:g}, "
            f"but the axis runs {'up' if direction > 0 else 'down'} before)"
        )
    if axis.size > 1 and axis[0] > axis[-1]:
        axis, columns = axis[::-1], columns[:, ::-1]
    if not (d == 0).any():
        return axis.copy(), columns.copy(), 0
    uniq, inverse = np.unique(axis, return_inverse=True)
    counts = np.bincount(inverse)
    merged = np.stack([np.bincount(inverse, weights=c) / counts for c in columns])
    n_dup = int(axis.size - uniq.size)
    log.debug("%s: averaged %d repeated axis points", path, n_dup)
    return uniq, merged, n_dup


def check_points(n: int, path: Path | str, line: int) -> None:
    """Refuse a spectrum of more than :data:`MAX_POINTS` points (a :class:`ReaderError` naming the file)."""
    if n > MAX_POINTS:
        raise ReaderError(f"{path}, line {line}: a spectrum of {n} points; at most {MAX_POINTS} are accepted")


def base_meta(path: Path, fmt: str, encoding: str, header: dict[str, str], instrument: str | None) -> dict[str, Any]:
    """The normalised keys every instrument reader fills (``None`` where the file is silent)."""
    return {
        "where": str(path),
        "file": path.name,
        "format": fmt,
        "instrument": instrument,
        "header": header,
        "laser_nm": None,
        "integration_ms": None,
        "serial": None,
        "wavelength_poly": None,
        "encoding": encoding,
    }


def build_spectrum(
    axis: np.ndarray,
    intensities: np.ndarray,
    unit: str,
    meta: dict[str, Any],
    path: Path,
    line_nos: np.ndarray,
    extra: dict[str, np.ndarray] | None = None,
) -> Spectrum:
    """Sort ascending, average repeated points, validate; ``extra`` columns travel along.

    The extra columns end up in ``meta['columns']`` aligned with the returned axis.
    """
    names = list(extra or {})
    cols = np.vstack([intensities] + [extra[n] for n in names]) if names else intensities[None, :]
    axis, cols, n_dup = ascending_merge(axis, cols, line_nos, path)
    check_points(axis.size, path, int(line_nos[-1]))
    if axis.size < MIN_POINTS:
        raise ReaderError(
            f"{path}, line {int(line_nos[-1])}: only {axis.size} distinct data points "
            f"(lines {int(line_nos[0])}-{int(line_nos[-1])}); at least {MIN_POINTS} needed"
        )
    meta = dict(meta, duplicate_points=n_dup)
    if names:
        meta["columns"] = {n: cols[1 + i] for i, n in enumerate(names)}
    try:
        return Spectrum(cols[0], axis, unit, meta).validated(unit=unit, min_points=MIN_POINTS)
    except SpectrumError as e:  # defensive: the checks above should have caught it
        raise ReaderError(f"{path}, line {int(line_nos[0])}: {e}") from None


def header_number(header: dict[str, str], *keys: str) -> float | None:
    """The first header value among ``keys`` (case-insensitive) that starts with a number."""
    lowered = {k.strip().lower(): v for k, v in header.items()}
    for key in keys:
        v = lowered.get(key.lower())
        if v is None:
            continue
        m = re.match(r"\s*([+-]?(?:\d+(?:[.,]\d*)?|[.,]\d+)(?:[eE][+-]?\d+)?)", v)
        if m:
            return float(m.group(1).replace(",", "."))
    return None


def header_text(header: dict[str, str], *keys: str) -> str | None:
    """The first non-empty header value among ``keys`` (case-insensitive)."""
    lowered = {k.strip().lower(): v for k, v in header.items()}
    for key in keys:
        v = (lowered.get(key.lower()) or "").strip()
        if v:
            return v
    return None


def instrument_from_path(path: Path) -> str | None:
    """An instrument maker named in the file's path (folder or file name), or ``None``."""
    parts = " ".join(p.lower() for p in path.parts[-4:])
    for key, name in (("openraman", "OpenRAMAN"), ("wasatch", "Wasatch"), ("horiba", "Horiba"), ("renishaw", "Renishaw")):
        if key in parts:
            return name
    return None


# --------------------------------------------------------------------------- maps


@dataclass(frozen=True)
class SpectrumMap:
    """Spectra measured at several stage positions (a Renishaw map or multi-point scan).

    Attributes
    ----------
    spectra : tuple of Spectrum
        One per position, in file order; each carries its position in ``meta``.
    positions : numpy.ndarray
        ``(n, k)`` position coordinates, one row per spectrum.
    position_names : tuple of str
        The ``k`` coordinate names as the file gives them (``("X", "Y")``).
    meta : dict
        File-level metadata (``where``, ``file``, ``format``, ``instrument``, ...).
    """

    spectra: tuple[Spectrum, ...]
    positions: np.ndarray
    position_names: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.spectra)

    def __iter__(self) -> Iterator[Spectrum]:
        return iter(self.spectra)

    def __getitem__(self, i: int) -> Spectrum:
        return self.spectra[i]

    @property
    def unit(self) -> str:
        """The axis unit (the same for every spectrum of a map)."""
        return self.spectra[0].unit

    def common_axis(self) -> np.ndarray:
        """The axis every spectrum shares.

        Raises
        ------
        SpectrumError
            When the spectra are on different axes.
        """
        first = self.spectra[0].axis
        for i, s in enumerate(self.spectra[1:], start=1):
            if s.axis.shape != first.shape or not np.array_equal(s.axis, first):
                raise SpectrumError(f"{self.meta.get('where', 'map')}: spectrum {i} is on a different axis than spectrum 0")
        return first

    def intensity_matrix(self) -> np.ndarray:
        """``(n, points)`` intensities on :meth:`common_axis`."""
        self.common_axis()
        return np.stack([s.intensities for s in self.spectra])
