"""Signed model updates against a real daemon process and its real status socket.

The daemon starts before any trusted key exists; keys added afterwards must count,
a model it refuses must show in `raman-edge status` with the reason, and
`raman-edge model install` must say what the running daemon did.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from click.testing import CliRunner

from calibration.errors import RamanEdgeError
from edge.bundle import default_model_path
from edge.cli import main
from edge.status import query

from .conftest import ROOT


def _cli(*args: Any) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, [str(a) for a in args])
    return r.exit_code, r.stdout, r.stderr


def _variant(dst: Path, temperature: float) -> Path:
    """A copy of the shipped bundle that is no longer the shipped model (another temperature)."""
    shutil.copytree(default_model_path(), dst)
    doc = json.loads((dst / "manifest.json").read_text())
    doc["temperature"] = temperature
    (dst / "manifest.json").write_text(json.dumps(doc, indent=2) + "\n")
    return dst


def _wait_for(what: str, probe: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _status(state: Path) -> dict[str, Any] | None:
    try:
        return query(state, timeout=1.0)
    except RamanEdgeError:
        return None


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, Path, Path]]:
    """`raman-edge run` on the simulator, shipped model, checking for new models every 0.2 s."""
    state, db, cfg = tmp_path / "sd", tmp_path / "log.sqlite", tmp_path / "rover.toml"
    cfg.write_text("[model]\ncheck_interval_s = 0.2\n")
    err = tmp_path / "daemon.stderr"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(err, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "edge", "run", "--config", cfg, "--source", "sim://?rate=20",
                                 "--db", db, "--state-dir", state, "--quiet"], stdout=subprocess.DEVNULL, stderr=f,
                                env=env, cwd=tmp_path)
    try:
        _wait_for("the daemon's status socket", lambda: proc.poll() is not None or _status(state))
        assert proc.poll() is None, err.read_text()
        yield proc, state, db
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    assert "Traceback" not in err.read_text(), err.read_text()


def test_keys_added_after_start_count_and_refusals_show(daemon: tuple[subprocess.Popen, Path, Path],
                                                        tmp_path: Path) -> None:
    proc, state, db = daemon
    first = _status(state)
    assert first["model_entry"] is None and first["model_refused"] is None  # the shipped model, nothing refused

    # Trust is configured only now, while the daemon runs.
    keys = tmp_path / "ground-keys"
    assert _cli("keys", "generate", "--out", keys, "--name", "ground")[0] == 0
    assert _cli("keys", "generate", "--out", keys, "--name", "rogue")[0] == 0
    (state / "trusted-keys").mkdir()
    shutil.copy(keys / "ground.public.pem", state / "trusted-keys")

    good = _variant(tmp_path / "good", 1.25)
    assert _cli("sign", good, "--key", keys / "ground.private.pem")[0] == 0
    code, out, err = _cli("model", "install", good, "--state-dir", state, "--wait", "10")
    assert code == 0, out + err
    entry = json.loads((state / "active.json").read_text())["entry"]
    assert f"the running daemon (pid {proc.pid}) switched to {entry}" in out, out
    s = _status(state)
    assert s["model_entry"] == entry and s["model_refused"] is None and s["counters"]["model_swaps"] == 1

    # Signed by a key the rover does not trust: the install side allows it (development), the daemon does not.
    rogue = _variant(tmp_path / "rogue", 1.5)
    assert _cli("sign", rogue, "--key", keys / "rogue.private.pem")[0] == 0
    code, out, err = _cli("model", "install", rogue, "--state-dir", state, "--allow-unsigned", "--wait", "10")
    refused_entry = json.loads((state / "active.json").read_text())["entry"]
    assert code == 2, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("raman-edge: error: the running daemon"), err
    assert f"refused {refused_entry}" in lines[0] and "unknown key id" in lines[0], err
    s = _status(state)
    assert s["model_entry"] == entry  # the old model keeps running
    assert s["model_refused"]["entry"] == refused_entry and "unknown key id" in s["model_refused"]["reason"]
    assert s["events"].get("model_refused") == 1
    text = subprocess.run([sys.executable, "-m", "edge", "status", "--state-dir", state], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert text.returncode == 0 and f"REFUSED model {refused_entry}" in text.stdout, text.stdout + text.stderr

    # The missing key arrives: the daemon takes the model it refused, without another install.
    shutil.copy(keys / "rogue.public.pem", state / "trusted-keys")
    s = _wait_for("the daemon to take the model once its key is trusted",
                  lambda: (st := _status(state)) and st["model_entry"] == refused_entry and st)
    assert s["model_refused"] is None and s["counters"]["model_swaps"] == 2
    assert proc.poll() is None


def test_install_says_so_when_no_daemon_runs(tmp_path: Path) -> None:
    good = _variant(tmp_path / "b", 1.25)
    code, out, err = _cli("model", "install", good, "--state-dir", tmp_path / "sd", "--allow-unsigned")
    assert code == 0, out + err
    assert "no daemon is running on" in out and "UNSIGNED" in out
    assert "no validation split (train top-1 99.7%), T 1.25, ECE 0.036" in out  # the manifest's figures
