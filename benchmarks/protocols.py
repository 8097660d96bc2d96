"""Evaluation protocols of the benchmarks: splits, shifted test spectra, mean ± std.

Splits (all return :class:`Split` objects holding sorted index arrays):

* :func:`stratified_kfold` — stratified k-fold cross-validation (Soysal et al.).
* :func:`random_split` — one random stratified train/test split, 70/30 by
  default (Sang et al., DRCNN); repeat over seeds.
* :func:`grouped_kfold` / :func:`grouped_split` — the same, but grouped by RRUFF
  specimen (``calibration.dataset.Dataset.specimen_ids``): all spectra of one
  specimen (its orientations, lasers, repeats) fall on the same side, so a
  model cannot score by recognising the specimen rather than the mineral.

Small classes, stated once for every split
------------------------------------------
A test spectrum whose class has nothing in training can only be wrong, and says
nothing about the model.  So:

1. a class with a single *unit* (one spectrum for the random protocols, one
   specimen for the grouped ones) is **kept in training in every split and never
   tested**: it still competes as a distractor;
2. if a split nevertheless leaves a tested class with no training unit (e.g. a
   two-specimen class whose two specimens both landed in the test folds), one of
   its test units, chosen with the split's seed, is **moved to training**.

Each split reports how many classes/spectra the two rules touched
(``Split.notes``), and the benchmark JSON carries those counts.  On the Sang
Dataset_2 dev set 1096 of 1332 minerals have a single specimen, so the grouped
protocol there tests only the other 236 minerals (with all 1332 as candidates).

Grouped 70/30 uses scikit-learn's ``StratifiedGroupKFold`` with 10 folds and
takes 3 of them as the test side: stratified *and* grouped, which
``GroupShuffleSplit`` (not stratified) is not.

Shifted test spectra
--------------------
:func:`shift_spectra` (re-exported from :mod:`trainer.augment`, the one shift
definition, numpy only) moves a spectrum along its Raman-shift axis: every band at
``x`` moves to ``x + delta`` (linear interpolation; exact for whole-step shifts on
a regular grid).  The end that the shift vacates is filled by ``fill``
(:data:`FILL_MODES`); the benchmarks here pass :data:`DEFAULT_FILL`:

* ``"baseline"``: the minimum of the *original* spectrum over the ``window``
  cm⁻¹ nearest that end — the local baseline level.  It neither invents a band
  nor stretches a band that sits at the edge into a plateau, and on raw spectra
  it continues the fluorescence level.
* ``"edge"`` (the function's default, the training augmentation's fill): the
  original end value (what ``numpy.interp`` does); a band at the edge is stretched.
* ``"zero"``: zeros, as in data that are zero outside their measured range.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np

from calibration.errors import ConfigError
from trainer.augment import SHIFT_FILLS, shift_spectra

log = logging.getLogger(__name__)

#: Vacated-end fills of :func:`shift_spectra`, and the one the benchmarks use.
FILL_MODES = SHIFT_FILLS
DEFAULT_FILL = "baseline"
#: Folds used to build a grouped train/test split of a given test fraction.
GROUPED_SPLIT_FOLDS = 10


@dataclass(frozen=True)
class Split:
    """One train/test partition (sorted, disjoint index arrays) and what the small-class rules did."""

    train: np.ndarray
    test: np.ndarray
    name: str
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if np.intersect1d(self.train, self.test).size:
            raise AssertionError(f"{self.name}: train and test share indices")


def _units(labels: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """Unit of splitting per spectrum: the spectrum itself, or its specimen."""
    return np.arange(labels.size).astype(str) if groups is None else np.asarray(groups).astype(str)


def _single_unit_classes(labels: np.ndarray, units: np.ndarray) -> np.ndarray:
    """Boolean per spectrum: its class has only one unit (spectrum or specimen)."""
    single = np.zeros(labels.size, dtype=bool)
    for c in np.unique(labels):
        m = labels == c
        if np.unique(units[m]).size < 2:
            single |= m
    return single


def _repair(train: np.ndarray, test: np.ndarray, labels: np.ndarray, units: np.ndarray,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    """Move one test unit to training for every tested class that has no training spectrum."""
    train_set = set(labels[train].tolist())
    moved = 0
    test = np.asarray(test)
    for c in sorted(set(labels[test].tolist()) - train_set):
        in_test = test[labels[test] == c]
        unit = rng.choice(np.unique(units[in_test]))
        take = test[units[test] == unit]
        train = np.union1d(train, take)
        test = np.setdiff1d(test, take)
        moved += 1
    return np.sort(train), np.sort(test), moved


def _finish(train: np.ndarray, test: np.ndarray, always_train: np.ndarray, labels: np.ndarray,
            units: np.ndarray, rng: np.random.Generator, name: str) -> Split:
    train = np.union1d(train, always_train)
    train, test, moved = _repair(train, test, labels, units, rng)
    notes = {"single_unit_classes": int(np.unique(labels[always_train]).size),
             "single_unit_spectra": int(always_train.size),
             "moved_to_train": moved,
             "train_spectra": int(train.size), "test_spectra": int(test.size),
             "test_classes": int(np.unique(labels[test]).size)}
    return Split(train, test, name, notes)


@contextlib.contextmanager
def _quiet_sklearn() -> Iterator[None]:
    with warnings.catch_warnings():
        # Classes smaller than the fold count are expected here (3–13 spectra per class).
        warnings.filterwarnings("ignore", message="The least populated class")
        yield


def stratified_kfold(labels: np.ndarray, folds: int = 5, seed: int = 0) -> list[Split]:
    """Stratified k-fold CV (``StratifiedKFold(shuffle=True, random_state=seed)``).

    Classes with a single spectrum stay in training in every fold (see module docstring).
    """
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels).astype(str)
    units = _units(labels, None)
    single = _single_unit_classes(labels, units)
    eligible = np.nonzero(~single)[0]
    always = np.nonzero(single)[0]
    rng = np.random.default_rng(seed)
    try:
        with _quiet_sklearn():
            parts = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
                         .split(np.zeros(eligible.size), labels[eligible]))
    except ValueError as e:
        raise ConfigError(f"stratified {folds}-fold split impossible: {e}") from None
    return [_finish(eligible[tr], eligible[te], always, labels, units, rng, f"fold {i}/{folds}")
            for i, (tr, te) in enumerate(parts, 1)]


def random_split(labels: np.ndarray, test_size: float = 0.3, seed: int = 0) -> Split:
    """Random stratified train/test split (``StratifiedShuffleSplit``), e.g. 70/30."""
    from sklearn.model_selection import StratifiedShuffleSplit

    labels = np.asarray(labels).astype(str)
    units = _units(labels, None)
    single = _single_unit_classes(labels, units)
    eligible = np.nonzero(~single)[0]
    always = np.nonzero(single)[0]
    try:
        tr, te = next(StratifiedShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
                      .split(np.zeros(eligible.size), labels[eligible]))
    except ValueError as e:
        raise ConfigError(f"random stratified split (test {test_size}) impossible: {e}") from None
    return _finish(eligible[tr], eligible[te], always, labels, units, np.random.default_rng(seed),
                   f"random seed {seed}")


def _grouped_folds(labels: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> tuple[list, np.ndarray,
                                                                                            np.ndarray]:
    from sklearn.model_selection import StratifiedGroupKFold

    single = _single_unit_classes(labels, groups)
    eligible = np.nonzero(~single)[0]
    always = np.nonzero(single)[0]
    n_groups = np.unique(groups[eligible]).size
    if n_groups < folds:
        raise ConfigError(f"grouped split needs at least {folds} specimens in classes with two or more; "
                          f"found {n_groups}")
    try:
        with _quiet_sklearn():
            parts = list(StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
                         .split(np.zeros(eligible.size), labels[eligible], groups[eligible]))
    except ValueError as e:
        raise ConfigError(f"grouped {folds}-fold split impossible: {e}") from None
    return [(eligible[tr], eligible[te]) for tr, te in parts], always, eligible


def _check_groups(labels: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    if groups is None:
        raise ConfigError("grouped protocol needs specimen ids (the .npz has no 'files' key)")
    groups = np.asarray(groups).astype(str)
    if groups.shape != labels.shape:
        raise ConfigError(f"groups has shape {groups.shape}, labels {labels.shape}")
    return groups


def grouped_kfold(labels: np.ndarray, groups: np.ndarray | None, folds: int = 5, seed: int = 0) -> list[Split]:
    """Stratified k-fold with no specimen on both sides (``StratifiedGroupKFold``)."""
    labels = np.asarray(labels).astype(str)
    groups = _check_groups(labels, groups)
    parts, always, _ = _grouped_folds(labels, groups, folds, seed)
    rng = np.random.default_rng(seed)
    return [_finish(tr, te, always, labels, groups, rng, f"grouped fold {i}/{folds}")
            for i, (tr, te) in enumerate(parts, 1)]


def grouped_split(labels: np.ndarray, groups: np.ndarray | None, test_size: float = 0.3, seed: int = 0) -> Split:
    """Stratified train/test split with no specimen on both sides.

    ``StratifiedGroupKFold`` with :data:`GROUPED_SPLIT_FOLDS` folds (fewer when
    there are fewer specimens); ``round(test_size · folds)`` of them form the test side.
    """
    labels = np.asarray(labels).astype(str)
    groups = _check_groups(labels, groups)
    if not 0.0 < test_size < 1.0:
        raise ConfigError(f"test_size must be in (0, 1), got {test_size}")
    eligible = ~_single_unit_classes(labels, groups)
    n_groups = np.unique(groups[eligible]).size
    largest = int(np.unique(labels[eligible], return_counts=True)[1].max()) if eligible.any() else 0
    # scikit-learn refuses more folds than the largest class has spectra.
    folds = max(2, min(GROUPED_SPLIT_FOLDS, n_groups, largest))
    k_test = min(folds - 1, max(1, int(round(test_size * folds))))
    parts, always, _ = _grouped_folds(labels, groups, folds, seed)
    test = np.sort(np.concatenate([te for _, te in parts[:k_test]]))
    eligible = np.union1d(parts[0][0], parts[0][1])
    train = np.setdiff1d(eligible, test)
    split = _finish(train, test, always, labels, groups, np.random.default_rng(seed), f"grouped seed {seed}")
    split.notes["folds"] = f"{k_test} of {folds}"
    return split


def shared_groups(split: Split, groups: np.ndarray) -> set[str]:
    """Specimens present on both sides of ``split`` (empty for a valid grouped split)."""
    groups = np.asarray(groups).astype(str)
    return set(groups[split.train].tolist()) & set(groups[split.test].tolist())


def summarise(values: Iterable[float]) -> dict[str, Any]:
    """Mean ± standard deviation (ddof=0) over folds or seeds, with the values."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "values": []}
    return {"mean": float(v.mean()), "std": float(v.std()), "values": [round(float(x), 4) for x in v]}


__all__ = ["Split", "stratified_kfold", "random_split", "grouped_kfold", "grouped_split", "shared_groups",
           "shift_spectra", "summarise", "FILL_MODES", "DEFAULT_FILL"]
