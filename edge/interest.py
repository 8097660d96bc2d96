"""Check a mission's "classes of interest" against the classes a model can name.

A misspelt name (``Hematit``) would otherwise never match a result and the
mineral the mission asked for would travel with routine priority: nobody would
notice.  `raman-edge run` and `raman-edge bench` refuse such a list at start.
"""
from __future__ import annotations

import difflib
import logging
from typing import Iterable

from calibration.errors import ConfigError

log = logging.getLogger(__name__)


def unknown_interest(names: Iterable[str], classes: Iterable[str]) -> list[str]:
    """Names (stripped, non-empty) that match no class, case-insensitively, in the order given."""
    known = {c.strip().lower() for c in classes}
    out: list[str] = []
    for name in names:
        n = name.strip()
        if n and n.lower() not in known and n not in out:
            out.append(n)
    return out


def _suggest(name: str, classes: list[str]) -> str | None:
    by_lower = {c.lower(): c for c in classes}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.75)
    return by_lower[close[0]] if close else None


def describe_unknown(unknown: list[str], classes: list[str]) -> str:
    """``'Hematit' (did you mean 'Hematite'?), 'Foo'`` for an error or warning message."""
    parts = []
    for name in unknown:
        hint = _suggest(name, classes)
        parts.append(f"{name!r}" + (f" (did you mean {hint!r}?)" if hint else ""))
    return ", ".join(parts)


def check_interest(names: Iterable[str], classes: Iterable[str], model_id: str, where: str = "--interest") -> None:
    """Refuse interest names the model does not know.

    Parameters
    ----------
    names : iterable of str
        The interest list as given.
    classes : iterable of str
        The model's class names.
    model_id : str
        For the message.
    where : str
        Where the list was given (an option, or a TOML file and key), for the message.

    Raises
    ------
    ConfigError
        At least one name is not a class of the model; the message names each
        unknown name and, where one is close, the class it probably means.
    """
    classes = list(classes)
    unknown = unknown_interest(names, classes)
    if unknown:
        noun = "is not a class" if len(unknown) == 1 else "are not classes"
        raise ConfigError(f"{where}: {describe_unknown(unknown, classes)} {noun} of model {model_id} "
                          f"({len(classes)} classes; `raman-edge model list` or the bundle's manifest.json lists them)")


def warn_unknown_interest(names: Iterable[str], classes: Iterable[str], model_id: str) -> list[str]:
    """Log once that a newly loaded model lacks some interest names (they stay on the list); returns them."""
    classes = list(classes)
    unknown = unknown_interest(names, classes)
    if unknown:
        log.warning("model %s has no class %s: results cannot rank as 'interest' for %s",
                    model_id, describe_unknown(unknown, classes), "it" if len(unknown) == 1 else "them")
    return unknown


__all__ = ["check_interest", "describe_unknown", "unknown_interest", "warn_unknown_interest"]
