"""The `raman-edge` command line.

Device commands (`run`, `bench`) live here; host-side commands (`train`, ...) are
plugged in through the ``raman_edge.commands`` entry-point group, so the device
package never imports the trainer (or torch).
"""
from __future__ import annotations

import errno
import io
import os
import logging
import sqlite3
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn
from urllib.parse import quote

import click

from calibration.errors import (
    BundleError, CalibrationError, ConfigError, RamanEdgeError, SourceError, StorageError,
)

from . import __version__
from .options import FiniteFloatRange
from .quantization import HEAD_PRECISIONS

log = logging.getLogger("raman_edge")

DEFAULT_DB = "raman-edge.sqlite"

#: The exit statuses, as README.md's "Exit status" table states them (a test keeps the two
#: in step): (status, meaning, whether a supervisor should restart the daemon after it).
EXIT_STATUSES: tuple[tuple[int, str, bool], ...] = (
    (0, "success", False),
    (1, "runtime error", True),
    (2, "configuration error", False),
    (3, "storage error", False),
    (130, "interrupted", True),
)
EXIT_RUNTIME, EXIT_CONFIG, EXIT_STORAGE, EXIT_INTERRUPTED = 1, 2, 3, 130

#: OSError numbers that mean a path given on the command line cannot be used as asked.
_BAD_PATH_ERRNOS = frozenset({errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.EROFS,
                              errno.ENAMETOOLONG, errno.ELOOP, errno.EEXIST})
