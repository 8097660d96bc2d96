"""Assemble the daemon from a :class:`~edge.config.Config`: model (with its trust
check), calibration, priority policy, source, results log, watchdog, status
socket and the registry's hot swap.  `raman-edge run` is a thin shell around it.
"""
from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from calibration.axis import load_calibration
from calibration.errors import BundleError, ConfigError
from firmware_bridge.source import open_source

from .bundle import Bundle, default_model_path
from .config import Config
from .daemon import Daemon, HotSwap
from .health import Events, Watchdog
from .interest import check_interest, warn_unknown_interest
from .pipeline import Pipeline, Result
from .priority import PriorityPolicy
from .registry import ActivePointer, ModelWatcher, PointerError, Registry, refusal_record
from .signing import SignatureInfo, check_trust, load_trusted_bundle
from .status import StatusServer
from .store import ResultLog

log = logging.getLogger(__name__)


@dataclass
class Service:
    """A daemon ready to run, and what must be closed after it."""

    daemon: Daemon
    bundle: Bundle
    trust: SignatureInfo
    stack: ExitStack

    def run(self, count: int | None = None) -> Any:
        with self.stack:
            return self.daemon.run(count=count)


@dataclass
class StartModel:
    """The model the daemon starts with, and what the model watcher must know about the registry."""

    bundle: Bundle
    trust: SignatureInfo
    entry: str | None                       # the registry entry running (None: --model or the shipped one)
    settled: ActivePointer | None = None    # a pointer already dealt with (refused, or overridden by --model)
    refusal: dict[str, Any] | None = None   # why the active model was refused at start


def _active_pointer(registry: Registry) -> tuple[ActivePointer | None, dict[str, Any] | None]:
    """The active pointer; when ``active.json`` is damaged, the last good one and the refusal to report."""
    try:
        return registry.active(), None
    except PointerError as e:
        last = registry.last_good()
        log.error("%s; %s", e, f"trying the last good pointer ({last.entry})" if last else "no last good pointer")
        return last, refusal_record(str(e))


def load_model(cfg: Config, registry: Registry) -> StartModel:
    """The model to start with: the configured path, else the registry's active one, else the shipped one.

    Every candidate passes the trust policy (signature from a trusted key; the
    shipped bundle is trusted by its content) before it classifies anything.  A
    configured path that fails is an error (the operator named it); a damaged
    ``active.json`` or a refused active entry is not: the daemon falls back to the
    last good pointer, then to the shipped model, and reports why.

    Raises
    ------
    BundleError
        The configured model path is missing, damaged or not trusted
        (:class:`~edge.signing.TrustError` is a configuration error).
    ConfigError
        The trusted keys cannot be read.
    """
    keys = registry.trusted_keys(cfg["model.trusted_keys"] or None)
    allow = bool(cfg["model.allow_unsigned"])
    active, refusal = _active_pointer(registry)
    if cfg["model.path"]:
        bundle, info = load_trusted_bundle(Path(cfg["model.path"]), keys, allow)
        return StartModel(bundle, info, None, settled=active)
    candidates = [active] if active is not None else []
    last = registry.last_good()
    if last is not None and active is not None and last.entry != active.entry:
        candidates.append(last)  # active.json was edited by hand to name something else
    for ptr in candidates:
        try:
            bundle = registry.load_active(keys, allow, pointer=ptr)
            return StartModel(bundle, check_trust(bundle.path, keys, allow), ptr.entry, settled=active,
                              refusal=refusal)
        except BundleError as e:
            refusal = refusal or refusal_record(str(e), active if ptr is active else None)
            log.error("model %s refused (%s); trying %s", ptr.entry, e,
                      "the last good one" if ptr is not candidates[-1] else "the shipped default")
    bundle, info = load_trusted_bundle(default_model_path(), keys, allow)
    try:
        settled = registry.active()
    except PointerError:
        settled = None
    return StartModel(bundle, info, None, settled=settled, refusal=refusal)


def _interest_origin(cfg: Config) -> str:
    origin = cfg.origin("priority.interest")
    if origin in ("command line", "default"):
        return "--interest"
    return f"{origin}: [priority] interest"


