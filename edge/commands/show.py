"""`raman-edge show`: draw spectra on a common Raman-shift axis into an image (extra ``plot``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from calibration.errors import ConfigError, MissingExtraError


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise MissingExtraError("raman-edge show", "plot", "matplotlib") from None
    matplotlib.use("Agg")  # files only: no display on a rover or in CI
    import matplotlib.pyplot as plt

    return plt


@click.command("show")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--calibration", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="Calibration JSON: pixel-axis calibration or shift-axis correction.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True, help="Image to write (.png, .svg, .pdf).")
@click.option("--baseline", "baseline_method", default=None,
              help="Subtract a pybaselines baseline first (arpls, asls, imodpoly, snip, ...; extra 'baselines').")
@click.option("--normalize/--no-normalize", default=True, show_default=True, help="Scale each spectrum to a maximum of 1.")
@click.option("--range", "xrange", default=None, help="Shift range to draw, LOW,HIGH in cm-1.")
@click.option("--offset", type=float, default=0.0, show_default=True, help="Vertical offset between spectra (stacked plot).")
def show(files: tuple[Path, ...], calibration: Path | None, out: Path, baseline_method: str | None, normalize: bool,
         xrange: str | None, offset: float) -> None:
    """Plot FILE... on their calibrated Raman-shift axes, one line per spectrum."""
    import numpy as np

    from .peaks import read_spectra, shift_spectrum

    lim = None
    if xrange:
        try:
            lim = tuple(float(v) for v in xrange.split(","))
        except ValueError:
            lim = ()
        if len(lim) != 2 or not lim[0] < lim[1]:
            raise ConfigError(f"--range: expected LOW,HIGH with LOW < HIGH, got {xrange!r}")
    plt = _pyplot()  # fail before the work when the extra is missing
    curves = []
    for f in files:
        spectra = read_spectra(f)
        for k, sp in enumerate(spectra):
            s = shift_spectrum(sp, calibration)
            y = s.intensities
            if baseline_method:
                from calibration.baseline import baseline

                y = y - baseline(y, s.axis, baseline_method)
            if normalize and np.max(np.abs(y)) > 0:
                y = y / np.max(np.abs(y))
            label = f.name if len(spectra) == 1 else f"{f.name} [{k}]"
            curves.append((s.axis, y, label))
    fig, ax = plt.subplots(figsize=(10, 5))
    for i, (x, y, label) in enumerate(curves):
        ax.plot(x, y + i * offset, lw=0.8, label=label)
    ax.set_xlabel("Raman shift (cm$^{-1}$)")
    ax.set_ylabel("intensity" + (" (normalised)" if normalize else ""))
    if lim:
        ax.set_xlim(*lim)
    if len(curves) <= 12:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    click.echo(f"wrote {out} ({len(curves)} spectra)", err=True)


COMMAND = show
