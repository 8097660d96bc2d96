"""Raman-shift axis refinement from a Raman standard with tabulated bands.

A lamp fit (:mod:`calibration.lamp`) fixes pixel → wavelength; the Raman shift also
needs the laser wavelength, which a diode laser's label gives only to a nanometre
or so (1 nm at 532 nm is 35 cm⁻¹).  A standard with known bands (acetonitrile,
cyclohexane, polystyrene, silicon; :mod:`calibration.standards`) pins it down.

Models (parameters fitted by least squares to the measured band centres):

``laser``
    The excitation wavelength λ_L.  Since shift = 1/λ_L − 1/λ, this moves every
    shift by the same number of cm⁻¹: it *is* the constant shift offset.
``offset``
    A wavelength offset δλ of the detector (the polynomial's ``c0``), laser kept:
    the sample was imaged a few pixels away from where the lamp was (a different
    light path into the spectrometer, a knock, thermal drift).  Its error in cm⁻¹
    grows as 1/λ², so it is not a constant shift.
``laser+offset``
    Both; needs at least three bands (four to check it leaving one out).
``auto``
    Each model that the band count allows is scored by leave-one-band-out error;
    the model with the fewest parameters whose leave-one-out RMS is within 10 %
    (+0.1 cm⁻¹) of the lowest wins.

Every refinement reports the residual of each band and, when there are enough
bands, the leave-one-band-out error: the band left out is predicted by a fit to
the others — the honest estimate of the axis error between and beyond the bands.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np
from scipy.optimize import least_squares

from .axis import (AxisCalibration, ShiftCorrection, air_wavelength_to_shift, shift_to_wavelength,
                   wavelength_to_shift)
from .errors import CalibrationError, InputError, SpectrumError
from .lamp import detect_peaks
from .spectrum import Spectrum
from .standards import RamanStandard, raman_standard

log = logging.getLogger(__name__)

MODELS = ("laser", "offset", "laser+offset")
_NPARAMS = {"laser": 1, "offset": 1, "laser+offset": 2}


# --------------------------------------------------------------------------- band measurement

@dataclass(frozen=True)
class Band:
    """A standard's band found in a spectrum.

    ``position`` is the sub-sample centroid in index units of the spectrum as given;
    ``observed_cm1`` its shift on the spectrum's (starting) axis.
    """

    reference_cm1: float
    position: float
    observed_cm1: float
    prominence: float

    @property
    def error_cm1(self) -> float:
        return self.observed_cm1 - self.reference_cm1


def _standard(standard: str | RamanStandard | Sequence[float]) -> tuple[str, np.ndarray]:
    if isinstance(standard, str):
        s = raman_standard(standard)
        return s.name, s.bands
    if isinstance(standard, RamanStandard):
        return standard.name, standard.bands
    bands = np.sort(np.asarray(standard, dtype=np.float64))
    if bands.ndim != 1 or bands.size < 1 or not np.all(np.isfinite(bands)):
        raise InputError(f"reference bands must be a non-empty list of numbers, got {standard!r}")
    return "custom", bands


def measure_bands(intensities: np.ndarray, shift_axis: np.ndarray, reference_cm1: Sequence[float], *,
                  search_cm1: float = 100.0, window_cm1: float = 15.0, snr: float = 5.0,
                  fraction: float = 0.5) -> list[Band]:
    """Locate a standard's bands: strongest peak near each reference shift, sub-sample centroid.

    Two passes, because a nominal axis can be off by tens of cm⁻¹: (1) the most
    prominent peak within ``search_cm1`` of each band gives a median axis offset;
    (2) each band takes the most prominent peak within ``window_cm1`` of its
    reference plus that offset.  Bands with no peak there are left out (and logged).

    Parameters
    ----------
    intensities : numpy.ndarray
        ``(points,)``.
    shift_axis : numpy.ndarray
        The (approximate) Raman shift of each point, monotonic.
    reference_cm1 : sequence of float
        Tabulated band positions.

    Returns
    -------
    list of Band
        In the order of ``reference_cm1``; possibly fewer.
    """
    y = np.asarray(intensities, dtype=np.float64)
    x = np.asarray(shift_axis, dtype=np.float64)
    ref = np.asarray(reference_cm1, dtype=np.float64)
    if y.ndim != 1 or x.shape != y.shape:
        raise InputError(f"measure_bands: intensities {y.shape} and axis {x.shape} must be equal 1-D arrays")
    d = np.diff(x)
    if not (np.all(d > 0) or np.all(d < 0)):
        raise InputError("measure_bands: the shift axis must be strictly monotonic")
    if search_cm1 <= 0 or window_cm1 <= 0:
        raise InputError("measure_bands: search_cm1 and window_cm1 must be > 0")
    peaks = detect_peaks(y, snr=snr, fraction=fraction, saturation=None)
    if len(peaks) == 0:
        return []
    idx = np.arange(x.size, dtype=np.float64)
    pk_cm1 = np.interp(peaks.position, idx, x)  # index → axis; idx ascends whichever way x runs

    def strongest_near(centre: float, half: float) -> int | None:
        near = np.nonzero(np.abs(pk_cm1 - centre) <= half)[0]
        return None if near.size == 0 else int(near[np.argmax(peaks.prominence[near])])

    first = [strongest_near(r, search_cm1) for r in ref]
    offs = [pk_cm1[k] - r for k, r in zip(first, ref) if k is not None]
    if not offs:
        return []
    shift0 = float(np.median(offs))
    out: list[Band] = []
    for r in ref:
        k = strongest_near(r + shift0, window_cm1)
        if k is None:
            log.info("band %.1f cm-1 not found within %.0f cm-1 of %.1f", r, window_cm1, r + shift0)
            continue
        out.append(Band(float(r), float(peaks.position[k]), float(pk_cm1[k]), float(peaks.prominence[k])))
    return out


# --------------------------------------------------------------------------- the models

def _shift(lam_nm: np.ndarray, laser_nm: float, in_air: bool) -> np.ndarray:
    return air_wavelength_to_shift(lam_nm, laser_nm) if in_air else wavelength_to_shift(lam_nm, laser_nm)


def _params(model: str, p: np.ndarray, laser0: float) -> tuple[float, float]:
    if model == "laser":
        return laser0 + p[0], 0.0
    if model == "offset":
        return laser0, p[0]
    return laser0 + p[0], p[1]


def _fit_model(lam_nm: np.ndarray, ref: np.ndarray, laser0: float, in_air: bool, model: str) -> np.ndarray:
    def resid(p: np.ndarray) -> np.ndarray:
        laser, dl = _params(model, p, laser0)
        return _shift(lam_nm + dl, laser, in_air) - ref

    sol = least_squares(resid, np.zeros(_NPARAMS[model]), x_scale=0.1, xtol=1e-12, ftol=1e-12)
    return sol.x


def _predict(lam_nm: np.ndarray, p: np.ndarray, laser0: float, in_air: bool, model: str) -> np.ndarray:
    laser, dl = _params(model, p, laser0)
    return _shift(lam_nm + dl, laser, in_air)


@dataclass(frozen=True)
class ModelScore:
    """One model fitted to all bands, with its leave-one-band-out errors."""

    model: str
    laser_nm: float
    wavelength_offset_nm: float
    residuals_cm1: np.ndarray
    loo_cm1: np.ndarray | None

    @property
    def rms_cm1(self) -> float:
        return float(np.sqrt(np.mean(self.residuals_cm1 ** 2)))

    @property
    def loo_rms_cm1(self) -> float:
        return float("nan") if self.loo_cm1 is None else float(np.sqrt(np.mean(self.loo_cm1 ** 2)))

    @property
    def loo_max_cm1(self) -> float:
        return float("nan") if self.loo_cm1 is None else float(np.max(np.abs(self.loo_cm1)))


def score_model(lam_nm: np.ndarray, ref: np.ndarray, laser0: float, in_air: bool, model: str) -> ModelScore:
    """Fit ``model`` to all bands and, with ≥ parameters + 2 bands, leave each out in turn."""
    if model not in MODELS:
        raise InputError(f"unknown refinement model {model!r}; known: {', '.join(MODELS)} or 'auto'")
    n, k = ref.size, _NPARAMS[model]
    if n < k:
        raise CalibrationError(f"model {model!r} has {k} parameters; only {n} band(s) measured")
    p = _fit_model(lam_nm, ref, laser0, in_air, model)
    res = _predict(lam_nm, p, laser0, in_air, model) - ref
    loo = None
    if n >= k + 2:  # one left out, and still one more band than parameters
        loo = np.empty(n)
        for i in range(n):
            keep = np.arange(n) != i
            q = _fit_model(lam_nm[keep], ref[keep], laser0, in_air, model)
            loo[i] = _predict(lam_nm[i:i + 1], q, laser0, in_air, model)[0] - ref[i]
    laser, dl = _params(model, p, laser0)
    return ModelScore(model, laser, dl, res, loo)


@dataclass(frozen=True)
class Refinement:
    """Result of refining an axis against a Raman standard.

    Attributes
    ----------
    standard : str
        Name of the standard.
    bands : list of Band
        Measured bands (``observed_cm1`` on the starting axis).
    chosen : ModelScore
        The model applied.
    candidates : list of ModelScore
        Every model tried (``auto``), including the chosen one.
    calibration : AxisCalibration or None
        The refined calibration, for pixel-axis spectra.
    correction : ShiftCorrection or None
        The refined correction, for spectra already on a shift axis.
    """

    standard: str
    bands: list[Band]
    chosen: ModelScore
    candidates: list[ModelScore]
    laser_nm_nominal: float
    calibration: AxisCalibration | None = None
    correction: "ShiftCorrection | None" = None

    @property
    def before_cm1(self) -> np.ndarray:
        return np.array([b.error_cm1 for b in self.bands])

    def report(self) -> dict[str, Any]:
        c = self.chosen

        def model_dict(m: ModelScore) -> dict[str, Any]:
            return {"model": m.model, "laser_nm": round(m.laser_nm, 5), "wavelength_offset_nm": round(m.wavelength_offset_nm, 5),
                    "rms_cm1": round(m.rms_cm1, 3),
                    "loo_cm1": None if m.loo_cm1 is None else [round(float(v), 3) for v in m.loo_cm1],
                    "loo_rms_cm1": None if m.loo_cm1 is None else round(m.loo_rms_cm1, 3)}

        return {
            "method": "raman-standard", "standard": self.standard, "model": c.model,
            "laser_nm_nominal": self.laser_nm_nominal, "laser_nm": round(c.laser_nm, 5),
            "wavelength_offset_nm": round(c.wavelength_offset_nm, 5),
            "bands": [{"reference_cm1": b.reference_cm1, "before_cm1": round(b.observed_cm1, 3),
                       "error_before_cm1": round(b.error_cm1, 3), "residual_cm1": round(float(r), 3),
                       "loo_cm1": None if c.loo_cm1 is None else round(float(c.loo_cm1[i]), 3)}
                      for i, (b, r) in enumerate(zip(self.bands, c.residuals_cm1))],
            "rms_cm1": round(c.rms_cm1, 3), "loo_rms_cm1": None if c.loo_cm1 is None else round(c.loo_rms_cm1, 3),
            "candidates": [model_dict(m) for m in self.candidates],
        }

    def format_table(self) -> str:
        c = self.chosen
        lines = [f"refinement from {self.standard}: model {c.model}, laser {self.laser_nm_nominal:g} → {c.laser_nm:.4f} nm, "
                 f"wavelength offset {c.wavelength_offset_nm:+.4f} nm",
                 f"{'band cm-1':>10} {'before':>9} {'err before':>10} {'residual':>9} {'left out':>9}"]
        for i, (b, r) in enumerate(zip(self.bands, c.residuals_cm1)):
            loo = "" if c.loo_cm1 is None else f"{c.loo_cm1[i]:9.2f}"
            lines.append(f"{b.reference_cm1:10.1f} {b.observed_cm1:9.2f} {b.error_cm1:10.2f} {r:9.2f} {loo}")
        lines.append(f"RMS {c.rms_cm1:.2f} cm-1" + ("" if c.loo_cm1 is None else
                     f"; leave-one-band-out RMS {c.loo_rms_cm1:.2f}, max {c.loo_max_cm1:.2f} cm-1"))
        if len(self.candidates) > 1:
            lines.append("models tried: " + "; ".join(
                f"{m.model}: RMS {m.rms_cm1:.2f}" + ("" if m.loo_cm1 is None else f", LOO RMS {m.loo_rms_cm1:.2f} max {m.loo_max_cm1:.2f}")
                for m in self.candidates))
        return "\n".join(lines)


def _choose(lam: np.ndarray, ref: np.ndarray, laser0: float, in_air: bool, model: str) -> tuple[ModelScore, list[ModelScore]]:
    if model != "auto":
        s = score_model(lam, ref, laser0, in_air, model)
        return s, [s]
    cands = [score_model(lam, ref, laser0, in_air, m) for m in MODELS if ref.size >= _NPARAMS[m] + 2]
    if not cands:  # too few bands to check any model: the one-parameter laser fit
        s = score_model(lam, ref, laser0, in_air, "laser")
        return s, [s]
    best = min(m.loo_rms_cm1 for m in cands)
    # Parsimony: the fewest parameters whose leave-one-out RMS is within 10 % + 0.1 cm⁻¹ of the best.
    ok = [m for m in cands if m.loo_rms_cm1 <= 1.1 * best + 0.1]
    return min(ok, key=lambda m: (_NPARAMS[m.model], m.loo_rms_cm1)), cands


def refine_calibration(calibration: AxisCalibration, intensities: np.ndarray,
                       standard: str | RamanStandard | Sequence[float] = "acetonitrile", *, model: str = "laser",
                       min_bands: int = 1, max_rms_cm1: float | None = 5.0, **measure_kw: Any) -> Refinement:
    """Refine a pixel-axis calibration from a standard's spectrum measured on the same detector.

    Parameters
    ----------
    calibration : AxisCalibration
        Starting calibration (lamp fit, or the instrument's stored polynomial and nominal laser).
    intensities : numpy.ndarray
        The standard's spectrum, ``(calibration.pixels,)``.
    standard : str, RamanStandard or sequence of float
        Standard name (:data:`calibration.standards.STANDARDS`) or band positions.
    model : str
        ``"laser"``, ``"offset"``, ``"laser+offset"`` or ``"auto"`` (see module doc).
    min_bands : int
        Refuse with fewer bands found.
    max_rms_cm1 : float or None
        Refuse when the fitted bands' RMS residual exceeds this (wrong band picked,
        wrong standard, a model that cannot describe the axis error).
    measure_kw
        Passed to :func:`measure_bands` (``search_cm1``, ``window_cm1``, ``snr``).

    Returns
    -------
    Refinement
        ``.calibration`` is the refined :class:`AxisCalibration`: the fitted laser
        wavelength and the polynomial's ``c0`` moved by the wavelength offset, with
        the refinement's report in its provenance.
    """
    y = np.asarray(intensities, dtype=np.float64)
    if y.shape != (calibration.pixels,):
        raise InputError(f"refine_calibration: {y.shape} intensities for a {calibration.pixels}-pixel calibration")
    name, ref_all = _standard(standard)
    bands = measure_bands(y, calibration.raman_shift(), ref_all, **measure_kw)
    if len(bands) < max(1, min_bands):
        raise CalibrationError(f"refinement: found {len(bands)} of the {ref_all.size} {name} bands; need {max(1, min_bands)}")
    ref = np.array([b.reference_cm1 for b in bands])
    lam = calibration.wavelengths(np.array([b.position for b in bands]))
    chosen, cands = _choose(lam, ref, calibration.laser_nm, calibration.wavelengths_in_air, model)
    if max_rms_cm1 is not None and chosen.rms_cm1 > max_rms_cm1:
        raise CalibrationError(f"refinement refused: {name} bands fit with RMS {chosen.rms_cm1:.2f} cm-1 > {max_rms_cm1:g} "
                               f"(model {chosen.model}); residuals " + ", ".join(f"{r:+.1f}" for r in chosen.residuals_cm1))
    poly = list(calibration.wavelength_poly)
    poly[0] += chosen.wavelength_offset_nm
    out = Refinement(name, bands, chosen, cands, calibration.laser_nm)
    prov = dict(calibration.provenance)
    prov["refinement"] = out.report()
    refined = replace(calibration, wavelength_poly=tuple(poly), laser_nm=chosen.laser_nm, provenance=prov)
    return replace(out, calibration=refined)


# --------------------------------------------------------------------------- shift-axis spectra

def refine_shift_axis(spectrum: Spectrum, laser_nm: float,
                      standard: str | RamanStandard | Sequence[float] = "acetonitrile", *, model: str = "laser",
                      min_bands: int = 1, max_rms_cm1: float | None = 5.0, **measure_kw: Any) -> Refinement:
    """Refine a Raman-shift-axis spectrum of a standard (nominal ``laser_nm``) → ``Refinement.correction``."""
    s = spectrum.validated(unit="raman_shift")
    if not (100.0 < laser_nm < 2000.0):
        raise InputError(f"refine_shift_axis: laser wavelength {laser_nm!r} nm is outside 100–2000 nm")
    name, ref_all = _standard(standard)
    bands = measure_bands(s.intensities, s.axis, ref_all, **measure_kw)
    if len(bands) < max(1, min_bands):
        raise CalibrationError(f"{s.where}: found {len(bands)} of the {ref_all.size} {name} bands; need {max(1, min_bands)}")
    ref = np.array([b.reference_cm1 for b in bands])
    lam = shift_to_wavelength(np.array([b.observed_cm1 for b in bands]), laser_nm)
    chosen, cands = _choose(lam, ref, laser_nm, False, model)
    if max_rms_cm1 is not None and chosen.rms_cm1 > max_rms_cm1:
        raise CalibrationError(f"{s.where}: {name} bands fit with RMS {chosen.rms_cm1:.2f} cm-1 > {max_rms_cm1:g} (model {chosen.model})")
    out = Refinement(name, bands, chosen, cands, laser_nm)
    corr = ShiftCorrection(laser_nm, chosen.laser_nm, chosen.wavelength_offset_nm, provenance=out.report(),
                           instrument=str(s.meta.get("instrument") or s.meta.get("model") or ""))
    return replace(out, correction=corr)


def spectrum_shift_axis(spectrum: Spectrum, calibration: AxisCalibration | None) -> Spectrum:
    """A spectrum on its Raman-shift axis: through ``calibration.apply`` when it needs one."""
    if spectrum.unit == "raman_shift":
        return spectrum.validated().ascending()
    if calibration is None:
        raise SpectrumError(f"{spectrum.where}: spectrum is on a {spectrum.unit} axis; give a calibration")
    return calibration.apply(spectrum.validated())


__all__ = ["MODELS", "Band", "measure_bands", "ModelScore", "score_model", "Refinement", "refine_calibration",
           "ShiftCorrection", "refine_shift_axis", "spectrum_shift_axis"]
