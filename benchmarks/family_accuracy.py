"""Top-1 within isostructural families: does a shift-tolerant recipe lose fine discrimination?

Minerals of one structure (the calcite-group carbonates, the garnets, olivines,
feldspars, amphiboles) have spectra that differ largely by band positions a few to
~15 cm⁻¹ apart.  A network trained to ignore shifts of ±D cm⁻¹ might confuse them.
This benchmark trains each CNN recipe on the folds of
:func:`benchmarks.protocols.stratified_kfold` (the folds of ``soysal_table.py``) and
reports, per family, how many of its test spectra each recipe names correctly, and
which confusions inside a family occur.

Usage (repository root)::

    nice -n 2 python benchmarks/family_accuracy.py --threads 2      # ~7 min: the shipped ±10 and the ±3 recipe
    python benchmarks/family_accuracy.py --quick --out /tmp/f.json   # smoke run

Writes ``benchmarks/results/family_accuracy.json`` and prints a table.
"""
from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks.baselines import SHIPPED_RECIPE, SHIPPED_RECIPE_S10, CNNModel, CNNSpec, provenance, write_result  # noqa: E402
from benchmarks.protocols import stratified_kfold  # noqa: E402
from calibration.dataset import load_dataset  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "rruff-soysal" / "raw_train.npz"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "family_accuracy.json"
#: The recipes compared by default: the ±3 recipe and ``--shift-tolerance 5``'s ±10 (the shipped model's).
DEFAULT_SPECS = (SHIPPED_RECIPE, SHIPPED_RECIPE_S10)
#: Isostructural families of the Soysal split's minerals.
FAMILIES: dict[str, tuple[str, ...]] = {
    "carbonate": ("Calcite", "Dolomite", "Rhodochrosite", "Cerussite"),
    "garnet": ("Almandine", "Andradite", "Grossular", "Pyrope", "Spessartine"),
    "olivine": ("Forsterite", "Fayalite"),
    "feldspar": ("Albite", "Anorthite", "Microcline", "Orthoclase"),
    "amphibole": ("Actinolite", "Tremolite", "Grunerite"),
}

log = logging.getLogger("family_accuracy")


def family_scores(pairs: list[tuple[str, str]], families: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    """Per family: correct / total of its minerals' test spectra, and the confusions inside it."""
    out: dict[str, Any] = {}
    for name, members in families.items():
        mine = [(t, p) for t, p in pairs if t in members]
        inside = Counter(f"{t} -> {p}" for t, p in mine if t != p and p in members)
        out[name] = {"correct": sum(t == p for t, p in mine), "total": len(mine), "confusions_inside": dict(inside)}
    return out


def run(data: Path, specs: list[str], folds: int, seed: int, threads: int, epochs: int | None,
        families: dict[str, tuple[str, ...]] = FAMILIES) -> dict[str, Any]:
    dataset = load_dataset(data)
    splits = stratified_kfold(dataset.labels, folds, seed)
    pairs: dict[str, list[tuple[str, str]]] = {s: [] for s in specs}
    t_all = time.perf_counter()
    for f, split in enumerate(splits):
        train, test = dataset.subset(split.train), dataset.subset(split.test)
        for spec in specs:
            model = CNNModel(CNNSpec.parse(spec), seed=seed, threads=threads, epochs=epochs).fit(train)
            pred = np.asarray(model.classes)[model.scores(test.spectra, test.wavenumbers).argmax(1)]
            pairs[spec] += list(zip(test.labels.tolist(), pred.tolist()))
        log.info("fold %d/%d done (%.0f s)", f + 1, folds, time.perf_counter() - t_all)
    return {
        "benchmark": "family_accuracy", **provenance([data], threads),
        "protocol": {"name": "stratified k-fold CV", "folds": folds, "seed": seed},
        "seconds": round(time.perf_counter() - t_all, 1),
        "recipes": {s: {"top1": round(float(np.mean([t == p for t, p in pairs[s]])), 4),
                        "families": family_scores(pairs[s], families)} for s in specs},
    }


@click.command()
@click.option("--data", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_DATA, show_default=True)
@click.option("--spec", "specs", multiple=True, default=DEFAULT_SPECS, show_default=True,
              help="CNN recipe (soysal_table.py syntax), repeatable.")
@click.option("--folds", type=click.IntRange(2, 10), default=5, show_default=True)
@click.option("--seed", type=click.IntRange(0, 2**31), default=0, show_default=True)
@click.option("--threads", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option("--quick", is_flag=True, help="2 folds, 2 epochs; no JSON unless --out.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None)
def main(data: Path, specs: tuple[str, ...], folds: int, seed: int, threads: int, quick: bool,
         out: Path | None) -> None:
    """Top-1 within isostructural families for each recipe, 5-fold CV on the Soysal split."""
    if not data.exists():
        raise SystemExit(f"{data}: not found (see ../shared/data/README.md)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("trainer").setLevel(logging.WARNING)
    doc = run(data, list(specs), 2 if quick else folds, seed, threads, epochs=2 if quick else None)
    names = list(FAMILIES)
    print(f"{doc['protocol']['folds']}-fold CV (seed {seed}): correct / test spectra per family")
    print("| recipe | top-1 | " + " | ".join(names) + " |")
    print("|---|---:|" + "---:|" * len(names))
    for spec, r in doc["recipes"].items():
        cells = " | ".join(f"{r['families'][n]['correct']}/{r['families'][n]['total']}" for n in names)
        print(f"| {spec} | {r['top1']:.3f} | {cells} |")
    write_result(out, doc, default=DEFAULT_OUT, quick=quick)


if __name__ == "__main__":
    main()
