"""`raman-edge bench`: replay labelled spectra through the daemon's own pipeline.

Each spectrum goes through :meth:`edge.pipeline.Pipeline.process`, one at a time,
exactly as on the rover, so the latency reported is the per-spectrum cost of
preprocessing plus inference in ONNX Runtime.
"""
from __future__ import annotations

import json
import logging
import platform
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from calibration.dataset import file_sha256
from calibration.errors import ConfigError
from calibration.files import check_output_file
from firmware_bridge.source import Acquisition

from .classifier import softmax
from .metrics import expected_calibration_error, percentile_ms, reliability_bins
from .pipeline import Pipeline, Result

log = logging.getLogger(__name__)


def run_bench(pipeline: Pipeline, acquisitions: Iterable[Acquisition], warmup: int = 3,
              on_result: Callable[[Result], None] | None = None) -> dict[str, Any]:
    """Classify every acquisition and summarise accuracy, confidence quality and latency.

    Parameters
    ----------
    pipeline : Pipeline
        Built with ``top_k >= 3`` so that top-3 accuracy is defined.
    acquisitions : iterable of Acquisition
        Each with ``truth`` set.
    warmup : int
        Spectra classified first and not timed (ONNX Runtime allocates on first use).
    on_result : callable, optional
        Called with each result after it was timed (e.g. to log it).

    Returns
    -------
    dict
        ``n``, ``top1``, ``top3``, ``ece``, ``mean_margin``, ``latency_ms`` (``p50``, ``p99``,
        ``mean``, ``max``), ``per_class`` and bookkeeping fields.  ``ece``, ``mean_margin`` and
        ``reliability`` (15 bins: count, mean confidence, accuracy) are those of the probabilities
        the daemon reports, i.e. with the bundle's ``temperature``; the ``*_uncalibrated`` twins are
        the same at temperature 1.  ``confusion`` lists ``[truth, predicted, count]``.
    """
    acqs = list(acquisitions)
    for acq in acqs[:warmup]:
        pipeline.process(acq)
    known = set(pipeline.classifier.classes.tolist())
    truth, top1, top3, conf, margin, lat, predicted = [], [], [], [], [], [], []
    novelty, novel = [], []
    classified: list[Acquisition] = []
    errors: list[dict[str, Any]] = []
    for acq in acqs:
        res = pipeline.process(acq)
        if on_result is not None:
            on_result(res)
        if res.prediction is None:
            errors.append({"seq": acq.seq, "error": res.error})
            continue
        p = res.prediction
        truth.append(acq.truth)
        top1.append(p.label == acq.truth)
        top3.append(acq.truth in p.classes[:3])
        conf.append(p.probability)
        margin.append(p.margin)
        lat.append(res.latency_ms)
        predicted.append(p.label)
        novelty.append(np.nan if p.novelty is None else p.novelty)
        novel.append(p.novel)
        classified.append(acq)
    n = len(truth)
    top1_a, top3_a = np.asarray(top1, bool), np.asarray(top3, bool)
    raw = _uncalibrated(pipeline, classified)
    per_class: dict[str, dict[str, Any]] = {}
    for cls in sorted(set(truth)):
        m = np.asarray([t == cls for t in truth])
        per_class[cls] = {"n": int(m.sum()), "top1": float(top1_a[m].mean()), "top3": float(top3_a[m].mean()),
                          "mean_probability": float(np.asarray(conf)[m].mean()), "known_to_model": cls in known}
    novel_a = np.asarray(novel, bool)
    kept = top1_a[~novel_a]
    return {
        "n": n,
        "top1": float(top1_a.mean()) if n else float("nan"),
        # the accuracy the ground sees for results not flagged novel (all of them without a novelty model)
        "top1_not_flagged": float(kept.mean()) if kept.size else float("nan"),
        "novelty": novelty_summary(pipeline, np.asarray(novelty, float), novel_a),
        "top3": float(top3_a.mean()) if n else float("nan"),
        "ece": expected_calibration_error(np.asarray(conf), top1_a, bins=15),
        "mean_margin": float(np.mean(margin)) if n else float("nan"),
        "temperature": pipeline.bundle.temperature,
        "reliability": reliability_bins(np.asarray(conf), top1_a, bins=15),
        "ece_uncalibrated": expected_calibration_error(raw["confidence"], top1_a, bins=15),
        "mean_margin_uncalibrated": float(raw["margin"].mean()) if n else float("nan"),
        "reliability_uncalibrated": reliability_bins(raw["confidence"], top1_a, bins=15),
        "confusion": [[t, q, c] for (t, q), c in sorted(Counter(zip(map(str, truth), predicted)).items())],
        "latency_ms": percentile_ms(lat),
        "per_class": per_class,
        "not_classified": len(errors),
        "errors": errors[:20],
        "unknown_labels": sorted({t for t in truth if t not in known}),
        "_novelty_scores": novelty, "_novelty_flags": novel,  # for open_set_report; dropped before writing
        "model_id": pipeline.model_id,
        "head_precision": pipeline.classifier.head_precision,
        "machine": {"python": platform.python_version(), "processor": platform.machine(),
                    "system": platform.system()},
    }