def _log_event_hook(daemon: Daemon) -> Callable[[str, dict[str, Any]], None]:
    """Where the hot swap's refusals go besides the event counter: the results database's events table."""

    def hook(kind: str, details: dict[str, Any]) -> None:
        what = details.get("entry") or "active.json"
        daemon.log_event(kind, f"{what}: {details.get('reason')}", details)

    return hook


def status_snapshot(daemon: Daemon, hot_swap: HotSwap) -> dict[str, Any]:
    """The daemon's status document plus the model registry's view (`raman-edge status`)."""
    doc = daemon.snapshot()
    model = hot_swap.status()
    doc["model_entry"] = model["entry"]
    doc["model_switch_id"] = model["switch_id"]
    doc["model_check_interval_s"] = model["check_interval_s"]
    doc["model_refused"] = model["model_refused"]
    return doc


def build_service(cfg: Config, on_result: Callable[[Result, int], None] | None = None) -> Service:
    """Build the daemon from ``cfg``; nothing is acquired yet.

    Raises
    ------
    ConfigError, BundleError, CalibrationError, SourceError
        A configured part cannot be used (the command line reports it as a configuration error).
    StorageError
        The results database cannot be opened.
    """
    events = Events()
    state_dir = Path(cfg["daemon.state_dir"])
    try:
        state_dir.mkdir(exist_ok=True)  # not parents: a typo must not grow a tree somewhere
    except OSError as e:
        raise ConfigError(f"state directory {state_dir}: {e.strerror}") from None
    source = open_source(cfg["source.url"])  # parses the URL only: a typo fails before the model loads
    registry = Registry(state_dir)
    start = load_model(cfg, registry)
    bundle = start.bundle
    check_interest(cfg["priority.interest"], bundle.classes, bundle.model_id, _interest_origin(cfg))
    calibration = load_calibration(cfg["calibration.path"]) if cfg["calibration.path"] else None
    policy = PriorityPolicy(min_probability=cfg["priority.min_probability"], min_margin=cfg["priority.min_margin"],
                            interest=frozenset(cfg["priority.interest"]))
    top_k = cfg["priority.top_k"]

    def make_pipeline(b: Bundle) -> Pipeline:
        if b is not bundle:
            warn_unknown_interest(cfg["priority.interest"], b.classes, b.model_id)  # a later model: warn, not refuse
        return Pipeline(b, calibration=calibration, policy=policy, top_k=top_k,
                        head_precision=cfg["model.head_precision"], source=source)

    pipeline = make_pipeline(bundle)
    stack = ExitStack()
    try:
        store = ResultLog(cfg["store.db"], synchronous=cfg["store.synchronous"])
        stack.callback(store.close)
        watcher = ModelWatcher(registry, cfg["model.trusted_keys"] or None, bool(cfg["model.allow_unsigned"]),
                               current=start.entry, settled=start.settled, refusal=start.refusal)
        watchdog = Watchdog(Path(cfg["daemon.watchdog_file"]) if cfg["daemon.watchdog_file"] else None)
        watchdog.check()
        hot_swap = HotSwap(watcher.poll, make_pipeline, events, interval=cfg["model.check_interval_s"],
                           watcher=watcher)
        daemon = Daemon(source, pipeline, store, on_result=on_result, classify_queue=cfg["daemon.classify_queue"],
                        write_queue=cfg["daemon.write_queue"], downlink_queue=cfg["daemon.downlink_queue"],
                        batch_max=cfg["store.batch_max"], watchdog=watchdog,
                        watchdog_interval=cfg["daemon.watchdog_interval_s"], stall_after=cfg["daemon.stall_after_s"],
                        restart_after=cfg["daemon.restart_after_s"], hot_swap=hot_swap, events=events)
        hot_swap.on_event = _log_event_hook(daemon)
        if cfg["daemon.status_socket"]:
            server = StatusServer(state_dir, lambda: status_snapshot(daemon, hot_swap))
            server.start()
            stack.callback(server.stop)
    except BaseException:
        stack.close()  # release the database (and its lock) before reporting
        raise
    return Service(daemon=daemon, bundle=bundle, trust=start.trust, stack=stack)
