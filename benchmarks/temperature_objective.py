"""Which temperature fit keeps a recipe's confidence honest: NLL or Brier score?

Usage (from the repository root)::

    python benchmarks/temperature_objective.py --threads 2 [--seed 1]            # the shipped liu recipe
    python benchmarks/temperature_objective.py --threads 2 \\
        --spec "cnn:fmcnn:val_fraction=0,epochs=300,aug.max_shift=30,aug.p_shift=0.8,shift_average=[30,15]"
    python benchmarks/temperature_objective.py --score-logits LOGITS.npz       # re-score kept logits, no training
    python benchmarks/temperature_objective.py --quick                          # smoke run (2 folds, 2 epochs)

Protocol: stratified k-fold CV over ``rruff-soysal/raw_train.npz`` (the folds of every Soysal
row in BENCHMARKS.md).  Each fold's model is trained by the product path
(:class:`benchmarks.baselines.CNNModel`) and scores the fold it did not see; the pooled
out-of-fold logits are what ``raman-edge train --calibrate-folds K`` fits its temperature on
(the twins there are trained on the same folds).  For each objective (``nll``, ``brier``,
:func:`trainer.temperature.fit_temperature`):

* **in-sample**: T fitted on all out-of-fold logits and scored on them (what the manifest's
  ``training.metrics.calibration`` reports);
* **held-out**: T fitted on the other folds' logits, applied to each fold, pooled (T is never
  scored on the spectra it was fitted on).

Reported: T, ECE (15 bins), NLL, Brier score, and the share of the NLL held by the 3 % worst
spectra (what steers an NLL fit).  ``--save-logits`` keeps the logits (they hold the data's
labels, so they are not committed).  Writes ``benchmarks/results/temperature_objective.json``.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import click
import numpy as np
from scipy.special import log_softmax

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks.baselines import SHIPPED_RECIPE_S10, CNNModel, CNNSpec, provenance, write_result  # noqa: E402
from benchmarks.protocols import stratified_kfold  # noqa: E402
from calibration.dataset import load_dataset  # noqa: E402
from trainer.temperature import OBJECTIVES, confidence_summary, fit_temperature  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "rruff-soysal" / "raw_train.npz"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "temperature_objective.json"
#: The shipped model's recipe (``--shift-tolerance 5``).
DEFAULT_SPEC = SHIPPED_RECIPE_S10
log = logging.getLogger("temperature_objective")


def out_of_fold_logits(data: Path, spec: str, folds: int, seed: int, threads: int,
                       epochs: int | None) -> dict[str, np.ndarray]:
    """``{"fold{k}_logits", "fold{k}_y"}`` for every fold: the logits of the model that did not see it."""
    dataset = load_dataset(data)
    kept: dict[str, np.ndarray] = {}
    for k, split in enumerate(stratified_kfold(dataset.labels, folds, seed), 1):
        t0 = time.perf_counter()
        train, test = dataset.subset(split.train), dataset.subset(split.test)
        model = CNNModel(CNNSpec.parse(spec), seed=seed, threads=threads, epochs=epochs).fit(train)
        z = model.scores(test.spectra, test.wavenumbers)
        y = np.searchsorted(model.classes, test.labels)
        kept[f"fold{k}_logits"], kept[f"fold{k}_y"] = z, y
        log.info("fold %d/%d: top-1 %.3f (%.0f s)", k, folds, float((z.argmax(1) == y).mean()),
                 time.perf_counter() - t0)
    return kept


def _scores(logits: np.ndarray, y: np.ndarray, t: float) -> dict[str, float]:
    s = confidence_summary(logits, y, t)
    return {"ece": s["ece"], "nll": s["nll"], "brier": s["brier"], "top1": s["top1"]}


def score(kept: dict[str, np.ndarray]) -> dict[str, Any]:
    """In-sample and held-out ECE/NLL/Brier at T = 1 and at each objective's T (see the module doc)."""
    folds = sorted(int(k[4:-7]) for k in kept if k.endswith("_logits"))
    z = {f: np.asarray(kept[f"fold{f}_logits"], dtype=np.float64) for f in folds}
    y = {f: np.asarray(kept[f"fold{f}_y"]) for f in folds}
    all_z, all_y = np.concatenate([z[f] for f in folds]), np.concatenate([y[f] for f in folds])
    nll_each = -log_softmax(all_z, axis=1)[np.arange(all_y.size), all_y]
    worst = max(1, int(round(0.03 * all_y.size)))
    out: dict[str, Any] = {"spectra": int(all_y.size), "folds": len(folds),
                           "nll_share_of_worst_3pct": float(np.sort(nll_each)[-worst:].sum() / nll_each.sum()),
                           "uncalibrated": _scores(all_z, all_y, 1.0)}
    for objective in OBJECTIVES:
        t = fit_temperature(all_z, all_y, objective=objective)
        held_t, held = [], []
        for f in folds:
            others = [g for g in folds if g != f]
            tf = fit_temperature(np.concatenate([z[g] for g in others]), np.concatenate([y[g] for g in others]),
                                 objective=objective)
            held_t.append(tf)
            held.append(z[f] / tf)
        out[objective] = {"temperature": t, "in_sample": _scores(all_z, all_y, t),
                          "held_out": _scores(np.concatenate(held), all_y, 1.0), "held_out_temperatures": held_t}
    return out


