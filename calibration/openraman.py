"""Two-column ``axis,intensity`` CSVs: the OpenRAMAN's pixel-axis files, and their look-alikes.

What the real files look like (``../shared/data/instruments``), all comma-separated,
CRLF line ends, no metadata at all:

- ``OpenRAMAN/neon_n_n_n_solid_10000_0_5.csv`` (the neon lamp) and
  ``OpenRAMAN/acetonitrile_n_n_n_solid_10000_0_5.csv``: header ``Pixels #,Intensity (a.u.)``,
  2048 rows ``0.00000e+00,8.40815e-01`` … ``2.04700e+03,...`` (pixel 0–2047 in
  scientific notation, intensities around 0.8), no line end after the last row.
- ``OpenRAMAN/CC-124_TAP_Pos-2-000_002.csv``: header ``Pixel,Intensity``, 2048 rows
  ``0.0,4129.147...`` … ``2047.0,...``.
- ``Wasatch_WP532X/acetonitrile.csv`` and ``Wasatch_WP532X/CC-124_TAP_Pos-4-002_001.csv``:
  the same ``Pixel,Intensity`` header, but the first column is **not** pixels: 2048
  ascending non-integer values from -601.28 to 4764.79, the Wasatch's own Raman-shift
  axis (acetonitrile's bands sit near 927, 1383, 2259 and 2950 cm-1 on it).  These
  files come from the same acquisition software as the OpenRAMAN's (the ``Pos-N``
  names of a Micro-Manager position list), not from ENLIGHTEN, and the cell spectrum
  is saturated (1288 points at 65535).

So the header's "Pixel" is only believed when the column holds whole numbers; otherwise
the unit is inferred from the values (a negative value cannot be a wavelength, so these
read as Raman shift), logged as a warning and noted in ``meta['axis_note']``; when the
values fit both Raman shift and wavelength the file is refused with a message saying so.
The OpenRAMAN has no calibrated axis: its pixel axis goes through
:mod:`calibration.axis` (neon lamp → wavelength → Raman shift).
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
    instrument_from_path,
    load_text,
    quote,
    parse_number,
    parse_rows,
    resolve_unit,
    unit_from_label,
)
from .spectrum import Spectrum

log = logging.getLogger(__name__)

_HEADER_SPLIT = re.compile(r"\s*[,;\t]\s*")


def _header_fields(line: str) -> list[str]:
    """Column labels of a header line: split at commas, semicolons or tabs, else at runs of
    two or more spaces (labels may contain single spaces: ``Raman shift (cm-1)   Intensity``),
    else at single spaces."""
    s = line.strip().rstrip(",;").strip()
    fields = _HEADER_SPLIT.split(s)
    if len(fields) == 1:
        fields = re.split(r"\s{2,}", s)
        if len(fields) == 1:
            fields = s.split()
    return fields
_INTENSITY_LABEL = re.compile(r"intens|counts?\b|signal|a\.\s*u\.", re.IGNORECASE)


def read_xy_csv(path: str | Path, *, unit: str | None = None) -> Spectrum:
    """Read a two-column ``axis,intensity`` CSV (header optional).

    Parameters
    ----------
    path : str or pathlib.Path
        The file.  Columns split by commas, semicolons (then decimal commas are
        allowed: ``1234,5;678,9``), tabs or spaces.
    unit : str, optional
        Force the axis unit; otherwise it comes from the header label (``Pixel``,
        ``Wavenumber``, ``Raman shift``, ``Wavelength``) checked against the values, or
        from the values alone when only one unit fits them.

    Returns
    -------
    Spectrum
        Ascending axis, repeated points averaged.  ``meta``: the normalised keys of
        :mod:`calibration.instruments`, ``format="xy_csv"``, ``columns_in_file``,
        ``instrument`` (from the path when a folder or file name names a maker, then
        ``instrument_from="path"``; else ``None``).

    Raises
    ------
    ReaderError
        Naming the file and line: malformed rows, not two columns, a non-monotonic axis,
        too few points, a label contradicting the values, an ambiguous unit.
    """
    path = Path(path)
    tf = load_text(path)
    start, columns = _header(tf.lines, path)
    fmt = detect_number_format(tf.lines, start, path)
    names = columns or ["axis", "intensity"]
    values, line_nos = parse_rows(tf.lines, start, path, fmt, names)
    axis, intensities = values[:, 0], values[:, 1]
    label = columns[0] if columns else None
    unit, unit_meta = resolve_unit(axis, label=label, path=path, line=int(line_nos[0]), unit=unit, reader="read_xy_csv")

    instrument = instrument_from_path(path)
    meta = base_meta(path, "xy_csv", tf.encoding, {}, instrument)
    meta.update(
        unit_meta,
        columns_in_file=columns,
        instrument_from="path" if instrument else None,
        number_format={"delimiter": fmt.delimiter, "decimal": fmt.decimal},
    )
    return build_spectrum(axis, intensities, unit, meta, path, line_nos)


def read_openraman(path: str | Path) -> Spectrum:
    """Read an OpenRAMAN CSV: intensities on the detector's pixel axis.

    Parameters
    ----------
    path : str or pathlib.Path
        ``Pixels #,Intensity (a.u.)`` or ``Pixel,Intensity`` CSV (a file without header
        is accepted when its first column holds whole numbers).

    Returns
    -------
    Spectrum
        ``unit="pixel"`` (0-based pixel indices as floats), ``meta['instrument'] = "OpenRAMAN"``.

    Raises
    ------
    ReaderError
        As :func:`read_xy_csv`, and when the first column is not a pixel axis (its label
        names another unit, or it holds non-integer values: then it is some other
        instrument's calibrated axis; read it with :func:`read_xy_csv`).
    """
    path = Path(path)
    tf = load_text(path)
    start, columns = _header(tf.lines, path)
    label = columns[0] if columns else None
    declared = unit_from_label(label)
    spectrum = read_xy_csv(path, unit="pixel" if declared in (None, "pixel") else None)
    ax = spectrum.axis
    if spectrum.unit != "pixel" or not np.all(ax == np.round(ax)):
        raise ReaderError(
            f"{path}, line {start + 1}: not an OpenRAMAN pixel-axis file: the first column "
            f"({label!r}) holds {ax.min():g}..{ax.max():g}"
            f"{', not whole pixel numbers' if spectrum.unit == 'pixel' else ''}; read it with read_xy_csv"
        )
    meta = dict(spectrum.meta, instrument="OpenRAMAN", instrument_from="reader",
                axis_unit_from="header" if declared == "pixel" else "values", axis_note=None)
    if declared is None:
        meta["axis_note"] = "no column label; whole-number first column read as pixel indices"
    return dataclasses.replace(spectrum, meta=meta)


def _header(lines: list[str], path: Path) -> tuple[int, list[str] | None]:
    """Index of the first data line and the two column labels (``None`` without a header row)."""
    for i, line in enumerate(lines):
        s = line.strip()
        if not s:
            continue
        fields = _header_fields(s)
        numeric = detect_number_format(lines, i, path)
        if all(parse_number(t, numeric) is not None for t in numeric.split(s)):
            return i, None
        if len(fields) != 2 or not all(fields):
            raise ReaderError(f"{path}, line {i + 1}: expected a two-column header like 'Pixel,Intensity', found {quote(s)}")
        return i + 1, fields
    raise ReaderError(f"{path}, line 1: empty file")


def sniff_xy_csv(path: Path, head: bytes) -> bool:
    """Whether the first line is a two-column header naming an axis and an intensity."""
    lines = head_lines(head, 1)
    if not lines:
        return False
    fields = _header_fields(lines[0])
    return len(fields) == 2 and unit_from_label(fields[0]) is not None and bool(_INTENSITY_LABEL.search(fields[1]))


#: ``(name, sniff, reader, description)`` for :func:`calibration.readers.register_reader`.
FORMAT = ("xy_csv", sniff_xy_csv, read_xy_csv, "two-column CSV 'Pixel,Intensity' (OpenRAMAN; Wasatch WP-532X) or similar")
