"""Bundle signatures: round trips, every kind of tampering refused with the right reason, trust policy."""
from __future__ import annotations

import ast
import base64
import hashlib
import json
import shutil
import stat
from pathlib import Path

import pytest

from calibration.errors import BundleError, ConfigError
from edge.bundle import default_model_path
from edge.signing import (
    BUILTIN, ED25519, HMAC_SHA256, SHIPPED_MANIFEST_SHA256, SIGNATURE, SIGNED, UNSIGNED, UNVERIFIED, TrustedKeys,
    TrustError, check_trust, generate_key,
    load_signing_key, load_trusted_bundle, load_verify_key, sign_bundle, verify_bundle,
)

from .conftest import ROOT


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    d = tmp_path_factory.mktemp("keys")
    return {
        "ground": generate_key(d, "ground"),
        "other": generate_key(d, "other"),
        "shared": generate_key(d, "shared", algorithm=HMAC_SHA256),
        "other_hmac": generate_key(d, "other-hmac", algorithm=HMAC_SHA256),
    }


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture
def signed(tmp_path: Path, test_bundle: Path, keys: dict) -> Path:
    b = _copy(test_bundle, tmp_path / "b")
    sign_bundle(b, keys["ground"].private)
    return b


def _edit_json(path: Path, **changes: object) -> None:
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc, indent=2))


def test_ed25519_round_trip(signed: Path, keys: dict) -> None:
    trusted = TrustedKeys.load(keys["ground"].public)
    info = verify_bundle(signed, trusted)
    assert info.status == SIGNED and info.trusted
    assert info.algorithm == ED25519 and info.key_id == keys["ground"].key_id and info.key_name == "ground"
    bundle, info2 = load_trusted_bundle(signed, trusted)
    assert info2 == info and bundle.model_id
    doc = json.loads((signed / SIGNATURE).read_text())
    assert doc["format"] == "raman-edge.signature" and doc["covers"] == "manifest.json"
    assert len(base64.b64decode(doc["signature"])) == 64


def test_trusted_keys_from_a_directory_and_paths(signed: Path, keys: dict, tmp_path: Path) -> None:
    d = tmp_path / "trusted"
    d.mkdir()
    shutil.copy(keys["other"].public, d)
    shutil.copy(keys["ground"].public, d)
    (d / "README").write_text("not a key")  # ignored: not *.pem / *.hmac
    assert verify_bundle(signed, d).key_name == "ground"
    assert verify_bundle(signed, [keys["other"].public, keys["ground"].public]).status == SIGNED


def test_manifest_changed_after_signing_is_refused(signed: Path, keys: dict) -> None:
    _edit_json(signed / "manifest.json", temperature=2.5)
    with pytest.raises(BundleError, match="manifest changed after signing"):
        verify_bundle(signed, keys["ground"].public)
    # development mode does not excuse a signature that contradicts the manifest
    with pytest.raises(BundleError, match="manifest changed after signing"):
        verify_bundle(signed, keys["ground"].public, allow_unsigned=True)


def test_manifest_and_signed_hash_both_changed_is_a_bad_signature(signed: Path, keys: dict) -> None:
    import hashlib

    _edit_json(signed / "manifest.json", temperature=2.5)
    _edit_json(signed / SIGNATURE, manifest_sha256=hashlib.sha256((signed / "manifest.json").read_bytes()).hexdigest())
    with pytest.raises(BundleError, match="bad signature"):
        verify_bundle(signed, keys["ground"].public)


def test_tampered_onnx_is_caught_by_the_load(signed: Path, keys: dict) -> None:
    head = signed / "head.onnx"
    data = bytearray(head.read_bytes())
    data[-5] ^= 0x01
    head.write_bytes(bytes(data))
    assert verify_bundle(signed, keys["ground"].public).status == SIGNED  # the manifest is intact...
    with pytest.raises(BundleError, match="head.onnx: sha256 mismatch"):  # ...and its hash of the file is not
        load_trusted_bundle(signed, keys["ground"].public)


def test_tampered_signature_is_refused(signed: Path, keys: dict) -> None:
    doc = json.loads((signed / SIGNATURE).read_text())
    sig = bytearray(base64.b64decode(doc["signature"]))
    sig[10] ^= 0x40
    _edit_json(signed / SIGNATURE, signature=base64.b64encode(bytes(sig)).decode())
    with pytest.raises(BundleError, match="bad signature"):
        verify_bundle(signed, keys["ground"].public)


def test_untrusted_key_is_refused_and_only_unverified_in_development(signed: Path, keys: dict) -> None:
    with pytest.raises(BundleError, match=f"unknown key id {keys['ground'].key_id}.*other="):
        verify_bundle(signed, keys["other"].public)
    with pytest.raises(BundleError, match="unknown key id.*none configured"):
        verify_bundle(signed, None)
    info = verify_bundle(signed, keys["other"].public, allow_unsigned=True)
    assert info.status == UNVERIFIED and not info.trusted


def test_claiming_a_trusted_key_id_does_not_help(signed: Path, keys: dict) -> None:
    _edit_json(signed / SIGNATURE, key_id=keys["other"].key_id)  # signed by ground, claims other
    with pytest.raises(BundleError, match="bad signature"):
        verify_bundle(signed, keys["other"].public)


def test_hmac_round_trip_and_failures(tmp_path: Path, test_bundle: Path, keys: dict) -> None:
    b = _copy(test_bundle, tmp_path / "b")
    sign_bundle(b, keys["shared"].private)
    info = verify_bundle(b, keys["shared"].private)  # the rover holds the same secret
    assert info.status == SIGNED and info.algorithm == HMAC_SHA256 and info.key_name == "shared"
    with pytest.raises(BundleError, match="unknown key id"):
        verify_bundle(b, keys["other_hmac"].private)
    _edit_json(b / SIGNATURE, signature=base64.b64encode(b"\0" * 32).decode())
    with pytest.raises(BundleError, match="bad signature"):
        verify_bundle(b, keys["shared"].private)