#: OSError numbers that mean the disk (or quota) is full.
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class _Group(click.Group):
    """The command line's last line of defence: every failure leaves as ONE line on stderr.

    ``raman-edge: error: <what, where>`` and the exit status of README.md's "Exit
    status" table; the traceback goes to the debug log only (``-vv``).  Click's own
    exceptions (usage errors exit 2, ``--help``) keep click's handling.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            sys.exit(EXIT_INTERRUPTED)  # Ctrl-C: the operator knows; no message, no traceback
        except Exception as e:  # noqa: BLE001 - this is the one place that turns every failure into a status
            if isinstance(e, OSError) and e.errno == errno.EPIPE:
                raise  # output piped into `head`: click exits quietly
            _fail(e, _command_params(ctx, e.__traceback__))

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        # Click's standalone mode prints a usage error as three lines (usage, hint, error);
        # here it is one, like every other error, and parsing failures (a parameter
        # callback) reach the same last line of defence as the commands themselves.
        try:
            super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.NoArgsIsHelpError as e:  # a group named without its command
            click.echo(e.ctx.get_help(), err=True)
            click.echo(f"raman-edge: error: {e.ctx.command_path}: which command? (one of the above)", err=True)
            sys.exit(e.exit_code)
        except click.exceptions.UsageError as e:
            where = f"{e.ctx.command_path}: " if e.ctx is not None else ""
            hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            click.echo(f"raman-edge: error: {where}{_one_line(e.format_message())}{hint}", err=True)
            sys.exit(e.exit_code)
        except click.exceptions.ClickException as e:
            click.echo(f"raman-edge: error: {_one_line(e.format_message())}", err=True)
            sys.exit(e.exit_code)
        except click.exceptions.Abort:
            sys.exit(EXIT_INTERRUPTED)  # Ctrl-C at a prompt
        except KeyboardInterrupt:
            sys.exit(EXIT_INTERRUPTED)
        except OSError as e:
            if e.errno != errno.EPIPE:
                _fail(e, {})
            sys.stdout = open(os.devnull, "w")  # output piped into `head`: leave quietly
            sys.exit(EXIT_RUNTIME)
        except Exception as e:  # noqa: BLE001 - see invoke
            _fail(e, {})
        # A command's return value is not an exit status (see click.Command.main).
        sys.exit(0)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(_builtin()) | set(_plugins()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        cmd = super().get_command(ctx, name)
        if cmd is None:
            cmd = _builtin().get(name)
        if cmd is None and name in _plugins():
            cmd = _plugins()[name].load()
        return cmd


def _fail(e: BaseException, params: dict[str, Any]) -> NoReturn:
    """Print the one error line for ``e`` and exit with its status."""
    code, message = _classify(e, params)
    log.debug("%s (exit status %d)", type(e).__name__, code, exc_info=e)
    prefix = "raman-edge: internal error:" if message is None else "raman-edge: error:"
    click.echo(f"{prefix} {_one_line(message or _internal(e))}", err=True)
    sys.exit(code)


def _classify(e: BaseException, params: dict[str, Any]) -> tuple[int, str | None]:
    """``(exit status, message)``; message ``None`` for an unexpected exception (an internal error)."""
    if isinstance(e, RamanEdgeError):
        return e.exit_code, str(e) or type(e).__name__
    db = params.get("db")
    if isinstance(e, OSError) and e.filename is None:
        e.filename = _file_being_written(e.__traceback__)
    if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
        return EXIT_STORAGE, f"disk full: {e.filename or params.get('out') or db or 'unknown path'} ({e.strerror})"
    if isinstance(e, sqlite3.DatabaseError):
        where = str(db) if db else "results database"
        if "full" in str(e).lower():
            return EXIT_STORAGE, f"disk full: {where} (SQLite: {e})"
        return EXIT_STORAGE, f"{where}: SQLite cannot use it: {e}"
    if isinstance(e, OSError) and e.filename is not None and e.errno in _BAD_PATH_ERRNOS:
        return EXIT_CONFIG, f"{_paths(e)}: {e.strerror}"
    if isinstance(e, OSError) and e.filename is not None:
        return EXIT_RUNTIME, f"{_paths(e)}: {e.strerror or e}"
    if isinstance(e, OverflowError):  # an absurd number given as an option value
        return EXIT_CONFIG, f"a number is out of range: {e}"
    return EXIT_RUNTIME, None


def _file_being_written(tb: TracebackType | None) -> str | None:
    """The name of the open file nearest to where an OSError without a path was raised.

    ``f.write()`` on a full disk raises ENOSPC naming no file; the frame that called it
    still holds the file object, and the operator needs its name.
    """
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for value in frame.f_locals.values():
            if isinstance(value, io.IOBase) and isinstance(getattr(value, "name", None), str):
                return value.name
    return None


def _paths(e: OSError) -> str:
    return f"{e.filename} -> {e.filename2}" if e.filename2 is not None else str(e.filename)


def _internal(e: BaseException) -> str:
    return f"{type(e).__name__}: {e} (run with -vv for the traceback)"


def _one_line(message: str) -> str:
    """``message`` as one printable line: raw bytes from a bad file must not reach the terminal."""
    out = []
    for ch in " ".join(message.split()) if any(c in message for c in "\r\n\t\v\f") else message:
        out.append(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def _command_params(ctx: click.Context, tb: TracebackType | None) -> dict[str, Any]:
    """The failed command's parsed options (e.g. ``db``), to name the file in the message.

    Click builds each sub-command's context inside :meth:`click.Group.invoke`; the
    traceback still holds it as the ``ctx`` argument of the command's ``invoke``.
    Deeper commands (``model install``) override their group's options.
    """
    found: dict[str, Any] = {}
    while tb is not None:
        sub = tb.tb_frame.f_locals.get("ctx")
        if isinstance(sub, click.Context) and sub is not ctx and _descends(sub, ctx):
            found.update({k: v for k, v in sub.params.items() if v is not None})
        tb = tb.tb_next
    return found


def _descends(sub: click.Context, ctx: click.Context) -> bool:
    parent = sub.parent
    while parent is not None and parent is not ctx:
        parent = parent.parent
    return parent is ctx


def _builtin() -> dict[str, Any]:
    from .commands import discover

    return discover()


def _plugins() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group="raman_edge.commands")}


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="raman-edge", message="%(prog)s %(version)s",
                      help="Print the version and exit.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug, with tracebacks).")
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
              min_margin: float, top_k: int, head_precision: str = "auto", source: Any = None) -> Any:
    from calibration.axis import load_calibration

    from .bundle import load_bundle
    from .pipeline import Pipeline
    from .priority import PriorityPolicy

    bundle = load_bundle(model)
    cal = load_calibration(calibration) if calibration else None
    policy = PriorityPolicy(min_probability=min_probability, min_margin=min_margin, interest=_interest(interest))
    return Pipeline(bundle, calibration=cal, policy=policy, top_k=top_k, head_precision=head_precision,
                    source=source)


def _policy_options(f: Any) -> Any:
    for opt in reversed([
        click.option("--calibration", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
                     help="Axis calibration JSON; overrides the one the instrument reports."),
        click.option("--interest", default="", help="Comma-separated classes that rank first for the downlink."),
        click.option("--min-probability", type=FiniteFloatRange(0, 1), default=0.6, show_default=True,
                     help="Below this top-1 probability a result is low-confidence (ranks higher)."),
        click.option("--min-margin", type=FiniteFloatRange(0, 1), default=0.3, show_default=True,
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
exits 0; every result already printed is committed to the database.  Options
given here override the --config file, which overrides the defaults.

\b
{exit_status}

\b
Configuration file (TOML), every option with its default:
"""


