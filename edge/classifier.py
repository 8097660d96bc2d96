"""Constant-time classification with ONNX Runtime: backbone, then head."""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from calibration.errors import SpectrumError

from .bundle import BACKBONE_INPUT, HEAD_INPUT, HEAD_OUTPUT, Bundle

log = logging.getLogger(__name__)

#: Output names of the selection appended to the head graph (see :func:`selector_onnx`).
TOP_P, TOP_INDEX = "top_probabilities", "top_indices"


def selector_onnx(head_onnx: bytes, k: int, temperature: float) -> bytes:
    """The head graph with softmax(logits / T) top-k appended: outputs ``logits``, ``top_probabilities``, ``top_indices``.

    ``Softmax`` and ``TopK`` (ties: lower index first, per the ONNX spec) run inside
    ONNX Runtime, so no per-class work is left to Python (BENCHMARKS.md, "Constant time").
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load_from_string(head_onnx)
    g = model.graph
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < 11:
        raise ValueError(f"head opset {opset} is older than TopK-11")
    g.initializer.append(numpy_helper.from_array(np.array([k], dtype=np.int64), "sel.k"))
    nodes = []
    z = HEAD_OUTPUT
    if temperature != 1.0:
        g.initializer.append(numpy_helper.from_array(np.array(1.0 / temperature, dtype=np.float32), "sel.inv_t"))
        nodes.append(helper.make_node("Mul", [HEAD_OUTPUT, "sel.inv_t"], ["sel.z"]))
        z = "sel.z"
    # Softmax then TopK: ORT's Softmax is vectorised (ReduceLogSumExp over 10,000 classes took twice as long)
    nodes += [helper.make_node("Softmax", [z], ["sel.p"], axis=-1),
              helper.make_node("TopK", ["sel.p", "sel.k"], [TOP_P, TOP_INDEX], axis=-1, largest=1, sorted=1)]
    g.node.extend(nodes)
    g.output.extend([helper.make_tensor_value_info(TOP_P, TensorProto.FLOAT, ["batch", k]),
                     helper.make_tensor_value_info(TOP_INDEX, TensorProto.INT64, ["batch", k])])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _selector_session(bundle: Bundle, k: int, precision: str = "fp32") -> Any | None:
    """An ORT session of :func:`selector_onnx` for this bundle, or None (numpy selection) if it cannot be built.

    With ``precision="int8"`` the head's weights are 8-bit (:mod:`edge.quantization`);
    the session is used only if its logits agree with the verified float32 head within
    the quantisation's error bound.
    """
    try:
        import onnxruntime as ort

        head = bundle.head_path.read_bytes()
        if precision == "int8":
            from .head import read_linear_head
            from .quantization import int8_head_onnx

            weight = read_linear_head(head)[0]  # for the error bound below
            head = int8_head_onnx(head)
        data = selector_onnx(head, k, bundle.temperature)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = 1  # one small Gemm and a TopK: a thread pool costs more than it saves
        opts.inter_op_num_threads = 1
        providers = bundle.head_session.get_providers() if hasattr(bundle.head_session, "get_providers") else None
        sess = ort.InferenceSession(data, sess_options=opts, providers=providers or ["CPUExecutionProvider"])
        # the same head as the bundle's verified session, or not used at all
        probe = np.random.default_rng(0).standard_normal((2, bundle.feature_size)).astype(np.float32)
        a = sess.run([HEAD_OUTPUT], {HEAD_INPUT: probe})[0]
        b = bundle.head_session.run(None, {HEAD_INPUT: probe})[0]
        if precision == "int8":
            from .quantization import int8_error_bound

            bound = int8_error_bound(probe, weight)
            if a.shape != b.shape or not (np.abs(a - b) <= bound).all():
                raise ValueError("the 8-bit head's logits are outside the quantisation error bound")
        elif a.shape != b.shape or not np.allclose(a, b, rtol=1e-5, atol=1e-5):
            raise ValueError("the head file on disk differs from the loaded head session")
        return sess
    except Exception as e:  # onnx missing, an unusual head graph: the numpy path gives the same answer
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        if precision == "int8":  # the caller falls back to float32; say why, at warning level
            ort_version = getattr(sys.modules.get("onnxruntime"), "__version__", "not importable")
            log.warning("%s: 8-bit head could not be used, the float32 head runs instead: %s "
                        "(ONNX Runtime %s; 8-bit MatMulNBits needs a release from 2025 on, about 1.22)",
                        bundle.model_id, reason, ort_version)
        else:
            log.info("%s: top-k selection stays in numpy (%s)", bundle.model_id, reason)
        return None


@dataclass(frozen=True)
class Prediction:
    """Top-k classes with probabilities, best first, and the top-1/top-2 margin."""

    classes: tuple[str, ...]
    probabilities: tuple[float, ...]
    #: Distance from the known classes (:mod:`edge.novelty`); None when the bundle has no novelty model.
    novelty: float | None = None
    #: The novelty lies above the bundle's threshold: none of the known minerals.
    novel: bool = False

    @property
    def label(self) -> str:
        return self.classes[0]

    @property
    def probability(self) -> float:
        return self.probabilities[0]

    @property
    def margin(self) -> float:
        """p(top-1) − p(top-2): Soysal et al.'s confidence margin (1.0 for a 1-class model)."""
        return self.probabilities[0] - (self.probabilities[1] if len(self.probabilities) > 1 else 0.0)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Numerically stable softmax over the last axis of ``logits / temperature``."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class Classifier:
    """Runs a verified :class:`~edge.bundle.Bundle` on preprocessed spectra.

    The cost per spectrum is the backbone plus one matrix product in the head:
    constant in the number of known spectra, linear only in the (small) number of
    classes.

    Parameters
    ----------
    bundle : Bundle
    top_k : int
        Classes returned per spectrum.
    head_precision : {"auto", "fp32", "int8"}
        Weights of the head as run: ``auto`` runs heads over 1 MiB of float32 weights
        (4,096 classes at F = 64) with 8-bit weights, which keeps the cost of 10,000
        classes near that of 10 (:mod:`edge.quantization`).  The bundle is unchanged.
    """

    def __init__(self, bundle: Bundle, top_k: int = 3, head_precision: str = "auto") -> None:
        from .quantization import resolve_precision

        self.bundle = bundle
        self.classes = np.asarray(bundle.classes)
        self.top_k = max(1, min(int(top_k), len(self.classes)))
        self._temperature = bundle.temperature
        providers = bundle.head_session.get_providers() if hasattr(bundle.head_session, "get_providers") else None
        weight_bytes = 4 * len(self.classes) * int(bundle.feature_size)
        linear = bundle.head_info["kind"] == "linear"
        #: ``fp32`` or ``int8``: the head weights :meth:`classify` and :meth:`logits` use (:mod:`edge.quantization`).
        # 8-bit weights exist for one-Gemm heads only; auto keeps any other head (shift-mean) in float32.
        self.head_precision = resolve_precision(head_precision if linear or head_precision != "auto" else "fp32",
                                                weight_bytes, providers)
        from .novelty import load_novelty

        #: The bundle's novelty model (:mod:`edge.novelty`), or None: results then carry no novelty score.
        self.novelty = load_novelty(bundle)
        # the novelty score looks at the head's top candidates, so select at least that many
        self._select_k = max(self.top_k, min(self.novelty.top, len(self.classes))) if self.novelty else self.top_k
        self._selector = _selector_session(bundle, self._select_k, self.head_precision)
        if self.head_precision == "int8":
            if self._selector is None:  # _selector_session logged why
                self.head_precision = "fp32"
                self._selector = _selector_session(bundle, self._select_k)
            else:
                log.info("%s: %d-class head runs with 8-bit weights (%.0f kB of float32 weights → %.0f kB)",
                         bundle.model_id, len(self.classes), weight_bytes / 1e3, weight_bytes / 4e3)

    @property
    def model_id(self) -> str:
        return self.bundle.model_id

    @property
    def novelty_threshold(self) -> float | None:
        """Scores above it are novel (None without a novelty model or threshold)."""
        return self.novelty.threshold if self.novelty is not None and np.isfinite(self.novelty.threshold) else None

    def features(self, x: np.ndarray) -> np.ndarray:
        """Backbone features ``(n, F)`` of preprocessed spectra ``(n, points)``."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self.bundle.input_points:
            raise SpectrumError(
                f"classifier input has shape {x.shape}; model {self.model_id} expects (n, {self.bundle.input_points})"
            )
        return self.bundle.backbone_session.run(None, {BACKBONE_INPUT: x})[0]

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Head logits ``(n, K)``, from the same head weights as :meth:`classify` (8-bit where it runs them)."""
        if self._selector is not None:
            return self._selector.run([HEAD_OUTPUT], {HEAD_INPUT: self.features(x)})[0]
        return self.bundle.head_session.run(None, {HEAD_INPUT: self.features(x)})[0]

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities ``(n, K)`` for preprocessed spectra ``(n, points)``."""
        return softmax(self.logits(x), self._temperature)

    def top(self, proba: np.ndarray) -> list[Prediction]:
        """Top-k predictions from a ``(n, K)`` probability (or logit) matrix."""
        order = top_indices(proba, self.top_k)
        return [
            Prediction(tuple(self.classes[o].tolist()), tuple(float(p) for p in proba[i, o]))
            for i, o in enumerate(order)
        ]

    def classify(self, x: np.ndarray) -> list[Prediction]:
        """Top-k predictions for preprocessed spectra ``(n, points)``.

        Normally one ONNX Runtime call of the head with softmax(logits / T) and TopK
        appended (:func:`selector_onnx`), so no per-class work is left to Python.  When
        that graph cannot be built, numpy selects the top k on the logits (softmax is
        monotonic) and normalises only those: one pass of ``exp`` over the K logits.
        Either way the cost stays flat as heads grow to thousands of classes
        (BENCHMARKS.md, "Constant time").  With a novelty model each prediction also
        carries its novelty score and flag, from the features and the head's top
        candidates (:meth:`edge.novelty.Novelty.score`: ``k·F`` more multiply-adds).
        """
        feats = self.features(x)
        if self._selector is not None:
            probs, order = self._selector.run([TOP_P, TOP_INDEX], {HEAD_INPUT: feats})
        else:
            z = self.bundle.head_session.run(None, {HEAD_INPUT: feats})[0]
            if self._temperature != 1.0:
                z = z / np.float32(self._temperature)
            order = top_indices(z, self._select_k)
            zmax = np.take_along_axis(z, order[:, :1], axis=1).astype(np.float64)  # the top-1 logit is the maximum
            total = np.exp(z - zmax.astype(z.dtype)).sum(axis=1, dtype=np.float64)
            probs = np.exp(np.take_along_axis(z, order, axis=1).astype(np.float64) - zmax) / total[:, None]
        k = self.top_k
        if self.novelty is None:
            return [Prediction(tuple(self.classes[o[:k]].tolist()), tuple(float(p) for p in row[:k]))
                    for row, o in zip(probs, order)]
        scores = self.novelty.score(feats, order)
        threshold = self.novelty.threshold  # NaN (no threshold) compares False: never flagged
        return [Prediction(tuple(self.classes[o[:k]].tolist()), tuple(float(p) for p in row[:k]), float(sc), bool(sc > threshold))
                for row, o, sc in zip(probs, order, scores)]


def top_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices ``(n, k)`` of the k largest scores per row, largest first, ties by lower index.

    ``argpartition`` then a sort of the k chosen: O(K) rather than the O(K log K) of a full sort.
    """
    scores = np.asarray(scores)
    n_cls = scores.shape[1]
    k = max(1, min(int(k), n_cls))
    if n_cls <= 4 * k:
        return np.argsort(-scores, axis=1, kind="stable")[:, :k]
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1]  # the k-th largest score of each row
    out = np.empty((scores.shape[0], k), dtype=np.intp)
    for i, (row, t) in enumerate(zip(scores, kth)):
        above = np.flatnonzero(row > t)
        cand = np.concatenate([above, np.flatnonzero(row == t)[: k - above.size]])  # ties: lower index first
        out[i] = cand[np.lexsort((cand, -row[cand]))]
    return out
