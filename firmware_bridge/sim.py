"""The built-in simulated spectrometer, ``sim://``.

It behaves like a small 532 nm Raman instrument with a 1024-pixel detector: spectra
come on the *pixel* axis, with the axis calibration the instrument reports
(``firmware_bridge/data/sim_calibration.json``), while the bands land where the
*true* axis puts them — shifted from the reported one by a small, slowly wandering
drift.  Each spectrum is one sample of the mix.  Its Raman signal is a real spectrum:
one baseline-corrected RRUFF spectrum per mineral (:mod:`firmware_bridge.reference`,
Lafuente et al. 2015), averaged over each pixel of the true axis; ``sample=bands``
draws the older idealised Lorentzian bands at literature positions
(:mod:`firmware_bridge.minerals`) instead.  The instrument then adds a broad
fluorescence background, shot noise, read noise, a dark offset with a fixed pixel
pattern, 16-bit saturation and the odd cosmic-ray spike.

With ``unknown=f`` a fraction ``f`` of the spectra come from a sample that is none of
the simulated minerals (:func:`firmware_bridge.reference.unknown_labels`: RRUFF minerals
outside the shipped model's classes, acetonitrile, Chlamydomonas cells); their truth
label is ``unknown:<name>``.

URL options (all optional)::

    sim://?minerals=Calcite,Quartz&rate=5&seed=1&count=100

=============  ===========================================================  ===============
option         meaning                                                      default
=============  ===========================================================  ===============
minerals       comma list of minerals to draw from (see available_minerals)  8 common ones
rate           spectra per second; 0 = as fast as possible                    2
seed           integer seed; same seed and options, same spectra              random
count          stop (StopIteration) after this many spectra                   unlimited
pixels         detector pixels (same spectral range, finer or coarser)        calibration's
laser          excitation in nm (grating re-centred on the same shifts)       calibration's
drift          largest axis drift in cm⁻¹ (reported minus true band position) 2
spike          probability of a cosmic-ray spike per spectrum                 0.05
fluorescence   largest background height relative to the strongest band       0.5
signal         counts of the strongest band at 100 ms (varies ×0.4–1.6)       6000
integration    integration time in ms (signal scales with it)                 100
read_noise     read noise in counts r.m.s.                                    6
dark           dark offset in counts                                          800
noise          scale of shot and read noise; 0 = noise-free                   1
calibration    PATH of an axis calibration JSON replacing the shipped one     shipped
unknown        fraction of spectra from a sample none of the minerals (0–1)   0
sample         ``reference`` (real RRUFF spectra) or ``bands`` (idealised)    reference
=============  ===========================================================  ===============

Every bad option raises :class:`~calibration.errors.SourceConfigError` (a :class:`SourceError`,
exit status 2) naming the option and its value.  With
``rate`` > 0 the first spectrum comes one period after :meth:`SimSource.open` (it is
being integrated), then one per period.  ``Acquisition.meta`` carries ``mineral`` (the
truth label), ``reference`` (the file behind the signal, with ``sample=reference``),
``integration_ms``, ``detector_temp_c``, ``axis_offset_cm1`` (where bands appear on the
reported axis minus their true position), ``cosmic_ray_pixels``, ``signal_counts``,
``fluorescence_counts``, ``laser_nm`` and ``seed``.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import numpy as np

from calibration.axis import AxisCalibration, shift_to_wavelength
from calibration.errors import CalibrationError, InputError, SourceConfigError, SourceError
from calibration.spectrum import Spectrum

from .minerals import Mineral, available_minerals, default_minerals, get_mineral
from .reference import Reference, load_references, unknown_labels
from .source import Acquisition, Source, query_params, register_scheme

log = logging.getLogger(__name__)

__all__ = [
    "SimConfig", "SimSource", "available_minerals", "instrument_calibration", "parse_sim_url",
    "synthesize_raman", "SIM_CALIBRATION_PATH",
]

SIM_CALIBRATION_PATH = Path(__file__).with_name("data") / "sim_calibration.json"

#: Full scale of the 16-bit ADC.
ADC_MAX = 65535
#: Integration time the ``signal`` option refers to.
REFERENCE_INTEGRATION_MS = 100.0
#: Detector (TEC) set point reported in the metadata.
DETECTOR_SETPOINT_C = -10.0
#: Relative spread of band heights between specimens/orientations (log-normal σ).
HEIGHT_JITTER = 0.1
#: Relative spread of band widths between specimens (uniform ±).
WIDTH_JITTER = 0.1
#: Drift is a slow AR(1) walk, x ← ρ·x + N(0, (step·drift)²), with a stationary σ of
#: 0.4·drift (so ±drift is rarely reached and then held: it is clipped there).
DRIFT_RHO = 0.98
DRIFT_STEP = 0.4 * math.sqrt(1.0 - DRIFT_RHO**2)
#: First spawn-key element of the per-spectrum random streams (0-3 are the source's own streams).
SPECTRUM_STREAM = 4


@dataclass(frozen=True)
class SimConfig:
    """Parsed ``sim://`` options (see the module docstring for their meaning)."""

    minerals: tuple[str, ...]
    rate: float = 2.0
    seed: int | None = None
    count: int | None = None
    pixels: int | None = None
    laser: float | None = None
    drift: float = 2.0
    spike: float = 0.05
    fluorescence: float = 0.5
    signal: float = 6000.0
    integration: float = 100.0
    read_noise: float = 6.0
    dark: float = 800.0
    noise: float = 1.0
    calibration: str | None = None
    unknown: float = 0.0
    sample: str = "reference"


