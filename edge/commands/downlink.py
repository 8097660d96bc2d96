"""`raman-edge downlink`: pack a pass file within a byte budget; `downlink read` reads one back."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from calibration.errors import StorageError

from ..options import FiniteFloatRange

#: The largest --budget-bytes taken: 1 TiB, far beyond any pass, and within SQLite's integers.
MAX_BUDGET = 1 << 40


@click.group(name="downlink", invoke_without_command=True,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--db", type=click.Path(path_type=Path), default="raman-edge.sqlite", show_default=True,
              help="SQLite results log to send from.")
@click.option("--budget-bytes", type=click.IntRange(min=1, max=MAX_BUDGET), default=None,
              help="Hard limit on the size of the pass file, in bytes (1 to 2**40).")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Pass file to write (refused if it exists, unless --overwrite).")
@click.option("--dry-run", is_flag=True, help="Pack and report, but write no file and mark nothing as sent.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@click.option("--fine-error", type=FiniteFloatRange(0, 0.5, min_open=True, max_open=True), default=2e-3,
              show_default=True, help="Error bound of the fine quantised spectra, relative to the spectrum's peak.")
@click.option("--coarse-error", type=FiniteFloatRange(0, 0.5, min_open=True, max_open=True), default=5e-3,
              show_default=True, help="Error bound of the coarse quantised spectra (the last resort).")
@click.option("--json", "as_json", is_flag=True, help="Print the pass report as JSON.")
@click.pass_context
def downlink(ctx: click.Context, db: Path, budget_bytes: int | None, out: Path | None, dry_run: bool,
             overwrite: bool, fine_error: float, coarse_error: float, as_json: bool) -> None:
    """Pack the most valuable unsent results into a pass file of at most --budget-bytes.

    Results go by priority, then acquisition time.  Routine results travel as a
    summary of about ten bytes; low-confidence, interest and unreadable results carry
    their spectrum (lossless when their whole priority level fits, else quantised to
    --fine-error, or --coarse-error to fill the last gap).  The rows are marked as
    sent only once the file is written and fsynced, so the next pass sends the rest.
    Rows logged by `raman-edge bench` (replays) are never sent.
    File format: docs/downlink.md.  Read a pass file with `raman-edge downlink read FILE`.
    """
    if ctx.invoked_subcommand is not None:
        return
    from edge.downlink import DownlinkPolicy, run_pass
    from edge.store import ResultLog

    if budget_bytes is None:
        raise click.UsageError("--budget-bytes is required (or give a subcommand: read, passes)")
    if out is None and not dry_run:
        raise click.UsageError("--out is required unless --dry-run")
    if not db.is_file():
        raise StorageError(f"{db}: no such results database")
    policy = DownlinkPolicy(fine=min(fine_error, coarse_error), coarse=max(fine_error, coarse_error))
    with ResultLog(db) as store:
        packed = run_pass(store, out, budget_bytes, policy, dry_run=dry_run, overwrite=overwrite)
    if packed is None:
        click.echo(f"raman-edge: nothing to downlink: every result in {db} has been sent", err=True)
        return
    report = packed.report()
    report["dry_run"] = dry_run
    report["out"] = None if dry_run else str(out)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    what = "would write" if dry_run else f"wrote {out}:"
    click.echo(f"pass {report['pass']}: {what} {report['bytes']} of {budget_bytes} bytes, {report['records']} results "
               f"({report['spectra']} with spectrum); {report['unsent_after']} still unsent")
    click.echo("  encodings: " + ", ".join(f"{k} {v}" for k, v in sorted(report["encodings"].items())))
    click.echo("  by priority: " + ", ".join(f"{p}: {c['sent']} sent, {c['left']} left"
                                            for p, c in report["by_priority"].items()))


@downlink.command(name="read")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print header and records as JSON (spectra included).")
@click.option("--no-spectra", is_flag=True, help="Leave the spectra out of the JSON.")
def read(file: Path, as_json: bool, no_spectra: bool) -> None:
    """Read a pass file back: a table of its results, or JSON.

    A damaged or truncated file still shows the records before the damage; the
    damage is then reported (naming its byte offset) and the exit status is 1.
    """
    from edge.downlink import format_table, read_downlink

    f = read_downlink(file, strict=False)
    if as_json:
        doc = {"file": str(file), "size": f.size, "header": f.header,
               "records": [r.as_dict(spectra=not no_spectra) for r in f.records],
               "damage": None if f.damage is None else {"offset": f.damage.offset, "message": str(f.damage)}}
        click.echo(json.dumps(doc, indent=1))
    else:
        click.echo(format_table(f))
    if f.damage is not None:
        click.echo(f"raman-edge: error: {f.damage} ({len(f.records)} intact records before it)", err=True)
        sys.exit(1)


@downlink.command(name="passes")
@click.option("--db", type=click.Path(path_type=Path), default="raman-edge.sqlite", show_default=True,
              help="SQLite results log.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def passes(db: Path, as_json: bool) -> None:
    """List the downlink passes recorded in a database, and how many results wait."""
    from edge.store import ResultLog

    if not db.is_file():
        raise StorageError(f"{db}: no such results database")
    with ResultLog(db) as store:
        rows, waiting, ident = store.passes(), store.count_unsent(), store.identity
    if as_json:
        click.echo(json.dumps({"db_id": ident, "unsent": waiting, "passes": rows}, indent=2))
        return
    click.echo(f"db {ident}: {waiting} results waiting")
    for p in rows:
        click.echo(f"  pass {p['pass']:>4}  {p['state']:<8} {p['started_utc']}  {p['records'] or 0:>6} results  "
                   f"{p['bytes'] or 0:>8} of {p['budget_bytes']} bytes  {p['out_path']}"
                   + (f"  ({p['note']})" if p["note"] else ""))


COMMAND = downlink

__all__ = ["COMMAND"]
