"""8-bit head weights (edge.quantization): the rounding, the graphs in ONNX Runtime, the classifier's rule."""
from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort
import pytest

from calibration.errors import ConfigError
from edge.bundle import load_bundle, write_bundle
from edge.classifier import Classifier, softmax
from edge.head import linear_head_onnx, read_linear_head
from edge.matcher import ReferenceMatcher, cosine_similarity, reference_matcher_onnx
from edge.quantization import (INT8_MIN_BYTES, block_size, dequantize_rows, int8_error_bound, int8_head_onnx,
                               quantize_rows, resolve_precision)


def _session(model: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"])


def _head(k: int, f: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 0.5, (k, f)).astype(np.float32), rng.normal(0, 0.1, k).astype(np.float32)


@pytest.mark.parametrize("f", [16, 40, 64, 100])
def test_rounding_is_within_half_a_step_and_keeps_zeros(f):
    w = _head(37, f)[0]
    w[3] = 0.0                       # an all-zero row
    w[5, : f // 2] = 0.0             # exact zeros inside a row
    block = block_size(f)
    q, scales, zps = quantize_rows(w, block)
    assert q.dtype == np.uint8 and q.shape == (37, -(-f // block), block)
    back = dequantize_rows(q, scales, zps, f)
    assert back.shape == w.shape
    step = np.repeat(scales, block, axis=1)[:, :f]
    assert (np.abs(back - w) <= step / 2 + 1e-7).all()
    assert (back[3] == 0).all() and (back[5, : f // 2] == 0).all()


def test_block_size_is_a_power_of_two_between_16_and_64():
    assert [block_size(f) for f in (8, 16, 31, 32, 63, 64, 192, 1000)] == [16, 16, 16, 32, 32, 64, 64, 64]


@pytest.mark.parametrize("k,f", [(300, 64), (50, 40), (2000, 192)])
def test_int8_head_logits_stay_within_the_bound_and_keep_the_winner(k, f):
    w, b = _head(k, f, seed=k)
    fp32 = linear_head_onnx(w, b)
    int8 = int8_head_onnx(fp32)
    rng = np.random.default_rng(1)
    x = np.abs(rng.normal(size=(64, f))).astype(np.float32)  # ReLU-like features
    want = _session(fp32).run(None, {"features": x})[0]
    got = _session(int8).run(None, {"features": x})[0]
    bound = int8_error_bound(x, w)
    assert got.shape == want.shape
    assert (np.abs(got - want) <= bound).all()
    assert np.abs(got - want).mean() < bound.mean() / 10  # the bound is loose, the error small
    # the winner changes only in near-ties (a mis-ordered scale or block would scramble it)
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9
    # a byte per weight (plus a scale and zero point per block) against four; padding costs when F is odd-sized
    assert len(int8) < len(fp32) * (0.35 if f % block_size(f) == 0 else 0.55)


def test_int8_head_refuses_what_is_not_a_linear_head():
    from calibration.errors import BundleError

    with pytest.raises(BundleError, match="not a readable ONNX model"):
        int8_head_onnx(b"not onnx")


def test_resolve_precision_rule():
    small, large = INT8_MIN_BYTES, INT8_MIN_BYTES + 1
    assert resolve_precision("auto", small) == "fp32"
    assert resolve_precision("auto", large) == "int8"
    assert resolve_precision("auto", large, ["CPUExecutionProvider"]) == "int8"
    assert resolve_precision("auto", large, ["CUDAExecutionProvider", "CPUExecutionProvider"]) == "fp32"
    assert resolve_precision("int8", 10) == "int8" and resolve_precision("fp32", 10**9) == "fp32"
    with pytest.raises(ConfigError, match="'int4' is not one of auto, fp32, int8"):
        resolve_precision("int4", 10)


def _bundle(tmp_path, w, b, temperature=1.0):
    base = load_bundle()
    return write_bundle(tmp_path / "m", backbone_onnx=base.backbone_path.read_bytes(),
                        head_onnx=linear_head_onnx(w, b), classes=[f"c{i}" for i in range(len(b))],
                        preprocessing=base.manifest["preprocessing"], feature_size=base.feature_size,
                        architecture={"name": "test", "params": {}}, training={}, temperature=temperature)


def test_classifier_quantises_a_large_head_and_agrees_with_float32(tmp_path, caplog):
    f = load_bundle().feature_size
    k = INT8_MIN_BYTES // (4 * f) + 1  # just over the rule's size
    w, b = _head(k, f, seed=3)
    bundle = _bundle(tmp_path, w, b, temperature=0.8)
    with caplog.at_level(logging.INFO, logger="edge.classifier"):
        auto = Classifier(bundle, top_k=3)
    assert auto.head_precision == "int8" and "8-bit weights" in caplog.text
    exact = Classifier(bundle, top_k=3, head_precision="fp32")
    assert exact.head_precision == "fp32"
    x = np.random.default_rng(4).random((8, bundle.input_points), dtype=np.float32)
    # classify and logits use the same (8-bit) weights
    pa = softmax(auto.logits(x), 0.8)
    for pred, row in zip(auto.classify(x), pa):
        np.testing.assert_allclose(pred.probabilities, np.sort(row)[::-1][:3], rtol=1e-4, atol=1e-6)
    # and differ from float32 by no more than the bound
    bound = int8_error_bound(exact.features(x), read_linear_head(bundle.head_path.read_bytes())[0])
    assert (np.abs(auto.logits(x) - exact.logits(x)) <= bound).all()
    assert not np.array_equal(auto.logits(x), exact.logits(x))  # really a different graph


def test_small_heads_stay_float32_and_int8_can_be_forced(tmp_path):
    w, b = _head(20, load_bundle().feature_size)
    bundle = _bundle(tmp_path, w, b)
    assert Classifier(bundle).head_precision == "fp32"
    forced = Classifier(bundle, head_precision="int8")
    assert forced.head_precision == "int8"
    x = np.random.default_rng(5).random((4, bundle.input_points), dtype=np.float32)
    assert [p.label for p in forced.classify(x)] == [p.label for p in Classifier(bundle).classify(x)]


def test_an_8bit_head_that_cannot_be_built_falls_back_to_float32(tmp_path, monkeypatch, caplog):
    import edge.quantization as q

    w, b = _head(20, load_bundle().feature_size)
    bundle = _bundle(tmp_path, w, b)

    def broken(head: bytes) -> bytes:
        raise RuntimeError("MatMulNBits not registered")

    monkeypatch.setattr(q, "int8_head_onnx", broken)
    with caplog.at_level(logging.INFO, logger="edge.classifier"):
        clf = Classifier(bundle, head_precision="int8")
    assert clf.head_precision == "fp32" and clf._selector is not None
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("8-bit head could not be used" in m and "MatMulNBits not registered" in m for m in warned)


def test_an_8bit_head_outside_the_bound_is_not_used(tmp_path, monkeypatch, caplog):
    """The check against the verified float32 head catches a wrong 8-bit graph."""
    import edge.quantization as q

    w, b = _head(20, load_bundle().feature_size)
    bundle = _bundle(tmp_path, w, b)
    real = q.int8_head_onnx
    monkeypatch.setattr(q, "int8_head_onnx", lambda head: real(linear_head_onnx(w * 1.5, b)))
    with caplog.at_level(logging.INFO, logger="edge.classifier"):
        clf = Classifier(bundle, head_precision="int8")
    assert clf.head_precision == "fp32"
    assert "outside the quantisation error bound" in caplog.text


def test_matcher_with_8bit_references_matches_cosine_similarity():
    f = 64
    rng = np.random.default_rng(6)
    ref = np.abs(rng.normal(size=(500, f))).astype(np.float32)
    x = np.abs(rng.normal(size=(16, f))).astype(np.float32)
    want = cosine_similarity(x, ref)
    got = _session(reference_matcher_onnx(ref, top=3, precision="int8")).run(["similarity"], {"features": x})[0]
    unit_x = x / np.linalg.norm(x, axis=1, keepdims=True)
    unit_r = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    assert (np.abs(got - want) <= int8_error_bound(unit_x, unit_r)).all()
    with pytest.raises(Exception, match="precision 'fp16'"):
        reference_matcher_onnx(ref, precision="fp16")


def test_matcher_auto_rule_follows_the_reference_bytes():
    bundle = load_bundle()
    f = bundle.feature_size
    k = INT8_MIN_BYTES // (4 * f) + 1
    ref = np.abs(np.random.default_rng(7).normal(size=(k, f))).astype(np.float32) + 1e-3
    labels = [f"c{i}" for i in range(k)]
    assert ReferenceMatcher(bundle, ref, labels).precision == "int8"
    assert ReferenceMatcher(bundle, ref[:100], labels[:100]).precision == "fp32"


def test_config_and_cli_carry_the_option(tmp_path):
    from click.testing import CliRunner

    from edge.cli import main
    from edge.config import load_config

    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('[model]\nhead_precision = "int4"\n')
    with pytest.raises(ConfigError, match="head_precision"):
        load_config(cfg_file)
    cfg_file.write_text('[model]\nhead_precision = "int8"\n')
    assert load_config(cfg_file)["model.head_precision"] == "int8"
    r = CliRunner().invoke(main, ["run", "--head-precision", "int4"])
    assert r.exit_code == 2 and "int4" in r.output


def test_a_head_that_is_not_one_gemm_runs_float32(test_bundle, caplog):
    """The test bundle's head is MatMul + Add: no 8-bit rewrite, the float32 head runs, the log says why."""
    bundle = load_bundle(test_bundle)
    with caplog.at_level(logging.INFO, logger="edge.classifier"):
        clf = Classifier(bundle, head_precision="int8")
    assert clf.head_precision == "fp32" and clf._selector is not None
    assert "not a single Gemm" in caplog.text
