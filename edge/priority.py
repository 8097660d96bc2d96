"""How valuable a result is for the downlink.

A result ranks higher when the model is unsure (low top-1 probability or small
top-1/top-2 margin) or when its class is on the mission's "of interest" list.  A
spectrum that is none of the known minerals (novelty above the bundle's threshold,
:mod:`edge.novelty`) ranks above both: level 3 with reason ``novel``, its nearest known
mineral still logged as the label.  A result that failed preprocessing also has level 3
(status ``error``, reason ``unreadable``) and the downlink sends it before the novel ones
of the same level: the ground must see what the rover could not interpret.  Sharing level
3 keeps the stored levels and the downlink's 3-bit field of older versions unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from calibration.errors import ConfigError

from .classifier import Prediction

ROUTINE, LOW_CONFIDENCE, INTEREST, UNREADABLE = 0, 1, 2, 3
#: A novel result shares the top level with unreadable ones; its reason and status tell them apart.
NOVEL = UNREADABLE


@dataclass(frozen=True)
class PriorityPolicy:
    """Thresholds and the interest list.

    Parameters
    ----------
    min_probability : float
        Below this top-1 probability a result counts as low confidence.
    min_margin : float
        Below this top-1/top-2 margin a result counts as low confidence.
    interest : frozenset of str
        Class names the mission wants to hear about first (case-insensitive).
    """

    min_probability: float = 0.6
    min_margin: float = 0.3
    interest: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        for name in ("min_probability", "min_margin"):
            v = getattr(self, name)
            if not (0.0 <= v <= 1.0):
                raise ConfigError(f"priority {name} must lie in [0, 1], got {v!r}")
        object.__setattr__(self, "interest", frozenset(s.strip().lower() for s in self.interest if s.strip()))

    def assess(self, prediction: Prediction | None) -> tuple[int, list[str]]:
        """Priority (higher first) and the reasons behind it."""
        if prediction is None:
            return UNREADABLE, ["unreadable"]
        reasons: list[str] = []
        level = ROUTINE
        if prediction.label.lower() in self.interest:
            level, reasons = INTEREST, ["interest"]
        if prediction.probability < self.min_probability or prediction.margin < self.min_margin:
            level = max(level, LOW_CONFIDENCE)
            reasons.append("low_confidence")
        if prediction.novel:
            level = NOVEL
            reasons.insert(0, "novel")
        return level, reasons
