"""Bundle loading refuses every kind of damage with a message naming the file."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from calibration.errors import BundleError
from edge.bundle import default_model_path, load_bundle
from edge.classifier import Classifier

from .conftest import BANDS, synth


@pytest.fixture
def bundle_copy(test_bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(test_bundle, dst)
    return dst


def _edit_manifest(path: Path, **changes: object) -> None:
    m = json.loads((path / "manifest.json").read_text())
    m.update(changes)
    (path / "manifest.json").write_text(json.dumps(m))


def test_loads_and_classifies(test_bundle: Path, rng: np.random.Generator) -> None:
    b = load_bundle(test_bundle)
    clf = Classifier(b, top_k=3)
    pre = b.preprocessor
    for mineral in BANDS:
        axis = np.linspace(150, 1700, 900)
        from calibration.spectrum import Spectrum

        x = pre(Spectrum(synth(mineral, axis, rng), axis))
        pred = clf.classify(x)[0]
        assert pred.label == mineral
        assert 0 <= pred.margin <= pred.probability <= 1
        assert len(pred.classes) == 3


def test_corrupt_onnx_byte_is_caught_by_hash(bundle_copy: Path) -> None:
    f = bundle_copy / "head.onnx"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"head\.onnx.*sha256 mismatch"):
        load_bundle(bundle_copy)


def test_garbage_onnx_with_matching_hash_is_refused(bundle_copy: Path) -> None:
    import hashlib

    garbage = b"\x00not an onnx model" * 10
    (bundle_copy / "backbone.onnx").write_bytes(garbage)
    m = json.loads((bundle_copy / "manifest.json").read_text())
    m["files"]["backbone"]["sha256"] = hashlib.sha256(garbage).hexdigest()
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="backbone.onnx"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize(
    "change, pattern",
    [
        ({"format_version": 99}, "format_version 99"),
        ({"format": "something-else"}, "'format'"),
        ({"classes": ["A", "A", "B", "C"]}, "unique"),
        ({"classes": ["A", "B"]}, r"output .* width 2"),
        ({"feature_size": 3}, r"width 3"),
        ({"input": {"points": 10}}, "input points 10"),
        ({"temperature": -1}, "temperature"),
    ],
)
def test_manifest_mismatch_is_refused(bundle_copy: Path, change: dict, pattern: str) -> None:
    _edit_manifest(bundle_copy, **change)
    with pytest.raises(BundleError, match=pattern):
        load_bundle(bundle_copy)


def test_missing_pieces(bundle_copy: Path, tmp_path: Path) -> None:
    (bundle_copy / "head.onnx").unlink()
    with pytest.raises(BundleError, match="head file is missing"):
        load_bundle(bundle_copy)
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="manifest.json: missing"):
        load_bundle(tmp_path / "empty")
    (tmp_path / "empty" / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(tmp_path / "empty")


def test_shipped_default_model_loads_and_classifies_synthetic(rng: np.random.Generator) -> None:
    """The bundle inside the package loads and classifies calcite/quartz without error (not its accuracy)."""
    if not (default_model_path() / "manifest.json").exists():
        pytest.fail("the default model is not shipped in edge/models/default")
    b = load_bundle()
    assert "Calcite" in b.classes and "Quartz" in b.classes
    clf = Classifier(b)
    from calibration.spectrum import Spectrum

    axis = np.linspace(100, 1800, 1024)
    for mineral in ("Calcite", "Quartz"):
        x = b.preprocessor(Spectrum(synth(mineral, axis, rng), axis))
        pred = clf.classify(x)[0]
        assert pred.label in b.classes
        assert np.isclose(sum(clf.predict_proba(x)[0]), 1.0, atol=1e-5)


def test_extra_file_parts_are_hashed_verified_and_installed(tmp_path):
    """A bundle may carry more files (a head's support set); each is hashed in the manifest and checked."""
    import json as _json

    from edge.bundle import load_bundle as _load, write_bundle as _write
    from edge.registry import Registry

    src = _load()
    kw = dict(backbone_onnx=src.backbone_path.read_bytes(), head_onnx=src.head_path.read_bytes(),
              classes=src.classes, preprocessing=src.manifest["preprocessing"], feature_size=src.feature_size,
              architecture=src.manifest["architecture"], training={})
    b = _write(tmp_path / "b", **kw, extra_files={"support": ("support.npz", b"abc")}, extra={"head": {"kind": "x"}})
    assert b.parts == ["backbone", "head", "support"] and b.part_path("support").read_bytes() == b"abc"
    assert b.manifest["head"] == {"kind": "x"}
    reg = Registry(tmp_path / "state")
    res = reg.install(b.path, allow_unsigned=True)
    assert (reg.models_dir / res.entry.name / "support.npz").read_bytes() == b"abc"
    (b.path / "support.npz").write_bytes(b"abd")  # one byte changed
    with pytest.raises(BundleError, match="support.npz.*sha256 mismatch"):
        _load(b.path)
    m = _json.loads((b.path / "manifest.json").read_text())
    m["files"]["support"]["path"] = "../escape.npz"
    (b.path / "manifest.json").write_text(_json.dumps(m))
    with pytest.raises(BundleError, match="must stay inside the bundle"):
        _load(b.path)
    for bad in ({"support": ("head.onnx", b"")}, {"support": ("a/b.npz", b"")}, {"backbone": ("x.npz", b"")}):
        with pytest.raises(BundleError, match="bad extra file part"):
            _write(tmp_path / "c", **kw, extra_files=bad)
    with pytest.raises(BundleError, match="clashes"):
        _write(tmp_path / "c", **kw, extra={"classes": []})
