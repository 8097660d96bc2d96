"""usb://: URL parsing, the missing-extra path, and both back-ends against fakes of pyusb and python-seabreeze.

No USB hardware is involved: the fakes behave as the libraries are documented to (bulk
read/write with millisecond timeouts, USBTimeoutError, USBError errno 19 after an unplug;
seabreeze's Spectrometer API).  What only a real board can show (endpoint layout, kernel
drivers, permissions) is not tested here.
"""
from __future__ import annotations

import struct
import sys
import threading
import time
import types
from array import array

import numpy as np
import pytest

from calibration.errors import MissingExtraError, SourceConfigError, SourceError
from firmware_bridge.instrument import SimulatedInstrument
from firmware_bridge.obp import OBPDecoder, OBPMessage, OBPMsgType
from firmware_bridge.source import open_source
from firmware_bridge.transport import LoopbackTransport, TransportError
from firmware_bridge.usb import UsbBulkTransport, UsbSource, parse_usb_url


# ------------------------------------------------------------------------------ URLs
def test_url_parsing_picks_model_and_backend() -> None:
    t = parse_usb_url("usb://2457:4000?laser=785")
    assert (t.vid, t.pid, t.config.model.name, t.backend) == (0x2457, 0x4000, "ocean-sts", "seabreeze")
    t = parse_usb_url("usb://2457:4000?backend=pyusb&seabreeze_backend=pyseabreeze&laser=785")
    assert t.backend == "pyusb" and t.seabreeze_backend == "pyseabreeze"
    t = parse_usb_url("usb://1209:7a3e?serial=RE0001&integration=20&interface=1")
    assert (t.config.model.name, t.backend, t.serial, t.interface) == ("raman-edge-1024", "pyusb", "RE0001", 1)
    assert t.config.integration == 20.0 and t.name == "usb://1209:7a3e (serial RE0001)"


@pytest.mark.parametrize("bad,match", [
    ("usb://2457", "VID:PID"),
    ("usb://2457:40000", "VID:PID"),
    ("usb://zz57:4000", "VID:PID"),
    ("usb://1209:7a3e?backend=libusb", "backend='libusb'"),
    ("usb://1209:7a3e?backend=seabreeze", "for Ocean Insight devices"),
    ("usb://2457:4000?seabreeze_backend=fast", "cseabreeze or pyseabreeze"),
    ("usb://1209:7a3e?interface=x", "interface='x'"),
    ("usb://1209:7a3e?colour=red", "unknown option 'colour'"),
])
def test_bad_urls_name_the_problem(bad: str, match: str) -> None:
    with pytest.raises(SourceConfigError, match=match) as e:
        open_source(bad)
    assert isinstance(e.value, SourceError) and e.value.exit_code == 2  # configuration: no restart loop


# ------------------------------------------------------------------------------ missing extras
@pytest.mark.parametrize("url,module", [("usb://1209:7a3e", "pyusb"), ("usb://2457:4000?laser=785", "seabreeze")])
def test_missing_back_end_names_the_extra(monkeypatch, url: str, module: str) -> None:
    monkeypatch.setitem(sys.modules, "usb", None)  # import usb -> ImportError, installed or not
    monkeypatch.setitem(sys.modules, "seabreeze", None)
    src = open_source(url)  # building the source imports nothing
    assert isinstance(src, UsbSource)
    with pytest.raises(MissingExtraError) as e:
        src.open()
    assert e.value.extra == "usb" and e.value.module == module
    assert "pip install 'raman-edge[usb]'" in str(e.value)


# ------------------------------------------------------------------------------ a fake pyusb
class USBError(IOError):
    def __init__(self, strerror: str, error_code: int | None = None, errno: int | None = None) -> None:
        IOError.__init__(self, errno, strerror)
        self.backend_error_code = error_code


class USBTimeoutError(USBError):
    pass


