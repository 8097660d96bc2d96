"""Dataset.specimen_ids: the RRUFF specimen of every spectrum, the unit that splits keep on one side."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import calibration.library
from calibration.dataset import NO_SPECIMEN, SPECIMEN_ID, Dataset, load_dataset, specimen_from_file

from .conftest import shared_data

WN = np.arange(200.0, 1592.0, 1.0)


def dataset(n: int, **extras: np.ndarray) -> Dataset:
    return Dataset(np.ones((n, WN.size), np.float32), np.array(["Calcite"] * n), WN, dict(extras))


def rruff(sample: str, mineral: str = "Calcite", n: int = 1) -> str:
    return f"{mineral}__{sample}__Raman__532__0__unoriented__Raman_Data_Processed__{n}.txt"


def test_ids_from_file_names_follow_the_rruff_rule() -> None:
    files = np.array([rruff("R040063-4"), rruff("R040063-4", n=2), "folder/" + rruff("R060353_a"),
                      rruff("X070005.3"), rruff("R040022 perp to fiber axes"), rruff("R050177-3_1"),
                      rruff("altered"), "raw_train.npz[3]", rruff("R1234")])
    ids = dataset(files.size, files=files).specimen_ids()
    assert ids[:6].tolist() == ["R040063", "R040063", "R060353", "X070005", "R040022", "R050177"]
    # No id: each spectrum is a specimen of its own, never one shared "unknown" group.
    assert ids[6:].tolist() == [f"{NO_SPECIMEN}6", f"{NO_SPECIMEN}7", f"{NO_SPECIMEN}8"]
    assert np.unique(ids).size == files.size - 1


def test_specimens_column_is_preferred_over_files() -> None:
    files = np.array([rruff("R040063-4"), rruff("R040063-5"), rruff("R050402-1"), rruff("R050402-1")])
    specimens = np.array(["R111111", "R040063-4", "", "  my-sample "])
    ids = dataset(4, files=files, specimens=specimens).specimen_ids()
    # A RRUFF sample id in the column counts as its specimen; other values as given (trimmed).
    assert ids.tolist() == ["R111111", "R040063", f"{NO_SPECIMEN}2", "my-sample"]


def test_no_column_means_no_ids_and_a_wrong_length_column_is_ignored() -> None:
    assert dataset(3).specimen_ids() is None
    assert dataset(3, files=np.array([rruff("R040063-4")] * 2)).specimen_ids() is None
    ids = dataset(2, specimens=np.array(["R1", "R2", "R3"]), files=np.array([rruff("R040063-1")] * 2)).specimen_ids()
    assert ids.tolist() == ["R040063", "R040063"]


def test_subset_keeps_the_ids_of_its_rows() -> None:
    files = np.array([rruff("R040063-4"), "x", rruff("R050402-1"), "y"])
    d = dataset(4, files=files)
    assert d.subset(np.array([2, 0])).specimen_ids().tolist() == ["R050402", "R040063"]
    sub = d.subset(np.array([3, 1])).specimen_ids().tolist()
    assert len(set(sub)) == 2 and all(s.startswith(NO_SPECIMEN) for s in sub)


def test_library_build_uses_the_same_rule() -> None:
    # One rule, one place: the library builder writes the ids that training splits by.
    assert calibration.library.specimen_from_file is specimen_from_file
    assert calibration.library.SPECIMEN_ID is SPECIMEN_ID


def test_npz_roundtrip_with_specimens(tmp_path: Path) -> None:
    p = tmp_path / "lib.npz"
    np.savez(p, spectra=np.ones((3, WN.size), np.float32), labels=np.array(["A", "A", "B"]), wavenumbers=WN,
             files=np.array([rruff("R040063-4"), rruff("R040063-5"), "b.txt"]),
             specimens=np.array(["R040063", "R040063", ""]))
    assert load_dataset(p).specimen_ids().tolist() == ["R040063", "R040063", f"{NO_SPECIMEN}2"]


@pytest.mark.parametrize("name, specimens", [("dataset_1_dev.npz", 572), ("dataset_2_dev.npz", 1840)])
def test_sang_files_give_rruff_specimens(name: str, specimens: int) -> None:
    d = load_dataset(shared_data("rruff-sang", name))
    ids = d.specimen_ids()
    real = np.array([not s.startswith(NO_SPECIMEN) for s in ids])
    assert all(re.fullmatch(r"[A-Z]\d{6}", s) for s in ids[real])
    assert np.unique(ids[real]).size == specimens
    first = str(d.extras["files"][0])
    assert ids[0] == re.match(r"[^_]+__([A-Z]\d{6})", first).group(1)
    # Dataset_2 holds one file whose sample field names no specimen ("altered"): its own group.
    assert (~real).sum() == (1 if name == "dataset_2_dev.npz" else 0)
