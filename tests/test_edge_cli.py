"""`raman-edge run` and `raman-edge bench` end to end, through the real CLI."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edge.cli import main

from .conftest import ROOT, make_npz


def _rows(db: Path) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT seq, status, label, probability, margin, priority, truth, error FROM results ORDER BY id").fetchall()
    finally:
        con.close()


def test_run_sim_with_default_model_logs_count_rows(tmp_path: Path) -> None:
    db = tmp_path / "x.sqlite"
    r = CliRunner().invoke(main, ["run", "--count", "20", "--db", str(db), "--source", "sim://?rate=0&seed=7"])
    assert r.exit_code == 0, r.output
    rows = _rows(db)
    assert len(rows) == 20
    assert [row[0] for row in rows] == sorted(row[0] for row in rows)
    assert all(row[1] == "classified" and 0 <= row[4] <= row[3] <= 1 for row in rows)
    # one live line per spectrum: mineral, probability, margin, priority
    live = [ln for ln in r.output.splitlines() if "p=" in ln]
    assert len(live) == 20 and all("margin=" in ln and "prio" in ln for ln in live)


def test_run_replay_logs_truth_and_flags_bad_spectra(tmp_path: Path, test_bundle: Path) -> None:
    npz = make_npz(tmp_path / "d.npz", n_per_class=2)
    d = dict(np.load(npz))
    d["spectra"] = d["spectra"].copy()
    d["spectra"][3, 100] = np.nan  # one bad spectrum among good ones
    np.savez(npz, **d)
    db = tmp_path / "r.sqlite"
    r = CliRunner().invoke(main, ["run", "--source", f"replay://{npz}", "--model", str(test_bundle), "--db", str(db),
                                  "--interest", "Diamond", "--allow-unsigned"])
    assert r.exit_code == 0, r.output
    rows = _rows(db)
    assert len(rows) == len(d["labels"])  # nothing measured is lost, the bad one included
    bad = [row for row in rows if row[1] == "error"]
    assert len(bad) == 1 and "non-finite" in bad[0][7] and "d.npz[3]" in bad[0][7] and bad[0][5] == 3
    good = [row for row in rows if row[1] == "classified"]
    assert all(row[2] == row[6] for row in good)  # the template model gets synthetic spectra right
    assert all(row[5] >= 2 for row in good if row[2] == "Diamond")  # interest ranks higher


def test_bench_writes_json_with_public_keys(tmp_path: Path, test_bundle: Path) -> None:
    npz = make_npz(tmp_path / "d.npz", n_per_class=3)
    out = tmp_path / "bench.json"
    r = CliRunner().invoke(main, ["bench", "--model", str(test_bundle), "--data", str(npz), "--json", str(out),
                                  "--db", str(tmp_path / "b.sqlite")])
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    for key in ("n", "top1", "top3", "ece", "latency_ms", "per_class"):
        assert key in rep
    assert rep["n"] == 12 and rep["top1"] == 1.0 and rep["top3"] == 1.0
    assert {"p50", "p99"} <= set(rep["latency_ms"]) and rep["latency_ms"]["p50"] > 0
    assert set(rep["per_class"]) == {"Calcite", "Quartz", "Diamond", "Hematite"}
    assert 0.0 <= rep["ece"] <= 1.0
    assert "top-1" in r.output and "Calcite" in r.output
    assert len(_rows(tmp_path / "b.sqlite")) == 12
    assert rep["head_precision"] == "fp32"  # a 4-class head stays float32 under auto


def test_bench_head_precision_int8_is_used_and_reported(tmp_path: Path) -> None:
    """The shipped model's (Gemm) head, forced to 8-bit: reported, and the answers barely move."""
    npz = make_npz(tmp_path / "d.npz", n_per_class=3)
    reps = {}
    for precision in ("fp32", "int8"):
        out = tmp_path / f"{precision}.json"
        r = CliRunner().invoke(main, ["bench", "--data", str(npz), "--json", str(out), "--no-db",
                                      "--head-precision", precision])
        assert r.exit_code == 0, r.output
        reps[precision] = json.loads(out.read_text())
        assert reps[precision]["head_precision"] == precision and f"head weights {precision}" in r.output
    assert abs(reps["int8"]["top1"] - reps["fp32"]["top1"]) <= 1 / reps["fp32"]["n"]


