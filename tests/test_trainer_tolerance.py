"""Shift tolerance: the rule (as documented), shift evaluation, and the manifest record."""
import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from calibration.errors import ConfigError
from trainer.config import TrainConfig
from trainer.models import pooled_lengths
from trainer.synthetic import lorentzian, write_synthetic_npz
from trainer.tolerance import (EVAL_SHIFTS, MAX_TOLERANCE, TOLERANCE_RULE, apply_shift_tolerance, shift_accuracy,
                               shift_spectra, tolerance_settings)

DOC = Path(__file__).resolve().parents[1] / "docs" / "augmentation.md"


def documented_rule() -> dict[tuple[float, str], tuple]:
    """Rows ``| 5 | liu | 3 | 3 | ±10 | 0.8 | 40 | 250 | 0 | none | ...`` of the table under "### The rule"
    in docs/augmentation.md, keyed by (tolerance, network): m, n, training shift, p_shift, patience,
    epochs, the validation split (a number, or "default": the configuration's), the test-time averaging
    window (W:STEP or none) and whether the row is what the tolerance alone trains (no "(--arch ...)")."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("### The rule", 1)[1].split("\n#", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"\|\s*([\d.]+)\s*\|\s*([a-z-]+)\s*(\(--arch [a-z-]+\))?\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|"
                     r"\s*±\s*([\d.]+)\s*\|\s*([\d.]+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*([\d.]+|default)\s*\|"
                     r"\s*(none|\d+:\d+)\s*\|", line)
        if m:
            val = None if m[10] == "default" else float(m[10])
            window = None if m[11] == "none" else tuple(int(v) for v in m[11].split(":"))
            rows[(float(m[1]), m[2])] = (int(m[4]), int(m[5]), float(m[6]), float(m[7]), int(m[8]), int(m[9]), val,
                                         window, m[3] is None)
    return rows


def test_rule_matches_the_documentation():
    rows = documented_rule()
    assert {(5.0, "compact"), (5.0, "liu"), (15.0, "liu"), (30.0, "fmcnn"), (30.0, "liu")} <= set(rows)
    for (cm, arch), row in rows.items():
        s = tolerance_settings(cm, arch)
        assert (s.pool, s.n_pool, s.max_shift, s.p_shift, s.patience, s.epochs, s.val_fraction,
                s.shift_average) == row[:-1], (cm, arch)
        if row[-1]:  # what --shift-tolerance alone trains
            assert tolerance_settings(cm).arch == arch and tolerance_settings(cm) == s, (cm, arch)
        else:
            assert tolerance_settings(cm).arch != arch, (cm, arch)


@pytest.mark.parametrize("cm", [0, 1, 5, 10, 15, 20, 30, MAX_TOLERANCE / 3, MAX_TOLERANCE])
def test_rule_covers_the_drift_and_builds(cm):
    s = tolerance_settings(cm)
    assert s.tolerance == cm
    # training shifts plus the averaging window reach the drift
    assert s.max_shift + (s.shift_average[0] if s.shift_average else 0) >= cm and 0 < s.p_shift <= 1
    assert pooled_lengths(1392, s.pool, s.n_pool)[-1] >= 1
    TrainConfig(pool=s.pool, n_pool=s.n_pool, shift_tolerance=cm).check()


@pytest.mark.parametrize("arch", ["liu", "fmcnn", "compact"])
def test_rule_is_monotone(arch):
    """For one network, wider drift never means narrower training shifts or a shorter budget; among
    early-stopped rows (none since stop 16), never less patience."""
    grid = np.linspace(0, MAX_TOLERANCE, 61)
    settings = [tolerance_settings(c, arch) for c in grid]
    for key in ("max_shift", "epochs"):
        values = [getattr(s, key) for s in settings]
        assert all(b >= a for a, b in zip(values, values[1:])), key
    stopped = [s.patience for s in settings if s.val_fraction is None]
    assert all(b >= a for a, b in zip(stopped, stopped[1:]))


def test_fixed_budget_rows_train_as_their_evidence_was_measured():
    """Without a validation split patience still paces the learning-rate plateau: the fixed-budget
    rows were measured (benchmarks/soysal_table.py) with the default patience, so they must keep it."""
    fixed = [r for r in TOLERANCE_RULE if r.val_fraction == 0]
    assert fixed, "the rule has fixed-budget rows (docs/augmentation.md)"
    for row in fixed:
        assert row.patience == TrainConfig().patience, row


def test_fixed_budget_rows_calibrate_out_of_fold():
    """A row without a validation split cross-fits its temperature (else the confidences are uncalibrated)."""
    s = tolerance_settings(30)
    assert s.val_fraction == 0 and s.calibrate_folds >= 2
    assert s.max_shift + s.shift_average[0] > 30  # ±30 inside the range that training and averaging cover
    c = apply_shift_tolerance(TrainConfig(), 30).check()
    assert (c.val_fraction, c.calibrate_folds, c.augment_config.max_shift) == (0, s.calibrate_folds, s.max_shift)
    assert c.arch == s.arch == "fmcnn" and c.shift_average == s.shift_average == (30, 15)
    assert c.calibrate_objective == "brier"  # the default; the NLL fit raised this head's ECE (stop 20)
    liu = apply_shift_tolerance(TrainConfig(), 30, keep={"arch"}).check()
    assert liu.arch == "liu" and liu.shift_average == (40, 20) and liu.augment_config.max_shift == 20
    kept = apply_shift_tolerance(TrainConfig(val_fraction=0.2), 30, keep={"val_fraction", "calibrate_folds"})
    assert (kept.val_fraction, kept.calibrate_folds) == (0.2, 0)
    semi = apply_shift_tolerance(TrainConfig(semi="sgan"), 30).check()  # no cross-fitting for semi-supervised
    assert semi.calibrate_folds == 0 and semi.val_fraction == 0
    assert semi.shift_average is None  # nor averaging (one supervised network only)
    ens = apply_shift_tolerance(TrainConfig(ensemble=2), 30).check()
    assert ens.shift_average is None and ens.augment_config.max_shift == s.max_shift
    own = apply_shift_tolerance(TrainConfig(shift_average=(10, 5)), 30, keep={"shift_average"}).check()
    assert own.shift_average == (10, 5)


@pytest.mark.parametrize("cm", [-1, MAX_TOLERANCE + 1, float("nan"), float("inf")])
def test_rule_refuses(cm):
    with pytest.raises(ConfigError):
        tolerance_settings(cm)


def test_apply_keeps_explicit_options():
    s = tolerance_settings(30)
    base = TrainConfig(pool=5, n_pool=2)
    c = apply_shift_tolerance(base, 30)
    assert (c.pool, c.n_pool, c.shift_tolerance) == (s.pool, s.n_pool, 30)
    assert (c.augment_config.max_shift, c.augment_config.p_shift) == (s.max_shift, s.p_shift)
    assert (c.patience, c.epochs) == (s.patience, s.epochs)
    assert c.augment_config.scale == base.augment_config.scale  # other effects untouched
    k = apply_shift_tolerance(base, 30, keep={"pool", "max_shift", "epochs"})
    assert k.pool == 5 and k.n_pool == s.n_pool and k.epochs == base.epochs and k.patience == s.patience
    assert k.augment_config.max_shift == base.augment_config.max_shift and k.augment_config.p_shift == s.p_shift
    with pytest.raises(ValueError):
        apply_shift_tolerance(base, 30, keep={"dense"})


@pytest.mark.parametrize("config, keep, arch", [
    (TrainConfig(), set(), "fmcnn"),                      # the band's network
    (TrainConfig(), {"arch"}, "liu"),                     # --arch liu on the command line
    (TrainConfig(pool=5), {"pool"}, "liu"),               # -m names liu
    (TrainConfig(dense=128), set(), "liu"),               # so does a liu option set in code
    (TrainConfig(arch="sang"), set(), "sang"),
    (TrainConfig(arch_options={"dense": 128}, arch="compact"), set(), "compact"),
])
def test_the_widest_band_trains_its_network_unless_one_is_named(config, keep, arch):
    c = apply_shift_tolerance(config, 30, keep=keep).check()
    assert c.arch == arch
    assert c.shift_average == tolerance_settings(30, arch).shift_average
    assert apply_shift_tolerance(config, 15, keep=keep).check().arch == config.arch  # ≤ 15: liu's band


def test_apply_to_another_arch_sets_only_the_shifts():
    c = apply_shift_tolerance(TrainConfig(arch="compact"), 30).check()
    s = tolerance_settings(30, "compact")
    assert c.arch == s.arch == "compact" and s == dataclasses.replace(tolerance_settings(30, "liu"), arch="compact")
    assert (c.pool, c.n_pool) == (TrainConfig().pool, TrainConfig().n_pool)
    assert c.augment_config.max_shift == s.max_shift and c.shift_tolerance == 30 and c.epochs == s.epochs


@pytest.mark.parametrize("shift", EVAL_SHIFTS)
def test_shift_moves_a_band_by_exactly_the_shift(shift):
    axis = np.arange(200.0, 1592.0)
    y = lorentzian(axis, 700.0, 9.0) + 0.5 * lorentzian(axis, 1100.0, 14.0) + np.linspace(0.2, 0.4, axis.size)
    out = shift_spectra(y[None, :], axis, shift)[0]
    assert axis[np.argmax(out)] == 700.0 + shift
    # Both bands moved together (a shift, not a stretch).
    window = slice(850, 950)  # 1050-1150 cm⁻¹
    second = axis[window][np.argmax(out[window])]
    assert second == pytest.approx(1100.0 + shift, abs=1)
    # The vacated end holds the spectrum's edge value: no zeros, no wrap-around.
    if shift > 0:
        assert np.allclose(out[:int(shift)], y[0])
    elif shift < 0:
        assert np.allclose(out[int(shift):], y[-1])
    else:
        assert np.allclose(out, y)


def test_shift_accuracy_reports_every_shift():
    axis = np.arange(200.0, 1592.0)
    centres = np.array([400.0, 800.0, 1200.0])
    spectra = np.stack([lorentzian(axis, c, 10.0) for c in centres])
    labels = np.arange(3)

    def nearest_centre(raw):  # a classifier that tolerates ±100 cm⁻¹
        peak = axis[np.argmax(raw, axis=1)]
        return -np.abs(peak[:, None] - centres[None, :])

    res = shift_accuracy(nearest_centre, spectra, axis, labels)
    assert set(res) == {"-30", "-15", "+0", "+15", "+30"}
    assert all(r["top1"] == 1.0 and r["top3"] == 1.0 for r in res.values())

    def exact_only(raw):  # one that tolerates nothing
        peak = axis[np.argmax(raw, axis=1)]
        return (np.abs(peak[:, None] - centres[None, :]) < 0.5).astype(float)

    res = shift_accuracy(exact_only, spectra, axis, labels, shifts=(0, 15))
    assert res["+0"]["top1"] == 1.0 and res["+15"]["top1"] < 1.0


def test_manifest_records_the_tolerance(tmp_path):
    """``raman-edge train --shift-tolerance 15`` (1 epoch, tiny data): the rule's m, n and shifts in the bundle."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from edge.bundle import load_bundle
    from trainer.cli import train

    npz = write_synthetic_npz(tmp_path / "s.npz", n_classes=3, per_class=4, seed=1)
    out = tmp_path / "b"
    r = CliRunner().invoke(train, ["--data", str(npz), "--out", str(out), "--shift-tolerance", "15",
                                   "--epochs", "1", "--dense", "4", "--batch-size", "8", "--threads", "1",
                                   "--no-calibrate", "--quiet"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    m = load_bundle(out).manifest
    s = tolerance_settings(15)
    config = m["training"]["config"]
    assert config["shift_tolerance"] == 15
    assert (config["pool"], config["n_pool"]) == (s.pool, s.n_pool)
    assert (m["architecture"]["params"]["pool"], m["architecture"]["params"]["n_pool"]) == (s.pool, s.n_pool)
    assert config["augment_config"]["max_shift"] == s.max_shift
    assert config["augment_config"]["p_shift"] == s.p_shift
    assert m["training"]["options"]["shift_tolerance"] == 15
    assert config["patience"] == s.patience and config["epochs"] == 1  # the explicit --epochs wins


def test_cli_widest_band_trains_fmcnn_unless_liu_is_named(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from edge.bundle import load_bundle
    from trainer.cli import train

    npz = write_synthetic_npz(tmp_path / "s.npz", n_classes=2, per_class=4, seed=3)
    common = ["--data", str(npz), "--shift-tolerance", "30", "--epochs", "1", "--threads", "1", "--no-calibrate",
              "--quiet"]
    runs = {"band": [], "arch": ["--arch", "liu"], "dense": ["--dense", "64"]}
    manifests = {}
    for name, extra in runs.items():
        r = CliRunner().invoke(train, common + ["--out", str(tmp_path / name)] + extra)
        assert r.exit_code == 0, name + r.output + repr(r.exception)
        manifests[name] = load_bundle(tmp_path / name).manifest
    band = manifests["band"]
    assert band["architecture"]["name"] == "fmcnn" and band["training"]["config"]["arch"] == "fmcnn"
    assert band["architecture"]["head"] == {"kind": "shift-mean", "copies": 5}  # 0, ±15, ±30
    assert band["training"]["config"]["augment_config"]["max_shift"] == 30
    for name in ("arch", "dense"):  # naming liu, or one of its options, keeps it and its row
        m = manifests[name]
        assert m["architecture"]["name"] == "liu", name
        assert m["training"]["config"]["shift_average"] == [40, 20], name


def test_cli_explicit_pool_wins(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from edge.bundle import load_bundle
    from trainer.cli import train

    npz = write_synthetic_npz(tmp_path / "s.npz", n_classes=2, per_class=4, seed=2)
    out = tmp_path / "b"
    r = CliRunner().invoke(train, ["--data", str(npz), "--out", str(out), "--shift-tolerance", "30", "-m", "5",
                                   "--aug", "max_shift=7", "--epochs", "1", "--dense", "4", "--threads", "1",
                                   "--no-calibrate", "--quiet"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    config = load_bundle(out).manifest["training"]["config"]
    s = tolerance_settings(30)
    assert config["pool"] == 5 and config["n_pool"] == s.n_pool
    assert config["augment_config"]["max_shift"] == 7 and config["augment_config"]["p_shift"] == s.p_shift
