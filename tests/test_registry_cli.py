"""`raman-edge keys generate`, `sign`, `model install|list|active|remove|verify` through the real CLI."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from click.testing import CliRunner

from edge.cli import main

from .conftest import make_test_bundle


def _run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, [str(a) for a in args])
    return r.exit_code, r.output


def test_ground_to_rover_workflow(tmp_path: Path, test_bundle: Path) -> None:
    keys, state = tmp_path / "keys", tmp_path / "state"
    code, out = _run("keys", "generate", "--out", keys, "--name", "ground")
    assert code == 0, out
    key_id = out.split("key id ")[1].split()[0]
    assert (keys / "ground.private.pem").exists() and (keys / "ground.public.pem").exists()

    a = shutil.copytree(test_bundle, tmp_path / "a")
    b = make_test_bundle(tmp_path / "b", minerals=["Calcite", "Diamond"])
    for bundle in (a, b):
        code, out = _run("sign", bundle, "--key", keys / "ground.private.pem")
        assert code == 0 and key_id in out, out

    trusted = ["--trusted-keys", keys / "ground.public.pem"]
    code, out = _run("model", "verify", a, *trusted)
    assert code == 0 and "OK" in out and "signed" in out, out
    code, out = _run("model", "install", a, "--state-dir", state, *trusted)
    assert code == 0 and "installed as" in out, out
    code, out = _run("model", "install", b, "--state-dir", state, *trusted)
    assert code == 0, out

    code, out = _run("model", "list", "--state-dir", state)
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 2
    assert [ln.startswith("*") for ln in lines] == [False, True]  # b, installed last, is active
    code, out = _run("model", "list", "--state-dir", state, "--json")
    listed = json.loads(out)
    assert [e["classes"] for e in listed] == [4, 2] and listed[1]["active"]

    code, out = _run("model", "active", "--state-dir", state, "--previous", *trusted)
    assert code == 0 and out.startswith(listed[0]["name"]), out
    code, out = _run("model", "active", "--state-dir", state, "--json")
    assert json.loads(out)["entry"] == listed[0]["name"]
    code, out = _run("model", "active", "--state-dir", state, "--set", listed[1]["name"], *trusted)
    assert code == 0 and out.startswith(listed[1]["name"])
    code, out = _run("model", "remove", listed[0]["name"], "--state-dir", state)
    assert code == 0 and len(json.loads(_run("model", "list", "--state-dir", state, "--json")[1])) == 1


def test_refusals_are_one_clear_line_and_leave_the_active_model(tmp_path: Path, test_bundle: Path) -> None:
    keys, state = tmp_path / "keys", tmp_path / "state"
    _run("keys", "generate", "--out", keys, "--name", "ground")
    (state / "trusted-keys").mkdir(parents=True)
    shutil.copy(keys / "ground.public.pem", state / "trusted-keys")  # the default trusted-keys location
    good = shutil.copytree(test_bundle, tmp_path / "good")
    _run("sign", good, "--key", keys / "ground.private.pem")
    assert _run("model", "install", good, "--state-dir", state)[0] == 0
    active = (state / "active.json").read_bytes()

    unsigned = make_test_bundle(tmp_path / "unsigned", minerals=["Quartz", "Hematite"])
    code, out = _run("model", "install", unsigned, "--state-dir", state)
    assert code == 2 and "raman-edge: error:" in out and "unsigned bundle" in out, out  # trust: configuration

    tampered = shutil.copytree(good, tmp_path / "tampered")
    doc = json.loads((tampered / "manifest.json").read_text())
    doc["classes"][0], doc["classes"][1] = doc["classes"][1], doc["classes"][0]  # swap two labels
    (tampered / "manifest.json").write_text(json.dumps(doc))
    code, out = _run("model", "install", tampered, "--state-dir", state)
    assert code == 2 and "manifest changed after signing" in out, out  # a damaged model: no restart mends it

    assert (state / "active.json").read_bytes() == active
    code, out = _run("model", "install", unsigned, "--state-dir", state, "--allow-unsigned")
    assert code == 0 and "UNSIGNED" in out, out

    code, out = _run("keys", "generate", "--out", keys, "--name", "ground")
    assert code == 2 and "already exists" in out  # a ConfigError: exit status 2
    code, out = _run("model", "active", "--state-dir", state, "--set", "nothing-like-this")
    assert code == 2 and "no installed model matches" in out


def test_hmac_key_workflow(tmp_path: Path, test_bundle: Path) -> None:
    keys, state = tmp_path / "keys", tmp_path / "state"
    code, out = _run("keys", "generate", "--out", keys, "--name", "team", "--algorithm", "hmac-sha256")
    assert code == 0 and (keys / "team.hmac").exists(), out
    b = shutil.copytree(test_bundle, tmp_path / "b")
    assert _run("sign", b, "--key", keys / "team.hmac")[0] == 0
    code, out = _run("model", "install", b, "--state-dir", state, "--trusted-keys", keys / "team.hmac")
    assert code == 0 and "hmac-sha256" in out, out


def _tree_digest(root: Path) -> dict[str, str]:
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts}


def test_no_command_writes_into_the_installed_package(tmp_path: Path) -> None:
    from edge.bundle import default_model_path

    from .conftest import make_npz

    shipped = default_model_path()
    before = _tree_digest(shipped.parent)
    data = make_npz(tmp_path / "new.npz", minerals=["Calcite"])
    key = tmp_path / "keys" / "ground.private.pem"
    _run("keys", "generate", "--out", key.parent, "--name", "ground")
    for args in (["head", "add", "--model", shipped, "--data", data, "--out", shipped],
                 ["head", "add", "--model", shipped, "--data", data, "--out", shipped.parent / "mine"],
                 ["head", "support", "--model", shipped, "--data", data, "--out", shipped],
                 ["head", "export", "--model", shipped, "--out", shipped.parent / "default.head", "--unsigned"],
                 ["sign", shipped, "--key", key]):
        r = CliRunner().invoke(main, [str(a) for a in args])
        assert r.exit_code == 2, (args, r.output)
        assert r.stderr.count("\n") == 1 and "inside the installed raman-edge package" in r.stderr, r.stderr
    assert _tree_digest(shipped.parent) == before
