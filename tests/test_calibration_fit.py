"""Calibrations that do not fit their data are refused; readers refuse binary and oversized files;
a folder replay plays every format and turns every unreadable spectrum into one priority-3 row."""
from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from calibration.axis import (AxisCalibration, CalibrationMismatchError, ShiftCorrection, fit_problem,
                              implausible_axis, load_calibration, to_shift_axis)
from calibration.errors import CalibrationError, ConfigError, ReaderError
from calibration.instruments import MAX_POINTS
from calibration.readers import read
from calibration.spectrum import Spectrum
from edge.bundle import load_bundle
from edge.cli import main
from edge.pipeline import Pipeline
from firmware_bridge.replay import ReplaySource
from firmware_bridge.source import Acquisition
from tests.conftest import make_npz, shared_data

PIXEL_POLY = (544.3, 0.0551, 1.4e-6, -4.0e-10)
BINARY = (b"\x00\x01\x1b[2J\x1b[31mPWNED\x07" + bytes(range(256)) + b"\xff\xfe\xc3\x28") * 8


def _rruff(path: Path, laser: float = 514, inf_at: int | None = None) -> Path:
    axis = np.arange(150.0, 1500.0, 2.0)
    y = 100 + 900 * np.exp(-0.5 * ((axis - 1086) / 4) ** 2)
    rows = [f"{x:.1f}, {v:.2f}" for x, v in zip(axis, y)]
    if inf_at is not None:
        rows[inf_at] = f"{axis[inf_at]:.1f}, inf"
    path.write_text("\n".join(["##NAMES=Calcite", f"##RAMAN WAVELENGTH={laser:g}", ""] + rows + ["##END="]) + "\n")
    return path


def _one_error_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("raman-edge: error: "), output
    assert "Traceback" not in output
    return lines[0]


def _rows(db: Path) -> list[sqlite3.Row]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return con.execute("SELECT * FROM results ORDER BY id").fetchall()
    finally:
        con.close()


# -- the fit of a calibration to its data ---------------------------------------------


def test_pixel_calibration_on_a_shift_axis_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "CAL.json"
    AxisCalibration(PIXEL_POLY, 532.0, 2048).save(path)
    cal = load_calibration(path)
    assert fit_problem(cal, "pixel", 532.0) is None
    why = fit_problem(cal, "raman_shift", None)
    assert why is not None and str(path) in why and "already on a Raman-shift axis" in why
    s = Spectrum(np.ones(64), np.arange(64.0) + 200, meta={"where": "x.txt"})
    with pytest.raises(CalibrationMismatchError, match=r"^x\.txt: calibration .*CAL\.json") as err:
        to_shift_axis(s, cal)
    assert isinstance(err.value, CalibrationError) and err.value.exit_code == 2


def test_shift_correction_at_785_refuses_514_rruff_spectra() -> None:
    src = shared_data("rruff-files")
    spectrum = read(sorted(src.glob("*RAW*.txt"))[0])
    assert spectrum.meta["laser_nm"] == 514.0
    corr = ShiftCorrection(785.0, 785.2, 0.0)
    with pytest.raises(CalibrationMismatchError, match=r"785 nm laser, but this spectrum was measured at 514 nm"):
        to_shift_axis(spectrum, corr)
    to_shift_axis(spectrum, ShiftCorrection(514.5, 514.6, 0.0))  # the same laser within the tolerance


def test_peaks_refuses_a_misfit_calibration_with_exit_2(tmp_path: Path) -> None:
    txt = _rruff(tmp_path / "calcite.txt", laser=514)
    corr = tmp_path / "corr785.json"
    ShiftCorrection(785.0, 785.1, 0.0).save(corr)
    pix = tmp_path / "pixel.json"
    AxisCalibration(PIXEL_POLY, 514.5, 2048).save(pix)
    for cal, words in ((corr, "785 nm laser"), (pix, "already on a Raman-shift axis")):
        r = CliRunner().invoke(main, ["peaks", str(txt), "--calibration", str(cal)])
        assert r.exit_code == 2, r.output + r.stderr
        line = _one_error_line(r.stderr)
        assert str(cal) in line and words in line and str(txt) in line


def test_calibration_file_problems_are_configuration_errors(tmp_path: Path) -> None:
    bad = tmp_path / "cal.json"
    bad.write_text("{}")
    with pytest.raises(ConfigError, match="cal.json"):
        load_calibration(bad)
    txt = _rruff(tmp_path / "c.txt")
    r = CliRunner().invoke(main, ["peaks", str(txt), "--calibration", str(bad)])
    assert r.exit_code == 2 and "cal.json" in _one_error_line(r.stderr)


