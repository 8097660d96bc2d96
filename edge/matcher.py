"""Reference matching on backbone features: the comparator to the softmax head.

Soysal et al. argue for a frozen backbone plus a swappable softmax head over the
Siamese / reference-matching alternative, in which a spectrum is identified by
comparing its embedding with stored reference embeddings and the best match wins.
This module implements that alternative in the project so the two can be measured
side by side (``benchmarks/head_latency.py``):

* the query is embedded by the bundle's own backbone (same ONNX Runtime session
  type, same preprocessing), and
* compared by cosine similarity with ``k`` stored reference embeddings, in an
  ONNX graph of its own (:func:`reference_matcher_onnx`): L2-normalise the query,
  one ``MatMul`` against the ``F × k`` matrix of unit-norm references, ``TopK``
  (8-bit references above 1 MiB, by the head's rule: :mod:`edge.quantization`).

The references are embedded once (cached), which is the matcher's best case: a
Siamese network that re-runs its twin on every stored spectrum would cost ``k``
backbone passes per query.  Even so, the work per query is one row of ``F``
multiply-adds per *reference*, where the head needs one per *class*; with ``r``
references per class the matcher does ``r`` times the head's arithmetic, and its
memory grows the same way.

Torch-free (numpy, onnx, onnxruntime), so it runs wherever the edge runs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from calibration.errors import BundleError, SpectrumError

from .bundle import BACKBONE_INPUT, Bundle
from .quantization import MS_DOMAIN, int8_matmul, resolve_precision

log = logging.getLogger(__name__)

#: Tensor names of the matcher graph.
MATCHER_INPUT = "features"
MATCHER_SIMILARITY, MATCHER_SCORES, MATCHER_INDICES = "similarity", "scores", "indices"
MATCHER_OPSET = 17
MATCHER_IR_VERSION = 8
#: A query whose feature norm is below this is compared as if its norm were this (no division by zero).
NORM_EPS = 1e-12


def _check_references(references: np.ndarray) -> np.ndarray:
    r = np.asarray(references)
    if r.ndim != 2 or r.shape[0] < 1 or r.shape[1] < 1:
        raise BundleError(f"references must be a (k, features) matrix with k >= 1, got shape {r.shape}")
    r = r.astype(np.float64)
    bad = np.nonzero(~np.isfinite(r).all(axis=1))[0]
    if bad.size:
        raise BundleError(f"reference {int(bad[0])} contains NaN or infinity ({bad.size} such references)")
    norms = np.linalg.norm(r, axis=1)
    zero = np.nonzero(norms <= NORM_EPS)[0]
    if zero.size:
        raise BundleError(f"reference {int(zero[0])} has a zero feature vector; cosine similarity is undefined "
                          f"({zero.size} such references)")
    return (r / norms[:, None]).astype(np.float32)


def reference_matcher_onnx(references: np.ndarray, top: int = 1, *, producer: str = "raman-edge",
                           precision: str = "fp32") -> bytes:
    """Serialise cosine matching against ``references`` as an ONNX model.

    Parameters
    ----------
    references : ndarray, shape (k, F)
        One stored embedding per row (any non-zero norm; rows are normalised here).
    top : int
        How many best matches ``TopK`` returns (clipped to ``k``).
    producer : str
        Recorded as the model's ``producer_name``.
    precision : {"fp32", "int8"}
        ``int8`` stores the references as 8-bit integers (``MatMulNBits``, the same
        scheme as a large head's: :mod:`edge.quantization`).

    Returns
    -------
    bytes
        A checked ONNX model: input ``features`` (N, F); outputs ``similarity`` (N, k)
        (cosine with every reference), ``scores`` (N, top) and ``indices`` (N, top, int64),
        best first. Dynamic batch axis.

    Raises
    ------
    BundleError
        ``references`` is not a finite (k, F) matrix of non-zero rows, or ``top`` < 1.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    ref = _check_references(references)
    if int(top) < 1:
        raise BundleError(f"top must be >= 1, got {top!r}")
    k, f = ref.shape
    t = min(int(top), k)
    inits = [
        numpy_helper.from_array(np.asarray([NORM_EPS], np.float32), "eps"),
        numpy_helper.from_array(np.asarray([t], np.int64), "top"),
    ]
    opsets = [helper.make_opsetid("", MATCHER_OPSET)]
    if precision == "int8":
        cosine, q_inits = int8_matmul("unit", MATCHER_SIMILARITY, ref, prefix="references.int8")
        inits += q_inits
        opsets.append(helper.make_opsetid(MS_DOMAIN, 1))
    elif precision == "fp32":
        cosine = helper.make_node("MatMul", ["unit", "references"], [MATCHER_SIMILARITY], name="cosine")
        inits.append(numpy_helper.from_array(np.ascontiguousarray(ref.T), "references"))  # (F, k)
    else:
        raise BundleError(f"matcher precision {precision!r} is not fp32 or int8")
    nodes = [
        # ReduceL2 keeps axes as an attribute up to opset 17.
        helper.make_node("ReduceL2", [MATCHER_INPUT], ["norm"], axes=[1], keepdims=1, name="query_norm"),
        helper.make_node("Max", ["norm", "eps"], ["norm_safe"], name="no_zero_division"),
        helper.make_node("Div", [MATCHER_INPUT, "norm_safe"], ["unit"], name="normalise"),
        cosine,
        helper.make_node("TopK", [MATCHER_SIMILARITY, "top"], [MATCHER_SCORES, MATCHER_INDICES],
                         axis=-1, largest=1, sorted=1, name="best"),
    ]
    graph = helper.make_graph(
        nodes, "reference_matcher",
        [helper.make_tensor_value_info(MATCHER_INPUT, TensorProto.FLOAT, ["batch", f])],
        [helper.make_tensor_value_info(MATCHER_SIMILARITY, TensorProto.FLOAT, ["batch", k]),
         helper.make_tensor_value_info(MATCHER_SCORES, TensorProto.FLOAT, ["batch", t]),
         helper.make_tensor_value_info(MATCHER_INDICES, TensorProto.INT64, ["batch", t])],
        initializer=inits,
    )
    model = helper.make_model(graph, producer_name=producer, opset_imports=opsets)
    model.ir_version = MATCHER_IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString()


def cosine_similarity(features: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Reference implementation in numpy: ``(N, k)`` cosine of each query row with each reference row."""
    q = np.asarray(features, dtype=np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), NORM_EPS)
    return q @ _check_references(references).astype(np.float64).T


@dataclass(frozen=True)
class Match:
    """Best-matching classes for one spectrum, best first, with their best cosine similarity.

    ``references`` holds, per class, the index of the stored reference that matched best.
    """

    classes: tuple[str, ...]
    similarities: tuple[float, ...]
    references: tuple[int, ...]

    @property
    def label(self) -> str:
        return self.classes[0]

    @property
    def similarity(self) -> float:
        return self.similarities[0]


def _session(model: bytes, threads: int | None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


class ReferenceMatcher:
    """Identify spectra by their nearest stored reference in a bundle's feature space.

    Parameters
    ----------
    bundle : Bundle
        Supplies the backbone (the bundle's head is not used).
    references : ndarray, shape (k, F)
        Stored reference embeddings (``F`` = the bundle's feature size).
    labels : sequence of str, length k
        The class of each reference; a class may have several references.
    top_k : int
        Distinct classes reported per spectrum.
    threads : int, optional
        ONNX Runtime intra-op threads of the matcher session (default: Runtime's choice).
    precision : {"auto", "fp32", "int8"}
        Reference storage, by the head's rule (:func:`edge.quantization.resolve_precision`):
        ``auto`` stores more than 1 MiB of float32 references as 8-bit integers.

    Raises
    ------
    BundleError
        References of the wrong width, non-finite or zero, or labels that do not match them.
    """

    def __init__(self, bundle: Bundle, references: np.ndarray, labels: Sequence[str], top_k: int = 3,
                 threads: int | None = None, precision: str = "auto") -> None:
        ref = np.asarray(references)
        if ref.ndim != 2 or ref.shape[1] != bundle.feature_size:
            raise BundleError(f"references have shape {ref.shape}; model {bundle.model_id} has "
                              f"{bundle.feature_size} features, so (k, {bundle.feature_size}) is needed")
        labels = np.asarray(list(labels)).astype(str)
        if labels.shape != (ref.shape[0],):
            raise BundleError(f"{labels.size} labels for {ref.shape[0]} references")
        self.bundle = bundle
        self.labels = labels
        self.classes = sorted(set(labels.tolist()))
        self.top_k = max(1, min(int(top_k), len(self.classes)))
        per_class = int(np.unique(labels, return_counts=True)[1].max())
        # Each class fills at most ``per_class`` slots, so top_k·per_class slots hold top_k distinct classes.
        #: ``fp32`` or ``int8``: how the references are stored in the matcher graph.
        self.precision = resolve_precision(precision, 4 * ref.size)
        self.onnx = reference_matcher_onnx(ref, top=self.top_k * per_class, precision=self.precision)
        self.session = _session(self.onnx, threads)

    @classmethod
    def from_spectra(cls, bundle: Bundle, x: np.ndarray, labels: Sequence[str], **kwargs: Any) -> "ReferenceMatcher":
        """Store the backbone embeddings of preprocessed reference spectra ``x`` (k, points)."""
        return cls(bundle, embed(bundle, x), labels, **kwargs)

    @property
    def size(self) -> int:
        """Number of stored references ``k``."""
        return int(self.labels.size)

    def similarities(self, features: np.ndarray) -> np.ndarray:
        """``(N, k)`` cosine similarities of backbone features with every reference (ONNX Runtime)."""
        return self._run(features, [MATCHER_SIMILARITY])[0]

    def _run(self, features: np.ndarray, outputs: list[str]) -> list[np.ndarray]:
        f = np.ascontiguousarray(features, dtype=np.float32)
        if f.ndim == 1:
            f = f[None, :]
        if f.ndim != 2 or f.shape[1] != self.bundle.feature_size:
            raise SpectrumError(f"matcher input has shape {f.shape}; expected (n, {self.bundle.feature_size}) "
                                "backbone features")
        return self.session.run(outputs, {MATCHER_INPUT: f})

    def match_features(self, features: np.ndarray) -> list[Match]:
        """Top-k distinct classes for backbone features ``(n, F)``."""
        # Fetch only the TopK outputs: copying the (n, k) similarity matrix out would cost O(k) for nothing.
        scores, indices = self._run(features, [MATCHER_SCORES, MATCHER_INDICES])
        out = []
        for s_row, i_row in zip(scores, indices):
            seen: dict[str, tuple[float, int]] = {}
            for s, i in zip(s_row.tolist(), i_row.tolist()):
                c = self.labels[i]
                if c not in seen:
                    seen[c] = (s, i)
                    if len(seen) == self.top_k:
                        break
            out.append(Match(tuple(seen), tuple(v[0] for v in seen.values()), tuple(v[1] for v in seen.values())))
        return out

    def match(self, x: np.ndarray) -> list[Match]:
        """Top-k distinct classes for preprocessed spectra ``(n, points)`` (backbone, then matching)."""
        return self.match_features(embed(self.bundle, x))


def embed(bundle: Bundle, x: np.ndarray) -> np.ndarray:
    """Backbone features ``(n, F)`` of preprocessed spectra ``(n, points)`` through the bundle's session."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != bundle.input_points:
        raise SpectrumError(f"matcher input has shape {x.shape}; model {bundle.model_id} expects "
                            f"(n, {bundle.input_points}) preprocessed spectra")
    return bundle.backbone_session.run(None, {BACKBONE_INPUT: x})[0]


__all__ = ["ReferenceMatcher", "Match", "reference_matcher_onnx", "cosine_similarity", "embed", "MATCHER_INPUT"]
