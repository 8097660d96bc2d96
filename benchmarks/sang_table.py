"""Benchmark 2: the Sang et al. RRUFF sets — random 70/30 and specimen-grouped 70/30 splits.

Data: ``../shared/data/rruff-sang/dataset_1_dev.npz`` (3726 spectra, 192 minerals)
and ``dataset_2_dev.npz`` (6226 spectra, 1332 minerals): RRUFF *processed*
spectra on 30–1599 cm⁻¹ at 1 cm⁻¹, zero outside each spectrum's measured range.
Each spectrum is divided by its maximum on loading (the published values peak
between 0.85 and 1).

Protocols (:mod:`benchmarks.protocols`), repeated over ``--seeds``, mean ± std:

* ``random``: stratified random 70/30 (the papers' protocol);
* ``grouped``: 70/30 with no RRUFF specimen on both sides
  (``StratifiedGroupKFold``, 3 of 10 folds as test).  Minerals with a single
  specimen stay in training as distractors and are never tested (Dataset_2:
  1096 of 1332), so the tested minerals differ from the random split's.  For a
  like-for-like comparison every random-split row also reports ``top1_multi``:
  top-1 on the test spectra of minerals with two or more specimens.

Models: the cheap baselines of :mod:`benchmarks.baselines` (``1nn-raw``,
``knn-peaks``, ``svm-peaks``; MLPs on request) and the CNNs ``cnn:liu``,
``cnn:sang``, ``cnn:drcnn``, ``cnn:compact`` — those the trainer registers (the
others are skipped with a note) — trained by :func:`trainer.train.train` with
:data:`SANG_SPEC` (the product's preprocessing steps on the Sang grid 30–1599
cm⁻¹).  Published random-split top-1 on the full sets (DRCNN paper, Table 2)
is printed beside ours; ours use the dev sets (about three quarters of the specimens).

Usage (repository root)::

    python benchmarks/sang_table.py --models baselines            # 1-NN/KNN/SVM, both sets, both protocols
    python benchmarks/sang_table.py --models cnn --seeds 0        # the CNNs (days on 2 cores)
    python benchmarks/sang_table.py --quick --models cnn          # smoke test: 400/200 spectra, 1 epoch, no JSON

Results merge into ``benchmarks/results/sang_table.json`` (keyed by dataset,
protocol and model; each entry lists its seeds, split notes are kept per seed)
when the test fraction is unchanged; a set whose file hash changed is replaced.
"""
from __future__ import annotations

import copy
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

from benchmarks.baselines import (previous_result, quiet_sklearn, CNNModel, PeakCounter, discover_architectures, evaluate,  # noqa: E402
                                  fmt_mean_std, model_factory, provenance, split_model_list)
from benchmarks.protocols import grouped_split, random_split, summarise  # noqa: E402
from calibration.dataset import Dataset, load_dataset  # noqa: E402
from calibration.errors import ConfigError, RamanEdgeError  # noqa: E402
from calibration.preprocess import DEFAULT_SPEC  # noqa: E402

DEFAULT_DIR = ROOT.parent / "shared" / "data" / "rruff-sang"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "sang_table.json"
DATASETS = {"1": "dataset_1_dev.npz", "2": "dataset_2_dev.npz"}
PROTOCOLS = ("random", "grouped")

#: The product's preprocessing steps on the Sang grid (30–1599 cm⁻¹, 1570 points).
SANG_SPEC: dict[str, Any] = copy.deepcopy(DEFAULT_SPEC)
SANG_SPEC["grid"] = {"start": 30.0, "stop": 1599.0, "step": 1.0}

#: CNNs of this benchmark, in table order (run when the trainer registers them).
CNN_ARCHS = ("liu", "sang", "drcnn", "compact")
BASELINE_MODELS = ("1nn-raw", "knn-peaks", "svm-peaks")

#: Published top-1, random 70/30 split of the full sets (DRCNN paper, Table 2).
PAPER: dict[str, dict[str, float]] = {
    "cnn:liu": {"1": 0.960, "2": 0.831},
    "cnn:sang": {"1": 0.977, "2": 0.879},
    "cnn:drcnn": {"1": 0.980, "2": 0.882},
}

