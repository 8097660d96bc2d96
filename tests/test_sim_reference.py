"""sim:// samples are real spectra: the shipped reference file, its rebuild, and the unknown= option."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from calibration.errors import InputError, SourceConfigError
from firmware_bridge import reference
from firmware_bridge.minerals import available_minerals, default_minerals
from firmware_bridge.reference import (REFERENCE_PATH, axis_cm1, choose_reference, load_references, manifest_path,
                                       unknown_labels)
from firmware_bridge.sim import SimSource

from .conftest import shared_data

MANIFEST = manifest_path(REFERENCE_PATH)


def _take(url: str):
    with SimSource(url) as src:
        return list(src)


def _manifest() -> dict:
    return json.loads(MANIFEST.read_text(encoding="utf-8"))


def test_reference_file_matches_its_manifest():
    m = _manifest()
    assert m["sha256"] == hashlib.sha256(REFERENCE_PATH.read_bytes()).hexdigest()
    with np.load(REFERENCE_PATH) as d:
        labels, q = d["labels"].tolist(), d["spectra"]
    assert labels == [e["label"] for e in m["spectra"]]
    assert q.dtype == np.uint16 and q.shape == (len(labels), axis_cm1().size)
    assert np.all(q.max(axis=1) == reference.QUANT_MAX)  # each spectrum max-normalised
    assert REFERENCE_PATH.stat().st_size < 4096 * len(labels)  # a few KB per spectrum
    # Every simulated mineral has one RRUFF spectrum of itself, named by id and file.
    by_label = {e["label"]: e for e in m["spectra"]}
    for name in available_minerals():
        e = by_label[name]
        assert e["file"].startswith(f"{name}__{e['rruff_id']}") and e["rruff_id"].startswith(("R", "X"))
        assert e["citation"] == "lafuente2015"
    assert "Lafuente" in m["citations"]["lafuente2015"] and "RRUFF" in m["citations"]["lafuente2015"]
    unknown = [e for e in m["spectra"] if e["label"].startswith("unknown:")]
    assert {e["label"] for e in unknown} >= {"unknown:acetonitrile", "unknown:Adamite"}
    # The note beside the data cites RRUFF and names every RRUFF id it ships.
    note = (REFERENCE_PATH.parent / "REFERENCE_SPECTRA.md").read_text(encoding="utf-8")
    assert "Lafuente B., Downs R. T., Yang H., Stone N. (2015)" in note and "MIT License" in note
    for e in m["spectra"]:
        assert (e["rruff_id"] or e["file"]) in note, e["label"]


def test_unknown_samples_are_outside_the_shipped_model():
    import edge

    shipped = Path(edge.__file__).resolve().parent / "models" / "default" / "manifest.json"
    classes = set(json.loads(shipped.read_text(encoding="utf-8"))["classes"])
    names = [lab.split(":", 1)[1] for lab in unknown_labels()]
    assert len(names) >= 4 and not set(names) & classes


def test_loaded_references_are_normalised_and_cover_their_bands():
    refs = load_references()
    assert set(available_minerals()) <= set(refs) and set(unknown_labels()) <= set(refs)
    for name in available_minerals():
        r = refs[name]
        assert r.intensities.max() == 1.0 and r.intensities.min() >= 0.0 and not r.unknown
    # The default mix only holds minerals measured over every band of their table on the model grid.
    for name in default_minerals():
        assert not [b for b in refs[name].missing_bands_cm1 if 200 <= b <= 1591], name
    assert 1320.0 in refs["Hematite"].missing_bands_cm1


def test_a_changed_file_is_refused(tmp_path):
    npz, man = tmp_path / "r.npz", tmp_path / "r.json"
    shutil.copy(REFERENCE_PATH, npz)
    shutil.copy(MANIFEST, man)
    assert set(load_references(npz)) == set(load_references())
    blob = bytearray(npz.read_bytes())
    blob[-40] ^= 0xFF
    npz.write_bytes(bytes(blob))
    with pytest.raises(InputError, match="sha256"):
        load_references(npz)
    with pytest.raises(InputError, match="cannot read"):
        load_references(tmp_path / "missing.npz")


def test_rebuild_reproduces_the_shipped_file_bit_for_bit(tmp_path):
    shared_data("rruff-sang", "dataset_2_dev.npz")
    pytest.importorskip("pybaselines")
    data = shared_data("rruff-sang", "dataset_2_dev.npz").parents[1]
    out = tmp_path / "ref.npz"
    m = reference.build(data, out)
    assert out.read_bytes() == REFERENCE_PATH.read_bytes()
    shipped = _manifest()
    assert m["spectra"] == shipped["spectra"] and m["sha256"] == shipped["sha256"]
    assert m["built_from"] == shipped["built_from"]  # the same shared data files


def test_choose_reference_prefers_532_unoriented_and_the_most_typical():
    x = np.arange(30.0, 1600.0)

    def band(c: float) -> np.ndarray:
        return np.exp(-0.5 * ((x - c) / 4.0) ** 2)

    spectra = np.stack([band(500) + 0.4 * band(700),  # the most typical, but 514 nm on an oriented crystal
                        band(500) + 0.9 * band(700),  # 532 nm unoriented, less typical
                        band(500) + 0.6 * band(700),  # 532 nm unoriented, the most typical candidate
                        band(500) + 0.4 * band(700),  # typical, 780 nm
                        band(500) + 0.4 * band(700)])  # typical, 785 nm
    files = ["M__R1-3__Raman__514__0__ccw__Raman_Data_Processed__1.txt",
             "M__R2__Raman__532__0__unoriented__Raman_Data_Processed__2.txt",
             "M__R3__Raman__532__0__unoriented__Raman_Data_Processed__3.txt",
             "M__R4__Raman__780__0__unoriented__Raman_Data_Processed__4.txt",
             "M__R5__Raman__785__0__unoriented__Raman_Data_Processed__5.txt"]
    assert choose_reference(spectra, files, x) == 2
    # No candidate: every spectrum competes, and identical ones go to the smaller file name.
    others = [f.replace("__532__", "__785__") for f in files]
    assert choose_reference(spectra, others, x) == 0
    assert choose_reference(spectra[[3, 0]], [others[3], others[0]], x) == 1


@pytest.mark.parametrize("mineral", ["Calcite", "Dolomite", "Quartz", "Albite", "Diamond"])
def test_simulated_spectrum_is_its_reference_once_the_axis_is_undone(mineral: str):
    refs = load_references()
    ref = refs[mineral]
    for a in _take(f"sim://?minerals={mineral}&rate=0&count=6&seed=3&spike=0&drift=5&fluorescence=0"):
        assert a.meta["reference"] == ref.source and a.truth == mineral
        px = np.arange(a.spectrum.intensities.size, dtype=np.float64)
        # Undo the instrument's axis: reported calibration, then the drift it reports.
        true_shift = a.calibration.raman_shift(px) - a.meta["axis_offset_cm1"]
        keep = (true_shift > 200) & (true_shift < 1590)
        y = a.spectrum.intensities[keep]

        def corr(r) -> float:
            return float(np.corrcoef(y, np.interp(true_shift[keep], axis_cm1(), r.intensities))[0, 1])

        r_true = corr(ref)
        others = max(corr(r) for k, r in refs.items() if k != mineral)
        assert r_true > 0.95 and r_true > others, (mineral, r_true, others)


def test_noise_free_spectrum_is_the_binned_reference():
    (a,) = _take("sim://?minerals=Calcite&rate=0&count=1&seed=2&spike=0&noise=0&fluorescence=0&drift=3")
    edges = a.calibration.raman_shift(np.arange(a.spectrum.intensities.size + 1, dtype=np.float64) - 0.5)
    expected = a.meta["signal_counts"] * load_references()["Calcite"].binned(edges - a.meta["axis_offset_cm1"])
    got = a.spectrum.intensities - 800.0
    assert np.max(np.abs(got - expected)) <= 0.5 + 8.0  # rounding, plus the ±2-count fixed-pattern offset (4σ)


def test_unknown_draws_the_fraction_asked_deterministically():
    url = "sim://?rate=0&count=1000&seed=3&unknown=0.2"
    a, b = _take(url), _take(url)
    truths = [x.truth for x in a]
    assert truths == [x.truth for x in b]
    assert all(np.array_equal(x.spectrum.intensities, y.spectrum.intensities) for x, y in zip(a, b))
    n = sum(t.startswith("unknown:") for t in truths)
    assert abs(n - 200) <= 4 * np.sqrt(1000 * 0.2 * 0.8)
    assert {t for t in truths if t.startswith("unknown:")} == set(unknown_labels())
    assert all(x.meta["mineral"] == x.truth for x in a)
    # The unknown draw has its own random stream: every other spectrum is the one unknown=0 gives.
    plain = _take("sim://?rate=0&count=1000&seed=3")
    assert not any(x.truth.startswith("unknown:") for x in plain)
    same = [np.array_equal(x.spectrum.intensities, y.spectrum.intensities)
            for x, y in zip(a, plain) if not x.truth.startswith("unknown:")]
    assert all(same) and len(same) == 1000 - n
    assert all(x.truth.startswith("unknown:") for x in _take("sim://?rate=0&count=50&seed=3&unknown=1"))


@pytest.mark.parametrize("query, expected", [
    ("unknown=abc", "unknown='abc'"),
    ("unknown=2", "unknown='2'"),
    ("unknown=-0.1", "unknown='-0.1'"),
    ("unknown=nan", "unknown='nan'"),
    ("sample=lorentz", "sample='lorentz'"),
    ("unknown=0.5&sample=bands", "sample=reference"),
])
def test_bad_unknown_or_sample_is_a_configuration_error(query: str, expected: str):
    with pytest.raises(SourceConfigError) as e:
        SimSource(f"sim://?{query}")
    assert expected in str(e.value) and e.value.exit_code == 2


def test_sample_bands_keeps_the_idealised_simulator():
    (a,) = _take("sim://?minerals=Diamond&sample=bands&rate=0&count=1&seed=1&spike=0&drift=0")
    assert "reference" not in a.meta and a.truth == "Diamond"
    s = a.calibration.apply(a.spectrum)
    assert abs(s.axis[np.argmax(s.intensities)] - 1332.0) < 1.5
