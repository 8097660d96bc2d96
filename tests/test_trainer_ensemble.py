"""Seed ensembles (``raman-edge train --ensemble N``): members, folding into one backbone + linear head, bundle."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from calibration.errors import ConfigError

torch = pytest.importorskip("torch")

FAST = dict(pool=4, n_pool=4, dense=16, epochs=3, batch_size=8, threads=1, seed=5)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory):
    from calibration.dataset import load_dataset
    from trainer.synthetic import write_synthetic_npz

    return load_dataset(write_synthetic_npz(tmp_path_factory.mktemp("data") / "synth.npz", n_classes=4,
                                            per_class=[8, 7, 6, 6], seed=4))


def test_ensemble_is_the_mean_of_its_members_trained_as_single_seeds(synthetic) -> None:
    from trainer.train import TrainConfig, predict_logits, preprocess_dataset, train

    result = train(synthetic, TrainConfig(**FAST, ensemble=3))
    x = preprocess_dataset(synthetic)
    # Member j is exactly `--seed S+j` alone (same validation split: the one of seed S) ...
    singles = [train(synthetic, TrainConfig(**{**FAST, "seed": FAST["seed"] + j}, calibrate=False),
                     validation_seed=FAST["seed"]) for j in range(3)]
    member_logits = [predict_logits(s.model, x) for s in singles]
    # ... and the folded network's logits are their mean, its features their concatenation.
    assert np.allclose(predict_logits(result.model, x), np.mean(member_logits, axis=0), atol=1e-5)
    assert not np.allclose(member_logits[0], member_logits[1], atol=1e-3)  # the seeds did differ
    with torch.no_grad():
        feats = result.model.backbone(torch.from_numpy(x)).numpy()
    assert feats.shape == (len(x), 3 * 16) == (len(x), result.model.feature_size)
    assert [m["seed"] for m in result.metrics["members"]] == [5, 6, 7]
    assert result.metrics["ensemble"] == 3 and len(result.history) == result.metrics["epochs_run"] == 9
    # one validation split held out from every member; the temperature is fitted there on the ensemble
    assert all(np.array_equal(s.val_index, result.val_index) for s in singles) and result.val_index.size
    calib = result.metrics["calibration"]
    assert calib["spectra"] == result.val_index.size and result.temperature == calib["temperature"]


def test_ensemble_bundle_runs_on_the_edge_and_takes_a_new_head(tmp_path: Path, synthetic) -> None:
    from edge.bundle import load_bundle
    from edge.classifier import Classifier
    from edge.head import read_linear_head
    from trainer.export import save_bundle
    from trainer.train import TrainConfig, predict_logits, preprocess_dataset, train

    result = train(synthetic, TrainConfig(**FAST, ensemble=2))
    bundle = save_bundle(tmp_path / "b", result, synthetic, command="test")
    manifest = json.loads((bundle.path / "manifest.json").read_text())
    assert manifest["architecture"]["params"]["ensemble"] == 2 and manifest["feature_size"] == 32
    w, b = read_linear_head(bundle.head_path.read_bytes())
    assert w.shape == (len(synthetic.classes), 32)
    x = preprocess_dataset(synthetic)
    edge_logits = Classifier(load_bundle(bundle.path)).logits(x)
    assert np.allclose(edge_logits, predict_logits(result.model, x), atol=1e-4)


def test_ensemble_progress_counts_every_member_epoch(synthetic) -> None:
    from trainer.train import TrainConfig, train

    seen: list[int] = []
    train(synthetic, TrainConfig(**FAST, ensemble=2, calibrate=False), on_epoch=lambda e: seen.append(e.epoch))
    assert seen == list(range(1, 7))


def test_ensemble_options_are_checked() -> None:
    from trainer.config import MAX_ENSEMBLE, TrainConfig
    from trainer.ensemble import EnsembleNet
    from trainer.models import build_model

    for bad in (0, MAX_ENSEMBLE + 1):
        with pytest.raises(ConfigError, match="ensemble"):
            TrainConfig(ensemble=bad).check()
    with pytest.raises(ConfigError, match="ensemble"):
        TrainConfig(ensemble=2, semi="sgan").check()
    a = build_model({"points": 64, "classes": 3, "pool": 2, "n_pool": 2, "dense": 8})
    with pytest.raises(ConfigError, match="at least 2"):
        EnsembleNet([a])
    other = build_model({"points": 64, "classes": 4, "pool": 2, "n_pool": 2, "dense": 8})
    with pytest.raises(ConfigError, match="share"):
        EnsembleNet([a, other])
    with pytest.raises(ValueError, match="ensemble"):
        build_model({"points": 64, "classes": 3, "ensemble": 2})


def test_cli_ensemble_option(tmp_path: Path, synthetic) -> None:
    from click.testing import CliRunner

    from trainer.cli import train

    args = ["--data", str(synthetic.path), "--out", str(tmp_path / "b"), "--ensemble", "2", "-m", "4", "-n", "4",
            "--dense", "8", "--epochs", "2", "--batch-size", "8", "--threads", "1"]
    r = CliRunner().invoke(train, args)
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["feature_size"] == 16 and manifest["training"]["config"]["ensemble"] == 2
    bad = CliRunner().invoke(train, args[:4] + ["--ensemble", "9"])
    assert bad.exit_code == 2 and "--ensemble" in bad.output


ARCHS_FAST = dict(epochs=3, batch_size=8, threads=1, seed=5)


def test_ensemble_of_archs_is_the_mean_of_its_members_trained_alone(synthetic) -> None:
    from trainer.ensemble import member_config
    from trainer.train import TrainConfig, predict_logits, preprocess_dataset, train

    config = TrainConfig(**ARCHS_FAST, ensemble_archs=("liu", "compact"), pool=4, n_pool=4, dense=16)
    result = train(synthetic, config)
    x = preprocess_dataset(synthetic)
    singles = [train(synthetic, member_config(config, j), validation_seed=config.seed) for j in range(2)]
    from trainer.archs import get_arch

    # liu's options for the liu member only; compact keeps its own defaults (its own "pool" among them)
    assert (singles[0].model.params["pool"], singles[0].model.params["n_pool"]) == (4, 4)
    assert singles[1].model.params["pool"] == get_arch("compact").resolve({})["pool"] != 4
    member_logits = [predict_logits(s.model, x) for s in singles]
    assert np.allclose(predict_logits(result.model, x), np.mean(member_logits, axis=0), atol=1e-5)
    params = result.model.params
    assert result.model.arch == "ensemble" and params["ensemble"] == 2
    assert [m["arch"] for m in params["members"]] == ["liu", "compact"]
    assert result.model.feature_size == sum(s.model.feature_size for s in singles)
    assert [(m["arch"], m["seed"]) for m in result.metrics["members"]] == [("liu", 5), ("compact", 5)]


def test_ensemble_of_archs_options_are_checked() -> None:
    from trainer.train import TrainConfig

    ok = TrainConfig(ensemble_archs=["liu", "fmcnn"]).check()
    assert ok.ensemble_archs == ("liu", "fmcnn") and ok.members == 2
    for bad, match in [(dict(ensemble_archs=("liu", "nope")), "nope"),
                       (dict(ensemble_archs=("liu", "liu")), "different"),
                       (dict(ensemble_archs=("liu",)), "2.."),
                       (dict(ensemble_archs=("liu", "fmcnn"), ensemble=2), "--ensemble N"),
                       (dict(ensemble_archs=("fmcnn", "liu")), "first member"),
                       (dict(ensemble_archs=("liu", "fmcnn"), semi="sgan"), "semi"),
                       (dict(ensemble_archs=("liu", "fmcnn"), shift_average=(10, 5)), "shift"),
                       (dict(arch="compact", ensemble_archs=("compact", "liu"), arch_options={"dense": 8}),
                        "--param")]:
        with pytest.raises(ConfigError, match=match):
            TrainConfig(**bad).check()


def test_cli_ensemble_archs_writes_one_bundle_the_edge_runs(tmp_path: Path, synthetic) -> None:
    from click.testing import CliRunner

    from edge.bundle import load_bundle
    from edge.classifier import Classifier
    from trainer.cli import train
    from trainer.train import preprocess_dataset

    args = ["--data", str(synthetic.path), "--out", str(tmp_path / "b"), "--ensemble-archs", "compact,liu",
            "--epochs", "2", "--batch-size", "8", "--threads", "1", "--quiet"]
    r = CliRunner().invoke(train, args)
    assert r.exit_code == 0, r.output + repr(r.exception)
    bundle = load_bundle(tmp_path / "b")
    arch = bundle.manifest["architecture"]
    assert arch["name"] == "ensemble" and [m["arch"] for m in arch["params"]["members"]] == ["compact", "liu"]
    assert bundle.manifest["training"]["config"]["arch"] == "compact"  # --arch is the first member's
    probs = Classifier(bundle).logits(preprocess_dataset(synthetic))
    assert probs.shape == (len(synthetic), len(synthetic.classes)) and np.isfinite(probs).all()
    bad = CliRunner().invoke(train, args[:4] + ["--ensemble-archs", "liu,nope"])
    assert bad.exit_code == 2 and "nope" in bad.output


def test_ensemble_cv_benchmark_scores_every_size_from_the_same_members(synthetic) -> None:
    import benchmarks.ensemble_cv as bench

    doc = bench.run(Path(synthetic.path), "cnn:liu:pool=4,n_pool=4,dense=8,val_fraction=0", members=2, folds=2,
                    seed=3, threads=1, epochs=2)
    assert doc["member_seeds"] == [3, 4] and len(doc["folds"]) == 2
    for row in doc["folds"]:
        assert row["ensemble_top1"][0] == row["member_top1"][0]  # an ensemble of one is its first member
        assert len(row["ensemble_top1"]) == 2 and 0.0 <= row["ensemble_top1"][1] <= 1.0
    assert sum(r["test_spectra"] for r in doc["folds"]) == len(synthetic)


def test_ensemble_cv_of_recipes_trains_one_member_per_recipe_and_keeps_their_logits(synthetic, tmp_path) -> None:
    import benchmarks.ensemble_cv as bench

    specs = ["cnn:liu:pool=4,n_pool=4,dense=8,val_fraction=0", "cnn:compact:val_fraction=0"]
    assert bench.member_plan(specs, members=5, seed=2) == [(specs[0], 2), (specs[1], 2)]
    assert bench.member_plan(specs[0], members=3, seed=2) == [(specs[0], 2), (specs[0], 3), (specs[0], 4)]
    doc = bench.run(Path(synthetic.path), specs, members=5, folds=2, seed=2, threads=1, epochs=2,
                    save_logits=tmp_path / "z.npz")
    assert doc["spec"] == specs and doc["members"] == 2 and doc["member_seeds"] == [2, 2]
    z = np.load(tmp_path / "z.npz")
    y_all = np.searchsorted(z["classes"], z["labels"])
    for row in doc["folds"]:
        logits, index = z[f"fold{row['fold']}_logits"], z[f"fold{row['fold']}_test_index"]
        assert logits.shape == (2, index.size, z["classes"].size)
        y = y_all[index]
        assert [float((m.argmax(1) == y).mean()) for m in logits] == row["member_top1"]
        assert float((logits.mean(0).argmax(1) == y).mean()) == row["ensemble_top1"][1]
    subsets = {tuple(r["members"]): r for r in bench.score_subsets(tmp_path / "z.npz", ["liu", "compact"])}
    assert set(subsets) == {("liu",), ("compact",), ("liu", "compact")}
    for j, name in enumerate(["liu", "compact"]):
        assert subsets[(name,)]["top1_folds"] == [r["member_top1"][j] for r in doc["folds"]]
    assert subsets[("liu", "compact")]["top1_folds"] == [r["ensemble_top1"][1] for r in doc["folds"]]


def test_ensemble_latency_rows_grow_with_members() -> None:
    import benchmarks.ensemble_cv as bench

    rows = bench.latency(2, points=128, classes=3, calls=20)
    assert [r["members"] for r in rows] == [1, 2]
    assert rows[1]["backbone_onnx_bytes"] > 1.8 * rows[0]["backbone_onnx_bytes"]
    assert all(r["p50_us"] > 0 for r in rows)
    mixed = bench.latency(0, points=256, classes=3, calls=20, archs=["liu", "compact"])
    assert [r["archs"] for r in mixed] == [["liu"], ["compact"], ["liu", "compact"]]
    assert mixed[2]["backbone_onnx_bytes"] > mixed[0]["backbone_onnx_bytes"] + 0.9 * mixed[1]["backbone_onnx_bytes"]
