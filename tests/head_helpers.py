"""Shared pieces of the head-swap tests: a torch-free binning backbone and synthetic minerals."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from calibration.preprocess import DEFAULT_SPEC, Preprocessor

OLD = [f"mineral_{i:02d}" for i in range(5)]
NEW = [f"mineral_{i:02d}" for i in range(5, 8)]
FEATURES = 32


def synthetic_split(seed: int = 3, train: int = 10, test: int = 10) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """8 synthetic minerals (trainer.synthetic, numpy only), split per class into train and test.

    Returns ``{"old_train", "old_test", "new_train", "new_test"}`` -> (spectra, labels, axis).
    """
    from trainer.synthetic import synthetic_spectra  # numpy only: no torch import

    x, y, axis = synthetic_spectra(n_classes=8, per_class=train + test, seed=seed, noise=0.02)
    first = np.zeros(y.size, bool)
    for c in np.unique(y):
        first[np.nonzero(y == c)[0][:train]] = True
    old = np.isin(y, OLD)
    out = {}
    for name, m in (("old_train", old & first), ("old_test", old & ~first), ("new_train", ~old & first),
                    ("new_test", ~old & ~first)):
        out[name] = (x[m], y[m], axis)
    return out


def save_npz(path: Path, part: tuple[np.ndarray, np.ndarray, np.ndarray]) -> Path:
    x, y, axis = part
    np.savez(path, spectra=x, labels=y, wavenumbers=axis.astype(np.float32))
    return path


def binning_backbone(features: int = FEATURES) -> bytes:
    """Backbone ONNX: mean intensity in ``features`` equal bins of the grid, then tanh (like the trainer's)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    points = Preprocessor(DEFAULT_SPEC).grid.size
    w = np.zeros((points, features), np.float32)
    edges = np.linspace(0, points, features + 1).astype(int)
    for j in range(features):
        w[edges[j]:edges[j + 1], j] = 4.0 / (edges[j + 1] - edges[j])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["spectrum", "W"], ["z"]), helper.make_node("Tanh", ["z"], ["features"])],
        "backbone",
        [helper.make_tensor_value_info("spectrum", TensorProto.FLOAT, ["N", points])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", features])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def bare_bundle(out: Path, classes: list[str]) -> Path:
    """A bundle with the binning backbone and an untrained (zero) head, no support part."""
    from edge.bundle import write_bundle
    from edge.head import linear_head_onnx

    write_bundle(out, backbone_onnx=binning_backbone(), head_onnx=linear_head_onnx(
        np.zeros((len(classes), FEATURES)), np.zeros(len(classes))), classes=classes,
        preprocessing=Preprocessor(DEFAULT_SPEC).spec, feature_size=FEATURES,
        architecture={"name": "bins", "params": {}}, training={"note": "test fixture"})
    return out


def accuracy(bundle, part: tuple[np.ndarray, np.ndarray, np.ndarray]) -> float:
    """Top-1 of a bundle through the daemon's classifier on raw spectra."""
    from edge.classifier import Classifier

    x, y, axis = part
    proba = Classifier(bundle).predict_proba(bundle.preprocessor.batch(x, axis))
    return float((np.asarray(bundle.classes)[proba.argmax(1)] == y).mean())
