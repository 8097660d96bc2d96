"""``raman-edge train`` (trainer.cli.train): a short successful run and the error paths."""
import builtins
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from calibration.errors import ConfigError, MissingExtraError, ReaderError
from trainer.cli import train
from trainer.synthetic import synthetic_spectra, write_synthetic_npz

FAST = ["--epochs", "2", "-m", "4", "-n", "4", "--dense", "8", "--batch-size", "8", "--threads", "1", "--quiet"]


@pytest.fixture
def npz(tmp_path):
    return write_synthetic_npz(tmp_path / "synth.npz", n_classes=3, per_class=5, seed=2)


def _invoke(args):
    return CliRunner().invoke(train, [str(a) for a in args])


def test_train_writes_loadable_bundle(npz, tmp_path):
    pytest.importorskip("torch")
    from edge.bundle import load_bundle

    out = tmp_path / "bundle"
    r = _invoke(["--data", npz, "--out", out, "--seed", "3", *FAST])
    assert r.exit_code == 0, r.output + repr(r.exception)
    b = load_bundle(out)
    assert b.classes == ["mineral_00", "mineral_01", "mineral_02"] and b.feature_size == 8
    t = b.manifest["training"]
    assert t["seed"] == 3 and t["options"]["pool"] == 4 and t["options"]["n_pool"] == 4
    assert t["data"]["path"] == str(npz) and t["epochs_run"] == 2
    # Re-running over an existing bundle replaces it.
    r2 = _invoke(["--data", npz, "--out", out, "--seed", "4", *FAST])
    assert r2.exit_code == 0, r2.output
    assert json.loads((out / "manifest.json").read_text())["training"]["seed"] == 4


def test_summary_printed_unless_quiet(npz, tmp_path):
    pytest.importorskip("torch")
    args = [a for a in FAST if a != "--quiet"]
    r = _invoke(["--data", npz, "--out", tmp_path / "b", *args])
    assert r.exit_code == 0, r.output
    assert "classes" in r.output and "epochs" in r.output


def test_cross_fitted_temperature_reaches_the_manifest(npz, tmp_path):
    pytest.importorskip("torch")
    from edge.bundle import load_bundle

    args = [a for a in FAST if a != "--quiet"]
    r = _invoke(["--data", npz, "--out", tmp_path / "b", "--val-fraction", "0", "--calibrate-folds", "3", *args])
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert "out-of-fold (3-fold) ECE(15)" in r.output and "no validation split" in r.output
    b = load_bundle(tmp_path / "b")
    calib = b.manifest["training"]["metrics"]["calibration"]
    assert calib["folds"] == 3 and calib["spectra"] == 15 and "cross-fitting" in calib["split"]
    assert b.manifest["temperature"] == pytest.approx(calib["temperature"])
    assert b.manifest["training"]["options"]["calibrate_folds"] == 3


def test_missing_file(tmp_path):
    r = _invoke(["--data", tmp_path / "nope.npz", "--out", tmp_path / "b"])
    assert r.exit_code != 0
    assert "nope.npz" in r.output and "does not exist" in r.output


def test_npz_without_spectra(tmp_path):
    pytest.importorskip("torch")
    p = tmp_path / "bad.npz"
    np.savez(p, labels=np.array(["a", "b"]), wavenumbers=np.arange(3.0))
    r = _invoke(["--data", p, "--out", tmp_path / "b", *FAST])
    assert r.exit_code != 0
    assert isinstance(r.exception, ReaderError)
    assert "spectra" in str(r.exception) and "bad.npz" in str(r.exception)
    assert not (tmp_path / "b").exists()


def test_nan_spectrum(tmp_path):
    pytest.importorskip("torch")
    spectra, labels, axis = synthetic_spectra(n_classes=2, per_class=3)
    spectra[4, 100] = np.nan
    p = tmp_path / "nan.npz"
    np.savez(p, spectra=spectra, labels=labels, wavenumbers=axis)
    r = _invoke(["--data", p, "--out", tmp_path / "b", *FAST])
    assert r.exit_code != 0
    assert isinstance(r.exception, ReaderError) and "row 4" in str(r.exception)


@pytest.mark.parametrize("opt,value", [("--pool", "0"), ("-n", "17"), ("--dense", "0"), ("--epochs", "0"),
                                       ("--lr", "0"), ("--val-fraction", "0.8"), ("--arch", "vgg"),
                                       ("--batch-size", "-1"), ("--seed", "-5"), ("--dropout", "1"),
                                       ("--calibrate-folds", "21")])
def test_bad_option_values(npz, tmp_path, opt, value):
    r = _invoke(["--data", npz, "--out", tmp_path / "b", opt, value])
    assert r.exit_code == 2
    assert opt.lstrip("-") in r.output or "Invalid value" in r.output


def test_required_options(npz):
    assert _invoke(["--data", npz]).exit_code == 2
    assert "--data" in _invoke(["--out", "x"]).output