def test_pipeline_refuses_at_start_up_what_the_source_declares(tmp_path: Path, test_bundle: Path) -> None:
    npz = make_npz(tmp_path / "d.npz", n_per_class=1)
    pix = AxisCalibration(PIXEL_POLY, 532.0, 2048)
    bundle = load_bundle(test_bundle)
    with pytest.raises(ConfigError, match=r"source replay://.*d\.npz: calibration .*already on a Raman-shift axis"):
        Pipeline(bundle, calibration=pix, source=ReplaySource(f"replay://{npz}"))
    single = _rruff(tmp_path / "one.txt", laser=514)
    with pytest.raises(ConfigError, match="785 nm laser, but this spectrum was measured at 514 nm"):
        Pipeline(bundle, calibration=ShiftCorrection(785.0, 785.0), source=ReplaySource(f"replay://{single}"))
    # A folder declares nothing: its spectra are checked one by one.
    Pipeline(bundle, calibration=pix, source=ReplaySource(f"replay://{tmp_path}"))


def test_pipeline_makes_a_misfit_spectrum_a_priority_3_result(test_bundle: Path) -> None:
    pipe = Pipeline(load_bundle(test_bundle), calibration=ShiftCorrection(785.0, 785.0))
    axis = np.arange(200.0, 1600.0)
    # The laser only in the acquisition's meta, as in a deferred row rebuilt from the log.
    acq = Acquisition(seq=0, spectrum=Spectrum(np.ones(axis.size), axis, meta={"where": "row 7"}), acquired_at=0.0,
                      source="replay://x", meta={"laser_nm": 532.0})
    res = pipe.process(acq)
    assert res.prediction is None and res.priority == 3 and res.calibration_id is None
    assert "row 7" in res.error and "785 nm laser" in res.error and "532 nm" in res.error


def test_run_logs_misfit_spectra_as_unreadable_rows(tmp_path: Path, test_bundle: Path) -> None:
    folder = tmp_path / "exports"
    folder.mkdir()
    _rruff(folder / "a.txt", laser=514)
    _rruff(folder / "b.txt", laser=785)
    corr = tmp_path / "corr.json"
    ShiftCorrection(785.0, 785.1, 0.0).save(corr)
    db = tmp_path / "r.sqlite"
    r = CliRunner().invoke(main, ["run", "--source", f"replay://{folder}", "--calibration", str(corr), "--model",
                                  str(test_bundle), "--allow-unsigned", "--db", str(db), "--quiet"])
    assert r.exit_code == 0, r.output
    a, b = _rows(db)
    assert a["priority"] == 3 and "a.txt" in a["error"] and "514 nm" in a["error"] and a["calibration_id"] is None
    assert b["status"] == "classified" and b["calibration_id"] == ShiftCorrection.load(corr).id


# -- calibrate ----------------------------------------------------------------------


def test_calibrate_refuses_an_implausible_axis_real_openraman(tmp_path: Path) -> None:
    lamp = shared_data("instruments", "OpenRAMAN") / "neon_n_n_n_solid_10000_0_5.csv"
    out = tmp_path / "cal.json"
    r = CliRunner().invoke(main, ["calibrate", "--lamp", str(lamp), "--lamp-gas", "neon",
                                                  "--laser-nm", "1064", "--out", str(out)])
    assert r.exit_code == 2, r.stderr
    line = _one_error_line(r.stderr)
    assert "1064" in line and "cm-1" in line and "-200 to 4500" in line and not out.exists()
    ok = CliRunner().invoke(main, ["calibrate", "--lamp", str(lamp), "--lamp-gas", "neon", "--laser-nm", "532",
                                   "--out", str(out)])
    assert ok.exit_code == 0, ok.output
    assert implausible_axis(AxisCalibration.load(out)) is None


def test_calibrate_out_in_a_missing_folder_is_one_line_exit_2(tmp_path: Path) -> None:
    lamp = shared_data("instruments", "OpenRAMAN") / "neon_n_n_n_solid_10000_0_5.csv"
    out = tmp_path / "nonexistent" / "x.json"
    r = CliRunner().invoke(main, ["calibrate", "--lamp", str(lamp), "--laser-nm", "532",
                                                  "--out", str(out)])
    assert r.exit_code == 2 and str(out) in _one_error_line(r.stderr)


def test_calibrate_refuses_a_laser_the_standard_contradicts(tmp_path: Path) -> None:
    std = shared_data("instruments", "Wasatch_WP785X") / "acetonitrile.csv"
    r = CliRunner().invoke(main, ["calibrate", "--standard", str(std), "--laser-nm", "532",
                                                  "--out", str(tmp_path / "c.json")])
    assert r.exit_code == 2 and "785.041 nm laser" in _one_error_line(r.stderr)


# -- readers: binary and oversized files ----------------------------------------------------


@pytest.mark.parametrize("name", ["binary.txt", "binary.csv", "binary.dat"])
def test_peaks_on_a_binary_file_never_echoes_it(tmp_path: Path, name: str) -> None:
    p = tmp_path / name
    p.write_bytes(BINARY)
    r = CliRunner().invoke(main, ["peaks", str(p)])
    assert r.exit_code == 1
    line = _one_error_line(r.stderr)
    assert name in line and "binary" in line
    assert "PWNED" not in line and all(ch.isprintable() for ch in line)


