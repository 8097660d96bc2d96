"""A damaged `STATE_DIR/active.json` never stops the daemon, and the registry commands say what is wrong in one line."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from calibration.errors import BundleError, ConfigError
from edge.bundle import default_model_path, load_bundle, validation_summary
from edge.cli import main
from edge.config import Config
from edge.registry import ACTIVE_BACKUP, PointerError, Registry
from edge.service import build_service
from edge.signing import generate_key, sign_bundle

from .conftest import make_test_bundle


def _cli(*args: Any) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, [str(a) for a in args])
    return r.exit_code, r.stdout, r.stderr


@pytest.fixture
def state(tmp_path: Path, test_bundle: Path) -> dict[str, Any]:
    """A state directory with two signed entries installed; the second is active."""
    sd = tmp_path / "sd"
    key = generate_key(tmp_path / "keys", "ground")
    (sd / "trusted-keys").mkdir(parents=True)
    shutil.copy(key.public, sd / "trusted-keys")
    a = shutil.copytree(test_bundle, tmp_path / "a")
    b = make_test_bundle(tmp_path / "b", minerals=["Calcite", "Quartz"])
    for bundle in (a, b):
        sign_bundle(bundle, key.private)
    reg = Registry(sd)
    ea = reg.install(a).entry
    eb = reg.install(b).entry
    return {"sd": sd, "reg": reg, "a": ea, "b": eb}


DAMAGE = {
    "random-bytes": os.urandom(64) + b"\xff\xfe",
    "bad-json": b'{"format": "raman-edge.registry-active", ',
    "json-list": b"[1, 2, 3]",
    "path-escape": json.dumps({"format": "raman-edge.registry-active", "version": 1, "entry": "../../etc",
                               "model_id": "x", "manifest_sha256": "0" * 64}).encode(),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_pointer_is_one_line_for_every_command(state: dict[str, Any], damage: str) -> None:
    sd, reg = state["sd"], state["reg"]
    (sd / "active.json").write_bytes(DAMAGE[damage])
    with pytest.raises(PointerError, match="active.json") as info:
        Registry(sd).active()
    assert isinstance(info.value, ConfigError) and isinstance(info.value, BundleError)
    assert reg.last_good().entry == state["b"].name  # the copy written with the last switch

    code, out, err = _cli("model", "active", "--state-dir", sd)
    assert code == 2 and err.count("\n") == 1 and "active.json" in err and "--set ID" in err, err
    code, out, err = _cli("model", "list", "--state-dir", sd)
    assert code == 0 and err.startswith("raman-edge: warning:") and err.count("\n") == 1, err
    assert len(out.strip().splitlines()) == 2 and not any(line.startswith("*") for line in out.splitlines())
    assert "Traceback" not in out + err

    code, out, err = _cli("model", "active", "--state-dir", sd, "--set", state["a"].name, "--wait", "0")
    assert code == 0 and out.startswith(state["a"].name), out + err  # --set repairs it
    assert Registry(sd).active().entry == state["a"].name


def _config(sd: Path, db: Path) -> Config:
    return Config().with_overrides({"daemon.state_dir": str(sd), "store.db": str(db), "daemon.status_socket": False})


@pytest.mark.parametrize("damage", ["random-bytes", "bad-json"])
def test_daemon_starts_from_the_last_good_pointer(state: dict[str, Any], tmp_path: Path, damage: str) -> None:
    sd = state["sd"]
    (sd / "active.json").write_bytes(DAMAGE[damage])
    service = build_service(_config(sd, tmp_path / "log.sqlite"))
    try:
        assert service.bundle.model_id == state["b"].model_id
        status = service.daemon.hot_swap.status()
        assert status["entry"] == state["b"].name
        assert status["model_refused"]["entry"] is None and "active.json" in status["model_refused"]["reason"]
    finally:
        service.stack.close()


def test_daemon_falls_back_to_the_shipped_model(state: dict[str, Any], tmp_path: Path) -> None:
    sd = state["sd"]
    doc = json.loads((sd / "active.json").read_text())
    doc["entry"] = "gone.12345678"  # valid JSON naming an entry that is not installed ...
    (sd / "active.json").write_text(json.dumps(doc))
    (sd / ACTIVE_BACKUP).write_text(json.dumps(doc))  # ... and no good copy left
    service = build_service(_config(sd, tmp_path / "log.sqlite"))
    try:
        assert service.bundle.path == default_model_path()
        refused = service.daemon.hot_swap.status()["model_refused"]
        assert refused["entry"] == "gone.12345678" and "is not installed" in refused["reason"]
    finally:
        service.stack.close()


def test_hand_edited_pointer_falls_back_to_the_last_switch(state: dict[str, Any], tmp_path: Path) -> None:
    sd = state["sd"]
    doc = json.loads((sd / "active.json").read_text())
    doc["entry"] = "gone.12345678"
    (sd / "active.json").write_text(json.dumps(doc))
    service = build_service(_config(sd, tmp_path / "log.sqlite"))
    try:
        assert service.bundle.model_id == state["b"].model_id
    finally:
        service.stack.close()


def test_run_survives_a_garbage_pointer(state: dict[str, Any], tmp_path: Path) -> None:
    sd, db = state["sd"], tmp_path / "log.sqlite"
    (sd / "active.json").write_bytes(DAMAGE["random-bytes"])
    code, out, err = _cli("run", "--source", "sim://?rate=50&minerals=Calcite,Quartz", "--count", "3", "--db", db,
                          "--state-dir", sd, "--quiet")
    assert code == 0, err
    assert f"model {state['b'].model_id}" in err and "Traceback" not in err


def test_list_and_install_show_validation_figures(state: dict[str, Any], tmp_path: Path) -> None:
    code, out, _ = _cli("model", "list", "--state-dir", state["sd"])
    assert code == 0 and all(line.rstrip().endswith("T 1") for line in out.strip().splitlines()), out
    listed = json.loads(_cli("model", "list", "--state-dir", state["sd"], "--json")[1])
    assert listed[0]["validation"] == {"temperature": 1.0}
    shipped = load_bundle(default_model_path()).manifest
    assert validation_summary(shipped) == "no validation split (train top-1 99.7%), T 1.04, ECE 0.036"
    shipped["training"]["metrics"].update(val_top1=0.04, val_spectra=52)
    assert validation_summary(shipped).startswith("val top-1 4.0% (52), T 1.04")
