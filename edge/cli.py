"""The `raman-edge` command line.

Device commands (`run`, `bench`) live here; host-side commands (`train`, ...) are
plugged in through the ``raman_edge.commands`` entry-point group, so the device
package never imports the trainer (or torch).
"""
from __future__ import annotations

import json
import logging
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click

from calibration.errors import RamanEdgeError

from .quantization import HEAD_PRECISIONS

log = logging.getLogger("raman_edge")

DEFAULT_DB = "raman-edge.sqlite"


class _Group(click.Group):
    """Turns RamanEdgeError into one clear line on stderr and its exit status (1, 2 config, 3 storage)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RamanEdgeError as e:
            click.echo(f"raman-edge: error: {e}", err=True)
            sys.exit(e.exit_code)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(_builtin()) | set(_plugins()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        cmd = super().get_command(ctx, name)
        if cmd is None:
            cmd = _builtin().get(name)
        if cmd is None and name in _plugins():
            cmd = _plugins()[name].load()
        return cmd


def _builtin() -> dict[str, Any]:
    from .commands import discover

    return discover()


def _plugins() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group="raman_edge.commands")}


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """raman-edge: identify minerals from Raman spectra on board, in real time."""
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)],
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _model_option(f: Any) -> Any:
    return click.option("--model", "model", type=click.Path(path_type=Path), default=None,
                        help="Model bundle directory (default: the model shipped with the package).")(f)


def _db_option(f: Any) -> Any:
    return click.option("--db", type=click.Path(path_type=Path), default=DEFAULT_DB, show_default=True,
                        help="SQLite results log (created when missing).")(f)


def _interest(value: str) -> frozenset[str]:
    return frozenset(s for s in value.split(",") if s.strip())


def _pipeline(model: Path | None, calibration: Path | None, interest: str, min_probability: float,
              min_margin: float, top_k: int, head_precision: str = "auto") -> Any:
    from calibration.axis import load_calibration

    from .bundle import load_bundle
    from .pipeline import Pipeline
    from .priority import PriorityPolicy

    bundle = load_bundle(model)
    cal = load_calibration(calibration) if calibration else None
    policy = PriorityPolicy(min_probability=min_probability, min_margin=min_margin, interest=_interest(interest))
    return Pipeline(bundle, calibration=cal, policy=policy, top_k=top_k, head_precision=head_precision)


def _policy_options(f: Any) -> Any:
    for opt in reversed([
        click.option("--calibration", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
                     help="Axis calibration JSON; overrides the one the instrument reports."),
        click.option("--interest", default="", help="Comma-separated classes that rank first for the downlink."),
        click.option("--min-probability", type=click.FloatRange(0, 1), default=0.6, show_default=True,
                     help="Below this top-1 probability a result is low-confidence (ranks higher)."),
        click.option("--min-margin", type=click.FloatRange(0, 1), default=0.3, show_default=True,
                     help="Below this top-1/top-2 margin a result is low-confidence."),
        click.option("--top-k", type=click.IntRange(1, 50), default=3, show_default=True,
                     help="Classes logged per spectrum."),
        click.option("--head-precision", type=click.Choice(HEAD_PRECISIONS), default="auto", show_default=True,
                     help="Head weights as run: auto = 8-bit above 1 MiB of float32 weights (e.g. 10,000 classes)."),
    ]):
        f = opt(f)
    return f


_RUN_HELP = """Run the daemon: acquire, calibrate, preprocess, classify and log every spectrum.

Ctrl-C (or SIGTERM) stops after the spectrum in hand, drains the queues, and
exits; every result already printed is committed to the database.  Options
given here override the --config file, which overrides the defaults.

\b
Exit status: 0 done, 1 error, 2 configuration error, 3 storage error
(disk full, read-only database): a supervisor should not restart on 2 or 3.