# -- URL options ---------------------------------------------------------------
def _float_opt(lo: float, hi: float, what: str, lo_open: bool = False) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        v = float(raw)
        if not math.isfinite(v) or v > hi or v < lo or (lo_open and v == lo):
            raise ValueError
        return v
    parse.expected = f"a number {'>' if lo_open else '≥'} {lo:g} and ≤ {hi:g} ({what})"  # type: ignore[attr-defined]
    return parse


def _int_opt(lo: int, hi: int | None, what: str) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        v = int(raw)
        if v < lo or (hi is not None and v > hi):
            raise ValueError
        return v
    span = f"from {lo} to {hi}" if hi is not None else f"≥ {lo}"
    parse.expected = f"an integer {span} ({what})"  # type: ignore[attr-defined]
    return parse


def _minerals_opt(raw: str) -> tuple[str, ...]:
    names = [n.strip() for n in raw.split(",")]
    if not names or any(not n for n in names):
        raise ValueError
    return tuple(get_mineral(n).name for n in names)


_minerals_opt.expected = "a comma-separated list of known minerals"  # type: ignore[attr-defined]


def _path_opt(raw: str) -> str:
    if not raw:
        raise ValueError
    return raw


_path_opt.expected = "the path of an axis calibration JSON file"  # type: ignore[attr-defined]

SAMPLES = ("reference", "bands")


def _sample_opt(raw: str) -> str:
    if raw not in SAMPLES:
        raise ValueError
    return raw


_sample_opt.expected = "one of " + ", ".join(SAMPLES)  # type: ignore[attr-defined]

_OPTIONS: dict[str, Callable[[str], Any]] = {
    "minerals": _minerals_opt,
    "rate": _float_opt(0.0, 1e4, "spectra per second, 0 = as fast as possible"),
    "seed": _int_opt(0, None, "random seed"),
    "count": _int_opt(1, None, "number of spectra before the source is exhausted"),
    "pixels": _int_opt(64, 65536, "detector pixels"),
    "laser": _float_opt(200.0, 1100.0, "excitation wavelength in nm"),
    "drift": _float_opt(0.0, 100.0, "largest axis drift in cm-1"),
    "spike": _float_opt(0.0, 1.0, "cosmic-ray probability per spectrum"),
    "fluorescence": _float_opt(0.0, 100.0, "background height relative to the strongest band"),
    "signal": _float_opt(0.0, 1e7, "counts of the strongest band at 100 ms", lo_open=True),
    "integration": _float_opt(0.0, 6e5, "integration time in ms", lo_open=True),
    "read_noise": _float_opt(0.0, 1e4, "read noise in counts r.m.s."),
    "dark": _float_opt(0.0, ADC_MAX, "dark offset in counts"),
    "noise": _float_opt(0.0, 100.0, "noise scale, 0 = noise-free"),
    "calibration": _path_opt,
    "unknown": _float_opt(0.0, 1.0, "fraction of spectra from a sample none of the minerals"),
    "sample": _sample_opt,
}


