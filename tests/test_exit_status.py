"""The exit-status contract: README.md's "Exit status" table, and everything that must agree with it.

The table is parsed, not copied: `run --help`, the CLI's own table and the systemd unit
are checked against it, and real `python -m edge run` processes are started with bad
configuration to prove they exit 2 with one error line and keep the rows already logged.
"""
from __future__ import annotations

import logging
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from calibration.errors import ConfigError, SourceConfigError, SourceError
from edge import __version__
from edge.cli import EXIT_STATUSES, _Group, _summary, main
from edge.daemon import Counters
from firmware_bridge.source import open_source

from .conftest import ROOT, make_test_bundle

README = ROOT / "README.md"
UNIT = ROOT / "edge" / "deploy" / "raman-edge.service"


# ------------------------------------------------------------------------------ the table
def readme_table() -> list[tuple[int, str, bool]]:
    """``(status, meaning, restart)`` rows of README.md's "## Exit status" table."""
    text = README.read_text(encoding="utf-8")
    m = re.search(r"^## Exit status\n(.*?)(?=^## )", text, re.S | re.M)
    assert m, "README.md has no '## Exit status' section"
    rows = []
    for line in m.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].isdigit():
            meaning = cells[1].split(":")[0].strip()
            assert cells[2] in ("yes", "no"), f"restart column of status {cells[0]}: {cells[2]!r}"
            rows.append((int(cells[0]), meaning, cells[2] == "yes"))
    return rows


def test_readme_table_has_the_documented_statuses() -> None:
    rows = readme_table()
    assert [r[0] for r in rows] == [0, 1, 2, 3, 130]
    assert dict((r[0], r[1]) for r in rows)[2] == "configuration error"
    assert dict((r[0], r[1]) for r in rows)[3] == "storage error"


def test_cli_table_is_the_readme_table() -> None:
    assert list(EXIT_STATUSES) == readme_table()


