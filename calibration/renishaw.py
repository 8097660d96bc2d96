"""Renishaw WiRE ``.txt`` exports: single spectra and maps (multi-point scans).

What the real files look like (Renishaw Qontor, 785 nm, in
``../shared/data/instruments/Renishaw_Qontor``), all tab-separated with CRLF line
ends and no metadata beyond the column names (so ``laser_nm`` etc. are ``None``):

- Single spectra: a header ``#Wave<TAB><TAB>#Intensity`` (two tabs), then
  ``shift<TAB>intensity`` rows with the shift descending.  ``acetonitrile_5x.txt``:
  3179 points, 3199.44 → 100.34 cm-1; ``glass_slide_background.txt``: 1015 points,
  1808.19 → 712.42 cm-1.
- Maps: a header ``#X<TAB><TAB>#Y<TAB><TAB>#Wave<TAB><TAB>#Intensity``, then one row
  per (position, axis point): ``x<TAB>y<TAB>shift<TAB>intensity``, each position's
  spectrum a consecutive block of 1015 rows, 1808.19 → 712.42 cm-1.
  ``CC-124_TAP_plate_5x_3_points.txt``: 3 positions; each
  ``chlamy_spectra_x/chlamy_spectra/2024-11-12_*_slide_10_cells*.txt``: 10 positions,
  except ``CC-1373_TAP`` with 9.  Every position of a file has the same axis.

``#Wave`` names no unit: WiRE writes it for Raman shifts and wavelengths alike, so the
unit comes from the values (all files here: Raman shift, since they run above 1700 or
span more than 700) and an ambiguous axis is refused; pass ``unit=`` then.

Grouping of a map is exact: a new spectrum starts where the position columns change
(compared as parsed numbers, in file order, never re-sorted, so a position visited twice
gives two spectra) or, within one position, where the axis restarts at its first value
(repeated acquisitions at one spot).  Any other position columns WiRE writes
(``#Z``, ``#Time``) are treated like ``#X``/``#Y``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .errors import ReaderError
from .instruments import (
    MAX_MAP_BYTES,
    SpectrumMap,
    TextFile,
    base_meta,
    build_spectrum,
    detect_number_format,
    head_lines,
    load_text,
    parse_rows,
    quote,
    resolve_unit,
)
from .spectrum import Spectrum

log = logging.getLogger(__name__)


def read_renishaw(path: str | Path, *, unit: str | None = None) -> Spectrum | list[Spectrum]:
    """Read a Renishaw WiRE ``.txt`` export.

    Parameters
    ----------
    path : str or pathlib.Path
        The file.
    unit : str, optional
        Force the axis unit when the values cannot tell Raman shift from wavelength.

    Returns
    -------
    Spectrum or list of Spectrum
        A ``Spectrum`` for a ``#Wave #Intensity`` file; a list (one per position, file
        order) for a map.  Each map spectrum's ``meta`` has ``position`` (``{"X": .., "Y": ..}``),
        ``x``/``y`` when those columns exist, ``position_index``, ``map_size``, ``line``
        (its first file line) and ``where`` = ``"<path>[i]"``.  Always: the normalised keys
        of :mod:`calibration.instruments` and ``columns_in_file``.

    Raises
    ------
    ReaderError
        Naming the file and line: no ``#...#Wave...#Intensity`` header, malformed rows,
        a non-monotonic axis, too few points for a position, an ambiguous unit.
    """
    spectra, positions, names, _meta = _parse(Path(path), unit)
    return spectra if names else spectra[0]


def read_renishaw_map(path: str | Path, *, unit: str | None = None) -> SpectrumMap:
    """Read a Renishaw WiRE map export as a :class:`~calibration.instruments.SpectrumMap`.

    Parameters
    ----------
    path : str or pathlib.Path
        A ``#X #Y #Wave #Intensity`` file.
    unit : str, optional
        As for :func:`read_renishaw`.

    Returns
    -------
    SpectrumMap
        Spectra in file order, ``positions`` ``(n, k)``, ``position_names`` (e.g. ``("X", "Y")``).

    Raises
    ------
    ReaderError
        As :func:`read_renishaw`, and when the file has no position columns.
    """
    path = Path(path)
    spectra, positions, names, meta = _parse(path, unit)
    if not names:
        raise ReaderError(f"{path}, line 1: a single spectrum (only #Wave and #Intensity columns), not a map; use read_renishaw")
    return SpectrumMap(tuple(spectra), positions, tuple(names), meta)


def _header(tf: TextFile) -> tuple[int, list[str]]:
    for i, line in enumerate(tf.lines):
        s = line.strip()
        if not s:
            continue
        tokens = s.split()
        names = [t[1:] for t in tokens]
        lower = [n.lower() for n in names]
        if not all(t.startswith("#") and len(t) > 1 for t in tokens) or "wave" not in lower or "intensity" not in lower:
            raise ReaderError(
                f"{tf.path}, line {i + 1}: not a Renishaw WiRE export: expected a header like "
                f"'#Wave  #Intensity' or '#X  #Y  #Wave  #Intensity', found {quote(s)}"
            )
        if len(set(lower)) != len(lower):
            raise ReaderError(f"{tf.path}, line {i + 1}: repeated column names in header {quote(s)}")
        return i, names
    raise ReaderError(f"{tf.path}, line 1: empty file")


def _parse(path: Path, unit: str | None) -> tuple[list[Spectrum], np.ndarray, list[str], dict]:
    # A WiRE file may be a map: it gets the larger map bound; each spectrum still the points bound.
    tf = load_text(path, MAX_MAP_BYTES)
    hi, names = _header(tf)
    lower = [n.lower() for n in names]
    wi, ii = lower.index("wave"), lower.index("intensity")
    pos_idx = [k for k in range(len(names)) if k not in (wi, ii)]
    pos_names = [names[k] for k in pos_idx]

    fmt = detect_number_format(tf.lines, hi + 1, path)
    values, line_nos = parse_rows(tf.lines, hi + 1, path, fmt, [f"#{n}" for n in names])
    wave, intensity = values[:, wi], values[:, ii]
    unit, unit_meta = resolve_unit(
        wave, label="#" + names[wi], path=path, line=int(line_nos[0]), unit=unit, reader="read_renishaw"
    )

    file_meta = base_meta(path, "renishaw", tf.encoding, {}, "Renishaw")
    file_meta.update(unit_meta, columns_in_file=["#" + n for n in names],
                     number_format={"delimiter": fmt.delimiter, "decimal": fmt.decimal})

    starts = _block_starts(values[:, pos_idx], wave) if pos_idx else [0]
    bounds = list(zip(starts, starts[1:] + [len(wave)]))
    spectra: list[Spectrum] = []
    positions = np.asarray([values[a, pos_idx] for a, _ in bounds], dtype=np.float64).reshape(len(bounds), len(pos_idx))
    for i, (a, b) in enumerate(bounds):
        meta = dict(file_meta)
        if pos_idx:
            pos = {n: float(v) for n, v in zip(pos_names, positions[i])}
            meta.update(
                where=f"{path}[{i}]",
                position=pos,
                position_index=i,
                map_size=len(bounds),
                line=int(line_nos[a]),
            )
            for n, v in pos.items():
                if n.lower() in ("x", "y", "z"):
                    meta[n.lower()] = v
        spectra.append(build_spectrum(wave[a:b], intensity[a:b], unit, meta, path, line_nos[a:b]))
    if pos_idx:
        file_meta["map_size"] = len(bounds)
        log.debug("%s: %d positions", path, len(bounds))
    return spectra, positions, pos_names, file_meta


def _block_starts(pos: np.ndarray, wave: np.ndarray) -> list[int]:
    """Row indices where a new spectrum starts: position change, or axis back at its first value."""
    change = set((np.nonzero(np.any(pos[1:] != pos[:-1], axis=1))[0] + 1).tolist())
    runs = sorted({0} | change)
    starts: list[int] = []
    for a, b in zip(runs, runs[1:] + [len(wave)]):
        starts.append(a)
        # Repeated acquisitions at one spot: the axis jumps back to exactly its first value
        # (a point equal to its predecessor is a duplicate to average, not a restart).
        again = np.nonzero(wave[a + 1 : b] == wave[a])[0] + a + 1
        starts.extend(int(j) for j in again if wave[j - 1] != wave[a])
    return starts


def sniff_renishaw(path: Path, head: bytes) -> bool:
    """Whether the first line is a WiRE column header (``#Wave``, ``#Intensity``, maybe ``#X #Y``)."""
    lines = head_lines(head, 1)
    if not lines:
        return False
    tokens = lines[0].split()
    lower = [t.lower() for t in tokens]
    return all(t.startswith("#") for t in tokens) and "#wave" in lower and "#intensity" in lower


#: ``(name, sniff, reader, description)`` for :func:`calibration.readers.register_reader`.
FORMAT = ("renishaw", sniff_renishaw, read_renishaw, "Renishaw WiRE .txt: '#Wave #Intensity' or map '#X #Y #Wave #Intensity'")
