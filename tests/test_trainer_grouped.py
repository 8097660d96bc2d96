"""Training grouped by RRUFF specimen: validation split, early stopping and temperature folds.

The same specimen is measured many times (orientations, lasers); a split that puts one
of its spectra in training and another in validation judges the model on a twin of what
it trained on.  These tests train real (tiny) networks on data with specimen ids and
check that no specimen straddles a split, and that data without ids trains exactly as
before.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

import trainer.train as train_module  # noqa: E402
from calibration.dataset import NO_SPECIMEN, Dataset, load_dataset  # noqa: E402
from calibration.errors import ConfigError  # noqa: E402
from trainer.synthetic import synthetic_spectra  # noqa: E402
from trainer.train import (MIN_CLASS_FOR_TRAIN, MIN_CLASS_FOR_VAL, TrainConfig, grouped_crossfit_folds,  # noqa: E402
                           predict_logits, preprocess_dataset, specimen_groups, split_validation, train)

FAST = dict(pool=4, n_pool=4, dense=16, epochs=2, batch_size=8, threads=1, seed=0)

# Spectra per specimen, per class: 4 classes, the last with a single specimen.
LAYOUT = [[3, 3, 2, 4], [2, 2, 3], [4, 1, 2, 2, 3], [5]]


def specimen_files(layout: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """RRUFF-style file names and the specimen each names, ``layout[class][specimen]`` spectra each."""
    files, ids = [], []
    for c, specimens in enumerate(layout):
        for s, n in enumerate(specimens):
            rid = f"R{c:03d}{s:03d}"
            for k in range(n):
                files.append(f"mineral_{c:02d}__{rid}-{k % 2 + 1}__Raman__532__{k}__ccw__Raman_Data_RAW__{k}.txt")
                ids.append(rid)
    return np.array(files), np.array(ids)


def write_grouped_npz(path: Path, layout: list[list[int]] = LAYOUT, seed: int = 3, files: bool = True) -> Path:
    spectra, labels, axis = synthetic_spectra(n_classes=len(layout), per_class=[sum(s) for s in layout], seed=seed)
    arrays = dict(spectra=spectra, labels=labels, wavenumbers=axis.astype(np.float32))
    if files:
        arrays["files"] = specimen_files(layout)[0]
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def grouped(tmp_path_factory) -> Dataset:
    return load_dataset(write_grouped_npz(tmp_path_factory.mktemp("grouped") / "lib.npz"))


def straddling(groups: np.ndarray, a: np.ndarray, b: np.ndarray) -> set[str]:
    return set(groups[a].tolist()) & set(groups[b].tolist())


# --------------------------------------------------------------------------- the split itself


@pytest.mark.parametrize("seed", range(8))
def test_grouped_split_keeps_specimens_whole_and_protects_classes(seed: int) -> None:
    layout = [[3, 3, 2, 4], [2, 2, 3], [4, 1, 2, 2, 3], [5], [1, 1], [2, 1, 1, 1, 2, 3]]
    files, groups = specimen_files(layout)
    labels = np.array([f.split("__")[0] for f in files])
    tr, va = split_validation(labels, 0.3, np.random.default_rng(seed), groups=groups)
    assert np.array_equal(np.sort(np.concatenate([tr, va])), np.arange(labels.size))
    assert straddling(groups, tr, va) == set()
    assert 0.2 * labels.size <= va.size <= 0.4 * labels.size
    for c in np.unique(labels):
        m = labels == c
        in_val = np.isin(np.nonzero(m)[0], va)
        if np.unique(groups[m]).size < 2 or m.sum() < MIN_CLASS_FOR_VAL:
            assert not in_val.any(), c          # one specimen (or too few spectra): never validated
        # Every class keeps a specimen and MIN_CLASS_FOR_TRAIN spectra in training.
        assert np.unique(groups[m][~in_val]).size >= 1 and (~in_val).sum() >= min(m.sum(), MIN_CLASS_FOR_TRAIN)
    # The same generator state gives the same split.
    assert np.array_equal(split_validation(labels, 0.3, np.random.default_rng(seed), groups=groups)[1], va)


def test_grouped_split_is_stratified_when_specimens_allow() -> None:
    layout = [[2] * 10 for _ in range(6)]
    files, groups = specimen_files(layout)
    labels = np.array([f.split("__")[0] for f in files])
    tr, va = split_validation(labels, 0.2, np.random.default_rng(0), groups=groups)
    assert va.size == 24
    assert set(np.unique(labels[va], return_counts=True)[1].tolist()) == {4}   # two specimens of every class


def test_a_specimen_with_two_labels_stays_in_training() -> None:
    labels = np.array(["a", "a", "b", "b", "a", "a", "b", "b", "a", "b"])
    groups = np.array(["S1", "S1", "S2", "S2", "S3", "S3", "S4", "S4", "S5", "S5"])
    for seed in range(10):
        tr, va = split_validation(labels, 0.5, np.random.default_rng(seed), groups=groups)
        assert not np.isin([8, 9], va).any()
        assert straddling(groups, tr, va) == set()


def test_ungrouped_split_is_todays_split() -> None:
    # Pinned from the split by spectrum before specimen grouping existed: same labels, same seed.
    labels = np.array(["a"] * 7 + ["b"] * 5 + ["c"] * 3 + ["d"] * 2 + ["e"])
    assert split_validation(labels, 0.3, np.random.default_rng(11))[1].tolist() == [2, 6, 7, 9, 14]
    assert split_validation(labels, 0.3, np.random.default_rng(11), groups=None)[1].tolist() == [2, 6, 7, 9, 14]


def test_grouping_applies_only_when_spectra_share_a_specimen(grouped: Dataset) -> None:
    assert specimen_groups(grouped) is not None
    plain = Dataset(grouped.spectra, grouped.labels, grouped.wavenumbers)
    assert specimen_groups(plain) is None
    unique = Dataset(grouped.spectra, grouped.labels, grouped.wavenumbers,
                     {"files": np.array([f"s{i}.txt" for i in range(len(grouped))])})
    assert specimen_groups(unique) is None     # every spectrum its own group: nothing to group


# --------------------------------------------------------------------------- cross-fitting folds


@pytest.mark.parametrize("k", [2, 3])
def test_grouped_crossfit_folds_score_each_specimen_once_by_a_model_that_never_saw_it(grouped: Dataset,
                                                                                     k: int) -> None:
    groups = grouped.specimen_ids()
    folds, left_out = grouped_crossfit_folds(grouped, groups, k, seed=0)
    assert len(folds) == k
    lone = np.nonzero(grouped.labels == "mineral_03")[0]         # the single-specimen mineral
    assert left_out == lone.size
    scored = np.concatenate([te for _, te in folds])
    assert np.array_equal(np.sort(scored), np.setdiff1d(np.arange(len(grouped)), lone))
    for tr, te in folds:
        assert straddling(groups, tr, te) == set() and np.isin(lone, tr).all()


def test_grouped_crossfit_needs_k_specimens(tmp_path: Path) -> None:
    d = load_dataset(write_grouped_npz(tmp_path / "few.npz", layout=[[3, 2], [4]]))
    with pytest.raises(ConfigError, match="grouped by specimen needs at least 3 specimens .* found 2"):
        grouped_crossfit_folds(d, d.specimen_ids(), 3, seed=0)


# --------------------------------------------------------------------------- real trainings


def test_training_validates_on_unseen_specimens_and_records_it(grouped: Dataset, tmp_path: Path) -> None:
    from edge.bundle import load_bundle
    from trainer.export import save_bundle

    result = train(grouped, TrainConfig(**FAST, val_fraction=0.3))
    groups = grouped.specimen_ids()
    assert result.val_index.size > 0 and straddling(groups, result.train_index, result.val_index) == set()
    assert not np.isin(np.nonzero(grouped.labels == "mineral_03")[0], result.val_index).any()
    g = result.metrics["grouping"]
    assert g == {"by": "specimen", "specimens": 13, "spectra_without_specimen": 0,
                 "validation_specimens": int(np.unique(groups[result.val_index]).size)}
    bundle = save_bundle(tmp_path / "b", result, grouped, command="test")
    manifest = json.loads((Path(bundle.path) / "manifest.json").read_text())
    assert manifest["training"]["metrics"]["grouping"]["by"] == "specimen"
    assert load_bundle(tmp_path / "b").classes == grouped.classes


def test_cross_fitted_temperature_folds_never_split_a_specimen(grouped: Dataset, monkeypatch) -> None:
    seen: list[Dataset] = []
    real_train = train_module.train

    def spy(dataset, config=None, **kwargs):
        seen.append(dataset)
        return real_train(dataset, config, **kwargs)

    monkeypatch.setattr(train_module, "train", spy)
    result = real_train(grouped, TrainConfig(**FAST, val_fraction=0.0, calibrate_folds=3))
    calib = result.metrics["calibration"]
    assert "grouped by specimen" in calib["split"] and calib["grouping"]["specimens"] == 13
    assert calib["left_out"] == 5 and calib["spectra"] == len(grouped) - 5
    groups = grouped.specimen_ids()
    total = dict(zip(*np.unique(groups, return_counts=True)))
    assert len(seen) == 3
    for part in seen:
        held = dict(zip(*np.unique(part.specimen_ids(), return_counts=True)))
        assert all(n == total[s] for s, n in held.items())      # a specimen trains whole, or not at all
        assert len(held) < len(total)                           # and some specimens are held out


def test_ensemble_members_share_one_grouped_split(grouped: Dataset) -> None:
    result = train(grouped, TrainConfig(**FAST, val_fraction=0.3, ensemble=2))
    groups = grouped.specimen_ids()
    assert straddling(groups, result.train_index, result.val_index) == set()
    assert result.metrics["grouping"]["by"] == "specimen" and result.val_index.size > 0


def test_missing_ids_are_singletons_not_one_group(tmp_path: Path) -> None:
    path = write_grouped_npz(tmp_path / "mixed.npz")
    with np.load(path) as z:
        arrays = dict(z)
    arrays["files"][:6] = [f"unnamed_{i}.txt" for i in range(6)]
    np.savez(path, **arrays)
    d = load_dataset(path)
    result = train(d, TrainConfig(**FAST, val_fraction=0.3))
    g = result.metrics["grouping"]
    assert g["by"] == "specimen" and g["spectra_without_specimen"] == 6
    groups = d.specimen_ids()
    assert all(groups[i] == f"{NO_SPECIMEN}{i}" for i in range(6))
    assert straddling(groups, result.train_index, result.val_index) == set()


def test_without_specimen_ids_training_is_unchanged(tmp_path: Path) -> None:
    """No ids, or ids that group nothing: the same split and bit-identical weights as plain data."""
    plain = load_dataset(write_grouped_npz(tmp_path / "plain.npz", files=False))
    with np.load(tmp_path / "plain.npz") as z:
        arrays = dict(z)
    np.savez(tmp_path / "named.npz", **arrays, files=np.array([f"spectrum_{i}.txt" for i in range(len(plain))]))
    named = load_dataset(tmp_path / "named.npz")
    cfg = TrainConfig(**FAST, val_fraction=0.3)
    a, b = train(plain, cfg), train(named, cfg)
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed).spawn(3)[0])
    assert np.array_equal(a.val_index, split_validation(plain.labels, cfg.val_fraction, rng)[1])
    assert np.array_equal(a.val_index, b.val_index)
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k
    assert a.metrics["grouping"]["by"] == b.metrics["grouping"]["by"] == "spectrum"
    x = preprocess_dataset(plain)
    np.testing.assert_array_equal(predict_logits(a.model, x), predict_logits(b.model, x))
    # Grouping does change the split where specimens exist: the test above can fail.
    grouped_ds = load_dataset(write_grouped_npz(tmp_path / "g.npz"))
    assert not np.array_equal(train(grouped_ds, cfg).val_index, a.val_index)


def test_cli_records_grouping_in_the_manifest(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from trainer.cli import train as train_cmd

    data = write_grouped_npz(tmp_path / "lib.npz")
    out = tmp_path / "bundle"
    r = CliRunner().invoke(train_cmd, ["--data", str(data), "--out", str(out), "--epochs", "2", "-m", "4", "-n", "4",
                                       "--dense", "8", "--batch-size", "8", "--threads", "1", "--quiet",
                                       "--val-fraction", "0.3"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    metrics = json.loads((out / "manifest.json").read_text())["training"]["metrics"]
    assert metrics["grouping"]["by"] == "specimen" and metrics["grouping"]["specimens"] == 13
    assert metrics["grouping"]["validation_specimens"] >= 1
