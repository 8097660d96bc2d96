"""One acquisition → calibrated → preprocessed → classified → prioritised result.

The daemon (`raman-edge run`) and the bench (`raman-edge bench`) both call
:meth:`Pipeline.process`, so what is benchmarked is exactly what flies.
"""
from __future__ import annotations

import logging
import time
from typing import Any
from dataclasses import dataclass, field

import numpy as np

from calibration.axis import (AxisCalibration, CalibrationMismatchError, ShiftCorrection, applied_id, fit_problem,
                              spectrum_laser_nm, to_shift_axis)
from calibration.errors import CalibrationError, InputError, RamanEdgeError
from firmware_bridge.source import Acquisition, Source

from .bundle import Bundle
from .classifier import Classifier, Prediction
from .priority import PriorityPolicy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Result:
    """What the pipeline made of one acquisition.

    ``prediction`` is None when the spectrum could not be interpreted; ``error``
    then says why.  The raw acquisition is always kept, so nothing measured is lost.
    """

    acquisition: Acquisition
    prediction: Prediction | None
    priority: int
    reasons: list[str]
    calibration_id: str | None
    error: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    #: The calibration objects behind ``calibration_id`` (their JSON is stored with the log).
    calibrations: tuple[Any, ...] = ()

    @property
    def latency_ms(self) -> float:
        return sum(self.timings_ms.values())


class Pipeline:
    """Calibrate, preprocess and classify acquisitions with one model.

    Parameters
    ----------
    bundle : Bundle
        The verified model bundle; its preprocessing spec is the one applied.
    calibration : AxisCalibration or ShiftCorrection, optional
        A ground-fitted calibration file.  An AxisCalibration overrides the one the
        instrument reports (pixel-axis spectra need one or the other); a
        ShiftCorrection corrects the Raman-shift axis (the instrument's own, or the
        one its reported calibration gives).
    policy : PriorityPolicy, optional
    top_k : int
    head_precision : {"auto", "fp32", "int8"}
        See :class:`~edge.classifier.Classifier`.
    source : Source, optional
        The source it will process; when given, :meth:`check_source` runs now, so a
        calibration that cannot fit what the source declares is refused at start-up.

    Raises
    ------
    CalibrationMismatchError
        A :class:`~calibration.errors.ConfigError` (exit status 2): the calibration
        does not fit the axis or laser ``source`` declares.
    """

    def __init__(self, bundle: Bundle, calibration: AxisCalibration | ShiftCorrection | None = None,
                 policy: PriorityPolicy | None = None, top_k: int = 3, head_precision: str = "auto",
                 source: Source | None = None) -> None:
        self.calibration = calibration
        if source is not None:
            self.check_source(source)  # before the model is loaded: refuse early and cheaply
        self.bundle = bundle
        self.classifier = Classifier(bundle, top_k=top_k, head_precision=head_precision)
        self.preprocessor = bundle.preprocessor
        self.policy = policy or PriorityPolicy()

    def check_source(self, source: Source) -> None:
        """Refuse a calibration that cannot fit what ``source`` declares about its spectra.

        A source may offer ``declared_axis() -> (unit, laser_nm)`` (either ``None`` when
        not known before its spectra arrive, e.g. a folder of mixed files).  What is
        not declared is checked per spectrum in :meth:`process` instead.

        Raises
        ------
        CalibrationMismatchError
            A :class:`~calibration.errors.ConfigError`, naming the source and the calibration.
        """
        declared = getattr(source, "declared_axis", None)
        if self.calibration is None or not callable(declared):
            return
        unit, laser_nm = declared()
        problem = fit_problem(self.calibration, unit, laser_nm)
        if problem is not None:
            raise CalibrationMismatchError(f"source {source.url}: {problem}")

    @property
    def model_id(self) -> str:
        return self.bundle.model_id

    def prepare(self, acq: Acquisition) -> tuple[np.ndarray, list[Any]]:
        """Calibrated and preprocessed model input for one acquisition, and the calibrations applied.

        Raises
        ------
        InputError
            The source could not read the spectrum (``acq.meta["unreadable"]`` says why)
            or the spectrum is unusable (NaN, too short, ...).
        CalibrationError
            No calibration puts it on a Raman-shift axis, or the configured one does not
            fit it (:class:`~calibration.axis.CalibrationMismatchError`).
        """
        unreadable = acq.meta.get("unreadable")
        if unreadable:
            raise InputError(str(unreadable))
        # The laser from the acquisition's meta too: a deferred row rebuilt from the log
        # keeps the acquisition's meta, not the spectrum's.
        laser = spectrum_laser_nm(acq.spectrum, acq.meta, acq.calibration)
        # The configured calibration wins over the instrument's; a shift correction also
        # applies on top of the instrument's own pixel calibration (see to_shift_axis).
        spectrum, applied = to_shift_axis(acq.spectrum, self.calibration, acq.calibration, laser_nm=laser)
        return self.preprocessor(spectrum), applied

    def process(self, acq: Acquisition) -> Result:
        """Never raises for a bad spectrum: the result carries the error instead."""
        t0 = time.perf_counter()
        try:
            x, applied = self.prepare(acq)
        except (InputError, CalibrationError) as e:
            level, reasons = self.policy.assess(None)
            return Result(acq, None, level, reasons, None, error=str(e),
                          timings_ms={"preprocess": (time.perf_counter() - t0) * 1e3})
        t1 = time.perf_counter()
        pred = self.classifier.classify(x)[0]
        t2 = time.perf_counter()
        level, reasons = self.policy.assess(pred)
        return Result(acq, pred, level, reasons, applied_id(applied),
                      timings_ms={"preprocess": (t1 - t0) * 1e3, "inference": (t2 - t1) * 1e3},
                      calibrations=tuple(applied))


__all__ = ["Pipeline", "Result", "RamanEdgeError"]
