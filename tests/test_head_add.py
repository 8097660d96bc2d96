"""Head swap (edge.head): the softmax fit, support, add_head and its refusals, on synthetic minerals."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from calibration.dataset import Dataset
from calibration.errors import BundleError, InputError
from edge.bundle import load_bundle
from edge.head import (Support, add_head, add_support, fit_softmax_head, herding, linear_head_onnx, load_support,
                       read_linear_head)

from .head_helpers import NEW, OLD, accuracy, bare_bundle, save_npz, synthetic_split


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Synthetic data files, a parent bundle (5 minerals, with support) and a child (+3 minerals)."""
    t = tmp_path_factory.mktemp("head")
    parts = synthetic_split()
    files = {k: save_npz(t / f"{k}.npz", v) for k, v in parts.items()}
    bare = bare_bundle(t / "bare", OLD)
    parent = add_head(bare, files["old_train"], t / "parent", replace=True)
    child = add_head(parent, files["new_train"], t / "child")
    return {"dir": t, "parts": parts, "files": files, "bare": bare, "parent": parent, "child": child}


# ----------------------------------------------------------------------------- the fit

def _blobs(rng: np.random.Generator, counts: list[int], f: int = 6, spread: float = 0.6):
    centres = rng.normal(0, 3.0, (len(counts), f))
    x = np.concatenate([centres[c] + spread * rng.standard_normal((n, f)) for c, n in enumerate(counts)])
    y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    return x, y, centres


def test_fit_separates_blobs_and_runs_as_onnx(rng: np.random.Generator) -> None:
    import onnxruntime as ort

    x, y, centres = _blobs(rng, [30, 30, 30, 30])
    x = x * np.array([1, 10, 100, 0.1, 1, 1]) + 5.0  # badly scaled features: standardised inside the fit
    w, b = fit_softmax_head(x, y, 4)
    assert w.shape == (4, 6) and b.shape == (4,)
    yt = np.repeat(np.arange(4), 20)
    xt = (centres[yt] + 0.6 * rng.standard_normal((yt.size, 6))) * np.array([1, 10, 100, 0.1, 1, 1]) + 5.0
    assert ((xt @ w.T + b).argmax(1) == yt).mean() > 0.95
    sess = ort.InferenceSession(linear_head_onnx(w, b), providers=["CPUExecutionProvider"])
    onnx_logits = sess.run(None, {"features": xt.astype(np.float32)})[0]
    np.testing.assert_allclose(onnx_logits, xt.astype(np.float32) @ w.T + b, rtol=1e-4, atol=1e-3)
    w2, b2 = read_linear_head(linear_head_onnx(w, b))
    np.testing.assert_array_equal(w2, w)


def test_fit_balanced_weights_help_the_minority_class() -> None:
    rng = np.random.default_rng(0)
    x, y, _ = _blobs(rng, [200, 6], f=4, spread=2.5)
    xt, yt, _ = _blobs(np.random.default_rng(0), [200, 200], f=4, spread=2.5)  # same centres (same seed)
    recall = {}
    for cw in ("balanced", None):
        w, b = fit_softmax_head(x, y, 2, class_weight=cw)
        recall[cw] = ((xt @ w.T + b).argmax(1)[yt == 1] == 1).mean()
    assert recall["balanced"] > recall[None]


def test_fit_gradient_is_zero_at_the_optimum(rng: np.random.Generator) -> None:
    """The returned weights minimise the documented objective (checked by perturbing them)."""
    from scipy.special import log_softmax

    x, y, _ = _blobs(rng, [15, 15, 15], f=3, spread=2.0)
    l2 = 0.05
    w, b = fit_softmax_head(x, y, 3, l2=l2, class_weight=None, tol=1e-9)
    sd = x.std(0)

    def objective(w_, b_):
        # the penalty is on the weights of standardised features: w_std = w * sd
        return -log_softmax(x @ w_.T + b_, axis=1)[np.arange(y.size), y].mean() + 0.5 * l2 * ((w_ * sd) ** 2).sum()

    base = objective(w.astype(np.float64), b.astype(np.float64))
    for _ in range(5):
        dw = rng.normal(0, 1e-2, w.shape)
        assert objective(w + dw, b) >= base - 1e-7
        assert objective(w - dw, b) >= base - 1e-7


def test_fit_refuses_bad_input() -> None:
    with pytest.raises(InputError, match="labels must lie"):
        fit_softmax_head(np.zeros((3, 2)), np.array([0, 1, 5]), 2)
    with pytest.raises(InputError, match="NaN"):
        fit_softmax_head(np.array([[0.0, np.nan], [1, 1]]), np.array([0, 1]), 2)
    with pytest.raises(InputError, match="non-empty"):
        fit_softmax_head(np.zeros((0, 2)), np.zeros(0, int), 2)