def parse_sim_url(url: str) -> SimConfig:
    """Parse and validate a ``sim://`` URL.

    Raises
    ------
    SourceConfigError
        A :class:`SourceError` with exit status 2, naming the URL, the bad option and
        its value, and what was expected.
    """
    parts = urlsplit(url)
    if parts.scheme != "sim":
        raise SourceConfigError(f"{url!r} is not a sim:// URL")
    if parts.netloc or parts.path not in ("", "/"):
        raise SourceConfigError(f"{url}: sim:// takes only ?options, not a host or path "
                                f"({parts.netloc + parts.path!r}); e.g. sim://?minerals=Calcite&rate=5")
    values: dict[str, Any] = {}
    for name, raw in query_params(url).items():
        parse = _OPTIONS.get(name)
        if parse is None:
            raise SourceConfigError(f"{url}: unknown option {name!r}; known: {', '.join(sorted(_OPTIONS))}")
        try:
            values[name] = parse(raw.strip())
        except InputError as e:  # unknown mineral: the message lists the known ones
            raise SourceConfigError(f"{url}: option minerals={raw!r}: {e}") from None
        except (TypeError, ValueError, OverflowError):
            raise SourceConfigError(
                f"{url}: option {name}={raw!r} is not valid; expected {parse.expected}"  # type: ignore[attr-defined]
            ) from None
    values.setdefault("minerals", default_minerals())
    if values.get("unknown") and values.get("sample") == "bands":
        raise SourceConfigError(f"{url}: option unknown={values['unknown']:g} needs sample=reference "
                                "(the unknown samples are real spectra, not band tables)")
    return SimConfig(**values)


# -- instrument axis -------------------------------------------------------------
def instrument_calibration(base: AxisCalibration, pixels: int | None = None,
                           laser_nm: float | None = None) -> AxisCalibration:
    """The base calibration re-mapped onto ``pixels`` pixels and/or a ``laser_nm`` excitation.

    Fewer or more pixels cover the same wavelengths (the polynomial is rescaled in
    ``p``); another laser gets a grating that covers the same Raman shifts (the
    polynomial is refitted to those shifts' wavelengths at the new laser).
    """
    pixels = base.pixels if pixels is None else int(pixels)
    laser_nm = base.laser_nm if laser_nm is None else float(laser_nm)
    if pixels == base.pixels and laser_nm == base.laser_nm:
        return base
    s = (base.pixels - 1) / (pixels - 1)
    poly = tuple(c * s**k for k, c in enumerate(base.wavelength_poly))
    if laser_nm != base.laser_nm:
        p = np.arange(pixels, dtype=np.float64)
        shifts = AxisCalibration(poly, base.laser_nm, pixels).raman_shift(p)
        lam = shift_to_wavelength(shifts, laser_nm)
        deg = max(3, len(poly) - 1)
        poly = tuple(np.polynomial.Polynomial.fit(p, lam, deg).convert().coef)
    prov = dict(base.provenance, derived_from=base.id, remapped={"pixels": pixels, "laser_nm": laser_nm})
    return AxisCalibration(poly, laser_nm, pixels, instrument=f"{base.instrument} [{pixels} px, {laser_nm:g} nm]",
                           provenance=prov)


# -- physics -----------------------------------------------------------------------
def _bands(mineral: Mineral, edges: np.ndarray, heights: np.ndarray, fwhm: np.ndarray) -> np.ndarray:
    """Lorentzian bands averaged over each bin between ``edges`` (Raman shift, cm⁻¹).

    Bin averages (not point samples) keep a 3 cm⁻¹ wide diamond line's height honest on
    a 2 cm⁻¹ pixel: the integral of ``h / (1 + ((x - x0)/γ)²)`` is ``h γ atan((x - x0)/γ)``.
    """
    g = 0.5 * fwhm[:, None]
    a = np.arctan((edges[None, :] - mineral.positions[:, None]) / g)
    return (heights[:, None] * g * np.diff(a, axis=1)).sum(axis=0) / np.diff(edges)


