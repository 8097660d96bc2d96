"""Head files: export (signed, small), install into a registry from the parent's backbone, refusals; the CLI."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from calibration.errors import BundleError
from edge.bundle import load_bundle
from edge.cli import main
from edge.head import add_head
from edge.headfile import INDEX, export_head, read_head_file
from edge.registry import Registry
from edge.signing import generate_key, sign_bundle

from .conftest import ROOT
from .head_helpers import NEW, OLD, accuracy, bare_bundle, save_npz, synthetic_split


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    t = tmp_path_factory.mktemp("headfile")
    parts = synthetic_split(train=8, test=6)
    files = {k: save_npz(t / f"{k}.npz", v) for k, v in parts.items()}
    parent = add_head(bare_bundle(t / "bare", OLD), files["old_train"], t / "parent", replace=True)
    child = add_head(parent, files["new_train"], t / "child")
    key = generate_key(t / "keys", "ground")
    other = generate_key(t / "keys", "stranger")
    sign_bundle(parent.path, key.private)
    head = export_head(child.path, t / "child.head", key=key.private)
    return {"dir": t, "parts": parts, "files": files, "parent": parent, "child": child, "key": key,
            "other": other, "head": head}


def _state(tmp_path: Path, world: dict, parent: bool = True) -> Registry:
    reg = Registry(tmp_path / "state")
    (reg.root / "trusted-keys").mkdir(parents=True)
    shutil.copy(world["key"].public, reg.root / "trusted-keys")
    if parent:
        reg.install(world["parent"].path)
    return reg


def _rewrite(src: Path, dst: Path, change: dict[str, bytes | None]) -> Path:
    """Copy a head file, replacing (bytes) or dropping (None) members."""
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    for n, v in change.items():
        if v is None:
            members.pop(n, None)
        else:
            members[n] = v
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n, v in members.items():
            z.writestr(n, v)
    dst.write_bytes(buf.getvalue())
    return dst


def test_export_is_small_and_carries_no_backbone(world: dict) -> None:
    info = world["head"]
    assert info.signed
    assert info.bytes < 0.5 * info.bundle_bytes
    hf = read_head_file(info.path)
    assert "backbone.onnx" not in hf.members
    assert set(hf.members) == {"manifest.json", "signature.json", "head.onnx", "support.npz", "novelty.npz"}
    assert hf.members["manifest.json"] == (world["child"].path / "manifest.json").read_bytes()
    assert hf.backbone_sha256 == world["parent"].manifest["files"]["backbone"]["sha256"]
    # the bundle directory itself was not signed by the export
    assert not (world["child"].path / "signature.json").exists()


def test_export_install_round_trip(world: dict, tmp_path: Path) -> None:
    reg = _state(tmp_path, world)
    res = reg.install(world["head"].path)
    assert res.activated and res.signature.trusted
    active = reg.load_active()
    assert active.classes == OLD + NEW
    assert active.backbone_path.read_bytes() == world["parent"].backbone_path.read_bytes()
    assert active.head_path.read_bytes() == world["child"].head_path.read_bytes()
    assert accuracy(active, world["parts"]["new_test"]) >= 0.9
    assert "child.head" in reg.resolve(res.entry.name).source
    assert not list(reg.root.glob(".head-compose-*"))
    again = reg.install(world["head"].path)
    assert again.reused


def test_parent_backbone_must_be_installed(world: dict, tmp_path: Path) -> None:
    reg = _state(tmp_path, world, parent=False)
    with pytest.raises(BundleError, match=r"child.head: needs the backbone sha256 .*install the parent bundle first"):
        reg.install(world["head"].path)
    assert reg.active() is None


@pytest.mark.parametrize("what", ["head", "support", "manifest", "signature", "unsigned", "stranger"])
def test_tampered_or_unsigned_head_file_is_refused(world: dict, tmp_path: Path, what: str) -> None:
    src = world["head"].path
    hf = read_head_file(src)
    if what == "head":
        onnx_bytes = bytearray(hf.members["head.onnx"])
        onnx_bytes[-5] ^= 0x01
        bad = _rewrite(src, tmp_path / "bad.head", {"head.onnx": bytes(onnx_bytes)})
        match = "head.onnx: sha256 mismatch"
    elif what == "support":
        bad = _rewrite(src, tmp_path / "bad.head", {"support.npz": hf.members["support.npz"] + b"x"})
        match = "support.npz: sha256 mismatch"
    elif what == "manifest":
        m = json.loads(hf.members["manifest.json"])
        m["temperature"] = 0.5
        bad = _rewrite(src, tmp_path / "bad.head", {"manifest.json": json.dumps(m, indent=2).encode()})
        match = "manifest changed after signing"
    elif what == "signature":
        s = json.loads(hf.members["signature.json"])
        s["signature"] = s["signature"][::-1]
        bad = _rewrite(src, tmp_path / "bad.head", {"signature.json": json.dumps(s).encode()})
        match = "bad signature|not valid base64"
    elif what == "unsigned":
        bad = _rewrite(src, tmp_path / "bad.head", {"signature.json": None})
        match = "unsigned bundle"
    else:
        bad = export_head(world["child"].path, tmp_path / "bad.head", key=world["other"].private).path
        match = "unknown key id"
    reg = _state(tmp_path, world)
    before = reg.active()
    with pytest.raises(BundleError, match=match) as e:
        reg.install(bad)
    assert "bad.head" in str(e.value)
    assert reg.active() == before
    assert not list(reg.root.glob(".head-compose-*"))


def test_unsigned_head_file_accepted_only_for_development(world: dict, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="unsigned bundle; pass --key"):
        export_head(world["child"].path, tmp_path / "u.head")
    info = export_head(world["child"].path, tmp_path / "u.head", allow_unsigned=True)
    assert not info.signed
    reg = _state(tmp_path, world)
    assert reg.install(info.path, allow_unsigned=True).signature.status == "unsigned"


@pytest.mark.parametrize("damage", ["truncated", "not_head_zip", "with_backbone", "unsafe_name", "extra_member"])
def test_malformed_head_files_are_refused(world: dict, tmp_path: Path, damage: str) -> None:
    src = world["head"].path
    bad = tmp_path / "bad.head"
    if damage == "truncated":
        bad.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
        match = "not a head file|damaged"
    elif damage == "not_head_zip":
        _rewrite(src, bad, {INDEX: None})
        match = "not a raman-edge head file"
    elif damage == "with_backbone":
        _rewrite(src, bad, {"backbone.onnx": world["parent"].backbone_path.read_bytes()})
        match = "must not carry the backbone"
    elif damage == "unsafe_name":
        _rewrite(src, bad, {"../evil.txt": b"x"})
        match = "unsafe member name"
    else:
        _rewrite(src, bad, {"extra.bin": b"x"})
        match = "does not list"
    reg = _state(tmp_path, world)
    with pytest.raises(BundleError, match=match):
        reg.install(bad)


# ----------------------------------------------------------------------------- CLI

def test_cli_add_export_install(world: dict, tmp_path: Path) -> None:
    r = CliRunner()
    out = tmp_path / "cli_child"
    res = r.invoke(main, ["head", "add", "--model", str(world["parent"].path), "--data", str(world["files"]["new_train"]),
                          "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "5 kept + 3 new classes" in res.output and "unchanged" in res.output
    b = load_bundle(out)
    assert b.manifest["training"]["command"].startswith("raman-edge")
    res = r.invoke(main, ["head", "export", "--model", str(out), "--out", str(tmp_path / "c.head"),
                          "--key", str(world["key"].private)])
    assert res.exit_code == 0, res.output
    assert "signed" in res.output and "of the" in res.output
    state = tmp_path / "state"
    (state / "trusted-keys").mkdir(parents=True)
    shutil.copy(world["key"].public, state / "trusted-keys")
    res = r.invoke(main, ["model", "install", str(tmp_path / "c.head"), "--state-dir", str(state)])
    assert res.exit_code == 2 and "install the parent bundle first" in res.output
    for src in (world["parent"].path, tmp_path / "c.head"):
        res = r.invoke(main, ["model", "install", str(src), "--state-dir", str(state)])
        assert res.exit_code == 0, res.output
    assert Registry(state).load_active().classes == OLD + NEW
    res = r.invoke(main, ["head", "show", str(tmp_path / "c.head")])
    assert res.exit_code == 0 and json.loads(res.output)["signed"] is True


def test_cli_errors_are_one_clear_line(world: dict, tmp_path: Path) -> None:
    r = CliRunner()
    res = r.invoke(main, ["head", "add", "--model", str(world["dir"] / "bare"), "--data",
                          str(world["files"]["new_train"]), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "raman-edge: error:" in res.output and "head support" in res.output
    res = r.invoke(main, ["head", "add", "--model", str(world["parent"].path), "--data",
                          str(world["files"]["old_test"]), "--out", str(tmp_path / "x")])
    assert res.exit_code == 1 and "already in model" in res.output
    res = r.invoke(main, ["head", "export", "--model", str(world["child"].path), "--out", str(tmp_path / "u.head")])
    assert res.exit_code == 2 and "unsigned bundle" in res.output
    res = r.invoke(main, ["head", "support", "--model", str(world["dir"] / "bare"), "--data",
                          str(world["files"]["old_train"]), "--out", str(tmp_path / "s")])
    assert res.exit_code == 0 and "support for 5 classes" in res.output


# ----------------------------------------------------------------------------- no torch

def test_head_swap_export_install_without_torch(world: dict, tmp_path: Path) -> None:
    """The rover side: add a head, export and install it in an interpreter that cannot import torch."""
    code = textwrap.dedent(f"""
        import sys, importlib.abc
        class NoTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch.") or name == "trainer" or name.startswith("trainer."):
                    raise ImportError("torch is forbidden on the device")
        sys.meta_path.insert(0, NoTorch())
        from edge.head import add_head
        from edge.headfile import export_head
        from edge.registry import Registry
        b = add_head({str(world['parent'].path)!r}, {str(world['files']['new_train'])!r}, {str(tmp_path / 'c')!r})
        info = export_head(b.path, {str(tmp_path / 'c.head')!r}, key={str(world['key'].private)!r})
        reg = Registry({str(tmp_path / 'state')!r})
        reg.install({str(world['parent'].path)!r}, {str(world['key'].public)!r})
        reg.install(info.path, {str(world['key'].public)!r})
        assert reg.load_active({str(world['key'].public)!r}).classes == b.classes
        assert "torch" not in sys.modules
        print("ok", len(b.classes))
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("ok 8")


