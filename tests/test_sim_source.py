"""sim:// source: URL options, determinism, count, pacing, instrument axis options."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from calibration.axis import AxisCalibration
from calibration.errors import SourceConfigError, SourceError
from firmware_bridge.minerals import default_minerals
from firmware_bridge.sim import SIM_CALIBRATION_PATH, SimSource, parse_sim_url
from firmware_bridge.source import open_source

from .conftest import shared_data


def _take(url: str, n: int | None = None):
    with SimSource(url) as src:
        return list(src) if n is None else [src.read() for _ in range(n)]


def test_open_source_knows_sim_and_defaults():
    src = open_source("sim://")
    assert isinstance(src, SimSource)
    cfg = src.config
    assert cfg.minerals == default_minerals() and 6 <= len(cfg.minerals) <= 10
    assert (cfg.rate, cfg.count, cfg.drift, cfg.spike) == (2.0, None, 2.0, 0.05)
    assert src.calibration == AxisCalibration.load(SIM_CALIBRATION_PATH)
    assert src.calibration.pixels == 1024 and src.calibration.laser_nm == 532.0


def test_shipped_calibration_spans_the_model_grid():
    cal = AxisCalibration.load(SIM_CALIBRATION_PATH)
    lam, shift = cal.wavelengths(), cal.raman_shift()
    assert 534 < lam[0] < 536 and 588 < lam[-1] < 590
    assert 80 < shift[0] < 120 and 1780 < shift[-1] < 1850
    assert abs(cal.wavelength_poly[2]) < 1e-5  # small quadratic term


@pytest.mark.parametrize(
    "query, option, value",
    [
        ("rate=fast", "rate", "fast"),
        ("rate=-1", "rate", "-1"),
        ("rate=inf", "rate", "inf"),
        ("seed=1.5", "seed", "1.5"),
        ("seed=-3", "seed", "-3"),
        ("count=0", "count", "0"),
        ("count=ten", "count", "ten"),
        ("pixels=10", "pixels", "10"),
        ("laser=nan", "laser", "nan"),
        ("laser=50", "laser", "50"),
        ("drift=-2", "drift", "-2"),
        ("spike=1.5", "spike", "1.5"),
        ("fluorescence=x", "fluorescence", "x"),
        ("signal=0", "signal", "0"),
        ("integration=0", "integration", "0"),
        ("noise=", "noise", ""),
        ("minerals=Calcite,,Quartz", "minerals", "Calcite,,Quartz"),
        ("minerals=Calcite,Unobtainium", "minerals", "Calcite,Unobtainium"),
    ],
)
def test_bad_option_names_option_and_value(query: str, option: str, value: str):
    url = f"sim://?{query}"
    with pytest.raises(SourceError) as e:
        open_source(url)
    msg = str(e.value)
    assert url in msg and f"{option}={value!r}" in msg
    assert isinstance(e.value, SourceConfigError) and e.value.exit_code == 2


def test_unknown_mineral_lists_the_known_ones():
    with pytest.raises(SourceError, match="Unobtainium.*known:.*Calcite.*Quartz"):
        SimSource("sim://?minerals=Unobtainium")


def test_unknown_option_and_host_are_rejected():
    with pytest.raises(SourceError, match="unknown option 'rat'.*rate"):
        SimSource("sim://?rat=5")
    with pytest.raises(SourceError, match="host or path"):
        SimSource("sim://somewhere/else")


def test_mineral_names_are_case_insensitive_and_canonical():
    acqs = _take("sim://?minerals=calcite,QUARTZ&rate=0&count=20&seed=1")
    assert {a.truth for a in acqs} == {"Calcite", "Quartz"}


def test_acquisition_is_a_pixel_spectrum_with_the_reported_calibration():
    t0 = time.time()
    (a,) = _take("sim://?rate=0&count=1&seed=4")
    s = a.spectrum.validated(unit="pixel")
    assert np.array_equal(s.axis, np.arange(1024))
    assert a.calibration is not None and a.calibration.id == AxisCalibration.load(SIM_CALIBRATION_PATH).id
    assert a.truth == a.meta["mineral"] and a.truth in default_minerals()
    assert a.seq == 0 and a.source == "sim://?rate=0&count=1&seed=4"
    assert t0 - 1 <= a.acquired_at <= time.time() + 1
    y = s.intensities
    assert np.array_equal(y, np.rint(y)) and y.min() >= 0 and y.max() <= 65535
    assert y.min() > 700  # dark offset (800 counts) under everything
    for key in ("integration_ms", "detector_temp_c", "axis_offset_cm1", "cosmic_ray_pixels"):
        assert key in a.meta
    assert abs(a.meta["detector_temp_c"] + 10) < 1 and abs(a.meta["axis_offset_cm1"]) <= 2.0


def test_same_seed_same_spectra_other_seed_other_spectra():
    url = "sim://?rate=0&count=15&seed=42&spike=0.3"
    a, b = _take(url), _take(url)
    c = _take(url.replace("seed=42", "seed=43"))
    assert [x.truth for x in a] == [x.truth for x in b]
    assert all(np.array_equal(x.spectrum.intensities, y.spectrum.intensities) for x, y in zip(a, b))
    assert [x.meta["axis_offset_cm1"] for x in a] == [x.meta["axis_offset_cm1"] for x in b]
    assert not all(np.array_equal(x.spectrum.intensities, y.spectrum.intensities) for x, y in zip(a, c))


def test_random_seed_is_recorded_and_repeats_the_run():
    src = SimSource("sim://?rate=0&count=5")
    with src:
        first = [x.spectrum.intensities for x in src]
    again = _take(f"sim://?rate=0&count=5&seed={src.seed}")
    assert all(np.array_equal(x, y.spectrum.intensities) for x, y in zip(first, again))
    assert SimSource("sim://").seed != SimSource("sim://").seed  # fresh entropy each time


def test_count_stops_with_stop_iteration_and_reopen_restarts():
    src = SimSource("sim://?rate=0&count=3&seed=7")
    with src:
        got = list(src)
        assert [a.seq for a in got] == [0, 1, 2]
        with pytest.raises(StopIteration):
            src.read()
        with pytest.raises(StopIteration):
            src.read(timeout=0)
    with src:
        again = list(src)
    assert np.array_equal(got[2].spectrum.intensities, again[2].spectrum.intensities)


def test_read_before_open_is_an_error():
    with pytest.raises(SourceError, match="not open"):
        SimSource("sim://").read()


def test_rate_paces_reads():
    with SimSource("sim://?rate=20&count=6&seed=1") as src:
        t0 = time.monotonic()
        got = list(src)
        elapsed = time.monotonic() - t0
    assert len(got) == 6
    assert 0.2 <= elapsed <= 1.5  # 6 frames at 20 Hz ≈ 0.3 s


def test_read_timeout_returns_none_when_not_due():
    with SimSource("sim://?rate=1&seed=1") as src:
        t0 = time.monotonic()
        assert src.read(timeout=0.05) is None
        assert time.monotonic() - t0 < 0.5


def test_rate_zero_is_fast():
    n = 300
    with SimSource(f"sim://?rate=0&count={n}&seed=2") as src:
        t0 = time.perf_counter()
        got = list(src)
        per = (time.perf_counter() - t0) / n
    assert len(got) == n and per < 0.005  # typically ~0.15 ms


def test_saturation_clips_at_16_bit():
    (a,) = _take("sim://?rate=0&count=1&seed=1&signal=1000000&minerals=Diamond")
    y = a.spectrum.intensities
    assert y.max() == 65535 and np.count_nonzero(y == 65535) >= 1


def test_pixels_option_keeps_the_spectral_range():
    base = SimSource("sim://").calibration
    for px in (512, 2048):
        src = SimSource(f"sim://?pixels={px}&rate=0&count=1&seed=3")
        (a,) = _take(src.url)
        assert a.spectrum.intensities.size == px and a.calibration.pixels == px
        np.testing.assert_allclose(a.calibration.raman_shift()[[0, -1]], base.raman_shift()[[0, -1]], atol=1e-6)
        assert a.calibration.laser_nm == 532.0


def test_laser_option_moves_wavelengths_not_shifts():
    base = SimSource("sim://").calibration
    cal = SimSource("sim://?laser=785").calibration
    assert cal.laser_nm == 785.0 and cal.pixels == 1024
    assert 789 < cal.wavelengths()[0] < 793 and 910 < cal.wavelengths()[-1] < 920
    np.testing.assert_allclose(cal.raman_shift(), base.raman_shift(), atol=0.05)


def test_laser_and_pixels_options_end_to_end():
    acqs = _take("sim://?laser=785&pixels=2048&minerals=Diamond&rate=0&count=5&seed=9&spike=0")
    for a in acqs:
        s = a.calibration.apply(a.spectrum)
        peak = s.axis[np.argmax(s.intensities)]
        assert abs(peak - (1332 + a.meta["axis_offset_cm1"])) < 1.5


def test_calibration_option_uses_the_file(tmp_path):
    cal = AxisCalibration((780.5, 0.07, -4e-6), 776.0, 512, instrument="bench unit 7")
    p = tmp_path / "cal.json"
    cal.save(p)
    (a,) = _take(f"sim://?calibration={p}&rate=0&count=1&seed=1")
    assert a.calibration.id == cal.id and a.spectrum.intensities.size == 512
    (b,) = _take(f"sim://?calibration={p}&pixels=1024&rate=0&count=1&seed=1")
    assert b.calibration.pixels == 1024 and b.calibration.laser_nm == 776.0


@pytest.mark.parametrize("content", ["{not json", json.dumps({"format": "other"})])
def test_bad_calibration_file_is_a_source_error(tmp_path, content):
    p = tmp_path / "bad.json"
    p.write_text(content)
    with pytest.raises(SourceError, match=f"calibration='{p}'"):
        SimSource(f"sim://?calibration={p}")
    with pytest.raises(SourceError, match="calibration="):
        SimSource(f"sim://?calibration={tmp_path / 'missing.json'}")


def test_default_minerals_are_training_classes():
    path = shared_data("rruff-soysal", "raw_train.npz")
    labels = set(np.load(path)["labels"].tolist())
    assert set(default_minerals()) <= labels
    assert parse_sim_url("sim://").minerals == default_minerals()
