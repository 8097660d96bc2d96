"""Semi-supervised training (trainer.semi): losses, generator, SGAN and contrastive runs, export, CLI options."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from click.testing import CliRunner  # noqa: E402

from calibration.dataset import Dataset, file_sha256, load_dataset  # noqa: E402
from calibration.errors import ConfigError, ReaderError  # noqa: E402
from edge.bundle import load_bundle  # noqa: E402
from trainer.cli import train as train_cli  # noqa: E402
from trainer.config import SemiConfig, TrainConfig, parse_semi_options  # noqa: E402
from trainer.export import save_bundle  # noqa: E402
from trainer.semi import (Generator, UnlabeledSet, load_unlabeled, nt_xent, sgan_unsupervised_loss,  # noqa: E402
                          train_contrastive, train_semi, train_sgan)
from trainer.synthetic import synthetic_spectra, write_synthetic_npz  # noqa: E402
from trainer.train import preprocess_dataset  # noqa: E402

from .conftest import shared_data  # noqa: E402

FAST = dict(pool=4, n_pool=4, dense=16, epochs=2, batch_size=8, threads=1, seed=0)
TINY_SEMI = SemiConfig(pretrain_epochs=2, head_epochs=2, pretrain_batch=16)
CLI_FAST = ["--epochs", "1", "-m", "4", "-n", "4", "--dense", "8", "--batch-size", "8", "--threads", "1", "--quiet",
            "--semi-opt", "pretrain_epochs=1", "--semi-opt", "head_epochs=1"]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    path = write_synthetic_npz(tmp_path_factory.mktemp("semi") / "lab.npz", n_classes=4, per_class=[6, 5, 4, 3],
                               seed=7)
    return load_dataset(path)


@pytest.fixture(scope="module")
def unlabeled_npz(tmp_path_factory):
    spectra, _, axis = synthetic_spectra(n_classes=4, per_class=6, seed=8)
    path = tmp_path_factory.mktemp("semi") / "pool.npz"
    np.savez(path, spectra=spectra, wavenumbers=axis.astype(np.float32))  # no labels: that is the point
    return path


@pytest.fixture(scope="module")
def unlabeled(unlabeled_npz, labelled):
    return load_unlabeled(unlabeled_npz, labelled.wavenumbers)


def _config(method, seed=0):
    return TrainConfig(semi=method, semi_config=TINY_SEMI, **dict(FAST, seed=seed))


# ------------------------------------------------------------------------------------------------ losses
def test_nt_xent_equals_direct_computation():
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    tau = 0.37
    z = np.concatenate([z1, z2])
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n2 = len(z)
    losses = []
    for i in range(n2):
        partner = (i + 3) % n2
        sims = {j: np.exp(z[i] @ z[j] / tau) for j in range(n2) if j != i}
        losses.append(-np.log(sims[partner] / sum(sims.values())))
    got = float(nt_xent(torch.tensor(z1), torch.tensor(z2), tau))
    assert got == pytest.approx(np.mean(losses), rel=1e-9)
    # Swapping the partners of one pair changes the loss: the pairing matters.
    assert float(nt_xent(torch.tensor(z1), torch.tensor(z2[[1, 0, 2]]), tau)) != pytest.approx(got)


def test_sgan_loss_is_k_plus_one_softmax_with_a_zero_fake_logit():
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(4, 3)) * 3, rng.normal(size=(5, 3)) * 3

    def p_real(logits):  # K+1 softmax, fake logit fixed at 0: P(real) = 1 - P(fake)
        full = np.concatenate([logits, np.zeros((len(logits), 1))], axis=1)
        p = np.exp(full - full.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        return 1 - p[:, -1]

    expected = -np.log(p_real(real)).mean() - np.log(1 - p_real(fake)).mean()
    assert float(sgan_unsupervised_loss(torch.tensor(real), torch.tensor(fake))) == pytest.approx(expected, rel=1e-9)


def test_generator_output_on_grid_nonnegative_max_normalised():
    torch.manual_seed(0)
    g = Generator(1392, latent=128)
    with torch.no_grad():
        y = g(torch.randn(5, 128))
    assert y.shape == (5, 1392)
    assert float(y.min()) >= 0.0
    assert torch.allclose(y.amax(1), torch.ones(5))


# ------------------------------------------------------------------------------------------------ runs
@pytest.mark.parametrize("method", ["sgan", "contrastive"])
def test_method_runs_deterministic_and_exports(method, labelled, unlabeled, tmp_path):
    a = train_semi(labelled, unlabeled, _config(method))
    b = train_semi(labelled, unlabeled, _config(method))
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    c = train_semi(labelled, unlabeled, _config(method, seed=1))
    assert not all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), c.model.state_dict().values()))
    semi = a.metrics["semi"]
    assert semi["method"] == method and semi["unlabeled_spectra"] == len(unlabeled)
    assert semi["pool_spectra"] == len(unlabeled) + len(labelled)
    x = preprocess_dataset(labelled)[:8]
    bundle = save_bundle(tmp_path / "b", a, labelled, command="test", check_x=x)
    loaded = load_bundle(bundle.path)
    assert loaded.classes == labelled.classes and loaded.feature_size == 16
    feats = loaded.backbone_session.run(["features"], {"spectrum": x})[0]
    logits = loaded.head_session.run(["logits"], {"features": feats})[0]
    with torch.no_grad():
        expected = a.model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    training = json.loads((bundle.path / "manifest.json").read_text())["training"]
    assert training["config"]["semi"] == method and training["metrics"]["semi"]["method"] == method


def test_contrastive_without_finetune_keeps_the_pretrained_encoder(labelled, unlabeled):
    from trainer.semi import pretrain_contrastive

    config = _config("contrastive")
    pre = pretrain_contrastive([(labelled.spectra, labelled.wavenumbers), (unlabeled.spectra, unlabeled.wavenumbers)],
                               config, classes=len(labelled.classes))
    frozen = TrainConfig(semi="contrastive", semi_config=SemiConfig(head_epochs=2, finetune=False), **FAST)
    r = train_contrastive(labelled, unlabeled, frozen, pretrained=pre)
    for k, v in pre.backbone_state.items():
        assert torch.equal(r.model.backbone.state_dict()[k], v), k
    assert r.metrics["semi"]["finetune"] is False


def test_sgan_non_feature_matching_runs(labelled, unlabeled):
    cfg = TrainConfig(semi="sgan", semi_config=SemiConfig(feature_matching=False, latent=8), **dict(FAST, epochs=1))
    r = train_sgan(labelled, unlabeled, cfg)
    assert r.epochs_run == 1 and np.isfinite(r.metrics["train_loss"])


# ------------------------------------------------------------------------------------------------ options
def test_semi_options_parse_and_refuse():
    c = parse_semi_options(["finetune=false", "nt_xent_temperature=0.5", "view_aug.p_poisson=0.3"])
    assert c.finetune is False and c.nt_xent_temperature == 0.5 and c.view_aug["p_poisson"] == 0.3
    for bad in (["nope=1"], ["latent=1.5"], ["nt_xent_temperature=0"], ["view_aug.p_shift=2"], ["latent"]):
        with pytest.raises(ConfigError):
            parse_semi_options(bad)
    with pytest.raises(ConfigError, match="semi"):
        TrainConfig(semi="vae").check()


def test_load_unlabeled_ignores_labels_and_checks_the_axis(tmp_path, labelled):
    spectra, labels, axis = synthetic_spectra(n_classes=2, per_class=3, seed=3)
    p = tmp_path / "with_labels.npz"
    np.savez(p, spectra=spectra, labels=labels, wavenumbers=axis)
    u = load_unlabeled(p, labelled.wavenumbers)
    assert len(u) == 6 and not hasattr(u, "labels")
    np.savez(tmp_path / "short.npz", spectra=spectra, wavenumbers=axis[:-1])
    with pytest.raises(ReaderError, match="axis mismatch"):
        load_unlabeled(tmp_path / "short.npz")
    np.savez(tmp_path / "far.npz", spectra=spectra, wavenumbers=axis + 1300.0)
    with pytest.raises(ReaderError, match="axis mismatch"):
        load_unlabeled(tmp_path / "far.npz", labelled.wavenumbers)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ReaderError, match="junk.npz"):
        load_unlabeled(tmp_path / "junk.npz")
    np.savez(tmp_path / "nokeys.npz", x=spectra)
    with pytest.raises(ReaderError, match="missing"):
        load_unlabeled(tmp_path / "nokeys.npz")


def _invoke(args):
    return CliRunner().invoke(train_cli, [str(a) for a in args])


def test_cli_semi_requires_unlabeled_and_refuses_it_alone(labelled, unlabeled_npz, tmp_path):
    r = _invoke(["--data", labelled.path, "--out", tmp_path / "b", "--semi", "sgan", *CLI_FAST])
    assert isinstance(r.exception, ConfigError) and "--unlabeled" in str(r.exception)
    r = _invoke(["--data", labelled.path, "--out", tmp_path / "b", "--unlabeled", unlabeled_npz, "--quiet"])
    assert isinstance(r.exception, ConfigError) and "--semi" in str(r.exception)
    r = _invoke(["--data", labelled.path, "--out", tmp_path / "b", "--semi", "vae", "--unlabeled", unlabeled_npz])
    assert r.exit_code == 2 and "vae" in r.output
    assert not (tmp_path / "b").exists()


def test_cli_bad_unlabeled_file_and_axis(labelled, tmp_path):
    (tmp_path / "bad.npz").write_text("nope")
    r = _invoke(["--data", labelled.path, "--out", tmp_path / "b", "--semi", "contrastive", "--unlabeled",
                 tmp_path / "bad.npz", *CLI_FAST])
    assert isinstance(r.exception, ReaderError) and "bad.npz" in str(r.exception)
    spectra, _, axis = synthetic_spectra(n_classes=2, per_class=2, seed=3)
    np.savez(tmp_path / "axis.npz", spectra=spectra, wavenumbers=axis[:100])
    r = _invoke(["--data", labelled.path, "--out", tmp_path / "b", "--semi", "contrastive", "--unlabeled",
                 tmp_path / "axis.npz", *CLI_FAST])
    assert isinstance(r.exception, ReaderError) and "axis mismatch" in str(r.exception)
    r = _invoke(["--data", labelled.path, "--out", tmp_path / "b", "--semi", "sgan", "--unlabeled",
                 tmp_path / "missing.npz", *CLI_FAST])
    assert isinstance(r.exception, ReaderError) and "missing.npz" in str(r.exception)
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("method", ["contrastive", "sgan"])
def test_cli_semi_writes_bundle_with_provenance(method, labelled, unlabeled_npz, tmp_path):
    out = tmp_path / "bundle"
    r = _invoke(["--data", labelled.path, "--out", out, "--semi", method, "--unlabeled", unlabeled_npz, *CLI_FAST])
    assert r.exit_code == 0, r.output + repr(r.exception)
    training = load_bundle(out).manifest["training"]
    semi = training["metrics"]["semi"]
    assert training["config"]["semi"] == method and semi["method"] == method
    assert semi["unlabeled"][0]["sha256"] == file_sha256(unlabeled_npz)
    assert semi["unlabeled"][0]["spectra"] == 24 and semi["labelled_spectra"] == len(labelled)
    assert training["options"]["unlabeled"] == str(unlabeled_npz)
    assert training["config"]["semi_config"]["pretrain_epochs"] == 1


# ------------------------------------------------------------------------------------------------ benchmark
def _bench():
    import benchmarks.semi_supervised as bench
    return bench


def test_benchmark_test_split_protocol():
    bench = _bench()
    labels = np.repeat([f"m{i}" for i in range(6)], [3, 4, 5, 8, 2, 6])
    in_10 = np.zeros(labels.size, bool)
    for c in np.unique(labels):
        in_10[np.nonzero(labels == c)[0][0]] = True
    test = bench.test_split(labels, in_10, 0.25, seed=1)
    assert not (test & in_10).any()  # the 10 % split stays whole
    for c in np.unique(labels):  # every mineral with spectra outside the 10 % split gives at least one
        n_out = int(((labels == c) & ~in_10).sum())
        assert int((test & (labels == c)).sum()) == max(1, round(0.25 * n_out))
    assert np.array_equal(test, bench.test_split(labels, in_10, 0.25, seed=1))
    assert not np.array_equal(test, bench.test_split(labels, in_10, 0.25, seed=2))


def test_benchmark_leak_guard_removes_remeasurements_keeps_other_spectra():
    bench = _bench()
    x = np.linspace(200, 1591, 1392)

    def peaks(centres, baseline=0.0):
        y = sum(1.0 / (1 + ((x - c) / 6.0) ** 2) for c in centres) + baseline
        return y / y.max()

    test = np.stack([peaks([465, 1085]), peaks([700, 1330])])
    slope = np.linspace(0, 2, x.size)  # the same peaks on a fluorescence-like slope: a processed/raw pair
    extra = np.stack([test[0], peaks([700, 1330], baseline=slope), peaks([520, 960]), peaks([300, 1200, 1500])])
    keep = bench.leak_guard(extra, test, 0.95)
    assert keep.tolist() == [False, False, True, True]
    assert bench.leak_guard(extra, test, 1.01).all()  # a threshold above 1 removes nothing
    assert bench.leak_guard(extra[:0], test, 0.95).shape == (0,)


@pytest.mark.slow
def test_benchmark_quick_run(tmp_path):
    data = shared_data("rruff-soysal", "raw_train.npz")
    bench = _bench()
    out = tmp_path / "semi.json"
    bench.main(["--quick", "--data", str(data), "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["complete"] and set(result["summary"]) == set(bench.METHODS)
    rep = result["repeats"][0]
    assert rep["pretrain"]["spectra"] == 347 - rep["test_spectra"]
    for f, counts in rep["fractions"].items():
        assert counts["labelled"] + counts["unlabelled"] + rep["test_spectra"] == 347


@pytest.mark.slow
def test_benchmark_quick_run_with_an_extra_pool(tmp_path):
    """--extra-unlabeled with --extra-backgrounds: the extra spectra join every fraction's pool, recorded."""
    from .conftest import make_npz

    data = shared_data("rruff-soysal", "raw_train.npz")
    extra = make_npz(tmp_path / "extra.npz", n_per_class=3, seed=5)
    n_extra = len(np.load(extra)["labels"])
    bench = _bench()
    out = tmp_path / "semi.json"
    bench.main(["--quick", "--methods", "sgan", "--data", str(data), "--extra-unlabeled", str(extra),
                "--extra-backgrounds", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["extra_backgrounds"] is True
    rep = result["repeats"][0]
    kept = rep["extra_unlabeled"][0]["kept"]
    assert kept + rep["extra_unlabeled"][0]["removed_by_leak_guard"] == n_extra
    for counts in rep["fractions"].values():
        assert counts["labelled"] + counts["unlabelled"] + rep["test_spectra"] == 347 + kept
