"""`raman-edge calibrate`: an axis calibration from an emission lamp (and a Raman standard).

Reads the lamp spectrum (pixel axis), fits pixel → wavelength against the NIST
line table of the gas, optionally refines the laser wavelength / detector offset
from a Raman standard measured on the same detector, prints every line's and
band's residual and the RMS, and writes the calibration JSON that
``raman-edge run --calibration`` loads.  See docs/calibration.md.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from calibration.errors import CalibrationError, ConfigError
from calibration.files import check_output_file

from ..options import FiniteFloatRange


def _floats(text: str | None, what: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.replace(":", ",").split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{what}: expected comma-separated numbers, got {text!r}") from None


def save(calibration: Any, out: Path) -> None:
    """Write the calibration file; a failure (disk full, folder gone) names ``--out`` (exit status 2)."""
    try:
        calibration.save(out)
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot write ({e.strerror or e})") from None


def check_names(lamp_gas: str | None, standard_name: str | None) -> None:
    """Refuse an unknown --lamp-gas or --standard-name as the option it is (exit status 2)."""
    from calibration.standards import lamp_lines, raman_standard

    for option, value, look_up in (("--lamp-gas", lamp_gas, lamp_lines), ("--standard-name", standard_name,
                                                                          raman_standard)):
        if value is None:
            continue
        try:
            look_up(value)
        except CalibrationError as e:
            raise ConfigError(f"{option}: {e}") from None


def check_laser(spectrum: Any, laser_nm: float, what: str) -> None:
    """Refuse a --laser-nm that contradicts the laser the file records (exit status 2)."""
    from calibration.axis import LASER_TOLERANCE_NM, spectrum_laser_nm

    recorded = spectrum_laser_nm(spectrum)
    if recorded is not None and abs(recorded - laser_nm) > LASER_TOLERANCE_NM:
        raise ConfigError(f"--laser-nm {laser_nm:g}: the {what} {spectrum.where} records a {recorded:g} nm laser "
                          f"(more than {LASER_TOLERANCE_NM:g} nm apart)")


def check_plausible(calibration: Any, where: str) -> None:
    """Refuse a calibration whose Raman axis is not physically plausible (exit status 2)."""
    from calibration.axis import implausible_axis

    why = implausible_axis(calibration)
    if why is not None:
        raise ConfigError(f"--laser-nm {calibration.laser_nm:g} with lamp {where}: {why}")


def read_one(path: Path, what: str) -> Any:
    """The single spectrum in ``path`` (via :func:`calibration.readers.read`)."""
    from calibration.readers import read

    got = read(path)
    if isinstance(got, list):
        if len(got) != 1:
            raise CalibrationError(f"{path}: holds {len(got)} spectra; the {what} must be a single spectrum")
        got = got[0]
    return got


def _pixel_intensities(spectrum: Any, what: str) -> Any:
    import numpy as np

    if spectrum.unit != "pixel":
        raise CalibrationError(f"{spectrum.where}: the {what} is on a {spectrum.unit} axis; calibrate needs the raw "
                               "pixel axis (export pixels, not the instrument's own wavelength or shift axis)")
    s = spectrum.validated().ascending()
    if not np.allclose(s.axis, np.arange(s.axis.size)):
        raise CalibrationError(f"{s.where}: the {what}'s pixels are {s.axis[0]:g}..{s.axis[-1]:g}; "
                               "calibrate needs every pixel from 0")
    return s


@click.command("calibrate")
@click.option("--lamp", "lamp_file", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="Emission-lamp spectrum on the pixel axis (any format raman-edge reads). Without it, "
                   "--standard on the instrument's own Raman-shift axis gives a shift-axis correction.")
@click.option("--lamp-gas", default="neon", show_default=True, help="Lamp gas: neon or argon.")
@click.option("--laser-nm", type=FiniteFloatRange(100.0, 2000.0, min_open=True, max_open=True), required=True,
              help="Nominal excitation wavelength, nm (in air); refused when the files record another laser, "
                   "or when it puts the lamp's axis outside the Raman range.")
@click.option("--out", "out", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Calibration JSON to write.")
@click.option("--standard", "standard_file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              default=None, help="Raman standard measured on the same detector: refines the lamp axis (pixel "
                                 "axis), or, without --lamp, corrects the instrument's Raman-shift axis.")
@click.option("--standard-name", default="acetonitrile", show_default=True,
              help="Which standard: acetonitrile, cyclohexane, polystyrene, toluene-acetonitrile, silicon.")
@click.option("--order", type=click.IntRange(1, 5), default=3, show_default=True, help="Polynomial order of λ(pixel).")
@click.option("--refine", "refine_model", type=click.Choice(["auto", "laser", "offset", "laser+offset"]),
              default="auto", show_default=True,
              help="What the standard refines: laser wavelength, detector wavelength offset, both, or "
                   "auto (chosen by leave-one-band-out error).")
@click.option("--guess-poly", default=None,
              help="Nominal polynomial c0,c1,... (nm of pixel) to start matching from; default: the file's "
                   "stored coefficients if any, else a search over dispersions.")
@click.option("--dispersion", default="0.01,1.0", show_default=True,
              help="Plausible nm per pixel, low,high, for the search without a nominal polynomial.")
@click.option("--tolerance-px", type=FiniteFloatRange(min=0.1), default=2.0, show_default=True,
              help="Line match tolerance; two lines within it of one peak refuse the fit.")
@click.option("--max-residual-px", type=FiniteFloatRange(min=0.01), default=1.0, show_default=True,
              help="Refuse the lamp fit when a line's residual exceeds this.")
@click.option("--max-band-rms", type=FiniteFloatRange(min=0.01), default=5.0, show_default=True,
              help="Refuse the refinement when the standard's bands fit worse than this RMS, cm-1.")
@click.option("--instrument", default="", help="Free text naming the instrument (stored in the JSON).")
@click.option("--json", "as_json", is_flag=True, help="Print the calibration's provenance as JSON instead of tables.")
def calibrate(lamp_file: Path | None, lamp_gas: str, laser_nm: float, out: Path, standard_file: Path | None,
              standard_name: str, order: int, refine_model: str, guess_poly: str | None, dispersion: str,
              tolerance_px: float, max_residual_px: float, max_band_rms: float, instrument: str, as_json: bool) -> None:
    """Fit pixel → wavelength to a lamp, refine from a standard, write CAL.json.

    Without --lamp, a standard exported on the instrument's own Raman-shift axis
    gives a shift-axis correction (the laser wavelength and/or a detector offset
    refined from the standard's bands), which `run`, `peaks` and `show` apply to
    that instrument's Raman-shift spectra.
    """
    import numpy as np

    if lamp_file is None and standard_file is None:
        raise ConfigError("give --lamp (pixel → wavelength), or --standard alone for a Raman-shift-axis instrument")
    check_output_file(out, "--out")  # before any fitting
    check_names(lamp_gas if lamp_file is not None else None, standard_name if standard_file is not None else None)
    if lamp_file is None:
        _shift_correction(standard_file, standard_name, laser_nm, refine_model, max_band_rms, instrument, out,
                          as_json)
        return

    from calibration.lamp import fit_lamp
    from calibration.refine import refine_calibration

    disp = _floats(dispersion, "--dispersion")
    if disp is None or len(disp) != 2:
        raise ConfigError(f"--dispersion: expected low,high nm per pixel, got {dispersion!r}")
    lamp = _pixel_intensities(read_one(lamp_file, "lamp spectrum"), "lamp spectrum")
    check_laser(lamp, laser_nm, "lamp spectrum")
    guess = _floats(guess_poly, "--guess-poly")
    if guess is None and lamp.meta.get("wavelength_poly"):
        guess = [float(c) for c in lamp.meta["wavelength_poly"]]
    fit = fit_lamp(lamp.intensities, lamp_gas, order=order, guess_poly=guess,
                   dispersion_nm_per_px=(disp[0], disp[1]), tolerance_px=tolerance_px, max_residual_px=max_residual_px)
    cal = fit.to_calibration(laser_nm, instrument=instrument or str(lamp.meta.get("instrument") or ""),
                             provenance={"lamp_file": str(lamp_file)})
    check_plausible(cal, str(lamp_file))
    lo, hi = fit.fitted_range_px
    edges = np.array([0.0, lo, hi, fit.pixels - 1.0])
    lines = [fit.format_table(),
             f"axis at {laser_nm:g} nm: {cal.raman_shift(np.array([0.0]))[0]:.1f}–"
             f"{cal.raman_shift(np.array([fit.pixels - 1.0]))[0]:.1f} cm-1; fit uncertainty (1σ) "
             + ", ".join(f"{s:.2f} cm-1 at px {p:.0f}" for p, s in zip(edges, fit.sigma_cm1(edges)))]
    refinement = None
    if standard_file is not None:
        std = _pixel_intensities(read_one(standard_file, "standard spectrum"), "standard spectrum")
        check_laser(std, laser_nm, "standard spectrum")
        refinement = refine_calibration(cal, std.intensities, standard_name, model=refine_model, max_rms_cm1=max_band_rms)
        cal = refinement.calibration
        cal = replace(cal, provenance=dict(cal.provenance, standard_file=str(standard_file)))
        lines.append(refinement.format_table())
        check_plausible(cal, str(lamp_file))
    save(cal, out)
    if as_json:
        click.echo(json.dumps({"id": cal.id, **cal.to_dict()}, indent=2))
    else:
        click.echo("\n\n".join(lines))
    click.echo(f"wrote {out} (calibration {cal.id}, laser {cal.laser_nm:.4f} nm, lamp RMS {fit.rms_cm1:.3f} cm-1"
               + ("" if refinement is None else f", {refinement.standard} RMS {refinement.chosen.rms_cm1:.2f} cm-1")
               + ")", err=True)


def _shift_correction(standard_file: Path, standard_name: str, laser_nm: float, refine_model: str,
                      max_band_rms: float, instrument: str, out: Path, as_json: bool) -> None:
    """``calibrate --standard`` without a lamp: a :class:`ShiftCorrection` of a Raman-shift-axis instrument."""
    from calibration.refine import refine_shift_axis

    std = read_one(standard_file, "standard spectrum")
    if std.unit != "raman_shift":
        raise CalibrationError(f"{std.where}: the standard is on a {std.unit} axis; without --lamp calibrate needs "
                               "a Raman-shift export (or give --lamp to fit the pixel axis)")
    check_laser(std, laser_nm, "standard spectrum")
    r = refine_shift_axis(std, laser_nm, standard_name, model=refine_model, max_rms_cm1=max_band_rms)
    corr = r.correction
    assert corr is not None  # refine_shift_axis always sets it
    corr = replace(corr, instrument=instrument or corr.instrument,
                   provenance=dict(corr.provenance, standard_file=str(standard_file)))
    save(corr, out)
    if as_json:
        click.echo(json.dumps({"id": corr.id, **corr.to_dict()}, indent=2))
    else:
        click.echo(r.format_table())
    click.echo(f"wrote {out} (shift correction {corr.id}, laser {corr.laser_nm:.4f} nm, offset "
               f"{corr.wavelength_offset_nm:+.4f} nm, {r.standard} RMS {r.chosen.rms_cm1:.2f} cm-1)", err=True)


COMMAND = calibrate
