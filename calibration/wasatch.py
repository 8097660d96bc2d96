"""Wasatch Photonics ENLIGHTEN ``.csv`` exports (and the Wasatch files that are not ENLIGHTEN's).

What the real files look like (``../shared/data/instruments``):

- ``Wasatch_WP785X/acetonitrile.csv`` and ``Wasatch_WP785X/CC-124_TAP_WP-02071.csv``
  (ENLIGHTEN 4.1.6, WP-785X-F13-R-ILC, serial WP-02071), CRLF line ends:
  54 metadata rows ``Key,Value`` (``Serial Number,WP-02071``, ``Model,...``,
  ``Integration Time,1000`` in ms, ``Scan Averaging,2``, ``ROI Pixel Start,10``,
  ``ROI Pixel End,2047``, ``Laser Wavelength,785.041``, ``Laser Power mW,100.0``,
  ``Pixel Count,2048``, ``Timestamp,...``, the wavelength polynomial ``CCD C0`` …
  ``CCD C3`` together and ``CCD C4`` twenty rows earlier; empty values such as
  ``Note,``), a blank line, then the column header ``Pixel,Wavelength,Wavenumber,Processed``
  and 2048 rows ``0,799.84,235.71,NA``: pixels 0–9 lie outside the ROI and have
  ``Processed`` = ``NA``, so 2038 points remain, 260.19 → 3653.54 cm-1 ascending
  (Wavelength and Wavenumber rounded to 0.01).  ``CCD C0…C4`` reproduce the
  Wavelength column: wavelength_nm = C0 + C1·p + C2·p² + C3·p³ + C4·p⁴, p the 0-based pixel.
- ``Wasatch_WP532X/*.csv`` are not ENLIGHTEN files: ``Pixel,Intensity`` with a
  Raman-shift first column; :func:`read_wasatch` hands them to
  :func:`calibration.openraman.read_xy_csv` (see there).

ENLIGHTEN can also write ``Raw``, ``Dark`` and ``Reference`` columns; the axis column
is ``Wavenumber`` (else ``Wavelength``, else ``Pixel``) and the intensity ``Processed``
(else ``Raw``) unless asked otherwise; every other column is kept, aligned with the
returned axis, in ``meta['columns']``.  Exports of several measurements side by side
(repeated column names) are refused.
"""
from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import numpy as np

from .errors import ReaderError
from .instruments import (
    base_meta,
    build_spectrum,
    detect_number_format,
    head_lines,
    header_number,
    last_line_no,
    header_text,
    load_text,
    quote,
    parse_number,
    parse_rows,
    resolve_unit,
    unit_from_label,
)
from .openraman import read_xy_csv, sniff_xy_csv
from .spectrum import Spectrum

log = logging.getLogger(__name__)

#: Column names ENLIGHTEN writes in its data block (lower case).
DATA_COLUMNS = ("pixel", "wavelength", "wavenumber", "raw", "dark", "reference", "processed")

#: Metadata keys that identify an ENLIGHTEN file when sniffing.
_SIGNATURE_KEYS = ("enlighten version", "serial number", "ccd c0", "laser wavelength", "integration time", "measurement id")
_AXIS_FOR_UNIT = {"raman_shift": "wavenumber", "wavelength_nm": "wavelength", "pixel": "pixel"}
_MISSING = frozenset({"NA", "N/A", "NaN", "nan", ""})


