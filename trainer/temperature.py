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
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from calibration.errors import ConfigError
from edge.classifier import softmax
from edge.metrics import expected_calibration_error, reliability_bins

from .config import CALIBRATE_OBJECTIVES

log = logging.getLogger(__name__)

#: Search range for T.  Outside it the fit is driven by a handful of spectra
#: (e.g. a validation set classified perfectly pushes T towards 0); hitting a bound is logged.
T_BOUNDS = (0.05, 20.0)
#: Bins of the expected calibration error (Guo et al. use 15).
ECE_BINS = 15
#: What T minimises (``TrainConfig.calibrate_objective``, ``--calibrate-objective``).
OBJECTIVES = CALIBRATE_OBJECTIVES


def _check(logits: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y)
    if logits.ndim != 2 or y.ndim != 1 or logits.shape[0] != y.shape[0]:
        raise ConfigError(f"temperature: logits {logits.shape} and labels {y.shape} must be (n, K) and (n,)")
    if y.size and (y.min() < 0 or y.max() >= logits.shape[1]):
        raise ConfigError(f"temperature: labels must be class indices in 0..{logits.shape[1] - 1}")
    if not np.isfinite(logits).all():
        raise ConfigError("temperature: logits contain NaN or infinity")
    return logits, y.astype(np.int64)


def temperature_nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of the labels ``y`` under ``softmax(logits / temperature)``."""
    logits, y = _check(logits, y)
    if y.size == 0:
        return float("nan")
    logp = log_softmax(logits / float(temperature), axis=1)
    return float(-logp[np.arange(y.size), y].mean())


def temperature_brier(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """Mean Brier score (squared error of the probability vector, 0..2) of ``softmax(logits / temperature)``."""
    logits, y = _check(logits, y)
    if y.size == 0:
        return float("nan")
    p = softmax(logits, float(temperature))
    p[np.arange(y.size), y] -= 1.0
    return float((p * p).sum(axis=1).mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray, bounds: tuple[float, float] = T_BOUNDS,
                    objective: str = "nll") -> float:
    """The temperature that minimises the NLL (or Brier score) of ``y`` under ``softmax(logits / T)``.

    Parameters
    ----------
    logits : numpy.ndarray
        ``(n, K)`` held-out logits (not the training spectra: those are fitted too well).
    y : numpy.ndarray
        ``(n,)`` true class indices.
    bounds : (float, float)
        Range searched for T.
    objective : {"nll", "brier"}
        What T minimises (see the module docstring for when they differ).

    Returns
    -------
    float
        T > 0; 1.0 when there is nothing to fit on (no spectra).

    Raises
    ------
    ConfigError
        Shapes that do not match, labels out of range, non-finite logits, bad bounds or objective.
    """
    logits, y = _check(logits, y)
    lo, hi = float(bounds[0]), float(bounds[1])
    if not 0.0 < lo < hi:
        raise ConfigError(f"temperature: bounds must satisfy 0 < low < high, got {bounds}")
    if objective not in OBJECTIVES:
        raise ConfigError(f"temperature: objective {objective!r} is not one of {', '.join(OBJECTIVES)}")
    if y.size == 0:
        return 1.0
    rows = np.arange(y.size)

    def nll(log_t: float) -> float:
        return float(-log_softmax(logits * np.exp(-log_t), axis=1)[rows, y].mean())

    def brier(log_t: float) -> float:
        return temperature_brier(logits, y, float(np.exp(log_t)))

    span = (np.log(lo), np.log(hi))
    if objective == "nll":
        res = minimize_scalar(nll, bounds=span, method="bounded", options={"xatol": 1e-5})
        log_t = float(res.x)
    else:
        # The Brier score need not be unimodal in log T: a coarse grid picks the basin, then refine in it.
        grid = np.linspace(*span, 49)
        i = int(np.argmin([brier(g) for g in grid]))
        res = minimize_scalar(brier, bounds=(grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]),
                              method="bounded", options={"xatol": 1e-5})
        log_t = float(res.x) if res.fun <= brier(grid[i]) else float(grid[i])
    t = float(np.exp(log_t))
    if min(abs(log_t - np.log(lo)), abs(log_t - np.log(hi))) < 1e-3:
        log.warning("fitted temperature %.3g is at the search bound %s (%d spectra): the fit is weakly "
                    "determined", t, (lo, hi), y.size)
    return t


def confidence_summary(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0,
                       bins: int = ECE_BINS) -> dict[str, Any]:
    """ECE, NLL, mean top-1 probability and mean top-1/top-2 margin of ``softmax(logits / T)``.

    Returns
    -------
    dict
        ``ece``, ``nll``, ``mean_confidence``, ``mean_margin``, ``top1``, ``n`` and
        ``reliability`` (per-bin count, confidence and accuracy).
    """
    logits, y = _check(logits, y)
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
        "brier_before", "brier_after", "mean_margin_before", "mean_margin_after", "spectra"}``.
    """
    t = fit_temperature(logits, y, bounds, objective)
    before, after = confidence_summary(logits, y, 1.0, bins), confidence_summary(logits, y, t, bins)
    return t, {"temperature": t, "objective": objective, "spectra": before["n"], "bins": bins,
               "ece_before": before["ece"], "ece_after": after["ece"],
               "nll_before": before["nll"], "nll_after": after["nll"],
               "brier_before": before["brier"], "brier_after": after["brier"],
               "mean_margin_before": before["mean_margin"], "mean_margin_after": after["mean_margin"]}


__all__ = ["T_BOUNDS", "ECE_BINS", "OBJECTIVES", "temperature_nll", "temperature_brier", "fit_temperature",
           "confidence_summary", "calibrate"]