def test_run_help_states_the_readme_table() -> None:
    r = CliRunner().invoke(main, ["run", "--help"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    for status, meaning, _ in readme_table():
        assert f"{status} {meaning}" in text, f"run --help does not state '{status} {meaning}'"
    never = " or ".join(str(s) for s, _, restart in readme_table() if s and not restart)
    assert f"should not restart on {never}" in text


def test_systemd_unit_prevents_restart_exactly_where_the_table_says() -> None:
    unit = UNIT.read_text(encoding="utf-8")
    m = re.search(r"^RestartPreventExitStatus=(.*)$", unit, re.M)
    assert m and re.search(r"^Restart=on-failure$", unit, re.M)
    prevented = {int(x) for x in m.group(1).split()}
    assert prevented == {s for s, _, restart in readme_table() if s and not restart}


# ------------------------------------------------------------------------------ --version
def test_version_from_package_metadata() -> None:
    from importlib.metadata import version

    assert __version__ == version("raman-edge")
    proc = subprocess.run([sys.executable, "-m", "edge", "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == f"raman-edge {__version__}"
    assert CliRunner().invoke(main, ["-V"]).output.strip() == f"raman-edge {__version__}"


# ------------------------------------------------------------------------------ source URLs
@pytest.mark.parametrize("url, pattern", [
    ("sim://?rate=abc", "rate='abc'"),
    ("sim://?colour=red", "unknown option 'colour'"),
    ("sim://?calibration=/nonexistent/cal.json", "/nonexistent/cal.json"),
    ("replay:///tmp/x.npz?loop=maybe", "loop='maybe'"),
    ("replay:///tmp/x.npz?colour=red", "colour"),
    ("serial:///dev/ttyUSB0?baud=fast", "baud='fast'"),
    ("serial:///dev/ttyUSB0?baud=1e999", "baud='1e999'"),
    ("usb://2457:4000?interface=999", "interface='999'"),
    ("warp://x", "unknown scheme 'warp'"),
    ("no-scheme", "no scheme"),
    ("serial://[::1", "not a valid URL"),
])
def test_every_bad_source_url_is_a_configuration_error(url: str, pattern: str) -> None:
    with pytest.raises(SourceConfigError, match=re.escape(pattern)) as e:
        open_source(url)
    assert isinstance(e.value, SourceError) and isinstance(e.value, ConfigError) and e.value.exit_code == 2


_URL_OPTIONS = {
    "sim://": ["rate", "seed", "count", "pixels", "laser", "drift", "spike", "noise", "minerals", "colour"],
    "serial:///dev/ttyUSB0": ["baud", "timeout", "retries", "prefetch", "wait", "model", "protocol", "colour"],
    "usb://2457:4000": ["interface", "backend", "integration", "laser", "colour"],
    "replay:///tmp/x.npz": ["loop", "count", "start", "rate", "colour"],
}


@settings(max_examples=150, deadline=None)
@given(base=st.sampled_from(sorted(_URL_OPTIONS)), data=st.data(),
       value=st.one_of(st.text(max_size=12), st.integers().map(str), st.floats().map(repr)))
def test_any_query_value_parses_or_is_a_configuration_error(base: str, data: st.DataObject, value: str) -> None:
    """Random option values: a source is created, or SourceConfigError (exit 2) says why; nothing else."""
    from urllib.parse import quote

    name = data.draw(st.sampled_from(_URL_OPTIONS[base]))
    try:
        open_source(f"{base}?{name}={quote(value, safe='')}")
    except SourceConfigError as e:
        assert e.exit_code == 2 and str(e)


# ------------------------------------------------------------------------------ `run` as a process
@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A results log with rows in it, an unsigned bundle, and the bad TOML files."""
    tmp = tmp_path_factory.mktemp("exit")
    db = tmp / "log.sqlite"
    r = CliRunner().invoke(main, ["run", "--count", "3", "--quiet", "--db", str(db),
                                  "--source", "sim://?rate=0&seed=3"])
    assert r.exit_code == 0, r.output
    (tmp / "garbage-cal.json").write_text("{not json")
    tomls = {
        "url.toml": '[source]\nurl = "sim://?rate=abc"\n',
        "cal-missing.toml": f'[calibration]\npath = "{tmp / "missing-cal.json"}"\n',
        "cal-garbage.toml": f'[calibration]\npath = "{tmp / "garbage-cal.json"}"\n',
        "syntax.toml": "[store\n",
        "type.toml": '[priority]\nmin_probability = "high"\n',
        "key.toml": "[daemon]\ncolour = 1\n",
        "nan.toml": "[daemon]\nwatchdog_interval_s = inf\n",
    }
    for name, text in tomls.items():
        (tmp / name).write_text(text)
    return {"tmp": tmp, "db": db, "bundle": make_test_bundle(tmp / "unsigned")}


def _count(db: Path) -> int:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    finally:
        con.close()


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge", "run", "--count", "1", "--quiet", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=120)


#: (arguments, what the error line must say, run as a separate process?).  Every kind of
#: configuration error has one case in a real process; the rest run in-process (same code path).
CONFIG_CASES = [
    (["--source", "sim://?rate=abc"], "--source: sim://?rate=abc: option rate='abc'", True),
    (["--config", "{tmp}/url.toml"], "url.toml: [source] url: sim://?rate=abc", True),
    (["--source", "sim://?colour=red"], "unknown option 'colour'", False),
    (["--source", "warp://x"], "unknown scheme 'warp'", False),
    (["--source", "replay://{tmp}/x.npz?loop=maybe"], "loop='maybe'", False),
    (["--source", "serial:///dev/ttyUSB9?baud=fast"], "baud='fast'", False),
    (["--source", "usb://2457:4000?interface=999"], "interface='999'", False),
    (["--model", "/nonexistent/bundle"], "--model: /nonexistent/bundle", True),
    (["--model", "{bundle}"], "unsigned", True),
    (["--config", "{tmp}/cal-missing.toml"], "[calibration] path: {tmp}/missing-cal.json", True),
    (["--config", "{tmp}/cal-garbage.toml"], "garbage-cal.json", False),
    (["--config", "{tmp}/syntax.toml"], "invalid TOML", True),
    (["--config", "{tmp}/type.toml"], "[priority] min_probability = 'high'", False),
    (["--config", "{tmp}/key.toml"], "unknown option [daemon] colour", False),
    (["--config", "{tmp}/nan.toml"], "watchdog_interval_s = inf", False),
    (["--config", "{tmp}/absent.toml"], "absent.toml", False),
    (["--state-dir", "/nonexistent/dir/st"], "/nonexistent/dir/st", True),
]


def _run_in_process(args: list[str], cwd: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    monkeypatch.chdir(cwd)
    r = CliRunner().invoke(main, ["run", "--count", "1", "--quiet", *args])
    assert isinstance(r.exception, (SystemExit, type(None))), repr(r.exception)
    return r.exit_code, r.stdout, r.stderr


@pytest.mark.parametrize("args, pattern, process", CONFIG_CASES,
                         ids=[" ".join(a) + (" (process)" if p else "") for a, _, p in CONFIG_CASES])
def test_run_configuration_errors_exit_2_with_one_line(args: list[str], pattern: str, process: bool,
                                                        logged: dict[str, Path],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    tmp = logged["tmp"]

    def fill(s: str) -> str:
        return s.replace("{tmp}", str(tmp)).replace("{bundle}", str(logged["bundle"]))

    before = _count(logged["db"])
    argv = [*map(fill, args), "--db", str(logged["db"])]
    if process:
        proc = _run(argv, cwd=tmp)
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    else:
        code, out, err = _run_in_process(argv, tmp, monkeypatch)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("raman-edge: error:"), err
    assert fill(pattern) in lines[0]
    assert "Traceback" not in err + out
    assert _count(logged["db"]) == before  # nothing logged is lost, nothing half-written


def test_an_absent_instrument_at_start_is_transient(logged: dict[str, Path]) -> None:
    """Exit 1, so the unit restarts the daemon; wait=1 in the URL waits for the instrument instead."""
    proc = _run(["--source", "serial:///dev/raman-edge-absent", "--db", str(logged["db"])], cwd=logged["tmp"])
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("raman-edge: error:")]
    assert proc.returncode == 1, proc.stderr
    assert len(errors) == 1 and "/dev/raman-edge-absent" in errors[0]
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------ the last line of defence
def _group(tmp: Path) -> click.Group:
    """A command group of the CLI's own class whose commands fail the way real code does."""

    @click.group(cls=_Group)
    def cli() -> None:
        pass

    @cli.command()
    def full() -> None:
        with open("/dev/full", "w") as f:  # a real ENOSPC from the kernel
            f.write("x" * 65536)

    @cli.command()
    @click.option("--out", type=click.Path(path_type=Path))
    def write(out: Path) -> None:
        out.write_text("result")

    @cli.command()
    @click.option("--db", type=click.Path(path_type=Path))
    def corrupt(db: Path) -> None:
        db.write_bytes(b"this is not an SQLite database" * 100)
        sqlite3.connect(db).execute("SELECT * FROM sqlite_master").fetchall()

    @cli.command()
    def huge() -> None:
        int(float("1e999"))

    @cli.command()
    def bug() -> None:
        {}["missing"]

    @cli.command()
    def ctrl_c() -> None:
        raise KeyboardInterrupt

    @cli.command()
    def multiline() -> None:
        raise ConfigError("first line\nsecond line with a raw byte \x1b[31m")

    @cli.command()
    @click.option("--n", type=int, required=True)
    def usage(n: int) -> None:
        pass

    return cli


@pytest.mark.parametrize("args, code, pattern", [
    (["full"], 3, "disk full: /dev/full"),
    (["write", "--out", "/nonexistent/d/p.png"], 2, "/nonexistent/d/p.png: No such file or directory"),
    (["write", "--out", "{tmp}"], 2, "Is a directory"),
    (["write", "--out", "{tmp}/file.txt/x"], 2, "Not a directory"),
    (["corrupt", "--db", "{tmp}/bad.sqlite"], 3, "bad.sqlite: SQLite cannot use it"),
    (["huge"], 2, "a number is out of range"),
    (["bug"], 1, "internal error: KeyError: 'missing' (run with -vv for the traceback)"),
    (["multiline"], 2, "first line second line with a raw byte \\x1b[31m"),
])
def test_no_failure_escapes_as_a_traceback(args: list[str], code: int, pattern: str, tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("x")
    r = CliRunner().invoke(_group(tmp_path), [a.replace("{tmp}", str(tmp_path)) for a in args])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.exit_code == code, r.output
    assert len(lines) == 1 and lines[0].startswith("raman-edge: "), r.stderr
    assert pattern.replace("{tmp}", str(tmp_path)) in lines[0]
    assert "Traceback" not in r.output and isinstance(r.exception, SystemExit)


def test_ctrl_c_exits_130_quietly_and_usage_errors_stay_clicks(tmp_path: Path) -> None:
    r = CliRunner().invoke(_group(tmp_path), ["ctrl-c"])
    assert r.exit_code == 130 and r.stderr == ""
    r = CliRunner().invoke(_group(tmp_path), ["usage", "--n", "many"])
    assert r.exit_code == 2 and "Invalid value for '--n'" in r.stderr and "Traceback" not in r.stderr


def test_the_traceback_goes_to_the_debug_log_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="raman_edge"):
        r = CliRunner().invoke(_group(tmp_path), ["bug"])
    assert r.exit_code == 1 and "Traceback" not in r.stderr
    logged = [rec for rec in caplog.records if rec.exc_info and rec.levelno == logging.DEBUG]
    assert len(logged) == 1 and logged[0].exc_info[0] is KeyError


# ------------------------------------------------------------------------------ the run summary
def _counters(**kw: int) -> Counters:
    c = Counters()
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def test_summary_says_deferred_spectra_were_classified_later() -> None:
    line = _summary(_counters(acquired=347, classified=345, errors=2, deferred=311, deferred_done=311), 0, "x.sqlite")
    assert line == ("raman-edge: 347 spectra acquired: 345 classified, 2 could not be classified (reason logged); "
                    "311 of the 347 were logged raw first and classified once the classifier caught up; log x.sqlite")


def test_summary_counts_what_is_still_waiting_and_an_earlier_backlog() -> None:
    # 5 raw rows from an earlier run, 10 deferred now; stopped after 8 completions (the 5 old first).
    line = _summary(_counters(acquired=20, classified=17, errors=1, deferred=10, deferred_done=8), 5, "x.sqlite")
    assert "20 spectra acquired: 17 classified, 1 could not be classified" in line
    assert "including 5 left unclassified by an earlier run" in line
    assert "3 of the 20 were logged raw first" in line
    assert "7 logged raw, not classified yet (the next start classifies them)" in line


def test_summary_without_deferral_is_short() -> None:
    line = _summary(_counters(acquired=3, classified=3), 0, "x.sqlite")
    assert line == "raman-edge: 3 spectra acquired: 3 classified, 0 could not be classified; log x.sqlite"
