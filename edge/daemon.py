"""The `raman-edge run` daemon: acquire → classify → log → downlink queue.

Three loops in threads, joined by bounded queues with explicit overflow rules:

* **acquire** reads the source.  When the classify queue is full the spectrum is
  handed to the writer as a *deferred* raw row: measured data is never dropped,
  and the classifier works through deferred rows from the database when idle.
  When the write queue is full, acquisition waits (back-pressure to the source).
* **classify** calibrates, preprocesses and classifies (:class:`Pipeline`), and
  swaps in a newly installed model *between* two spectra.
* **write** commits results in batches (one transaction, one fsync per batch) and
  only then reports them: a printed line is an acknowledged row.

The main thread supervises (F Prime Health style): every loop beats; the watchdog
is stroked only while all of them do; a stalled classify or acquire loop is
restarted past a limit; a storage failure stops the daemon with a clear error
instead of a crash loop, naming the spectra in hand that could therefore not be
logged (never acknowledged, so never printed).  SIGINT/SIGTERM drain the queues and
stop cleanly.  A daemon holds its database's writer lock for its whole run: a
second daemon on the same file is refused, whatever its state directory.
"""
from __future__ import annotations

import heapq
import logging
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from calibration.errors import RamanEdgeError, StorageError
from firmware_bridge.source import Acquisition, Source

from .health import Events, Health, Watchdog
from .pipeline import Pipeline, Result
from .store import ResultLog

log = logging.getLogger(__name__)

_POLL = 0.2  # seconds a loop waits for work before beating again


@dataclass
class Counters:
    acquired: int = 0
    classified: int = 0
    errors: int = 0
    deferred: int = 0
    deferred_done: int = 0
    committed: int = 0
    batches: int = 0
    source_errors: int = 0
    write_waits: int = 0
    model_swaps: int = 0
    unlogged: int = 0  # acquired but never committed: the database failed first
    started: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict[str, float]:
        d = {k: v for k, v in self.__dict__.items() if k != "started"}
        d["uptime_s"] = round(time.monotonic() - self.started, 3)
        return d


def result_record(result: Result, model_id: str) -> dict[str, Any]:
    """The store's row fields for one pipeline result."""
    acq = result.acquisition
    pred = result.prediction
    meta = dict(acq.meta)
    meta["timings_ms"] = {k: round(v, 3) for k, v in result.timings_ms.items()}
    if pred is not None and pred.novelty is not None:
        # in meta, not a column: older logs and pass files stay readable without a migration
        meta["novelty"] = round(pred.novelty, 5)
    return dict(
        acquired_at=acq.acquired_at, source=acq.source, seq=acq.seq, axis_unit=acq.spectrum.unit,
        axis=acq.spectrum.axis, spectrum=acq.spectrum.intensities,
        status="classified" if pred is not None else "error", error=result.error, model_id=model_id,
        calibration_id=result.calibration_id, calibration=acq.calibration, calibrations=result.calibrations,
        topk=list(zip(pred.classes, pred.probabilities)) if pred is not None else None,
        priority=result.priority, reasons=result.reasons, truth=acq.truth, meta=meta,
    )


def deferred_record(acq: Acquisition) -> dict[str, Any]:
    """A raw row for a spectrum whose classification is deferred (classifier saturated)."""
    return dict(acquired_at=acq.acquired_at, source=acq.source, seq=acq.seq, axis_unit=acq.spectrum.unit,
                axis=acq.spectrum.axis, spectrum=acq.spectrum.intensities, status="deferred",
                calibration=acq.calibration, truth=acq.truth, meta=dict(acq.meta), priority=0)


def log_result(store: ResultLog, result: Result, model_id: str, downlink: bool = True) -> int:
    """Commit one result outside the daemon (bench); returns the row id.

    ``downlink=False`` logs it as a row no downlink pass carries (a replay, not a field result).
    """
    return store.append_many([dict(result_record(result, model_id), downlink=downlink)])[0]


def seq_summary(seqs: list[int], show: int = 4) -> str:
    """The numbers as ranges: ``seq 4-9, 12, 15-20`` (the first ``show`` ranges, then how many more)."""
    runs: list[list[int]] = []
    for n in sorted(set(seqs)):
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    if not runs:
        return "none"
    text = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs[:show])
    return f"seq {text}" + (f" and {len(runs) - show} more ranges" if len(runs) > show else "")


