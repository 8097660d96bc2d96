"""`raman-edge status`: health, counters, queue depths, model and uptime of the running daemon."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click


def format_refusal(r: dict[str, Any]) -> str:
    """One line for a model the daemon refused (or a damaged active-model pointer)."""
    what = f"model {r['entry']}" if r.get("entry") else "active-model pointer"
    return f"REFUSED {what} at {str(r.get('at', '?'))[:19]}Z: {r.get('reason')}; the running model stays"


def format_status(s: dict[str, Any]) -> str:
    c, q = s["counters"], s["queues"]
    entry = f" (registry entry {s['model_entry']})" if s.get("model_entry") else ""
    lines = [
        f"daemon pid {s['pid']}  up {c['uptime_s']:.0f} s  model {s['model_id']}{entry}",
        f"source {s['source']}  log {s['db']}",
        f"spectra acquired {c['acquired']}  classified {c['classified']}  not classified {c['errors']}  "
        f"deferred {c['deferred']} (done {c['deferred_done']})  committed {c['committed']} in {c['batches']} batches",
        f"queues: classify {q['classify']}/{q['classify_max']}  write {q['write']}/{q['write_max']}  "
        f"downlink {q['downlink']}/{q['downlink_max']}",
        "loops: " + "  ".join(f"{n} {'STALLED' if h['stalled'] else 'ok'} ({h['seconds_since_beat']:.1f} s, "
                               f"{h['restarts']} restarts)" for n, h in s["health"].items()),
        f"watchdog strokes {s['watchdog_strokes']}",
    ]
    if s.get("model_refused"):
        lines.append(format_refusal(s["model_refused"]))
    if s.get("events"):
        lines.append("events: " + ", ".join(f"{k} {v}" for k, v in sorted(s["events"].items())))
    if s.get("source_counters"):
        lines.append("source: " + ", ".join(f"{k} {v}" for k, v in sorted(s["source_counters"].items())
                                            if not isinstance(v, dict)))
    return "\n".join(lines)


@click.command("status")
@click.option("--state-dir", type=click.Path(path_type=Path), default=Path("raman-edge.d"), show_default=True,
              help="The running daemon's state directory ([daemon] state_dir).")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON document.")
def status(state_dir: Path, as_json: bool) -> None:
    """Show the running daemon's health, counters, queue depths, model id and uptime.

    A model the daemon refused to switch to (and why) is shown on a REFUSED line,
    and as ``model_refused`` in --json (null when none).  Exit status 1 when no
    daemon answers on STATE_DIR's status socket.
    """
    from edge.status import query

    s = query(state_dir)
    click.echo(json.dumps(s, indent=2) if as_json else format_status(s))


COMMAND = status
