"""`raman-edge show`: draw spectra on a common Raman-shift axis into an image (extra ``plot``).

By default each spectrum is drawn as the model sees it before resampling: on its
calibrated Raman-shift axis, with the cosmic-ray spikes removed by the despike
step of the shipped preprocessing spec (:mod:`calibration.preprocess`), so a spike
the classifier never sees does not dominate the picture.  ``--raw`` draws the
intensities as measured.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import click

from calibration.errors import ConfigError, MissingExtraError

log = logging.getLogger(__name__)


def distinguishing_labels(paths: list[Path]) -> list[str]:
    """The shortest trailing part of each path that tells it from every other path.

    Two files both named ``acetonitrile.csv`` become ``horiba/acetonitrile.csv`` and
    ``wasatch/acetonitrile.csv``; a file whose name is unique keeps just its name.
    The same file given twice gets the same label.

    Parameters
    ----------
    paths : list of Path
        The files, as given on the command line (resolved here, so ``./a.txt`` and
        ``a.txt`` are the same file).

    Returns
    -------
    list of str
        One label per path, ``/``-separated.
    """
    parts = [Path(p).resolve().parts for p in paths]
    labels = []
    for mine in parts:
        others = {q for q in parts if q != mine}
        k = 1
        while k < len(mine) and any(q[-k:] == mine[-k:] for q in others):
            k += 1
        labels.append("/".join(mine[-k:]).lstrip("/"))  # the root part "/" would double the slash
    return labels


def despike_like_model(intensities: Any, axis: Any, spec: dict[str, Any] | None = None) -> Any:
    """``intensities`` after every despike step of a preprocessing spec.

    The same :data:`calibration.preprocess.OPS` code the trainer and the daemon run,
    on the spectrum's own axis (no resampling, no normalisation).  The default spec
    is :data:`calibration.preprocess.DEFAULT_SPEC`, the one the shipped model carries.
    """
    import numpy as np

    from calibration.preprocess import DEFAULT_SPEC, OPS, make_grid

    spec = spec if spec is not None else DEFAULT_SPEC
    grid = make_grid(**{k: float(v) for k, v in spec["grid"].items()})
    y = np.asarray(intensities, dtype=np.float64)[None, :]
    for step in spec["steps"]:
        if step["op"] == "despike":
            params = {k: v for k, v in step.items() if k != "op"}
            y, axis = OPS["despike"](y, axis, params, grid, ["show"])
    return y[0]


def _parse_range(xrange: str | None) -> tuple[float, float] | None:
    """``--range LOW,HIGH`` -> (LOW, HIGH), or ConfigError."""
    if not xrange:
        return None
    try:
        lim = tuple(float(v) for v in xrange.split(","))
    except ValueError:
        lim = ()
    if len(lim) != 2 or not all(map(math.isfinite, lim)) or not lim[0] < lim[1]:
        raise ConfigError(f"--range: expected LOW,HIGH with LOW < HIGH, got {xrange!r}")
    return lim[0], lim[1]


def _check_baseline(method: str | None) -> None:
    """``--baseline`` names a method of ``pybaselines.Baseline``, or ConfigError before any file is read."""
    if not method:
        return
    from calibration.baseline import DEFAULTS

    try:
        import pybaselines
    except ImportError:
        raise MissingExtraError("raman-edge show --baseline", "baselines", "pybaselines") from None
    fn = None if method.startswith("_") else getattr(pybaselines.Baseline, method, None)
    if not callable(fn):
        raise ConfigError(f"--baseline {method!r}: pybaselines has no such method "
                          f"(e.g. {', '.join(sorted(DEFAULTS))})")


def _curves(files: tuple[Path, ...], calibration: Path | None, raw: bool, baseline_method: str | None,
            normalize: bool) -> tuple[list[tuple[Any, Any, str]], int]:
    """One (axis, intensities, label) per spectrum, and the number of points despiking changed."""
    import numpy as np

    from .peaks import read_spectra, shift_spectrum

    curves = []
    changed = 0
    for f, name in zip(files, distinguishing_labels(list(files))):
        spectra = read_spectra(f)
        for k, sp in enumerate(spectra):
            s = shift_spectrum(sp, calibration)
            y = np.asarray(s.intensities, dtype=np.float64)
            if not raw:
                clean = despike_like_model(y, s.axis)
                changed += int(np.count_nonzero(clean != y))
                y = clean
            if baseline_method:
                from calibration.baseline import baseline

                y = y - baseline(y, s.axis, baseline_method)
            if normalize and np.max(np.abs(y)) > 0:
                y = y / np.max(np.abs(y))
            curves.append((s.axis, y, name if len(spectra) == 1 else f"{name} [{k}]"))
    return curves, changed


@click.command("show")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--calibration", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="Calibration JSON: pixel-axis calibration or shift-axis correction.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Image to write; the extension picks the format (.png, .svg, .pdf, .jpg, ...).")
@click.option("--raw", is_flag=True,
              help="Draw the intensities as measured. Default: cosmic-ray spikes removed by the despike step "
                   "of the shipped preprocessing, as the model sees the spectrum.")
@click.option("--baseline", "baseline_method", default=None,
              help="Subtract a pybaselines baseline first (arpls, asls, imodpoly, snip, ...; extra 'baselines').")
@click.option("--normalize/--no-normalize", default=True, show_default=True, help="Scale each spectrum to a maximum of 1.")
@click.option("--range", "xrange", default=None, help="Shift range to draw, LOW,HIGH in cm-1.")
@click.option("--offset", type=float, default=0.0, show_default=True, help="Vertical offset between spectra (stacked plot).")
def show(files: tuple[Path, ...], calibration: Path | None, out: Path, raw: bool, baseline_method: str | None,
         normalize: bool, xrange: str | None, offset: float) -> None:
    """Plot FILE... on their calibrated Raman-shift axes, one line per spectrum.

    Each spectrum is despiked as the model sees it unless --raw is given. Files
    with the same name are labelled with enough of their path to tell them apart.
    """
    from edge.plots import check_image_path, pyplot, save_figure

    lim = _parse_range(xrange)
    if not math.isfinite(offset):
        raise ConfigError(f"--offset: expected a finite number, got {offset}")
    plt = pyplot("raman-edge show")  # fail before the work when the extra is missing
    _check_baseline(baseline_method)
    check_image_path(out, "--out")  # an unwritable path or unknown format fails before anything is read
    curves, changed = _curves(files, calibration, raw, baseline_method, normalize)
    fig, ax = plt.subplots(figsize=(10, 5))
    for i, (x, y, label) in enumerate(curves):
        ax.plot(x, y + i * offset, lw=0.8, label=label)
    ax.set_xlabel("Raman shift (cm$^{-1}$)")
    ax.set_ylabel("intensity" + (" (normalised)" if normalize else "") + (", raw" if raw else ", despiked"))
    if lim:
        ax.set_xlim(*lim)
    if len(curves) <= 12:
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out)
    spikes = "" if raw else f"; {changed} spike point{'' if changed == 1 else 's'} removed, --raw keeps them"
    n = len(curves)
    click.echo(f"wrote {out} ({n} {'spectrum' if n == 1 else 'spectra'}{spikes})", err=True)


COMMAND = show