class DownlinkQueue:
    """Bounded in-memory priority queue of committed rows (priority, then time).

    The database holds every row; this queue only keeps the best ``capacity`` at
    hand for the next pass.  When full, the lowest-ranked entry is evicted (and
    counted): it stays in the database for a later pass.
    """

    def __init__(self, capacity: int, events: Events) -> None:
        self.capacity = capacity
        self.events = events
        self._heap: list[tuple[int, float, int]] = []  # min-heap on rank: (priority, -time, row)
        self._lock = threading.Lock()

    def push(self, row_id: int, priority: int, acquired_at: float) -> None:
        with self._lock:
            item = (priority, -acquired_at, row_id)
            if len(self._heap) < self.capacity:
                heapq.heappush(self._heap, item)
            else:
                evicted = heapq.heappushpop(self._heap, item)
                self.events.note("downlink_queue_evicted", f"row {evicted[2]} left to a later pass", logging.DEBUG)

    def __len__(self) -> int:
        with self._lock:
            return len(self._heap)

    def top(self, n: int = 5) -> list[dict[str, Any]]:
        with self._lock:
            best = heapq.nlargest(n, self._heap)
        return [{"row": r, "priority": p} for p, _, r in best]


class HotSwap:
    """Loads newly installed models beside the running one, off the classify loop.

    A background thread calls ``poll`` (e.g. :meth:`edge.registry.ModelWatcher.poll`,
    which verifies signatures, hashes and graphs) every ``interval`` seconds; a
    verified bundle becomes a ready :class:`Pipeline`, which the classify loop takes
    with :meth:`take` between two spectra.  A refused model never reaches it: the
    refusal is counted as a ``model_refused`` event, handed to ``on_event``, and
    shown by :meth:`status` until another model is accepted.

    Parameters
    ----------
    poll : callable
        Returns a newly activated, verified bundle (or ``(entry, bundle, ...)``), or None.
    make_pipeline : callable
        Builds the pipeline for a bundle (same calibration and policy as the running one).
    interval : float
        Seconds between polls.
    watcher : ModelWatcher, optional
        The object behind ``poll``: its ``refused`` count, ``refusal`` and
        ``current``/``switch_id`` feed :meth:`status` and the refusal events.
    on_event : callable, optional
        Called with ``(kind, details)`` for each refusal (e.g. to log it in the results database).
    """

    def __init__(self, poll: Callable[[], Any], make_pipeline: Callable[[Any], Pipeline], events: Events,
                 interval: float = 1.0, *, watcher: Any = None,
                 on_event: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.poll = poll
        self.make_pipeline = make_pipeline
        self.events = events
        self.interval = interval
        self.watcher = watcher
        self.on_event = on_event
        self._ready: Pipeline | None = None
        self._pending: tuple[str | None, str | None] = (None, None)
        self._running: tuple[str | None, str | None] = (
            (getattr(watcher, "current", None), getattr(watcher, "switch_id", None)) if watcher is not None else (None, None))
        self._refusal: dict[str, Any] | None = None
        self._refusals_seen = getattr(watcher, "refused", 0)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.watcher is not None and getattr(self.watcher, "refusal", None):
            self._report(self.watcher.refusal)  # refused at start: an event like any later refusal
        self._thread = threading.Thread(target=self._loop, name="model-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _report(self, refusal: dict[str, Any]) -> None:
        what = refusal.get("entry") or "the active-model pointer"
        self.events.note("model_refused", f"{what}: {refusal.get('reason')}; the running model stays", logging.ERROR)
        if self.on_event is not None:
            try:
                self.on_event("model_refused", dict(refusal))
            except Exception:  # reporting must never stop the watcher; the event counter has it
                log.exception("model_refused event hook failed")

    def _check_watcher(self) -> None:
        refused = getattr(self.watcher, "refused", 0)
        if refused != self._refusals_seen:
            self._refusals_seen = refused
            if self.watcher.refusal:
                self._report(self.watcher.refusal)

    @staticmethod
    def _swap_ids(found: Any) -> tuple[str | None, str | None]:
        """``(entry, switch_id)`` of what ``poll`` returned: a registry swap, or a bare bundle (no ids)."""
        if not isinstance(found, tuple):
            return None, None
        return found[0], (found[2] if len(found) > 2 else None)

    def _refuse(self, found: Any, error: RamanEdgeError) -> None:
        from .registry import refusal_record  # lazy: the registry brings signing (cryptography) in

        entry, switch_id = self._swap_ids(found)
        refusal = refusal_record(str(error), entry=entry, switch_id=switch_id)
        with self._lock:
            self._refusal = refusal
        self._report(refusal)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            found = None
            try:
                found = self.poll()
                if self.watcher is not None:
                    self._check_watcher()
                if found is None:
                    continue
                bundle = found[1] if isinstance(found, tuple) else found
                pipeline = self.make_pipeline(bundle)
            except RamanEdgeError as e:
                self._refuse(found, e)
                continue
            except Exception:  # a bug here must not take the daemon down; the old model runs on
                log.exception("model watcher failed")
                continue
            with self._lock:
                self._ready, self._pending, self._refusal = pipeline, self._swap_ids(found), None

    def take(self) -> Pipeline | None:
        """The verified new pipeline, once; None when there is none."""
        with self._lock:
            ready, self._ready = self._ready, None
            if ready is not None:
                self._running = self._pending
        return ready

    def status(self) -> dict[str, Any]:
        """The running registry entry, the pointer switch it answers, and the standing refusal (or None).

        ``switch_id`` is the ``active.json`` switch the running model answers
        (`raman-edge model install` waits for its own switch to show up here, or
        in ``model_refused``).
        """
        with self._lock:
            entry, switch_id = self._running
            refusal = self._refusal
            pending = self._ready is not None
        if self.watcher is not None:
            w_current, w_switch = getattr(self.watcher, "current", None), getattr(self.watcher, "switch_id", None)
            if not pending and w_current == entry:
                switch_id = w_switch  # re-activation of the running entry: acknowledged without a load
            refusal = refusal or getattr(self.watcher, "refusal", None)
        return {"entry": entry, "switch_id": switch_id, "check_interval_s": self.interval,
                "swaps_pending": pending, "model_refused": dict(refusal) if refusal else None}


class Daemon:
    """Runs a source through a pipeline into a results log.

    Parameters
    ----------
    source : Source
        Opened by :meth:`run`.
    pipeline : Pipeline
    store : ResultLog
    on_result : callable, optional
        Called with ``(result, row_id)`` after each commit (the live line).
    classify_queue, write_queue, downlink_queue : int
        Bounds of the queues between the loops.
    batch_max : int
        Most results committed in one transaction.
    watchdog : Watchdog, optional
    watchdog_interval, stall_after, restart_after : float
        Seconds: supervision period, silence that counts as a stall, stall that forces a restart.
    hot_swap : HotSwap, optional
        Source of hot-swapped models; started and stopped with the daemon.
    """

    def __init__(self, source: Source, pipeline: Pipeline, store: ResultLog,
                 on_result: Callable[[Result, int], None] | None = None, *, classify_queue: int = 32,
                 write_queue: int = 256, downlink_queue: int = 1024, batch_max: int = 64,
                 watchdog: Watchdog | None = None, watchdog_interval: float = 1.0, stall_after: float = 10.0,
                 restart_after: float = 30.0, hot_swap: HotSwap | None = None,
                 events: Events | None = None) -> None:
        self.source = source
        self.pipeline = pipeline
        self.store = store
        self.on_result = on_result
        self.counters = Counters()
        self.events = events or Events()
        self.health = Health(events=self.events)
        self.watchdog = watchdog
        self.watchdog_interval = watchdog_interval
        self.stall_after = stall_after
        self.restart_after = restart_after
        self.hot_swap = hot_swap
        self.batch_max = batch_max
        self.classify_q: queue.Queue[Acquisition] = queue.Queue(classify_queue)
        self.write_q: queue.Queue[tuple[str, Any]] = queue.Queue(write_queue)
        self.downlink = DownlinkQueue(downlink_queue, self.events)
        self._stop = threading.Event()          # asked to stop (signal, count reached)
        self._acquired_all = threading.Event()  # the acquire loop finished reading the source
        self._fatal: BaseException | None = None
        self._gen = {"acquire": 0, "classify": 0}
        self._threads: dict[str, threading.Thread] = {}
        self._count: int | None = None
        self.deferred_at_start = 0
        self._deferred_cursor = 0
        self._lock = threading.Lock()
        self._unlogged: list[int] = []  # seqs of spectra in hand when the database failed

    # -- control ------------------------------------------------------------
    def stop(self, *_: object) -> None:
        """Finish the spectrum in hand, drain the queues, stop (signal-safe)."""
        self._stop.set()

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            if self._fatal is None:
                self._fatal = exc
        self._stop.set()

    def _note_unlogged(self, item: Any) -> None:
        """Remember a spectrum in hand that will never be committed (the writer has failed)."""
        if isinstance(item, Acquisition):
            seq = item.seq
        elif item[0] == "result":
            seq = item[1][0].acquisition.seq
        elif item[0] == "deferred":
            seq = item[1].seq
        else:  # a model registration, or the result of a row already stored as deferred
            return
        with self._lock:
            self._unlogged.append(int(seq))
            self.counters.unlogged += 1

    def _drain_unlogged(self) -> None:
        """After a fatal storage error: every spectrum still queued is in hand and unlogged."""
        for q in (self.write_q, self.classify_q):
            while True:
                try:
                    self._note_unlogged(q.get_nowait())
                except queue.Empty:
                    break

    def _fatal_error(self) -> BaseException:
        """The first fatal error; a storage failure also names the spectra it kept from the log."""
        fatal = self._fatal
        assert fatal is not None
        if not isinstance(fatal, StorageError) or not self._unlogged:
            return fatal
        n = len(self._unlogged)
        return StorageError(f"{fatal}; acquisition stopped, {n} spectr{'um' if n == 1 else 'a'} in hand "
                            f"not logged and not acknowledged ({seq_summary(self._unlogged)})")

    @property
    def model_id(self) -> str:
        return self.pipeline.model_id

    def log_event(self, kind: str, message: str, details: dict[str, Any] | None = None) -> None:
        """Log an event row (e.g. a refused model update) from any thread.

        The writer owns the database connection, so the event travels through the write
        queue; it is only dropped (with a warning; the event counters still have it) when
        the writer has stopped or stays saturated for 5 s.
        """
        if self._fatal is not None:
            return
        try:
            self.write_q.put(("event", (kind, message, details, time.time())), timeout=5.0)
        except queue.Full:
            log.warning("event %s not logged in %s: the write queue stayed full", kind, self.store.path)

    # -- loops ----------------------------------------------------------------
    def _acquire(self, gen: int) -> None:
        name = "acquire"
        backoff = 0.1
        while not self._stop.is_set() and self._gen[name] == gen:
            self.health.beat(name)
            if self._count is not None and self.counters.acquired >= self._count:
                break
            try:
                acq = self.source.read(timeout=_POLL)
            except StopIteration:
                log.info("source %s is exhausted", self.source.url)
                break
            except RamanEdgeError as e:
                # A source that cannot recover by itself: count, back off (capped), try again.
                self.counters.source_errors += 1
                self.events.note("source_error", f"{self.source.url}: {e}")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if acq is None:
                continue
            backoff = 0.1
            self.counters.acquired += 1
            try:
                self.classify_q.put_nowait(acq)
            except queue.Full:
                self.counters.deferred += 1
                self.events.note("classification_deferred", "classifier saturated; raw spectrum logged, classified later",
                                 logging.INFO)
                self._put_write(("deferred", acq), name)
        if self._gen[name] == gen:
            self._acquired_all.set()  # only the current acquire loop may declare the input finished

    def _put_write(self, item: tuple[str, Any], loop: str) -> None:
        """Back-pressure: wait for the writer, beating so a slow disk is not a stalled loop."""
        waited = False
        while True:
            try:
                self.write_q.put(item, timeout=_POLL)
                return
            except queue.Full:
                if not waited:
                    self.counters.write_waits += 1
                    waited = True
                self.health.beat(loop)
                if self._fatal is not None:
                    self._note_unlogged(item)
                    return

    def _classify(self, gen: int) -> None:
        name = "classify"
        while self._gen[name] == gen and self._fatal is None:
            self.health.beat(name)
            if self.hot_swap is not None:
                new = self.hot_swap.take()
                if new is not None:
                    old = self.pipeline.model_id
                    self.pipeline = new  # swapped between two spectra: none sees a half-loaded model
                    # The writer owns the database connection: it registers the model before
                    # the first row that names it (the queue keeps that order).
                    self._put_write(("model", new), name)
                    self.counters.model_swaps += 1
                    self.events.note("model_swapped", f"{old} → {new.model_id}", logging.WARNING)
            try:
                acq = self.classify_q.get(timeout=_POLL)
            except queue.Empty:
                if self._acquired_all.is_set() and self.classify_q.empty():
                    # Input finished: complete deferred rows unless asked to stop now
                    # (then they stay deferred in the database for the next start).
                    while not self._stop.is_set() and self._catch_up(name):
                        pass
                    break
                self._catch_up(name)
                continue
            pipeline = self.pipeline
            result = pipeline.process(acq)
            self._put_write(("result", (result, pipeline.model_id)), name)

    def _catch_up(self, loop: str) -> int:
        """Idle: classify a few deferred rows from the database; returns how many."""
        if not self._deferred_possible():
            return 0
        rows = self.store.deferred(after_id=self._deferred_cursor, limit=4)
        for row_id, acq in rows:
            self._deferred_cursor = max(self._deferred_cursor, row_id)
            pipeline = self.pipeline
            result = pipeline.process(acq)
            self._put_write(("complete", (row_id, result, pipeline.model_id)), loop)
            self.health.beat(loop)
        return len(rows)

    def _deferred_possible(self) -> bool:
        # Rows deferred before this start, or during it and not yet completed.
        return self.deferred_at_start > 0 or self.counters.deferred > self.counters.deferred_done

    def _write(self) -> None:
        name = "write"
        while True:
            self.health.beat(name)
            try:
                first = self.write_q.get(timeout=_POLL)
            except queue.Empty:
                producers = [t for n, t in self._threads.items() if n != "write"]
                if self._fatal is not None or (producers and not any(t.is_alive() for t in producers)):
                    break  # nobody can hand us anything any more
                continue
            batch = [first]
            while len(batch) < self.batch_max:
                try:
                    batch.append(self.write_q.get_nowait())
                except queue.Empty:
                    break
            try:
                self._commit(batch)
            except StorageError as e:
                for item in batch:
                    self._note_unlogged(item)
                self._fail(e)
                break

    def _commit(self, batch: list[tuple[str, Any]]) -> None:
        records, completions, reports = [], [], []
        for kind, item in batch:
            if kind == "model":
                self.store.register_model(item.model_id, item.bundle.classes, item.bundle.manifest)
            elif kind == "event":
                event_kind, message, details, at = item
                self.store.log_event(event_kind, message, details, at=at)
            elif kind == "result":
                result, model_id = item
                records.append(result_record(result, model_id))
                reports.append(result)
            elif kind == "deferred":
                records.append(deferred_record(item))
                reports.append(None)
            else:
                completions.append(item)
        row_ids = self.store.append_many(records, complete=[(r, result_record(res, m)) for r, res, m in completions])
        self.counters.batches += 1
        self.counters.committed += len(records)
        self.counters.deferred_done += len(completions)
        done = [(row_id, res) for row_id, res, _ in completions]
        done += [(row_id, res) for row_id, res in zip(row_ids, reports) if res is not None]
        for row_id, res in done:
            self._count_result(res)
            self.downlink.push(row_id, res.priority, res.acquisition.acquired_at)
            if self.on_result is not None:
                try:
                    self.on_result(res, row_id)
                except Exception:  # a reporting failure must never stop the logging
                    log.exception("on_result callback failed")

    def _count_result(self, res: Result) -> None:
        if res.prediction is None:
            self.counters.errors += 1
            self.events.note("not_classified", f"{res.acquisition.source} #{res.acquisition.seq}: {res.error}")
        else:
            self.counters.classified += 1

    # -- supervision ----------------------------------------------------------
    def _start(self, name: str) -> None:
        target: Callable[..., None] = {"acquire": self._acquire, "classify": self._classify, "write": self._write}[name]
        args = (self._gen[name],) if name in self._gen else ()
        t = threading.Thread(target=self._guard, args=(name, target, args), name=name, daemon=True)
        self._threads[name] = t
        t.start()

    def _guard(self, name: str, target: Callable[..., None], args: tuple[Any, ...]) -> None:
        try:
            target(*args)
        except BaseException as e:
            if name in self._gen and args and self._gen[name] != args[0]:
                # A loop replaced after a stall (e.g. a driver call that failed once it
                # finally returned): its successor runs on; the failure is only counted.
                self.events.note("superseded_loop_failed", f"{name}: {e!r}")
                return
            if isinstance(e, RamanEdgeError):
                # An expected failure (e.g. the database turned corrupt under the deferred-row
                # reader): the command line reports it in one line, no traceback.
                log.debug("loop %s stopped: %s", name, e)
            else:
                log.exception("loop %s died", name)  # an unexpected bug stops the daemon loudly, not silently
            self._fail(e)

    def _restart(self, name: str) -> None:
        if name not in self._gen:
            return  # the writer holds a transaction: escalate to the supervisor (no watchdog stroke)
        self._gen[name] += 1
        self.health.record_restart(name)
        if name == "acquire":
            try:  # unblock a read hung in the driver, then reopen
                self.source.close()
                self.source.open()
            except RamanEdgeError as e:
                self.events.note("source_error", f"reopening {self.source.url}: {e}")
        self._start(name)

    def snapshot(self) -> dict[str, Any]:
        """Everything `raman-edge status` shows."""
        src_counters = getattr(self.source, "counters", None)
        return {
            "pid": os.getpid(),
            "model_id": self.model_id,
            "source": self.source.url,
            "db": str(self.store.path),
            "counters": self.counters.as_dict(),
            "queues": {"classify": self.classify_q.qsize(), "classify_max": self.classify_q.maxsize,
                       "write": self.write_q.qsize(), "write_max": self.write_q.maxsize,
                       "downlink": len(self.downlink), "downlink_max": self.downlink.capacity},
            "health": self.health.snapshot(),
            "events": self.events.as_dict(),
            "watchdog_strokes": self.watchdog.strokes if self.watchdog else None,
            "source_counters": src_counters() if callable(src_counters) else src_counters,
            "downlink_next": self.downlink.top(5),
        }

    def run(self, count: int | None = None, install_signal_handlers: bool = True) -> Counters:
        """Run until the source ends, ``count`` spectra are acquired and logged, or :meth:`stop`.

        Raises the first fatal error (e.g. :class:`StorageError`) after a clean shutdown.
        """
        self._count = count
        self.store.lock_writer()  # before anything is opened: one daemon per database
        previous = {}
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, self.stop)
        self.store.register_model(self.pipeline.model_id, self.pipeline.bundle.classes, self.pipeline.bundle.manifest)
        self.deferred_at_start = self.store.count_deferred()
        for name, limit in (("acquire", self.stall_after), ("classify", self.stall_after), ("write", self.stall_after)):
            self.health.register(name, limit)
        self.source.open()
        try:
            for name in ("write", "classify", "acquire"):
                self._start(name)
            if self.hot_swap is not None:
                self.hot_swap.start()
            if self.watchdog:
                self.watchdog.ready()
            stop_seen: float | None = None
            next_check = 0.0
            while any(t.is_alive() for t in self._threads.values()):
                time.sleep(0.05)
                now = time.monotonic()
                if self._stop.is_set():
                    stop_seen = stop_seen or now
                    if now - stop_seen > 15.0:
                        log.error("loops did not finish within 15 s of the stop request; leaving them")
                        break
                if now < next_check:
                    continue
                next_check = now + self.watchdog_interval
                stalled = self.health.stalled()
                if not stalled and self.watchdog is not None:
                    self.watchdog.stroke()
                for name, age in stalled.items():
                    if age > self.restart_after and not self._stop.is_set():
                        self._restart(name)
        finally:
            self._stop.set()
            if self.hot_swap is not None:
                self.hot_swap.stop()
            for t in self._threads.values():
                t.join(timeout=2)
            if isinstance(self._fatal, StorageError):
                self._drain_unlogged()
            if self.watchdog:
                self.watchdog.stopping()
            try:
                self.source.close()
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
        if self._fatal is not None:
            raise self._fatal_error()
        return self.counters
