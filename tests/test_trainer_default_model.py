"""The shipped default bundle: small, trained with the CLI defaults, on the data its manifest names."""
import numpy as np
import pytest

from calibration.dataset import file_sha256, load_dataset
from edge.bundle import default_model_path, load_bundle
from trainer.config import TrainConfig

from .conftest import shared_data

MAX_BYTES = 4_000_000  # "a few MB at most" on the device


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(default_model_path())


def test_default_bundle_is_small(bundle):
    size = sum(p.stat().st_size for p in bundle.path.iterdir() if p.is_file())
    assert size < MAX_BYTES


def test_default_bundle_matches_train_defaults(bundle):
    """The network is what the recorded tolerance's band trains, at that network's CLI defaults."""
    from trainer.archs import get_arch
    from trainer.tolerance import apply_shift_tolerance

    d = apply_shift_tolerance(TrainConfig(), bundle.manifest["training"]["config"]["shift_tolerance"]).check()
    arch = bundle.manifest["architecture"]
    assert arch["name"] == d.arch
    expected = {"points": bundle.preprocessor.grid.size, "classes": len(bundle.classes), **d.arch_params()}
    assert {k: arch["params"][k] for k in expected} == {k: list(v) if isinstance(v, tuple) else v
                                                        for k, v in expected.items()}
    assert bundle.feature_size == get_arch(d.arch).defaults()["dense"]
    t = bundle.manifest["training"]
    for key in ("command", "seed", "versions", "epochs_run", "metrics", "data"):
        assert key in t
    assert t["command"].split()[:3] in (["python", "-m", "trainer.cli"], ["raman-edge", "train", "--data"])


def test_default_bundle_provenance_and_fit_on_real_data(bundle):
    path = shared_data("rruff-soysal", "raw_train.npz")
    assert bundle.manifest["training"]["data"]["sha256"] == file_sha256(path)
    ds = load_dataset(path)
    assert bundle.classes == ds.classes
    x = bundle.preprocessor.batch(ds.spectra, ds.wavenumbers)
    feats = bundle.backbone_session.run(["features"], {"spectrum": x})[0]
    logits = bundle.head_session.run(["logits"], {"features": feats})[0]
    pred = np.asarray(bundle.classes)[logits.argmax(1)]
    # Mostly its own training data (85 %), so well above the 5-fold CV estimate (~76 %).
    assert (pred == ds.labels).mean() > 0.85


def test_default_bundle_is_trained_as_its_recorded_recipe(bundle):
    """The shipped model's config is what its recorded command computes today (README, BENCHMARKS):
    ``--shift-tolerance`` run through the current rule, every other option at the CLI default."""
    from trainer.tolerance import apply_shift_tolerance

    t = bundle.manifest["training"]
    recorded = t["config"]
    tolerance = recorded["shift_tolerance"]
    assert tolerance is not None and f"--shift-tolerance {tolerance:g}" in t["command"]
    expected = apply_shift_tolerance(TrainConfig(), tolerance).to_dict()
    for key in ("pool", "n_pool", "dense", "epochs", "patience", "val_fraction", "calibrate_folds", "seed"):
        assert recorded[key] == expected[key], key
    for key in ("max_shift", "p_shift", "p_background_swap"):
        assert recorded["augment_config"][key] == expected["augment_config"][key], key
    # Trained on every spectrum for the whole budget, temperature cross-fitted (not left at 1).
    assert t["epochs_run"] == expected["epochs"] and t["metrics"]["val_spectra"] == 0
    assert t["metrics"]["calibration"]["folds"] == expected["calibrate_folds"]
    assert bundle.temperature == t["metrics"]["calibration"]["temperature"] != 1.0
