"""Real spectrometer links: the ``serial://`` source, and the reader loop ``usb://`` shares.

::

    serial:///dev/ttyUSB0?baud=115200&protocol=raman-edge&model=raman-edge-1024&integration=100

The path is anything :class:`~firmware_bridge.transport.SerialTransport` opens
(``/dev/ttyUSB0``, ``/dev/pts/7``, a symlink such as ``/dev/serial/by-id/...``; percent-encode
``?``, ``#`` and ``%``).  Query options, all optional:

============  ===============================================================  ==================
option        meaning                                                          default
============  ===============================================================  ==================
baud          serial line speed                                                115200
protocol      wire protocol (``raman-edge`` or ``obp``); checked against model  the model's
model         device model (:data:`firmware_bridge.devices.MODELS`)            raman-edge-1024
                                                                               (ocean-sts for obp)
integration   integration time in ms, set on every (re)connect                 100
laser         excitation in nm when the board stores none                     the model's
timeout       seconds to wait for a short reply; a spectrum adds integration   1
              and readout time
retries       extra attempts at a request whose reply was lost or damaged      3
idle          seconds of silence after a partial or damaged reply before the   0.1
              request is retried
prefetch      spectra requested ahead of the reader (bounded buffer)           2
backoff       first reconnect delay in s (doubles per failed attempt)          0.1
backoff_max   reconnect delay cap in s                                         5
silence       spectrum requests in a row without a byte back before the link   2
              is declared dead and reopened
wait          1: do not fail :meth:`~LinkSource.open` when the instrument is   0
              absent; keep trying in the background
log_interval  seconds between two log lines of the same kind of event          10
============  ===============================================================  ==================

Design
------
A reader thread owns the link; :meth:`LinkSource.read` takes acquisitions from a small
bounded buffer (``prefetch``), so it returns ``None`` on its timeout whatever the link is
doing, and the daemon stays responsive.  The thread asks for the next spectrum only when
the buffer has room: a slow consumer slows the instrument down instead of losing spectra.

**Requests.**  The host asks for spectra one after another (REQUEST_SPECTRUM; the
protocol has no streaming mode), so a board never acquires a spectrum nobody asked for.

**Two kinds of failure, two policies.**

* *Transport* errors (:class:`~firmware_bridge.transport.TransportError`: port vanished,
  EIO, device unplugged), and a board that stays silent for ``silence`` requests in a row:
  the link is closed and reopened after a capped exponential back-off with jitter
  (``backoff`` · 2^(n-1) capped at ``backoff_max``, each delay drawn uniformly from its upper
  half so that several hosts do not retry in step), then the board is identified again
  (GET_INFO, checked against the model), its integration time set and its axis calibration
  read again, and spectra resume.  Counted: ``disconnects``, ``reconnect_attempts``,
  ``connect_failures``, ``reconnects`` (successful reopenings).
* *Protocol and handler* errors (a damaged frame, a NACK, a spectrum that does not parse):
  counted, logged at most once per ``log_interval`` per kind, and the stream goes on.

:meth:`LinkSource.open` connects once in the caller's thread, so a wrong port, a silent
board or a board of another model raises :class:`SourceError` at once, unless ``wait=1``
(``raman-edge run`` exits 1 on it: transient, its supervisor retries; a bad URL option is a
:class:`~calibration.errors.SourceConfigError`, exit 2, raised when the source is created);
after that, nothing raises out of :meth:`LinkSource.read` but "not open" (or a reader thread
killed by a bug, which its catch-all makes all but impossible).  A board that stores no
usable axis calibration does not stop the link: acquisitions then carry
``calibration=None`` (logged as an error once per connection) and the daemon logs them raw.

**No undamaged spectrum is lost.**  A reply is known damaged when the decoder rejects a
frame (bad CRC or header) or when bytes arrived and the line then stayed quiet for
``idle`` seconds with no complete frame (a dropped byte or a truncation); the request is
then retried at once with a new sequence number, instead of after the full timeout.
Because the request it replaces may only have been *slow* (a retry fired too early), its
sequence number stays acceptable: a SPECTRUM that later arrives intact for any recent
request is delivered too (counted ``late_reply``) — a real acquisition is never dropped as
"stale".  The decoder is not flushed at a retry, so a frame still arriving is not cut; a
damaged partial frame is refuted by the bytes of the next reply (section 5 of
``docs/protocol.md``).  Gaps in the board's acquisition number count the spectra the
board measured but the host never got intact (``lost_spectra``); a number going back
means the board restarted (``board_restarts``).  This is the raman-edge protocol's loop;
OBP devices (``protocol=obp``) are asked through :meth:`Device.request_spectrum`, whose
sequence numbers are host-side, so their gaps mean nothing.

``Acquisition.meta`` carries ``integration_ms``, ``detector_temp_c`` (``None`` without a
sensor), ``board_timestamp_s``, ``board_seq``, ``lost_before`` (gap just before this
spectrum), ``late_reply`` and ``link`` (a snapshot of :attr:`LinkSource.counters`, with the
protocol's stream-damage counters under ``protocol``).  All timing uses ``time.monotonic``.
"""
from __future__ import annotations

