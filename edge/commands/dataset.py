"""`raman-edge dataset build`: one training file from RRUFF archives, folders of RRUFF files and .npz files.

The assembling itself is :mod:`calibration.library` (numpy only); this module checks
the options, prints the summary and writes the files.  See docs/library.md.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from calibration.errors import ConfigError
from calibration.files import check_output_file

#: Unreadable files and label conflicts listed on the terminal (all of them go to --json).
SHOWN = 10


def _write_json(doc: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        raise ConfigError(f"--json {path}: cannot write ({e.strerror or e})") from None
    finally:
        tmp.unlink(missing_ok=True)


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The report as the lines the command prints."""
    g = report["grid"]
    out = [f"{report['spectra']:,} spectra, {report['classes']:,} classes, {report['specimens']:,} specimens "
           f"({report['without_specimen']:,} spectra without a specimen id) on {g['start']:g}-{g['stop']:g} cm-1 "
           f"step {g['step']:g} ({g['points']} points)"]
    for s in report["sources"]:
        extra = f", {s['ignored']} other files ignored" if s["ignored"] else ""
        out.append(f"  {s['source']} ({s['form']}): {s['read']:,} read, {s['kept']:,} kept, "
                   f"{s['duplicates_dropped']:,} duplicates dropped, {s['unreadable']:,} unreadable{extra}")
    out.append("  kinds: " + ", ".join(f"{k} {n:,}" for k, n in report["kinds"].items()))
    out.append("  laser (nm): " + ", ".join(f"{k} {n:,}" for k, n in report["laser_nm"].items()))
    names = report["names"]
    renamed = ", ".join(f"{a} -> {b}" for a, b in list(names["spellings_renamed"].items())[:SHOWN])
    more = "" if len(names["spellings_renamed"]) <= SHOWN else ", ..."
    out.append(f"  names: {len(names['spellings_renamed'])} spellings normalised"
               + (f" ({renamed}{more})" if renamed else "")
               + f"; {len(names['classes_merged'])} classes merged from several spellings"
               + "".join(f"; {c} <- {', '.join(v)}" for c, v in list(names["classes_merged"].items())[:SHOWN]))
    d = report["duplicates"]
    by = "; ".join(f"{x['dropped_from']} in {x['kept_in']}: {x['count']:,}" if x["kept_in"] != x["dropped_from"]
                   else f"within {x['kept_in']}: {x['count']:,}" for x in d["by_sources"])
    out.append(f"  duplicates: {d['dropped']:,} dropped (the first copy kept)" + (f": {by}" if by else ""))
    conflicts = d["label_conflicts"]
    if conflicts:
        out.append(f"  label conflicts: {len(conflicts)} identical spectra with two labels (kept the first):")
        out += [f"    {c['kept']} {c['kept_label']} = {c['dropped']} {c['dropped_label']}" for c in conflicts[:SHOWN]]
        if names["classes_lost_to_duplicates"]:
            out.append("    classes left without a spectrum: " + ", ".join(names["classes_lost_to_duplicates"]))
    bad = report["unreadable"]
    out.append(f"  unreadable: {len(bad):,}" + (":" if bad else ""))
    out += [f"    {u['source']}: {u['item']}: {u['reason']}" for u in bad[:SHOWN]]
    if len(bad) > SHOWN:
        out.append(f"    ... {len(bad) - SHOWN:,} more" + (" (all in --json)" if "json" in report else ""))
    out.append(f"  wrote {report['out']} sha256 {report['sha256']}")
    return out


@click.group(name="dataset")
def dataset() -> None:
    """Training files: assemble RRUFF archives, folders and .npz files into one (build)."""


@dataset.command()
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True))
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="The library .npz to write (spectra, labels, wavenumbers, files, specimens, kind, laser_nm, "
                   "source); replaced atomically.")
@click.option("--grid", default="30:1599:1", show_default=True, metavar="START:STOP:STEP",
              help="Raman-shift grid (cm-1, inclusive). The default covers every shared dataset's axis and holds "
                   "the model grid 200-1591, which training resamples onto.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, metavar="REPORT",
              help="Also write the summary as JSON, with every duplicate pair and unreadable file.")
def build(sources: tuple[Path, ...], out: Path, grid: str, json_out: Path | None) -> None:
    """Assemble SOURCES (RRUFF zip archives, folders of RRUFF .txt files, .npz files) into one training file.

    Spectra are resampled onto one grid (zeros outside each one's measured range), mineral
    names normalised (docs/library.md), exact duplicates dropped and reported with both
    origins; unreadable files are reported and skipped.  A source that gives no spectrum
    at all is refused (exit status 1).
    """
    from calibration.library import build as assemble
    from calibration.library import parse_grid

    axis = parse_grid(grid)
    check_output_file(out, "--out")
    if json_out is not None:
        check_output_file(json_out, "--json")
    library = assemble(sources, axis)
    try:
        digest = library.save(out)
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot write ({e.strerror or e})") from None
    report = library.report()
    report.update(out=str(out), sha256=digest)
    if json_out is not None:
        report["json"] = str(json_out)
        _write_json(report, json_out)
    for line in summary_lines(report):
        click.echo(line)


COMMAND = dataset
