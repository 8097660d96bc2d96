"""``raman-edge train`` (trainer.cli.train): a short successful run and the error paths."""
import builtins
import json
import sys

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
