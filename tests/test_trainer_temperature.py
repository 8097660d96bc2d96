"""Temperature scaling: the fit recovers a known T, lowers ECE, keeps the ranking, and the edge uses the stored T."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from calibration.errors import ConfigError
from edge.bundle import load_bundle, write_bundle
from edge.classifier import Classifier, softmax
from trainer.temperature import calibrate, confidence_summary, fit_temperature, temperature_brier, temperature_nll

from .conftest import calibrated_logits, underconfident_with_misses


@pytest.mark.parametrize("true_t", [3.0, 0.5])
def test_fit_recovers_known_temperature(true_t: float) -> None:
    z, y = calibrated_logits(6000, 8, seed=1)
    # Over-confident (logits x3) must come back as T ~ 3; under-confident (x0.5) as T ~ 0.5.
    t = fit_temperature(z * true_t, y)
    assert t == pytest.approx(true_t, rel=0.1)
    assert temperature_nll(z * true_t, y, t) < temperature_nll(z * true_t, y, 1.0)


@pytest.mark.parametrize("true_t", [3.0, 0.5])
def test_brier_fit_recovers_known_temperature(true_t: float) -> None:
    z, y = calibrated_logits(6000, 8, seed=3)
    t = fit_temperature(z * true_t, y, objective="brier")  # a proper scoring rule: the same T in the limit
    assert t == pytest.approx(true_t, rel=0.1)
    assert temperature_brier(z * true_t, y, t) < temperature_brier(z * true_t, y, 1.0)


def test_brier_is_not_steered_by_a_few_confident_misses() -> None:
    """An under-confident model plus 3 % confidently wrong spectra (the ±30 recipe's out-of-fold shape).

    The misses' NLL is huge, so the NLL fit softens the model further and ECE rises; the
    Brier fit sharpens it and ECE falls.  Measured on real out-of-fold logits: BENCHMARKS.md, stop 20.
    """
    z, y = underconfident_with_misses(3000, 10, seed=4)
    t_nll, t_brier = fit_temperature(z, y), fit_temperature(z, y, objective="brier")
    assert t_nll > 1.0 > t_brier
    ece = {t: confidence_summary(z, y, t)["ece"] for t in (1.0, t_nll, t_brier)}
    assert ece[t_nll] > ece[1.0] > ece[t_brier]
    t, c = calibrate(z, y, objective="brier")
    assert c["objective"] == "brier" and t == t_brier and c["brier_after"] < c["brier_before"]
    with pytest.raises(ConfigError, match="objective"):
        fit_temperature(z, y, objective="ece")


def test_scaling_lowers_ece_and_keeps_ranking() -> None:
    z, y = calibrated_logits(4000, 6, seed=2)
    t, c = calibrate(3.0 * z, y)
    assert c["temperature"] == t
    assert c["ece_after"] < 0.5 * c["ece_before"]
    assert c["ece_after"] < 0.03
    assert c["nll_after"] < c["nll_before"]
    assert c["mean_margin_after"] < c["mean_margin_before"]  # an over-confident model's margins shrink
    before, after = confidence_summary(3.0 * z, y, 1.0), confidence_summary(3.0 * z, y, t)
    assert before["top1"] == after["top1"]  # dividing logits by T > 0 never changes the argmax
    assert sum(b["n"] for b in after["reliability"]) == y.size and len(after["reliability"]) == 15


def test_fit_edge_cases() -> None:
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, int)) == 1.0
    with pytest.raises(ConfigError, match="class indices"):
        fit_temperature(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ConfigError, match=r"\(n, K\)"):
        fit_temperature(np.zeros((2, 3)), np.array([0, 1, 2]))
    with pytest.raises(ConfigError, match="NaN"):
        fit_temperature(np.array([[np.nan, 0.0]]), np.array([0]))
    with pytest.raises(ConfigError, match="bounds"):
        fit_temperature(np.zeros((2, 3)), np.array([0, 1]), bounds=(2.0, 1.0))
    # Everything right with a wide margin: NLL keeps falling as T -> 0, so the fit stops at the bound.
    logits = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert fit_temperature(logits, np.array([0, 1]), bounds=(0.1, 10.0)) == pytest.approx(0.1, rel=1e-2)


def test_edge_classifier_applies_the_bundle_temperature(tmp_path: Path, test_bundle: Path) -> None:
    """Same ONNX graphs, temperature 3 in the manifest: probabilities are softmax(logits / 3)."""
    base = load_bundle(test_bundle)
    hot = write_bundle(tmp_path / "t3", backbone_onnx=base.backbone_path.read_bytes(),
                       head_onnx=base.head_path.read_bytes(), classes=base.classes,
                       preprocessing=base.manifest["preprocessing"], feature_size=base.feature_size,
                       architecture=base.manifest["architecture"], training=base.manifest["training"],
                       temperature=3.0)
    assert json.loads((hot.path / "manifest.json").read_text())["temperature"] == 3.0
    x = np.random.default_rng(0).random((5, base.input_points)).astype(np.float32)
    c1, c3 = Classifier(base), Classifier(hot)
    logits = c1.logits(x)
    assert np.allclose(c3.predict_proba(x), softmax(logits / 3.0))
    assert not np.allclose(c3.predict_proba(x), c1.predict_proba(x))
    assert c3.predict_proba(x).max(axis=1).mean() < c1.predict_proba(x).max(axis=1).mean()


# --- through the trainer (tiny synthetic run) ---------------------------------------------------------------

FAST = dict(pool=4, n_pool=4, dense=16, epochs=3, batch_size=8, threads=1, seed=0)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("torch")
    from calibration.dataset import load_dataset
    from trainer.synthetic import write_synthetic_npz

    return load_dataset(write_synthetic_npz(tmp_path_factory.mktemp("data") / "synth.npz", n_classes=4,
                                            per_class=[8, 6, 5, 4], seed=3))


def test_training_fits_stores_and_edge_uses_temperature(tmp_path: Path, synthetic) -> None:
    from trainer.export import save_bundle
    from trainer.train import TrainConfig, predict_logits, preprocess_dataset, train

    result = train(synthetic, TrainConfig(**FAST))
    calib = result.metrics["calibration"]
    assert result.temperature == calib["temperature"] > 0 and result.temperature != 1.0
    assert calib["spectra"] == result.val_index.size > 0
    # The reported figures are those of the validation logits.
    val = synthetic.subset(result.val_index)
    v_logits = predict_logits(result.model, preprocess_dataset(val))
    y_val = np.searchsorted(np.asarray(result.classes), val.labels)
    assert calib["ece_before"] == pytest.approx(confidence_summary(v_logits, y_val, 1.0)["ece"], abs=1e-6)
    assert calib["ece_after"] == pytest.approx(confidence_summary(v_logits, y_val, result.temperature)["ece"],
                                               abs=1e-6)
    assert calib["nll_after"] <= calib["nll_before"] + 1e-9

    bundle = save_bundle(tmp_path / "b", result, synthetic, command="test")
    manifest = json.loads((bundle.path / "manifest.json").read_text())
    assert manifest["temperature"] == pytest.approx(result.temperature)
    assert manifest["training"]["metrics"]["calibration"]["ece_after"] == pytest.approx(calib["ece_after"])
    x = preprocess_dataset(synthetic)
    proba = Classifier(load_bundle(bundle.path)).predict_proba(x)
    torch_logits = predict_logits(result.model, x)
    assert np.allclose(proba, softmax(torch_logits / result.temperature), atol=1e-4)
    assert not np.allclose(proba, softmax(torch_logits), atol=1e-4)


def test_no_calibrate_keeps_temperature_one(synthetic) -> None:
    from trainer.train import TrainConfig, train

    result = train(synthetic, TrainConfig(**FAST, calibrate=False))
    assert result.temperature == 1.0 and "calibration" not in result.metrics


@pytest.mark.slow
def test_calibration_benchmark_quick(tmp_path: Path) -> None:
    """benchmarks/calibration_confidence.py --quick on the real Soysal spectra: a complete, consistent report."""
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    import subprocess
    import sys

    from .conftest import ROOT, shared_data

    data = shared_data("rruff-soysal", "raw_train.npz")
    out = tmp_path / "c.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "calibration_confidence.py"), "--quick",
                        "--data", str(data), "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["folds"] == 2 and len(doc["folds_detail"]) == 2
    assert doc["pooled"]["spectra"] == sum(f["test_spectra"] for f in doc["folds_detail"]) == 347
    for f in doc["folds_detail"]:
        assert f["before"]["top1"] == f["after"]["top1"] and f["temperature"] > 0
    assert "held-out ECE after scaling" in r.stdout


def test_crossfit_temperature_uses_out_of_fold_logits_only(synthetic) -> None:
    from sklearn.model_selection import StratifiedKFold

    from trainer.train import TrainConfig, predict_logits, preprocess_dataset, train

    cfg = TrainConfig(**FAST, val_fraction=0.0, calibrate_folds=3)
    result = train(synthetic, cfg)
    calib = result.metrics["calibration"]
    assert result.val_index.size == 0 and result.train_index.size == len(synthetic)
    assert calib["folds"] == 3 and calib["left_out"] == 0 and calib["spectra"] == len(synthetic)
    assert result.temperature == calib["temperature"] != 1.0
    # Calibration never touches the model: same weights as an uncalibrated run of the recipe.
    plain = train(synthetic, TrainConfig(**FAST, val_fraction=0.0, calibrate=False))
    x = preprocess_dataset(synthetic)
    np.testing.assert_array_equal(predict_logits(result.model, x), predict_logits(plain.model, x))
    # Recomputed by hand: each fold's model scores only the spectra it did not train on.
    sub = TrainConfig(**FAST, val_fraction=0.0, calibrate=False)
    logits = np.zeros((len(synthetic), len(synthetic.classes)))
    for tr, te in StratifiedKFold(3, shuffle=True, random_state=0).split(x, synthetic.labels):
        logits[te] = predict_logits(train(synthetic.subset(tr), sub).model, x[te])
    y = np.searchsorted(np.asarray(synthetic.classes), synthetic.labels)
    objective = cfg.calibrate_objective
    assert calib["objective"] == objective
    assert calib["temperature"] == pytest.approx(fit_temperature(logits, y, objective=objective), rel=1e-6)
    assert calib["temperature"] != pytest.approx(
        fit_temperature(predict_logits(result.model, x), y, objective=objective), rel=1e-3)


def test_crossfit_leaves_out_a_mineral_no_fold_can_score(synthetic) -> None:
    from trainer.train import TrainConfig, train

    last = synthetic.classes[-1]
    keep = np.r_[np.nonzero(synthetic.labels != last)[0], np.nonzero(synthetic.labels == last)[0][:1]]
    single = synthetic.subset(np.sort(keep))
    result = train(single, TrainConfig(**FAST, val_fraction=0.0, calibrate_folds=3))
    calib = result.metrics["calibration"]
    assert calib["left_out"] == 1 and calib["spectra"] == len(single) - 1
    assert np.isfinite(result.temperature)


def test_crossfit_options_are_checked() -> None:
    from trainer.config import TrainConfig

    with pytest.raises(ConfigError, match="calibrate_folds"):
        TrainConfig(calibrate_folds=1).check()
    with pytest.raises(ConfigError, match="calibrate_folds"):
        TrainConfig(calibrate_folds=3, semi="contrastive").check()
