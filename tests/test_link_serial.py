"""serial:// over real pseudo-terminals: the simulated instrument on the master side, LinkSource on /dev/pts/N."""
from __future__ import annotations

import random
import time
import zlib
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest

from calibration.errors import ConfigError, SourceConfigError, SourceError
from firmware_bridge.devices import get_model
from firmware_bridge.instrument import PtyTransport, SimulatedInstrument
from firmware_bridge.link import LinkSource, SerialSource, backoff_delay, parse_serial_url
from firmware_bridge.protocol import Frame, MsgType, NackCode, pack_nack, pack_spectrum
from firmware_bridge.source import open_source


@pytest.fixture
def board(tmp_path: Path):
    """``start(**kwargs)`` plays an instrument on a new pty linked at ``tmp_path/ttyRE``; all stopped afterwards."""
    started: list[SimulatedInstrument] = []

    def start(transport: PtyTransport | None = None, **kwargs) -> SimulatedInstrument:
        pty = transport or PtyTransport(link=tmp_path / "ttyRE")
        inst = SimulatedInstrument(pty, **{"rate": 0, "seed": 1, **kwargs}).start()
        started.append(inst)
        return inst

    yield start
    for inst in started:
        inst.stop()
        inst.transport.close()


def url(tmp_path: Path, **options) -> str:
    opts = {"timeout": 0.3, **options}
    return f"serial://{quote(str(tmp_path / 'ttyRE'))}?" + "&".join(f"{k}={v}" for k, v in opts.items())


def collect(src, n: int, within: float = 20.0) -> list:
    out, deadline = [], time.monotonic() + within
    while len(out) < n and time.monotonic() < deadline:
        acq = src.read(timeout=0.2)
        if acq is not None:
            out.append(acq)
    assert len(out) == n, f"only {len(out)} of {n} spectra in {within} s; {src.counters}"
    return out


def check_nothing_intact_was_lost(acqs: list, inst: SimulatedInstrument) -> set[int]:
    """Received = the intact spectra served up to the last one received, byte-exact; returns the damaged ones."""
    inst.stop()  # its record is complete
    got = [a.meta["board_seq"] for a in acqs]
    assert got == sorted(set(got)), "duplicated or reordered spectra"
    last = got[-1]
    served = {s.acquisition: s for s in inst.served if s.acquisition <= last}
    intact = {a for a, s in served.items() if s.intact}
    assert set(got) == intact
    for a in acqs:
        assert zlib.crc32(a.spectrum.intensities.astype(np.uint16).tobytes()) == served[a.meta["board_seq"]].crc
    return set(served) - intact


def test_spectra_arrive_with_the_boards_calibration_and_no_truth(board, tmp_path: Path) -> None:
    inst = board()
    src = open_source(url(tmp_path, integration=50))
    assert isinstance(src, SerialSource)
    with src:
        assert inst.integration_us == 50_000  # set on connect
        acqs = collect(src, 20)
        counters = src.counters
    cal = inst.calibration
    for i, a in enumerate(acqs):
        assert a.seq == i and a.truth is None and a.source == src.url
        assert a.spectrum.unit == "pixel" and a.spectrum.intensities.size == 1024
        assert a.calibration.wavelength_poly == pytest.approx(cal.wavelength_poly)
        assert a.calibration.laser_nm == cal.laser_nm and a.calibration.pixels == 1024
        assert np.allclose(a.calibration.raman_shift(np.arange(1024.0)), cal.raman_shift(np.arange(1024.0)))
        assert a.meta["integration_ms"] == 50.0 and -11 < a.meta["detector_temp_c"] < -9
        assert a.meta["board_seq"] == i + 1 and a.meta["lost_before"] == 0 and not a.meta["late_reply"]
        assert not {"mineral", "axis_offset_cm1", "signal_counts"} & set(a.meta)  # nothing the board cannot know
        assert a.meta["received_monotonic"] <= time.monotonic()
    stamps = [a.meta["board_timestamp_s"] for a in acqs]
    assert stamps == sorted(stamps) and stamps[0] > 0
    check_nothing_intact_was_lost(acqs, inst)
    assert counters["handler_errors"] == counters["lost_spectra"] == counters["retries"] == 0
    assert counters["disconnects"] == counters["reconnects"] == 0


