"""The staged daemon: bounded queues, deferral instead of loss, supervision, storage failure, status."""
from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from calibration.errors import StorageError
from calibration.spectrum import Spectrum
from edge.bundle import load_bundle
from edge.daemon import Daemon
from edge.health import Events, Health, Watchdog
from edge.pipeline import Pipeline
from edge.status import StatusServer, query
from edge.store import ResultLog
from firmware_bridge.source import Acquisition, Source

from .conftest import BANDS, synth


class ListSource(Source):
    """Hands out prepared acquisitions as fast as asked; optionally hangs once."""

    def __init__(self, n: int, hang_at: int | None = None, hang_s: float = 0.0) -> None:
        super().__init__("list://")
        self.n, self.hang_at, self.hang_s = n, hang_at, hang_s
        self.i = 0
        self.opens = 0
        rng = np.random.default_rng(0)
        axis = np.linspace(150, 1700, 700)
        minerals = list(BANDS)
        self.items = [Acquisition(seq=i, spectrum=Spectrum(synth(minerals[i % 4], axis, rng), axis),
                                  acquired_at=1.7e9 + i, source=self.url, truth=minerals[i % 4]) for i in range(n)]

    def open(self) -> None:
        self.opens += 1

    def close(self) -> None:
        pass

    def read(self, timeout: float | None = None) -> Acquisition | None:
        if self.i >= self.n:
            raise StopIteration
        if self.hang_at is not None and self.i == self.hang_at:
            self.hang_at = None
            time.sleep(self.hang_s)  # a driver call that does not return in time
        acq = self.items[self.i]
        self.i += 1
        return acq


class SlowPipeline(Pipeline):
    """Sleeps ``delay`` per spectrum; with ``hold_until``, the first call also waits (≤ 5 s) for that predicate."""

    def __init__(self, bundle, delay: float, hold_until=None) -> None:
        super().__init__(bundle)
        self.delay, self.hold_until = delay, hold_until

    def process(self, acq):
        if self.hold_until is not None:
            deadline = time.monotonic() + 5
            while not self.hold_until() and time.monotonic() < deadline:
                time.sleep(0.005)
            self.hold_until = None
        time.sleep(self.delay)
        return super().process(acq)


def _statuses(db: Path) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT seq, status, label, truth FROM results ORDER BY seq").fetchall()
    finally:
        con.close()


def test_saturated_classifier_defers_but_loses_nothing(tmp_path: Path, test_bundle: Path) -> None:
    db = tmp_path / "d.sqlite"
    src = ListSource(60)
    # The classifier holds its first spectrum until the source is drained, so the overflow does not
    # depend on how the host schedules the threads.
    d = Daemon(src, SlowPipeline(load_bundle(test_bundle), 0.01, hold_until=lambda: src.i >= src.n),
               ResultLog(db), classify_queue=2)
    c = d.run(install_signal_handlers=False)
    rows = _statuses(db)
    assert len(rows) == 60 and sorted(r[0] for r in rows) == list(range(60))
    assert c.deferred > 0, "the tiny classify queue must have overflowed"
    assert c.deferred_done == c.deferred
    assert all(r[1] == "classified" and r[2] == r[3] for r in rows)  # deferred rows were classified later


def test_deferred_rows_from_a_previous_run_are_completed_at_start(tmp_path: Path, test_bundle: Path) -> None:
    db = tmp_path / "d.sqlite"
    store = ResultLog(db)
    src = ListSource(3)
    from edge.daemon import deferred_record

    store.append_many([deferred_record(a) for a in src.items])
    assert store.count_deferred() == 3
    store.close()
    d = Daemon(ListSource(0), Pipeline(load_bundle(test_bundle)), ResultLog(db))
    d.run(install_signal_handlers=False)
    assert [r[1] for r in _statuses(db)] == ["classified"] * 3


def test_hung_source_stops_watchdog_and_is_restarted(tmp_path: Path, test_bundle: Path) -> None:
    wd = Watchdog(path=tmp_path / "wd", systemd=False)
    src = ListSource(10, hang_at=3, hang_s=1.5)
    d = Daemon(src, Pipeline(load_bundle(test_bundle)), ResultLog(tmp_path / "h.sqlite"), watchdog=wd,
               watchdog_interval=0.05, stall_after=0.3, restart_after=0.6)
    strokes: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            strokes.append((time.monotonic(), wd.strokes))
            time.sleep(0.02)

    t = threading.Thread(target=sample)
    t.start()
    t0 = time.monotonic()
    c = d.run(install_signal_handlers=False)
    stop.set()
    t.join()
    assert d.events.as_dict().get("loop_stalled", 0) >= 1
    assert d.events.as_dict().get("loop_restarted", 0) >= 1
    assert src.opens >= 2  # restart reopened the source
    # No stroke while the acquire loop was stalled (between stall detection and restart).
    during = [n for ts, n in strokes if t0 + 0.5 < ts < t0 + 0.6]
    assert len(set(during)) <= 1
    assert c.acquired >= 9  # the stream resumed after the restart