def test_quoted_lines_are_escaped_and_short(tmp_path: Path) -> None:
    p = tmp_path / "ctrl.txt"
    rows = [f"{i}, 1\n" for i in range(200, 230)]
    rows[5] = "205, \x1b[2J" + "y" * 200 + "\n"
    p.write_text("##NAMES=x\n" + "".join(rows) + "##END=\n")
    with pytest.raises(ReaderError) as err:
        read(p)
    msg = str(err.value)
    assert "\x1b" not in msg and "\\x1b" in msg and "y" * 61 not in msg


def test_an_oversized_file_is_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "huge.txt"
    big.write_bytes(b"##NAMES=Big\n" + b"100.00, 1\n" * (1024 * 1024))  # 10 MiB of well-formed lines
    with pytest.raises(ReaderError, match=r"huge\.txt: file is 10\.0 MiB, above the 8 MiB"):
        read(big)
    sparse = tmp_path / "map.txt"
    with open(sparse, "wb") as f:
        f.write(b"#X\t#Y\t#Wave\t#Intensity\n")
        f.truncate(100 * 1024 * 1024)  # a "map" of 100 MiB on paper: refused before a byte of data is read
    with pytest.raises(ReaderError, match=r"map\.txt: file is 100\.0 MiB, above the 32 MiB"):
        read(sparse)


def test_too_many_points_are_refused(tmp_path: Path) -> None:
    n = MAX_POINTS + 10
    p = tmp_path / "long.txt"
    p.write_text("##NAMES=Long\n" + "".join(f"{100 + i * 0.01:.2f}, 1\n" for i in range(n)) + "##END=\n")
    with pytest.raises(ReaderError, match=f"long.txt, line .*{n} points; at most {MAX_POINTS}"):
        read(p)
    wide = tmp_path / "wide.npz"
    np.savez(wide, spectra=np.zeros((1, n), np.float32), labels=np.array(["A"]), wavenumbers=np.arange(n, dtype=float))
    with pytest.raises(ReaderError, match=f"{n} points"):
        read(wide)


# -- folder replay of every format -------------------------------------------------------------


def _real_exports(folder: Path) -> list[str]:
    inst = shared_data("instruments")
    picks = {"a-horiba.txt": "Horiba_MacroRAM/acetonitrile.txt",
             "b-wasatch.csv": "Wasatch_WP785X/acetonitrile.csv",
             "c-renishaw-map.txt": "Renishaw_Qontor/CC-124_TAP_plate_5x_3_points.txt",
             "d-openraman-pixels.csv": "OpenRAMAN/acetonitrile_n_n_n_solid_10000_0_5.csv"}
    folder.mkdir()
    for name, rel in picks.items():
        shutil.copy(inst / rel, folder / name)
    (folder / "e-cut.csv").write_bytes((inst / picks["b-wasatch.csv"]).read_bytes()[:20000])
    (folder / "f-binary.txt").write_bytes(BINARY)
    _rruff(folder / "g-inf.txt", inf_at=30)
    (folder / "README.md").write_text("exports of 2024-12-10")
    (folder / "settings.json").write_text("{}")
    return sorted(picks)


def test_folder_replay_reads_every_format_in_name_order(tmp_path: Path) -> None:
    folder = tmp_path / "exports"
    _real_exports(folder)
    with ReplaySource(f"replay://{folder}") as src:
        acqs = list(src)
    files = [a.meta["file"] for a in acqs]
    assert files == ["a-horiba.txt", "b-wasatch.csv"] + ["c-renishaw-map.txt"] * 3 + [
        "d-openraman-pixels.csv", "e-cut.csv", "f-binary.txt", "g-inf.txt"]
    bad = {a.meta["file"]: a.meta["unreadable"] for a in acqs if "unreadable" in a.meta}
    assert set(bad) == {"e-cut.csv", "f-binary.txt", "g-inf.txt"}
    assert "truncated" in bad["e-cut.csv"] and "binary" in bad["f-binary.txt"] and "inf" in bad["g-inf.txt"]
    assert acqs[1].meta["laser_nm"] == pytest.approx(785.041)


def test_run_on_a_mixed_folder_logs_one_priority_3_row_per_unreadable_spectrum(tmp_path: Path,
                                                                               test_bundle: Path) -> None:
    folder = tmp_path / "exports"
    _real_exports(folder)
    npz = make_npz(folder / "h-set.npz", n_per_class=1)
    d = dict(np.load(npz))
    d["spectra"] = d["spectra"].copy()
    d["spectra"][1, 50] = np.nan
    np.savez(npz, **d)
    db = tmp_path / "r.sqlite"
    r = CliRunner().invoke(main, ["run", "--source", f"replay://{folder}", "--model", str(test_bundle),
                                  "--allow-unsigned", "--db", str(db), "--quiet"])
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    rows = _rows(db)
    assert len(rows) == 9 + len(d["labels"])  # every spectrum, readable or not, has its row
    bad = [row for row in rows if row["priority"] == 3]
    # truncated, binary, inf, the NaN row, and the pixel-axis file without a calibration
    assert len(bad) == 5 and all(row["status"] == "error" and row["error"] for row in bad)
    assert any("no axis calibration" in row["error"] and "d-openraman-pixels.csv" in row["error"] for row in bad)
    assert any("h-set.npz[1]" in row["error"] for row in bad)