def test_herding_picks_exemplars_whose_mean_tracks_the_class_mean(rng: np.random.Generator) -> None:
    x = rng.standard_normal((200, 5)) + 3.0
    pick = herding(x, 10)
    assert len(set(pick.tolist())) == 10
    random_err = np.mean([np.linalg.norm(x[rng.choice(200, 10, replace=False)].mean(0) - x.mean(0)) for _ in range(50)])
    assert np.linalg.norm(x[pick].mean(0) - x.mean(0)) < 0.5 * random_err
    assert herding(x[:4], 10).tolist() == [0, 1, 2, 3]


# ----------------------------------------------------------------------------- add_head

def test_head_add_keeps_backbone_and_learns_new_classes_without_forgetting(world: dict) -> None:
    parent, child, parts = world["parent"], world["child"], world["parts"]
    assert child.backbone_path.read_bytes() == parent.backbone_path.read_bytes()
    assert child.manifest["files"]["backbone"]["sha256"] == parent.manifest["files"]["backbone"]["sha256"]
    assert child.classes == OLD + NEW
    p = child.manifest["parent"]
    assert p["model_id"] == parent.model_id and p["classes_added"] == NEW and p["replaced"] is False
    assert p["backbone_sha256"] == parent.manifest["files"]["backbone"]["sha256"]
    assert child.model_id != parent.model_id
    old_before = accuracy(parent, parts["old_test"])
    assert old_before >= 0.9
    assert accuracy(child, parts["old_test"]) >= old_before - 0.1  # no collapse of the old classes
    assert accuracy(child, parts["new_test"]) >= 0.9
    assert child.temperature > 0 and "held-out" in child.manifest["training"]["temperature_source"]


def test_without_support_the_old_classes_would_be_forgotten(world: dict) -> None:
    """Why the support part exists: a head fitted on the new spectra alone never predicts an old class."""
    from edge.head import extract_features

    child = world["child"]
    x, y, axis = world["parts"]["new_train"]
    feats = extract_features(child, x, axis)
    idx = {c: i for i, c in enumerate(child.classes)}
    w, b = fit_softmax_head(feats, np.array([idx[c] for c in y]), len(child.classes))
    xo, yo, _ = world["parts"]["old_test"]
    pred = (extract_features(child, xo, axis) @ w.T + b).argmax(1)
    assert (np.asarray(child.classes)[pred] == yo).mean() < 0.3


def test_support_covers_old_and_new_classes_and_chains(world: dict) -> None:
    child = world["child"]
    sup = load_support(child)
    assert sup.classes == OLD + NEW
    assert sup.counts.tolist() == [10] * 8
    assert set(sup.exemplar_labels.tolist()) == set(range(8))
    assert child.manifest["support"]["classes"] == 8
    # a second swap on the child works from the child's support alone
    t = world["dir"]
    x, y, axis = synthetic_split(seed=11, train=8, test=0)["new_train"]  # other minerals, renamed
    save_npz(t / "more.npz", (x, np.char.add("extra_", y), axis))
    grand = add_head(child, t / "more.npz", t / "grand")
    assert grand.classes[:8] == OLD + NEW and len(grand.classes) == 11
    assert accuracy(grand, world["parts"]["old_test"]) >= 0.8


def test_support_round_trip_and_validation(world: dict) -> None:
    sup = load_support(world["child"])
    again = Support.from_bytes(sup.to_bytes())
    assert again.classes == sup.classes
    np.testing.assert_allclose(again.exemplars, sup.exemplars, atol=1e-3)
    with pytest.raises(BundleError, match="not a readable support file"):
        Support.from_bytes(b"garbage", "x/support.npz")


def test_replace_trains_a_head_for_the_new_classes_alone(world: dict) -> None:
    out = add_head(world["bare"], world["files"]["new_train"], world["dir"] / "replaced", replace=True)
    assert out.classes == NEW
    assert out.manifest["parent"]["replaced"] is True
    assert accuracy(out, world["parts"]["new_test"]) >= 0.9


def test_add_support_keeps_model_id_and_files(world: dict) -> None:
    bare = load_bundle(world["bare"])
    # the bare bundle's head is untrained; give it support from the old training spectra
    out = add_support(bare, world["files"]["old_train"], world["dir"] / "bare_sup")
    assert out.model_id == bare.model_id
    assert out.head_path.read_bytes() == bare.head_path.read_bytes()
    assert load_support(out).classes == OLD
    with pytest.raises(InputError, match="no spectra for 5"):
        add_support(bare, world["files"]["new_train"], world["dir"] / "nope")


# ----------------------------------------------------------------------------- refusals

def test_parent_without_support_is_refused_with_the_remedy(world: dict) -> None:
    with pytest.raises(BundleError, match=r"no 'support' part.*raman-edge head support"):
        add_head(world["bare"], world["files"]["new_train"], world["dir"] / "x")
    assert not (world["dir"] / "x").exists()