@pytest.mark.parametrize(
    "args, pattern, code",
    [
        (["run", "--count", "1", "--source", "warp://x"], "unknown scheme 'warp'", 2),
        (["run", "--count", "1", "--model", "/nonexistent/bundle"], "/nonexistent/bundle", 2),
        (["run", "--count", "1", "--db", "/nonexistent/dir/x.sqlite", "--state-dir", "{tmp}/st"], "/nonexistent/dir", 3),
        (["run", "--count", "1", "--state-dir", "/nonexistent/dir/st"], "state directory /nonexistent/dir/st", 2),
        (["bench", "--data", "/nonexistent.npz"], "/nonexistent.npz", 2),
    ],
)
def test_cli_errors_are_one_clear_line(args: list[str], pattern: str, code: int, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r = CliRunner().invoke(main, args)  # click ≥ 8.2: output holds stdout and stderr
    assert r.exit_code == code
    text = r.output
    assert "raman-edge: error:" in text and pattern in text
    assert "Traceback" not in text


def test_run_refuses_unsigned_bundle_unless_allowed(tmp_path: Path, test_bundle: Path) -> None:
    r = CliRunner().invoke(main, ["run", "--count", "1", "--model", str(test_bundle), "--db", str(tmp_path / "u.sqlite")])
    assert r.exit_code == 2 and "unsigned" in r.output and str(test_bundle) in r.output  # configuration
    assert not (tmp_path / "u.sqlite").exists()  # refused before anything was opened


def test_run_config_file_and_errors(tmp_path: Path) -> None:
    cfg = tmp_path / "rover.toml"
    db = tmp_path / "cfg.sqlite"
    cfg.write_text(f'[source]\nurl = "sim://?rate=0&seed=4"\n[store]\ndb = "{db}"\nsynchronous = "NORMAL"\n'
                   '[priority]\ninterest = ["Hematite"]\n')
    r = CliRunner().invoke(main, ["run", "--config", str(cfg), "--count", "3", "--quiet"])
    assert r.exit_code == 0, r.output
    assert len(_rows(db)) == 3
    cfg.write_text('[store]\nsynchronous = "SOMETIMES"\n')
    r = CliRunner().invoke(main, ["run", "--config", str(cfg), "--count", "1"])
    assert r.exit_code == 2 and "synchronous" in r.output and "SOMETIMES" in r.output
    cfg.write_text('[stor]\ndb = "x"\n')
    r = CliRunner().invoke(main, ["run", "--config", str(cfg), "--count", "1"])
    assert r.exit_code == 2 and "unknown section [stor]" in r.output
    cfg.write_text('[store\n')
    r = CliRunner().invoke(main, ["run", "--config", str(cfg), "--count", "1"])
    assert r.exit_code == 2 and "invalid TOML" in r.output


def test_bench_on_npz_without_spectra(tmp_path: Path, test_bundle: Path) -> None:
    p = tmp_path / "bad.npz"
    np.savez(p, labels=np.array(["a"]))
    r = CliRunner().invoke(main, ["bench", "--model", str(test_bundle), "--data", str(p), "--no-db"])
    assert r.exit_code == 1 and "bad.npz" in r.output and "spectra" in r.output


def test_ctrl_c_stops_cleanly_and_keeps_rows(tmp_path: Path) -> None:
    db = tmp_path / "c.sqlite"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "edge", "run", "--db", str(db), "--source", "sim://?rate=20&seed=1"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen = 0
    deadline = time.monotonic() + 60
    while seen < 5 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        seen += "p=" in line
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    printed = seen + sum("p=" in ln for ln in out.splitlines())
    assert len(_rows(db)) == printed >= 5  # every printed result is committed
    assert "Traceback" not in err


def test_run_summary_accounts_for_every_spectrum(tmp_path: Path) -> None:
    """A one-place classify queue defers spectra; the summary says they were classified later, and the log agrees."""
    import re

    cfg = tmp_path / "tight.toml"
    db = tmp_path / "s.sqlite"
    cfg.write_text(f'[source]\nurl = "sim://?rate=0&seed=5"\n[store]\ndb = "{db}"\n[daemon]\nclassify_queue = 1\n')
    r = CliRunner().invoke(main, ["run", "--config", str(cfg), "--count", "40", "--quiet"])
    assert r.exit_code == 0, r.output
    summary = r.stderr.strip().splitlines()[-1]
    m = re.match(r"raman-edge: 40 spectra acquired: (\d+) classified, "
                 r"(\d+) could not be classified(?: \(reason logged\))?"
                 r"(?:; (\d+) of the 40 were logged raw first and classified once the classifier caught up)?"
                 rf"; log {re.escape(str(db))}$", summary)
    assert m, summary
    rows = _rows(db)
    assert len(rows) == 40 and int(m.group(1)) == sum(row[1] == "classified" for row in rows)
    assert int(m.group(2)) == sum(row[1] == "error" for row in rows)
    assert not any(row[1] == "deferred" for row in rows)  # a run that ends by --count completes its backlog
