"""Instrument axis calibration: detector pixel → wavelength → Raman shift.

An :class:`AxisCalibration` belongs to an *instrument* (not to a model): it turns a
spectrum on the detector's pixel axis into one on a Raman-shift axis, which the
model's preprocessing spec then resamples onto its grid.  It is stored as a small
versioned JSON file whose id is logged with every result.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import CalibrationError, ConfigError, SpectrumError
from .spectrum import Spectrum

CALIBRATION_FORMAT = "raman-edge.calibration"
#: Newest version this build writes.  Version 1 files (no ``wavelengths_in_air``)
#: are still read, and a calibration that does not use a version-2 field is
#: written as version 1 so that older daemons keep reading it.
CALIBRATION_VERSION = 2
READABLE_VERSIONS = (1, 2)
#: A shift-axis correction (:class:`ShiftCorrection`) is written as version 3, a
#: version older daemons refuse by name rather than misread as a pixel calibration.
SHIFT_CORRECTION_VERSION = 3

#: Largest difference (nm) between the laser a calibration was made for and the laser
#: a spectrum was measured with that still counts as the same laser: it allows a
#: nominal 785 against a measured 785.04, and refuses 780 against 785 or 514 against 532.
LASER_TOLERANCE_NM = 3.0
#: Raman shifts (cm⁻¹) a Stokes Raman axis plausibly covers.  A lamp fit whose axis lies
#: mostly outside this window was made with the wrong laser wavelength.
PLAUSIBLE_SHIFT_CM1 = (-200.0, 4500.0)


class CalibrationFileError(CalibrationError, ConfigError):
    """A calibration file that cannot be loaded (missing, not JSON, not a calibration): exit status 2."""


class CalibrationMismatchError(CalibrationError, ConfigError):
    """A calibration that does not fit the data it is applied to (wrong axis kind or laser).

    A :class:`CalibrationError`, so the pipeline turns it into an unreadable-priority
    row for one spectrum, and a :class:`ConfigError` (exit status 2), because the
    remedy is a different calibration file, not a restart.
    """


def wavelength_to_shift(wavelength_nm: np.ndarray, laser_nm: float) -> np.ndarray:
    """Raman shift in cm⁻¹ of light at ``wavelength_nm`` excited at ``laser_nm``."""
    wavelength_nm = np.asarray(wavelength_nm, dtype=np.float64)
    if laser_nm <= 0 or not np.isfinite(laser_nm):
        raise CalibrationError(f"laser wavelength must be a positive number of nm, got {laser_nm!r}")
    if np.any(wavelength_nm <= 0):
        raise CalibrationError("wavelengths must be positive")
    return 1e7 / laser_nm - 1e7 / wavelength_nm


def shift_to_wavelength(shift_cm1: np.ndarray, laser_nm: float) -> np.ndarray:
    """Inverse of :func:`wavelength_to_shift`."""
    return 1e7 / (1e7 / laser_nm - np.asarray(shift_cm1, dtype=np.float64))


def air_wavelength_to_shift(wavelength_nm: np.ndarray, laser_nm: float) -> np.ndarray:
    """Raman shift in cm⁻¹ from wavelengths *in standard air* (laser wavelength in air too).

    A Raman shift is a difference of vacuum wavenumbers ``1/(n·λ_air)``; lamp lines
    (NIST) and so lamp-fitted polynomials are in air.  Leaving ``n`` out makes every
    shift 0.03 % too large.  See :func:`calibration.standards.air_refractive_index`.
    """
    from .standards import air_refractive_index

    wavelength_nm = np.asarray(wavelength_nm, dtype=np.float64)
    if laser_nm <= 0 or not np.isfinite(laser_nm):
        raise CalibrationError(f"laser wavelength must be a positive number of nm, got {laser_nm!r}")
    if np.any(wavelength_nm <= 0):
        raise CalibrationError("wavelengths must be positive")
    return (1e7 / (laser_nm * air_refractive_index(laser_nm))
            - 1e7 / (wavelength_nm * air_refractive_index(wavelength_nm)))


@dataclass(frozen=True)
class AxisCalibration:
    """Pixel → wavelength polynomial plus excitation wavelength.

    Parameters
    ----------
    wavelength_poly : tuple of float
        Coefficients ``c0, c1, c2, ...`` of ``λ(p) = c0 + c1·p + c2·p² + ...`` in nm,
        ``p`` the 0-based pixel index (the convention of Ocean Insight and Wasatch).
    laser_nm : float
        Excitation wavelength in nm.
    pixels : int
        Number of detector pixels the polynomial applies to.
    instrument : str
        Free text naming the instrument (serial number, model).
    provenance : dict
        How it was obtained (lamp file, per-line residuals, refinement, ...).
    wavelengths_in_air : bool
        When true, the polynomial and ``laser_nm`` are wavelengths in standard air
        (a lamp fit against NIST air wavelengths) and shifts are taken between vacuum
        wavenumbers (:func:`air_wavelength_to_shift`).  False (the default, and every
        version-1 file) takes ``1e7/laser_nm - 1e7/λ`` as instrument software does.
    """

    wavelength_poly: tuple[float, ...]
    laser_nm: float
    pixels: int
    instrument: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    wavelengths_in_air: bool = False
    #: The file it was loaded from (for messages; not part of its identity).
    origin: str | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        poly = tuple(float(c) for c in self.wavelength_poly)
        object.__setattr__(self, "wavelength_poly", poly)
        if len(poly) < 2 or not all(np.isfinite(poly)):
            raise CalibrationError(f"wavelength polynomial needs ≥ 2 finite coefficients, got {poly!r}")
        if not (100.0 < float(self.laser_nm) < 2000.0):
            raise CalibrationError(f"laser wavelength {self.laser_nm!r} nm is outside 100–2000 nm")
        if int(self.pixels) < 16:
            raise CalibrationError(f"pixel count {self.pixels!r} is too small")
        lam = self.wavelengths()
        d = np.diff(lam)
        if not (np.all(d > 0) or np.all(d < 0)):
            raise CalibrationError("wavelength polynomial is not monotonic over the detector")
        if np.any(lam <= self.laser_nm * 0.5):
            raise CalibrationError("wavelength polynomial gives implausible wavelengths")

    # -- axis ---------------------------------------------------------------
    def wavelengths(self, pixels: np.ndarray | None = None) -> np.ndarray:
        p = np.arange(self.pixels, dtype=np.float64) if pixels is None else np.asarray(pixels, np.float64)
        return np.polynomial.polynomial.polyval(p, np.asarray(self.wavelength_poly))

    def raman_shift(self, pixels: np.ndarray | None = None) -> np.ndarray:
        return self.shift_of_wavelength(self.wavelengths(pixels))

    def shift_of_wavelength(self, wavelength_nm: np.ndarray) -> np.ndarray:
        """Raman shift (cm⁻¹) of light at ``wavelength_nm`` under this calibration's laser and medium."""
        if self.wavelengths_in_air:
            return air_wavelength_to_shift(wavelength_nm, self.laser_nm)
        return wavelength_to_shift(wavelength_nm, self.laser_nm)

    def apply(self, spectrum: Spectrum) -> Spectrum:
        """Put a pixel-axis spectrum on the Raman-shift axis; pass Raman-shift ones through."""
        if spectrum.unit == "raman_shift":
            return spectrum
        if spectrum.unit == "wavelength_nm":
            axis = self.shift_of_wavelength(spectrum.axis)
        elif spectrum.unit == "pixel":
            if spectrum.axis.size != self.pixels:
                raise SpectrumError(
                    f"{spectrum.where}: {spectrum.axis.size} pixels, but calibration "
                    f"{self.id} is for a {self.pixels}-pixel detector"
                )
            axis = self.raman_shift(spectrum.axis)
        else:  # pragma: no cover - Spectrum validates units
            raise SpectrumError(f"{spectrum.where}: cannot calibrate a {spectrum.unit} axis")
        meta = dict(spectrum.meta, calibration_id=self.id)
        return replace(spectrum, axis=axis, unit="raman_shift", meta=meta).ascending()

    # -- identity and files ---------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = {
            "format": CALIBRATION_FORMAT,
            "version": 2 if self.wavelengths_in_air else 1,
            "instrument": self.instrument,
            "pixels": int(self.pixels),
            "laser_nm": float(self.laser_nm),
            "wavelength_poly": list(self.wavelength_poly),
            "provenance": self.provenance,
        }
        if self.wavelengths_in_air:
            d["wavelengths_in_air"] = True
        return d

    @property
    def id(self) -> str:
        """Content hash of the physics (polynomial, laser, pixels, medium): same axis, same id."""
        core: dict[str, Any] = {"pixels": int(self.pixels), "laser_nm": float(self.laser_nm),
                                "wavelength_poly": [float(c) for c in self.wavelength_poly]}
        if self.wavelengths_in_air:  # absent for version-1 physics, so their ids are unchanged
            core["wavelengths_in_air"] = True
        return "cal-" + hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "calibration") -> "AxisCalibration":
        _check_format(d, where)
        version = d.get("version")
        if d.get("kind") == ShiftCorrection.KIND:
            raise CalibrationError(f"{where}: is a shift-axis correction, not a pixel calibration "
                                   "(load it with calibration.axis.load_calibration)")
        if version not in READABLE_VERSIONS:
            raise CalibrationError(
                f"{where}: calibration version {version!r} is not supported "
                f"(this build reads versions {', '.join(map(str, READABLE_VERSIONS))})"
            )
        in_air = d.get("wavelengths_in_air", False)
        if version == 1 and "wavelengths_in_air" in d:
            raise CalibrationError(f"{where}: 'wavelengths_in_air' needs calibration version 2, file says 1")
        if not isinstance(in_air, bool):
            raise CalibrationError(f"{where}: 'wavelengths_in_air' must be true or false, got {in_air!r}")
        try:
            return cls(
                wavelength_poly=tuple(d["wavelength_poly"]),
                laser_nm=float(d["laser_nm"]),
                pixels=int(d["pixels"]),
                instrument=str(d.get("instrument", "")),
                provenance=dict(d.get("provenance", {})),
                wavelengths_in_air=in_air,
            )
        except KeyError as e:
            raise CalibrationError(f"{where}: missing field {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise CalibrationError(f"{where}: {e}") from None

    def save(self, path: str | Path) -> None:
        """Write the JSON file atomically (a crash leaves the old file or the new one); ``OSError`` on failure."""
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "AxisCalibration":
        """Read a calibration file; :class:`CalibrationFileError` (exit status 2) names it when it cannot."""
        with _as_file_error():
            return replace(cls.from_dict(_read_json(path), where=str(path)), origin=str(path))

    # -- fit to data -------------------------------------------------------------
    @property
    def nominal_laser_nm(self) -> float:
        """The laser it was made for: the nominal one a standard refined it from, else :attr:`laser_nm`."""
        return _nominal(self.provenance, self.laser_nm)

    def describe(self) -> str:
        """``"calibration FILE (cal-…: pixel axis, 2048 px, 532 nm)"`` for messages."""
        return _described(self.origin, self.id, f"pixel axis, {self.pixels} px, {self.nominal_laser_nm:g} nm")


@contextlib.contextmanager
def _as_file_error() -> Iterator[None]:
    """Re-raise a calibration problem met while loading a file as :class:`CalibrationFileError`."""
    try:
        yield
    except CalibrationFileError:
        raise
    except CalibrationError as e:
        raise CalibrationFileError(str(e)) from None


def _described(origin: str | None, cal_id: str, what: str) -> str:
    return f"calibration {origin} ({cal_id}: {what})" if origin else f"calibration {cal_id} ({what})"


def _nominal(provenance: dict[str, Any], laser_nm: float) -> float:
    ref = provenance.get("refinement") if isinstance(provenance, dict) else None
    nominal = ref.get("laser_nm_nominal") if isinstance(ref, dict) else None
    try:
        return float(nominal) if nominal is not None else float(laser_nm)
    except (TypeError, ValueError):
        return float(laser_nm)


def write_json_atomic(path: str | Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` as JSON to ``path`` through a temporary file in the same folder and a rename.

    Raises
    ------
    OSError
        When the folder is missing or not writable, or the disk is full (the target is untouched).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide the file from the daemon's user
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(doc, indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_format(d: Any, where: str) -> None:
    if not isinstance(d, dict):
        raise CalibrationError(f"{where}: expected a JSON object")
    if d.get("format") != CALIBRATION_FORMAT:
        raise CalibrationError(f"{where}: 'format' is {d.get('format')!r}, expected {CALIBRATION_FORMAT!r}")


def _read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise CalibrationError(f"{path}: cannot read calibration: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        line = f" (line {e.lineno}: {e.msg})" if isinstance(e, json.JSONDecodeError) else ""
        raise CalibrationError(f"{path}: not valid JSON{line}") from None


@dataclass(frozen=True)
class ShiftCorrection:
    """Correction of a spectrum already on a Raman-shift axis (exported by the instrument's software).

    Instruments such as the Wasatch, Horiba and Renishaw ones export a Raman-shift
    axis computed from their own stored polynomial and nominal laser.  A Raman
    standard measured on them (``raman-edge calibrate --standard FILE --laser-nm L``
    without ``--lamp``) fits this correction: the shift axis is turned back into
    wavelengths with the nominal laser, moved by ``wavelength_offset_nm`` and
    converted again with the refined ``laser_nm``.  For the ``laser`` model that is
    a constant offset of every shift; the ``offset`` model shrinks as 1/λ².

    It is stored in the same versioned JSON family as :class:`AxisCalibration`
    (``"kind": "shift_correction"``, version 3) and its :attr:`id` is logged with
    every result it corrected.
    """

    laser_nm_nominal: float
    laser_nm: float
    wavelength_offset_nm: float = 0.0
    provenance: dict[str, Any] = field(default_factory=dict)
    instrument: str = ""
    #: The file it was loaded from (for messages; not part of its identity).
    origin: str | None = field(default=None, compare=False, repr=False)

    KIND = "shift_correction"

    def __post_init__(self) -> None:
        for name in ("laser_nm_nominal", "laser_nm"):
            v = float(getattr(self, name))
            if not (np.isfinite(v) and 100.0 < v < 2000.0):
                raise CalibrationError(f"shift correction: {name} {v!r} nm is outside 100–2000 nm")
            object.__setattr__(self, name, v)
        off = float(self.wavelength_offset_nm)
        if not (np.isfinite(off) and abs(off) < 50.0):
            raise CalibrationError(f"shift correction: wavelength offset {off!r} nm is implausible (|δλ| ≥ 50 nm)")
        object.__setattr__(self, "wavelength_offset_nm", off)

    def correct(self, shift_cm1: np.ndarray) -> np.ndarray:
        """Corrected Raman shifts (cm⁻¹) of the instrument's ``shift_cm1``."""
        lam = shift_to_wavelength(np.asarray(shift_cm1, dtype=np.float64), self.laser_nm_nominal)
        return wavelength_to_shift(lam + self.wavelength_offset_nm, self.laser_nm)

    def apply(self, spectrum: Spectrum) -> Spectrum:
        """The spectrum on the corrected axis; only Raman-shift-axis spectra are accepted."""
        if spectrum.unit != "raman_shift":
            raise SpectrumError(f"{spectrum.where}: a shift-axis correction ({self.id}) needs a Raman-shift axis, "
                                f"this spectrum is on a {spectrum.unit} axis")
        s = spectrum.validated(unit="raman_shift")
        meta = dict(s.meta, shift_correction=self.id)
        return replace(s, axis=self.correct(s.axis), meta=meta).ascending()

    def to_dict(self) -> dict[str, Any]:
        return {"format": CALIBRATION_FORMAT, "version": SHIFT_CORRECTION_VERSION, "kind": self.KIND,
                "instrument": self.instrument, "laser_nm_nominal": self.laser_nm_nominal,
                "laser_nm": self.laser_nm, "wavelength_offset_nm": self.wavelength_offset_nm,
                "provenance": self.provenance}

    @property
    def id(self) -> str:
        """Content hash of the physics (nominal and refined laser, offset)."""
        core = {"kind": self.KIND, "laser_nm_nominal": self.laser_nm_nominal, "laser_nm": self.laser_nm,
                "wavelength_offset_nm": self.wavelength_offset_nm}
        return "shc-" + hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "calibration") -> "ShiftCorrection":
        _check_format(d, where)
        if d.get("kind") != cls.KIND or d.get("version") != SHIFT_CORRECTION_VERSION:
            raise CalibrationError(f"{where}: not a version-{SHIFT_CORRECTION_VERSION} shift correction "
                                   f"(kind {d.get('kind')!r}, version {d.get('version')!r})")
        try:
            return cls(laser_nm_nominal=float(d["laser_nm_nominal"]), laser_nm=float(d["laser_nm"]),
                       wavelength_offset_nm=float(d.get("wavelength_offset_nm", 0.0)),
                       provenance=dict(d.get("provenance", {})), instrument=str(d.get("instrument", "")))
        except KeyError as e:
            raise CalibrationError(f"{where}: missing field {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise CalibrationError(f"{where}: {e}") from None

    def save(self, path: str | Path) -> None:
        """Write the JSON file atomically (a crash leaves the old file or the new one); ``OSError`` on failure."""
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "ShiftCorrection":
        """Read a shift-correction file; :class:`CalibrationFileError` (exit status 2) names it when it cannot."""
        with _as_file_error():
            return replace(cls.from_dict(_read_json(path), where=str(path)), origin=str(path))

    @property
    def nominal_laser_nm(self) -> float:
        """The laser of the spectra it corrects (the instrument's nominal one)."""
        return self.laser_nm_nominal

    def describe(self) -> str:
        """``"calibration FILE (shc-…: Raman-shift correction, 785 nm)"`` for messages."""
        return _described(self.origin, self.id, f"Raman-shift correction, {self.laser_nm_nominal:g} nm")


def load_calibration(path: str | Path) -> "AxisCalibration | ShiftCorrection":
    """Either kind of calibration file: a pixel-axis :class:`AxisCalibration` or a :class:`ShiftCorrection`.

    Raises
    ------
    CalibrationFileError
        Unreadable, not JSON, or not a calibration this build reads (the message names the file);
        a :class:`ConfigError` (exit status 2): the remedy is another file, not a restart.
    """
    with _as_file_error():
        d = _read_json(path)
        if isinstance(d, dict) and d.get("kind") == ShiftCorrection.KIND:
            cal: AxisCalibration | ShiftCorrection = ShiftCorrection.from_dict(d, where=str(path))
        else:
            cal = AxisCalibration.from_dict(d, where=str(path))
    return replace(cal, origin=str(path))


def fit_problem(calibration: "AxisCalibration | ShiftCorrection", unit: str | None,
                laser_nm: float | None) -> str | None:
    """Why ``calibration`` cannot apply to data on a ``unit`` axis measured with ``laser_nm``, or ``None``.

    Parameters
    ----------
    calibration : AxisCalibration or ShiftCorrection
    unit : str or None
        The data's axis unit (:data:`calibration.spectrum.AXIS_UNITS`); ``None`` when unknown.
    laser_nm : float or None
        The laser the data was measured with; ``None`` when unknown (then only the unit is checked).

    Returns
    -------
    str or None
        A sentence naming the calibration, the data's unit or laser, and what would fit.
    """
    what = calibration.describe()
    if isinstance(calibration, AxisCalibration) and unit == "raman_shift":
        # A pixel calibration cannot say anything about an axis already converted by the instrument.
        return (f"{what} maps detector pixels to Raman shift, but this spectrum is already on a Raman-shift axis; "
                "use a shift-axis correction (raman-edge calibrate --standard ... without --lamp) or no calibration")
    if laser_nm is not None and np.isfinite(laser_nm):
        if abs(float(laser_nm) - calibration.nominal_laser_nm) > LASER_TOLERANCE_NM:
            return (f"{what} was made for a {calibration.nominal_laser_nm:g} nm laser, but this spectrum was "
                    f"measured at {float(laser_nm):g} nm (more than {LASER_TOLERANCE_NM:g} nm apart)")
    return None


def spectrum_laser_nm(spectrum: Spectrum, *extra: Any) -> float | None:
    """The laser a spectrum was measured with, from its metadata or ``extra`` sources, else ``None``.

    ``extra`` may hold dicts (``{"laser_nm": ...}``, e.g. an acquisition's meta) and
    :class:`AxisCalibration` objects the instrument reported; the first known value wins.
    """
    for src in (spectrum.meta, *extra):
        value = src.get("laser_nm") if isinstance(src, dict) else getattr(src, "laser_nm", None)
        try:
            if value is not None and np.isfinite(float(value)) and float(value) > 0:
                return float(value)
        except (TypeError, ValueError):
            continue
    return None


def implausible_axis(calibration: AxisCalibration) -> str | None:
    """Why a lamp-fitted calibration's Raman axis is not physically plausible, or ``None``.

    Implausible: less than half of the detector falls within :data:`PLAUSIBLE_SHIFT_CM1`,
    which is what a laser wavelength that does not belong to the lamp file gives (a
    1064 nm laser on a detector that sees 540-700 nm: an entirely negative axis).
    """
    shifts = calibration.raman_shift()
    lo, hi = PLAUSIBLE_SHIFT_CM1
    inside = float(np.mean((shifts >= lo) & (shifts <= hi)))
    if inside >= 0.5:
        return None
    lam = calibration.wavelengths()
    return (f"at a {calibration.laser_nm:g} nm laser the axis runs {shifts.min():.0f} to {shifts.max():.0f} cm-1 "
            f"(detector {lam.min():.1f}-{lam.max():.1f} nm); only {inside:.0%} of it lies within the "
            f"{lo:g} to {hi:g} cm-1 a Raman spectrum covers, so the laser wavelength does not belong to this detector")


def to_shift_axis(spectrum: Spectrum, calibration: "AxisCalibration | ShiftCorrection | None",
                  instrument: "AxisCalibration | None" = None, laser_nm: float | None = None,
                  ) -> tuple[Spectrum, list["AxisCalibration | ShiftCorrection"]]:
    """``spectrum`` on a calibrated Raman-shift axis, and the id of what calibrated it.

    Parameters
    ----------
    spectrum : Spectrum
        On a pixel, wavelength or Raman-shift axis.
    calibration : AxisCalibration or ShiftCorrection, optional
        The configured (ground-fitted) calibration.  An :class:`AxisCalibration`
        puts pixel/wavelength spectra on the shift axis; a :class:`ShiftCorrection`
        corrects a shift axis.
    instrument : AxisCalibration, optional
        The calibration the instrument reported with the spectrum: used for a pixel
        axis when the configured one is a shift correction (or absent).
    laser_nm : float, optional
        The laser the spectrum was measured with; default: ``spectrum.meta["laser_nm"]``,
        else the instrument calibration's.

    Returns
    -------
    (Spectrum, list)
        The Raman-shift spectrum and the calibrations applied, in order
        (:func:`applied_id` names them for the results log).

    Raises
    ------
    CalibrationMismatchError
        The configured calibration does not fit the spectrum (:func:`fit_problem`):
        a pixel calibration for a spectrum already on a Raman-shift axis, or one made
        for another laser.  Never silently skipped: the result would be wrong.
    CalibrationError
        A pixel/wavelength spectrum and no axis calibration to put it on a shift axis.
    """
    applied: list[AxisCalibration | ShiftCorrection] = []
    s = spectrum
    if calibration is not None:
        laser = laser_nm if laser_nm is not None else spectrum_laser_nm(s, instrument)
        problem = fit_problem(calibration, s.unit, laser)
        if problem is not None:
            raise CalibrationMismatchError(f"{s.where}: {problem}")
    pixel_cal = calibration if isinstance(calibration, AxisCalibration) else instrument
    if s.unit != "raman_shift":
        if pixel_cal is None:
            raise CalibrationError(f"{s.where}: spectrum is on a {s.unit} axis and no axis calibration is known "
                                   "(the instrument reported none; pass --calibration CAL.json)")
        s = pixel_cal.apply(s.validated())
        applied.append(pixel_cal)
    if isinstance(calibration, ShiftCorrection):
        s = calibration.apply(s)
        applied.append(calibration)
    return s, applied


def applied_id(applied: "list[AxisCalibration | ShiftCorrection]") -> str | None:
    """The id logged for a chain of applied calibrations: ``"cal-…"``, ``"shc-…"``, ``"cal-…+shc-…"`` or None."""
    return "+".join(c.id for c in applied) or None
