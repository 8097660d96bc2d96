"""Daemon configuration: one TOML file, every option with a default and a check.

Command-line options override the file; the file overrides the defaults below.
``raman-edge run --help`` prints :func:`describe` so the documentation cannot drift
from the code.
"""
from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from calibration.errors import ConfigError

from .quantization import HEAD_PRECISIONS


@dataclass(frozen=True)
class Option:
    section: str
    key: str
    default: Any
    help: str
    check: Callable[[Any], bool] = lambda v: True
    expect: str = ""


#: Largest count option (queue lengths, batch size, top_k): beyond it a typo, not a plan.
_MAX_COUNT = 2**31 - 1


def _pos(v: Any) -> bool:
    # Finite: an infinite interval would overflow the timers that use it.
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 and math.isfinite(v)


def _unit(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1


def _posint(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 < v <= _MAX_COUNT


def _str(v: Any) -> bool:
    return isinstance(v, str)


def _path(v: Any) -> bool:
    # A NUL byte cannot be in a file name; the OS call would fail far from here.
    return isinstance(v, str) and "\x00" not in v


def _bool(v: Any) -> bool:
    return isinstance(v, bool)


OPTIONS: tuple[Option, ...] = (
    Option("source", "url", "sim://", "spectrum source URL (sim://, replay://PATH, serial:///dev/ttyUSB0?baud=115200, usb://VID:PID)", _str, "a URL"),
    Option("model", "path", "", "model bundle directory; empty: the registry's active model, else the shipped default", _path, "a path"),
    Option("model", "trusted_keys", "", "directory of trusted public keys (*.pub) for signed bundles", _path, "a path"),
    Option("model", "allow_unsigned", False, "accept unsigned bundles (development only)", _bool, "true or false"),
    Option("model", "head_precision", "auto", "head weights as run: auto (8-bit above 1 MiB of float32 weights, e.g. 10,000 classes), fp32 or int8",
           lambda v: v in HEAD_PRECISIONS, ", ".join(HEAD_PRECISIONS)),
    Option("model", "check_interval_s", 1.0, "how often to look for a newly installed model", _pos, "finite seconds > 0"),
    Option("calibration", "path", "", "calibration JSON: a pixel-axis calibration overriding the instrument's own, or a shift-axis correction (calibrate --standard without --lamp)", _path, "a path"),
    Option("store", "db", "raman-edge.sqlite", "SQLite results log", _path, "a path"),
    Option("store", "synchronous", "FULL", "SQLite synchronous: FULL survives power cuts, NORMAL only process kills",
           lambda v: isinstance(v, str) and v.upper() in ("FULL", "NORMAL", "EXTRA"), "FULL, NORMAL or EXTRA"),
    Option("store", "batch_max", 64, "most results committed in one transaction", _posint, "an integer from 1 to 2147483647"),
    Option("priority", "min_probability", 0.6, "top-1 probability below which a result is low confidence", _unit, "0..1"),
    Option("priority", "min_margin", 0.3, "top-1/top-2 margin below which a result is low confidence", _unit, "0..1"),
    Option("priority", "interest", [], "classes that rank first for the downlink",
           lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v), "a list of names"),
    Option("priority", "top_k", 3, "classes logged per spectrum", _posint, "an integer from 1 to 2147483647"),
    Option("daemon", "state_dir", "", "state directory: model registry, status socket (empty: the db path with .d)", _path, "a path"),
    Option("daemon", "classify_queue", 32, "spectra waiting for classification; beyond it, classification is deferred", _posint, "an integer from 1 to 2147483647"),
    Option("daemon", "write_queue", 256, "results waiting to be committed; beyond it, acquisition waits", _posint, "an integer from 1 to 2147483647"),
    Option("daemon", "downlink_queue", 1024, "highest-priority results kept in memory for the next pass", _posint, "an integer from 1 to 2147483647"),
    Option("daemon", "watchdog_file", "", "file touched while every loop is alive (empty: none)", _path, "a path"),
    Option("daemon", "watchdog_interval_s", 1.0, "how often the watchdog checks the loops", _pos, "finite seconds > 0"),
    Option("daemon", "stall_after_s", 10.0, "a loop silent this long is stalled (counted event)", _pos, "finite seconds > 0"),
    Option("daemon", "restart_after_s", 30.0, "a loop stalled this long is restarted", _pos, "finite seconds > 0"),
    Option("daemon", "status_socket", True, "serve `raman-edge status` on a Unix socket in state_dir", _bool, "true or false"),
)

_BY_KEY = {(o.section, o.key): o for o in OPTIONS}


@dataclass(frozen=True)
class Config:
    """Resolved configuration: ``values[(section, key)]``, plus where it came from."""

    values: dict[tuple[str, str], Any] = field(default_factory=lambda: {(o.section, o.key): o.default for o in OPTIONS})
    path: Path | None = None
    #: Where each value not left at its default was set: the TOML file's path or "command line".
    origins: dict[tuple[str, str], str] = field(default_factory=dict)

    def origin(self, item: str) -> str:
        """Where ``"section.key"`` was set: the TOML file, ``"command line"`` or ``"default"``."""
        section, key = item.split(".", 1)
        return self.origins.get((section, key), "default")

    def __getitem__(self, item: str) -> Any:
        section, key = item.split(".", 1)
        value = self.values[(section, key)]
        if (section, key) == ("daemon", "state_dir") and not value:
            return str(Path(self.values[("store", "db")]).with_suffix(".d"))
        return value

    def with_overrides(self, overrides: dict[str, Any]) -> "Config":
        """Apply ``{"section.key": value}``; ``None`` values mean "not given" and are skipped."""
        values, origins = dict(self.values), dict(self.origins)
        for name, value in overrides.items():
            if value is None:
                continue
            section, key = name.split(".", 1)
            _validate(section, key, value, "command line")
            values[(section, key)] = value
            origins[(section, key)] = "command line"
        return replace(self, values=values, origins=origins)

    def as_dict(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for (section, key), v in self.values.items():
            out.setdefault(section, {})[key] = v
        return out


def _validate(section: str, key: str, value: Any, where: str) -> None:
    opt = _BY_KEY.get((section, key))
    if opt is None:
        known = ", ".join(sorted(k for s, k in _BY_KEY if s == section)) or "none"
        raise ConfigError(f"{where}: unknown option [{section}] {key} (known in [{section}]: {known})")
    if not opt.check(value):
        raise ConfigError(f"{where}: [{section}] {key} = {value!r} is invalid; expected {opt.expect}")


def load_config(path: str | Path | None) -> Config:
    """Defaults, overridden by the TOML file at ``path`` when given."""
    cfg = Config()
    if path is None:
        return cfg
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    values, origins = dict(cfg.values), {}
    sections = {o.section for o in OPTIONS}
    for section, table in doc.items():
        if section not in sections:
            raise ConfigError(f"{path}: unknown section [{section}] (known: {', '.join(sorted(sections))})")
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {section} = {table!r} is not a table; write it as a [{section}] section")
        for key, value in table.items():
            _validate(section, key, value, str(path))
            values[(section, key)] = value
            origins[(section, key)] = str(path)
    return Config(values=values, path=path, origins=origins)


def describe() -> str:
    """The configuration reference, as printed by ``raman-edge run --help``."""
    lines = []
    section = None
    for o in OPTIONS:
        if o.section != section:
            section = o.section
            lines.append(f"[{section}]")
        default = f'"{o.default}"' if isinstance(o.default, str) else str(o.default).lower() if isinstance(o.default, bool) else o.default
        lines.append(f"  {o.key} = {default}    # {o.help}")
    return "\n".join(lines)


__all__ = ["Config", "OPTIONS", "describe", "load_config"]
