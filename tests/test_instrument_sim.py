"""SimulatedInstrument (the board's side of the raman-edge protocol), wire damage, and PtyTransport."""
from __future__ import annotations

import os
import zlib

import numpy as np
import pytest
import serial

from calibration.errors import SourceError
from firmware_bridge.devices import Device, get_model
from firmware_bridge.instrument import DAMAGE_KINDS, PtyTransport, SimulatedInstrument, damage_frame
from firmware_bridge.minerals import default_minerals
from firmware_bridge.protocol import (
    FrameDecoder, MsgType, NackCode, NackError, encode_frame, pack_integration, unpack_nack,
)
from firmware_bridge.transport import LoopbackTransport, TransportError


@pytest.fixture
def rig():
    """(device, instrument) over a loopback pair; everything closed afterwards."""
    made = []

    def make(**kwargs):
        host, end = LoopbackTransport.pair()
        inst = SimulatedInstrument(end, **{"rate": 0, "seed": 5, **kwargs}).start()
        dev = Device(host, inst.model, timeout=0.5, retries=0)
        made.append((dev, inst))
        return dev, inst

    yield make
    for dev, inst in made:
        dev.close()
        inst.stop()
        inst.transport.close()


def test_answers_info_integration_calibration_and_spectra(rig) -> None:
    dev, inst = rig()
    dev.open()
    assert dev.info.pixels == 1024 and dev.info.bytes_per_pixel == 2 and "simulated" in dev.info.identity
    dev.set_integration_time(250)
    assert inst.integration_us == 250_000
    cal = dev.read_axis_calibration()
    assert cal.wavelength_poly == pytest.approx(inst.calibration.wavelength_poly) and cal.laser_nm == 532.0
    r1, r2 = dev.request_spectrum(), dev.request_spectrum()
    assert (r1.seq, r2.seq) == (1, 2) and r1.integration_ms == 250.0 and r2.timestamp > r1.timestamp > 0
    assert -11 < r1.temperature_c < -9
    # Byte-exact, and what the record says was sent.
    assert [s.crc for s in inst.served] == [zlib.crc32(r.counts.tobytes()) for r in (r1, r2)]
    assert all(s.intact and s.damage is None for s in inst.served)
    assert inst.served[0].mineral in set(default_minerals())
    # It looks like a Raman spectrum on a dark offset: a few strong bands well above the floor.
    counts = r1.counts.astype(float)
    assert counts.min() > 500 and counts.max() > np.median(counts) + 500  # dark offset ≈ 800 counts


def test_longer_integration_means_more_signal(rig) -> None:
    dev, _ = rig(sim_options={"fluorescence": 0, "noise": 0, "spike": 0})
    dev.open()
    dev.set_integration_time(50)
    low = np.mean([np.ptp(dev.request_spectrum().counts.astype(float)) for _ in range(6)])
    dev.set_integration_time(400)
    high = np.mean([np.ptp(dev.request_spectrum().counts.astype(float)) for _ in range(6)])
    assert high > 3 * low


def test_refusals_are_proper_nacks(rig) -> None:
    dev, inst = rig()
    dev.open()
    with pytest.raises(NackError) as e:
        dev.protocol.set_integration_time_us(10)  # below the model's 1 ms, bypassing the host check
    assert e.value.reason == "OUT_OF_RANGE"
    with pytest.raises(NackError) as e:
        dev.protocol.query(MsgType(0x06), expect=MsgType.ACK)  # a board-to-host type sent to the board
    assert e.value.reason == "UNKNOWN_TYPE"
    with pytest.raises(NackError) as e:
        dev.protocol.query(MsgType.REQUEST_SPECTRUM, b"x", expect=MsgType.SPECTRUM)
    assert e.value.reason == "BAD_LENGTH"
    assert inst.counters["nacks_sent"] == 3 and inst.counters["spectra_served"] == 0


def test_a_damaged_request_is_answered_nack_bad_frame_with_seq_zero() -> None:
    host, end = LoopbackTransport.pair()
    inst = SimulatedInstrument(end, rate=0, seed=1)
    end.open()
    host.open()
    bad = bytearray(encode_frame(MsgType.SET_INTEGRATION, 7, pack_integration(100_000)))
    bad[-1] ^= 0xFF
    inst.handle_bytes(bytes(bad))
    frames = FrameDecoder().feed(host.read(4096, timeout=1))
    assert len(frames) == 1 and frames[0].seq == 0 and frames[0].msg_type == MsgType.NACK
    assert unpack_nack(frames[0].payload)[1] == NackCode.BAD_FRAME
    assert inst.counters["bad_frames_received"] == 1


