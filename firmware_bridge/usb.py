"""``usb://VID:PID``: instruments on USB, through pyusb or python-seabreeze (optional extra ``usb``).

::

    usb://1209:7A3E?model=raman-edge-1024&serial=RE0001     raman-edge board, bulk endpoints (pyusb)
    usb://2457:4000?laser=785                               Ocean Insight STS, through python-seabreeze
    usb://2457:4000?backend=pyusb&laser=785                 the same, our OBP implementation over pyusb

VID and PID are hexadecimal.  Options: everything ``serial://`` takes (see
:mod:`firmware_bridge.link`; ``baud`` is ignored) plus

==================  =====================================================================  ===========
option              meaning                                                                default
==================  =====================================================================  ===========
serial              pick the device with this USB serial number                            the first
model               device model; by default the one whose ``usb_id`` is VID:PID, else     see left
                    raman-edge-1024
backend             ``pyusb`` (bulk transport + our protocol layer) or ``seabreeze``        seabreeze for
                    (python-seabreeze does everything)                                      OBP models
seabreeze_backend   ``cseabreeze`` or ``pyseabreeze``                                      seabreeze's
interface           USB interface number holding the bulk endpoints (pyusb)                0
==================  =====================================================================  ===========

Both back-ends are imported lazily, when the source is opened; when missing,
:class:`~calibration.errors.MissingExtraError` names the ``usb`` extra and the package.
The reader loop, the retry and reconnect policy and the counters are those of
:class:`~firmware_bridge.link.LinkSource`.

.. warning::
   Untested against hardware.  :class:`UsbBulkTransport` is tested against a fake pyusb
   module that behaves as pyusb is documented to (bulk ``read``/``write`` with millisecond
   timeouts, ``USBTimeoutError``, ``USBError`` with errno ``ENODEV`` on unplug), with the
   simulated instrument behind it; :class:`SeaBreezeDriver` against a fake of the
   python-seabreeze ``Spectrometer`` API.  Details such as endpoint layout, kernel-driver
   detaching and udev permissions must be checked on the real boards.
"""
from __future__ import annotations

import errno
import logging
import math
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from calibration.axis import AxisCalibration
from calibration.errors import CalibrationError, MissingExtraError, SourceConfigError, SourceError

from .devices import MODELS
from .link import Connection, DeviceDriver, Driver, LinkConfig, LinkReading, LinkSource, parse_link_options
from .protocol import SpectrumReading
from .source import query_params, register_scheme
from .transport import Transport, TransportError

log = logging.getLogger(__name__)

__all__ = ["UsbTarget", "parse_usb_url", "UsbBulkTransport", "SeaBreezeDriver", "UsbSource"]

_EXTRA_OPTIONS = ("serial", "backend", "seabreeze_backend", "interface")
_BACKENDS = ("pyusb", "seabreeze")


@dataclass(frozen=True)
class UsbTarget:
    """Which USB device a ``usb://`` URL names, and how to talk to it."""

    vid: int
    pid: int
    serial: str | None
    backend: str
    seabreeze_backend: str | None
    interface: int
    config: LinkConfig

    @property
    def name(self) -> str:
        return f"usb://{self.vid:04x}:{self.pid:04x}" + (f" (serial {self.serial})" if self.serial else "")


def parse_usb_url(url: str) -> UsbTarget:
    """Parse and check a ``usb://VID:PID?options`` URL; raises :class:`SourceConfigError`."""
    parts = urlsplit(url)
    if parts.scheme != "usb":
        raise SourceConfigError(f"{url!r} is not a usb:// URL")
    ident = parts.netloc + parts.path.rstrip("/")
    try:
        vid_s, pid_s = ident.split(":")
        if not (1 <= len(vid_s) <= 4 and 1 <= len(pid_s) <= 4):
            raise ValueError
        vid, pid = int(vid_s, 16), int(pid_s, 16)
    except ValueError:
        raise SourceConfigError(f"{url}: expected usb://VID:PID with hexadecimal vendor and product ids "
                                f"(e.g. usb://2457:4000), got {ident!r}") from None
    params = query_params(url)
    default_model = None
    if "model" not in params and "protocol" not in params:
        default_model = next((m.name for m in MODELS.values() if m.usb_id == (vid, pid)), None)
    config = parse_link_options(url, extra=_EXTRA_OPTIONS, default_model=default_model)
    extra = config.extra
    backend = extra.get("backend") or ("seabreeze" if config.model.protocol == "obp" else "pyusb")
    if backend not in _BACKENDS:
        raise SourceConfigError(f"{url}: option backend={backend!r}; expected one of {', '.join(_BACKENDS)}")
    if backend == "seabreeze" and config.model.protocol != "obp":
        raise SourceConfigError(f"{url}: backend=seabreeze is for Ocean Insight devices; model {config.model.name} "
                                f"speaks {config.model.protocol} (use backend=pyusb)")
    sb = extra.get("seabreeze_backend") or None
    if sb not in (None, "cseabreeze", "pyseabreeze"):
        raise SourceConfigError(f"{url}: option seabreeze_backend={sb!r}; expected cseabreeze or pyseabreeze")
    try:
        interface = int(extra.get("interface", "0"))
        if not 0 <= interface <= 255:
            raise ValueError
    except ValueError:
        raise SourceConfigError(f"{url}: option interface={extra.get('interface')!r}; "
                                "expected an integer 0–255") from None
    serial = extra.get("serial") or None
    return UsbTarget(vid, pid, serial, backend, sb, interface, config)