@pytest.mark.parametrize("rate,n", [(0.01, 400), (0.15, 150)])
def test_damaged_replies_are_counted_and_no_intact_spectrum_is_lost(board, tmp_path: Path, rate: float,
                                                                    n: int) -> None:
    inst = board(corrupt_rate=rate, seed=7)
    with open_source(url(tmp_path, idle=0.05)) as src:
        acqs = collect(src, n)
        c = src.counters
    damaged = check_nothing_intact_was_lost(acqs, inst)
    assert damaged, "the test needs some damage"
    assert c["lost_spectra"] == len(damaged)  # gaps in the board's numbering = damaged spectra, exactly
    assert c["damaged_replies"] >= len(damaged) and c["retries"] >= len(damaged)
    assert c["disconnects"] == 0 and c["protocol"]["bad_crc"] > 0


class SlowPty(PtyTransport):
    """Sends every 5th spectrum in two halves with a pause longer than the host's ``idle``: a slow link."""

    def __init__(self, *args, pause: float = 0.15, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pause, self.n = pause, 0

    def write(self, data: bytes) -> int:
        if len(data) > 1000:
            self.n += 1
            if self.n % 5 == 0:
                super().write(data[:600])
                time.sleep(self.pause)
                super().write(data[600:])
                return len(data)
        return super().write(data)


def test_a_slow_reply_given_up_on_is_still_delivered(board, tmp_path: Path) -> None:
    inst = board(SlowPty(link=tmp_path / "ttyRE"))
    with open_source(url(tmp_path, idle=0.05)) as src:
        acqs = collect(src, 20)
        c = src.counters
    # The host retried too early, yet every spectrum the board measured arrived, none twice.
    assert c["damaged_replies"] > 0 and c["late_replies"] > 0
    assert check_nothing_intact_was_lost(acqs, inst) == set()
    assert c["lost_spectra"] == 0 and sum(a.meta["late_reply"] for a in acqs) == c["late_replies"]


def test_unplug_and_replug_reconnects_with_backoff_and_resumes(board, tmp_path: Path) -> None:
    first = board(seed=1)
    with open_source(url(tmp_path, backoff=0.05, backoff_max=0.4)) as src:
        before = collect(src, 25)
        # Unplug: the port vanishes under the reader (EIO), and so does its name.
        first.stop()
        first.transport.close()
        assert not (tmp_path / "ttyRE").exists()
        down = time.monotonic()
        nones = 0
        while time.monotonic() - down < 0.8:
            acq = src.read(timeout=0.1)  # never raises while the link is down
            if acq is None:
                nones += 1
            else:
                before.append(acq)  # acquired before the unplug, still buffered
        assert nones >= 4 and src.state == "reconnecting"
        assert src.counters["disconnects"] == 1 and src.counters["connect_failures"] >= 2
        # Plug a board back in under the same name.
        second = board(seed=2)
        after = collect(src, 25)
        c = src.counters
    assert c["reconnects"] == 1 and c["disconnects"] == 1 and c["state"] == "connected"
    assert c["reconnect_attempts"] == c["connect_failures"] + 1
    # Back-off: capped exponential from 0.05 s, so ~5 failed attempts in 0.8 s rather than a busy loop.
    assert 2 <= c["connect_failures"] <= 12
    assert c["board_restarts"] == 1  # the new board counts from 1 again
    assert [a.seq for a in before + after] == list(range(len(before) + 25)) and len(before) <= 25 + 3
    assert all(a.calibration is not None for a in after)
    check_nothing_intact_was_lost(after, second)


def test_handler_errors_do_not_stop_the_stream(board, tmp_path: Path) -> None:
    def faults(req: Frame, reply: Frame) -> Frame:
        if req.msg_type != MsgType.REQUEST_SPECTRUM:
            return reply
        if req.seq % 5 == 0:
            return Frame(MsgType.NACK, req.seq, pack_nack(req.msg_type, NackCode.READOUT_TIMEOUT, 0, "CCD timeout"))
        if req.seq % 7 == 0:  # a spectrum of the wrong size: the firmware's bug, not the wire's
            return Frame(MsgType.SPECTRUM, req.seq, pack_spectrum(np.zeros(10, np.uint16), integration_us=1))
        return reply

    board(hook=faults)
    with open_source(url(tmp_path)) as src:
        acqs = collect(src, 40)
        c = src.counters
    assert c["nack"] > 0 and c["protocol_error"] > 0 and c["handler_errors"] == c["nack"] + c["protocol_error"]
    assert c["disconnects"] == 0 and all(a.spectrum.intensities.size == 1024 for a in acqs)


def test_a_silent_board_is_a_dead_link_and_is_reopened(board, tmp_path: Path) -> None:
    mute = {"on": False}

    def hook(req: Frame, reply: Frame) -> Frame | None:
        return None if mute["on"] and req.msg_type == MsgType.REQUEST_SPECTRUM else reply

    board(hook=hook)
    with open_source(url(tmp_path, timeout=0.1, retries=0, integration=1, silence=2, backoff=0.05)) as src:
        collect(src, 3)
        mute["on"] = True
        deadline = time.monotonic() + 5
        after_mute = 0
        while src.counters["disconnects"] == 0 and time.monotonic() < deadline:
            after_mute += src.read(timeout=0.1) is not None
        # a request already answered when the board fell silent may still be read (late, under load): at most one
        assert after_mute <= 1
        mute["on"] = False
        collect(src, 3)
        c = src.counters
    assert c["silent"] >= 2 and c["disconnects"] >= 1 and c["reconnects"] >= 1


def test_open_fails_fast_unless_told_to_wait(board, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="cannot open serial port") as e:
        open_source(url(tmp_path)).open()
    # An absent instrument is transient (exit 1, a restart may find it), not a configuration error.
    assert not isinstance(e.value, ConfigError) and e.value.exit_code == 1
    src = open_source(url(tmp_path, wait=1, backoff=0.05, backoff_max=0.2))
    with src:
        assert src.read(timeout=0.3) is None and src.state == "connecting"
        board()
        assert len(collect(src, 3)) == 3
        c = src.counters
    assert c["connect_failures"] >= 1 and c["reconnects"] == 0


def test_open_refuses_a_board_of_another_model(board, tmp_path: Path) -> None:
    board(model=replace(get_model("raman-edge-1024"), name="raman-edge-512", pixels=512))
    with pytest.raises(SourceError, match="does not match model raman-edge-1024"):
        open_source(url(tmp_path)).open()


def test_prefetch_bounds_what_is_asked_ahead_of_the_reader(board, tmp_path: Path) -> None:
    inst = board()
    with open_source(url(tmp_path, prefetch=2)) as src:
        collect(src, 3)
        time.sleep(0.3)
        served = inst.counters["spectra_served"]
    # 3 read, 2 buffered, at most one more in hand: a slow reader slows the board, nothing piles up.
    assert served <= 6
    assert src.counters["discarded_on_close"] <= 3


@pytest.mark.parametrize("bad,match", [
    ("serial://?baud=9600", "names no port"),
    ("serial:///dev/ttyS0?baud=fast", "baud='fast'"),
    ("serial:///dev/ttyS0?speed=9600", "unknown option 'speed'"),
    ("serial:///dev/ttyS0?model=raman-edge-9", "raman-edge-9"),
    ("serial:///dev/ttyS0?protocol=obp&model=raman-edge-1024", "speaks 'raman-edge'"),
    ("serial:///dev/ttyS0?protocol=xmodem", "unknown protocol"),
    ("serial:///dev/ttyS0?integration=0.5", "outside raman-edge-1024"),
    ("serial:///dev/ttyS0?backoff=10&backoff_max=5", "exceeds backoff_max"),
    ("serial:///dev/ttyS0?wait=maybe", "wait='maybe'"),
])
def test_bad_urls_name_the_problem(bad: str, match: str) -> None:
    with pytest.raises(SourceConfigError, match=match) as e:
        open_source(bad)
    assert isinstance(e.value, SourceError) and e.value.exit_code == 2  # configuration: no restart loop


def test_url_parsing() -> None:
    port, cfg = parse_serial_url("serial:///dev/serial/by-id/usb-raman%20edge?baud=9600&integration=250&protocol=obp"
                                 "&laser=785")
    assert port == "/dev/serial/by-id/usb-raman edge"
    assert (cfg.baud, cfg.integration, cfg.model.name, cfg.laser) == (9600, 250.0, "ocean-sts", 785.0)
    _, cfg = parse_serial_url("serial://COM3")
    assert cfg.model.name == "raman-edge-1024" and cfg.baud == 115200 and cfg.retries == 3


def test_backoff_is_capped_exponential_with_jitter() -> None:
    rng = random.Random(0)
    for n in range(1, 12):
        top = min(5.0, 0.1 * 2 ** (n - 1))
        draws = [backoff_delay(n, 0.1, 5.0, rng) for _ in range(50)]
        assert all(top / 2 <= d <= top for d in draws)
        assert len(set(draws)) > 40  # jittered
    assert backoff_delay(10_000, 0.1, 5.0) <= 5.0


def test_read_before_open_is_an_error_and_close_is_idempotent(tmp_path: Path) -> None:
    src = open_source(url(tmp_path))
    assert isinstance(src, LinkSource) and src.state == "closed"
    with pytest.raises(SourceError, match="not open"):
        src.read(timeout=0)
    src.close()
    src.close()
