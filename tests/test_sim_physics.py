"""sim:// physics: band positions (real references and the band table) through calibration + preprocessing,
drift, spikes, noise, the mineral table."""
from __future__ import annotations

import copy

import numpy as np
import pytest
from scipy.signal import find_peaks

from calibration.errors import InputError
from calibration.preprocess import DEFAULT_SPEC, Preprocessor
from firmware_bridge.minerals import available_minerals, default_minerals, get_mineral
from firmware_bridge.reference import axis_cm1, load_references
from firmware_bridge.sim import SimSource, synthesize_raman

from .conftest import shared_data

GRID = np.arange(200.0, 1592.0, 1.0)


def _take(url: str):
    with SimSource(url) as src:
        return list(src)


def _strongest_peak(y: np.ndarray) -> float:
    """Position on the model grid of the most prominent peak (robust to the fluorescence background)."""
    pk, props = find_peaks(y, prominence=0.02)
    return float(GRID[pk[np.argmax(props["prominences"])]])


@pytest.mark.parametrize(
    "mineral", ["Calcite", "Quartz", "Diamond", "Dolomite", "Fluorapatite", "Albite", "Corundum", "Almandine"]
)
def test_strongest_band_survives_calibration_and_preprocessing(mineral: str):
    pre = Preprocessor()
    lit = get_mineral(mineral).strongest
    for a in _take(f"sim://?minerals={mineral}&sample=bands&rate=0&count=8&seed=5&spike=0"):
        y = pre(a.calibration.apply(a.spectrum))
        peak = _strongest_peak(y)
        off = a.meta["axis_offset_cm1"]
        assert abs(peak - lit) <= 2.0 + 2.0  # drift=2 plus grid/pixel rounding
        assert abs(peak - (lit + off)) <= 1.5  # the offset in meta is the one applied


@pytest.mark.parametrize(
    "mineral", ["Calcite", "Quartz", "Diamond", "Dolomite", "Fluorapatite", "Albite", "Corundum", "Almandine"]
)
def test_reference_strongest_band_survives_calibration_and_preprocessing(mineral: str):
    """The real reference's most prominent band lands where the drift in meta says."""
    pre = Preprocessor()
    ref = load_references()[mineral]
    on_grid = np.interp(GRID, axis_cm1(), ref.intensities)
    band = _strongest_peak(on_grid)
    for a in _take(f"sim://?minerals={mineral}&rate=0&count=8&seed=5&spike=0"):
        peak = _strongest_peak(pre(a.calibration.apply(a.spectrum)))
        assert abs(peak - (band + a.meta["axis_offset_cm1"])) <= 1.5, (peak, band, a.meta["axis_offset_cm1"])


def test_drift_zero_puts_bands_on_the_literature_positions():
    pre = Preprocessor()
    for a in _take("sim://?minerals=Diamond,Calcite,Quartz&sample=bands&drift=0&rate=0&count=12&seed=8&spike=0"):
        assert a.meta["axis_offset_cm1"] == 0.0
        assert abs(_strongest_peak(pre(a.calibration.apply(a.spectrum))) - get_mineral(a.truth).strongest) <= 1.0


def test_drift_stays_within_bounds_and_wanders():
    offs = np.array([a.meta["axis_offset_cm1"] for a in _take("sim://?drift=5&rate=0&count=400&seed=2")])
    assert np.all(np.abs(offs) <= 5.0)
    assert offs.std() > 0.5 and np.ptp(offs) > 3.0
    # A slow drift, not independent draws: consecutive offsets are much closer than random pairs.
    pairs = np.abs(offs - np.random.default_rng(0).permutation(offs)).mean()
    assert np.abs(np.diff(offs)).mean() < 0.3 * pairs


def test_every_mineral_peaks_at_its_strongest_band_noise_free():
    for name in available_minerals():
        y = synthesize_raman(name, GRID)
        assert abs(GRID[np.argmax(y)] - get_mineral(name).strongest) <= 2.0, name
        assert 0.9 < y.max() < 1.3, name


def test_synthesize_raman_shift_noise_and_errors():
    y0 = synthesize_raman("Diamond", GRID)
    assert np.array_equal(y0, synthesize_raman("diamond", GRID))  # deterministic, case-insensitive
    assert GRID[np.argmax(synthesize_raman("Diamond", GRID, shift_cm1=5.0))] == 1337.0
    a = synthesize_raman("Quartz", GRID, np.random.default_rng(3), noise=0.01, fluorescence=0.5, jitter=True)
    b = synthesize_raman("Quartz", GRID, np.random.default_rng(3), noise=0.01, fluorescence=0.5, jitter=True)
    assert np.array_equal(a, b) and not np.array_equal(a, synthesize_raman("Quartz", GRID))
    assert a.min() > -0.1 and 0.3 < np.median(a) < 1.6  # background lifts the whole spectrum
    with pytest.raises(InputError, match="Unobtainium"):
        synthesize_raman("Unobtainium", GRID)
    with pytest.raises(InputError, match="monotonic"):
        synthesize_raman("Quartz", np.array([200.0, 200.0, 201.0]))