def test_refuses_to_replace_a_non_bundle_directory(npz, tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("keep me")
    r = _invoke(["--data", npz, "--out", out, *FAST])
    assert r.exit_code != 0 and isinstance(r.exception, ConfigError)
    assert "not a model bundle" in str(r.exception)
    assert (out / "thesis.tex").read_text() == "keep me"


def test_missing_torch_names_the_extra(npz, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    r = _invoke(["--data", npz, "--out", tmp_path / "b"])
    assert r.exit_code != 0
    assert isinstance(r.exception, MissingExtraError)
    assert r.exception.extra == "train" and "raman-edge[train]" in str(r.exception)


def test_cli_module_does_not_import_torch():
    import subprocess

    code = "import sys, trainer.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_progress_bar_only_on_a_terminal():
    import io

    from trainer.progress import EpochProgress
    from trainer.train import EpochLog

    class Tty(io.StringIO):
        def isatty(self):
            return True

    entry = EpochLog(epoch=1, train_loss=1.2345, train_acc=0.5, val_loss=None, val_acc=None, lr=1e-3,
                     seconds=0.1, improved=True)
    tty, pipe = Tty(), io.StringIO()
    for stream, enabled in ((tty, True), (pipe, True), (Tty(), False)):
        with EpochProgress(3, enabled=enabled, stream=stream) as progress:
            progress(entry)
    assert "1.234" in tty.getvalue() and "50.0%" in tty.getvalue()
    assert pipe.getvalue() == ""


# --------------------------------------------------------------------------- a poor fit is never signed off silently

def test_random_labels_train_with_one_warning_line_and_a_manifest_record(tmp_path):
    pytest.importorskip("torch")
    from edge.bundle import load_bundle

    p = write_synthetic_npz(tmp_path / "synth.npz", n_classes=8, per_class=8, seed=2)
    d = dict(np.load(p))
    d["labels"] = np.random.default_rng(0).permutation(d["labels"])  # nothing left to learn
    np.savez(p, **d)
    out = tmp_path / "poor"
    r = _invoke(["--data", p, "--out", out, "--seed", "1", *FAST])  # --quiet: the warning still shows
    assert r.exit_code == 0, r.output + repr(r.exception)
    warnings = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("raman-edge: warning: ")
    b = load_bundle(out)
    recorded = b.manifest["training"]["warnings"]
    assert recorded and "validation top-1" in recorded[0] and ("near chance" in recorded[0] or "below" in recorded[0])
    assert b.model_id in warnings[0] and recorded[0] in warnings[0] and "manifest.json" in warnings[0]
    assert r.stdout == ""


def test_fit_warnings_name_each_problem():
    from trainer.quality import fit_warnings

    calib = {"temperature": 0.28, "ece_after": 0.05, "spectra": 52}
    found = fit_warnings({"val_top1": 0.04, "val_spectra": 52, "calibration": calib}, 63, 0.28)
    assert found == ["validation top-1 4.0% on 52 spectra is near chance (1/63 = 1.6%)",
                     "fitted temperature 0.28 is outside the plausible 0.5-5"]
    assert fit_warnings({"val_top1": 0.3, "val_spectra": 40}, 63, 1.0) == ["validation top-1 30.0% on 40 spectra "
                                                                           "is below 50%"]
    assert "temperature 7.5" in fit_warnings({"val_top1": 0.9, "calibration": calib}, 10, 7.5)[0]
    # No temperature was fitted: T = 1 is the default, not a finding.
    assert fit_warnings({"val_top1": 0.9}, 10, 1.0) == []
    # Cross-fitting (no validation split): the out-of-fold top-1 is the held-out figure.
    oof = {"temperature": 1.0, "ece_after": 0.04, "spectra": 300, "folds": 5, "top1": 0.05}
    assert "out-of-fold top-1 5.0% on 300 spectra is near chance" in fit_warnings({"calibration": oof}, 63, 1.0)[0]
    # A poor calibration fit, judged only on enough spectra.
    bad_ece = dict(oof, top1=0.9, ece_after=0.3)
    assert "ECE(15) is still 0.300" in fit_warnings({"calibration": bad_ece}, 63, 1.0)[0]
    assert fit_warnings({"calibration": dict(bad_ece, spectra=10)}, 63, 1.0) == []


def test_the_shipped_model_is_signed_off_without_a_warning():
    from edge.bundle import load_bundle
    from trainer.quality import fit_warnings

    b = load_bundle(Path(__file__).resolve().parents[1] / "edge" / "models" / "default")
    assert fit_warnings(b.manifest["training"]["metrics"], len(b.classes), b.manifest["temperature"]) == []


def test_help_states_the_thresholds_the_check_uses():
    from trainer.quality import MAX_ECE, MIN_TOP1, T_RANGE

    text = " ".join(_invoke(["--help"]).output.split())
    assert f"below {MIN_TOP1:.0%}".replace("%", " %") in text and f"{T_RANGE[0]:g}-{T_RANGE[1]:g}" in text
    assert f"above {MAX_ECE:g}" in text and "training.warnings" in text
