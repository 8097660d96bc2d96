"""Benchmark 1: the Soysal et al. split — every model, stratified k-fold CV, unshifted and shifted.

Data: ``../shared/data/rruff-soysal/raw_train.npz`` (347 raw spectra, 63 minerals,
200–1591 cm⁻¹).  Protocol (:mod:`benchmarks.protocols`): stratified 5-fold CV
(``StratifiedKFold(shuffle=True, random_state=seed)``), the same folds for every
model.  Every model is trained on the unshifted training folds and tested on the
test fold as it is and moved by ±15 and ±30 cm⁻¹ (each direction reported on its
own; the vacated end is filled with the local baseline, see
:func:`benchmarks.protocols.shift_spectra`).  Top-1 / top-3: mean ± std over folds.

Models (:mod:`benchmarks.baselines`): ``knn-peaks``, ``svm-peaks``, ``1nn-raw``,
``mlp-small/mid/large``; the paper's CNN settings ``liu-m2`` (Liu's original,
m=2 n=3 dense 2048), ``liu-m64`` (m=64), ``liu-n10`` (m=2 n=10); and
``cnn:ARCH`` for every architecture ``trainer.models`` registers (found at run
time).  Every CNN also yields its CNN+KNN row (``cnn+knn:...``: 1-NN on the
backbone features of its exported ONNX backbone), at no extra training.
The paper's figures (trained on ~850 spectra; we have 347) are printed beside ours.

Usage (repository root)::

    python benchmarks/soysal_table.py --models baselines            # KNN/SVM/1-NN/MLPs, minutes
    python benchmarks/soysal_table.py --threads 2                   # everything (days on 2 cores: cnn:sang)
    python benchmarks/soysal_table.py --models liu-m64,cnn:compact:dense=32   # some CNNs, merged into the JSON
    python benchmarks/soysal_table.py --quick                       # smoke test: 2 folds, 2 epochs, no JSON
    python benchmarks/soysal_table.py --list                        # model names

Results merge into ``benchmarks/results/soysal_table.json`` when the protocol
(data hash, folds, seed, shifts, fill) is unchanged, so CNNs can be run one at a
time; ``--fresh`` starts the file over.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks.baselines import (DEVICE_HELP, previous_result, quiet_sklearn, BASELINES, CNNModel, CNNSpec, PeakCounter, discover_architectures,  # noqa: E402
                                  evaluate, fmt_mean_std, model_factory, provenance, split_model_list)
from benchmarks.protocols import DEFAULT_FILL, FILL_MODES, shift_spectra, stratified_kfold, summarise  # noqa: E402
from calibration.dataset import load_dataset  # noqa: E402
from calibration.errors import RamanEdgeError  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "rruff-soysal" / "raw_train.npz"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "soysal_table.json"

#: The CNN settings whose figures Soysal et al. report (Liu's network; dense 2048 as in Liu et al.).
ALIASES: dict[str, CNNSpec] = {
    "liu-m2": CNNSpec("liu", {"pool": 2, "n_pool": 3, "dense": 2048}, alias="liu-m2"),
    "liu-m64": CNNSpec("liu", {"pool": 64, "n_pool": 3, "dense": 2048}, alias="liu-m64"),
    "liu-n10": CNNSpec("liu", {"pool": 2, "n_pool": 10, "dense": 2048}, alias="liu-n10"),
}

#: Soysal et al. (2025) figures, fraction correct: {model: {shift: {"top1", "top3"}}}.
PAPER: dict[str, dict[str, dict[str, float]]] = {
    "knn-peaks": {"0": {"top1": 0.51}},
    "svm-peaks": {"0": {"top1": 0.49}},
    "liu-m2": {"0": {"top1": 0.83, "top3": 0.91}, "15": {"top1": 0.29, "top3": 0.51},
               "30": {"top1": 0.08, "top3": 0.16}},
    "liu-m64": {"0": {"top1": 0.62, "top3": 0.82}, "15": {"top1": 0.47, "top3": 0.65},
                "30": {"top1": 0.39, "top3": 0.57}},
    "liu-n10": {"0": {"top1": 0.63, "top3": 0.80}, "15": {"top1": 0.42, "top3": 0.70},
                "30": {"top1": 0.46, "top3": 0.63}},
}

log = logging.getLogger("soysal_table")


def presets() -> dict[str, list[str]]:
    """Named groups of models (``--models baselines`` etc.)."""
    zoo = [f"cnn:{a}" for a in discover_architectures()]
    return {"baselines": list(BASELINES), "paper-cnn": list(ALIASES), "zoo": zoo,
            "all": list(BASELINES) + list(ALIASES) + zoo}


def resolve_models(names: tuple[str, ...]) -> list[str]:
    """Expand presets and comma lists; keep order, drop repeats."""
    groups = presets()
    out: list[str] = []
    for name in split_model_list(names or ("all",)):
        for m in groups.get(name, [name]):
            if m not in out:
                out.append(m)
    return out


def shift_keys(shifts: list[float]) -> list[tuple[str, float]]:
    """``[("0", 0), ("+15", 15), ("-15", -15), ...]``."""
    keys = [("0", 0.0)]
    for s in shifts:
        keys += [(f"+{s:g}", float(s)), (f"-{s:g}", -float(s))]
    return keys


def run(data: Path, models: list[str], folds: int, seed: int, shifts: list[float], fill: str, *,
        threads: int, epochs: int | None, patience: int | None, mlp_iter: int,
        device: str = "cpu") -> dict[str, Any]:
    """Cross-validate ``models``; return ``{model: {...}}`` and the protocol description."""
    dataset = load_dataset(data)
    splits = stratified_kfold(dataset.labels, folds, seed)
    counter = PeakCounter()
    factories = {m: model_factory(m, counter=counter, seed=seed, threads=threads, epochs=epochs,
                                  patience=patience, mlp_iter=mlp_iter, preprocessing=None, aliases=ALIASES,
                                  device=device)
                 for m in models}
    keys = shift_keys(shifts)
    per_fold: dict[str, dict[str, list[dict[str, float]]]] = {}
    info: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    descriptions: dict[str, str] = {}

    def record(model: Any, name: str, test: Any, shifted: dict[str, np.ndarray], t_fit: float) -> None:
        t0 = time.perf_counter()
        for key, _ in keys:
            r = evaluate(model.scores(shifted[key], test.wavenumbers), model.classes, test.labels)
            per_fold.setdefault(name, {}).setdefault(key, []).append(r)
        seconds[name] = seconds.get(name, 0.0) + t_fit + time.perf_counter() - t0
        info[name] = model.info()
        descriptions[name] = model.description

    for i, split in enumerate(splits, 1):
        train, test = dataset.subset(split.train), dataset.subset(split.test)
        shifted = {key: shift_spectra(test.spectra, test.wavenumbers, d, fill=fill) for key, d in keys}
        for name in models:
            t0 = time.perf_counter()
            model = factories[name]().fit(train)
            t_fit = time.perf_counter() - t0
            record(model, name, test, shifted, t_fit)
            if isinstance(model, CNNModel) and model.feature_knn is not None:
                record(model.feature_knn, model.feature_knn.name, test, shifted, 0.0)
            log.info("fold %d/%d %-22s top-1 %s  (%.0f s)", i, folds, name,
                     " ".join(f"{k}:{per_fold[name][k][-1]['top1']:.2f}" for k, _ in keys), seconds[name])
    results: dict[str, Any] = {}
    for name, by_shift in per_fold.items():
        entry: dict[str, Any] = {"description": descriptions[name], "seconds": round(seconds[name], 1),
                                 "info_last_fold": info.get(name, {}), "shifts": {}}
        for key, rows in by_shift.items():
            entry["shifts"][key] = {m: summarise(r[m] for r in rows) for m in ("top1", "top3")}
        if name in PAPER:
            entry["paper"] = PAPER[name]
        results[name] = entry
    protocol = {"name": "stratified k-fold CV", "folds": folds, "seed": seed, "shifts_cm1": shifts,
                "shift_fill": fill, "spectra": len(dataset), "classes": len(dataset.classes),
                "split_notes": [s.notes for s in splits]}
    return {"protocol": protocol, "models": results}


def print_table(doc: dict[str, Any], title: str) -> None:
    """Top-1 at every shift, top-3 unshifted, and the paper's figures (%)."""
    from rich.console import Console
    from rich.table import Table

    keys = list(next(iter(doc["models"].values()))["shifts"]) if doc["models"] else []
    table = Table(title=title)
    table.add_column("model", justify="left")
    for k in keys:
        table.add_column(f"top-1 {k}", justify="right")
    table.add_column("top-3 0", justify="right")
    table.add_column("paper top-1/top-3\n0 | 15 | 30", justify="right")
    table.add_column("s", justify="right")
    for name, e in doc["models"].items():
        p = e.get("paper", {})
        paper = " | ".join("/".join(f"{100 * v:.0f}" for v in p[s].values()) if s in p else "–"
                           for s in ("0", "15", "30")) if p else ""
        table.add_row(name, *[fmt_mean_std(e["shifts"].get(k, {}).get("top1")) for k in keys],
                      fmt_mean_std(e["shifts"].get("0", {}).get("top3")), paper, f"{e['seconds']:.0f}")
    Console(width=200).print(table)


