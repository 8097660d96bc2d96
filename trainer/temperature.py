"""Temperature scaling: one scalar T so that ``softmax(logits / T)`` means what it says.

Guo et al. (2017), "On Calibration of Modern Neural Networks": T is chosen to
minimise the negative log-likelihood of held-out labels; dividing every logit by
the same T > 0 never changes the ranking of the classes, so accuracy (top-k) is
untouched and only the confidence moves.  The trainer fits T on the validation
split that early stopping uses and stores it in the bundle's manifest; the edge
classifier applies ``softmax(logits / T)`` itself.

The NLL is convex in ``1/T`` (a log-sum-exp of linear functions minus a linear
one), hence unimodal in ``log T``: a bounded scalar search on ``log T`` finds the
optimum.  numpy and scipy only (no torch), so benchmarks can use it on logits
from anywhere.

``objective="brier"`` fits T by the Brier score (mean squared error of the
probability vector) instead.  Both are proper scoring rules, but the NLL of a
spectrum whose true class got ~e^-28 is 28, so a handful of confident misses
steer the NLL fit: on the ``--shift-tolerance 30`` recipe's out-of-fold logits
(Soysal split) 3 % of the spectra held 37 % of the NLL, the NLL fit softened an
*under*-confident model (T 1.19) and ECE(15) rose from 0.089 to 0.122, while the
Brier fit (T 0.61) lowered it to 0.044 on folds it was not fitted on
(BENCHMARKS.md, "Stop 20").  The Brier score is bounded per spectrum (≤ 2).
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from edge.classifier import softmax
from edge.metrics import expected_calibration_error, reliability_bins
# The fit itself is the edge's (torch-free: ``raman-edge head add`` uses it too).
from edge.temperature import OBJECTIVES, T_BOUNDS, check_logits, fit_temperature, temperature_brier, temperature_nll

log = logging.getLogger(__name__)

#: Bins of the expected calibration error (Guo et al. use 15).
ECE_BINS = 15


def confidence_summary(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0,
                       bins: int = ECE_BINS) -> dict[str, Any]:
    """ECE, NLL, mean top-1 probability and mean top-1/top-2 margin of ``softmax(logits / T)``.

    Returns
    -------
    dict
        ``ece``, ``nll``, ``mean_confidence``, ``mean_margin``, ``top1``, ``n`` and
        ``reliability`` (per-bin count, confidence and accuracy).
    """
    logits, y = check_logits(logits, y)
    p = softmax(logits, temperature)
    if y.size == 0:
        nan = float("nan")
        return {"n": 0, "ece": nan, "nll": nan, "brier": nan, "mean_confidence": nan, "mean_margin": nan, "top1": nan,
                "reliability": []}
    top2 = -np.sort(-p, axis=1)[:, :2]
    margin = top2[:, 0] - (top2[:, 1] if p.shape[1] > 1 else 0.0)
    conf = top2[:, 0]
    correct = p.argmax(axis=1) == y
    return {"n": int(y.size), "ece": expected_calibration_error(conf, correct, bins),
            "nll": temperature_nll(logits, y, temperature), "brier": temperature_brier(logits, y, temperature),
            "mean_confidence": float(conf.mean()),
            "mean_margin": float(margin.mean()), "top1": float(correct.mean()),
            "reliability": reliability_bins(conf, correct, bins)}


def calibrate(logits: np.ndarray, y: np.ndarray, bins: int = ECE_BINS,
              bounds: tuple[float, float] = T_BOUNDS, objective: str = "nll") -> tuple[float, dict[str, Any]]:
    """Fit T (minimising ``objective``) on ``(logits, y)``; summarise the confidence there before (T = 1) and after.

    The "after" figures are measured on the same spectra T was fitted on, so they
    are optimistic; a held-out set is the honest check (``benchmarks/calibration_confidence.py``).

    Returns
    -------
    (float, dict)
        T and ``{"temperature", "objective", "ece_before", "ece_after", "nll_before", "nll_after",
        "brier_before", "brier_after", "mean_margin_before", "mean_margin_after", "spectra", "top1"}``
        (``top1`` does not depend on T).
    """
    t = fit_temperature(logits, y, bounds, objective)
    before, after = confidence_summary(logits, y, 1.0, bins), confidence_summary(logits, y, t, bins)
    return t, {"temperature": t, "objective": objective, "spectra": before["n"], "bins": bins, "top1": before["top1"],
               "ece_before": before["ece"], "ece_after": after["ece"],
               "nll_before": before["nll"], "nll_after": after["nll"],
               "brier_before": before["brier"], "brier_after": after["brier"],
               "mean_margin_before": before["mean_margin"], "mean_margin_after": after["mean_margin"]}


__all__ = ["T_BOUNDS", "ECE_BINS", "OBJECTIVES", "temperature_nll", "temperature_brier", "fit_temperature",
           "confidence_summary", "calibrate"]
