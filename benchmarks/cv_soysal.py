"""Stratified k-fold CV on the Soysal et al. raw training spectra: the default CNN vs 1-NN.

Usage (from the repository root)::

    python benchmarks/cv_soysal.py                 # default train config, 5 folds -> results/cv_soysal.json
    python benchmarks/cv_soysal.py --quick         # smoke test (2 folds, 2 epochs), not saved by default
    python benchmarks/cv_soysal.py --sweep         # candidate architectures -> results/cv_soysal_sweep.json
    python benchmarks/cv_soysal.py --set pool=2 --set dense=64   # one variant
    python benchmarks/cv_soysal.py --aug p_spikes=0.3 --out results/cv_soysal_aug.json   # augmentation options

Both classifiers see the same folds (``StratifiedKFold(shuffle=True, random_state=seed)``).

* CNN: :func:`trainer.train.train` with the ``raman-edge train`` defaults on each
  training fold (it holds out its own stratified validation split for early
  stopping), evaluated on the test fold after the shared preprocessing.
* 1-NN: ``KNeighborsClassifier(n_neighbors=1)`` on per-spectrum min-max-normalised
  *raw* spectra (Euclidean).  Its top-3 ranks classes by their nearest training
  spectrum.

Top-1 / top-3 accuracy are reported as mean ± std over folds (std with ddof=0),
with wall time.  The data set has 63 classes with 3–13 spectra each, so some
classes have fewer spectra than folds; scikit-learn's warning about that is
expected and silenced.  Torch uses 2 threads by default (shared machines).
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import sys
import time
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from calibration.dataset import Dataset, file_sha256, load_dataset  # noqa: E402
from benchmarks.baselines import previous_result  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "rruff-soysal" / "raw_train.npz"
RESULTS = ROOT / "benchmarks" / "results"
MB_BUDGET = 4.0

#: Architectures compared to choose the defaults (all but the first fit MB_BUDGET).
SWEEP: list[dict[str, Any]] = [
    {"pool": 2, "n_pool": 3, "dense": 64},     # Liu's pooling, dense cut 32x: 2.9 MB
    {"pool": 3, "n_pool": 3, "dense": 256},    # 3.5 MB
    {"pool": 4, "n_pool": 3, "dense": 256},    # 1.5 MB
    {"pool": 4, "n_pool": 4, "dense": 256},    # 0.5 MB
    {"pool": 2, "n_pool": 6, "dense": 256},    # deeper, 1.8 MB
    {"pool": 4, "n_pool": 3, "dense": 512},    # 2.9 MB
    # Round 2: the length before the dense layer mattered most in round 1; shrink the dense instead.
    {"pool": 2, "n_pool": 3, "dense": 32},     # 1.5 MB
    {"pool": 3, "n_pool": 3, "dense": 64},     # 0.9 MB
    {"pool": 3, "n_pool": 3, "dense": 128},    # 1.7 MB
    {"pool": 2, "n_pool": 4, "dense": 128},    # 2.9 MB
    # Training procedure on a round-1 leader.
    {"pool": 2, "n_pool": 3, "dense": 64, "monitor": "accuracy"},
    {"pool": 2, "n_pool": 3, "dense": 64, "augment": False},
    {"pool": 2, "n_pool": 3, "dense": 64, "patience": 80},
]

log = logging.getLogger("cv_soysal")


def minmax(x: np.ndarray) -> np.ndarray:
    lo = x.min(axis=1, keepdims=True)
    span = x.max(axis=1, keepdims=True) - lo
    return (x - lo) / np.where(span > 0, span, 1.0)


def topk_from_ranking(ranked: np.ndarray, y: np.ndarray, k: int) -> float:
    return float((ranked[:, :k] == y[:, None]).any(axis=1).mean())


def knn_fold(train: Dataset, test: Dataset) -> dict[str, float]:
    """1-NN on min-max-normalised raw spectra; top-3 ranks classes by nearest member."""
    from sklearn.neighbors import KNeighborsClassifier

    t0 = time.perf_counter()
    xtr, xte = minmax(train.spectra.astype(np.float64)), minmax(test.spectra.astype(np.float64))
    clf = KNeighborsClassifier(n_neighbors=1).fit(xtr, train.labels)
    top1 = float((clf.predict(xte) == test.labels).mean())
    _, idx = clf.kneighbors(xte, n_neighbors=len(xtr))
    ranked = []
    for row in train.labels[idx]:
        _, first = np.unique(row, return_index=True)
        ranked.append(row[np.sort(first)][:3])
    ranked_arr = np.array([list(r) + [""] * (3 - len(r)) for r in ranked])
    return {"top1": top1, "top3": topk_from_ranking(ranked_arr, test.labels, 3),
            "seconds": time.perf_counter() - t0}


def cnn_fold(train: Dataset, test: Dataset, config: Any) -> dict[str, float]:
    from trainer.train import predict_logits, preprocess_dataset, train as fit

    t0 = time.perf_counter()
    result = fit(train, config)
    t_train = time.perf_counter() - t0
    logits = predict_logits(result.model, preprocess_dataset(test, result.preprocessing))
    classes = np.asarray(result.classes)
    ranked = classes[np.argsort(-logits, axis=1, kind="stable")]
    return {"top1": topk_from_ranking(ranked, test.labels, 1), "top3": topk_from_ranking(ranked, test.labels, 3),
            "seconds": time.perf_counter() - t0, "train_seconds": t_train,
            "epochs_run": result.epochs_run, "best_epoch": result.best_epoch}


def summarise(folds: list[dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("top1", "top3"):
        v = np.array([f[key] for f in folds])
        out[key] = {"mean": float(v.mean()), "std": float(v.std()), "folds": v.round(4).tolist()}
    out["seconds"] = float(sum(f["seconds"] for f in folds))
    if "epochs_run" in folds[0]:
        out["epochs_run"] = [f["epochs_run"] for f in folds]
        out["best_epoch"] = [f["best_epoch"] for f in folds]
    return out


def run_cv(dataset: Dataset, config: Any, folds: int, seed: int, knn: bool = True,
           label: str = "cnn") -> dict[str, Any]:
    from sklearn.model_selection import StratifiedKFold

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class")
        splits = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
                      .split(np.zeros(len(dataset)), dataset.labels))
    res_cnn, res_knn = [], []
    for i, (tr, te) in enumerate(splits, 1):
        train, test = dataset.subset(tr), dataset.subset(te)
        if knn:
            res_knn.append(knn_fold(train, test))
        res_cnn.append(cnn_fold(train, test, config))
        log.info("%s fold %d/%d: top1 %.3f top3 %.3f (%d epochs, %.0f s)%s", label, i, folds,
                 res_cnn[-1]["top1"], res_cnn[-1]["top3"], res_cnn[-1]["epochs_run"], res_cnn[-1]["seconds"],
                 f"; 1-NN top1 {res_knn[-1]['top1']:.3f}" if knn else "")
    out = {"cnn": summarise(res_cnn)}
    if knn:
        out["knn"] = summarise(res_knn)
    return out


def make_config(overrides: dict[str, Any], epochs: int | None, seed: int, threads: int,
                aug: tuple[str, ...] = ()) -> Any:
    from trainer.augment import parse_augment_options
    from trainer.train import TrainConfig

    known = {f.name: f for f in fields(TrainConfig)}
    kw: dict[str, Any] = {}
    for k, v in overrides.items():
        if k not in known or k == "augment_config":
            raise click.BadParameter(f"unknown TrainConfig field {k!r}", param_hint="--set")
        kw[k] = v
    if epochs is not None:
        kw["epochs"] = epochs
    kw.setdefault("seed", seed)
    kw.setdefault("threads", threads)
    if aug:  # augmentation options as `raman-edge train --aug NAME=VALUE` reads them
        kw["augment_config"] = parse_augment_options(aug)
    return TrainConfig(**kw).check()


def _parse_set(values: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in values:
        if "=" not in item:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--set")
        k, v = item.split("=", 1)
        out[k.strip()] = json.loads(v) if v.strip() not in ("", ) and v.strip()[0] in "-0123456789tf[{\"n" \
            else v.strip()
    return out


def _fmt(s: dict[str, Any]) -> str:
    return f"{s['mean']:.3f} ± {s['std']:.3f}"


def _print_table(rows: list[tuple[str, dict[str, Any], str]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("model", "size", "top-1", "top-3", "time [s]"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, r, size in rows:
        table.add_row(name, size, _fmt(r["top1"]), _fmt(r["top3"]), f"{r['seconds']:.0f}")
    Console().print(table)


def _provenance(data: Path, folds: int, seed: int, threads: int) -> dict[str, Any]:
    import platform

    import sklearn
    import torch

    return {"data": str(data), "data_sha256": file_sha256(data), "folds": folds, "seed": seed,
            "threads": threads, "command": " ".join(sys.argv),
            "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "numpy": np.__version__, "sklearn": sklearn.__version__},
            "cpu": platform.processor() or platform.machine()}


@click.command()
@click.option("--data", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=DEFAULT_DATA,
              show_default=True, help="Labelled raw spectra (.npz).")
@click.option("--folds", type=click.IntRange(2, 20), default=5, show_default=True)
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True,
              help="Seed of the fold split and of training.")
@click.option("--epochs", type=click.IntRange(1, 100000), default=None,
              help="Epoch budget per fold (default: the train command's).")
@click.option("--threads", type=click.IntRange(1, 64), default=2, show_default=True, help="Torch threads.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a TrainConfig field.")
@click.option("--aug", "aug", multiple=True, metavar="NAME=VALUE",
              help="Augmentation option, as `raman-edge train --aug` (repeatable; docs/augmentation.md).")
@click.option("--sweep", is_flag=True, help="Compare the SWEEP architectures (CNN only) instead.")
@click.option("--resume", is_flag=True, help="With --sweep: reuse results in --out for identical configs.")
@click.option("--quick", is_flag=True, help="Smoke test: 2 folds, 2 epochs; writes nothing unless --out.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="JSON output (default results/cv_soysal.json, or cv_soysal_sweep.json with --sweep).")
def main(data: Path, folds: int, seed: int, epochs: int | None, threads: int, sets: tuple[str, ...],
         aug: tuple[str, ...], sweep: bool, resume: bool, quick: bool, out: Path | None) -> None:
    """Cross-validate the default CNN and a 1-NN baseline on raw_train.npz."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("trainer").setLevel(logging.WARNING)
    from trainer.models import parameter_count

    if quick:
        folds, epochs = 2, epochs or 2
    dataset = load_dataset(data)
    n_classes = len(dataset.classes)
    overrides = _parse_set(sets)
    variants = [dict(v, **overrides) for v in SWEEP] if sweep else [overrides]
    if out is None and not quick:
        out = RESULTS / ("cv_soysal_sweep.json" if sweep else "cv_soysal.json")
    previous: dict[str, dict[str, Any]] = {}
    knn: dict[str, Any] | None = None
    old = previous_result(out) if resume else None
    if old is not None:
        if (old.get("data_sha256"), old.get("folds"), old.get("seed")) == (file_sha256(data), folds, seed):
            previous = {json.dumps(r["config"], sort_keys=True): r for r in old.get("sweep", [])}
            knn = old.get("knn")
    t0 = time.perf_counter()
    results, rows = [], []
    for i, variant in enumerate(variants):
        config = make_config(variant, epochs, seed, threads, aug)
        if config.arch == "liu":
            params = parameter_count(1392, n_classes, config.pool, config.n_pool, config.dense)
            label = f"liu m={config.pool} n={config.n_pool} dense={config.dense}"
        else:  # other architectures (--set arch=compact --set 'arch_options={"dense": 96}'): count the built model
            from trainer.models import build_model, count_parameters

            params = count_parameters(build_model({"points": 1392, "classes": n_classes, **config.arch_params()},
                                                  config.arch))
            label = config.arch
        extra = {k: v for k, v in variant.items() if k not in ("pool", "n_pool", "dense", "arch")}
        if extra:
            label += " " + " ".join(f"{k}={v}" for k, v in extra.items())
        if aug:
            label += " aug " + " ".join(aug)
        key = json.dumps(config.to_dict(), sort_keys=True)
        if key in previous:
            entry = previous[key]
            log.info("%s: reusing previous result", label)
        else:
            r = run_cv(dataset, config, folds, seed, knn=knn is None, label=label)
            knn = r.get("knn", knn)
            entry = {"config": config.to_dict(), "parameters": params, "megabytes": params * 4 / 1e6,
                     "cnn": r["cnn"]}
        results.append(entry)
        rows.append((label, entry["cnn"], f"{params * 4 / 1e6:.1f} MB"))
    assert knn is not None
    rows.append(("1-NN, min-max raw", knn, f"{len(dataset) * 1392 * 4 / 1e6 * (folds - 1) / folds:.1f} MB"))
    total = time.perf_counter() - t0
    _print_table(rows, f"{folds}-fold stratified CV on {data.name} ({len(dataset)} spectra, {n_classes} classes)"
                       f" — {total:.0f} s")
    doc = {"benchmark": "cv_soysal", **_provenance(data, folds, seed, threads), "seconds": total,
           "knn": {"description": "1-NN, Euclidean, per-spectrum min-max normalised raw spectra", **knn}}
    if sweep:
        doc["sweep"] = results
    else:
        doc["cnn"] = results[0]
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2) + "\n")
        click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
