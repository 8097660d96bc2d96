"""benchmarks/shift_search.py: test-time shift search, its windows and reducers."""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import pytest

import benchmarks.shift_search as bench


def test_windows_parse_and_always_include_no_shift() -> None:
    assert bench.parse_windows("0:1, 30:5") == [(0, 1), (30, 5)]
    assert bench.offsets(0, 1) == [0]
    assert bench.offsets(10, 5) == [-10, -5, 0, 5, 10]
    assert bench.offsets(7, 3) == [-6, -3, 0, 3, 6]
    for bad in ("30", "30:0", "-5:1", "a:b", ""):
        with pytest.raises(click.BadParameter):
            bench.parse_windows(bad)


def test_reducers_pick_the_best_aligned_offset_or_the_average() -> None:
    # Class 1 fits perfectly at one offset only; class 0 fits moderately at every offset.
    probs = np.array([[[0.7, 0.3]], [[0.7, 0.3]], [[0.7, 0.3]], [[0.05, 0.95]]])
    shifts = [0, 5, -5, 30]
    assert bench.reduce_scores(probs, shifts, "mean").argmax() == 0
    assert bench.reduce_scores(probs, shifts, "max").argmax() == 1
    # The geometric mean (averaged logits) is ruled by the worst fit: class 0's one misfit (0.05) outweighs
    # its three good fits (0.7**3 * 0.05 < 0.3**3 * 0.95), so it picks class 1 where the mean picks class 0.
    geo = bench.reduce_scores(probs, shifts, "geo")
    np.testing.assert_allclose(geo, np.log(probs).mean(0), atol=1e-9)
    assert geo.argmax() == 1
    # A prior against large offsets overrules the far alignment when strong enough.
    assert bench.reduce_scores(probs, shifts, "max-pen", 0.001).argmax() == 1
    assert bench.reduce_scores(probs, shifts, "max-pen", 0.1).argmax() == 0
    with pytest.raises(ValueError):
        bench.reduce_scores(probs, shifts, "median")


def test_run_without_search_is_the_plain_classifier(tmp_path: Path) -> None:
    from calibration.dataset import load_dataset
    from trainer.synthetic import write_synthetic_npz

    path = write_synthetic_npz(tmp_path / "synth.npz", n_classes=3, per_class=[6, 6, 6], seed=2)
    doc = bench.run(path, "cnn:liu:pool=4,n_pool=4,dense=8,val_fraction=0", [(0, 1), (4, 2)], [0.01],
                    [15.0], "edge", folds=2, seed=0, threads=1, epochs=2)
    assert sum(r["test_spectra"] for r in doc["folds"]) == len(load_dataset(path))
    for row in doc["folds"]:
        plain = row["top1"]["0:1/mean"]
        # On a single offset every reducer is the classifier's own argmax.
        assert row["top1"]["0:1/max"] == plain and row["top1"]["0:1/max-pen0.01"] == plain
        assert row["top1"]["0:1/geo"] == plain
        assert set(plain) == {"+0", "+15", "-15"}
        assert all(0.0 <= v <= 1.0 for by in row["top1"].values() for v in by.values())
    assert set(doc["summary"]) == {f"{w}/{r}" for w in ("0:1", "4:2") for r in ("mean", "geo", "max", "max-pen0.01")}


def test_single_fold_runs_merge_into_the_whole_run(tmp_path: Path) -> None:
    """--fold K runs (one process per fold, e.g. on a GPU machine) joined by --merge give the same
    per-fold rows and summary as one run over every fold; mismatched or repeated runs are refused."""
    from trainer.synthetic import write_synthetic_npz

    path = write_synthetic_npz(tmp_path / "synth.npz", n_classes=3, per_class=[6, 6, 6], seed=2)
    spec = "cnn:liu:pool=4,n_pool=4,dense=8,val_fraction=0"
    args = dict(folds=3, seed=0, threads=1, epochs=2)
    whole = bench.run(path, spec, [(0, 1), (4, 2)], [0.01], [15.0], "edge", **args)
    parts = [bench.run(path, spec, [(0, 1), (4, 2)], [0.01], [15.0], "edge", only_folds=[k], **args)
             for k in (3, 1, 2)]
    assert [[r["fold"] for r in p["folds"]] for p in parts] == [[3], [1], [2]]
    merged = bench.merge_fold_runs(parts)
    assert [r["fold"] for r in merged["folds"]] == [1, 2, 3]
    assert [r["top1"] for r in merged["folds"]] == [r["top1"] for r in whole["folds"]]
    assert merged["summary"] == whole["summary"]
    with pytest.raises(click.BadParameter, match="fold repeated"):
        bench.merge_fold_runs([parts[0], parts[0]])
    other = bench.run(path, spec + ",dense=4", [(0, 1), (4, 2)], [0.01], [15.0], "edge", only_folds=[1], **args)
    with pytest.raises(click.BadParameter, match="spec"):
        bench.merge_fold_runs([parts[0], other])
