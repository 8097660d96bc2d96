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
from .pipeline import Pipeline, Result
from .priority import PriorityPolicy
from .registry import ModelWatcher, Registry
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


def load_model(cfg: Config, registry: Registry) -> tuple[Bundle, SignatureInfo, str | None]:
    """The model to start with: the configured path, else the registry's active one, else the shipped one.

    Every candidate passes the trust policy (signature from a trusted key; the
    shipped bundle is trusted as part of the software) before it classifies anything.
    """
    keys = registry.trusted_keys(cfg["model.trusted_keys"] or None)
    allow = bool(cfg["model.allow_unsigned"])
    active = registry.active()
    if cfg["model.path"]:
        bundle, info = load_trusted_bundle(Path(cfg["model.path"]), keys, allow)
        return bundle, info, active.entry if active else None
    if active is not None:
        try:
            bundle = registry.load_active(keys, allow)
            return bundle, check_trust(bundle.path, keys, allow), active.entry
        except BundleError as e:
            log.error("active model %s refused (%s); starting with the shipped default", active.entry, e)
    bundle, info = load_trusted_bundle(default_model_path(), keys, allow)
    return bundle, info, active.entry if active else None


def build_service(cfg: Config, on_result: Callable[[Result, int], None] | None = None) -> Service:
    events = Events()
    state_dir = Path(cfg["daemon.state_dir"])
    try:
        state_dir.mkdir(exist_ok=True)  # not parents: a typo must not grow a tree somewhere
    except OSError as e:
        raise ConfigError(f"state directory {state_dir}: {e.strerror}") from None
    registry = Registry(state_dir)
    bundle, trust, current_entry = load_model(cfg, registry)
    calibration = load_calibration(cfg["calibration.path"]) if cfg["calibration.path"] else None
    policy = PriorityPolicy(min_probability=cfg["priority.min_probability"], min_margin=cfg["priority.min_margin"],
                            interest=frozenset(cfg["priority.interest"]))
    top_k = cfg["priority.top_k"]

    def make_pipeline(b: Bundle) -> Pipeline:
        return Pipeline(b, calibration=calibration, policy=policy, top_k=top_k,
                        head_precision=cfg["model.head_precision"])

    pipeline = make_pipeline(bundle)
    source = open_source(cfg["source.url"])
    stack = ExitStack()
    store = ResultLog(cfg["store.db"], synchronous=cfg["store.synchronous"])
    stack.callback(store.close)
    watcher = ModelWatcher(registry, cfg["model.trusted_keys"] or None, bool(cfg["model.allow_unsigned"]),
                           current=current_entry)
    hot_swap = HotSwap(watcher.poll, make_pipeline, events, interval=cfg["model.check_interval_s"])
    watchdog = Watchdog(Path(cfg["daemon.watchdog_file"]) if cfg["daemon.watchdog_file"] else None)
    daemon = Daemon(source, pipeline, store, on_result=on_result, classify_queue=cfg["daemon.classify_queue"],
                    write_queue=cfg["daemon.write_queue"], downlink_queue=cfg["daemon.downlink_queue"],
                    batch_max=cfg["store.batch_max"], watchdog=watchdog,
                    watchdog_interval=cfg["daemon.watchdog_interval_s"], stall_after=cfg["daemon.stall_after_s"],
                    restart_after=cfg["daemon.restart_after_s"], hot_swap=hot_swap, events=events)
    if cfg["daemon.status_socket"]:
        server = StatusServer(state_dir, daemon.snapshot)
        server.start()
        stack.callback(server.stop)
    return Service(daemon=daemon, bundle=bundle, trust=trust, stack=stack)
