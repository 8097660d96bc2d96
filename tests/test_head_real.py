"""Head swap on the real Soysal spectra with the shipped backbone (skips without ../shared/data).

The shipped backbone was trained on all 63 minerals, so this is a check of the mechanism
(old classes kept through the support part, new ones learnt, the composed file installs), not
the Table 11 figure: benchmarks/ trains a backbone without the held-out classes for that.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from calibration.dataset import load_dataset
from edge.bundle import load_bundle
from edge.head import add_head

from .conftest import shared_data
from .head_helpers import accuracy


def _split(path: Path, n_new: int = 10, seed: int = 0):
    d = load_dataset(path)
    classes = np.array(d.classes)
    new = np.random.default_rng(seed).permutation(classes)[:n_new]
    test = np.zeros(len(d), bool)
    for c in classes:
        idx = np.random.default_rng(seed + 1).permutation(np.nonzero(d.labels == c)[0])
        test[idx[: max(1, int(round(0.3 * idx.size)))]] = True
    is_new = np.isin(d.labels, new)
    return d, is_new, test


def test_real_head_swap_keeps_old_classes(tmp_path: Path) -> None:
    d, is_new, test = _split(shared_data("rruff-soysal", "raw_train.npz"))
    default = load_bundle()
    parts = {}
    for name, m in (("old_train", ~is_new & ~test), ("old_test", ~is_new & test), ("new_train", is_new & ~test),
                    ("new_test", is_new & test)):
        parts[name] = (d.spectra[m], d.labels[m], d.wavenumbers)
        np.savez(tmp_path / f"{name}.npz", spectra=d.spectra[m], labels=d.labels[m], wavenumbers=d.wavenumbers)
    parent = add_head(default, tmp_path / "old_train.npz", tmp_path / "parent", replace=True)
    child = add_head(parent, tmp_path / "new_train.npz", tmp_path / "child")
    old_before, old_after = accuracy(parent, parts["old_test"]), accuracy(child, parts["old_test"])
    new_after = accuracy(child, parts["new_test"])
    assert child.backbone_path.read_bytes() == default.backbone_path.read_bytes()
    assert len(child.classes) == 63
    print(f"old {old_before:.3f} -> {old_after:.3f}, new {new_after:.3f}")
    assert old_after >= old_before - 0.05, (old_before, old_after)
    assert new_after >= 0.6, new_after
