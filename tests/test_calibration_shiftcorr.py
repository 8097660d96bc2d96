"""Shift-axis corrections: instruments that export a Raman-shift axis, corrected from a standard.

`raman-edge calibrate --standard FILE --laser-nm L` (no lamp) writes a correction that
`peaks`, `show` and the daemon apply to that instrument's Raman-shift spectra, and
whose id is logged with every result.
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from calibration.axis import (AxisCalibration, CalibrationMismatchError, ShiftCorrection, applied_id, load_calibration,
                              shift_to_wavelength, to_shift_axis, wavelength_to_shift)
from calibration.errors import CalibrationError, SpectrumError
from calibration.spectrum import Spectrum
from calibration.standards import raman_standard
from edge.cli import main
from tests.conftest import lorentz, shared_data

TRUE_LASER, NOMINAL, OFFSET = 532.0, 532.0, 0.30  # the detector reads 0.30 nm long


def _acetonitrile_export(path: Path) -> Path:
    """A Raman-shift export (two columns) of acetonitrile read by a detector whose wavelengths are off by OFFSET."""
    true_axis = np.linspace(200.0, 3200.0, 1500)
    bands = raman_standard("acetonitrile").bands
    y = 100.0 + 1000.0 * lorentz(true_axis, [(b, a, 12.0) for b, a in zip(bands, (0.3, 0.1, 0.6, 1.0))])
    y += np.random.default_rng(3).normal(0, 1.0, y.size)
    # the instrument's software reports the shift of the wavelength it *believes* each pixel has
    reported = wavelength_to_shift(shift_to_wavelength(true_axis, TRUE_LASER) + OFFSET, NOMINAL)
    path.write_text("Raman shift (cm-1),Intensity\n" + "\n".join(f"{x:.4f},{v:.3f}" for x, v in zip(reported, y)) + "\n")
    return path


def test_correction_inverts_a_wavelength_offset_and_round_trips(tmp_path):
    c = ShiftCorrection(NOMINAL, TRUE_LASER, -OFFSET, provenance={"model": "offset"}, instrument="x")
    true = np.array([918.0, 2942.0])
    reported = wavelength_to_shift(shift_to_wavelength(true, TRUE_LASER) + OFFSET, NOMINAL)
    assert np.abs(reported - true).max() > 5  # the error being corrected is real
    np.testing.assert_allclose(c.correct(reported), true, atol=1e-6)
    c.save(tmp_path / "c.json")
    back = load_calibration(tmp_path / "c.json")
    assert isinstance(back, ShiftCorrection) and back == c and back.id == c.id and back.id.startswith("shc-")
    with pytest.raises(CalibrationError, match="shift-axis correction"):
        AxisCalibration.load(tmp_path / "c.json")  # older code paths refuse it by name, never misread it
    d = json.loads((tmp_path / "c.json").read_text())
    for bad, msg in (({**d, "laser_nm": "x"}, "could not convert"), ({**d, "version": 2}, "not a version-3"),
                     ({**d, "wavelength_offset_nm": 80.0}, "implausible")):
        (tmp_path / "b.json").write_text(json.dumps(bad))
        with pytest.raises(CalibrationError, match=msg):
            load_calibration(tmp_path / "b.json")


def test_to_shift_axis_chains_pixel_calibration_then_correction():
    pix = AxisCalibration((544.3, 0.0551, 1.4e-6), 532.0, 512)
    corr = ShiftCorrection(532.0, 532.1, 0.0)
    s = Spectrum(np.ones(512), np.arange(512.0), unit="pixel", meta={"where": "t"})
    out, applied = to_shift_axis(s, corr, instrument=pix)
    assert applied == [pix, corr] and applied_id(applied) == f"{pix.id}+{corr.id}"
    np.testing.assert_allclose(out.axis, corr.correct(pix.raman_shift()), rtol=1e-9)
    with pytest.raises(CalibrationError, match="no axis calibration"):
        to_shift_axis(s, corr)  # a pixel axis and nothing to put it on a shift axis
    with pytest.raises(SpectrumError, match="needs a Raman-shift axis"):
        corr.apply(s)
    r = Spectrum(np.ones(20), np.arange(20.0) + 500, unit="raman_shift", meta={"where": "r.txt"})
    with pytest.raises(CalibrationMismatchError, match=r"r\.txt: .*already on a Raman-shift axis"):
        to_shift_axis(r, pix)  # a pixel calibration must not be silently skipped on a shift axis


def test_calibrate_without_lamp_then_peaks_and_daemon(tmp_path):
    std = _acetonitrile_export(tmp_path / "acetonitrile.csv")
    before = json.loads(CliRunner().invoke(main, ["peaks", str(std), "--json"]).output)["peaks_cm1"]
    bands = raman_standard("acetonitrile").bands
    err_before = max(np.abs(np.array(before) - b).min() for b in bands)
    assert err_before > 5.0
    out = tmp_path / "corr.json"
    r = CliRunner().invoke(main, ["calibrate", "--standard", str(std), "--laser-nm", str(NOMINAL), "--refine", "offset",
                                  "--out", str(out)])
    assert r.exit_code == 0, r.output
    corr = load_calibration(out)
    assert isinstance(corr, ShiftCorrection) and abs(corr.wavelength_offset_nm + OFFSET) < 0.02
    assert corr.id in r.output and "left out" in r.output
    p = CliRunner().invoke(main, ["peaks", str(std), "--calibration", str(out), "--json"])
    doc = json.loads(p.output)
    assert doc["calibration_id"] == corr.id
    assert max(np.abs(np.array(doc["peaks_cm1"]) - b).min() for b in bands) < 1.0
    # the daemon applies it to every Raman-shift spectrum and logs its id and its JSON
    db = tmp_path / "r.sqlite"
    run = CliRunner().invoke(main, ["run", "--source", f"replay://{std}", "--calibration", str(out), "--count", "1",
                                    "--db", str(db)])
    assert run.exit_code == 0, run.output
    con = sqlite3.connect(db)
    (cal_id,) = con.execute("SELECT calibration_id FROM results").fetchone()
    (doc_json,) = con.execute("SELECT doc FROM calibrations WHERE calibration_id=?", (corr.id,)).fetchone()
    assert cal_id == corr.id and ShiftCorrection.from_dict(json.loads(doc_json)) == corr


def test_calibrate_needs_lamp_or_standard(tmp_path):
    r = CliRunner().invoke(main, ["calibrate", "--laser-nm", "532", "--out", str(tmp_path / "c.json")])
    assert r.exit_code == 2 and "--standard alone" in r.output
    pix = tmp_path / "pix.csv"
    pix.write_text("Pixels #,Intensity (a.u.)\n" + "\n".join(f"{i},{1.0 + (i % 7)}" for i in range(256)) + "\n")
    r = CliRunner().invoke(main, ["calibrate", "--standard", str(pix), "--laser-nm", "532", "--out", str(tmp_path / "c.json")])
    assert r.exit_code == 1 and "pixel axis" in r.output and not (tmp_path / "c.json").exists()


@pytest.mark.parametrize("folder,laser", [("Wasatch_WP532X", 532.0), ("Renishaw_Qontor", 785.0)])
def test_real_instrument_within_2_cm1_after_correction(tmp_path, folder, laser):
    d = shared_data("instruments", folder)
    std = next(p for p in sorted(d.iterdir()) if p.name.startswith("acetonitrile"))
    out = tmp_path / "corr.json"
    r = CliRunner().invoke(main, ["calibrate", "--standard", str(std), "--laser-nm", str(laser), "--out", str(out)])
    assert r.exit_code == 0, r.output
    bands = raman_standard("acetonitrile").bands
    raw = np.array(json.loads(CliRunner().invoke(main, ["peaks", str(std), "--json"]).output)["peaks_cm1"])
    got = np.array(json.loads(CliRunner().invoke(main, ["peaks", str(std), "--calibration", str(out),
                                                        "--json"]).output)["peaks_cm1"])
    before = [np.abs(raw - b).min() for b in bands]
    after = [np.abs(got - b).min() for b in bands]
    assert max(after) <= 2.0 and max(after) < max(before), (before, after)
