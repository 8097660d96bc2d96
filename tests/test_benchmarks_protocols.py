"""benchmarks/protocols.py: stratified, random and specimen-grouped splits; the shift helper."""
from __future__ import annotations

import numpy as np
import pytest

from calibration.errors import ConfigError

from .conftest import lorentz, shared_data

pytest.importorskip("sklearn")

from benchmarks.protocols import (grouped_kfold, grouped_split, random_split, shared_groups,  # noqa: E402
                                  shift_spectra, stratified_kfold, summarise)


def _grouped_labels(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """12 classes with 1–6 specimens of 1–4 spectra each (like RRUFF: many spectra per specimen)."""
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for c in range(12):
        for s in range(1 + c % 6):
            for _ in range(int(rng.integers(1, 5))):
                labels.append(f"class{c:02d}")
                groups.append(f"R{c:02d}{s:03d}")
    return np.asarray(labels), np.asarray(groups)


def _check_partition(split, n):
    assert np.all(np.diff(split.train) > 0) and np.all(np.diff(split.test) > 0)
    assert np.intersect1d(split.train, split.test).size == 0
    assert split.train.size + split.test.size == n


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_grouped_split_never_shares_a_specimen(seed):
    labels, groups = _grouped_labels(seed)
    s = grouped_split(labels, groups, 0.3, seed)
    _check_partition(s, labels.size)
    assert shared_groups(s, groups) == set()
    # Every tested class is also in training; single-specimen classes are never tested.
    assert set(labels[s.test]) <= set(labels[s.train])
    singles = {c for c in set(labels) if np.unique(groups[labels == c]).size == 1}
    assert singles and not singles & set(labels[s.test])
    assert s.notes["single_unit_classes"] == len(singles)


@pytest.mark.parametrize("seed", [0, 1])
def test_grouped_kfold_never_shares_a_specimen_and_tests_each_specimen_once(seed):
    labels, groups = _grouped_labels(seed)
    folds = grouped_kfold(labels, groups, 3, seed)
    tested = np.concatenate([f.test for f in folds])
    assert np.unique(tested).size == tested.size  # each spectrum tested at most once
    for f in folds:
        _check_partition(f, labels.size)
        assert shared_groups(f, groups) == set()
        assert set(labels[f.test]) <= set(labels[f.train])


def test_random_split_can_share_specimens_grouped_cannot():
    """The point of the grouped protocol: a random split leaks specimens."""
    labels, groups = _grouped_labels(0)
    assert any(shared_groups(random_split(labels, 0.3, s), groups) for s in range(3))


def test_stratified_kfold_keeps_class_proportions():
    labels = np.repeat([f"c{i}" for i in range(6)], [5, 10, 15, 20, 25, 30])
    folds = stratified_kfold(labels, 5, 0)
    assert len(folds) == 5
    tested = np.sort(np.concatenate([f.test for f in folds]))
    np.testing.assert_array_equal(tested, np.arange(labels.size))  # each spectrum tested exactly once
    for f in folds:
        _check_partition(f, labels.size)
        for c, n in zip(*np.unique(labels, return_counts=True)):
            assert (labels[f.test] == c).sum() == n // 5


def test_random_split_is_stratified_and_about_30_percent():
    labels = np.repeat([f"c{i}" for i in range(5)], [10, 20, 30, 40, 100])
    s = random_split(labels, 0.3, 0)
    _check_partition(s, labels.size)
    assert s.test.size == pytest.approx(0.3 * labels.size, abs=1)
    for c, n in zip(*np.unique(labels, return_counts=True)):
        assert abs((labels[s.test] == c).sum() - 0.3 * n) <= 1
    assert not np.array_equal(random_split(labels, 0.3, 1).test, s.test)
    np.testing.assert_array_equal(random_split(labels, 0.3, 0).test, s.test)  # seeded


def test_single_spectrum_classes_stay_in_training():
    labels = np.array(["a"] * 6 + ["b"] * 6 + ["lonely"])
    s = random_split(labels, 0.3, 0)
    assert 12 in s.train and s.notes["single_unit_spectra"] == 1
    for f in stratified_kfold(labels, 3, 0):
        assert 12 in f.train


def test_grouped_split_is_roughly_stratified():
    labels, groups = _grouped_labels(5)
    s = grouped_split(labels, groups, 0.3, 0)
    eligible = [c for c in set(labels) if np.unique(groups[labels == c]).size > 1]
    tested = set(labels[s.test])
    assert len(tested) >= 0.6 * len(eligible)  # most multi-specimen classes get tested
    frac = s.test.size / np.isin(labels, eligible).sum()
    assert 0.1 < frac < 0.5


def test_grouped_needs_groups():
    with pytest.raises(ConfigError, match="specimen"):
        grouped_split(np.array(["a", "b"]), None)


def test_grouped_split_on_sang_dataset_2():
    from calibration.dataset import load_dataset

    d = load_dataset(shared_data("rruff-sang", "dataset_2_dev.npz"))
    groups = d.specimen_ids()
    s = grouped_split(d.labels, groups, 0.3, 0)
    assert shared_groups(s, groups) == set()
    assert set(d.labels[s.test]) <= set(d.labels[s.train])
    assert 0.2 < s.test.size / (len(d) - s.notes["single_unit_spectra"]) < 0.4


# ----------------------------------------------------------------------------- shifts

AXIS = np.arange(200.0, 1592.0, 1.0)


@pytest.mark.parametrize("delta", [15.0, -15.0, 30.0, -30.0, 7.0])
def test_shift_moves_a_peak_by_exactly_delta(delta):
    y = lorentz(AXIS, [(800.0, 1.0, 6.0), (1200.0, 0.5, 10.0)]) + 0.1
    out = shift_spectra(y[None, :], AXIS, delta)[0]
    assert AXIS[np.argmax(out)] == 800.0 + delta
    d = int(delta)
    inner = slice(40, -40)
    np.testing.assert_allclose(out[inner], np.roll(y, d)[inner], atol=1e-12)  # a pure translation inside


@pytest.mark.parametrize("delta", [15.0, 30.0, -15.0, -30.0])
def test_shift_fills_the_vacated_end_with_the_local_baseline(delta):
    rng = np.random.default_rng(0)
    baseline = 0.3 + 0.0005 * (AXIS - 200)
    # A band sitting at each end: an "edge" fill would stretch it into a plateau.
    y = baseline + lorentz(AXIS, [(203.0, 0.8, 6.0), (1588.0, 0.8, 6.0), (900.0, 1.0, 8.0)]) \
        + rng.normal(0, 0.002, AXIS.size)
    out = shift_spectra(y, AXIS, delta, fill="baseline")
    n = int(abs(delta))
    vacated = out[:n] if delta > 0 else out[-n:]
    end = y[:30] if delta > 0 else y[-30:]
    np.testing.assert_allclose(vacated, end.min())
    local = baseline[:n] if delta > 0 else baseline[-n:]
    assert np.abs(vacated - local).max() < 0.03  # close to the true baseline there, not to the band's top
    edge = shift_spectra(y, AXIS, delta, fill="edge")
    assert np.all((edge[:n] if delta > 0 else edge[-n:]) == (y[0] if delta > 0 else y[-1]))
    zero = shift_spectra(y, AXIS, delta, fill="zero")
    assert np.all((zero[:n] if delta > 0 else zero[-n:]) == 0.0)
    assert np.isfinite(out).all() and out.shape == y.shape and out.dtype == y.dtype


def test_shift_batch_and_zero():
    y = np.stack([lorentz(AXIS, [(c, 1.0, 6.0)]) for c in (400.0, 700.0, 1000.0)]).astype(np.float32)
    out = shift_spectra(y, AXIS, -30.0)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(AXIS[out.argmax(axis=1)], [370.0, 670.0, 970.0])
    np.testing.assert_array_equal(shift_spectra(y, AXIS, 0.0), y)
    with pytest.raises(ConfigError):
        shift_spectra(y, AXIS, 5.0, fill="mirror")


def test_summarise_mean_std():
    s = summarise([0.5, 0.7])
    assert s["mean"] == pytest.approx(0.6) and s["std"] == pytest.approx(0.1) and s["values"] == [0.5, 0.7]