class Endpoint:
    def __init__(self, address: int, attributes: int = 0x02, packet: int = 512) -> None:
        self.bEndpointAddress, self.bmAttributes, self.wMaxPacketSize = address, attributes, packet


class FakeUsbDevice:
    """Bulk endpoints 0x01 (OUT) and 0x81 (IN) wired to one end of a loopback pair."""

    def __init__(self, serial: str, vid: int = 0x1209, pid: int = 0x7A3E) -> None:
        self.idVendor, self.idProduct, self.serial, self.iSerialNumber = vid, pid, serial, 3
        self.host, self.board = LoopbackTransport.pair(f"fake usb {serial}")
        self.host.open()
        self.gone = False
        self.interface = [Endpoint(0x83, attributes=0x03), Endpoint(0x01), Endpoint(0x81)]  # interrupt first
        self.configured = False

    def is_kernel_driver_active(self, i: int) -> bool:
        return False

    def get_active_configuration(self):
        if not self.configured:
            raise USBError("Configuration not set")
        return {(0, 0): self.interface}

    def set_configuration(self) -> None:
        self.configured = True

    def _check(self) -> None:
        if self.gone:
            raise USBError("No such device (it may have been disconnected)", -4, 19)

    def read(self, address: int, size: int, timeout: int):
        self._check()
        assert address == 0x81 and size % 512 == 0 and timeout >= 1
        data = self.host.read(min(size, 512), timeout=timeout / 1000)  # one packet per transfer: fragmented
        self._check()
        if not data:
            raise USBTimeoutError("Operation timed out", -7, 110)
        return array("B", data)

    def write(self, address: int, data: bytes, timeout: int) -> int:
        self._check()
        assert address == 0x01
        return self.host.write(bytes(data))


def fake_pyusb(devices: list[FakeUsbDevice]) -> types.ModuleType:
    usb = types.ModuleType("usb")
    core = types.ModuleType("usb.core")
    util = types.ModuleType("usb.util")
    core.USBError, core.USBTimeoutError = USBError, USBTimeoutError
    core.NoBackendError = type("NoBackendError", (ValueError,), {})
    core.find = lambda find_all, idVendor, idProduct: [d for d in devices if (d.idVendor, d.idProduct) ==
                                                       (idVendor, idProduct) and not d.gone]
    util.ENDPOINT_IN, util.ENDPOINT_OUT, util.ENDPOINT_TYPE_BULK = 0x80, 0x00, 0x02
    util.endpoint_direction = lambda address: address & 0x80
    util.endpoint_type = lambda attributes: attributes & 0x03
    util.find_descriptor = lambda desc, custom_match: next((e for e in desc if custom_match(e)), None)
    util.claim_interface = util.release_interface = lambda dev, i: None
    util.dispose_resources = lambda dev: None
    util.get_string = lambda dev, index: dev.serial
    usb.core, usb.util = core, util
    return usb


@pytest.fixture
def usb_bus(monkeypatch):
    """Install a fake pyusb; ``plug(serial)`` attaches a simulated raman-edge board."""
    devices: list[FakeUsbDevice] = []
    boards: list[SimulatedInstrument] = []
    mod = fake_pyusb(devices)
    for name, m in (("usb", mod), ("usb.core", mod.core), ("usb.util", mod.util)):
        monkeypatch.setitem(sys.modules, name, m)

    def plug(serial: str, **kwargs) -> tuple[FakeUsbDevice, SimulatedInstrument]:
        dev = FakeUsbDevice(serial)
        inst = SimulatedInstrument(dev.board, **{"rate": 0, "seed": 3, **kwargs}).start()
        devices.append(dev)
        boards.append(inst)
        return dev, inst

    yield plug
    for inst in boards:
        inst.stop()
        inst.transport.close()