@click.command()
@click.option("--data", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=DEFAULT_DATA,
              show_default=True, help="Labelled raw spectra (.npz).")
@click.option("--models", "model_names", multiple=True, metavar="NAMES",
              help="Models or presets (baselines, paper-cnn, zoo, all), repeatable or comma-separated; "
                   "cnn:ARCH[:key=value,...] for any registered architecture.  [default: all]")
@click.option("--folds", type=click.IntRange(2, 20), default=5, show_default=True)
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True,
              help="Seed of the folds, the MLPs and the CNN training.")
@click.option("--shifts", default="15,30", show_default=True, help="Shifts (cm-1), each tested + and -.")
@click.option("--fill", type=click.Choice(FILL_MODES), default=DEFAULT_FILL, show_default=True,
              help="Value of the end a shift vacates.")
@click.option("--epochs", type=click.IntRange(1, 100000), default=None,
              help="Cap on CNN epochs [default: each architecture's TrainConfig].")
@click.option("--patience", type=click.IntRange(1, 100000), default=None, help="CNN early-stopping patience.")
@click.option("--mlp-iter", type=click.IntRange(1, 100000), default=300, show_default=True,
              help="MLP epochs (max_iter).")
@click.option("--threads", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Torch and BLAS threads (shared machines).")
@click.option("--device", default="cpu", show_default=True, help=DEVICE_HELP)
@click.option("--quick", is_flag=True, help="Smoke test: 2 folds, 2 CNN epochs, 30 MLP epochs; no JSON unless --out.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help=f"JSON output [default: {DEFAULT_OUT.relative_to(ROOT)}].")
@click.option("--fresh", is_flag=True, help="Replace the JSON instead of merging into it.")
@click.option("--list", "list_models", is_flag=True, help="List model names and presets, then exit.")
def main(data: Path, model_names: tuple[str, ...], folds: int, seed: int, shifts: str, fill: str,
         epochs: int | None, patience: int | None, mlp_iter: int, threads: int, device: str, quick: bool,
         out: Path | None, fresh: bool, list_models: bool) -> None:
    """Benchmark 1: Soysal et al. split, all models, unshifted and shifted."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("trainer").setLevel(logging.WARNING)
    if list_models:
        for k, v in presets().items():
            click.echo(f"{k}: {', '.join(v)}")
        return
    from threadpoolctl import threadpool_limits

    if quick:
        folds, epochs, mlp_iter = 2, min(epochs or 2, 2), min(mlp_iter, 30)
    if out is None and not quick:
        out = DEFAULT_OUT
    try:
        shift_list = [float(s) for s in shifts.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {shifts!r}", param_hint="--shifts")
    models = resolve_models(model_names)
    t0 = time.perf_counter()
    try:
        with threadpool_limits(threads), quiet_sklearn():
            doc = run(data, models, folds, seed, shift_list, fill, threads=threads, epochs=epochs,
                      patience=patience, mlp_iter=mlp_iter, device=device)
    except RamanEdgeError as e:
        raise click.ClickException(str(e)) from None
    doc = {"benchmark": "soysal_table", **provenance([data], threads), "seconds": round(time.perf_counter() - t0, 1),
           "quick": quick, "cnn_epochs_cap": epochs, **doc}
    if out is not None:
        doc = merge(out, doc, fresh)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2) + "\n")
    print_table(doc, f"{data.name}: {doc['protocol']['folds']}-fold stratified CV, top-1/top-3 % (mean ± std), "
                     f"shifts in cm-1, fill={fill}")
    if out is not None:
        click.echo(f"wrote {out}")


def merge(out: Path, doc: dict[str, Any], fresh: bool) -> dict[str, Any]:
    """Keep the models of an earlier run with the same protocol that this run did not redo."""
    old = None if fresh else previous_result(out)
    if old is None:
        return doc
    same = (old.get("data", [{}])[0].get("sha256") == doc["data"][0]["sha256"]
            and {k: old.get("protocol", {}).get(k) for k in ("folds", "seed", "shifts_cm1", "shift_fill")}
            == {k: doc["protocol"][k] for k in ("folds", "seed", "shifts_cm1", "shift_fill")}
            and not old.get("quick") and not doc.get("quick"))
    if not same:
        log.warning("%s holds a different protocol; replacing it", out)
        return doc
    models = {k: v for k, v in old.get("models", {}).items() if k not in doc["models"]}
    models.update(doc["models"])
    runs = old.get("runs", [{k: old.get(k) for k in ("command", "date_utc", "seconds")}])
    doc["runs"] = runs + [{k: doc.get(k) for k in ("command", "date_utc", "seconds")}]
    doc["models"] = models
    return doc


if __name__ == "__main__":
    main()
