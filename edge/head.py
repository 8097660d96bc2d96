"""Softmax heads on a frozen backbone, built without torch (numpy + onnx).

The backbone of a bundle maps a preprocessed spectrum to a feature vector; the
head is one affine layer ``logits = features @ W.T + b``.  A head with any number
of classes is therefore one ONNX ``Gemm``, which this module writes directly
from numpy weights so that a rover (no torch) can build and install one.
"""
from __future__ import annotations

import logging

import numpy as np

from calibration.errors import BundleError

from .bundle import HEAD_INPUT, HEAD_OUTPUT

log = logging.getLogger(__name__)

#: ONNX opset and IR version of written heads (the trainer's torch export uses opset 17 too).
HEAD_OPSET = 17
HEAD_IR_VERSION = 8


def linear_head_onnx(weight: np.ndarray, bias: np.ndarray, *, producer: str = "raman-edge") -> bytes:
    """Serialise the head ``logits = features @ weight.T + bias`` as an ONNX model.

    Parameters
    ----------
    weight : ndarray, shape (K, F)
        One row per class.
    bias : ndarray, shape (K,)
    producer : str
        Recorded as the model's ``producer_name``.

    Returns
    -------
    bytes
        A checked ONNX model with input ``features`` (N, F) and output ``logits`` (N, K),
        dynamic batch axis: the same interface as the trainer's exported heads.

    Raises
    ------
    BundleError
        Shapes disagree or a weight is not finite.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.ascontiguousarray(weight, dtype=np.float32)
    b = np.ascontiguousarray(bias, dtype=np.float32)
    if w.ndim != 2 or w.shape[0] < 1 or w.shape[1] < 1:
        raise BundleError(f"head weight must be (classes, features), got shape {w.shape}")
    if b.shape != (w.shape[0],):
        raise BundleError(f"head bias shape {b.shape} does not match {w.shape[0]} classes")
    if not (np.isfinite(w).all() and np.isfinite(b).all()):
        raise BundleError("head weights contain NaN or infinity")
    k, f = w.shape
    node = helper.make_node("Gemm", [HEAD_INPUT, "head.weight", "head.bias"], [HEAD_OUTPUT],
                            name="head", alpha=1.0, beta=1.0, transB=1)
    graph = helper.make_graph(
        [node], "head",
        [helper.make_tensor_value_info(HEAD_INPUT, TensorProto.FLOAT, ["batch", f])],
        [helper.make_tensor_value_info(HEAD_OUTPUT, TensorProto.FLOAT, ["batch", k])],
        initializer=[numpy_helper.from_array(w, "head.weight"), numpy_helper.from_array(b, "head.bias")],
    )
    model = helper.make_model(graph, producer_name=producer, opset_imports=[helper.make_opsetid("", HEAD_OPSET)])
    model.ir_version = HEAD_IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString()


def read_linear_head(onnx_bytes: bytes) -> tuple[np.ndarray, np.ndarray]:
    """``(weight (K, F), bias (K,))`` of a single-Gemm head (the trainer's or :func:`linear_head_onnx`'s).

    Raises
    ------
    BundleError
        The graph is not one Gemm on ``features`` with constant weights.
    """
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load_from_string(onnx_bytes)
    except Exception as e:  # onnx raises DecodeError and others
        raise BundleError(f"head is not a readable ONNX model: {e}") from None
    nodes = list(model.graph.node)
    if len(nodes) != 1 or nodes[0].op_type != "Gemm" or nodes[0].input[0] != HEAD_INPUT:
        raise BundleError(f"head is not a single Gemm on {HEAD_INPUT!r} (ops: {[n.op_type for n in nodes]})")
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    try:
        w, b = inits[nodes[0].input[1]], inits[nodes[0].input[2]]
    except (KeyError, IndexError):
        raise BundleError("head Gemm weights are not constant initialisers") from None
    if attrs.get("transA", 0):
        raise BundleError("head Gemm with transA is not supported")
    if not attrs.get("transB", 0):
        w = w.T
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    return (alpha * w).astype(np.float32), (beta * np.broadcast_to(b, (w.shape[0],))).astype(np.float32)


__all__ = ["linear_head_onnx", "read_linear_head", "HEAD_OPSET"]