def _exit_status_help() -> str:
    """The exit statuses for ``--help``, from :data:`EXIT_STATUSES` (README.md states the same)."""
    codes = ", ".join(f"{code} {meaning}" for code, meaning, _ in EXIT_STATUSES)
    never = " or ".join(str(code) for code, _, restart in EXIT_STATUSES if code and not restart)
    text = (f"Exit status: {codes}.  A supervisor should not restart on {never}: restarting cannot fix "
            "them (the systemd unit in edge/deploy does not).  An instrument missing at start is 1; "
            "add wait=1 to a serial:// or usb:// URL to wait for it instead.")
    return textwrap.fill(text, width=78)


def _run_help() -> str:
    from .config import describe

    return _RUN_HELP.format(exit_status=_exit_status_help()) + "\b\n" + describe()


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
@click.option("--min-probability", type=FiniteFloatRange(0, 1), default=None, help="[priority] min_probability.")
@click.option("--min-margin", type=FiniteFloatRange(0, 1), default=None, help="[priority] min_margin.")
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

    try:
        service = build_service(cfg, on_result=None if quiet else live)
    except StorageError:
        raise
    except RamanEdgeError as e:
        # Nothing is acquired yet: what fails here is the model, calibration, source URL or
        # state directory as configured, and a restart would fail the same way.  An absent
        # instrument fails later, when the source opens (exit 1, transient).
        raise ConfigError(f"{_config_origin(cfg, e)}{e}") from e
    click.echo(f"raman-edge: model {service.bundle.model_id} ({len(service.bundle.classes)} classes, "
               f"{service.trust.describe()}), source {cfg['source.url']}, log {cfg['store.db']}", err=True)
    counters = service.run(count=count)
    click.echo(_summary(counters, service.daemon.deferred_at_start, cfg["store.db"]), err=True)


#: Which configuration option an error of each kind at start-up comes from.
_OPTION_OF = ((SourceError, "source.url", "--source"), (CalibrationError, "calibration.path", "--calibration"),
              (BundleError, "model.path", "--model"))


def _config_origin(cfg: Any, e: RamanEdgeError) -> str:
    """``"FILE: [section] key: "`` or ``"--option: "`` for the option ``e`` comes from, else ``""``."""
    for kind, name, flag in _OPTION_OF:
        if isinstance(e, kind) and cfg[name]:
            origin = cfg.origin(name)
            if origin == "command line":
                return f"{flag}: "
            if origin != "default":
                section, key = name.split(".")
                return f"{origin}: [{section}] {key}: "
    return ""


def _summary(counters: Any, backlog_at_start: int, db: str) -> str:
    """The last line of a run: what happened to every spectrum acquired.

    ``deferred`` spectra were logged raw while the classifier was saturated;
    ``deferred_done`` counts raw rows classified later (oldest first, so the backlog
    an earlier run left comes before this run's); ``classified`` and ``errors`` count
    every result this run produced, those completions included.
    """
    earlier = min(counters.deferred_done, backlog_at_start)
    later = counters.deferred_done - earlier
    waiting = backlog_at_start + counters.deferred - counters.deferred_done
    line = (f"raman-edge: {counters.acquired} spectra acquired: {counters.classified} classified, "
            f"{counters.errors} could not be classified" + (" (reason logged)" if counters.errors else ""))
    if earlier:
        line += f", including {earlier} left unclassified by an earlier run"
    if later:
        line += (f"; {later} of the {counters.acquired} were logged raw first and classified once the "
                 "classifier caught up")
    if waiting:
        line += f"; {waiting} logged raw, not classified yet (the next start classifies them)"
    return f"{line}; log {db}"


def _s(p: Path | None) -> str | None:
    return None if p is None else str(p)


def _live_line(result: Any) -> str:
    acq = result.acquisition
    head = f"{acq.seq:>6}  {_utc(acq.acquired_at)}"
    if result.prediction is None:
        line = f"{head}  {'NOT CLASSIFIED':<22} prio {result.priority}  {result.error}"
    else:
        p = result.prediction
        line = (f"{head}  {p.label:<22} p={p.probability:.3f}  margin={p.margin:.3f}"
                + (f"  novelty={p.novelty:.3f}" if p.novelty is not None else "")
                + f"  prio {result.priority}" + (f" ({','.join(result.reasons)})" if result.reasons else ""))
        if p.novel:
            line += f"  NOVEL: none of the known minerals (nearest: {p.label})"
    if acq.truth is not None:
        line += f"  [truth: {acq.truth}]"
    return line


def _utc(epoch: float) -> str:
    from .store import utc_iso

    return utc_iso(epoch)