def test_bulk_transport_keeps_the_read_contract(usb_bus) -> None:
    dev, inst = usb_bus("RE0001")
    inst.stop()  # drive the other end by hand
    t = UsbBulkTransport(0x1209, 0x7A3E)
    t.open()
    assert dev.configured
    assert t.read(10, timeout=0.01) == b""
    dev.board.write(b"x" * 700)
    first = t.read(100, timeout=1)
    assert first == b"x" * 100  # the rest of the 512-byte packet is kept, not lost
    rest = b""
    while len(rest) < 600:
        rest += t.read(4096, timeout=1)
    assert rest == b"x" * 600
    t.write(b"hello")
    assert dev.board.read(5, timeout=1) == b"hello"
    dev.gone = True
    with pytest.raises(TransportError, match="bulk read failed"):
        t.read(1, timeout=0.01)
    t.close()
    with pytest.raises(TransportError, match="no such USB device"):
        UsbBulkTransport(0x1209, 0x7A3E, "RE0001").open()


def test_raman_edge_board_over_pyusb_end_to_end_with_unplug(usb_bus) -> None:
    usb_bus("OTHER")
    dev, inst = usb_bus("RE0001", corrupt_rate=0.05)
    src = open_source("usb://1209:7a3e?serial=RE0001&timeout=0.3&backoff=0.05&backoff_max=0.2")
    with src:
        first = [src.read(timeout=2) for _ in range(30)]
        assert all(a is not None and a.calibration is not None for a in first)
        got = [a.meta["board_seq"] for a in first]
        intact = {s.acquisition for s in inst.served if s.intact and s.acquisition <= got[-1]}
        assert set(got) == intact  # the serial number picked the right board; nothing intact lost
        dev.gone = True  # unplugged
        # Nothing served after the unplug can reach the host (the fake's read fails), but a frame whose
        # bytes were already in the host's buffers is good data and may still be delivered, once.
        in_flight = {s.acquisition for s in inst.served if s.intact and s.acquisition > got[-1]}
        late: list[int | None] = []
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            a = src.read(timeout=0.1)
            late.append(None if a is None else a.meta["board_seq"])
        delivered = [s for s in late if s is not None]
        assert late[-1] is None and late[:len(delivered)] == delivered  # only before the link went quiet
        assert set(delivered) <= in_flight and len(set(delivered)) == len(delivered)
        assert src.counters["disconnects"] == 1
        dev.gone = False  # plugged back
        dev.host.discard_input()
        second = [src.read(timeout=2) for _ in range(5)]
        c = src.counters
    assert all(a is not None for a in second) and c["reconnects"] == 1 and c["connect_failures"] >= 1


# ------------------------------------------------------------------------------ a fake python-seabreeze
class FakeSpectrometer:
    model, serial_number, pixels = "STS-VIS", "S12345", 1024
    fail_next = False
    opened = 0

    def __init__(self, device) -> None:
        type(self).opened += 1
        self.integration_us = None

    def integration_time_micros(self, us: int) -> None:
        self.integration_us = us

    def wavelengths(self) -> np.ndarray:
        p = np.arange(self.pixels, dtype=np.float64)
        return 534.78 + 0.0557 * p - 2.87e-6 * p**2

    def intensities(self, correct_dark_counts: bool = False, correct_nonlinearity: bool = False) -> np.ndarray:
        assert not correct_dark_counts and not correct_nonlinearity  # raw counts for the pipeline
        if FakeSpectrometer.fail_next:
            FakeSpectrometer.fail_next = False
            raise RuntimeError("SeaBreezeError: Data transfer error")
        return np.full(self.pixels, 1000.0) + np.arange(self.pixels)

    def close(self) -> None:
        pass