def table(result: dict[str, Any]) -> str:
    u = result["uncalibrated"]
    lines = [f"{result['spectra']} out-of-fold spectra, {result['folds']} folds; the 3 % worst hold "
             f"{result['nll_share_of_worst_3pct']:.0%} of the NLL",
             "| temperature | T | ECE(15) in-sample | ECE held-out | NLL in-sample | NLL held-out | Brier in-sample |",
             "|---|---:|---:|---:|---:|---:|---:|",
             f"| none | 1 | {u['ece']:.3f} | {u['ece']:.3f} | {u['nll']:.3f} | {u['nll']:.3f} | {u['brier']:.3f} |"]
    for objective in OBJECTIVES:
        r = result[objective]
        lines.append(f"| {objective} | {r['temperature']:.3f} | {r['in_sample']['ece']:.3f} | "
                     f"{r['held_out']['ece']:.3f} | {r['in_sample']['nll']:.3f} | {r['held_out']['nll']:.3f} | "
                     f"{r['in_sample']['brier']:.3f} |")
    return "\n".join(lines)


@click.command()
@click.option("--data", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_DATA,
              show_default=True)
@click.option("--spec", default=DEFAULT_SPEC, show_default=True, help="CNN recipe (soysal_table.py syntax).")
@click.option("--folds", type=click.IntRange(2, 10), default=5, show_default=True)
@click.option("--seed", type=click.IntRange(0, 2**31), default=0, show_default=True)
@click.option("--threads", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option("--quick", is_flag=True, help="2 folds, 2 epochs; no JSON unless --out.")
@click.option("--save-logits", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also keep the out-of-fold logits (.npz; not for the repository: it holds labels).")
@click.option("--score-logits", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Score a --save-logits file instead of training.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None)
def main(data: Path, spec: str, folds: int, seed: int, threads: int, quick: bool, save_logits: Path | None,
         score_logits: Path | None, out: Path | None) -> None:
    """Temperature by NLL vs by Brier score on out-of-fold logits (stratified k-fold CV)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    t0 = time.perf_counter()
    if score_logits is not None:
        with np.load(score_logits) as z:
            kept = {k: z[k] for k in z.files}
    else:
        if not data.is_file():
            raise click.BadParameter(f"{data}: no such file (the Soysal split; see ../shared/data/README)",
                                     param_hint="--data")
        kept = out_of_fold_logits(data, spec, 2 if quick else folds, seed, threads, 2 if quick else None)
        if save_logits is not None:
            save_logits.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(save_logits, **kept)
    result = score(kept)
    click.echo(table(result))
    doc = {"benchmark": "temperature_objective", **provenance([] if score_logits else [data], threads),
           "protocol": {"name": "stratified k-fold CV, out-of-fold logits", "folds": result["folds"], "seed": seed},
           "spec": spec, "scored_from": str(score_logits) if score_logits else None, "quick": quick,
           "seconds": round(time.perf_counter() - t0, 1), "result": result}
    if score_logits is None or out is not None:
        write_result(out, doc, default=DEFAULT_OUT, quick=quick)


if __name__ == "__main__":
    main()