def _fluorescence_shape(n: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth random background over ``n`` points, maximum 1: a broad hump plus a slope."""
    x = np.linspace(0.0, 1.0, n)
    centre, width, slope = rng.uniform(-0.3, 1.3), rng.uniform(0.35, 1.2), rng.uniform(-0.3, 0.5)
    y = np.exp(-0.5 * ((x - centre) / width) ** 2) + slope * x
    y -= min(0.0, float(y.min()))
    return y / y.max()


def _jittered(mineral: Mineral, rng: np.random.Generator, height_jitter: float, width_jitter: float):
    """Specimen-to-specimen variation; the strongest band stays the strongest."""
    h = mineral.heights * np.exp(rng.normal(0.0, height_jitter, mineral.heights.size))
    h = np.where(mineral.heights == 1.0, 1.0, np.minimum(h, 0.95))
    w = mineral.fwhm * rng.uniform(1.0 - width_jitter, 1.0 + width_jitter, mineral.fwhm.size)
    return h, w


def _edges(axis: np.ndarray) -> np.ndarray:
    mid = 0.5 * (axis[1:] + axis[:-1])
    return np.concatenate(([axis[0] - (mid[0] - axis[0])], mid, [axis[-1] + (axis[-1] - mid[-1])]))


def synthesize_raman(
    mineral: str,
    axis_cm1: np.ndarray,
    rng: np.random.Generator | None = None,
    *,
    shift_cm1: float = 0.0,
    fluorescence: float = 0.0,
    noise: float = 0.0,
    jitter: bool = False,
) -> np.ndarray:
    """One mineral's Raman spectrum on a given Raman-shift axis.

    Noise-free and deterministic with the defaults (``rng`` is then not used).

    Parameters
    ----------
    mineral : str
        A name from :func:`available_minerals` (case-insensitive).
    axis_cm1 : numpy.ndarray
        Strictly monotonic Raman-shift axis in cm⁻¹ (e.g. the model grid 200–1591).
    rng : numpy.random.Generator, optional
        Source of randomness for the options below; a fresh one when omitted.
    shift_cm1 : float
        Move every band by this much (an axis error).
    fluorescence : float
        Height of a random smooth background, relative to the strongest band.
    noise : float
        Gaussian noise σ relative to the strongest band.
    jitter : bool
        Vary band heights and widths like different specimens do.

    Returns
    -------
    numpy.ndarray
        float64 intensities, the strongest band's peak ≈ 1 (bin-averaged) plus
        background and noise; the strongest band may lie outside ``axis_cm1``.

    Raises
    ------
    InputError
        Unknown mineral or unusable axis.
    """
    m = get_mineral(mineral)
    axis = np.asarray(axis_cm1, dtype=np.float64).reshape(-1)
    d = np.diff(axis)
    if axis.size < 2 or not np.all(np.isfinite(axis)) or not (np.all(d > 0) or np.all(d < 0)):
        raise InputError(f"synthesize_raman: axis must be finite, strictly monotonic and ≥ 2 points (got {axis.size})")
    if (fluorescence or noise or jitter) and rng is None:
        rng = np.random.default_rng()
    h, w = _jittered(m, rng, HEIGHT_JITTER, WIDTH_JITTER) if jitter else (m.heights, m.fwhm)
    y = _bands(m, _edges(axis) - shift_cm1, h, w)
    if fluorescence:
        y += fluorescence * _fluorescence_shape(axis.size, rng)
    if noise:
        y += rng.normal(0.0, noise, axis.size)
    return y


# -- the source ----------------------------------------------------------------------
class SimSource(Source):
    """Simulated pixel-axis Raman spectrometer; see the module docstring for the URL options.

    Reopening restarts the same sequence (same seed).  :attr:`seed` holds the seed in
    use, also when it was drawn at random, so that a run can be repeated.
    """

    scheme = "sim"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.config = parse_sim_url(url)
        cfg = self.config
        path = cfg.calibration or SIM_CALIBRATION_PATH
        try:
            base = AxisCalibration.load(path)
            #: The axis calibration the instrument reports with every spectrum.
            self.calibration = instrument_calibration(base, cfg.pixels, cfg.laser)
        except CalibrationError as e:
            what = f"option calibration={cfg.calibration!r}" if cfg.calibration else "shipped calibration"
            raise SourceConfigError(f"{url}: {what}: {e}") from None
        self.seed: int = int(cfg.seed if cfg.seed is not None else np.random.SeedSequence().entropy % 2**63)
        self._minerals = [get_mineral(n) for n in cfg.minerals]
        self._references: list[Reference] = []
        self._unknowns: list[Reference] = []
        if cfg.sample == "reference":
            try:
                refs = load_references()
                self._references = [refs[m.name] for m in self._minerals]
                self._unknowns = [refs[k] for k in unknown_labels()]
            except (InputError, KeyError) as e:
                raise SourceConfigError(f"{url}: shipped reference spectra: {e}") from None
            for r in self._references:
                if r.missing_bands_cm1:
                    log.info("sim: the real %s spectrum (%s) was not measured at its band(s) %s cm-1: "
                             "the simulated sample lacks them", r.label, r.source,
                             ", ".join(f"{b:g}" for b in r.missing_bands_cm1))
        self._period = 1.0 / cfg.rate if cfg.rate > 0 else 0.0
        self._open = False

    def open(self) -> None:
        cfg, n = self.config, self.calibration.pixels
        main, spikes, fixed, unknown = np.random.SeedSequence(self.seed).spawn(4)
        self._rng = np.random.default_rng(main)
        # Spikes and unknown samples draw from their own streams, so that spike=p or unknown=f
        # leave every other spectrum as it is without them.
        self._spike_rng = np.random.default_rng(spikes)
        self._unknown_rng = np.random.default_rng(unknown)
        self._dark = cfg.dark + np.random.default_rng(fixed).normal(0.0, 2.0, n)  # fixed-pattern offset
        self._edge_shift = self.calibration.raman_shift(np.arange(n + 1, dtype=np.float64) - 0.5)
        self._offset = float(np.clip(self._rng.normal(0.0, 0.4 * cfg.drift), -cfg.drift, cfg.drift))
        self._seq = 0
        self._next_due = time.monotonic() + self._period
        self._open = True
        log.info("sim: opened %s (seed %d, calibration %s, minerals %s)",
                 self.url, self.seed, self.calibration.id, ",".join(cfg.minerals))

    def close(self) -> None:
        self._open = False

    def read(self, timeout: float | None = None) -> Acquisition | None:
        if not self._open:
            raise SourceError(f"{self.url}: read() on a source that is not open")
        if self.config.count is not None and self._seq >= self.config.count:
            raise StopIteration
        if self._period:
            wait = self._next_due - time.monotonic()
            if wait > 0:
                if timeout is not None and timeout < wait:
                    time.sleep(max(0.0, timeout))
                    return None
                time.sleep(wait)
            # Keep a steady schedule, but after a stall restart it rather than burst to catch up.
            now = time.monotonic()
            late = now - self._next_due
            self._next_due = self._next_due + self._period if late < self._period else now + self._period
        acq = self._acquire()
        self._seq += 1
        return acq

    def _acquire(self) -> Acquisition:
        cfg, n = self.config, self.calibration.pixels
        # One random stream per spectrum: shot noise consumes a varying number of draws, so a
        # shared stream would let one unknown sample change every spectrum after it.
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(SPECTRUM_STREAM, self._seq)))
        i = int(rng.integers(len(self._minerals)))
        m, ref = self._minerals[i], (self._references[i] if self._references else None)
        u, which = self._unknown_rng.random(2)
        if u < cfg.unknown:
            ref = self._unknowns[int(which * len(self._unknowns))]
        truth = ref.label if ref is not None else m.name
        if cfg.drift:
            step = rng.normal(0.0, DRIFT_STEP * cfg.drift)
            self._offset = float(np.clip(DRIFT_RHO * self._offset + step, -cfg.drift, cfg.drift))
        level = cfg.signal * cfg.integration / REFERENCE_INTEGRATION_MS * rng.uniform(0.4, 1.6)
        # True shift of each pixel edge = reported − offset, so bands appear at position + offset.
        if ref is not None:
            electrons = level * ref.binned(self._edge_shift - self._offset)
        else:
            heights, widths = _jittered(m, rng, HEIGHT_JITTER, WIDTH_JITTER)
            electrons = level * _bands(m, self._edge_shift - self._offset, heights, widths)
        background = cfg.fluorescence * rng.uniform(0.1, 1.0) * level
        electrons += background * _fluorescence_shape(n, rng)
        # Draw noise even when scaled to 0 so that the random stream does not depend on it.
        shot = rng.poisson(electrons) - electrons
        read = rng.normal(0.0, cfg.read_noise, n)
        counts = self._dark + electrons + cfg.noise * (shot + read)
        temperature = DETECTOR_SETPOINT_C + float(rng.normal(0.0, 0.05))

        u, where, wide, amp, second = self._spike_rng.random(5)
        spikes: list[int] = []
        if u < cfg.spike:
            p = int(where * n)
            counts[p] += 2000.0 + 28000.0 * amp
            spikes.append(p)
            if wide < 0.4 and p + 1 < n:  # 1–2 pixels: a cosmic ray crossing a pixel boundary
                counts[p + 1] += (2000.0 + 28000.0 * amp) * (0.3 + 0.7 * second)
                spikes.append(p + 1)
        counts = np.clip(np.rint(counts), 0, ADC_MAX)

        seq = self._seq
        spectrum_meta = {"source": self.url, "where": f"{self.url} #{seq}",
                         "instrument": self.calibration.instrument}
        spectrum = Spectrum(counts, np.arange(n, dtype=np.float64), unit="pixel", meta=spectrum_meta)
        meta = {
            "mineral": truth,
            "integration_ms": cfg.integration,
            "detector_temp_c": round(temperature, 3),
            "axis_offset_cm1": self._offset,
            "cosmic_ray_pixels": spikes,
            "signal_counts": float(level),
            "fluorescence_counts": float(background),
            "laser_nm": self.calibration.laser_nm,
            "seed": self.seed,
        }
        if ref is not None:
            meta["reference"] = ref.source
        return Acquisition(seq=seq, spectrum=spectrum, acquired_at=time.time(), source=self.url,
                           calibration=self.calibration, truth=truth, meta=meta)


register_scheme("sim", SimSource)