def test_head_fit_is_deterministic(world: dict, tmp_path: Path) -> None:
    a = add_head(world["parent"], world["files"]["new_train"], tmp_path / "a", seed=4)
    b = add_head(world["parent"], world["files"]["new_train"], tmp_path / "b", seed=4)
    assert a.model_id == b.model_id
    assert a.temperature == b.temperature
    np.testing.assert_array_equal(np.load(a.part_path("support"))["exemplars"], np.load(b.part_path("support"))["exemplars"])


def test_ground_verify_of_a_head_file(world: dict, tmp_path: Path) -> None:
    r = CliRunner()
    args = ["head", "verify", str(world["head"].path), "--parent", str(world["parent"].path)]
    res = r.invoke(main, args + ["--trusted-keys", str(world["key"].public)])
    assert res.exit_code == 0 and "OK: model" in res.output and "signed" in res.output, res.output
    res = r.invoke(main, args + ["--trusted-keys", str(world["other"].public)])
    assert res.exit_code == 2 and "unknown key id" in res.output  # an untrusted key is configuration
    res = r.invoke(main, ["head", "verify", str(world["head"].path), "--parent", str(world["dir"] / "bare"),
                          "--trusted-keys", str(world["key"].public)])
    assert res.exit_code == 0, res.output  # the bare bundle has the same backbone
    from calibration.preprocess import DEFAULT_SPEC
    from edge.bundle import write_bundle
    from edge.head import linear_head_onnx
    from edge.headfile import verify_head_file

    from .head_helpers import binning_backbone

    other = write_bundle(tmp_path / "other", backbone_onnx=binning_backbone(16), head_onnx=linear_head_onnx(
        np.zeros((2, 16)), np.zeros(2)), classes=["a", "b"], preprocessing=DEFAULT_SPEC, feature_size=16,
        architecture={"name": "bins", "params": {}}, training={})
    with pytest.raises(BundleError, match="not its parent"):
        verify_head_file(world["head"].path, other.path, world["key"].public)
