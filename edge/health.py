"""Liveness of the daemon's loops, counted events, and the watchdog (F Prime Health style).

Every loop calls :meth:`Health.beat` once per iteration, idle iterations included.
The watchdog is stroked only when *every* registered loop has beaten within its
stall limit; a loop that has not is reported as a counted, throttled event, and
past ``restart_after`` its owner is asked to restart it.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from calibration.errors import ConfigError
from firmware_bridge.protocol import ErrorCounters

log = logging.getLogger(__name__)


class Events(ErrorCounters):
    """The daemon's counted events, logged at most once per kind per ``interval`` seconds.

    The same throttled counter the link uses for stream damage
    (:class:`firmware_bridge.protocol.ErrorCounters`), named for the daemon.
    """

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__("daemon", log_interval=interval, logger=log, clock=clock)

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)


@dataclass
class _Loop:
    stall_after: float
    last_beat: float
    stalled: bool = False
    restarts: int = 0


@dataclass
class Health:
    """Per-loop heartbeats.

    Parameters
    ----------
    events : Events
        Where stalls and restarts are counted.
    clock : callable
        Monotonic clock (injectable for tests).
    """

    events: Events = field(default_factory=Events)
    clock: Callable[[], float] = time.monotonic
    _loops: dict[str, _Loop] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def register(self, name: str, stall_after: float) -> None:
        with self._lock:
            self._loops[name] = _Loop(stall_after=stall_after, last_beat=self.clock())

    def unregister(self, name: str) -> None:
        with self._lock:
            self._loops.pop(name, None)

    def beat(self, name: str) -> None:
        with self._lock:
            loop = self._loops.get(name)
            if loop is not None:
                loop.last_beat = self.clock()
                if loop.stalled:
                    loop.stalled = False
                    log.info("loop %s is alive again", name)

    def stalled(self) -> dict[str, float]:
        """Loops whose last beat is older than their limit → seconds since that beat."""
        now = self.clock()
        out = {}
        with self._lock:
            for name, loop in self._loops.items():
                age = now - loop.last_beat
                if age > loop.stall_after:
                    out[name] = age
                    if not loop.stalled:
                        loop.stalled = True
        for name, age in out.items():
            self.events.note("loop_stalled", f"{name} has not reported for {age:.1f} s")
        return out

    def record_restart(self, name: str) -> None:
        with self._lock:
            if name in self._loops:
                self._loops[name].restarts += 1
                self._loops[name].last_beat = self.clock()
        self.events.note("loop_restarted", f"{name} restarted")

    def snapshot(self) -> dict[str, dict[str, float | bool | int]]:
        now = self.clock()
        with self._lock:
            return {name: {"seconds_since_beat": round(now - l.last_beat, 3), "stalled": now - l.last_beat > l.stall_after,
                           "restarts": l.restarts} for name, l in self._loops.items()}


class Watchdog:
    """Strokes a watchdog file (mtime) and/or systemd's ``WATCHDOG=1``.

    Parameters
    ----------
    path : Path, optional
        A file whose modification time an external supervisor watches.
    systemd : bool
        Send ``sd_notify`` datagrams to ``$NOTIFY_SOCKET`` when set (Type=notify units).
    """

    def __init__(self, path: Path | None = None, systemd: bool = True) -> None:
        self.path = path
        self.notify_socket = os.environ.get("NOTIFY_SOCKET") if systemd else None
        self.strokes = 0

    def _notify(self, message: str) -> None:
        if not self.notify_socket:
            return
        addr = self.notify_socket
        if addr.startswith("@"):  # abstract namespace socket
            addr = "\0" + addr[1:]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.connect(addr)
                s.sendall(message.encode())
        except OSError as e:
            log.warning("sd_notify(%s) failed: %s", message, e)

    def check(self) -> None:
        """Stroke the watchdog file once, refusing one the daemon cannot touch.

        A supervisor watching a file that never changes would restart a healthy
        daemon forever; better to refuse the configuration at start.

        Raises
        ------
        ConfigError
            The file cannot be created or its time set.
        """
        if self.path is None:
            return
        try:
            self.path.touch()
        except OSError as e:
            raise ConfigError(f"watchdog file {self.path}: {e.strerror or e}") from None

    def ready(self) -> None:
        self._notify("READY=1")

    def stopping(self) -> None:
        self._notify("STOPPING=1")

    def stroke(self) -> None:
        self.strokes += 1
        if self.path is not None:
            try:
                self.path.touch()
            except OSError as e:
                log.warning("cannot stroke watchdog file %s: %s", self.path, e)
        self._notify("WATCHDOG=1")
