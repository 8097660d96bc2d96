"""Shared fixtures: real data location, tiny synthetic spectra and a torch-free test bundle."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from calibration.preprocess import DEFAULT_SPEC, Preprocessor

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# A few minerals' strongest bands (cm⁻¹), enough for synthetic tests.
BANDS = {
    "Calcite": [(1086, 1.0, 4), (712, 0.15, 4), (282, 0.3, 6), (156, 0.2, 6)],
    "Quartz": [(464, 1.0, 6), (206, 0.3, 8), (355, 0.1, 6), (128, 0.4, 5)],
    "Diamond": [(1332, 1.0, 3)],
    "Hematite": [(225, 0.7, 8), (293, 1.0, 10), (411, 0.4, 10), (612, 0.2, 14), (1320, 0.5, 30)],
}


def shared_data(*parts: str) -> Path:
    """Path under ../shared/data, skipping the test (with the reason) when it is absent."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not available: {p} (see ../shared/data/README.md)")
    return p


def lorentz(axis: np.ndarray, bands: list[tuple[float, float, float]]) -> np.ndarray:
    y = np.zeros_like(axis, dtype=np.float64)
    for pos, amp, fwhm in bands:
        y += amp / (1.0 + ((axis - pos) / (fwhm / 2.0)) ** 2)
    return y


def synth(mineral: str, axis: np.ndarray, rng: np.random.Generator, shift: float = 0.0) -> np.ndarray:
    """Counts-like spectrum: Lorentzian bands, a fluorescence slope, noise."""
    y = 1000.0 * lorentz(axis - shift, BANDS[mineral])
    y += 200.0 + 0.1 * (axis - axis.min()) + rng.normal(0, 5.0, axis.size)
    return y


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def make_npz(path: Path, n_per_class: int = 4, seed: int = 0, minerals: list[str] | None = None) -> Path:
    rng = np.random.default_rng(seed)
    minerals = minerals or list(BANDS)
    wn = np.arange(200.0, 1592.0, 1.0)
    spectra, labels = [], []
    for m in minerals:
        for _ in range(n_per_class):
            y = synth(m, wn, rng, shift=rng.normal(0, 1.0))
            spectra.append(y / y.max())
            labels.append(m)
    np.savez(path, spectra=np.asarray(spectra, np.float32), labels=np.asarray(labels), wavenumbers=wn.astype(np.float32))
    return path


@pytest.fixture
def npz_file(tmp_path: Path) -> Path:
    return make_npz(tmp_path / "synthetic.npz")


def make_test_bundle(out: Path, minerals: list[str] | None = None, feature_size: int | None = None) -> Path:
    """A torch-free bundle: the backbone correlates with class templates, the head scales them.

    Built with onnx.helper so edge tests do not depend on the trainer; it classifies
    the synthetic spectra of :data:`BANDS` correctly.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edge.bundle import write_bundle

    minerals = minerals or list(BANDS)
    pre = Preprocessor(DEFAULT_SPEC)
    grid = pre.grid
    templates = np.stack([lorentz(grid, BANDS[m]) for m in minerals])
    templates -= templates.mean(axis=1, keepdims=True)
    templates /= np.linalg.norm(templates, axis=1, keepdims=True)
    f = feature_size or len(minerals)
    w = np.zeros((grid.size, f), np.float32)
    w[:, : len(minerals)] = templates.T
    backbone = helper.make_model(
        helper.make_graph(
            [helper.make_node("MatMul", ["spectrum", "W"], ["features"])],
            "backbone",
            [helper.make_tensor_value_info("spectrum", TensorProto.FLOAT, ["N", grid.size])],
            [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", f])],
            [numpy_helper.from_array(w, "W")],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    hw = np.zeros((f, len(minerals)), np.float32)
    hw[: len(minerals), :] = 20.0 * np.eye(len(minerals))
    head = helper.make_model(
        helper.make_graph(
            [helper.make_node("MatMul", ["features", "H"], ["logits"])],
            "head",
            [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", f])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", len(minerals)])],
            [numpy_helper.from_array(hw, "H")],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    backbone.ir_version = head.ir_version = 8
    write_bundle(out, backbone_onnx=backbone.SerializeToString(), head_onnx=head.SerializeToString(),
                 classes=minerals, preprocessing=pre.spec, feature_size=f,
                 architecture={"name": "template", "params": {}},
                 training={"note": "test fixture", "onnx": onnx.__version__})
    return out


@pytest.fixture(scope="session")
def test_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_bundle(tmp_path_factory.mktemp("bundle") / "template")


def calibrated_logits(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a perfectly calibrated model: labels are drawn from softmax(logits)."""
    from edge.classifier import softmax

    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, (n, k))
    p = softmax(z)
    y = (rng.random((n, 1)) > np.cumsum(p, axis=1)).sum(axis=1)
    return z, np.minimum(y, k - 1)


def underconfident_with_misses(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An under-confident model (the right T is 0.5) with 3 % confidently wrong spectra (true class 25
    logits below the top): the shape of the ±30 recipe's out-of-fold logits (BENCHMARKS.md, stop 20)."""
    z, y = calibrated_logits(n, k, seed)
    z = 0.5 * z
    bad = np.arange(0, y.size, 33)
    z[bad, y[bad]] = z[bad].max(axis=1) - 25.0
    return z, y
