"""The CLI contract: every `raman-edge` command against a catalogue of bad inputs.

Each case (tests/contract_cases.py) runs as a real subprocess, ``python -m edge ...``
in its own directory, and must give the exit status the README's *Exit status*
table documents (0 success, 1 runtime error, 2 configuration or usage error,
3 storage error), exactly one error line on stderr naming what was wrong, no
Python traceback and no unprintable bytes anywhere, and must leave the rows of a
results log it touched where they were.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from tests.conftest import make_test_bundle
from tests.contract_cases import (OK, SHIPPED, Case, Ctx, World, acetonitrile_shift_txt, catalogue, enlighten_csv,
                                  labelled_npz, neon_lamp_csv, rruff_text)

ERROR_PREFIXES = ("raman-edge: error:", "Error:")


def cli(args: list[str], cwd: Path, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``python -m edge ARGS`` in ``cwd``, with no trust or state settings inherited from the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAMAN_EDGE_")}
    env["PYTHONIOENCODING"] = "utf-8:backslashreplace"
    proc = subprocess.run([sys.executable, "-m", "edge", *args], cwd=cwd, env=env, capture_output=True,
                          timeout=timeout)
    # Decoding with 'replace' keeps undecodable bytes visible as U+FFFD for the printable check.
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode("utf-8", "replace"),
                                       proc.stderr.decode("utf-8", "replace"))


def _ok(proc: subprocess.CompletedProcess[str], what: str) -> None:
    assert proc.returncode == 0, f"{what} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """One good log, one key pair, one foreign (unsigned) bundle, one pass file and one head file."""
    root = tmp_path_factory.mktemp("contract-world")
    _ok(cli(["run", "--count", "5", "--db", "good.sqlite", "--quiet"], root, timeout=120), "good log")
    _ok(cli(["keys", "generate", "--out", "keys", "--name", "ground"], root), "keys generate")
    shutil.copyfile(root / "good.sqlite", root / "pass.sqlite")
    _ok(cli(["downlink", "--db", "pass.sqlite", "--budget-bytes", "4000", "--out", "pass.redl"], root), "downlink")
    _ok(cli(["head", "export", "--model", str(SHIPPED), "--out", "shipped.head", "--key",
             "keys/ground.private.pem"], root), "head export")
    for name, text in [("calcite.txt", rruff_text()), ("wasatch.csv", enlighten_csv()), ("neon.csv", neon_lamp_csv()),
                       ("acetonitrile.txt", acetonitrile_shift_txt())]:
        (root / name).write_text(text)
    return World(root=root, good_db=root / "good.sqlite", private_key=root / "keys" / "ground.private.pem",
                  public_key=root / "keys" / "ground.public.pem",
                  foreign_bundle=make_test_bundle(root / "foreign"), redl=root / "pass.redl",
                  head=root / "shipped.head", npz=labelled_npz(root / "labelled.npz"), rruff=root / "calcite.txt",
                  wasatch=root / "wasatch.csv", neon=root / "neon.csv", acetonitrile=root / "acetonitrile.txt")


def test_world_files_are_good(world: World) -> None:
    """The catalogue's good files read cleanly, so each case's fault is the one it names."""
    from calibration.readers import read

    for path in (world.rruff, world.wasatch, world.acetonitrile):
        s = read(path)
        assert s.unit == "raman_shift", path
    assert read(world.neon).unit == "pixel"
    con = sqlite3.connect(world.good_db)
    assert con.execute("SELECT count(*), max(downlinked) FROM results").fetchone() == (5, 0)
    con.close()


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(ERROR_PREFIXES)]


def unprintable(text: str) -> list[str]:
    """Characters a terminal must never receive from a file: controls other than tab/newline/CR, U+FFFD."""
    return sorted({repr(ch) for ch in text
                   if ch == "\ufffd" or (unicodedata.category(ch) == "Cc" and ch not in "\t\n\r")})


def _matches(line: str, name: str | tuple[str, ...]) -> bool:
    alternatives = (name,) if isinstance(name, str) else name
    return any(a.lower() in line.lower() for a in alternatives)


def check_log(ctx: Ctx, rc: int) -> None:
    """Rows already in the log are all still there; a failed command marked none of them as sent."""
    snap = ctx.log
    if snap is None:
        return
    assert snap.path.exists(), f"{snap.path} was removed"
    if snap.corrupt:
        now = hashlib.sha256(snap.path.read_bytes()).hexdigest()
        assert now == snap.sha256, f"the corrupt log {snap.path.name} was modified instead of left for recovery"
        return
    con = sqlite3.connect(f"file:{snap.path}?mode=ro", uri=True)
    try:
        after = dict(con.execute("SELECT id, downlinked FROM results"))
    finally:
        con.close()
    lost = sorted(set(snap.rows) - set(after))
    assert not lost, f"rows {lost} of {snap.path.name} were lost"
    if rc != OK:
        marked = sorted(i for i, d in snap.rows.items() if after[i] != d)
        assert not marked, f"a failed command changed the downlink marks of rows {marked}"


def _params() -> list:
    return [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else []) for c in catalogue()]


@pytest.mark.parametrize("case", _params())
def test_contract(case: Case, world: World, tmp_path: Path) -> None:
    ctx = Ctx(tmp_path, world)
    try:
        args = [str(a) for a in case.argv(ctx)]
        try:
            proc = cli(args, tmp_path, timeout=case.timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"raman-edge {' '.join(args)}: no answer within {case.timeout:.0f} s")
        _assert_contract(case, ctx, args, proc)
    finally:
        for p in ctx.cleanup:
            shutil.rmtree(p, ignore_errors=True)


def _assert_contract(case: Case, ctx: Ctx, args: list[str], proc: subprocess.CompletedProcess[str]) -> None:
    shown = f"raman-edge {' '.join(args)}\n--- exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n" \
            f"--- stderr\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stdout + proc.stderr, f"traceback:\n{shown}"
    assert proc.returncode in case.exit, f"exit {proc.returncode}, documented {case.exit}:\n{shown}"
    bad = unprintable(proc.stdout + proc.stderr)
    assert not bad, f"unprintable characters {bad} reached the terminal:\n{shown}"
    assert not error_lines(proc.stdout), f"an error line on stdout:\n{shown}"
    errors = error_lines(proc.stderr)
    if proc.returncode == OK:
        assert not errors, f"an error line although the command succeeded:\n{shown}"
        said = proc.stdout + proc.stderr
    else:
        assert len(errors) == 1, f"{len(errors)} error lines, want exactly one:\n{shown}"
        said = errors[0]
    missing = [n for n in case.names if not _matches(said, n)]
    assert not missing, f"the message does not name {missing}:\n{shown}"
    check_log(ctx, proc.returncode)
    if case.check is not None:
        case.check(ctx, proc.returncode, proc.stdout, proc.stderr)


def test_catalogue_covers_every_command_and_enough_inputs() -> None:
    """At least 45 bad inputs, and a case for every command and subcommand `raman-edge --help` lists."""
    import click

    from edge.cli import main

    ids = [c.id for c in catalogue()]
    assert len(ids) >= 45
    assert len(set(ids)) == len(ids), "case ids must be unique"
    ctx = click.Context(main)
    for name in main.list_commands(ctx):
        cmd = main.get_command(ctx, name)
        names = [name]
        if isinstance(cmd, click.Group):
            names = [f"{name}-{sub}" for sub in cmd.list_commands(click.Context(cmd))]
        for full in names:
            assert any(i.startswith(full + "-") for i in ids), f"no case for `raman-edge {full.replace('-', ' ', 1)}`"
