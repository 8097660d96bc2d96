"""benchmarks/library_cv.py: scoring helpers, and the whole protocol on a tiny synthetic library (--quick)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from .conftest import BANDS, lorentz

pytest.importorskip("sklearn")
pytest.importorskip("torch")

from benchmarks.baselines import evaluate  # noqa: E402
from benchmarks.library_cv import best_member_scores, main, true_rank, unit_rows  # noqa: E402

SANG_AXIS = np.arange(30.0, 1600.0, 1.0)
SOYSAL_AXIS = np.arange(200.0, 1592.0, 1.0)
#: A mineral with a single specimen: a distractor, never tested.
SINGLE = ("Singlite", [(700.0, 1.0, 10.0), (980.0, 0.5, 8.0)])


def test_best_member_scores_is_the_per_class_maximum():
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(7, 12))
    labels = np.asarray(list("abcab" "cabcaa" "b"))
    classes = np.asarray(["a", "b", "c", "d"])  # "d" has no member
    got = best_member_scores(sim, labels, classes)
    for j, c in enumerate(classes[:3]):
        np.testing.assert_array_equal(got[:, j], sim[:, labels == c].max(axis=1))
    assert np.all(got[:, 3] == -np.inf)


def test_true_rank_agrees_with_evaluate():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 4, size=(50, 6)).astype(float)  # many ties: the class order breaks them
    classes = np.asarray(list("abcdef"))
    truth = rng.choice(list("abcdefz"), size=50)  # "z" is not a class: always wrong
    r = true_rank(scores, classes, truth)
    ref = evaluate(scores, classes, truth)
    assert (r < 1).mean() == pytest.approx(ref["top1"]) and (r < 3).mean() == pytest.approx(ref["top3"])
    assert np.all(r[truth == "z"] == classes.size)


def test_unit_rows_give_pearson_correlations():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(2, 40))
    u = unit_rows(np.stack([a, 3 * a + 5, b]), centre=True)
    assert u[0] @ u[1] == pytest.approx(1.0)
    assert u[0] @ u[2] == pytest.approx(np.corrcoef(a, b)[0, 1])


def _library(root: Path) -> dict[str, int]:
    """Dataset_2-like, Soysal-like and Dataset_1-like files; every spectrum of a mineral is a scaled copy."""
    spectra, labels, files = [], [], []
    minerals = {**BANDS, SINGLE[0]: SINGLE[1]}
    for i, (m, bands) in enumerate(minerals.items()):
        template = lorentz(SANG_AXIS, bands)
        for s in range(1 if m == SINGLE[0] else 3):
            for o in range(2):
                spectra.append((0.5 + 0.1 * s + 0.03 * o) * template)  # same shape, new bytes (not a duplicate)
                labels.append(m)
                files.append(f"{m}__R{100000 + 10 * i + s}-{o + 1}__Raman__532__0__Raman_Data_Processed__x.txt")
    (root / "rruff-sang").mkdir(parents=True)
    (root / "rruff-soysal").mkdir()
    np.savez(root / "rruff-sang" / "dataset_2_dev.npz", spectra=np.asarray(spectra, np.float32),
             labels=np.asarray(labels), wavenumbers=SANG_AXIS.astype(np.float32), files=np.asarray(files))
    np.savez(root / "rruff-sang" / "dataset_1_dev.npz", spectra=np.asarray(spectra[:12], np.float32),
             labels=np.asarray(labels[:12]), wavenumbers=SANG_AXIS.astype(np.float32))
    raw = []
    raw_labels = []
    for m in ("Calcite", "Quartz"):
        template = lorentz(SOYSAL_AXIS, BANDS[m])  # scaled copies of the Dataset_2 spectra of the mineral
        for k in range(3):
            raw.append((1.0 + 0.2 * k) * template)
            raw_labels.append(m)
    np.savez(root / "rruff-soysal" / "raw_train.npz", spectra=np.asarray(raw, np.float32),
             labels=np.asarray(raw_labels), wavenumbers=SOYSAL_AXIS.astype(np.float32))
    return {"d2": len(spectra), "single": 2, "raw": len(raw), "d1_minerals": len(set(labels[:12]))}


def test_quick_run_writes_the_json_and_search_match_finds_identical_spectra(tmp_path):
    counts = _library(tmp_path / "data")
    out = tmp_path / "cv.json"
    result = CliRunner().invoke(main, ["--data", str(tmp_path / "data"), "--quick", "--threads", "1",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    doc = json.loads(out.read_text())
    for key in ("benchmark", "command", "date_utc", "versions", "seconds", "data", "library", "protocol",
                "models", "reference_search_match"):
        assert key in doc, key
    assert doc["benchmark"] == "library_cv" and doc["quick"] is True
    p = doc["protocol"]
    assert p["folds"] == p["folds_run"] == 2 and p["epochs"] == 1
    assert p["never_tested_single_specimen_spectra"] == counts["single"]
    assert p["tested_spectra"] == counts["d2"] - counts["single"] + counts["raw"]
    assert doc["library"]["spectra"] == counts["d2"] + counts["raw"]
    assert doc["library"]["dataset_1"]["minerals_in_library"] == counts["d1_minerals"]
    assert set(doc["models"]) == {"search-match", "cnn:compact", "cnn+knn:compact"}
    for name, entry in doc["models"].items():
        assert set(entry["subsets"]) == {"all", "dataset_2", "dataset_1_minerals", "soysal_raw"}, name
        assert len(entry["top1_per_fold"]) == 2
        for s in entry["subsets"].values():
            assert {"spectra", "top1", "top3"} <= set(s)
    sub = doc["models"]["search-match"]["subsets"]
    assert sub["soysal_raw"]["spectra"] == counts["raw"]
    assert sub["dataset_2"]["spectra"] == counts["d2"] - counts["single"]
    # Every test spectrum has a scaled copy of itself in training: correlation 1, never another mineral's.
    assert all(s["top1"] == 1.0 for s in sub.values())
    cnn = doc["models"]["cnn:compact"]
    assert len(cnn["epoch_seconds"]) == 2 and cnn["parameters"] > 0
    assert cnn["config"]["val_fraction"] == 0 and cnn["config"]["augment_config"]["max_shift"] == 10


def test_a_missing_source_is_one_clear_error(tmp_path):
    (tmp_path / "rruff-sang").mkdir()
    result = CliRunner().invoke(main, ["--data", str(tmp_path), "--quick"])
    assert result.exit_code == 2
    assert "dataset_2_dev.npz does not exist" in result.output