def test_algorithm_must_match_the_trusted_key(signed: Path, keys: dict) -> None:
    _edit_json(signed / SIGNATURE, algorithm=HMAC_SHA256)
    with pytest.raises(BundleError, match="says hmac-sha256 but trusted key ground .* is ed25519"):
        verify_bundle(signed, keys["ground"].public)


def test_unsigned_is_refused_unless_allowed(tmp_path: Path, test_bundle: Path, keys: dict) -> None:
    b = _copy(test_bundle, tmp_path / "b")
    with pytest.raises(BundleError, match="unsigned bundle .*raman-edge sign"):
        verify_bundle(b, keys["ground"].public)
    with pytest.raises(BundleError, match="unsigned"):
        check_trust(b, keys["ground"].public)
    info = check_trust(b, keys["ground"].public, allow_unsigned=True)
    assert info.status == UNSIGNED and not info.trusted


@pytest.mark.parametrize("damage, message", [
    ("{not json", "not valid JSON"),
    (json.dumps({"format": "raman-edge.signature", "version": 99}), "version 99 is not supported"),
    (json.dumps({"format": "something-else"}), "not a raman-edge signature"),
])
def test_malformed_signature_file(signed: Path, keys: dict, damage: str, message: str) -> None:
    (signed / SIGNATURE).write_text(damage)
    with pytest.raises(BundleError, match=message):
        verify_bundle(signed, keys["ground"].public, allow_unsigned=True)


def test_shipped_model_is_trusted_by_content_not_by_location(tmp_path: Path) -> None:
    assert check_trust(default_model_path(), None).status == BUILTIN
    copy = _copy(default_model_path(), tmp_path / "copy")
    assert check_trust(copy, None).status == BUILTIN
    _edit_json(copy / "manifest.json", temperature=3.0)  # no longer the shipped model
    with pytest.raises(BundleError, match="unsigned"):
        check_trust(copy, None)


def test_shipped_manifest_hash_is_recorded_in_the_package() -> None:
    """Rebuilding the shipped model means updating SHIPPED_MANIFEST_SHA256 with it."""
    actual = hashlib.sha256((default_model_path() / "manifest.json").read_bytes()).hexdigest()
    assert actual == SHIPPED_MANIFEST_SHA256


def test_other_content_at_the_shipped_path_is_not_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trust follows the content: a bundle written where the shipped one lives is just an unsigned bundle."""
    fake = _copy(default_model_path(), tmp_path / "models" / "default")
    _edit_json(fake / "manifest.json", temperature=0.28)
    for module in ("edge.bundle", "edge.signing"):
        monkeypatch.setattr(f"{module}.default_model_path", lambda: fake, raising=False)
    with pytest.raises(TrustError, match="unsigned bundle") as info:
        check_trust(fake, None)
    assert info.value.exit_code == 2


def test_sign_refuses_a_broken_bundle(tmp_path: Path, test_bundle: Path, keys: dict) -> None:
    b = _copy(test_bundle, tmp_path / "b")
    (b / "head.onnx").write_bytes(b"garbage")
    with pytest.raises(BundleError, match="sha256 mismatch"):
        sign_bundle(b, keys["ground"].private)
    assert not (b / SIGNATURE).exists()


def test_key_files(tmp_path: Path, keys: dict) -> None:
    k = keys["ground"]
    assert stat.S_IMODE(k.private.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys["shared"].private.stat().st_mode) == 0o600
    assert load_signing_key(k.private).key_id == load_verify_key(k.public).key_id == k.key_id
    assert keys["ground"].key_id != keys["other"].key_id
    with pytest.raises(ConfigError, match="already exists"):
        generate_key(k.private.parent, "ground")
    with pytest.raises(ConfigError, match="private key; the rover trusts public keys only"):
        load_verify_key(k.private)
    with pytest.raises(ConfigError, match="is a public key"):
        load_signing_key(k.public)
    with pytest.raises(ConfigError, match="does not exist"):
        TrustedKeys.load(tmp_path / "nope")
    bad = tmp_path / "x.hmac"
    bad.write_text("-----BEGIN RAMAN-EDGE HMAC-SHA256 KEY-----\nAAAA\n-----END RAMAN-EDGE HMAC-SHA256 KEY-----\n")
    with pytest.raises(ConfigError, match="at least 16"):
        load_verify_key(bad)
    with pytest.raises(ConfigError, match="key name"):
        generate_key(tmp_path, "../evil")


def test_no_pickle_on_the_device_side() -> None:
    """No module of calibration, firmware_bridge or edge can unpickle anything."""
    forbidden = {"pickle", "cPickle", "_pickle", "dill", "joblib", "shelve", "marshal", "cloudpickle"}
    bad = []
    for package in ("calibration", "firmware_bridge", "edge"):
        for f in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(f.read_text(), filename=str(f))):
                names: set[str] = set()
                if isinstance(node, ast.Import):
                    names = {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = {node.module.split(".")[0]}
                elif isinstance(node, ast.keyword) and node.arg == "allow_pickle":
                    if not (isinstance(node.value, ast.Constant) and node.value.value is False):
                        bad.append(f"{f.relative_to(ROOT)}:{node.value.lineno} allow_pickle not False")
                if names & forbidden:
                    bad.append(f"{f.relative_to(ROOT)}:{node.lineno} imports {sorted(names & forbidden)}")
    assert not bad, "\n".join(bad)
