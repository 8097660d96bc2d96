"""`raman-edge show`: refused output paths, labels that tell files apart, spectra drawn despiked."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edge.cli import main
from edge.commands.show import _curves, distinguishing_labels

from .conftest import shared_data

pytest.importorskip("matplotlib")

SPIKE_AT = 500  # index of the cosmic ray in the synthetic spectra


def _rruff_txt(path: Path, spike: bool = True) -> Path:
    """A RRUFF-style text spectrum: one band at 1000 cm-1 and, optionally, a one-point cosmic ray 5x its height."""
    x = np.arange(200.0, 1600.0, 1.0)
    y = 1000.0 / (1.0 + ((x - 1000.0) / 5.0) ** 2) + 100.0 + np.random.default_rng(0).normal(0.0, 2.0, x.size)
    if spike:
        y[SPIKE_AT] += 5000.0
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = "\n".join(f"{a:.2f}, {b:.4f}" for a, b in zip(x, y))
    path.write_text(f"##NAMES=Test\n##RAMAN WAVELENGTH=532\n{rows}\n##END=\n")
    return path


def _run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge", "show", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("raman-edge: error: ")
    return lines[0]


def test_unknown_extension_is_refused_before_reading(tmp_path: Path) -> None:
    binary = tmp_path / "garbage.txt"
    binary.write_bytes(bytes(range(256)) * 8)  # would be a reader error if it were read first
    proc = _run(binary, "--out", "x.xyz", cwd=tmp_path)
    assert proc.returncode == 2
    line = _one_error_line(proc)
    assert "--out x.xyz" in line and ".xyz" in line and ".png" in line and ".svg" in line and ".pgf" not in line
    assert not (tmp_path / "x.xyz").exists()


def test_missing_directory_is_refused(tmp_path: Path) -> None:
    spectrum = _rruff_txt(tmp_path / "s.txt")
    proc = _run(spectrum, "--out", "/nonexistent/d/p.png", cwd=tmp_path)
    assert proc.returncode == 2
    line = _one_error_line(proc)
    assert "/nonexistent/d/p.png" in line and "does not exist" in line


@pytest.mark.parametrize("out,words,extra", [("plot", "no file extension", []), ("plot.PNGX", ".pngx", []),
                                             ("p.png", "--offset", ["--offset", "nan"]),
                                             ("p.png", "--range", ["--range", "5"]),
                                             ("p.png", "--baseline 'bogus'", ["--baseline", "bogus"])])
def test_other_bad_options(tmp_path: Path, out: str, words: str, extra: list[str]) -> None:
    if "--baseline" in extra:
        pytest.importorskip("pybaselines")
    spectrum = _rruff_txt(tmp_path / "s.txt")
    r = CliRunner().invoke(main, ["show", str(spectrum), "--out", str(tmp_path / out), *extra])
    assert r.exit_code == 2 and words in r.output and "Traceback" not in r.output
    assert not (tmp_path / out).exists()


def test_unwritable_directory_is_refused(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if _can_write(locked):
            pytest.skip("running as a user who can write anywhere (root)")
        r = CliRunner().invoke(main, ["show", str(_rruff_txt(tmp_path / "s.txt")), "--out", str(locked / "p.png")])
        assert r.exit_code == 2 and "not writable" in r.output and str(locked) in r.output
    finally:
        locked.chmod(0o700)


def _can_write(d: Path) -> bool:
    try:
        (d / "probe").write_text("x")
    except OSError:
        return False
    (d / "probe").unlink()
    return True


def test_labels_use_the_shortest_distinguishing_suffix(tmp_path: Path) -> None:
    a, b = tmp_path / "horiba" / "acetonitrile.csv", tmp_path / "wasatch" / "acetonitrile.csv"
    c = tmp_path / "deep" / "x" / "horiba" / "acetonitrile.csv"
    assert distinguishing_labels([a, b]) == ["horiba/acetonitrile.csv", "wasatch/acetonitrile.csv"]
    assert distinguishing_labels([a, tmp_path / "quartz.txt"]) == ["acetonitrile.csv", "quartz.txt"]
    labels = distinguishing_labels([a, b, c])
    assert len(set(labels)) == 3 and labels[1] == "wasatch/acetonitrile.csv"
    assert labels[2] == "x/horiba/acetonitrile.csv"
    assert distinguishing_labels([a, a]) == ["acetonitrile.csv", "acetonitrile.csv"]  # one file, one name


def test_same_name_files_get_different_legend_entries(tmp_path: Path) -> None:
    a = _rruff_txt(tmp_path / "horiba" / "acetonitrile.txt")
    b = _rruff_txt(tmp_path / "wasatch" / "acetonitrile.txt")
    out = tmp_path / "both.svg"
    proc = _run(a, b, "--out", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    svg = out.read_text()
    # matplotlib's SVG writer keeps each drawn string as a comment beside its glyphs.
    assert "horiba/acetonitrile.txt" in svg and "wasatch/acetonitrile.txt" in svg


def test_real_wasatch_files_of_the_same_name(tmp_path: Path) -> None:
    a = shared_data("instruments", "Wasatch_WP532X", "acetonitrile.csv")
    b = shared_data("instruments", "Wasatch_WP785X", "acetonitrile.csv")
    out = tmp_path / "w.svg"
    proc = _run(a, b, "--out", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    svg = out.read_text()
    assert "Wasatch_WP532X/acetonitrile.csv" in svg and "Wasatch_WP785X/acetonitrile.csv" in svg


def test_spectra_are_drawn_despiked_unless_raw(tmp_path: Path) -> None:
    f = _rruff_txt(tmp_path / "spiky.txt")
    (x, y, _), = _curves((f,), None, raw=False, baseline_method=None, normalize=True)[0]
    (xr, yr, _), = _curves((f,), None, raw=True, baseline_method=None, normalize=True)[0]
    band = int(np.argmin(np.abs(x - 1000.0)))
    assert int(np.argmax(yr)) == SPIKE_AT  # raw: the cosmic ray is the tallest thing drawn
    assert int(np.argmax(y)) == band and y[SPIKE_AT] < 0.2  # despiked: the band is, as the model sees it
    clean = _rruff_txt(tmp_path / "clean.txt", spike=False)
    assert _curves((clean,), None, raw=False, baseline_method=None, normalize=False)[1] == 0  # no band touched


def test_the_command_reports_what_despiking_removed(tmp_path: Path) -> None:
    f = _rruff_txt(tmp_path / "spiky.txt")
    proc = _run(f, "--out", tmp_path / "d.png", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    removed = re.search(r"(\d+) spike points? removed", proc.stderr)
    assert removed and int(removed.group(1)) >= 1 and "--raw" in proc.stderr
    raw = _run(f, "--out", tmp_path / "r.png", "--raw", cwd=tmp_path)
    assert raw.returncode == 0 and "spike" not in raw.stderr
    assert (tmp_path / "d.png").read_bytes() != (tmp_path / "r.png").read_bytes()


def test_help_says_what_is_drawn() -> None:
    r = CliRunner().invoke(main, ["show", "--help"])
    assert r.exit_code == 0 and "--raw" in r.output and "despike" in r.output


def test_the_despike_drawn_is_the_shipped_models() -> None:
    import json

    from calibration.preprocess import DEFAULT_SPEC
    from edge.bundle import default_model_path

    shipped = json.loads((default_model_path() / "manifest.json").read_text())["preprocessing"]
    despike = [s for s in shipped["steps"] if s["op"] == "despike"]
    assert despike and despike == [s for s in DEFAULT_SPEC["steps"] if s["op"] == "despike"]