\b
Configuration file (TOML), every option with its default:
"""


def _run_help() -> str:
    from .config import describe

    return _RUN_HELP + "\b\n" + describe()


@main.command(help=_run_help())
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="TOML configuration file (see below).")
@click.option("--source", default=None, help="[source] url. Default sim://; e.g. sim://?minerals=Calcite,Quartz&rate=2, "
              "replay://FILE.npz, serial:///dev/ttyUSB0?baud=115200.")
@click.option("--model", type=click.Path(path_type=Path), default=None,
              help="[model] path. Default: the registry's active model, else the shipped one.")
@click.option("--db", type=click.Path(path_type=Path), default=None, help=f"[store] db. Default {DEFAULT_DB}.")
@click.option("--state-dir", type=click.Path(path_type=Path), default=None,
              help="[daemon] state_dir: model registry and status socket. Default: the db path with .d.")
@click.option("--count", type=click.IntRange(min=1), default=None, help="Stop after N spectra (default: run until stopped).")
@click.option("--calibration", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="[calibration] path: pixel-axis calibration JSON overriding the instrument's own, or a shift-axis correction.")
@click.option("--interest", default=None, help="[priority] interest, comma-separated.")
@click.option("--min-probability", type=click.FloatRange(0, 1), default=None, help="[priority] min_probability.")
@click.option("--min-margin", type=click.FloatRange(0, 1), default=None, help="[priority] min_margin.")
@click.option("--top-k", type=click.IntRange(1, 50), default=None, help="[priority] top_k.")
@click.option("--head-precision", type=click.Choice(HEAD_PRECISIONS), default=None, help="[model] head_precision.")
@click.option("--trusted-keys", type=click.Path(path_type=Path), default=None, help="[model] trusted_keys.")
@click.option("--allow-unsigned", is_flag=True, default=None, help="[model] allow_unsigned (development only).")
@click.option("--watchdog-file", type=click.Path(path_type=Path), default=None, help="[daemon] watchdog_file.")
@click.option("--quiet", is_flag=True, help="No live line per spectrum.")
def run(config_path: Path | None, source: str | None, model: Path | None, db: Path | None, state_dir: Path | None,
        count: int | None, calibration: Path | None, interest: str | None, min_probability: float | None,
        min_margin: float | None, top_k: int | None, head_precision: str | None, trusted_keys: Path | None,
        allow_unsigned: bool | None,
        watchdog_file: Path | None, quiet: bool) -> None:
    from .config import load_config
    from .service import build_service

    cfg = load_config(config_path).with_overrides({
        "source.url": source, "model.path": _s(model), "store.db": _s(db), "daemon.state_dir": _s(state_dir),
        "calibration.path": _s(calibration), "priority.interest": sorted(_interest(interest)) if interest is not None else None,
        "priority.min_probability": min_probability, "priority.min_margin": min_margin, "priority.top_k": top_k,
        "model.head_precision": head_precision, "model.trusted_keys": _s(trusted_keys), "model.allow_unsigned": allow_unsigned or None,
        "daemon.watchdog_file": _s(watchdog_file),
    })

    def live(result: Any, row: int) -> None:
        click.echo(_live_line(result))

    service = build_service(cfg, on_result=None if quiet else live)
    click.echo(f"raman-edge: model {service.bundle.model_id} ({len(service.bundle.classes)} classes, "
               f"{service.trust.describe()}), source {cfg['source.url']}, log {cfg['store.db']}", err=True)
    counters = service.run(count=count)
    click.echo(f"raman-edge: {counters.acquired} spectra, {counters.classified} classified, "
               f"{counters.errors} not classified, {counters.deferred} deferred; log {cfg['store.db']}", err=True)


def _s(p: Path | None) -> str | None:
    return None if p is None else str(p)


def _live_line(result: Any) -> str:
    acq = result.acquisition
    head = f"{acq.seq:>6}  {_utc(acq.acquired_at)}"
    if result.prediction is None:
        line = f"{head}  {'NOT CLASSIFIED':<22} prio {result.priority}  {result.error}"
    else:
        p = result.prediction
        line = (f"{head}  {p.label:<22} p={p.probability:.3f}  margin={p.margin:.3f}  prio {result.priority}"
                + (f" ({','.join(result.reasons)})" if result.reasons else ""))
    if acq.truth is not None:
        line += f"  [truth: {acq.truth}]"
    return line


def _utc(epoch: float) -> str:
    from .store import utc_iso

    return utc_iso(epoch)


@main.command()
@_model_option
@click.option("--data", type=click.Path(path_type=Path), required=True,
              help="Labelled spectra: .npz (spectra, labels, wavenumbers) or a folder of RRUFF .txt files.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Write the report as JSON here.")
@_db_option
@click.option("--no-db", is_flag=True, help="Do not log the replayed results.")
@click.option("--plots", "plots_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Write reliability.png and confusion.png to this folder (extra 'plot').")
@_policy_options
def bench(model: Path | None, data: Path, json_out: Path | None, db: Path, no_db: bool, plots_dir: Path | None,
          calibration: Path | None, interest: str, min_probability: float, min_margin: float, top_k: int,
          head_precision: str) -> None:
    """Replay labelled spectra through the daemon's pipeline; report accuracy, ECE and latency."""
    from firmware_bridge.source import open_source

    from .bench import format_table, run_bench, write_report
    from .daemon import log_result
    from .store import ResultLog

    if not data.exists():
        raise RamanEdgeError(f"{data}: no such file or folder")
    if plots_dir is not None:
        from .plots import pyplot

        pyplot()  # a missing 'plot' extra fails before the bench, not after it
    pipeline = _pipeline(model, calibration, interest, min_probability, min_margin, max(3, top_k), head_precision)
    with open_source("replay://" + quote(str(data.resolve()))) as src:
        acqs = list(src)
    if no_db:
        report = run_bench(pipeline, acqs)
    else:
        with ResultLog(db) as store:
            store.register_model(pipeline.model_id, pipeline.bundle.classes, pipeline.bundle.manifest)
            report = run_bench(pipeline, acqs, on_result=lambda r: log_result(store, r, pipeline.model_id))
    click.echo(format_table(report))
    if json_out is not None:
        write_report(report, json_out, data=data if data.is_file() else None)
        click.echo(f"report written to {json_out}", err=True)
    if plots_dir is not None:
        from .plots import write_bench_plots

        for path in write_bench_plots(report, plots_dir):
            click.echo(f"figure written to {path}", err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