def novelty_summary(pipeline: Pipeline, scores: np.ndarray, flags: np.ndarray) -> dict[str, Any] | None:
    """Threshold, flagged share and median score of classified spectra; None without a novelty model."""
    if pipeline.classifier.novelty is None:
        return None
    return {"threshold": pipeline.classifier.novelty_threshold, "flagged": int(flags.sum()),
            "flagged_share": float(flags.mean()) if flags.size else float("nan"),
            "median_score": float(np.median(scores)) if scores.size else float("nan")}


def score_unknown(pipeline: Pipeline, acquisitions: Iterable[Acquisition]) -> dict[str, Any]:
    """Novelty scores and flags of spectra of no known class (not timed, not logged)."""
    scores, flags, errors = [], [], 0
    for acq in acquisitions:
        res = pipeline.process(acq)
        if res.prediction is None or res.prediction.novelty is None:
            errors += res.prediction is None
            continue
        scores.append(res.prediction.novelty)
        flags.append(res.prediction.novel)
    return {"scores": np.asarray(scores, float), "flags": np.asarray(flags, bool), "not_classified": errors}


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """Area under the ROC curve of ``unknown`` above ``known`` (Mann-Whitney U, ties count half)."""
    known, unknown = np.asarray(known, float), np.asarray(unknown, float)
    if not known.size or not unknown.size:
        return float("nan")
    both = np.concatenate([known, unknown])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(both.size)
    ranks[order] = np.arange(1, both.size + 1)
    # ties share their average rank
    _, inv, counts = np.unique(both, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    ranks = (sums / counts)[inv]
    u = ranks[known.size:].sum() - unknown.size * (unknown.size + 1) / 2
    return float(u / (known.size * unknown.size))


def open_set_report(pipeline: Pipeline, report: dict[str, Any] | None, unknown: dict[str, Any]) -> dict[str, Any]:
    """The ``open_set`` block of a bench report: flagged shares at the bundle's own threshold and the AUROC.

    ``report`` is the known spectra's :func:`run_bench` report, or None when only unknown spectra were given
    (then only ``unknown_flagged`` and ``threshold``).
    """
    known_scores = np.asarray(report["_novelty_scores"], float) if report is not None else np.zeros(0)
    known_flags = np.asarray(report["_novelty_flags"], bool) if report is not None else np.zeros(0, bool)
    u = unknown["scores"]
    return {
        "auroc": auroc(known_scores, u) if report is not None else None,
        "unknown_flagged": float(unknown["flags"].mean()) if u.size else float("nan"),
        "known_flagged": float(known_flags.mean()) if report is not None and known_flags.size else None,
        "threshold": pipeline.classifier.novelty_threshold,
        "n_known": int(known_scores.size), "n_unknown": int(u.size),
        "unknown_not_classified": int(unknown["not_classified"]),
    }


def _uncalibrated(pipeline: Pipeline, acqs: list[Acquisition]) -> dict[str, np.ndarray]:
    """Top-1 probability and top-1/top-2 margin at temperature 1 (outside the timed loop)."""
    if not acqs:
        return {"confidence": np.zeros(0), "margin": np.zeros(0)}
    logits = pipeline.classifier.logits(np.stack([pipeline.prepare(a)[0] for a in acqs]))
    top2 = -np.sort(-softmax(logits, 1.0), axis=1)[:, :2]
    return {"confidence": top2[:, 0], "margin": top2[:, 0] - (top2[:, 1] if top2.shape[1] > 1 else 0.0)}


def format_table(report: dict[str, Any], max_rows: int = 80) -> str:
    """A readable plain-text summary (works on a terminal without rich)."""
    nov, ops = report.get("novelty"), report.get("open_set")
    novelty_lines = []
    if nov:
        novelty_lines.append(f"novelty threshold {nov['threshold'] if nov['threshold'] is not None else 'none'}: "
                             f"{nov['flagged']} of {report['n']} known spectra flagged novel   "
                             f"top-1 of the others {report['top1_not_flagged']:.3f}")
    if ops:
        novelty_lines.append(_open_set_line(ops))
    lines = [
        f"model {report['model_id']}  spectra {report['n']}  not classified {report['not_classified']}"
        + (f"  head weights {report['head_precision']}" if "head_precision" in report else ""),
        f"top-1 {report['top1']:.3f}   top-3 {report['top3']:.3f}   ECE(15) {report['ece']:.3f}   "
        f"mean margin {report['mean_margin']:.3f}   (temperature {report.get('temperature', 1.0):.3g})",
        *([f"at temperature 1: ECE(15) {report['ece_uncalibrated']:.3f}   "
           f"mean margin {report['mean_margin_uncalibrated']:.3f}"] if "ece_uncalibrated" in report else []),
        "latency per spectrum (preprocess + inference): "
        f"p50 {report['latency_ms']['p50']:.2f} ms   p99 {report['latency_ms']['p99']:.2f} ms",
        *novelty_lines,
        "",
        f"{'class':<24}{'n':>5}{'top-1':>8}{'top-3':>8}{'mean p':>8}",
    ]
    for cls, row in list(report["per_class"].items())[:max_rows]:
        flag = "" if row["known_to_model"] else "  (not a model class)"
        lines.append(f"{cls:<24}{row['n']:>5}{row['top1']:>8.2f}{row['top3']:>8.2f}{row['mean_probability']:>8.2f}{flag}")
    if len(report["per_class"]) > max_rows:
        lines.append(f"... {len(report['per_class']) - max_rows} more classes in the JSON")
    return "\n".join(lines)


def _open_set_line(ops: dict[str, Any]) -> str:
    line = f"open set: {ops['unknown_flagged']:.3f} of {ops['n_unknown']} unknown spectra flagged"
    if ops.get("known_flagged") is not None:
        line += f", {ops['known_flagged']:.3f} of {ops['n_known']} known; AUROC {ops['auroc']:.3f}"
    return line + f" (threshold {ops['threshold']})"


def check_report_path(path: str | Path, option: str = "--json") -> None:
    """Refuse a report path that cannot be written, before any work is done (a ConfigError)."""
    check_output_file(path, option)


def write_report(report: dict[str, Any], path: str | Path, data: str | Path | None = None) -> None:
    """Write the report as JSON (with the data file's sha256 when ``data`` is given).

    Raises
    ------
    ConfigError
        If ``path`` cannot be written (an output path given as an option).
    """
    report = {k: v for k, v in report.items() if not k.startswith("_")}  # per-spectrum working lists
    if data is not None:
        report = dict(report, data=str(data), data_sha256=file_sha256(data))
    try:
        Path(path).write_text(json.dumps(report, indent=2) + "\n")
    except OSError as e:
        raise ConfigError(f"--json {path}: cannot write the report: {e.strerror}") from None