log = logging.getLogger("sang_table")


def load_normalised(path: Path) -> Dataset:
    """Load a Sang set and divide each spectrum by its maximum."""
    d = load_dataset(path)
    peak = d.spectra.max(axis=1, keepdims=True)
    if (peak <= 0).any():
        raise ConfigError(f"{path}: spectrum {int(np.argmax(peak[:, 0] <= 0))} has no positive value")
    return Dataset((d.spectra / peak).astype(np.float32), d.labels, d.wavenumbers, d.extras, d.path)


def resolve_models(names: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Expand ``baselines``/``cnn``/``all``; return (models to run, notes on skipped CNNs)."""
    registered = set(discover_architectures())
    cnns = [f"cnn:{a}" for a in CNN_ARCHS if a in registered]
    notes = [f"cnn:{a} not registered by the trainer; skipped" for a in CNN_ARCHS if a not in registered]
    groups = {"baselines": list(BASELINE_MODELS), "cnn": cnns, "all": list(BASELINE_MODELS) + cnns}
    out: list[str] = []
    for name in split_model_list(names or ("all",)):
        for m in groups.get(name, [name]):
            if m not in out:
                out.append(m)
    return out, notes


def multi_specimen_mask(dataset: Dataset) -> np.ndarray | None:
    """Boolean per spectrum: its mineral has two or more specimens (None without specimen ids)."""
    groups = dataset.specimen_ids()
    if groups is None:
        return None
    mask = np.zeros(len(dataset), dtype=bool)
    for c in np.unique(dataset.labels):
        m = dataset.labels == c
        mask[m] = np.unique(groups[m]).size > 1
    return mask


def run_dataset(dataset: Dataset, key: str, models: list[str], protocols: list[str], seeds: list[int],
                test_size: float, *, threads: int, epochs: int | None, patience: int | None,
                mlp_iter: int, max_train: int | None = None, max_test: int | None = None) -> dict[str, Any]:
    """All protocols × seeds × models on one dataset: ``{protocol: {model: entry}}`` and split notes."""
    counter = PeakCounter()
    groups = dataset.specimen_ids()
    multi = multi_specimen_mask(dataset)
    out: dict[str, Any] = {"spectra": len(dataset), "classes": len(dataset.classes),
                           "specimens": int(np.unique(groups).size) if groups is not None else None,
                           "protocols": {}}
    for protocol in protocols:
        per_model: dict[str, list[dict[str, float]]] = {}
        seconds: dict[str, float] = {}
        info: dict[str, Any] = {}
        notes: dict[str, Any] = {}
        for seed in seeds:
            split = (random_split(dataset.labels, test_size, seed) if protocol == "random"
                     else grouped_split(dataset.labels, groups, test_size, seed))
            train_idx, test_idx = split.train, split.test
            rng = np.random.default_rng(seed)
            if max_train is not None and train_idx.size > max_train:  # smoke tests only
                train_idx = np.sort(rng.choice(train_idx, max_train, replace=False))
            if max_test is not None and test_idx.size > max_test:
                test_idx = np.sort(rng.choice(test_idx, max_test, replace=False))
            notes[str(seed)] = split.notes
            train, test = dataset.subset(train_idx), dataset.subset(test_idx)
            for name in models:
                factory = model_factory(name, counter=counter, seed=seed, threads=threads, epochs=epochs,
                                        patience=patience, mlp_iter=mlp_iter, preprocessing=SANG_SPEC)
                t0 = time.perf_counter()
                model = factory().fit(train)
                t_fit = time.perf_counter() - t0
                fitted = [model] + ([model.feature_knn] if isinstance(model, CNNModel) and model.feature_knn else [])
                for i, m in enumerate(fitted):
                    t1 = time.perf_counter()
                    scores = m.scores(test.spectra, test.wavenumbers)
                    r = evaluate(scores, m.classes, test.labels)
                    if protocol == "random" and multi is not None:
                        sel = multi[test_idx]
                        r["top1_multi"] = evaluate(scores[sel], m.classes, test.labels[sel], ks=(1,))["top1"]
                    per_model.setdefault(m.name, []).append(r)
                    seconds[m.name] = seconds.get(m.name, 0.0) + (t_fit if i == 0 else 0.0) \
                        + time.perf_counter() - t1
                    info[m.name] = {"description": m.description, **m.info()}
                    log.info("dataset %s %-7s seed %d %-16s top-1 %.3f top-3 %.3f (%.0f s)", key, protocol, seed,
                             m.name, r["top1"], r["top3"], seconds[m.name])
        entries = {}
        for name, rows in per_model.items():
            entries[name] = {"description": info[name].pop("description"), "seeds": list(seeds),
                             "seconds": round(seconds[name], 1), "info_last_seed": info[name],
                             **{k: summarise(r[k] for r in rows) for k in rows[0]}}
            if protocol == "random" and name in PAPER:
                entries[name]["paper_top1"] = PAPER[name][key]
        out["protocols"][protocol] = {"split_notes": notes, "models": entries}
    return out


def print_table(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Sang et al. RRUFF dev sets: top-1 % (mean ± std over seeds); published = random split, "
                        "full sets")
    table.add_column("model")
    cols = []
    for key, d in doc["datasets"].items():
        for protocol in d["protocols"]:
            cols.append((key, protocol))
            table.add_column(f"D{key} {protocol}", justify="right")
            if protocol == "random":
                cols.append((key, "random_multi"))
                table.add_column(f"D{key} random\n≥2 specimens", justify="right")
        cols.append((key, "paper"))
        table.add_column(f"D{key} published", justify="right")
    names: list[str] = []
    for d in doc["datasets"].values():
        for p in d["protocols"].values():
            names += [n for n in p["models"] if n not in names]
    for name in names:
        row = []
        for key, what in cols:
            d = doc["datasets"][key]["protocols"]
            if what == "paper":
                row.append(f"{100 * PAPER[name][key]:.1f}" if name in PAPER else "")
            elif what == "random_multi":
                row.append(fmt_mean_std(d["random"]["models"].get(name, {}).get("top1_multi")))
            else:
                row.append(fmt_mean_std(d[what]["models"].get(name, {}).get("top1")))
        table.add_row(name, *row)
    Console(width=220).print(table)


def merge(out: Path, doc: dict[str, Any], fresh: bool) -> dict[str, Any]:
    """Keep earlier (dataset, protocol, model) entries of a run with the same data and test size.

    Each model entry records its own seeds, so cheap baselines over three seeds
    and a CNN over one can share the file.
    """
    old = None if fresh else previous_result(out)
    if old is None:
        return doc
    keys = ("test_size",)
    subsets = any(d.get(k) for d in (old, doc) for k in ("quick", "max_train", "max_test"))
    if {k: old.get("protocol", {}).get(k) for k in keys} != {k: doc["protocol"][k] for k in keys} or subsets:
        log.warning("%s holds a different protocol; replacing it", out)
        return doc
    old_sha = {Path(x["path"]).name: x["sha256"] for x in old.get("data", [])}
    new_sha = {Path(x["path"]).name: x["sha256"] for x in doc["data"]}
    merged = copy.deepcopy(old.get("datasets", {}))
    for key, d in doc["datasets"].items():
        name = DATASETS[key]
        if key in merged and old_sha.get(name) != new_sha.get(name):
            merged.pop(key)  # the file changed: its old figures no longer apply
        if key not in merged:
            merged[key] = d
            continue
        for protocol, p in d["protocols"].items():
            target = merged[key]["protocols"].setdefault(protocol, {"split_notes": {}, "models": {}})
            target["split_notes"].update(p["split_notes"])
            target["models"].update(p["models"])
    doc["data"] = [x for x in old.get("data", []) if Path(x["path"]).name not in new_sha] + doc["data"]
    doc["runs"] = old.get("runs", []) + [{k: doc.get(k) for k in ("command", "date_utc", "seconds")}]
    doc["datasets"] = dict(sorted(merged.items()))
    return doc


@click.command()
@click.option("--data-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=DEFAULT_DIR,
              show_default=True, help="Folder with dataset_1_dev.npz and dataset_2_dev.npz.")
@click.option("--datasets", default="1,2", show_default=True, help="Which sets (1, 2 or both).")
@click.option("--protocols", default="random,grouped", show_default=True, help="random, grouped or both.")
@click.option("--models", "model_names", multiple=True, metavar="NAMES",
              help="Models or presets (baselines, cnn, all); cnn:ARCH[:key=value,...] works too.  [default: all]")
@click.option("--seeds", default="0,1,2", show_default=True, help="Split (and training) seeds.")
@click.option("--test-size", type=click.FloatRange(0.05, 0.95), default=0.3, show_default=True)
@click.option("--epochs", type=click.IntRange(1, 100000), default=None, help="Cap on CNN epochs.")
@click.option("--patience", type=click.IntRange(1, 100000), default=None, help="CNN early-stopping patience.")
@click.option("--mlp-iter", type=click.IntRange(1, 100000), default=300, show_default=True)
@click.option("--threads", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Torch and BLAS threads (shared machines).")
@click.option("--max-train", type=click.IntRange(10, None), default=None,
              help="Random subset of each training side (smoke tests; figures are then not comparable).")
@click.option("--max-test", type=click.IntRange(10, None), default=None, help="Random subset of each test side.")
@click.option("--quick", is_flag=True, help="Smoke test: one seed, 1 CNN epoch, 30 MLP epochs, at most 400 "
                                            "training and 200 test spectra per split; no JSON unless --out.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help=f"JSON output [default: {DEFAULT_OUT.relative_to(ROOT)}].")
@click.option("--fresh", is_flag=True, help="Replace the JSON instead of merging into it.")
def main(data_dir: Path, datasets: str, protocols: str, model_names: tuple[str, ...], seeds: str, test_size: float,
         epochs: int | None, patience: int | None, mlp_iter: int, threads: int, max_train: int | None,
         max_test: int | None, quick: bool, out: Path | None, fresh: bool) -> None:
    """Benchmark 2: Sang Dataset_1/Dataset_2, random and specimen-grouped 70/30."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("trainer").setLevel(logging.WARNING)
    from threadpoolctl import threadpool_limits

    keys = [k.strip() for k in datasets.split(",") if k.strip()]
    bad = [k for k in keys if k not in DATASETS]
    if bad or not keys:
        raise click.BadParameter(f"unknown dataset(s) {bad}; use 1 and/or 2", param_hint="--datasets")
    prots = [p.strip() for p in protocols.split(",") if p.strip()]
    if not prots or any(p not in PROTOCOLS for p in prots):
        raise click.BadParameter(f"use {PROTOCOLS}", param_hint="--protocols")
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {seeds!r}", param_hint="--seeds")
    if quick:
        seed_list, epochs, mlp_iter = seed_list[:1], min(epochs or 1, 1), min(mlp_iter, 30)
        max_train, max_test = min(max_train or 400, 400), min(max_test or 200, 200)
    if out is None and not quick:
        out = DEFAULT_OUT
    models, skipped = resolve_models(model_names)
    for note in skipped:
        log.warning(note)
    paths = [data_dir / DATASETS[k] for k in keys]
    for p in paths:
        if not p.exists():
            raise click.ClickException(f"{p}: not found")
    t0 = time.perf_counter()
    doc: dict[str, Any] = {"benchmark": "sang_table", **provenance(paths, threads), "quick": quick,
                           "cnn_epochs_cap": epochs, "skipped": skipped, "max_train": max_train,
                           "max_test": max_test,
                           "protocol": {"seeds": seed_list, "test_size": test_size, "protocols": prots,
                                        "preprocessing_cnn": SANG_SPEC,
                                        "baseline_input": "spectra divided by their maximum"},
                           "datasets": {}}
    try:
        with threadpool_limits(threads), quiet_sklearn():
            for key, path in zip(keys, paths):
                doc["datasets"][key] = run_dataset(load_normalised(path), key, models, prots, seed_list, test_size,
                                                   threads=threads, epochs=epochs, patience=patience,
                                                   mlp_iter=mlp_iter, max_train=max_train, max_test=max_test)
    except RamanEdgeError as e:
        raise click.ClickException(str(e)) from None
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    if out is not None:
        doc = merge(out, doc, fresh)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2) + "\n")
    print_table(doc)
    if out is not None:
        click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