def read_wasatch(
    path: str | Path, *, axis: str | None = None, intensity: str | None = None, unit: str | None = None
) -> Spectrum:
    """Read a Wasatch spectrum: an ENLIGHTEN CSV, or a two-column ``Pixel,Intensity`` CSV.

    Parameters
    ----------
    path : str or pathlib.Path
        The file.
    axis : str, optional
        ENLIGHTEN only: the axis column, by name (``"Wavenumber"``, ``"Wavelength"``,
        ``"Pixel"``) or unit (``"raman_shift"``, ``"wavelength_nm"``, ``"pixel"``).
        Default: Wavenumber, else Wavelength, else Pixel.
    intensity : str, optional
        ENLIGHTEN only: the intensity column (default ``Processed``, else ``Raw``).
    unit : str, optional
        Two-column files only: force the axis unit (see :func:`calibration.openraman.read_xy_csv`).

    Returns
    -------
    Spectrum
        Ascending axis, rows with ``NA`` in the axis or intensity column dropped, repeated
        axis points averaged.  ``meta`` of an ENLIGHTEN file: the normalised keys of
        :mod:`calibration.instruments` plus ``header`` (every metadata row, value text as
        written, including empty ones), ``serial`` (Serial Number), ``model``,
        ``laser_nm`` (Laser Wavelength, ``None`` when 0 or absent), ``integration_ms``
        (Integration Time), ``accumulations`` (Scan Averaging), ``laser_power_mw``,
        ``wavelength_poly`` (``[C0, C1, C2, C3(, C4)]``, nm in 0-based pixel, ascending
        powers), ``roi`` (``(start, end)`` pixels), ``pixel_count``, ``columns_in_file``,
        ``axis_column``, ``intensity_column``, ``dropped_points`` (rows dropped for
        ``NA``) and ``columns`` (the other columns, aligned with the axis).

    Raises
    ------
    ReaderError
        Naming the file and line: no data header row, unknown requested column, repeated
        column names, malformed or non-numeric rows (``NA`` is the only missing-value
        marker), a non-monotonic axis, too few points.
    """
    path = Path(path)
    tf = load_text(path)
    first = next((ln.strip() for ln in tf.lines if ln.strip()), "")
    if sniff_xy_csv(path, first.encode("utf-8")) or (first and _all_numeric(first, tf.lines, path)):
        if axis is not None or intensity is not None:
            raise ReaderError(f"{path}, line 1: a two-column file; axis=/intensity= apply to ENLIGHTEN files only")
        s = read_xy_csv(path, unit=unit)
        meta = dict(s.meta, instrument="Wasatch", instrument_from="reader")
        return dataclasses.replace(s, meta=meta)
    if unit is not None:
        raise ReaderError(f"{path}: unit= applies to two-column files; ENLIGHTEN columns name their unit (use axis=)")

    lines = tf.lines
    header: dict[str, str] = {}
    repeats: dict[str, list[str]] = {}
    data_header = None
    sep = ";" if ";" in first.split(",", 1)[0] else ","
    for i, line in enumerate(lines):
        s = line.strip()
        if not s:
            continue
        fields = [f.strip() for f in s.rstrip(sep).split(sep)]
        if len(fields) >= 2 and fields[0].lower() in DATA_COLUMNS and all(f.lower() in DATA_COLUMNS for f in fields):
            data_header = i
            columns = fields
            break
        key, _, value = s.partition(sep)
        key, value = key.strip(), value.strip()
        if not key:
            raise ReaderError(f"{path}, line {i + 1}: metadata row without a key: {quote(s)}")
        if key in header:
            repeats.setdefault(key, []).append(value)
        else:
            header[key] = value
    if data_header is None:
        raise ReaderError(
            f"{path}, line {last_line_no(lines)}: no ENLIGHTEN data header row (e.g. 'Pixel,Wavelength,Wavenumber,Processed') found"
        )
    no = data_header + 1
    lower = [c.lower() for c in columns]
    if len(set(lower)) != len(lower):
        raise ReaderError(
            f"{path}, line {no}: repeated column names {columns}: a multi-measurement ENLIGHTEN export, "
            "which this reader does not split; export one measurement per file"
        )
    ax_col = _pick_axis(lower, axis, path, no)
    in_col = _pick_intensity(lower, intensity, path, no)
    if ax_col == in_col:
        raise ReaderError(f"{path}, line {no}: axis and intensity would be the same column {columns[ax_col]!r}")

    fmt = detect_number_format(lines, no, path, delimiter=sep)
    values, line_nos = parse_rows(lines, no, path, fmt, columns, missing=_MISSING)
    _check_complete(values.shape[0], header, path, int(line_nos[-1]))
    keep = ~(np.isnan(values[:, ax_col]) | np.isnan(values[:, in_col]))
    dropped = int((~keep).sum())
    if not keep.any():
        raise ReaderError(f"{path}, line {no}: every row has NA in {columns[ax_col]!r} or {columns[in_col]!r}")
    values, line_nos = values[keep], line_nos[keep]
    if dropped:
        log.debug("%s: dropped %d rows with NA (outside the ROI)", path, dropped)

    unit, unit_meta = resolve_unit(values[:, ax_col], label=columns[ax_col], path=path, line=int(line_nos[0]),
                                   reader="read_wasatch")
    meta = base_meta(path, "wasatch", tf.encoding, header, None)
    model = header_text(header, "Model")
    laser = header_number(header, "Laser Wavelength", "Excitation (nm)", "Excitation")
    roi = (header_number(header, "ROI Pixel Start"), header_number(header, "ROI Pixel End"))
    meta.update(
        unit_meta,
        instrument=f"Wasatch {model}" if model else "Wasatch",
        model=model,
        serial=header_text(header, "Serial Number"),
        laser_nm=laser if laser and laser > 0 else None,
        integration_ms=header_number(header, "Integration Time"),
        accumulations=header_number(header, "Scan Averaging"),
        laser_power_mw=header_number(header, "Laser Power mW"),
        wavelength_poly=_poly(header, path),
        roi=tuple(int(v) for v in roi) if None not in roi else None,
        pixel_count=_int_or_none(header_number(header, "Pixel Count")),
        software_version=header_text(header, "ENLIGHTEN Version"),
        columns_in_file=columns,
        axis_column=columns[ax_col],
        intensity_column=columns[in_col],
        dropped_points=dropped,
        number_format={"delimiter": fmt.delimiter, "decimal": fmt.decimal},
    )
    if repeats:
        meta["header_repeats"] = repeats
    extra = {c: values[:, k] for k, c in enumerate(columns) if k not in (ax_col, in_col)}
    return build_spectrum(values[:, ax_col], values[:, in_col], unit, meta, path, line_nos, extra)


