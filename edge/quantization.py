"""8-bit weights for large heads: about the same logits from a quarter of the bytes.

A head's cost per spectrum is reading its ``K × F`` weight matrix once.  Up to a
few thousand classes that is a few microseconds; at 10,000 classes the float32
matrix is 2.6 MB and its product alone is ≈ 35 µs on one core, most of the
growth of the whole path (BENCHMARKS.md, "Constant time").  Stored as 8-bit
integers with one scale and zero point per class and block of 64 features, the
matrix is 0.66 MB and ONNX Runtime's ``MatMulNBits`` kernel (``com.microsoft``
domain, ``accuracy_level`` 4: the features are quantised to int8 per block too)
runs it in ≈ 16 µs.

What it costs in answers was measured on real heads (``benchmarks/head_int8.py``):
the predicted class changed for 0.5 % of spectra with a 1,332-class head, all of
them near-ties; the top-1 probability moved by at most 0.009 (192 and 1,332 classes).  So the rule is:
float32 unless the head's float32 weights exceed :data:`INT8_MIN_BYTES` (4,096
classes at F = 64), where the bytes read start to dominate; ``fp32`` and ``int8``
force either.  The bundle on disk is never changed: the 8-bit graph is built
from the verified float32 head when a classifier is opened, and checked against
it before use.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from calibration.errors import ConfigError

#: Values of ``Classifier(head_precision=...)`` and of ``[model] head_precision``.
HEAD_PRECISIONS = ("auto", "fp32", "int8")
#: ``auto`` quantises a head whose float32 weights exceed this (1 MiB: 4,096 classes at F = 64).
INT8_MIN_BYTES = 1 << 20
#: ONNX Runtime's contributed-operator domain, which holds ``MatMulNBits``.
MS_DOMAIN = "com.microsoft"
#: Largest quantisation block along the features (ORT needs a power of two ≥ 16).
MAX_BLOCK = 64


def block_size(features: int) -> int:
    """The quantisation block for ``features`` inputs: the largest power of two ≤ min(F, 64), at least 16."""
    b = 16
    while b * 2 <= min(int(features), MAX_BLOCK):
        b *= 2
    return b


def quantize_rows(weight: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric uint8 quantisation of each row of ``weight`` in blocks of ``block`` columns.

    Parameters
    ----------
    weight : ndarray, shape (N, F)
        One row per output (class or reference); F is zero-padded to a multiple of ``block``.
    block : int

    Returns
    -------
    q : ndarray of uint8, shape (N, B, block)
        ``B = ceil(F / block)`` blocks per row.
    scales : ndarray of float32, shape (N, B)
    zero_points : ndarray of uint8, shape (N, B)
        Each block's range includes 0, so zero padding and exact zeros stay exact.
        ``(q - zero_point) * scale`` recovers a weight within ``scale / 2``.
    """
    w = np.asarray(weight, dtype=np.float32)
    n, f = w.shape
    nb = -(-f // block)
    padded = np.zeros((n, nb * block), np.float32)
    padded[:, :f] = w
    blocks = padded.reshape(n, nb, block)
    lo = np.minimum(blocks.min(axis=-1), 0.0)
    hi = np.maximum(blocks.max(axis=-1), 0.0)
    scales = (hi - lo) / 255.0
    scales[scales == 0] = 1.0  # an all-zero block: any scale reproduces it
    zero_points = np.clip(np.round(-lo / scales), 0, 255).astype(np.uint8)
    q = np.clip(np.round(blocks / scales[..., None]) + zero_points[..., None], 0, 255).astype(np.uint8)
    return q, scales.astype(np.float32), zero_points


def dequantize_rows(q: np.ndarray, scales: np.ndarray, zero_points: np.ndarray, features: int) -> np.ndarray:
    """The ``(N, F)`` float32 weights that :func:`quantize_rows`'s output stands for."""
    w = (q.astype(np.float32) - zero_points[..., None]) * scales[..., None]
    return w.reshape(q.shape[0], -1)[:, :features]


def int8_matmul(input_name: str, output_name: str, weight: np.ndarray, bias: np.ndarray | None = None, *,
                prefix: str) -> tuple[Any, list[Any]]:
    """A ``MatMulNBits`` node computing ``input @ weight.T (+ bias)`` with 8-bit weights, and its initialisers.

    Parameters
    ----------
    input_name, output_name : str
        Tensor names: input (batch, F), output (batch, N).
    weight : ndarray, shape (N, F)
    bias : ndarray, shape (N,), optional
    prefix : str
        Prefix of the initialiser names (unique within the graph).
    """
    from onnx import helper, numpy_helper

    w = np.asarray(weight, dtype=np.float32)
    n, f = w.shape
    block = block_size(f)
    q, scales, zps = quantize_rows(w, block)
    inits = [numpy_helper.from_array(q, f"{prefix}.q"),
             numpy_helper.from_array(scales.reshape(-1), f"{prefix}.scales"),
             numpy_helper.from_array(zps.reshape(-1), f"{prefix}.zero_points")]
    inputs = [input_name, f"{prefix}.q", f"{prefix}.scales", f"{prefix}.zero_points"]
    if bias is not None:
        inits.append(numpy_helper.from_array(np.asarray(bias, dtype=np.float32).reshape(n), f"{prefix}.bias"))
        inputs += ["", f"{prefix}.bias"]  # the optional g_idx input is skipped
    node = helper.make_node("MatMulNBits", inputs, [output_name], name=prefix, domain=MS_DOMAIN,
                            K=f, N=n, bits=8, block_size=block, accuracy_level=4)
    return node, inits


def int8_head_onnx(head_onnx: bytes) -> bytes:
    """The single-Gemm head ``head_onnx`` rewritten with 8-bit weights (same input, output and opset).

    Raises
    ------
    BundleError
        The head is not a single Gemm with constant weights (see :func:`edge.head.read_linear_head`).
    """
    import onnx
    from onnx import helper

    from .head import read_linear_head

    weight, bias = read_linear_head(head_onnx)
    src = onnx.load_from_string(head_onnx)
    node, inits = int8_matmul(src.graph.input[0].name, src.graph.output[0].name, weight, bias, prefix="head.int8")
    graph = helper.make_graph([node], "head_int8", list(src.graph.input), list(src.graph.output), initializer=inits)
    opsets = [o for o in src.opset_import if o.domain != MS_DOMAIN] + [helper.make_opsetid(MS_DOMAIN, 1)]
    model = helper.make_model(graph, producer_name="raman-edge", opset_imports=opsets)
    model.ir_version = src.ir_version
    onnx.checker.check_model(model)
    return model.SerializeToString()


def resolve_precision(precision: str, weight_bytes: int, providers: list[str] | None = None) -> str:
    """``fp32`` or ``int8`` for a head whose float32 weights take ``weight_bytes``.

    ``auto`` gives int8 only above :data:`INT8_MIN_BYTES` and only on ONNX Runtime's
    CPU provider alone (the kernel measured here); GPU providers keep float32.

    Raises
    ------
    ConfigError
        ``precision`` is not one of :data:`HEAD_PRECISIONS`.
    """
    if precision not in HEAD_PRECISIONS:
        raise ConfigError(f"head precision {precision!r} is not one of {', '.join(HEAD_PRECISIONS)}")
    if precision != "auto":
        return precision
    cpu_only = not providers or list(providers) == ["CPUExecutionProvider"]
    return "int8" if cpu_only and weight_bytes > INT8_MIN_BYTES else "fp32"


def int8_error_bound(features: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """A bound ``(n, N)`` on ``|int8 logits − float32 logits|`` for ``features`` (n, F) and ``weight`` (N, F).

    Weights are rounded to within 1/510 of their block's range (≤ 2·max|w|), the
    features to within 1/254 of their block's maximum; both errors are summed over
    the block with the other factor at its largest.  Doubled for float rounding
    in the kernel's accumulation.  Used to check a built 8-bit head before use.
    """
    x = np.abs(np.asarray(features, dtype=np.float64))
    w = np.abs(np.asarray(weight, dtype=np.float64))
    weight_term = x.sum(axis=1, keepdims=True) * (2.0 * w.max(axis=1))[None, :] / 510.0
    feature_term = x.max(axis=1, keepdims=True) / 254.0 * w.sum(axis=1)[None, :]
    return 2.0 * (weight_term + feature_term) + 1e-5