def test_ocean_device_through_seabreeze(monkeypatch) -> None:
    sb = types.ModuleType("seabreeze")
    spectrometers = types.ModuleType("seabreeze.spectrometers")
    used = []

    def use(backend: str) -> None:  # like seabreeze.use, and makes seabreeze.spectrometers importable after it
        used.append(backend)
        sys.modules["seabreeze.spectrometers"] = spectrometers

    sb.use = use
    spectrometers.list_devices = lambda: [types.SimpleNamespace(serial_number="S12345", model="STS-VIS")]
    spectrometers.Spectrometer = FakeSpectrometer
    sb.spectrometers = spectrometers
    monkeypatch.setitem(sys.modules, "seabreeze", sb)
    monkeypatch.setitem(sys.modules, "seabreeze.spectrometers", None)
    del sys.modules["seabreeze.spectrometers"]  # absent now; monkeypatch restores what was there before
    src = open_source("usb://2457:4000?laser=532&integration=20&seabreeze_backend=pyseabreeze&serial=S12345"
                      "&backoff=0.05")
    with src:
        a = src.read(timeout=2)
        FakeSpectrometer.fail_next = True  # a transfer error: seabreeze cannot say more, so the link is reopened
        b = [src.read(timeout=2) for _ in range(3)]
        c = src.counters
    assert used == ["pyseabreeze"]
    assert a.spectrum.intensities[:3].tolist() == [1000.0, 1001.0, 1002.0] and a.meta["integration_ms"] == 20.0
    p = np.arange(1024.0)
    assert np.allclose(a.calibration.wavelengths(p), FakeSpectrometer.wavelengths(FakeSpectrometer(None)), atol=1e-6)
    assert a.calibration.laser_nm == 532.0
    assert all(x is not None for x in b) and c["disconnects"] == 1 and c["reconnects"] == 1


def test_ocean_device_over_pyusb_speaks_our_obp(monkeypatch) -> None:
    """backend=pyusb for an OBP model: our OBPProtocol over the bulk transport (fake board answering OBP)."""
    dev = FakeUsbDevice("OCEAN1", vid=0x2457, pid=0x4000)
    mod = fake_pyusb([dev])
    for name, m in (("usb", mod), ("usb.core", mod.core), ("usb.util", mod.util)):
        monkeypatch.setitem(sys.modules, name, m)
    poly = (534.78, 0.0557, -2.87e-6, 1.1e-10)
    board = dev.board
    board.open()

    def answer(req: OBPMessage) -> OBPMessage:
        t, r = req.msg_type, req.regarding
        if t == OBPMsgType.SET_INTEGRATION_TIME_US:
            return OBPMessage(t, flags=0x0003, regarding=r)
        if t == OBPMsgType.GET_WAVELENGTH_COEFF_COUNT:
            return OBPMessage(t, flags=0x0001, regarding=r, immediate=bytes([len(poly)]))
        if t == OBPMsgType.GET_WAVELENGTH_COEFF:
            return OBPMessage(t, flags=0x0001, regarding=r, immediate=struct.pack("<f", poly[req.immediate[0]]))
        return OBPMessage(t, flags=0x0001, regarding=r, payload=np.arange(1024, dtype="<u2").tobytes())

    def serve() -> None:
        dec = OBPDecoder(100_000)
        while True:
            try:
                chunk = board.read(65536, timeout=0.2)
            except TransportError:
                return
            for req in dec.feed(chunk):
                board.write(answer(req).encode())

    threading.Thread(target=serve, daemon=True).start()
    try:
        with open_source("usb://2457:4000?backend=pyusb&laser=785&integration=15&timeout=0.5") as src:
            acqs = [src.read(timeout=2) for _ in range(3)]
            c = src.counters
    finally:
        board.close()
    assert [a.spectrum.intensities[5] for a in acqs] == [5.0, 5.0, 5.0]
    assert acqs[0].calibration.laser_nm == 785.0
    assert acqs[0].calibration.wavelength_poly == pytest.approx(poly, rel=1e-6)
    assert acqs[0].meta["integration_ms"] == 15.0 and acqs[0].meta["detector_temp_c"] is None
    assert c["handler_errors"] == 0 and c["spectra"] >= 3