def test_spike_probability_is_honoured():
    acqs = _take("sim://?spike=0.3&rate=0&count=400&seed=4")
    hits = sum(bool(a.meta["cosmic_ray_pixels"]) for a in acqs)
    assert 0.3 * 400 - 4 * np.sqrt(400 * 0.21) <= hits <= 0.3 * 400 + 4 * np.sqrt(400 * 0.21)
    assert not any(a.meta["cosmic_ray_pixels"] for a in _take("sim://?spike=0&rate=0&count=100&seed=4"))


def test_spikes_are_narrow_intense_and_removed_by_despike():
    spiky = _take("sim://?spike=1&rate=0&count=80&seed=11")
    clean = _take("sim://?spike=0&rate=0&count=80&seed=11")
    pre = Preprocessor()
    spec = copy.deepcopy(DEFAULT_SPEC)
    spec["steps"] = [s for s in spec["steps"] if s["op"] != "despike"]
    no_despike = Preprocessor(spec)
    removed = visible = n = 0
    for a, b in zip(spiky, clean):
        px = a.meta["cosmic_ray_pixels"]
        assert 1 <= len(px) <= 2
        # Same seed: the spectra differ only at the spike pixels, by thousands of counts.
        diff = np.nonzero(a.spectrum.intensities != b.spectrum.intensities)[0]
        assert set(diff.tolist()) <= set(px)
        assert (a.spectrum.intensities[px[0]] - b.spectrum.intensities[px[0]]) >= 1500 or \
            a.spectrum.intensities[px[0]] == 65535
        shift = a.calibration.raman_shift(np.array(px, float))
        if not np.all((shift > GRID[0] + 5) & (shift < GRID[-1] - 5)):
            continue  # off the model grid: preprocessing never sees it
        n += 1
        sa, sb = a.calibration.apply(a.spectrum), b.calibration.apply(b.spectrum)
        removed += np.abs(pre(sa) - pre(sb)).max() < 0.05
        visible += np.abs(no_despike(sa) - no_despike(sb)).max() > 0.2
    assert n >= 50
    assert removed >= 0.9 * n  # a spike sitting on a band can survive the narrow-spike filter
    assert visible >= 0.9 * n  # ...and without despiking they would dominate


def test_shot_and_read_noise_statistics():
    noisy = _take("sim://?minerals=Quartz&rate=0&count=30&seed=6&spike=0")
    clean = _take("sim://?minerals=Quartz&rate=0&count=30&seed=6&spike=0&noise=0")
    ratios = []
    for a, b in zip(noisy, clean):
        electrons = b.spectrum.intensities - 800.0  # noise-free counts minus the dark offset
        resid = a.spectrum.intensities - b.spectrum.intensities
        ratios.append(np.mean(resid**2) / np.mean(electrons + 6.0**2))
    assert 0.85 < np.mean(ratios) < 1.15  # Poisson variance = counts, plus read noise²


def test_fluorescence_option_raises_the_background():
    def floor(url: str) -> float:
        return float(np.mean([np.percentile(a.spectrum.intensities, 10) for a in _take(url)]))

    base = "sim://?minerals=Calcite&rate=0&count=20&seed=3&spike=0"
    none, strong = floor(base + "&fluorescence=0"), floor(base + "&fluorescence=3")
    assert none < 900 < 2000 < strong  # dark offset only vs a broad background of thousands of counts
    for a in _take(base + "&fluorescence=0"):
        assert a.meta["fluorescence_counts"] == 0.0


def test_mineral_table_is_complete_and_cited():
    names = available_minerals()
    assert len(names) >= 15 and set(default_minerals()) <= set(names)
    for name in names:
        m = get_mineral(name)
        assert m.references and any("RRUFF" in r for r in m.references) and m.rruff, name
        assert np.count_nonzero(m.heights == 1.0) == 1 and np.all(m.fwhm >= 3.0), name
        assert 100 < m.strongest < 1600, name


def test_minerals_are_training_classes():
    labels = set(np.load(shared_data("rruff-soysal", "raw_train.npz"))["labels"].tolist())
    assert set(available_minerals()) <= labels


def test_band_table_matches_real_rruff_spectra():
    """Nearest noise-free template classifies real RRUFF processed spectra of these minerals."""
    d = np.load(shared_data("rruff-sang", "dataset_1_dev.npz"))
    wn = d["wavenumbers"].astype(np.float64)
    keep = wn >= 150
    names = available_minerals()
    templates = np.stack([synthesize_raman(n, wn)[keep] for n in names])
    templates /= np.linalg.norm(templates, axis=1, keepdims=True)
    mask = np.isin(d["labels"], names)
    x = d["spectra"][mask][:, keep].astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12
    pred = np.asarray(names)[np.argmax(x @ templates.T, axis=1)]
    assert mask.sum() > 500
    assert np.mean(pred == d["labels"][mask]) >= 0.85  # 0.93 when written; chance is ~0.05
    # The RRUFF ids cited for each mineral are real samples of it.
    ids = np.array([f.split("__")[1].split("-")[0] for f in d["files"]])
    for name in names:
        for rid in get_mineral(name).rruff:
            assert set(d["labels"][ids == rid].tolist()) <= {name}, (name, rid)