_BENCH_HELP = """Replay labelled spectra through the daemon's pipeline; report accuracy, ECE and latency.

Bench results are replays, not field measurements: nothing is logged unless
--db names a database, and the rows bench logs there are marked so that no
downlink pass ever sends them (they stay out of `raman-edge downlink`).
"""


@main.command(help=_BENCH_HELP)
@_model_option
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Labelled spectra: .npz (spectra, labels, wavenumbers) or a folder of RRUFF .txt files.")
@click.option("--unknown", type=click.Path(path_type=Path), default=None,
              help="Spectra of no class the model knows (.npz or folder; labels not needed): adds 'open_set' "
                   "(flagged shares at the bundle's novelty threshold, and the AUROC with --data).")
@click.option("--json", "json_out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write the report as JSON here.")
@click.option("--db", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also log the replayed results to this SQLite file, marked as never to be downlinked "
                   "(default: log nothing).")
@click.option("--no-db", is_flag=True, help="Log nothing, even with --db (the default without --db).")
@click.option("--plots", "plots_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Write reliability.png and confusion.png to this folder (extra 'plot').")
@_policy_options
def bench(model: Path | None, data: Path | None, unknown: Path | None, json_out: Path | None, db: Path | None,
          no_db: bool, plots_dir: Path | None, calibration: Path | None, interest: str, min_probability: float,
          min_margin: float, top_k: int, head_precision: str) -> None:
    from firmware_bridge.source import open_source

    from .bench import (_open_set_line, check_report_path, format_table, open_set_report, run_bench, score_unknown,
                        write_report)
    from .daemon import log_result
    from .interest import check_interest
    from .store import ResultLog

    if data is None and unknown is None:
        raise ConfigError("bench needs --data (labelled spectra), --unknown (spectra of no known class), or both")
    for option, path in (("--data", data), ("--unknown", unknown)):
        if path is not None and not path.exists():
            raise ConfigError(f"{option} {path}: no such file or folder")
    if data is None and (db is not None or plots_dir is not None):
        raise ConfigError(f"{'--db' if db is not None else '--plots'} needs --data (labelled spectra)")
    if json_out is not None:
        check_report_path(json_out, "--json")  # refused before the bench, not after it
    if plots_dir is not None:
        from .plots import check_plots_dir, pyplot

        pyplot()  # a missing 'plot' extra fails before the bench, not after it
        check_plots_dir(plots_dir)
    unknown_acqs = None
    if unknown is not None:
        with open_source("replay://" + quote(str(unknown.resolve()))) as src:
            unknown_acqs = list(src)
    with open_source("replay://" + quote(str((data or unknown).resolve()))) as src:
        pipeline = _pipeline(model, calibration, interest, min_probability, min_margin, max(3, top_k),
                             head_precision, source=src)
        check_interest(_interest(interest), pipeline.bundle.classes, pipeline.model_id, "--interest")
        acqs = list(src) if data is not None else []
    if unknown_acqs is not None and pipeline.classifier.novelty is None:
        raise ConfigError(f"--unknown: model {pipeline.model_id} has no novelty model (neither a novelty nor a "
                          "support part), so nothing can be flagged")
    if data is None:
        ops = open_set_report(pipeline, None, score_unknown(pipeline, unknown_acqs))
        if ops["n_unknown"] == 0:
            raise RamanEdgeError(f"--unknown {unknown}: no spectrum could be classified "
                                 f"({ops['unknown_not_classified']} not classified)")
        click.echo(f"model {pipeline.model_id}\n{_open_set_line(ops)}")
        if json_out is not None:
            report = {"model_id": pipeline.model_id, "open_set": ops}
            write_report(report, json_out, data=None)
            click.echo(f"report written to {json_out}", err=True)
        return
    if no_db or db is None:
        report = run_bench(pipeline, acqs)
    else:
        with ResultLog(db) as store:
            store.register_model(pipeline.model_id, pipeline.bundle.classes, pipeline.bundle.manifest)
            report = run_bench(pipeline, acqs,
                               on_result=lambda r: log_result(store, r, pipeline.model_id, downlink=False))
    if report["n"] == 0:  # no figure of merit at all: a refused input, not a report of NaNs
        first = report["errors"][0]["error"] if report["errors"] else "no spectra"
        raise RamanEdgeError(f"{data}: no spectrum could be classified ({report['not_classified']} not classified; "
                             f"first: {first})")
    if unknown_acqs is not None:
        report["open_set"] = open_set_report(pipeline, report, score_unknown(pipeline, unknown_acqs))
        report["unknown_data"] = str(unknown)
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
