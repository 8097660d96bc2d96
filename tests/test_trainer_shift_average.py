"""Test-time shift averaging inside the bundle (``--shift-average``): graphs, export, edge, head add."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from calibration.dataset import load_dataset  # noqa: E402
from calibration.errors import BundleError, ConfigError  # noqa: E402
from edge.bundle import load_bundle  # noqa: E402
from edge.head import add_head, head_copies, head_logits, read_linear_head, shift_mean_head_onnx  # noqa: E402
from trainer.export import save_bundle  # noqa: E402
from trainer.models import build_model  # noqa: E402
from trainer.shift_average import ProbabilityMeanHead, ShiftAveragedNet, ShiftCopies  # noqa: E402
from trainer.tolerance import parse_window, window_offsets  # noqa: E402
from trainer.synthetic import write_synthetic_npz  # noqa: E402
from trainer.train import TrainConfig, predict_logits, preprocess_dataset, train  # noqa: E402

FAST = dict(pool=4, n_pool=4, dense=16, epochs=3, batch_size=8, threads=1, seed=0, val_fraction=0.0)


def _shift(x: np.ndarray, s: int) -> np.ndarray:
    """Reference: ``y[i] = x[i - s]``, the vacated end filled with the edge value."""
    idx = np.clip(np.arange(x.shape[1]) - s, 0, x.shape[1] - 1)
    return x[:, idx]


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("sa")
    return (load_dataset(write_synthetic_npz(d / "old.npz", n_classes=4, per_class=[8, 6, 5, 5], seed=7)),
            load_dataset(write_synthetic_npz(d / "new.npz", n_classes=6, per_class=5, seed=9)))


@pytest.fixture(scope="module")
def bundle(data, tmp_path_factory):
    r = train(data[0], TrainConfig(**FAST, shift_average=(10, 5), calibrate=False))
    return r, save_bundle(tmp_path_factory.mktemp("b") / "sa", r, data[0], command="test")


def test_window_offsets_and_limits():
    assert window_offsets(40, 20) == [-40, -20, 0, 20, 40]
    assert window_offsets(7, 3) == [-6, -3, 0, 3, 6]
    for bad in ((0, 5), (10, 0), (201, 50), (40, 1)):
        with pytest.raises(ConfigError, match="shift_average"):
            window_offsets(*bad)
    assert parse_window("40:20") == (40, 20)
    for text in ("40", "40:", "a:b", "40:20:1"):
        with pytest.raises(ConfigError, match="HALF_WIDTH:STEP"):
            parse_window(text)


def test_copies_are_edge_filled_shifts_side_by_side():
    inner = torch.nn.Sequential(torch.nn.Linear(50, 3))
    net = ShiftCopies(inner, [-4, 0, 7], points=50, features=3).eval()
    x = np.random.default_rng(0).random((5, 50), dtype=np.float32)
    with torch.no_grad():
        got = net(torch.from_numpy(x)).numpy()
        want = np.concatenate([inner(torch.from_numpy(_shift(x, s))).numpy() for s in (-4, 0, 7)], axis=1)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_head_is_the_log_of_the_mean_probability():
    lin = torch.nn.Linear(3, 4)
    head = ProbabilityMeanHead(lin, copies=2).eval()
    f = np.random.default_rng(1).normal(size=(6, 6)).astype(np.float32)
    with torch.no_grad():
        out = head(torch.from_numpy(f)).numpy()
        p = [_softmax(lin(torch.from_numpy(f[:, 3 * s:3 * s + 3])).numpy()) for s in (0, 1)]
    np.testing.assert_allclose(np.exp(out), (p[0] + p[1]) / 2, atol=1e-6)
    # numpy (the device's head add) and the ONNX head written from numpy say the same
    w, b = lin.weight.detach().numpy(), lin.bias.detach().numpy()
    np.testing.assert_allclose(head_logits(f, w, b, 2), out, atol=1e-5)
    sess = ort.InferenceSession(shift_mean_head_onnx(w, b, 2), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"features": f})[0], out, atol=1e-5)


def test_bundle_scores_the_mean_of_the_inner_models_probabilities(bundle, data):
    r, b = bundle
    assert isinstance(r.model, ShiftAveragedNet) and b.feature_size == 5 * 16
    assert b.manifest["architecture"]["head"] == {"kind": "shift-mean", "copies": 5}
    assert b.manifest["architecture"]["params"]["shift_average"]["offsets"] == [-10, -5, 0, 5, 10]
    assert head_copies(b) == 5 and b.head_info == {"kind": "shift-mean", "copies": 5}
    x = preprocess_dataset(data[0])
    inner = torch.nn.Sequential()  # the trained network alone, on explicitly shifted spectra
    inner.backbone, inner.head = r.model.backbone.inner, r.model.head.linear
    with torch.no_grad():
        p = np.mean([_softmax(inner.head(inner.backbone(torch.from_numpy(_shift(x, s)))).numpy())
                     for s in (-10, -5, 0, 5, 10)], axis=0)
    sb = ort.InferenceSession(str(b.backbone_path), providers=["CPUExecutionProvider"])
    sh = ort.InferenceSession(str(b.head_path), providers=["CPUExecutionProvider"])
    logits = sh.run(None, {"features": sb.run(None, {"spectrum": x})[0]})[0]
    np.testing.assert_allclose(np.exp(logits), p, atol=1e-5)
    np.testing.assert_allclose(predict_logits(r.model, x), logits, atol=1e-5)
    with pytest.raises(BundleError, match="single Gemm"):  # the int8 and synthetic-support paths refuse it
        read_linear_head(b.head_path.read_bytes())


def test_head_add_keeps_the_backbone_and_the_averaging(bundle, data, tmp_path):
    _, parent = bundle
    new = data[1].subset(np.flatnonzero(np.isin(data[1].labels, ["mineral_04", "mineral_05"])))
    child = add_head(parent, new, tmp_path / "child")
    assert child.manifest["files"]["backbone"]["sha256"] == parent.manifest["files"]["backbone"]["sha256"]
    assert child.manifest["architecture"]["head"]["kind"] == "shift-mean" and head_copies(child) == 5
    assert child.classes == parent.classes + ["mineral_04", "mineral_05"]
    f = ort.InferenceSession(str(child.backbone_path), providers=["CPUExecutionProvider"]).run(
        None, {"spectrum": preprocess_dataset(new)})[0]
    z = ort.InferenceSession(str(child.head_path), providers=["CPUExecutionProvider"]).run(None, {"features": f})[0]
    np.testing.assert_allclose(np.exp(z).sum(1), 1.0, atol=1e-5)
    assert (np.array(child.classes)[z.argmax(1)] == new.labels).mean() >= 0.8
    assert child.manifest["training"]["metrics"]["train_top1_old_exemplars"] >= 0.75
    loaded = load_bundle(child.path)
    assert loaded.model_id == child.model_id


def test_refused_combinations_and_rebuild():
    for kw in ({"ensemble": 2}, {"semi": "sgan"}):
        with pytest.raises(ConfigError, match="shift_average"):
            TrainConfig(shift_average=(10, 5), **kw).check()
    with pytest.raises(ConfigError, match="shift_average"):
        TrainConfig(shift_average=(10,)).check()
    with pytest.raises(ValueError, match="shift-averaged"):
        build_model({"points": 1392, "classes": 3, "shift_average": {"window": [10, 5]}})


def test_daemon_classifier_runs_the_averaged_bundle_in_float32(bundle, data, monkeypatch, caplog):
    """The daemon's classifier gives the averaged probabilities; auto precision never tries 8-bit
    weights on a head that is not one Gemm, however large (no fallback warning)."""
    import edge.quantization
    from edge.classifier import Classifier

    _, b = bundle
    monkeypatch.setattr(edge.quantization, "INT8_MIN_BYTES", 0)  # every linear head would go 8-bit
    with caplog.at_level("WARNING"):
        clf = Classifier(b, head_precision="auto")
    assert clf.head_precision == "fp32" and "8-bit" not in caplog.text
    x = preprocess_dataset(data[0])
    sb = ort.InferenceSession(str(b.backbone_path), providers=["CPUExecutionProvider"])
    sh = ort.InferenceSession(str(b.head_path), providers=["CPUExecutionProvider"])
    want = _softmax(sh.run(None, {"features": sb.run(None, {"spectrum": x})[0]})[0] / b.temperature)
    np.testing.assert_allclose(clf.predict_proba(x), want, atol=1e-5)
    top = clf.classify(x)
    assert [p.label for p in top] == list(np.asarray(b.classes)[want.argmax(1)])
    np.testing.assert_allclose([p.probabilities[0] for p in top], want.max(1), atol=1e-5)