def test_storage_failure_stops_with_clear_error_and_keeps_rows(tmp_path: Path, test_bundle: Path) -> None:
    db = tmp_path / "s.sqlite"
    store = ResultLog(db)

    def break_disk_after_20(result, row_id: int) -> None:  # runs in the writer, after a commit
        if row_id >= 20:
            store.db.execute("PRAGMA query_only=ON")  # every further write fails like a read-only mount

    d = Daemon(ListSource(200), SlowPipeline(load_bundle(test_bundle), 0.002), store, on_result=break_disk_after_20)
    with pytest.raises(StorageError, match="cannot write"):
        d.run(install_signal_handlers=False)
    store.close()
    committed = d.counters.committed
    assert 20 <= committed < 200
    assert len(_statuses(db)) == committed
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_status_socket_serves_live_snapshot(tmp_path: Path, test_bundle: Path) -> None:
    state = tmp_path / "st"
    d = Daemon(ListSource(5000), SlowPipeline(load_bundle(test_bundle), 0.001), ResultLog(tmp_path / "q.sqlite"))
    server = StatusServer(state, d.snapshot)
    server.start()
    t = threading.Thread(target=d.run, kwargs={"install_signal_handlers": False})
    t.start()
    try:
        time.sleep(0.5)
        s = query(state)
        assert s["model_id"] == d.model_id
        assert s["counters"]["acquired"] > 0 and s["counters"]["uptime_s"] > 0
        assert set(s["queues"]) >= {"classify", "write", "downlink"}
        assert set(s["health"]) == {"acquire", "classify", "write"}
    finally:
        d.stop()
        t.join(10)
        server.stop()
    from calibration.errors import RamanEdgeError

    with pytest.raises(RamanEdgeError, match="no daemon is running"):
        query(state)


def test_health_requires_every_loop() -> None:
    now = [0.0]
    h = Health(events=Events(clock=lambda: now[0]), clock=lambda: now[0])
    h.register("a", 1.0)
    h.register("b", 1.0)
    now[0] = 0.5
    h.beat("a")
    assert h.stalled() == {}
    now[0] = 1.2
    h.beat("a")
    assert set(h.stalled()) == {"b"}
    h.beat("b")
    assert h.stalled() == {}


def test_events_are_counted_and_throttled(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    ev = Events(interval=10.0, clock=lambda: now[0])
    with caplog.at_level("WARNING"):
        for i in range(100):
            now[0] = i * 0.1
            ev.note("bad_crc", "frame dropped")
    assert ev.as_dict() == {"bad_crc": 100}
    assert len([r for r in caplog.records if "bad_crc" in r.getMessage()]) == 1
    now[0] = 20.0
    with caplog.at_level("WARNING"):
        ev.note("bad_crc", "frame dropped")
    assert "99 more since the last report" in caplog.records[-1].getMessage()


def test_shipped_deployment_files_are_consistent() -> None:
    """The example rover config parses with every check, and the unit runs that config."""
    from edge.config import load_config

    deploy = Path(__file__).resolve().parents[1] / "edge" / "deploy"
    cfg = load_config(deploy / "raman-edge.toml")
    assert cfg["store.synchronous"] == "FULL" and cfg["model.allow_unsigned"] is False
    unit = (deploy / "raman-edge.service").read_text()
    assert "Type=notify" in unit and "WatchdogSec=" in unit and "RestartPreventExitStatus=2 3" in unit
    assert "--config /etc/raman-edge/raman-edge.toml" in unit


def test_systemd_notify_protocol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    path = str(tmp_path / "notify")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    srv.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    wd = Watchdog(path=tmp_path / "wd")
    wd.ready()
    wd.stroke()
    assert srv.recv(64) == b"READY=1" and srv.recv(64) == b"WATCHDOG=1"
    assert (tmp_path / "wd").exists() and wd.strokes == 1
    srv.close()


def test_disk_full_stops_with_storage_error(tmp_path: Path, test_bundle: Path) -> None:
    """SQLITE_FULL (here: a page limit, as a full partition behaves) → clear StorageError, rows kept."""
    db = tmp_path / "full.sqlite"
    store = ResultLog(db)
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count={pages + 300}")
    d = Daemon(ListSource(2000), Pipeline(load_bundle(test_bundle)), store)
    with pytest.raises(StorageError, match="full"):
        d.run(install_signal_handlers=False)
    store.close()
    n = len(_statuses(db))
    assert 0 < n == d.counters.committed < 2000
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_events_from_other_threads_are_logged_by_the_writer(tmp_path: Path, test_bundle: Path) -> None:
    """A refused model update (noted by the model watcher's thread) becomes an event row."""
    db = tmp_path / "ev.sqlite"
    store = ResultLog(db)
    assert store.events() == []  # a fresh file has no events table yet, and reads as empty
    d = Daemon(ListSource(20, hang_at=5, hang_s=1.0), Pipeline(load_bundle(test_bundle)), store)
    t = threading.Thread(target=d.run, kwargs={"install_signal_handlers": False})
    t.start()
    deadline = time.monotonic() + 30
    while d.counters.acquired < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    threading.Thread(target=d.log_event, args=("model_refused", "m2: not signed", {"entry": "m2"})).start()
    t.join(60)
    assert not t.is_alive()
    store.close()
    with ResultLog(db) as again:
        events = again.events("model_refused")
        assert again.count() == 20
    assert [(e["kind"], e["message"], e["details"]) for e in events] == [("model_refused", "m2: not signed",
                                                                          {"entry": "m2"})]
    assert events[0]["logged_utc"].endswith("Z")
