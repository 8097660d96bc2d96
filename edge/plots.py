"""Figures of a bench report: reliability diagram and confusion matrix (extra ``plot``).

matplotlib is imported only when a figure is drawn, with the file-only ``Agg``
back-end (no display on a rover or in CI); without it the functions raise
:class:`~calibration.errors.MissingExtraError` naming the ``plot`` extra.
"""
from __future__ import annotations

import errno
import logging
from pathlib import Path
from typing import Any

import numpy as np

from calibration.errors import ConfigError, MissingExtraError, RamanEdgeError
from calibration.files import check_output_dir, check_writable_dir

log = logging.getLogger(__name__)

_NEEDS_TEX = {"pgf"}

RELIABILITY_PNG = "reliability.png"
CONFUSION_PNG = "confusion.png"


def pyplot(what: str = "raman-edge bench --plots") -> Any:
    """``matplotlib.pyplot`` on the Agg back-end, or MissingExtraError(what, "plot", "matplotlib")."""
    try:
        import matplotlib
    except ImportError:
        raise MissingExtraError(what, "plot", "matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def image_formats() -> list[str]:
    """File extensions (without the dot) that the file-only back-end can write, sorted."""
    pyplot()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    # .pgf is LaTeX source that matplotlib can only write by running a TeX installation.
    return sorted(set(FigureCanvasAgg.get_supported_filetypes()) - _NEEDS_TEX)


def check_image_path(out: str | Path, option: str = "--out") -> Path:
    """Refuse an image path that cannot be written, before anything is drawn.

    Parameters
    ----------
    out : path
        The image to write; its extension chooses the format.
    option : str
        The command-line option that gave ``out``, for the message.

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    ConfigError
        Unknown or missing extension (the message lists the formats that work), a
        directory that does not exist or is not writable, or ``out`` is a directory.
    """
    out = Path(out)
    formats = image_formats()
    ext = out.suffix.lower().lstrip(".")
    if ext not in formats:
        got = f"extension .{ext} is not an image format" if ext else "has no file extension"
        raise ConfigError(f"{option} {out}: {got}; use one of " + ", ".join(f".{f}" for f in formats))
    if out.is_dir():
        raise ConfigError(f"{option} {out}: is a directory")
    check_writable_dir(out.parent, f"{option} {out}")
    return out


def check_plots_dir(out_dir: str | Path, option: str = "--plots") -> Path:
    """Refuse a figure folder that cannot be created or written, before any work is done.

    The folder may be missing (it is created with its parents); the nearest part of
    it that exists must then be a writable directory.

    Raises
    ------
    ConfigError
        Naming ``option``, the folder and what is wrong.
    """
    return check_output_dir(out_dir, option)


def save_figure(fig: Any, out: Path) -> None:
    """``fig.savefig(out)``, an unwritable file becoming one clear error instead of a traceback."""
    try:
        fig.savefig(out, dpi=120)
    except OSError as e:
        reason = e.strerror or str(e)
        # A full disk is not a wrong option: a retry after cleaning up may work.
        cls = RamanEdgeError if e.errno in (errno.ENOSPC, errno.EIO, errno.EDQUOT) else ConfigError
        raise cls(f"{out}: cannot write the image ({reason})") from None
    except ValueError as e:  # a format the installed Pillow cannot encode (e.g. .avif)
        raise ConfigError(f"{out}: cannot write this image format ({e})") from None
    finally:
        pyplot().close(fig)


def reliability_diagram(bins: list[dict[str, Any]], out: str | Path, *, ece: float | None = None,
                        uncalibrated: list[dict[str, Any]] | None = None, ece_uncalibrated: float | None = None,
                        temperature: float | None = None, title: str = "Reliability") -> Path:
    """Draw accuracy against mean confidence per bin (Guo et al. 2017, Fig. 1) as an image.

    Parameters
    ----------
    bins : list of dict
        :func:`edge.metrics.reliability_bins` output (``lo``, ``hi``, ``n``, ``confidence``, ``accuracy``).
    out : path
        Image to write (format from the suffix, e.g. ``.png``).
    ece : float, optional
        Shown in the legend.
    uncalibrated, ece_uncalibrated : optional
        The same bins at temperature 1, drawn as an outline for comparison.
    temperature : float, optional
        Shown in the legend.

    Returns
    -------
    Path
        ``out``.
    """
    plt = pyplot()
    out = Path(out)
    fig, (ax, hx) = plt.subplots(2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    lo = np.array([b["lo"] for b in bins])
    width = np.array([b["hi"] - b["lo"] for b in bins])
    centre = lo + width / 2
    acc = np.array([b["accuracy"] if b["n"] else 0.0 for b in bins])
    conf = np.array([b["confidence"] if b["n"] else np.nan for b in bins])
    filled = np.array([b["n"] > 0 for b in bins])
    label = "accuracy" + (f" (T={temperature:.3g}" if temperature is not None else "") \
        + (f", ECE {ece:.3f}" if ece is not None else "") + (")" if temperature is not None else "")
    ax.bar(lo[filled], acc[filled], width=width[filled], align="edge", color="tab:blue", alpha=0.75,
           edgecolor="black", lw=0.5, label=label)
    # The gap between confidence and accuracy in each bin is what ECE weighs.
    ax.bar(lo[filled], (conf - acc)[filled], bottom=acc[filled], width=width[filled], align="edge",
           color="tab:red", alpha=0.25, edgecolor="tab:red", lw=0.5, hatch="//", label="gap to confidence")
    if uncalibrated is not None:
        u_acc = np.array([b["accuracy"] if b["n"] else np.nan for b in uncalibrated])
        u_conf = np.array([b["confidence"] if b["n"] else np.nan for b in uncalibrated])
        m = np.isfinite(u_acc)
        ax.plot(u_conf[m], u_acc[m], "o--", color="grey", ms=4,
                label="T = 1" + (f" (ECE {ece_uncalibrated:.3f})" if ece_uncalibrated is not None else ""))
    ax.plot([0, 1], [0, 1], color="black", lw=1, ls=":", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    counts = np.array([b["n"] for b in bins])
    hx.bar(centre, counts, width=width, color="tab:blue", alpha=0.75, edgecolor="black", lw=0.5)
    hx.set_xlabel("top-1 probability (confidence)")
    hx.set_ylabel("spectra")
    fig.tight_layout()
    save_figure(fig, out)
    return out


#: Up to this many classes the whole matrix is drawn; above it only the classes in a confusion are.
FULL_MATRIX_CLASSES = 20
#: Rows of the "most confused pairs" table.
CONFUSED_PAIRS_SHOWN = 25
#: Size of one matrix cell (inches): an 8-point class name fits beside it.
_CELL_IN = 0.2


def _confusion_counts(confusion: list[list[Any]]) -> tuple[list[str], list[str], np.ndarray]:
    """Rows (truth, sorted), columns (the rows, then predicted-only classes) and the count matrix."""
    truth = sorted({str(t) for t, _, _ in confusion})
    labels = truth + sorted({str(p) for _, p, _ in confusion} - set(truth))
    index = {c: i for i, c in enumerate(labels)}
    mat = np.zeros((len(truth), len(labels)))
    for t, p, c in confusion:
        mat[index[str(t)], index[str(p)]] += c
    return truth, labels, mat


def confused_pairs(confusion: list[list[Any]], limit: int | None = None) -> list[tuple[str, str, int, float]]:
    """The off-diagonal cells of a confusion list, most spectra first.

    Parameters
    ----------
    confusion : list of [truth, predicted, count]
        As in the bench report's ``confusion``.
    limit : int, optional
        Keep only this many pairs.

    Returns
    -------
    list of (truth, predicted, count, fraction)
        ``fraction`` is the share of the truth class's spectra predicted as ``predicted``;
        ties are broken by that share, then by name, so the order is deterministic.
    """
    per_truth: dict[str, float] = {}
    cells: dict[tuple[str, str], float] = {}
    for t, p, c in confusion:
        per_truth[str(t)] = per_truth.get(str(t), 0) + c
        if str(t) != str(p):
            cells[str(t), str(p)] = cells.get((str(t), str(p)), 0) + c
    pairs = [(t, p, int(c), c / per_truth[t]) for (t, p), c in cells.items() if c > 0]
    pairs.sort(key=lambda x: (-x[2], -x[3], x[0], x[1]))
    return pairs[:limit] if limit is not None else pairs


def _involved(confusion: list[list[Any]]) -> set[str]:
    """Classes that are the truth or the prediction of at least one wrong spectrum."""
    return {str(x) for t, p, c in confusion if str(t) != str(p) and c > 0 for x in (t, p)}


def _draw_matrix(ax: Any, fig: Any, confusion: list[list[Any]], font: float) -> None:
    """Row-normalised matrix on ``ax``, with the count written in each non-empty cell."""
    truth, labels, mat = _confusion_counts(confusion)
    rows = mat / np.maximum(mat.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1, aspect="equal", interpolation="nearest")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=font)
    ax.set_yticks(range(len(truth)), truth, fontsize=font)
    # Thin grid lines between cells: with tens of classes the eye needs them to follow a row.
    ax.set_xticks(np.arange(len(labels) + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(len(truth) + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="0.85", lw=0.4)
    ax.tick_params(which="minor", length=0)
    for i, j in zip(*np.nonzero(mat)):
        ax.text(j, i, f"{int(mat[i, j])}", ha="center", va="center", fontsize=font * 0.8,
                color="white" if rows[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02, label="fraction of the row")


def _draw_pairs(ax: Any, pairs: list[tuple[str, str, int, float]], total: int, font: float) -> None:
    """The most confused pairs as a text table on ``ax`` (axes hidden)."""
    ax.axis("off")
    tw = max([len(t) for t, _, _, _ in pairs] + [len("truth")])
    pw = max([len(p) for _, p, _, _ in pairs] + [len("predicted")])
    lines = [f"{'truth':<{tw}}    {'predicted':<{pw}}  {'n':>4}  share"]
    lines += [f"{t:<{tw}} -> {p:<{pw}}  {n:>4}  {f:>5.0%}" for t, p, n, f in pairs]
    if total > len(pairs):
        lines += ["", f"{total - len(pairs)} more pairs: the report's 'confusion'"]
    ax.set_title(f"most confused pairs ({total} in all)", fontsize=font + 2, loc="left")
    ax.text(0, 1, "\n".join(lines), family="monospace", fontsize=font, va="top", ha="left", linespacing=1.5,
            transform=ax.transAxes)


def confusion_matrix_plot(confusion: list[list[Any]], out: str | Path, *, title: str = "Confusion",
                          full_matrix_classes: int = FULL_MATRIX_CLASSES) -> Path:
    """Draw a confusion matrix (rows: truth, columns: prediction; each row normalised) as an image.

    Up to ``full_matrix_classes`` classes the whole matrix is drawn.  Above that, a
    matrix of every class would need type too small to read, and its diagonal tells
    nothing a table would not: only the classes involved in a confusion are drawn,
    beside a table of the most confused pairs, and the title says how many classes
    had every spectrum right.  The figure grows with the classes drawn, so the
    class names stay at a readable size.

    Parameters
    ----------
    confusion : list of [truth, predicted, count]
        As in the bench report's ``confusion``.
    out : path
        Image to write.
    title : str
        Figure title.
    full_matrix_classes : int
        Largest number of classes drawn in full.

    Returns
    -------
    Path
        ``out``.
    """
    plt = pyplot()
    out = Path(out)
    classes = {str(x) for t, p, _ in confusion for x in (t, p)}
    if len(classes) > full_matrix_classes:
        fig = _confusion_overview(plt, confusion, title, len(classes))
    else:
        _, labels, _ = _confusion_counts(confusion)
        side = 4 + _CELL_IN * 2 * len(labels)
        fig, ax = plt.subplots(figsize=(side + 1, side), layout="constrained")
        _draw_matrix(ax, fig, confusion, font=8)
        ax.set_title(title)
    save_figure(fig, out)
    return out


def _confusion_overview(plt: Any, confusion: list[list[Any]], title: str, n_classes: int) -> Any:
    """Many classes: the confused classes' matrix and the pairs table, side by side."""
    involved = _involved(confusion)
    pairs = confused_pairs(confusion)
    shown = pairs[:CONFUSED_PAIRS_SHOWN]
    right = n_classes - len(involved)
    sub = [c for c in confusion if str(c[0]) in involved and str(c[1]) in involved]
    note = (f"{n_classes} classes: {len(involved)} involved in a confusion (drawn), "
            f"{right} with every spectrum right (not drawn)")
    if not involved:
        fig, ax = plt.subplots(figsize=(8, 2.5), layout="constrained")
        ax.axis("off")
        ax.text(0.5, 0.5, f"no confusions: every spectrum of the {n_classes} classes right", ha="center",
                va="center", fontsize=12)
        ax.set_title(title)
    else:
        _, labels, _ = _confusion_counts(sub)
        side = 3 + _CELL_IN * len(labels)
        # Monospace at 9 pt is about 0.075 in per character; a table line is 1.5 lines high.
        table_w = 0.5 + 0.075 * max(len(t) + len(p) + 17 for t, p, _, _ in shown)
        height = max(side, 1.5 + 0.19 * (len(shown) + 4))
        fig, (ax, tx) = plt.subplots(1, 2, figsize=(side + 1 + table_w, height), layout="constrained",
                                     gridspec_kw={"width_ratios": [side + 1, table_w]})
        _draw_matrix(ax, fig, sub, font=8)
        _draw_pairs(tx, shown, len(pairs), font=9)
        fig.suptitle(f"{title}\n{note}", fontsize=11)
    return fig


def write_bench_plots(report: dict[str, Any], out_dir: str | Path, option: str = "--plots") -> list[Path]:
    """Write ``reliability.png`` and ``confusion.png`` for a :func:`edge.bench.run_bench` report into ``out_dir``.

    ``out_dir`` is created when missing; ``option`` names it in errors (ConfigError).
    """
    pyplot()  # fail before creating anything when the extra is missing
    out_dir = check_plots_dir(out_dir, option)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{option} {out_dir}: cannot create the directory ({e.strerror or e})") from None
    model = report.get("model_id", "model")
    calibrated = report.get("temperature", 1.0) != 1.0  # at T = 1 the outline would repeat the bars
    written = [reliability_diagram(report["reliability"], out_dir / RELIABILITY_PNG, ece=report.get("ece"),
                                   uncalibrated=report.get("reliability_uncalibrated") if calibrated else None,
                                   ece_uncalibrated=report.get("ece_uncalibrated") if calibrated else None,
                                   temperature=report.get("temperature"),
                                   title=f"Reliability: {model}, {report.get('n', 0)} spectra")]
    if report.get("confusion"):
        written.append(confusion_matrix_plot(report["confusion"], out_dir / CONFUSION_PNG,
                                             title=f"Confusion: {model} (top-1 {report.get('top1', float('nan')):.3f})"))
    log.info("wrote %s", ", ".join(map(str, written)))
    return written


__all__ = ["reliability_diagram", "confusion_matrix_plot", "confused_pairs", "write_bench_plots", "pyplot",
           "image_formats", "check_image_path", "save_figure", "check_plots_dir", "RELIABILITY_PNG", "CONFUSION_PNG",
           "FULL_MATRIX_CLASSES"]