def test_clashing_classes_are_refused(world: dict) -> None:
    with pytest.raises(InputError, match=r"old_train.npz: 5 class\(es\) already in model"):
        add_head(world["parent"], world["files"]["old_train"], world["dir"] / "x")
    x, y, axis = world["parts"]["new_train"]
    ds = Dataset(x, np.where(y == NEW[0], OLD[0].upper(), y), axis, path=Path("upper.npz"))
    with pytest.raises(InputError, match="only by case"):
        add_head(world["parent"], ds, world["dir"] / "x")
    ds = Dataset(x, np.where(y == NEW[0], "Quartz", np.where(y == NEW[1], "quartz ", y)), axis)
    with pytest.raises(InputError, match="differ only by case or spaces"):
        add_head(world["parent"], ds, world["dir"] / "x")


def test_nonfinite_rows_are_skipped_and_counted(world: dict) -> None:
    x, y, axis = world["parts"]["new_train"]
    x = x.copy()
    x[[0, 5], 100] = np.nan
    f = save_npz(world["dir"] / "nan.npz", (x, y, axis))
    out = add_head(world["parent"], f, world["dir"] / "nan_child")
    d = out.manifest["training"]["data"]
    assert d["skipped_nonfinite"] == 2 and d["skipped_rows"] == [0, 5] and d["used"] == len(y) - 2
    x[:] = np.nan
    f = save_npz(world["dir"] / "allnan.npz", (x, y, axis))
    with pytest.raises(InputError, match=r"allnan.npz: all \d+ spectra contain NaN"):
        add_head(world["parent"], f, world["dir"] / "x")


def test_wrong_axis_and_empty_data_are_refused(world: dict) -> None:
    x, y, _ = world["parts"]["new_train"]
    nm = np.linspace(532.0, 600.0, x.shape[1])  # a wavelength axis, not Raman shift
    f = save_npz(world["dir"] / "nm.npz", (x, y, nm))
    with pytest.raises(InputError, match=r"nm.npz: cannot be preprocessed .*expected Raman shift"):
        add_head(world["parent"], f, world["dir"] / "x")
    np.savez(world["dir"] / "empty.npz", spectra=np.zeros((0, 10), np.float32), labels=np.array([], str),
             wavenumbers=np.arange(10.0))
    with pytest.raises(InputError, match="empty"):
        add_head(world["parent"], world["dir"] / "empty.npz", world["dir"] / "x")
    ds = Dataset(x, np.where(np.arange(len(y)) == 3, " ", y), world["parts"]["new_train"][2])
    with pytest.raises(InputError, match="empty label .*row 3"):
        add_head(world["parent"], ds, world["dir"] / "x")


def test_corrupt_parent_is_refused(world: dict) -> None:
    bad = world["dir"] / "corrupt"
    shutil.copytree(world["parent"].path, bad)
    with open(bad / "support.npz", "r+b") as fh:
        fh.seek(40)
        fh.write(b"\x00\x01\x02")
    with pytest.raises(BundleError, match=r"support.npz: sha256 mismatch"):
        add_head(bad, world["files"]["new_train"], world["dir"] / "x")
    m = json.loads((world["parent"].path / "manifest.json").read_text())
    shutil.rmtree(bad)
    shutil.copytree(world["parent"].path, bad)
    (bad / "head.onnx").write_bytes(b"not onnx")
    with pytest.raises(BundleError, match="head.onnx"):
        add_head(bad, world["files"]["new_train"], world["dir"] / "x")
    assert m["files"]["support"]["path"] == "support.npz"


def test_unknown_option_is_refused(world: dict) -> None:
    from calibration.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown option"):
        add_head(world["parent"], world["files"]["new_train"], world["dir"] / "x", learning_rate=3)


def test_synthetic_support_keeps_old_classes_better_than_nothing(world: dict) -> None:
    """The opt-in fallback for a parent without support: old-class features inverted from its head."""
    t = world["dir"]
    shutil.copytree(world["parent"].path, t / "nosup")
    m = json.loads((t / "nosup" / "manifest.json").read_text())
    del m["files"]["support"], m["support"]
    (t / "nosup" / "manifest.json").write_text(json.dumps(m))
    (t / "nosup" / "support.npz").unlink()
    out = add_head(t / "nosup", world["files"]["new_train"], t / "syn", synthetic_support=True)
    assert out.manifest["training"]["fit"]["old_support"].startswith("synthetic")
    assert out.manifest["support"]["synthetic_classes"] == len(OLD)
    assert load_support(out).meta["synthetic_classes"] == OLD
    assert accuracy(out, world["parts"]["old_test"]) >= 0.6
    assert accuracy(out, world["parts"]["new_test"]) >= 0.8


def test_one_class_replace_is_refused_and_perfect_heldout_keeps_t_at_one(world: dict) -> None:
    x, y, axis = world["parts"]["new_train"]
    one = Dataset(x[y == NEW[0]], y[y == NEW[0]], axis, path=Path("one.npz"))
    with pytest.raises(InputError, match="one.npz: holds one class"):
        add_head(world["bare"], one, world["dir"] / "x", replace=True)
    # the synthetic new minerals are easy: every held-out spectrum is right, T stays 1.0
    out = add_head(world["parent"], one, world["dir"] / "one_child")
    tr = out.manifest["training"]
    assert tr["metrics"]["heldout_top1"] == 1.0
    assert out.temperature == 1.0 and "not determined" in tr["temperature_source"]
