"""Physically plausible augmentation of *raw* spectra (numpy only).

Applied to the raw spectra on their own axis, before :meth:`Preprocessor.batch`,
so that the network sees augmented data through exactly the preprocessing it
will meet on the rover.  Each effect mimics something a field instrument or a
field sample does, in the order it happens to the light:

0. **background swap** (``p_background_swap``, 0.8 by default) — the sample's own
   fluorescence: its smooth background (asls estimate) is replaced by a *real*
   background of another spectrum, keeping that donor's background-to-Raman
   ratio times a random factor (:class:`BackgroundBank`); before it, the **band
   gain** (``p_band_gain``, off by default) multiplies the Raman part by a smooth
   positive curve (:func:`band_gains`): relative band intensities change with
   crystal orientation and polarisation;
1. **axis shift** — residual calibration error / thermal drift of the
   spectrometer: the spectrum is re-interpolated at ``axis - δ``; points shifted
   in from outside the measured range take the edge value (a baseline level,
   never an invented band);
2. **intensity scaling** — laser power, focus and integration time: a positive
   factor, log-uniform;
3. **random baseline** (RaMixNet-style) — a smooth, non-negative fluorescence
   curve of one of four kinds (polynomial, Gaussian, sigmoid, exponential)
   scaled by the spectrum's mean intensity times a random amplitude;
4. **fluorescence term** — ``a · mean(y) · (1 + tanh(...))`` or
   ``a · mean(y) · (1 + cos(...))``: a broad rising/falling or slowly
   undulating background (etaloning, fluorescence of a mixed-in phase);
5. **down-sampling** — a coarser spectrometer: the spectrum is integrated over
   pixels ``k`` times wider than the axis step (random phase) and linearly
   re-interpolated onto the axis, as the shared preprocessing would resample it;
6. **detector noise** — exact Poisson photon noise for a random photon count at
   the spectrum's maximum, and the Gaussian pair (read noise, plus shot noise in
   its Gaussian limit with variance proportional to the counts); noise never
   pushes a point below zero unless the clean value was already negative;
7. **cosmic-ray spikes** — 1–2-point spikes added last, on the detector; the
   shared preprocessing's ``despike`` step removes them (tested).

Every range is a field of :class:`AugmentConfig`; ``docs/augmentation.md``
gives each range and its physical justification.

All randomness comes from the ``numpy.random.Generator`` passed in, so a seed
reproduces the augmented data exactly.  Effects 1–3 and the Gaussian noise draw
from that generator in the same order as the first version of this module (the
shipped model's), and effects added later draw from a child generator spawned
from it, so with their probabilities at 0 the output is the same as before.  The
background swap draws from a second child generator; it is on by default since
stop 11 (+5.8 / +8.1 points of 5-fold CV top-1 on the Soysal split, seeds 0 / 1),
so ``--aug p_background_swap=0`` reproduces models trained before it.  The band
gain draws from a third child generator.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from scipy.integrate import cumulative_trapezoid
from scipy.special import comb

from calibration.errors import ConfigError, InputError

log = logging.getLogger(__name__)

#: Baseline shapes of RaMixNet (Mozaffari & Tay, 2021): all four are available.
BASELINE_KINDS = ("polynomial", "gaussian", "sigmoid", "exponential")
#: The shipped model's kinds (exponential added later; see AugmentConfig.baseline_kinds).
DEFAULT_BASELINE_KINDS = ("polynomial", "gaussian", "sigmoid")
FLUORESCENCE_KINDS = ("tanh", "cos")

_RANGES = ("scale", "baseline_amplitude", "read_noise", "shot_noise", "fluorescence_amplitude",
           "downsample_factor", "poisson_counts", "spike_count", "spike_height", "spike_width",
           "background_factor", "band_gain")
_PROBS = ("p_shift", "p_scale", "p_baseline", "p_noise", "p_fluorescence", "p_downsample", "p_poisson", "p_spikes",
          "p_background_swap", "p_band_gain")
#: Periods (cm⁻¹) of the smooth curves behind the band gain: wider than a band, narrower than the range.
BAND_GAIN_PERIODS = (150.0, 600.0)
#: asls smoothness (on a 1 cm⁻¹ grid) and asymmetry of the background estimate behind the swap.
SWAP_ASLS = {"lam": 1e5, "p": 0.01}


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random effects (each drawn per spectrum; ranges are uniform unless noted).

    Attributes
    ----------
    p_shift, max_shift : float
        Probability of an axis shift and its largest size in axis units (cm⁻¹);
        the shift is uniform in ``[-max_shift, max_shift]``.
    p_scale, scale : float, (float, float)
        Probability and range (log-uniform) of the intensity factor.
    p_baseline, baseline_amplitude : float, (float, float)
        Probability and range of the baseline's mean, in units of the spectrum's mean.
    baseline_kinds : tuple of str
        Baseline shapes drawn from (equally likely), a subset of :data:`BASELINE_KINDS`.
    p_noise, read_noise, shot_noise : float, (float, float), (float, float)
        Probability; read-noise σ relative to the spectrum's maximum; shot-noise
        factor ``a`` with σ² = a² · counts · max.
    p_fluorescence, fluorescence_amplitude : float, (float, float)
        Probability and amplitude ``a`` of the tanh/cos term ``a · mean(y) · (1 + f)``.
    p_downsample, downsample_factor : float, (float, float)
        Probability and pixel width, in axis steps, of the coarser spectrometer.
    p_poisson, poisson_counts : float, (float, float)
        Probability and photon count at the spectrum's maximum (log-uniform) of
        exact Poisson noise.
    p_spikes, spike_count, spike_height, spike_width : float, (int, int), (float, float), (int, int)
        Probability; number of spikes; height relative to the spectrum's maximum
        (log-uniform); width in points.
    p_background_swap, background_factor : float, (float, float)
        Probability that a spectrum's own fluorescence background (asls estimate) is replaced
        by a *real* one from another spectrum (a donor), and the factor (log-uniform) on the
        donor's background-to-Raman ratio.  See :class:`BackgroundBank`.
    p_band_gain, band_gain : float, (float, float)
        Probability that a spectrum's Raman part (spectrum minus its asls background) is
        multiplied by a smooth positive gain ``exp(a · s(ν))`` — relative band intensities
        change with crystal orientation and polarisation — and the range of ``a``
        (:func:`band_gains`; ``s`` has peak magnitude 1 and periods of 150–600 cm⁻¹).
    """

    p_shift: float = 0.5
    max_shift: float = 3.0
    p_scale: float = 0.5
    scale: tuple[float, float] = (0.5, 2.0)
    p_baseline: float = 0.5
    baseline_amplitude: tuple[float, float] = (0.0, 1.0)
    p_noise: float = 0.5
    read_noise: tuple[float, float] = (0.0, 0.01)
    shot_noise: tuple[float, float] = (0.0, 0.02)
    baseline_kinds: tuple[str, ...] = DEFAULT_BASELINE_KINDS
    p_fluorescence: float = 0.0
    fluorescence_amplitude: tuple[float, float] = (0.0, 0.5)
    p_downsample: float = 0.0
    downsample_factor: tuple[float, float] = (1.0, 4.0)
    p_poisson: float = 0.0
    poisson_counts: tuple[float, float] = (100.0, 10000.0)
    p_spikes: float = 0.0
    spike_count: tuple[int, int] = (1, 3)
    spike_height: tuple[float, float] = (0.2, 2.0)
    spike_width: tuple[int, int] = (1, 2)
    p_background_swap: float = 0.8
    background_factor: tuple[float, float] = (0.2, 3.0)
    p_band_gain: float = 0.0
    band_gain: tuple[float, float] = (0.0, 0.5)

    def __post_init__(self) -> None:
        # JSON and the CLI give lists: store tuples so configs compare and hash alike.
        for name in _RANGES + ("baseline_kinds",):
            value = getattr(self, name)
            if isinstance(value, str):
                value = tuple(v.strip() for v in value.split(",")) if name == "baseline_kinds" else value
            try:
                object.__setattr__(self, name, tuple(value))
            except TypeError:
                raise ConfigError(f"augmentation: {name} must be a pair (lo, hi), got {value!r}") from None
        for name in _PROBS:
            p = getattr(self, name)
            if not (isinstance(p, (int, float)) and 0.0 <= p <= 1.0):
                raise ConfigError(f"augmentation: {name} must be in [0, 1], got {p!r}")
        if not (isinstance(self.max_shift, (int, float)) and 0 <= self.max_shift < np.inf):
            raise ConfigError(f"augmentation: max_shift must be >= 0, got {self.max_shift!r}")
        for name in _RANGES:
            r = getattr(self, name)
            if len(r) != 2 or not all(isinstance(v, (int, float)) for v in r):
                raise ConfigError(f"augmentation: {name} must be a pair (lo, hi), got {r!r}")
            lo, hi = r
            if not (0.0 <= lo <= hi and np.isfinite(hi)):
                raise ConfigError(f"augmentation: {name} must be a range 0 <= lo <= hi, got {(lo, hi)}")
        for name in ("scale", "poisson_counts", "spike_height", "background_factor"):  # log-uniform: lo > 0
            if getattr(self, name)[0] <= 0:
                raise ConfigError(f"augmentation: {name} must be positive, got {getattr(self, name)}")
        if self.downsample_factor[0] < 1.0:
            raise ConfigError(f"augmentation: downsample_factor must be >= 1, got {self.downsample_factor}")
        for name in ("spike_count", "spike_width"):
            lo, hi = getattr(self, name)
            if int(lo) != lo or int(hi) != hi or (name == "spike_width" and lo < 1):
                raise ConfigError(f"augmentation: {name} must be whole numbers"
                                  f"{' >= 1' if name == 'spike_width' else ''}, got {(lo, hi)}")
            object.__setattr__(self, name, (int(lo), int(hi)))
        if self.spike_width[1] > 2:
            # The preprocessing's despike step removes spikes of at most 2 points (max_width=2).
            raise ConfigError(f"augmentation: spike_width must be at most 2 points, got {self.spike_width}")
        kinds = self.baseline_kinds
        if not kinds or any(k not in BASELINE_KINDS for k in kinds) or len(set(kinds)) != len(kinds):
            raise ConfigError(f"augmentation: baseline_kinds must be distinct names from {BASELINE_KINDS}, "
                              f"got {kinds!r}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def replace(self, **changes: Any) -> "AugmentConfig":
        """A copy with ``changes`` applied (validated); unknown names raise :class:`ConfigError`."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(f"augmentation: unknown option(s) {unknown}; known: {sorted(known)}")
        return AugmentConfig(**{**asdict(self), **changes})


#: How :func:`shift_spectra` fills the end that a shift vacates.
SHIFT_FILLS = ("edge", "baseline", "zero")


def shift_spectra(spectra: np.ndarray, axis: np.ndarray, shift: float | np.ndarray, fill: str = "edge",
                  window: float = 30.0) -> np.ndarray:
    """Move spectra along their Raman-shift axis: a band at ``x`` moves to ``x + shift``.

    The one shift used everywhere: the training augmentation, the trainer's shift
    evaluation (:mod:`trainer.tolerance`) and the benchmarks (:mod:`benchmarks.protocols`).
    Each spectrum is linearly re-interpolated at ``axis - shift`` (exact for whole-step
    shifts on a regular grid).  Numpy only.

    Parameters
    ----------
    spectra : numpy.ndarray
        ``(n, points)`` or ``(points,)`` intensities on ``axis``.
    axis : numpy.ndarray
        Strictly ascending axis (cm⁻¹), ``points`` long.
    shift : float or numpy.ndarray
        One shift for every spectrum, or ``(n,)`` shifts (cm⁻¹); positive moves bands
        to higher Raman shift.
    fill : {"edge", "baseline", "zero"}
        The end that a shift vacates (no wrap-around in any mode):

        * ``"edge"``: the spectrum's end value, as ``numpy.interp`` clamps (the
          augmentation's fill: the shipped model was trained with it);
        * ``"baseline"``: the minimum of the original spectrum over the ``window``
          cm⁻¹ nearest that end, the local baseline level: it neither invents a band
          nor stretches a band sitting at the edge into a plateau;
        * ``"zero"``: zeros, as in data that are zero outside their measured range.
    window : float
        Width (cm⁻¹) of the end region whose minimum is the ``"baseline"`` fill.

    Returns
    -------
    numpy.ndarray
        Shifted spectra, the shape of ``spectra``; its dtype if floating, else float64.

    Raises
    ------
    ConfigError
        Unknown ``fill``.
    InputError
        Shapes that do not match, or an axis that is not strictly ascending.
    """
    if fill not in SHIFT_FILLS:
        raise ConfigError(f"shift fill must be one of {SHIFT_FILLS}, got {fill!r}")
    y = np.asarray(spectra)
    y2 = np.atleast_2d(y).astype(np.float64)
    x = np.asarray(axis, dtype=np.float64)
    if y.ndim > 2 or y2.shape[1] != x.size:
        raise InputError(f"shift: spectra of shape {y.shape} do not lie on an axis of {x.size} points")
    if x.size > 1 and not np.all(np.diff(x) > 0):
        raise InputError("shift: the axis must be strictly ascending")
    d = np.broadcast_to(np.asarray(shift, dtype=np.float64), (y2.shape[0],))
    out = y2.copy()
    for i in np.flatnonzero(d):
        src = x - d[i]
        out[i] = np.interp(src, x, y2[i])  # clamps to the end values: the "edge" fill
        if fill != "edge":
            vacated = src < x[0] if d[i] > 0 else src > x[-1]
            if fill == "zero":
                out[i, vacated] = 0.0
            else:
                end = x < x[0] + window if d[i] > 0 else x > x[-1] - window
                out[i, vacated] = y2[i, end].min()
    out = out.astype(y.dtype if np.issubdtype(y.dtype, np.floating) else np.float64, copy=False)
    return out[0] if y.ndim == 1 else out


def _unit(axis: np.ndarray) -> np.ndarray:
    axis = np.asarray(axis, dtype=np.float64)
    return (axis - axis[0]) / max(axis[-1] - axis[0], 1e-12)  # 0..1


def random_baselines(n: int, axis: np.ndarray, rng: np.random.Generator,
                     kinds: tuple[str, ...] = DEFAULT_BASELINE_KINDS) -> np.ndarray:
    """``n`` smooth, non-negative fluorescence-like curves on ``axis``, each with mean 1.

    Shapes (``t`` is the axis mapped to 0..1):

    * polynomial — Bernstein basis of degree 1–3 with weights in [0, 1]: non-negative by construction;
    * gaussian — centre in [-0.3, 1.3], σ in [0.3, 1.5] (a broad hump, often peaking outside the window);
    * sigmoid — ``(1 + tanh(±(t - c) / w)) / 2 + o``, c in [0.1, 0.9], w in [0.05, 0.5], offset o in [0, 0.3];
    * exponential — ``exp(±t / τ)``, τ in [0.2, 2]: a fluorescence tail rising or decaying across the window.
    """
    t = _unit(axis)
    out = np.empty((n, t.size))
    picks = rng.integers(0, len(kinds), size=n)
    for i, pick in enumerate(picks):
        kind = kinds[pick]
        if kind == "polynomial":
            # Bernstein basis with non-negative weights: non-negative on [0, 1] by construction.
            deg = int(rng.integers(1, 4))
            w = rng.random(deg + 1)
            b = sum(w[j] * comb(deg, j) * t**j * (1 - t) ** (deg - j) for j in range(deg + 1))
        elif kind == "gaussian":
            centre = rng.uniform(-0.3, 1.3)
            width = rng.uniform(0.3, 1.5)
            b = np.exp(-0.5 * ((t - centre) / width) ** 2)
        elif kind == "sigmoid":  # fluorescence rising (or falling) across the range
            centre = rng.uniform(0.1, 0.9)
            width = rng.uniform(0.05, 0.5)
            sign = rng.choice((-1.0, 1.0))
            b = 0.5 * (1.0 + np.tanh(sign * (t - centre) / width)) + rng.uniform(0.0, 0.3)
        else:  # exponential
            tau = rng.uniform(0.2, 2.0)
            sign = rng.choice((-1.0, 1.0))
            b = np.exp(sign * (t - (sign > 0)) / tau)  # peak value 1 at the rising end
        out[i] = b / max(b.mean(), 1e-12)
    return out


def fluorescence_terms(n: int, axis: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``n`` tanh or cos terms ``1 + f(t)`` on ``axis`` (values in [0, 2], not normalised).

    * tanh — ``1 + tanh(±(t - c) / w)``, c in [0, 1], w in [0.1, 1];
    * cos — ``1 + cos(2π t / P + φ)``, period P in [1, 4] window widths, phase φ in [0, 2π):
      at most one undulation across the window, as broad as fluorescence.
    """
    t = _unit(axis)
    out = np.empty((n, t.size))
    kind = rng.integers(0, len(FLUORESCENCE_KINDS), size=n)
    centre, width, sign = rng.uniform(0, 1, n), rng.uniform(0.1, 1.0, n), rng.choice((-1.0, 1.0), n)
    period, phase = rng.uniform(1.0, 4.0, n), rng.uniform(0, 2 * np.pi, n)
    for i in range(n):
        if FLUORESCENCE_KINDS[kind[i]] == "tanh":
            out[i] = 1.0 + np.tanh(sign[i] * (t - centre[i]) / width[i])
        else:
            out[i] = 1.0 + np.cos(2 * np.pi * t / period[i] + phase[i])
    return out


def downsample(spectra: np.ndarray, axis: np.ndarray, factors: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """Integrate each spectrum over pixels ``factors[i]`` axis steps wide, re-interpolate onto ``axis``.

    Pixel ``j`` of spectrum ``i`` covers ``axis[0] + (phases[i] + j) · k · step ± k · step / 2`` (``k =
    factors[i]``, ``phases`` in [0, 1)); its value is the mean intensity over that range, as a detector
    pixel integrates light.  The result is linearly interpolated back onto ``axis`` (the edges keep the
    outermost pixel values).  A factor of 1 returns (nearly) the input.
    """
    y = np.asarray(spectra, dtype=np.float64)
    axis = np.asarray(axis, dtype=np.float64)
    step = (axis[-1] - axis[0]) / max(axis.size - 1, 1)
    out = np.empty_like(y)
    for i in range(y.shape[0]):
        k = float(factors[i])
        if k <= 1.0:
            out[i] = y[i]
            continue
        width = k * step
        centres = np.arange(axis[0] + phases[i] * width, axis[-1] + 1e-9, width)
        lo, hi = np.clip(centres - width / 2, axis[0], axis[-1]), np.clip(centres + width / 2, axis[0], axis[-1])
        cum = cumulative_trapezoid(y[i], axis, initial=0.0)
        span = np.maximum(hi - lo, 1e-12)
        pixels = (np.interp(hi, axis, cum) - np.interp(lo, axis, cum)) / span
        out[i] = np.interp(axis, centres, pixels)
    return out


def add_noise(spectra: np.ndarray, read_sigma: np.ndarray, shot: np.ndarray,
              rng: np.random.Generator) -> np.ndarray:
    """Add read noise (σ = ``read_sigma`` · max) and shot noise (σ² = ``shot``² · counts · max).

    A noisy point is not allowed below ``min(0, clean value)``: counts cannot be negative.
    """
    y = np.asarray(spectra, dtype=np.float64)
    peak = np.maximum(np.abs(y).max(axis=1, keepdims=True), 1e-12)
    var = (read_sigma[:, None] * peak) ** 2 + shot[:, None] ** 2 * np.maximum(y, 0.0) * peak
    noisy = y + rng.standard_normal(y.shape) * np.sqrt(var)
    return np.maximum(noisy, np.minimum(y, 0.0))


def add_poisson_noise(spectra: np.ndarray, peak_counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Exact photon noise: each spectrum as Poisson counts with ``peak_counts[i]`` expected at its maximum.

    The result is scaled back to the input's units; negative input values (over-subtracted
    data) are left as they are.
    """
    y = np.asarray(spectra, dtype=np.float64)
    peak = np.maximum(np.abs(y).max(axis=1, keepdims=True), 1e-12)
    scale = peak_counts[:, None] / peak  # counts per intensity unit
    counts = rng.poisson(np.maximum(y, 0.0) * scale)
    return np.where(y < 0, y, counts / scale)


def add_spikes(spectra: np.ndarray, positions: np.ndarray, heights: np.ndarray, widths: np.ndarray,
               counts: np.ndarray) -> np.ndarray:
    """Add ``counts[i]`` cosmic-ray spikes to spectrum ``i``.

    Spike ``j`` starts at point ``positions[i, j]``, spans ``widths[i, j]`` points (1 or 2) and adds
    ``heights[i, j]`` times the spectrum's maximum (the second point of a 2-point spike gets 60 %:
    a ray hitting a pixel boundary shares its charge unevenly).  A spike that would touch an
    earlier one of the same spectrum is skipped: together they would be wider than a ray.
    """
    y = np.array(spectra, dtype=np.float64, copy=True)
    p = y.shape[1]
    peak = np.abs(y).max(axis=1)
    for i in range(y.shape[0]):
        taken = np.zeros(p + 2, dtype=bool)  # occupied points, padded by one on each side
        for j in range(int(counts[i])):
            pos, w = int(positions[i, j]), int(widths[i, j])
            pos = min(pos, p - w)
            if taken[pos:pos + w + 2].any():  # points pos-1 .. pos+w in unpadded indices
                continue
            taken[pos + 1:pos + w + 1] = True
            y[i, pos] += heights[i, j] * peak[i]
            if w == 2:
                y[i, pos + 1] += 0.6 * heights[i, j] * peak[i]
    return y


def split_background(spectra: np.ndarray, axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each raw spectrum's smooth fluorescence background and its Raman part (spectrum − background).

    The background is pybaselines' asls (:data:`SWAP_ASLS`) through :func:`calibration.baseline.baseline`.
    This is augmentation only: the model still sees raw spectra, never a baseline-corrected one.
    """
    from calibration.baseline import baseline

    y = np.asarray(spectra, dtype=np.float64)
    back = np.stack([baseline(row, axis, method="asls", **SWAP_ASLS) for row in y]) if len(y) else y.copy()
    return back, y - back


def band_gains(n: int, axis: np.ndarray, rng: np.random.Generator, amplitudes: np.ndarray) -> np.ndarray:
    """Smooth positive gains ``exp(a_i · s_i(ν))``, shape ``(n, points)``.

    ``s_i`` is a random sum of three cosines with periods uniform in
    :data:`BAND_GAIN_PERIODS` (cm⁻¹), scaled to a peak magnitude of 1, so a gain changes
    the *relative* intensities of bands a few hundred cm⁻¹ apart (by up to ``exp(±a)``)
    but never the shape or position of a band.
    """
    u = np.asarray(axis, dtype=np.float64) - float(axis[0])
    periods = rng.uniform(*BAND_GAIN_PERIODS, (n, 3))
    phases = rng.uniform(0.0, 2 * np.pi, (n, 3))
    weights = rng.normal(size=(n, 3))
    curve = np.einsum("nk,nkp->np", weights, np.cos(2 * np.pi * u[None, None, :] / periods[..., None]
                                                      + phases[..., None]))
    curve /= np.maximum(np.abs(curve).max(axis=1, keepdims=True), 1e-12)
    return np.exp(np.asarray(amplitudes, dtype=np.float64)[:, None] * curve)


def _raman_level(raman: np.ndarray, spectra: np.ndarray) -> np.ndarray:
    # Mean absolute Raman signal, floored so a nearly featureless spectrum gives no huge ratio.
    return np.maximum(np.abs(raman).mean(axis=1), 1e-3 * np.abs(spectra).max(axis=1) + 1e-12)


@dataclass(frozen=True)
class BackgroundBank:
    """Real fluorescence backgrounds to swap in, each in units of its own spectrum's Raman level.

    Field spectra differ most in their fluorescence, which the few labelled spectra of a
    mineral cannot show; the swap puts a mineral's peaks on the backgrounds that *other*
    real samples had (RRUFF raw spectra carry backgrounds from nothing to many times the
    Raman signal), keeping each donor's background-to-Raman ratio (times ``background_factor``).
    """

    axis: np.ndarray
    shapes: np.ndarray  # (donors, points)

    @classmethod
    def from_spectra(cls, spectra: np.ndarray, axis: np.ndarray) -> "BackgroundBank":
        back, raman = split_background(spectra, axis)
        return cls(np.asarray(axis, dtype=np.float64), back / _raman_level(raman, np.asarray(spectra))[:, None])

    @classmethod
    def merge(cls, banks: list["BackgroundBank"]) -> "BackgroundBank":
        """One bank on the first bank's axis (others interpolated, ends held)."""
        axis = banks[0].axis
        return cls(axis, np.concatenate([b.on(axis) for b in banks]))

    def __len__(self) -> int:
        return len(self.shapes)

    def on(self, axis: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        shapes = self.shapes if rows is None else self.shapes[rows]
        axis = np.asarray(axis, dtype=np.float64)
        if axis.shape == self.axis.shape and np.array_equal(axis, self.axis):
            return shapes.copy()
        return np.stack([np.interp(axis, self.axis, s) for s in shapes]) if len(shapes) else \
            np.empty((0, axis.size))


def add_backgrounds(spectra: np.ndarray, axis: np.ndarray, bank: BackgroundBank, rng: np.random.Generator,
                    factor: tuple[float, float] = (0.2, 3.0)) -> np.ndarray:
    """Background-free (processed) spectra with a real fluorescence background from ``bank`` under each.

    Each spectrum gets one donor background at the donor's own background-to-Raman
    ratio times a log-uniform ``factor`` (the swap's rule, on a spectrum whose asls
    background is taken to be zero), then is max-normalised like the raw RRUFF
    spectra.  Used to bring processed RRUFF spectra into the raw domain as
    unlabelled data (``benchmarks/semi_supervised.py --extra-backgrounds``).
    """
    y = np.asarray(spectra, dtype=np.float64)
    if not len(y):
        return y.copy()
    level = _raman_level(y, y)
    picks = rng.integers(0, len(bank), len(y))
    out = y + (_log_uniform(rng, factor, len(y)) * level)[:, None] * bank.on(axis, picks)
    out -= np.minimum(out.min(axis=1, keepdims=True), 0.0)
    return out / np.maximum(out.max(axis=1, keepdims=True), 1e-12)


def _log_uniform(rng: np.random.Generator, lo_hi: tuple[float, float], n: int) -> np.ndarray:
    lo, hi = np.log(lo_hi[0]), np.log(lo_hi[1])
    return np.exp(rng.uniform(lo, hi, n))


class Augmenter:
    """Draws random augmentations for batches of raw spectra.

    Parameters
    ----------
    config : AugmentConfig
        Effect ranges and probabilities.
    rng : numpy.random.Generator
        Source of all randomness (seed it for reproducible training).
    """

    def __init__(self, config: AugmentConfig | None = None, rng: np.random.Generator | None = None,
                 donors: BackgroundBank | None = None) -> None:
        self.config = config or AugmentConfig()
        self.rng = rng if rng is not None else np.random.default_rng()
        # Effects added after the first version draw from their own streams (see the module docstring);
        # spawning does not consume numbers from self.rng, and child 0 is the same as spawn(1)'s.
        self.extra_rng, self.swap_rng, self.band_rng = self.rng.spawn(3)
        #: Backgrounds to swap in (``p_background_swap``); None: the spectra of each call donate.
        self.donors = donors
        self._split_cache: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}

    def _split(self, y: np.ndarray, axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Training passes the same raw array every epoch: estimate its backgrounds once.
        key = hashlib.sha1(y.tobytes() + axis.tobytes()).digest()
        if key not in self._split_cache:
            if len(self._split_cache) >= 8:
                self._split_cache.pop(next(iter(self._split_cache)))
            self._split_cache[key] = split_background(y, axis)
        return self._split_cache[key]

    def _sample_light(self, y: np.ndarray, axis: np.ndarray) -> np.ndarray:
        """Band gains on the Raman part, then the background swap (both on the asls split)."""
        c, sr = self.config, self.swap_rng
        n = len(y)
        do = sr.random(n) < c.p_background_swap
        factors = _log_uniform(sr, c.background_factor, n)
        gained = np.zeros(n, dtype=bool)
        if c.p_band_gain > 0:
            br = self.band_rng
            gained = br.random(n) < c.p_band_gain
            gains = band_gains(n, axis, br, br.uniform(*c.band_gain, n) * gained)
        if not (do.any() or gained.any()):
            return y
        back, raman = self._split(y, axis)
        level = _raman_level(raman, y)
        out = y.copy()
        if gained.any():
            raman = raman.copy()
            raman[gained] *= gains[gained]
            out[gained] = back[gained] + raman[gained]
        if do.any():
            bank = BackgroundBank(axis, back / level[:, None]) if self.donors is None else self.donors
            picks = sr.integers(0, len(bank), n)
            level = _raman_level(raman, y)  # the (gained) target's Raman level; the bank used the original
            out[do] = raman[do] + (factors * level)[do, None] * bank.on(axis, picks[do])
        # A raw spectrum is counts above the dark level: an asls overshoot must not make it negative.
        changed = do | gained
        out[changed] -= np.minimum(out[changed].min(axis=1, keepdims=True), 0.0)
        return out

    def __call__(self, spectra: np.ndarray, axis: np.ndarray) -> np.ndarray:
        """Return an augmented float64 copy of ``(n, points)`` raw ``spectra`` on ``axis``."""
        c, rng, xr = self.config, self.rng, self.extra_rng
        y = np.array(spectra, dtype=np.float64, copy=True)
        axis = np.asarray(axis, dtype=np.float64)
        if y.ndim != 2 or y.shape[1] != axis.size:
            raise ValueError(f"expected (n, {axis.size}) spectra, got {y.shape}")
        n, p = y.shape
        if c.p_background_swap > 0 or c.p_band_gain > 0:  # first: the sample's own light
            y = self._sample_light(y, axis)
        # Draw every random number for every spectrum, whether used or not, so that
        # changing one probability does not reshuffle the other effects' draws.
        do = rng.random((n, 4)) < np.array([c.p_shift, c.p_scale, c.p_baseline, c.p_noise])
        shifts = rng.uniform(-c.max_shift, c.max_shift, n) * do[:, 0]
        scales = np.where(do[:, 1], _log_uniform(rng, c.scale, n), 1.0)
        amps = rng.uniform(*c.baseline_amplitude, n) * do[:, 2]
        read = rng.uniform(*c.read_noise, n) * do[:, 3]
        shot = rng.uniform(*c.shot_noise, n) * do[:, 3]
        baselines = random_baselines(n, axis, rng, c.baseline_kinds)

        more = xr.random((n, 4)) < np.array([c.p_fluorescence, c.p_downsample, c.p_poisson, c.p_spikes])
        f_amps = xr.uniform(*c.fluorescence_amplitude, n) * more[:, 0]
        f_terms = fluorescence_terms(n, axis, xr)
        factors = np.where(more[:, 1], xr.uniform(*c.downsample_factor, n), 1.0)
        phases = xr.random(n)
        photons = _log_uniform(xr, c.poisson_counts, n)
        most = max(c.spike_count[1], 1)
        n_spikes = xr.integers(c.spike_count[0], c.spike_count[1] + 1, n) * more[:, 3]
        positions = xr.integers(0, p, (n, most))
        heights = _log_uniform(xr, c.spike_height, n * most).reshape(n, most)
        widths = xr.integers(c.spike_width[0], c.spike_width[1] + 1, (n, most))

        if do[:, 0].any():
            y[do[:, 0]] = shift_spectra(y[do[:, 0]], axis, shifts[do[:, 0]])
        y *= scales[:, None]
        level = np.maximum(np.abs(y).mean(axis=1), 1e-12)  # backgrounds scale with the spectrum's mean
        y += (amps * level)[:, None] * baselines
        y += (f_amps * level)[:, None] * f_terms
        if more[:, 1].any():
            y[more[:, 1]] = downsample(y[more[:, 1]], axis, factors[more[:, 1]], phases[more[:, 1]])
        if more[:, 2].any():
            y[more[:, 2]] = add_poisson_noise(y[more[:, 2]], photons[more[:, 2]], xr)
        if do[:, 3].any():
            y[do[:, 3]] = add_noise(y[do[:, 3]], read[do[:, 3]], shot[do[:, 3]], rng)
        if more[:, 3].any():
            y = add_spikes(y, positions, heights, widths, n_spikes)
        return y


def _option_value(name: str, text: str) -> Any:
    if name == "baseline_kinds":
        return tuple(v.strip() for v in text.split(",") if v.strip())
    parts = [v.strip() for v in text.split(",")]
    try:
        values = [float(v) for v in parts]
    except ValueError:
        raise ConfigError(f"augmentation option {name}={text!r}: expected a number or 'lo,hi'") from None
    return values[0] if len(values) == 1 else tuple(values)


def parse_augment_options(items: list[str] | tuple[str, ...], base: AugmentConfig | None = None) -> AugmentConfig:
    """``base`` (default :class:`AugmentConfig`) with ``NAME=VALUE`` items applied (``raman-edge train --aug``).

    VALUE is a number (``p_spikes=0.3``), a range ``lo,hi`` (``spike_height=0.1,1``) or, for
    ``baseline_kinds``, comma-separated names.  Raises :class:`ConfigError` naming a bad item.
    """
    changes: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(f"augmentation option {item!r}: expected NAME=VALUE")
        changes[name] = _option_value(name, text)
    return (base or AugmentConfig()).replace(**changes)