import abc
import logging
import math
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple
from urllib.parse import unquote, urlsplit

import numpy as np

from calibration.axis import AxisCalibration
from calibration.errors import CalibrationError, SourceConfigError, SourceError
from calibration.spectrum import Spectrum

from .devices import Device, DeviceModel, get_model
from .protocol import (
    ErrorCounters, Frame, MsgType, NackCode, NackError, ProtocolError, RamanEdgeProtocol, ReplyTimeout,
    SpectrumReading, unpack_nack, unpack_spectrum,
)
from .source import Acquisition, Source, query_params, register_scheme
from .transport import SerialTransport, Transport, TransportError

log = logging.getLogger(__name__)

__all__ = [
    "LinkConfig", "LinkReading", "Connection", "Driver", "DeviceDriver", "LinkSource", "SerialSource",
    "BoardSilent", "parse_link_options", "parse_serial_url", "backoff_delay",
]

#: Decoder rejections that mean a frame arrived damaged.
_REJECTIONS = ("bad_header", "bad_length", "bad_crc", "bad_version")
#: Default model per protocol when the URL names none.
DEFAULT_MODELS = {"raman-edge": "raman-edge-1024", "obp": "ocean-sts"}


class BoardSilent(ReplyTimeout):
    """Not one byte came back to any attempt at a request: the board may be off, hung or gone."""


# ------------------------------------------------------------------------------ options
@dataclass(frozen=True)
class LinkConfig:
    """Parsed link options (see the module docstring)."""

    model: DeviceModel
    baud: int = 115200
    integration: float = 100.0
    laser: float | None = None
    timeout: float = 1.0
    retries: int = 3
    idle: float = 0.1
    prefetch: int = 2
    backoff: float = 0.1
    backoff_max: float = 5.0
    silence: int = 2
    wait: bool = False
    log_interval: float = 10.0
    extra: dict[str, str] = field(default_factory=dict)


def _num(lo: float, hi: float, kind: type = float, lo_open: bool = False) -> Callable[[str], Any]:
    def parse(raw: str) -> Any:
        v = kind(raw)
        if not (math.isfinite(v) and lo <= v <= hi) or (lo_open and v == lo):
            raise ValueError
        return v
    parse.expected = f"{'an integer' if kind is int else 'a number'} {'>' if lo_open else '≥'} {lo:g} and ≤ {hi:g}"  # type: ignore[attr-defined]
    return parse