@pytest.mark.parametrize("kind", DAMAGE_KINDS)
def test_each_damage_kind_does_what_it_says(kind: str) -> None:
    rng = np.random.default_rng(0)
    raw = encode_frame(MsgType.SPECTRUM, 9, bytes(range(256)) * 4)
    for _ in range(50):
        out = damage_frame(raw, kind, rng)
        dec = FrameDecoder()
        frames = dec.feed(out) + dec.flush()
        if kind == "garbage":
            assert out.endswith(raw) and 1 <= len(out) - len(raw) <= 64
            assert frames[-1].encode() == raw  # the frame itself is untouched
        else:
            assert frames == []  # a damaged frame never decodes
            assert {"flip": len(out) == len(raw), "drop": len(out) == len(raw) - 1,
                    "truncate": 1 <= len(out) < len(raw)}[kind]
            if kind == "flip":
                assert sum(a != b for a, b in zip(out, raw)) == 1


def test_corruption_rate_and_record() -> None:
    host, end = LoopbackTransport.pair()
    inst = SimulatedInstrument(end, rate=0, seed=11, corrupt_rate=0.2)
    host.open()
    end.open()
    dec = FrameDecoder(get_model("raman-edge-1024").max_payload)
    received = []
    for seq in range(1, 201):
        inst.handle_bytes(encode_frame(MsgType.REQUEST_SPECTRUM, seq))
        received += dec.feed(host.read(1 << 20, timeout=1))
    received += dec.flush()
    c = inst.counters
    assert c["spectra_served"] == len(inst.served) == 200 and c["frames_sent"] == 200
    assert sum(c["damage"].values()) == c["frames_damaged"]
    assert all(v > 0 for v in c["damage"].values()), c["damage"]
    assert 0.1 < c["frames_damaged"] / c["frames_sent"] < 0.3
    # The record is the ground truth: exactly the intact frames decode, byte-exact.
    intact = [s for s in inst.served if s.intact]
    assert [f.seq for f in received] == [s.seq for s in intact]
    assert c["spectra_damaged"] == 200 - len(intact) == len(inst.damaged_acquisitions())
    assert [zlib.crc32(f.payload[24:]) for f in received] == [s.crc for s in intact]


def test_count_stops_the_instrument(rig) -> None:
    dev, inst = rig(count=3)
    dev.open()
    for _ in range(3):
        dev.request_spectrum()
    inst._thread.join(2)
    assert inst.done and not inst.is_alive()
    with pytest.raises(SourceError):
        dev.request_spectrum(timeout=0.2)


def test_bad_parameters_are_refused() -> None:
    end = LoopbackTransport()
    for kwargs in ({"corrupt_rate": 1.5}, {"rate": -1}, {"count": 0}, {"damage_kinds": ("melt",)},
                   {"model": "ocean-sts"}):
        with pytest.raises(SourceError):
            SimulatedInstrument(end, **kwargs)


def test_pty_transport_is_a_raw_serial_port_under_a_stable_link(tmp_path) -> None:
    link = tmp_path / "ttyRE"
    pty = PtyTransport(link=link)
    pty.open()
    try:
        assert os.readlink(link) == pty.slave_path
        port = serial.Serial(str(link), 115200, timeout=1)
        every_byte = bytes(range(256))  # CR, LF, XON/XOFF, ^C ... must all pass unchanged
        pty.write(every_byte)
        assert port.read(256) == every_byte
        port.write(every_byte[::-1])
        port.flush()
        got = b""
        while len(got) < 256:
            got += pty.read(4096, timeout=1)
        assert got == every_byte[::-1]
        # The host closing and reopening the port does not hang the instrument's end up.
        port.close()
        assert pty.read(10, timeout=0.05) == b""
        port = serial.Serial(str(link), 115200, timeout=1)
        pty.write(b"again")
        assert port.read(5) == b"again"
        port.close()
    finally:
        pty.close()
    assert not link.exists() and not link.is_symlink()
    with pytest.raises(TransportError):
        pty.read(1, timeout=0)


def test_pacing_by_rate(rig) -> None:
    import time

    dev, _ = rig(rate=20)
    dev.open()
    t = time.monotonic()
    for _ in range(5):
        dev.request_spectrum()
    assert time.monotonic() - t >= 4 / 20 * 0.9