# ------------------------------------------------------------------------------ pyusb
def _pyusb() -> tuple[Any, Any]:
    """``(usb.core, usb.util)``, imported on first use."""
    try:
        import usb.core
        import usb.util
    except ImportError:
        raise MissingExtraError("usb:// (USB bulk transport)", "usb", "pyusb") from None
    return usb.core, usb.util


def _is_timeout(core: Any, e: BaseException) -> bool:
    timeout_cls = getattr(core, "USBTimeoutError", None)
    if timeout_cls is not None and isinstance(e, timeout_cls):
        return True
    # pyusb < 1.2: a USBError carrying ETIMEDOUT / LIBUSB_ERROR_TIMEOUT (-7)
    return getattr(e, "errno", None) == errno.ETIMEDOUT or getattr(e, "backend_error_code", None) == -7


class UsbBulkTransport(Transport):
    """Bytes over a USB device's bulk OUT/IN endpoint pair, through pyusb.

    Keeps the :class:`Transport` read contract: a bulk read returns what one transfer
    brought (read in multiples of the endpoint's packet size, so no data is overflowed);
    bytes beyond ``n`` are kept for the next :meth:`read`.  Any pyusb error other than a
    timeout (``ENODEV`` after an unplug, ``EIO``, ``EPIPE``) is a :class:`TransportError`.

    Parameters
    ----------
    vid, pid : int
        USB vendor and product id.
    serial : str, optional
        Pick the device with this serial number.
    interface : int
        Interface holding the endpoints (the first bulk OUT and bulk IN endpoints are used).
    write_timeout : float
        Seconds a bulk write may take.
    """

    #: Bytes asked for per bulk read (rounded to a multiple of the packet size).
    TRANSFER = 16384

    def __init__(self, vid: int, pid: int, serial: str | None = None, *, interface: int = 0,
                 write_timeout: float = 1.0) -> None:
        super().__init__(f"usb://{vid:04x}:{pid:04x}" + (f"?serial={serial}" if serial else ""))
        self.vid, self.pid, self.serial, self.interface = vid, pid, serial, interface
        self.write_timeout = float(write_timeout)
        self._dev: Any = None
        self._ep_in: Any = None
        self._ep_out: Any = None
        self._rx = bytearray()
        self._lock = threading.Lock()

    def open(self) -> None:
        if self._dev is not None:
            return
        core, util = _pyusb()
        try:
            found = list(core.find(find_all=True, idVendor=self.vid, idProduct=self.pid) or ())
        except core.NoBackendError as e:
            raise TransportError(f"{self.name}: pyusb finds no libusb back-end ({e}); install libusb-1.0") from None
        except core.USBError as e:
            raise TransportError(f"{self.name}: cannot enumerate USB devices: {e}") from None
        if self.serial is not None:
            found = [d for d in found if self._serial_of(util, d) == self.serial]
        if not found:
            raise TransportError(f"{self.name}: no such USB device attached")
        dev = found[0]
        try:
            try:
                if dev.is_kernel_driver_active(self.interface):
                    dev.detach_kernel_driver(self.interface)
            except NotImplementedError:  # not on every platform
                pass
            try:
                cfg = dev.get_active_configuration()
            except core.USBError:
                cfg = None
            if cfg is None:
                dev.set_configuration()
                cfg = dev.get_active_configuration()
            intf = cfg[(self.interface, 0)]

            def bulk(direction: int) -> Any:
                return util.find_descriptor(intf, custom_match=lambda e: (
                    util.endpoint_direction(e.bEndpointAddress) == direction
                    and util.endpoint_type(e.bmAttributes) == util.ENDPOINT_TYPE_BULK))

            ep_out, ep_in = bulk(util.ENDPOINT_OUT), bulk(util.ENDPOINT_IN)
            if ep_out is None or ep_in is None:
                raise TransportError(f"{self.name}: interface {self.interface} has no bulk OUT/IN endpoint pair")
            util.claim_interface(dev, self.interface)
        except core.USBError as e:
            raise TransportError(f"{self.name}: cannot claim the device: {e}") from None
        self._dev, self._ep_in, self._ep_out = dev, ep_in, ep_out
        self._rx.clear()
        log.info("opened %s (bulk OUT 0x%02x, IN 0x%02x)", self.name, ep_out.bEndpointAddress, ep_in.bEndpointAddress)

    @staticmethod
    def _serial_of(util: Any, dev: Any) -> str | None:
        try:
            return util.get_string(dev, dev.iSerialNumber)
        except Exception:  # noqa: BLE001 - no permission or no string: not the one asked for
            return None

    def close(self) -> None:
        dev, self._dev = self._dev, None
        if dev is None:
            return
        try:
            _, util = _pyusb()
            util.release_interface(dev, self.interface)
            util.dispose_resources(dev)
        except Exception as e:  # noqa: BLE001 - a vanished device cannot be released cleanly
            log.info("%s: while closing: %s", self.name, e)

    @property
    def is_open(self) -> bool:
        return self._dev is not None

    def read(self, n: int, timeout: float | None = None) -> bytes:
        if n < 1:
            raise ValueError(f"read size must be at least 1, got {n}")
        dev = self._dev
        if dev is None:
            raise TransportError(f"{self.name}: read on a closed transport")
        with self._lock:
            if not self._rx:
                core, _ = _pyusb()
                # libusb takes whole milliseconds and treats 0 as "for ever".
                ms = 0 if timeout is None else max(1, int(math.ceil(timeout * 1000)))
                packet = max(int(getattr(self._ep_in, "wMaxPacketSize", 64)), 1)
                size = max(packet, self.TRANSFER // packet * packet)
                try:
                    data = dev.read(self._ep_in.bEndpointAddress, size, ms)
                except core.USBError as e:
                    if _is_timeout(core, e):
                        return b""
                    raise TransportError(f"{self.name}: bulk read failed: {e}") from None
                self._rx += bytes(data)
            out = bytes(self._rx[:n])
            del self._rx[:n]
            return out

    def write(self, data: bytes) -> int:
        dev = self._dev
        if dev is None:
            raise TransportError(f"{self.name}: write on a closed transport")
        core, _ = _pyusb()
        view = memoryview(bytes(data))
        try:
            while view:
                sent = dev.write(self._ep_out.bEndpointAddress, view.tobytes(), max(1, int(self.write_timeout * 1000)))
                if sent <= 0:
                    raise TransportError(f"{self.name}: bulk write sent nothing")
                view = view[sent:]
        except core.USBError as e:
            raise TransportError(f"{self.name}: bulk write failed: {e}") from None
        return len(data)

    def discard_input(self) -> int:
        with self._lock:
            dropped = len(self._rx)
            self._rx.clear()
        return dropped + super().discard_input()


# ------------------------------------------------------------------------------ seabreeze
def _seabreeze(backend: str | None) -> Any:
    """``seabreeze.spectrometers``, imported on first use (choosing the back-end first)."""
    try:
        import seabreeze
    except ImportError:
        raise MissingExtraError("usb:// for Ocean Insight spectrometers", "usb", "seabreeze") from None
    # seabreeze.use() must come before seabreeze.spectrometers is first imported; later it is moot.
    if backend is not None and "seabreeze.spectrometers" not in sys.modules:
        try:
            seabreeze.use(backend)
        except Exception as e:  # noqa: BLE001 - e.g. chosen after seabreeze.spectrometers was imported
            raise SourceError(f"python-seabreeze cannot switch to the {backend} back-end: {e}") from None
    try:
        import seabreeze.spectrometers as spectrometers
    except ImportError as e:  # e.g. cseabreeze missing its compiled library, pyseabreeze missing pyusb
        raise MissingExtraError(f"usb:// through python-seabreeze ({e})", "usb", "seabreeze") from None
    return spectrometers


class SeaBreezeDriver(Driver):
    """An Ocean Insight spectrometer through python-seabreeze (``cseabreeze`` or ``pyseabreeze``).

    python-seabreeze does transport and protocol itself, so this driver cannot tell a
    protocol failure from a vanished device: every error it raises is treated as a
    :class:`TransportError` (close, back off, reopen).  Raw counts are read without
    dark or non-linearity correction (``intensities(False, False)``); the axis calibration
    is a cubic fitted to ``wavelengths()``; the laser comes from the URL or the model.
    Untested against hardware (see the module docstring).
    """

    def __init__(self, target: UsbTarget) -> None:
        super().__init__()
        self.target = target
        self.config = target.config
        self.name = target.name
        self._spec: Any = None
        self._n = 0

    def require(self) -> None:
        _seabreeze(self.target.seabreeze_backend)

    def _fail(self, what: str, e: BaseException) -> TransportError:
        return TransportError(f"{self.name}: {what}: {type(e).__name__}: {e}")

    def connect(self) -> Connection:
        sp = _seabreeze(self.target.seabreeze_backend)
        try:
            devices = list(sp.list_devices())
        except Exception as e:  # noqa: BLE001
            raise self._fail("cannot list devices", e) from None
        if self.target.serial is not None:
            devices = [d for d in devices if getattr(d, "serial_number", None) == self.target.serial]
        if not devices:
            raise TransportError(f"{self.name}: no Ocean Insight spectrometer found by python-seabreeze")
        try:
            spec = sp.Spectrometer(devices[0])
            spec.integration_time_micros(int(round(self.config.integration * 1000)))
            wavelengths = np.asarray(spec.wavelengths(), dtype=np.float64)
        except Exception as e:  # noqa: BLE001
            raise self._fail("cannot set up the spectrometer", e) from None
        self._spec = spec
        identity = f"{getattr(spec, 'model', '?')} {getattr(spec, 'serial_number', '')}".strip()
        return Connection(self._calibration(wavelengths, identity), identity,
                          {"model": self.config.model.name, "backend": "seabreeze"})

    def _calibration(self, wavelengths: np.ndarray, identity: str) -> AxisCalibration | None:
        laser = self.config.laser or self.config.model.laser_nm
        try:
            if laser is None:
                raise CalibrationError("no laser wavelength: give laser= in the URL")
            p = np.arange(wavelengths.size, dtype=np.float64)
            poly = tuple(float(c) for c in np.polynomial.Polynomial.fit(p, wavelengths, 3).convert().coef)
            return AxisCalibration(poly, float(laser), int(wavelengths.size), instrument=identity,
                                   provenance={"method": "cubic fit to python-seabreeze wavelengths()",
                                               "transport": self.name})
        except (CalibrationError, ValueError, np.linalg.LinAlgError) as e:
            log.error("%s: no usable axis calibration (%s); spectra will be logged unclassified", self.name, e)
            return None

    def acquire(self, stop: threading.Event) -> None:
        spec = self._spec
        if spec is None:
            raise TransportError(f"{self.name}: not connected")
        self.stats["requests"] += 1
        try:
            counts = np.asarray(spec.intensities(False, False), dtype=np.float64)
        except Exception as e:  # noqa: BLE001
            raise self._fail("spectrum read failed", e) from None
        self._n += 1
        self.ready.append(LinkReading(SpectrumReading(counts, float(self.config.integration), math.nan,
                                                      time.time(), self._n)))

    def disconnect(self) -> None:
        spec, self._spec = self._spec, None
        if spec is not None:
            try:
                spec.close()
            except Exception as e:  # noqa: BLE001
                log.info("%s: while closing: %s", self.name, e)


# ------------------------------------------------------------------------------ the source
class UsbSource(LinkSource):
    """``usb://VID:PID?options``: see the module docstring.  Untested against hardware."""

    scheme = "usb"

    def __init__(self, url: str) -> None:
        target = parse_usb_url(url)
        self.target = target
        if target.backend == "seabreeze":
            driver: Driver = SeaBreezeDriver(target)
        else:
            transport = UsbBulkTransport(target.vid, target.pid, target.serial, interface=target.interface,
                                         write_timeout=target.config.timeout)
            driver = _PyusbDriver(transport, target.config)
        super().__init__(url, driver, target.config)


class _PyusbDriver(DeviceDriver):
    """:class:`DeviceDriver` that imports pyusb when the source opens."""

    def require(self) -> None:
        _pyusb()


register_scheme("usb", UsbSource)
