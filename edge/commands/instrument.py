"""`raman-edge instrument-sim`: play a simulated raman-edge instrument board on a serial port."""
from __future__ import annotations

import json
import signal
import stat
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

import click

from calibration.errors import ConfigError, SourceError

from ..options import FiniteFloatRange


@click.command("instrument-sim")
@click.option("--port", "port", required=True, type=click.Path(path_type=Path),
              help="A serial device to serve on, or a path that does not exist yet: then a pseudo-terminal "
                   "pair is created, its host end printed, and PATH made a symlink to it (see --link).")
@click.option("--count", type=click.IntRange(min=1), default=None,
              help="Stop after serving N spectra (damaged ones included). Default: until Ctrl-C.")
@click.option("--rate", type=FiniteFloatRange(min=0), default=None,
              help="Spectra per second at most; 0 = as fast as asked. Default: take the integration time "
                   "the host set, like a real board.")
@click.option("--corrupt-rate", type=FiniteFloatRange(0, 1), default=0.0, show_default=True,
              help="Fraction of outgoing frames damaged on the wire (a flipped or dropped byte, a truncation, "
                   "or garbage before the frame, drawn uniformly).")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Seed for spectra and damage (default: random).")
@click.option("--minerals", default=None, help="Comma-separated minerals to simulate (default: 8 common ones).")
@click.option("--model", default="raman-edge-1024", show_default=True, help="Device model the board reports.")
@click.option("--baud", type=click.IntRange(min=50), default=115200, show_default=True,
              help="Line speed when PATH is a real serial device.")
@click.option("--link/--no-link", default=True, show_default=True,
              help="Make PATH a symlink to the created pseudo-terminal (a stable name to unplug and replug under).")
@click.option("--record", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Append one JSON line per spectrum served: acquisition number, seq, damage, mineral, "
                   "CRC-32 of the counts (the ground truth of what the host should receive).")
def instrument_sim(port: Path, count: int | None, rate: float | None, corrupt_rate: float, seed: int | None,
                   minerals: str | None, model: str, baud: int, link: bool, record: Path | None) -> None:
    """Play a simulated raman-edge instrument board on a serial port (docs/protocol.md).

    Prints the host end of the link on the first line of stdout (connect the daemon with
    `raman-edge run --source serial://THAT_PATH`), serves until Ctrl-C, SIGTERM or
    --count spectra, then prints its counters as one JSON line.
    """
    from firmware_bridge.instrument import PtyTransport, SimulatedInstrument
    from firmware_bridge.transport import SerialTransport, Transport

    names = tuple(m.strip() for m in minerals.split(",")) if minerals else None
    if names is not None and not all(names):
        raise ConfigError(f"--minerals {minerals!r}: empty name in the list")
    transport: Transport
    if port.exists():
        if not stat.S_ISCHR(port.stat().st_mode):
            raise ConfigError(f"--port {port}: exists and is not a terminal device; give a serial device "
                              "or a path that does not exist yet (a pseudo-terminal is then created)")
        transport = SerialTransport(str(port), baudrate=baud)
    else:
        if not port.parent.is_dir():
            raise ConfigError(f"--port {port}: folder {port.parent} does not exist")
        transport = PtyTransport(link=port if link else None)

    record_file: TextIO | None = open(record, "a", encoding="utf-8") if record else None  # noqa: SIM115

    def write_record(served: Any) -> None:
        assert record_file is not None
        record_file.write(json.dumps(served.as_dict()) + "\n")

    try:
        inst = SimulatedInstrument(transport, model, minerals=names, rate=rate, seed=seed, corrupt_rate=corrupt_rate,
                                   count=count, keep_record=False, on_served=write_record if record_file else None)
    except SourceError as e:
        if record_file:
            record_file.close()
        raise ConfigError(f"instrument-sim: {e}") from None
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        # Installed before the port is printed: whoever reads it may signal at once.
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        inst.start()
        host_end = transport.slave_path if isinstance(transport, PtyTransport) else str(port)
        click.echo(host_end)
        sys.stdout.flush()
        linked = f" (linked from {port})" if isinstance(transport, PtyTransport) and link else ""
        click.echo(f"instrument-sim: {inst.model.name} on {host_end}{linked}, seed {inst.seed}, "
                   f"corrupt rate {corrupt_rate:g}; connect with: raman-edge run --source 'serial://{host_end}'",
                   err=True)
        while inst.is_alive() and not stop.is_set():
            stop.wait(0.2)
    finally:
        inst.stop()
        transport.close()
        if record_file:
            record_file.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    counters = inst.counters
    click.echo(f"instrument-sim: served {counters['spectra_served']} spectra, {counters['spectra_damaged']} damaged "
               f"on the wire; {counters['frames_damaged']} of {counters['frames_sent']} frames damaged "
               f"({', '.join(f'{k} {v}' for k, v in counters['damage'].items())})", err=True)
    click.echo(json.dumps(counters))
    if inst.error:
        raise SourceError(f"instrument-sim: the link failed: {inst.error}")


COMMAND = instrument_sim