def _bool(raw: str) -> bool:
    v = raw.strip().lower()
    if v in ("", "1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError


_bool.expected = "1/0, true/false, yes/no or on/off"  # type: ignore[attr-defined]

_OPTIONS: dict[str, Callable[[str], Any]] = {
    "baud": _num(50, 20_000_000, int),
    "integration": _num(0.0, 3.6e6, float, lo_open=True),
    "laser": _num(200.0, 1100.0),
    "timeout": _num(0.0, 600.0, float, lo_open=True),
    "retries": _num(0, 100, int),
    "idle": _num(0.0, 60.0, float, lo_open=True),
    "prefetch": _num(1, 10_000, int),
    "backoff": _num(0.0, 600.0, float, lo_open=True),
    "backoff_max": _num(0.0, 3600.0, float, lo_open=True),
    "silence": _num(1, 1000, int),
    "wait": _bool,
    "log_interval": _num(0.0, 86400.0),
}


def parse_link_options(url: str, extra: tuple[str, ...] = (), default_model: str | None = None) -> LinkConfig:
    """Validate the query options of a link URL (``serial://``, ``usb://``).

    ``model`` and ``protocol`` pick the :class:`DeviceModel` (else ``default_model``, else
    the protocol's default); names in ``extra`` are back-end options passed through as
    strings (in :attr:`LinkConfig.extra`).

    Raises
    ------
    SourceConfigError
        A :class:`SourceError` with exit status 2, naming the URL, the option, its value
        and what was expected.
    """
    params = query_params(url)
    values: dict[str, Any] = {}
    passthrough: dict[str, str] = {}
    protocol = params.pop("protocol", None)
    model_name = params.pop("model", None)
    for name, raw in params.items():
        if name in extra:
            passthrough[name] = raw
            continue
        parse = _OPTIONS.get(name)
        if parse is None:
            known = sorted([*_OPTIONS, "model", "protocol", *extra])
            raise SourceConfigError(f"{url}: unknown option {name!r}; known: {', '.join(known)}")
        try:
            values[name] = parse(raw.strip())
        except (TypeError, ValueError, OverflowError):
            raise SourceConfigError(f"{url}: option {name}={raw!r} is not valid; expected "
                                    f"{parse.expected}") from None  # type: ignore[attr-defined]
    if model_name is None:
        if protocol is not None and protocol not in DEFAULT_MODELS:
            raise SourceConfigError(f"{url}: unknown protocol {protocol!r}; known: {sorted(DEFAULT_MODELS)}")
        model_name = default_model or DEFAULT_MODELS[protocol or "raman-edge"]
    try:
        model = get_model(model_name)
    except SourceError as e:
        raise SourceConfigError(f"{url}: option model={model_name!r}: {e}") from None
    if protocol is not None and protocol != model.protocol:
        raise SourceConfigError(f"{url}: protocol={protocol!r} but model {model.name} speaks {model.protocol!r}")
    integ = values.get("integration", 100.0)
    if not model.min_integration_ms <= integ <= model.max_integration_ms:
        raise SourceConfigError(f"{url}: option integration={integ:g} ms is outside {model.name}'s "
                                f"{model.min_integration_ms:g}–{model.max_integration_ms:g} ms")
    if values.get("backoff", 0.1) > values.get("backoff_max", 5.0):
        raise SourceConfigError(f"{url}: backoff={values.get('backoff', 0.1):g} s exceeds backoff_max="
                                f"{values.get('backoff_max', 5.0):g} s")
    return LinkConfig(model=model, extra=passthrough, **values)


def parse_serial_url(url: str) -> tuple[str, LinkConfig]:
    """``(port path, options)`` of a ``serial://`` URL; raises :class:`SourceConfigError`."""
    parts = urlsplit(url)
    if parts.scheme != "serial":
        raise SourceConfigError(f"{url!r} is not a serial:// URL")
    port = unquote(parts.netloc + parts.path)
    if not port:
        raise SourceConfigError(f"{url!r} names no port; use e.g. serial:///dev/ttyUSB0?baud=115200")
    return port, parse_link_options(url)


def backoff_delay(failures: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before reconnect attempt ``failures`` (1, 2, ...).

    ``base · 2^(failures-1)`` capped at ``cap``, then drawn uniformly from its upper half
    (jitter, so that restarts of several links do not stay in step).
    """
    d = min(cap, base * 2.0 ** min(max(failures, 1) - 1, 60))
    return d * (0.5 + 0.5 * (rng or random).random())


# ------------------------------------------------------------------------------ drivers
class LinkReading(NamedTuple):
    """A spectrum from the instrument and whether it answered a request already given up on."""

    reading: SpectrumReading
    late: bool = False


@dataclass(frozen=True)
class Connection:
    """What :meth:`Driver.connect` learnt about the instrument."""

    calibration: AxisCalibration | None
    identity: str = ""
    details: dict[str, Any] = field(default_factory=dict)


class Driver(abc.ABC):
    """One instrument connection, driven by :class:`LinkSource`'s reader thread.

    :meth:`acquire` puts what it receives in :attr:`ready` *before* it may raise, and the
    source drains :attr:`ready` after every call, so a spectrum received in the same breath
    as an error is still delivered.
    """

    name: str = ""

    def __init__(self) -> None:
        self.ready: list[LinkReading] = []
        self.stats: dict[str, int] = {"requests": 0, "retries": 0}

    def require(self) -> None:
        """Import optional back-ends now; raises :class:`~calibration.errors.MissingExtraError`."""

    @abc.abstractmethod
    def connect(self) -> Connection:
        """Open the link, identify the instrument, set it up; raises :class:`SourceError`."""

    @abc.abstractmethod
    def acquire(self, stop: threading.Event) -> None:
        """Get (at least) one spectrum into :attr:`ready`; return early when ``stop`` is set.

        Raises
        ------
        TransportError
            The link failed.
        BoardSilent
            Nothing came back at all.
        ProtocolError
            A NACK, a bad spectrum, or only damaged replies.
        """

    @abc.abstractmethod
    def disconnect(self) -> None:
        """Close the link; safe to call twice, from another thread too."""

    def take(self) -> list[LinkReading]:
        out, self.ready = self.ready, []
        return out

    def protocol_counters(self) -> dict[str, int]:
        """Stream-damage and request/reply counters of the protocol layer."""
        return {}


class DeviceDriver(Driver):
    """A :class:`~firmware_bridge.devices.Device` over a :class:`Transport` (serial, USB bulk).

    raman-edge boards get the retrying request loop described in the module docstring;
    other protocols (OBP) use :meth:`Device.request_spectrum` and its timeout/retry rule.
    """

    def __init__(self, transport: Transport, config: LinkConfig) -> None:
        super().__init__()
        self.transport = transport
        self.config = config
        self.name = transport.name
        self.device = Device(transport, config.model, timeout=config.timeout, retries=config.retries,
                             laser_nm=config.laser, log_interval=config.log_interval)
        # Sequence numbers whose SPECTRUM is still welcome (current request and recent abandoned ones).
        self._acceptable: deque[int] = deque(maxlen=64)
        self.stats.update(damaged_replies=0, late_replies=0, busy=0)

    @property
    def counters(self) -> ErrorCounters:
        return self.device.counters

    def protocol_counters(self) -> dict[str, int]:
        return self.device.counters.as_dict()

    def connect(self) -> Connection:
        dev = self.device
        dev.open(identify=True)
        dev.set_integration_time(self.config.integration)
        self._acceptable.clear()
        try:
            cal = dev.read_axis_calibration()
        except ReplyTimeout:
            raise
        except (CalibrationError, ProtocolError) as e:
            # Spectra still flow without one: the pipeline logs them raw, nothing measured is lost.
            log.error("%s: no usable axis calibration from the instrument (%s); spectra will be logged "
                      "unclassified unless the daemon is given --calibration", self.name, e)
            cal = None
        info = dev.info
        identity = info.identity if info is not None else ""
        details = {"model": self.config.model.name, "integration_ms": dev.integration_ms}
        if info is not None:
            details["firmware"] = f"{info.firmware[0]}.{info.firmware[1]}"
        return Connection(cal, identity, details)

    def disconnect(self) -> None:
        self.device.close()

    def _spectrum_wait(self) -> float:
        integ = self.device.integration_ms if self.device.integration_ms is not None else self.config.integration
        return self.config.timeout + (integ + self.config.model.readout_ms) / 1000.0

    def acquire(self, stop: threading.Event) -> None:
        if not isinstance(self.device.protocol, RamanEdgeProtocol):
            self.stats["requests"] += 1
            self.ready.append(LinkReading(self.device.request_spectrum()))
            return
        self._acquire_raman_edge(self.device.protocol, stop)

    def _rejections(self) -> int:
        counts = self.device.counters.counts
        return sum(counts.get(k, 0) for k in _REJECTIONS)

    def _acquire_raman_edge(self, proto: RamanEdgeProtocol, stop: threading.Event) -> None:
        cfg, counters = self.config, self.device.counters
        wait = self._spectrum_wait()
        attempts = 0
        heard = False  # any byte back, in any attempt
        seq: int | None = None
        deadline = last_rx = 0.0
        loose = False  # bytes arrived that did not (yet) form a frame
        rejected = 0
        while True:
            if seq is None:
                if attempts > cfg.retries:
                    kind = ReplyTimeout if heard else BoardSilent
                    raise kind(f"{self.name}: no intact SPECTRUM in {attempts} attempts "
                               f"({'only damaged replies' if heard else 'not one byte back'}); "
                               f"stream: {counters.summary()}")
                attempts += 1
                seq = proto.send(MsgType.REQUEST_SPECTRUM)
                self._acceptable.append(seq)
                self.stats["requests"] += 1
                if attempts > 1:
                    self.stats["retries"] += 1
                deadline = time.monotonic() + wait
                loose, rejected = False, self._rejections()
            if stop.is_set():
                return
            now = time.monotonic()
            if now >= deadline:
                status = self._handle(proto.flush(), seq)
                if status == "done":
                    return
                counters.note("timeout", f"no reply to REQUEST_SPECTRUM seq {seq} in {wait:g} s "
                                         f"(attempt {attempts} of {cfg.retries + 1})")
                seq = None
                continue
            frames, n = proto.receive(min(cfg.idle / 2.0, deadline - now))
            if n:
                heard, loose, last_rx = True, True, time.monotonic()
            status = self._handle(frames, seq)
            if status == "done":
                return
            if status == "retry":
                seq = None
                continue
            if frames and proto.decoder.buffered == 0:
                loose = False  # everything that arrived made whole frames
            damaged = self._rejections() > rejected and not proto.decoder.pending
            if loose and (damaged or time.monotonic() - last_rx >= cfg.idle):
                self.stats["damaged_replies"] += 1
                counters.note("damaged_reply", f"REQUEST_SPECTRUM seq {seq}: "
                                               f"{'a rejected frame' if damaged else 'a partial frame, then silence'}; "
                                               f"retrying (attempt {attempts + 1})", level=logging.INFO)
                seq = None

    def _handle(self, frames: list[Frame], seq: int) -> str:
        """Deliver acceptable spectra; ``done`` (answered), ``retry`` (ask again now) or ``wait``."""
        status = "wait"
        error: ProtocolError | None = None
        counters = self.device.counters
        for f in frames:
            if f.msg_type == MsgType.SPECTRUM and f.seq in self._acceptable:
                self._acceptable.remove(f.seq)
                late = f.seq != seq
                try:
                    reading = unpack_spectrum(f.payload)
                    if reading.counts.size != self.config.model.pixels:
                        raise ProtocolError(f"SPECTRUM has {reading.counts.size} pixels; "
                                            f"model {self.config.model.name} has {self.config.model.pixels}")
                except ProtocolError as e:
                    e = ProtocolError(f"{self.name}: seq {f.seq}: {e}")
                    if late:
                        counters.note("bad_spectrum", str(e))
                    else:
                        error = e
                else:
                    self.ready.append(LinkReading(reading, late))
                    if late:
                        self.stats["late_replies"] += 1
                        counters.note("late_reply", f"SPECTRUM for abandoned request seq {f.seq} delivered",
                                      level=logging.INFO)
                if not late:
                    status = "done"
            elif f.msg_type == MsgType.NACK and f.seq == seq:
                try:
                    req, code, detail, text = unpack_nack(f.payload)
                except ProtocolError as e:
                    error, status = ProtocolError(f"{self.name}: malformed NACK to REQUEST_SPECTRUM: {e}"), "done"
                    continue
                if code == NackCode.BUSY:
                    self.stats["busy"] += 1
                    counters.note("busy", f"seq {seq}", level=logging.INFO)
                    time.sleep(0.01)
                    status = "retry"
                    continue
                try:
                    reason = NackCode(code).name
                except ValueError:
                    reason = f"code 0x{code:02X}"
                error = NackError(f"{self.name}: {self.config.model.name} refused REQUEST_SPECTRUM ({reason}, detail "
                                  f"{detail}){': ' + text if text else ''}", code=code, reason=reason,
                                  request="REQUEST_SPECTRUM")
                status = "done"
            elif (f.seq == 0 and f.msg_type == MsgType.NACK
                  and f.payload[1:2] in (bytes([NackCode.BAD_FRAME]), bytes([NackCode.BAD_VERSION]))):
                counters.note("board_bad_frame", f"while REQUEST_SPECTRUM seq {seq} was outstanding")
                if status == "wait":
                    status = "retry"
            else:
                counters.note("stale" if f.seq not in (0, seq) else "unexpected", f"{f!r} while waiting for seq {seq}",
                              level=logging.INFO)
        if error is not None:
            raise error
        return status


# ------------------------------------------------------------------------------ the source
class LinkSource(Source):
    """A :class:`Source` reading an instrument through a :class:`Driver` in a reader thread.

    See the module docstring for the retry and reconnect design.  :attr:`counters` gives
    the numbers for the daemon's status; :attr:`calibration` the axis calibration read at
    the latest (re)connection.
    """

    def __init__(self, url: str, driver: Driver, config: LinkConfig) -> None:
        super().__init__(url)
        self.driver = driver
        self.config = config
        self.calibration: AxisCalibration | None = None
        self.connection: Connection | None = None
        self.events = ErrorCounters(f"link {url}", log_interval=config.log_interval)
        self._n: dict[str, int] = {
            "spectra": 0, "lost_spectra": 0, "board_restarts": 0, "handler_errors": 0, "disconnects": 0,
            "reconnect_attempts": 0, "connect_failures": 0, "reconnects": 0, "discarded_on_close": 0,
        }
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self._buffer: deque[Acquisition] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = "closed"
        self._ever_connected = False
        self._last_board_seq: int | None = None
        self._seq = 0
        self._rng = random.Random()
        self._fatal: BaseException | None = None

    # -- status -------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """``closed``, ``connecting``, ``connected`` or ``reconnecting``."""
        return self._state

    @property
    def counters(self) -> dict[str, Any]:
        """A snapshot: link counters, driver counters, event counts and, under ``protocol``, stream damage."""
        with self._lock:
            out: dict[str, Any] = dict(self._n)
        out.update(self.driver.stats)
        # Handler errors by kind (nack, protocol_error, silent, bad_spectrum, internal_error); the other
        # logged events (connect_failure, board_restart, lost_spectra) are counted above already.
        for k, v in self.events.counts.items():
            if k not in ("connect_failure", "board_restart", "lost_spectra"):
                out.setdefault(k, v)
        out["buffered"] = len(self._buffer)
        out["state"] = self._state
        out["protocol"] = self.driver.protocol_counters()
        return out

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._n[key] += n

    # -- lifecycle ------------------------------------------------------------------------
    def open(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self.driver.require()
        self._stop.clear()
        self._fatal = None
        self._state = "connecting"
        if not self.config.wait:
            try:
                self._connect_once()
            except BaseException:
                self._state = "closed"
                self.driver.disconnect()
                raise
        self._thread = threading.Thread(target=self._run, name=f"link {self.url}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(2.0)
            if t.is_alive():  # blocked in I/O: closing the link makes the read fail at once
                self.driver.disconnect()
                t.join(5.0)
        self.driver.disconnect()
        self._thread = None
        with self._cond:
            if self._buffer:
                self._count("discarded_on_close", len(self._buffer))
                log.info("%s: %d acquired spectra not read before close", self.url, len(self._buffer))
                self._buffer.clear()
        self._state = "closed"

    def read(self, timeout: float | None = None) -> Acquisition | None:
        if self._thread is None:
            raise SourceError(f"{self.url}: read() on a source that is not open")
        with self._cond:
            self._cond.wait_for(lambda: self._buffer or self._fatal is not None or self._stop.is_set(), timeout)
            if self._buffer:
                acq = self._buffer.popleft()
                self._cond.notify_all()
                return acq
        if self._fatal is not None:
            raise SourceError(f"{self.url}: the reader thread failed: {self._fatal!r}")
        return None

    # -- the reader thread ------------------------------------------------------------------
    def _connect_once(self) -> None:
        conn = self.driver.connect()
        self.connection, self.calibration = conn, conn.calibration
        if self._ever_connected:
            self._count("reconnects")
        self._ever_connected = True
        self._state = "connected"
        log.info("%s: connected to %s (%s)", self.url, conn.identity or self.config.model.name,
                 ", ".join(f"{k} {v}" for k, v in conn.details.items()))

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # noqa: BLE001 - reported through read(), never silent
            log.exception("%s: reader thread failed", self.url)
            self._fatal = e
            with self._cond:
                self._cond.notify_all()

    def _loop(self) -> None:
        failures = 0
        silent = 0
        handler_errors = 0
        down_since = time.monotonic()
        while not self._stop.is_set():
            if self._state != "connected":
                again = self._ever_connected
                if again:
                    self._count("reconnect_attempts")
                try:
                    self._connect_once()
                except Exception as e:  # noqa: BLE001 - any failure to (re)connect is retried
                    self.driver.disconnect()
                    failures += 1
                    self._count("connect_failures")
                    delay = backoff_delay(failures, self.config.backoff, self.config.backoff_max, self._rng)
                    self.events.note("connect_failure", f"attempt {failures}: {e}; next in {delay:.2f} s")
                    self._stop.wait(delay)
                    continue
                if again:
                    log.warning("%s: link back after %.2f s (%d failed attempts)", self.url,
                                time.monotonic() - down_since, failures)
                failures = silent = 0
            if not self._wait_for_room():
                return
            try:
                self.driver.acquire(self._stop)
            except TransportError as e:
                self._link_down(f"transport error: {e}")
                down_since = time.monotonic()
            except BoardSilent as e:
                silent += 1
                self._handler_error("silent", e, handler_errors)
                if silent >= self.config.silence:
                    self._link_down(f"board silent for {silent} requests")
                    down_since = time.monotonic()
            except Exception as e:  # noqa: BLE001 - NACK, bad spectrum, only damaged replies, or a bug
                handler_errors += 1
                self._handler_error("nack" if isinstance(e, NackError) else
                                    "protocol_error" if isinstance(e, SourceError) else "internal_error", e,
                                    handler_errors)
            else:
                silent = handler_errors = 0
            finally:
                for r in self.driver.take():
                    self._deliver(r)

    def _wait_for_room(self) -> bool:
        with self._cond:
            while len(self._buffer) >= self.config.prefetch:
                if self._stop.is_set():
                    return False
                self._cond.wait(0.1)
        return not self._stop.is_set()

    def _link_down(self, why: str) -> None:
        self.driver.disconnect()
        self._state = "reconnecting"
        self._count("disconnects")
        log.warning("%s: link lost (%s); reconnecting with back-off", self.url, why)
        self._stop.wait(backoff_delay(1, self.config.backoff, self.config.backoff_max, self._rng))

    def _handler_error(self, kind: str, e: BaseException, consecutive: int) -> None:
        self._count("handler_errors")
        if kind == "internal_error":
            log.error("%s: unexpected %s in the reader loop: %s", self.url, type(e).__name__, e, exc_info=e)
        self.events.note(kind, str(e))
        if consecutive > 1:  # a board refusing every request must not be hammered
            self._stop.wait(min(1.0, 0.01 * 2 ** min(consecutive, 10)))

    def _deliver(self, item: LinkReading) -> None:
        r = item.reading
        gap = 0
        last = self._last_board_seq
        if last is not None:
            if r.seq > last + 1:
                gap = r.seq - last - 1
                self._count("lost_spectra", gap)
                self.events.note("lost_spectra", f"board acquisitions #{last + 1}–#{r.seq - 1} never arrived intact",
                                 level=logging.INFO)
            elif r.seq <= last:
                self._count("board_restarts")
                self.events.note("board_restart", f"acquisition #{r.seq} after #{last}")
        self._last_board_seq = r.seq
        try:
            acq = self._acquisition(r, gap, item.late)
        except Exception as e:  # noqa: BLE001 - one bad spectrum never stops the stream
            self._handler_error("bad_spectrum", e, 0)
            return
        with self._cond:
            while len(self._buffer) >= self.config.prefetch and not self._stop.is_set():
                self._cond.wait(0.1)
            if self._stop.is_set():
                self._count("discarded_on_close")
                return
            self._buffer.append(acq)
            self._cond.notify_all()

    def _acquisition(self, r: SpectrumReading, gap: int, late: bool) -> Acquisition:
        seq = self._seq
        identity = self.connection.identity if self.connection else ""
        spectrum = Spectrum(r.counts, np.arange(r.counts.size, dtype=np.float64), unit="pixel",
                            meta={"source": self.url, "where": f"{self.url} #{seq} (board #{r.seq})",
                                  "instrument": identity or self.config.model.name})
        self._count("spectra")
        meta = {
            "integration_ms": r.integration_ms,
            "detector_temp_c": None if math.isnan(r.temperature_c) else r.temperature_c,
            "board_timestamp_s": r.timestamp,
            "board_seq": r.seq,
            "lost_before": gap,
            "late_reply": late,
            # When the frame was decoded, for frame-received → row-committed latency. The link's
            # counters are not copied here (≈0.5 kB a row): the daemon's status reports them.
            "received_monotonic": time.monotonic(),
        }
        self._seq += 1
        return Acquisition(seq=seq, spectrum=spectrum, acquired_at=time.time(), source=self.url,
                           calibration=self.calibration, truth=None, meta=meta)


class SerialSource(LinkSource):
    """``serial://PORT?options``: an instrument on a serial port (see the module docstring)."""

    scheme = "serial"

    def __init__(self, url: str) -> None:
        port, config = parse_serial_url(url)
        self.port = port
        super().__init__(url, DeviceDriver(SerialTransport(port, baudrate=config.baud), config), config)


register_scheme("serial", SerialSource)
