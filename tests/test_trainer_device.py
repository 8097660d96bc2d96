"""``--device``: where the network trains.  CUDA runs only where torch sees a GPU (never in CI)."""
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from calibration.dataset import load_dataset  # noqa: E402
from calibration.errors import ConfigError  # noqa: E402
from trainer.synthetic import write_synthetic_npz  # noqa: E402
from trainer.train import TrainConfig, predict_logits, resolve_device, train  # noqa: E402

FAST = dict(pool=4, n_pool=4, dense=16, epochs=3, batch_size=8, threads=1, seed=0)
HAS_CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return load_dataset(write_synthetic_npz(tmp_path_factory.mktemp("data") / "synth.npz", n_classes=3,
                                            per_class=[6, 5, 4], seed=2))


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "CPU", "", 0])
def test_bad_device_names_the_option(device):
    with pytest.raises(ConfigError, match="device"):
        TrainConfig(device=device).check()


def test_semi_is_cpu_only():
    with pytest.raises(ConfigError, match="device cuda.*CPU only"):
        TrainConfig(device="cuda", semi="sgan").check()


def test_auto_follows_torch():
    assert resolve_device("auto").type == ("cuda" if HAS_CUDA else "cpu")
    assert resolve_device("cpu").type == "cpu"


@pytest.mark.skipif(HAS_CUDA, reason="this torch sees a GPU, so cuda is not refused")
def test_cuda_refused_without_a_gpu_names_the_build():
    with pytest.raises(ConfigError, match=re.escape(f"device cuda: torch {torch.__version__} sees no CUDA GPU")):
        resolve_device("cuda")


def test_auto_trains_and_returns_a_cpu_model_that_matches_cpu(dataset):
    """Where there is no GPU, auto is bit-identical to cpu; where there is one, the model comes back on
    the CPU and agrees with a CPU run of the same seed to float tolerance of its predictions."""
    a = train(dataset, TrainConfig(**FAST, device="cpu"))
    b = train(dataset, TrainConfig(**FAST, device="auto"))
    assert all(p.device.type == "cpu" for p in b.model.parameters())
    assert b.config.to_dict()["device"] == "auto"
    x = np.random.default_rng(0).random((4, 1392), dtype=np.float32)
    la, lb = predict_logits(a.model, x), predict_logits(b.model, x)
    if HAS_CUDA:
        assert la.shape == lb.shape and np.isfinite(lb).all()
    else:
        np.testing.assert_array_equal(la, lb)
        assert [e.train_loss for e in a.history] == [e.train_loss for e in b.history]


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (the device tool's machines; CI has none)")
def test_cuda_training_repeats_for_a_seed(dataset):
    a = train(dataset, TrainConfig(**FAST, device="cuda"))
    b = train(dataset, TrainConfig(**FAST, device="cuda"))
    assert [e.train_loss for e in a.history] == [e.train_loss for e in b.history]
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k
