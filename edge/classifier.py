"""Constant-time classification with ONNX Runtime: backbone, then head."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calibration.errors import SpectrumError

from .bundle import BACKBONE_INPUT, HEAD_INPUT, Bundle


@dataclass(frozen=True)
class Prediction:
    """Top-k classes with probabilities, best first, and the top-1/top-2 margin."""

    classes: tuple[str, ...]
    probabilities: tuple[float, ...]

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
    """

    def __init__(self, bundle: Bundle, top_k: int = 3) -> None:
        self.bundle = bundle
        self.classes = np.asarray(bundle.classes)
        self.top_k = max(1, min(int(top_k), len(self.classes)))
        self._temperature = bundle.temperature

    @property
    def model_id(self) -> str:
        return self.bundle.model_id

    def logits(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self.bundle.input_points:
            raise SpectrumError(
                f"classifier input has shape {x.shape}; model {self.model_id} expects (n, {self.bundle.input_points})"
            )
        feats = self.bundle.backbone_session.run(None, {BACKBONE_INPUT: x})[0]
        return self.bundle.head_session.run(None, {HEAD_INPUT: feats})[0]

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

        Selects the top k on the logits (softmax is monotonic) and normalises only
        those, so the work after the head's matrix product is one pass of ``exp``
        over the K logits: the cost stays flat as heads grow to thousands of classes
        (BENCHMARKS.md, "Constant time").
        """
        z = self.logits(x)
        if self._temperature != 1.0:
            z = z / np.float32(self._temperature)
        order = top_indices(z, self.top_k)
        zmax = np.take_along_axis(z, order[:, :1], axis=1).astype(np.float64)  # the top-1 logit is the maximum
        total = np.exp(z - zmax.astype(z.dtype)).sum(axis=1, dtype=np.float64)
        probs = np.exp(np.take_along_axis(z, order, axis=1).astype(np.float64) - zmax) / total[:, None]
        return [Prediction(tuple(self.classes[o].tolist()), tuple(float(p) for p in probs[i]))
                for i, o in enumerate(order)]


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
