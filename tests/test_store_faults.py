"""The results database under faults: corrupt pages, a full disk, two daemons, bench rows, absurd numbers.

Every case runs the real parts (SQLite files, `python -m edge` processes, OS limits)
and asserts the command-line contract: the documented exit status, one
``raman-edge: error:`` line naming the file and what is wrong, no traceback, and no
acknowledged row lost.
"""
from __future__ import annotations

import os
import random
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from calibration.errors import StorageError
from edge.bundle import load_bundle
from edge.cli import main
from edge.daemon import Daemon, seq_summary
from edge.downlink import read_downlink
from edge.pipeline import Pipeline
from edge.store import NOT_FOR_DOWNLINK, ResultLog

from .conftest import ROOT, make_npz
from .test_daemon_stages import ListSource


def _edge(*args: str, cwd: Path, timeout: float = 120, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, PYTHONUNBUFFERED="1"), **kw)


def _one_error_line(r: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The stderr of a refused command: exactly one error line, with every needle, no traceback."""
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("raman-edge: error:")]
    assert len(errors) == 1, r.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def _seqs(db: Path) -> list[int]:
    con = sqlite3.connect(db)
    try:
        return [r[0] for r in con.execute("SELECT seq FROM results ORDER BY id")]
    finally:
        con.close()


@pytest.fixture(scope="module")
def good_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results log of 20 simulated spectra written by a real daemon."""
    tmp = tmp_path_factory.mktemp("good")
    r = _edge("run", "--count", "20", "--db", "good.sqlite", "--source", "sim://?rate=0&seed=3", "--quiet", cwd=tmp)
    assert r.returncode == 0, r.stderr
    assert len(_seqs(tmp / "good.sqlite")) == 20
    return tmp / "good.sqlite"


def _corrupt_copy(good: Path, out: Path) -> Path:
    shutil.copyfile(good, out)
    with open(out, "r+b") as f:  # 8 KiB of noise over pages 4 and 5
        f.seek(12288)
        f.write(random.Random(12288).randbytes(8192))
    return out


# -- corrupt pages -------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["run", "downlink", "downlink passes", "bench"])
def test_corrupt_database_is_refused_in_one_line(good_log: Path, tmp_path: Path, command: str) -> None:
    bad = _corrupt_copy(good_log, tmp_path / "bad.sqlite")
    before = bad.read_bytes()
    args = {
        "run": ["run", "--count", "2", "--db", "bad.sqlite", "--source", "sim://?rate=0"],
        "downlink": ["downlink", "--db", "bad.sqlite", "--budget-bytes", "10000", "--out", "p.redl"],
        "downlink passes": ["downlink", "passes", "--db", "bad.sqlite"],
        "bench": ["bench", "--data", str(make_npz(tmp_path / "d.npz", n_per_class=1)), "--db", "bad.sqlite"],
    }[command]
    r = _edge(*args, cwd=tmp_path)
    assert r.returncode == 3, r.stderr
    _one_error_line(r, "bad.sqlite", "corrupt", ".recover")
    assert bad.read_bytes() == before  # refused before anything was written to it
    assert not (tmp_path / "p.redl").exists()


def test_corruption_found_by_the_writer_stops_the_daemon_and_names_what_was_not_logged(
        good_log: Path, tmp_path: Path, test_bundle: Path) -> None:
    """Pages that go bad after the check at open (here: opened unchecked): the writer's failure ends the run."""
    db = _corrupt_copy(good_log, tmp_path / "late.sqlite")  # pages 4-5: the axes table and its index
    store = ResultLog(db, check=False)
    acked: list[int] = []
    d = Daemon(ListSource(200), Pipeline(load_bundle(test_bundle)), store,
               on_result=lambda res, row: acked.append(res.acquisition.seq))
    with pytest.raises(StorageError) as info:
        d.run(install_signal_handlers=False)
    store.close()
    msg = str(info.value)
    assert "late.sqlite is corrupt" in msg and "not logged and not acknowledged (seq " in msg
    assert d.counters.unlogged > 0 and not acked and d.counters.committed == 0
    assert d.counters.acquired == d.counters.unlogged  # every spectrum in hand is accounted for


# -- full disk ------------------------------------------------------------------------------
def test_full_database_says_disk_full_and_keeps_every_acknowledged_row(tmp_path: Path, test_bundle: Path) -> None:
    db = tmp_path / "full.sqlite"
    store = ResultLog(db)
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count={pages + 200}")  # SQLITE_FULL, as a full partition gives
    acked: list[int] = []
    d = Daemon(ListSource(3000), Pipeline(load_bundle(test_bundle)), store,
               on_result=lambda res, row: acked.append(res.acquisition.seq))
    with pytest.raises(StorageError) as info:
        d.run(install_signal_handlers=False)
    store.close()
    msg = str(info.value)
    assert msg.startswith(f"disk full: {db} ") and "rollback" not in msg
    stored = set(_seqs(db))  # classified rows and raw (deferred) rows alike
    assert stored and set(acked) <= stored
    assert d.counters.acquired == len(stored) + d.counters.unlogged and d.counters.unlogged > 0
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def _limit_file_size(limit: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_write_error_is_not_masked_by_the_rollback(tmp_path: Path) -> None:
    """SQLite rolls back by itself on some write errors; its "cannot rollback" must not hide the cause."""
    code = (
        "import numpy as np, sys\n"
        "from calibration.errors import StorageError\n"
        "from edge.store import ResultLog\n"
        "log = ResultLog(sys.argv[1])\n"
        "rng = np.random.default_rng(0)\n"
        "try:\n"
        "    for i in range(10000):\n"
        "        log.append(acquired_at=1.7e9 + i, source='t', seq=i, axis_unit='pixel', axis=np.arange(1024.0),\n"
        "                   spectrum=rng.normal(size=1024))\n"
        "except StorageError as e:\n"
        "    print(e)\n"
    )
    db = tmp_path / "lim.sqlite"
    r = subprocess.run([sys.executable, "-c", code, str(db)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       preexec_fn=lambda: _limit_file_size(300_000))
    assert r.returncode == 0, r.stderr
    assert "cannot rollback" not in r.stdout and str(db) in r.stdout and "I/O error" in r.stdout, r.stdout


def test_daemon_on_a_filling_disk_exits_3_and_loses_no_printed_row(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "edge", "run", "--db", "f.sqlite", "--source", "sim://?rate=0&seed=2"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=180,
                       env=dict(os.environ, PYTHONUNBUFFERED="1"), preexec_fn=lambda: _limit_file_size(600_000))
    assert r.returncode == 3, r.stderr
    _one_error_line(r, "f.sqlite", "not logged and not acknowledged")
    acked = {int(ln.split()[0]) for ln in r.stdout.splitlines() if "p=" in ln}
    assert acked and acked <= set(_seqs(tmp_path / "f.sqlite"))


# -- read-only ---------------------------------------------------------------------------------
@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through file permissions")
def test_read_only_database_exits_3(good_log: Path, tmp_path: Path) -> None:
    db = tmp_path / "ro.sqlite"
    shutil.copyfile(good_log, db)
    db.chmod(0o444)
    r = _edge("run", "--count", "1", "--db", "ro.sqlite", "--source", "sim://?rate=0", cwd=tmp_path)
    assert r.returncode == 3, r.stderr
    _one_error_line(r, "ro.sqlite")
    assert len(_seqs(db)) == 20


# -- one daemon per database --------------------------------------------------------------------
def _start_daemon(tmp: Path, state: str) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen([sys.executable, "-m", "edge", "run", "--db", "shared.sqlite", "--state-dir", state,
                             "--source", "sim://?rate=20&seed=1"], cwd=tmp, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 60
    while not lines and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lines, "the first daemon never logged a row"
    return proc, lines


def test_second_daemon_on_the_same_database_is_refused(tmp_path: Path) -> None:
    first, _ = _start_daemon(tmp_path, "a.d")
    try:
        r = _edge("run", "--count", "1", "--db", "shared.sqlite", "--state-dir", "b.d", "--source", "sim://?rate=0",
                  cwd=tmp_path)
        assert r.returncode == 3, r.stderr
        _one_error_line(r, "shared.sqlite", f"pid {first.pid}")
        # Readers and the downlink keep working beside the running daemon.
        r = _edge("downlink", "--db", "shared.sqlite", "--budget-bytes", "4000", "--out", "p.redl", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert read_downlink(tmp_path / "p.redl").records
        r = _edge("downlink", "passes", "--db", "shared.sqlite", cwd=tmp_path)
        assert r.returncode == 0 and "sent" in r.stdout, r.stderr
    finally:
        first.send_signal(signal.SIGKILL)  # a crash: the kernel releases the lock with the process
        first.wait(30)
    n = len(_seqs(tmp_path / "shared.sqlite"))
    r = _edge("run", "--count", "1", "--db", "shared.sqlite", "--state-dir", "b.d", "--source", "sim://?rate=0",
              "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(_seqs(tmp_path / "shared.sqlite")) == n + 1


def test_writer_lock_is_per_database_and_released_on_close(tmp_path: Path) -> None:
    a = ResultLog(tmp_path / "x.sqlite")
    a.lock_writer()
    b = ResultLog(tmp_path / "x.sqlite")
    with pytest.raises(StorageError, match=rf"x.sqlite is in use by another raman-edge daemon \(pid {os.getpid()}"):
        b.lock_writer()
    with ResultLog(tmp_path / "y.sqlite") as other:
        other.lock_writer()  # another database: no conflict
    a.close()
    b.lock_writer()
    b.close()


# -- bench rows are never downlinked ------------------------------------------------------------
def test_bench_rows_are_never_downlinked(tmp_path: Path, test_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "field.sqlite"
    r = _edge("run", "--count", "5", "--db", str(db), "--model", str(test_bundle), "--allow-unsigned",
              "--source", "sim://?rate=0&minerals=Calcite,Quartz", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    con = sqlite3.connect(db)
    field = {i for (i,) in con.execute("SELECT id FROM results")}
    con.close()
    npz = make_npz(tmp_path / "d.npz", n_per_class=2)
    runner = CliRunner()
    r2 = runner.invoke(main, ["bench", "--model", str(test_bundle), "--data", str(npz)])
    assert r2.exit_code == 0, r2.output
    assert not (tmp_path / "raman-edge.sqlite").exists()  # no default log: nothing joins the field log
    r2 = runner.invoke(main, ["bench", "--model", str(test_bundle), "--data", str(npz), "--db", str(db)])
    assert r2.exit_code == 0, r2.output
    con = sqlite3.connect(db)
    bench_rows = {i for (i,) in con.execute("SELECT id FROM results WHERE downlinked = ?", (NOT_FOR_DOWNLINK,))}
    con.close()
    assert len(bench_rows) == 8 and not bench_rows & field
    r3 = runner.invoke(main, ["downlink", "--db", str(db), "--budget-bytes", "1000000", "--out", "p.redl"])
    assert r3.exit_code == 0, r3.output
    assert {rec.id for rec in read_downlink(tmp_path / "p.redl").records} == field
    r4 = runner.invoke(main, ["downlink", "--db", str(db), "--budget-bytes", "1000000", "--out", "p2.redl"])
    assert r4.exit_code == 0 and "nothing to downlink" in r4.output


# -- absurd numbers -------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [
    ["--budget-bytes", "99999999999999999999"], ["--budget-bytes", "-1"], ["--budget-bytes", "0"],
    ["--budget-bytes", str(2 ** 63)], ["--budget-bytes", "1e9"], ["--budget-bytes", "10000", "--fine-error", "nan"],
    ["--budget-bytes", "10000", "--coarse-error", "nan"], ["--budget-bytes", "10000", "--coarse-error", "inf"],
    ["--budget-bytes", "10000", "--fine-error", "-0.1"], ["--budget-bytes", "10000", "--fine-error", "0.5"],
    ["--budget-bytes", "1"],
])
def test_absurd_downlink_numbers_are_refused_with_status_2(good_log: Path, tmp_path: Path, args: list[str]) -> None:
    db = tmp_path / "n.sqlite"
    shutil.copyfile(good_log, db)
    r = _edge("downlink", "--db", "n.sqlite", "--out", "p.redl", *args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "p.redl").exists()
    with ResultLog(db) as log:
        assert log.count() == 20 and log.count_unsent() == 20


def test_the_largest_budget_is_accepted(good_log: Path, tmp_path: Path) -> None:
    db = tmp_path / "n.sqlite"
    shutil.copyfile(good_log, db)
    r = _edge("downlink", "--db", "n.sqlite", "--out", "p.redl", "--budget-bytes", str(2 ** 40), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(read_downlink(tmp_path / "p.redl").records) == 20


def test_an_unwritable_out_path_is_a_configuration_error(good_log: Path, tmp_path: Path) -> None:
    db = tmp_path / "n.sqlite"
    shutil.copyfile(good_log, db)
    r = _edge("downlink", "--db", "n.sqlite", "--budget-bytes", "10000", "--out", "/nonexistent/d/p.redl",
              cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    _one_error_line(r, "/nonexistent/d")
    with ResultLog(db) as log:
        assert log.count_unsent() == 20


def test_seq_summary_reads_as_ranges() -> None:
    assert seq_summary([5, 3, 4, 9]) == "seq 3-5, 9"
    assert seq_summary([1]) == "seq 1"
    assert seq_summary(list(range(0, 20, 2))) == "seq 0, 2, 4, 6 and 6 more ranges"
