"""Temperature scaling's fit: the one T so that ``softmax(logits / T)`` means what it says.

numpy and scipy only, so the device (``raman-edge head add``) and the trainer
(:mod:`trainer.temperature`, which adds ECE summaries) fit T with the same code.
T minimises the NLL (Guo et al. 2017) or the Brier score of held-out labels; why
the trainer uses the Brier score is in :mod:`trainer.temperature`.
"""
from __future__ import annotations

import logging

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from calibration.errors import ConfigError

from .classifier import softmax

log = logging.getLogger(__name__)

#: Search range for T.  Outside it the fit is driven by a handful of spectra
#: (e.g. a validation set classified perfectly pushes T towards 0); hitting a bound is logged.
T_BOUNDS = (0.05, 20.0)
#: What T minimises (``TrainConfig.calibrate_objective``, ``--calibrate-objective``).
OBJECTIVES = ("nll", "brier")


def check_logits(logits: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(n, K)`` float64 logits and ``(n,)`` int64 class indices, or ConfigError naming what is wrong."""
    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y)
    if logits.ndim != 2 or y.ndim != 1 or logits.shape[0] != y.shape[0]:
        raise ConfigError(f"temperature: logits {logits.shape} and labels {y.shape} must be (n, K) and (n,)")
    if y.size and (y.min() < 0 or y.max() >= logits.shape[1]):
        raise ConfigError(f"temperature: labels must be class indices in 0..{logits.shape[1] - 1}")
    if not np.isfinite(logits).all():
        raise ConfigError("temperature: logits contain NaN or infinity")
    return logits, y.astype(np.int64)


def _mean_nll(logits: np.ndarray, y: np.ndarray, scale: float) -> float:
    """Mean NLL of checked ``(logits, y)`` under ``softmax(logits * scale)`` (scale = 1 / T)."""
    return float(-log_softmax(logits * scale, axis=1)[np.arange(y.size), y].mean())


def temperature_nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of the labels ``y`` under ``softmax(logits / temperature)``."""
    logits, y = check_logits(logits, y)
    if y.size == 0:
        return float("nan")
    return _mean_nll(logits, y, 1.0 / float(temperature))


def temperature_brier(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """Mean Brier score (squared error of the probability vector, 0..2) of ``softmax(logits / temperature)``."""
    logits, y = check_logits(logits, y)
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
    logits, y = check_logits(logits, y)
    lo, hi = float(bounds[0]), float(bounds[1])
    if not 0.0 < lo < hi:
        raise ConfigError(f"temperature: bounds must satisfy 0 < low < high, got {bounds}")
    if objective not in OBJECTIVES:
        raise ConfigError(f"temperature: objective {objective!r} is not one of {', '.join(OBJECTIVES)}")
    if y.size == 0:
        return 1.0

    def nll(log_t: float) -> float:
        return _mean_nll(logits, y, float(np.exp(-log_t)))

    def brier(log_t: float) -> float:
        return temperature_brier(logits, y, float(np.exp(log_t)))

    span = (np.log(lo), np.log(hi))
    if objective == "nll":
        res = minimize_scalar(nll, bounds=span, method="bounded", options={"xatol": 1e-5})
        log_t = float(res.x)
    else:
        # The Brier score need not be unimodal in log T: a coarse grid picks the basin, then refine in it.
        grid = np.linspace(*span, 49)
        values = [brier(g) for g in grid]
        i = int(np.argmin(values))
        res = minimize_scalar(brier, bounds=(grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]),
                              method="bounded", options={"xatol": 1e-5})
        log_t = float(res.x) if res.fun <= values[i] else float(grid[i])
    t = float(np.exp(log_t))
    if min(abs(log_t - np.log(lo)), abs(log_t - np.log(hi))) < 1e-3:
        log.warning("fitted temperature %.3g is at the search bound %s (%d spectra): the fit is weakly "
                    "determined", t, (lo, hi), y.size)
    return t


__all__ = ["T_BOUNDS", "OBJECTIVES", "check_logits", "temperature_nll", "temperature_brier", "fit_temperature"]
