"""`raman-edge peaks`: peak positions of a spectrum on its calibrated Raman-shift axis."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from calibration.errors import CalibrationError

from ..options import FiniteFloatRange


def shift_spectrum(spectrum: Any, calibration: Path | None) -> Any:
    """``spectrum`` on an ascending, calibrated Raman-shift axis.

    ``calibration`` is either kind of calibration file: a pixel-axis calibration
    (for pixel or wavelength files) or a shift-axis correction fitted from a standard
    (for Raman-shift files).  The id of what was applied lands in ``meta["calibration_id"]``.

    Raises
    ------
    CalibrationFileError, CalibrationMismatchError
        The file cannot be loaded, or it does not fit the spectrum (a pixel calibration
        for a Raman-shift file, another laser): configuration errors, exit status 2.
    CalibrationError
        A pixel-axis spectrum and no calibration.
    """
    from dataclasses import replace

    from calibration.axis import applied_id, load_calibration, to_shift_axis

    cal = load_calibration(calibration) if calibration is not None else None
    if cal is None and spectrum.unit != "raman_shift":
        raise CalibrationError(f"{spectrum.where}: spectrum is on a {spectrum.unit} axis; give --calibration CAL.json")
    s, applied = to_shift_axis(spectrum.validated(), cal)
    s, cal_id = s.ascending(), applied_id(applied)
    return replace(s, meta=dict(s.meta, calibration_id=cal_id)) if cal_id else s


def read_spectra(path: Path) -> list[Any]:
    from calibration.readers import read

    got = read(path)
    return got if isinstance(got, list) else [got]


@click.command("peaks")
@click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--calibration", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="Calibration JSON: a pixel-axis calibration (for pixel-axis files) or a shift-axis "
                   "correction (for Raman-shift files); one that does not fit the file's axis or laser is refused.")
@click.option("--min-prominence", type=FiniteFloatRange(min=0, min_open=True), default=None,
              help="Smallest peak prominence, in the file's intensity units (default: 8 × the noise σ).")
@click.option("--snr", type=FiniteFloatRange(min=0, max=1e6, min_open=True), default=8.0, show_default=True,
              help="Noise multiple used when --min-prominence is not given.")
@click.option("--index", type=click.IntRange(min=0), default=0, show_default=True,
              help="Which spectrum of a multi-spectrum file (map, .npz).")
@click.option("--json", "as_json", is_flag=True, help='Print {"peaks_cm1": [...], "axis": "raman_shift"}.')
def peaks(file: Path, calibration: Path | None, min_prominence: float | None, snr: float, index: int,
          as_json: bool) -> None:
    """Print the peak positions (sub-sample centroids, cm-1) of FILE on its Raman-shift axis."""
    import numpy as np

    from calibration.lamp import detect_peaks

    spectra = read_spectra(file)
    if index >= len(spectra):
        raise CalibrationError(f"{file}: --index {index}, but the file holds {len(spectra)} spectra")
    s = shift_spectrum(spectra[index], calibration)
    pk = detect_peaks(s.intensities, min_prominence=min_prominence, snr=snr, saturation=None)
    pos = np.interp(pk.position, np.arange(s.axis.size, dtype=np.float64), s.axis)
    cm1 = [round(float(v), 2) for v in pos]
    if as_json:
        doc: dict[str, Any] = {"peaks_cm1": cm1, "axis": "raman_shift"}
        if s.meta.get("calibration_id"):
            doc["calibration_id"] = s.meta["calibration_id"]
        click.echo(json.dumps(doc))
        return
    click.echo(f"{file}: {len(cm1)} peaks (cm-1, prominence)")
    for v, p in zip(cm1, pk.prominence):
        click.echo(f"{v:10.2f}  {p:.4g}")


COMMAND = peaks