def _check_complete(rows: int, header: dict[str, str], path: Path, last_line: int) -> None:
    """Refuse a file with fewer data rows than its ``Pixel Count`` (a truncated export, not a short spectrum)."""
    count = _int_or_none(header_number(header, "Pixel Count"))
    if count is not None and 0 < rows < count:
        raise ReaderError(f"{path}, line {last_line}: truncated: {rows} data rows, but the header says "
                          f"Pixel Count {count}")


def _all_numeric(line: str, lines: list[str], path: Path) -> bool:
    fmt = detect_number_format(lines, next(i for i, ln in enumerate(lines) if ln.strip()), path)
    return all(parse_number(t, fmt) is not None for t in fmt.split(line))


def _pick_axis(lower: list[str], axis: str | None, path: Path, no: int) -> int:
    if axis is not None:
        want = _AXIS_FOR_UNIT.get(axis, axis.strip().lower())
        if want not in lower:
            raise ReaderError(f"{path}, line {no}: no {axis!r} column; the file has {lower}")
        return lower.index(want)
    for want in ("wavenumber", "wavelength", "pixel"):
        if want in lower:
            return lower.index(want)
    raise ReaderError(f"{path}, line {no}: no axis column (Wavenumber, Wavelength or Pixel) among {lower}")


def _pick_intensity(lower: list[str], intensity: str | None, path: Path, no: int) -> int:
    wants = [intensity.strip().lower()] if intensity is not None else ["processed", "raw"]
    for want in wants:
        if want in lower and unit_from_label(want) is None:
            return lower.index(want)
    raise ReaderError(f"{path}, line {no}: no intensity column {' or '.join(w.title() for w in wants)} among {lower}")


def _poly(header: dict[str, str], path: Path) -> list[float] | None:
    """``[C0, C1, ...]`` from ``CCD C0``… (consecutive from C0); ``None`` when absent or not numeric."""
    coeffs: list[float] = []
    for k in range(10):
        text = header_text(header, f"CCD C{k}")
        if text is None:
            break
        try:
            # A ';'-separated export may write decimal commas.
            coeffs.append(float(text.replace(",", ".") if text.count(",") == 1 and "." not in text else text))
        except ValueError:
            log.warning("%s: CCD C%d is not a number (%r); no wavelength polynomial", path, k, text)
            return None
    return coeffs or None


def _int_or_none(v: float | None) -> int | None:
    return int(v) if v is not None and float(v).is_integer() else None


def sniff_wasatch(path: Path, head: bytes) -> bool:
    """Whether the file starts with an ENLIGHTEN metadata block (two known ``Key,`` rows)."""
    lines = head_lines(head, 80)
    if not lines or lines[0].startswith("#"):
        return False
    keys = {re.split(r"[,;]", ln, maxsplit=1)[0].strip().lower() for ln in lines if re.search(r"[,;]", ln)}
    return len(keys & set(_SIGNATURE_KEYS)) >= 2


#: ``(name, sniff, reader, description)`` for :func:`calibration.readers.register_reader`.
FORMAT = ("wasatch", sniff_wasatch, read_wasatch,
          "Wasatch ENLIGHTEN .csv: 'Key,Value' metadata, then Pixel,Wavelength,Wavenumber,Processed")
