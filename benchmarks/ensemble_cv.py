"""Seed ensembles on the Soysal split: what each added member buys (stratified 5-fold CV).

For every fold of :func:`benchmarks.protocols.stratified_kfold` (the folds of
``soysal_table.py``), ``N`` members of one CNN recipe are trained with seeds
``seed .. seed+N-1`` (exactly the members ``raman-edge train --ensemble N --seed
SEED`` trains), and the ensembles of the first 1, 2, ..., N members are scored by
averaging their logits, which is what :class:`trainer.ensemble.EnsembleNet`
computes (``tests/test_trainer_ensemble.py`` checks the equality).  One run thus
gives every ensemble size from the same members.

Repeating ``--spec`` makes an ensemble of *recipes* instead (one member per recipe,
all with ``--seed``; e.g. liu + fmcnn), in the order given; ``--save-logits`` keeps
every member's test logits per fold, so other combinations can be scored without
training again.

Usage (repository root)::

    nice -n 2 python benchmarks/ensemble_cv.py --members 3 --threads 2     # ~12 min on 2 cores
    python benchmarks/ensemble_cv.py --quick --out /tmp/e.json              # smoke run
    python benchmarks/ensemble_cv.py --latency --members 3                   # ONNX cost of 1 vs N members
    python benchmarks/ensemble_cv.py --latency --spec cnn:liu --spec cnn:fmcnn   # each network, then both

``--latency`` exports an untrained single model and an untrained N-member ensemble
(weights do not change the cost) and times backbone + head, one spectrum at a time,
in ONNX Runtime with one thread (p50/p99 over 2,000 calls after 200 warm-up calls).

Writes ``benchmarks/results/ensemble_cv.json`` and prints a table.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks.baselines import DEVICE_HELP, SHIPPED_RECIPE, CNNModel, CNNSpec, provenance, write_result  # noqa: E402
from benchmarks.protocols import stratified_kfold  # noqa: E402
from calibration.dataset import load_dataset  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "rruff-soysal" / "raw_train.npz"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "ensemble_cv.json"

log = logging.getLogger("ensemble_cv")


def top1(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean())


def latency(members: int, points: int = 1392, classes: int = 63, calls: int = 2000,
            archs: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """p50/p99 (µs) of backbone + head in ONNX Runtime (1 thread): 1 and ``members`` liu models, or,
    given ``archs``, each of those networks alone and all of them as one ensemble."""
    import onnxruntime as ort
    import torch

    from trainer.ensemble import EnsembleNet
    from trainer.export import export_onnx
    from trainer.models import build_model

    torch.manual_seed(0)
    x = np.random.default_rng(0).random((1, points), dtype=np.float32)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    groups = [[a] for a in archs] + [list(archs)] if archs else [["liu"], ["liu"] * members]
    rows = []
    for group in groups:
        nets = [build_model({"points": points, "classes": classes}, a).eval() for a in group]
        backbone, head = export_onnx(nets[0] if len(nets) == 1 else EnsembleNet(nets).eval())
        b = ort.InferenceSession(backbone, opts, providers=["CPUExecutionProvider"])
        h = ort.InferenceSession(head, opts, providers=["CPUExecutionProvider"])
        times = []
        for i in range(calls + 200):
            t0 = time.perf_counter_ns()
            h.run(None, {"features": b.run(None, {"spectrum": x})[0]})
            if i >= 200:
                times.append(time.perf_counter_ns() - t0)
        rows.append({"members": len(group), "archs": group, "p50_us": round(float(np.median(times)) / 1e3, 1),
                     "p99_us": round(float(np.percentile(times, 99)) / 1e3, 1),
                     "backbone_onnx_bytes": len(backbone), "head_onnx_bytes": len(head)})
    return rows


def score_subsets(path: Path, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Mean CV top-1 of every subset of the members whose logits ``--save-logits`` kept (logits averaged)."""
    import itertools
    import re

    z = np.load(path)
    y_all = np.searchsorted(z["classes"], z["labels"])
    folds = sorted({int(m[1]) for k in z.files if (m := re.match(r"fold(\d+)_logits$", k))})
    members = z[f"fold{folds[0]}_logits"].shape[0]
    names = list(names) if names else [f"member {j + 1}" for j in range(members)]
    if len(names) != members:
        raise ValueError(f"{path}: {members} members, {len(names)} names given")
    rows = []
    for r in range(1, members + 1):
        for subset in itertools.combinations(range(members), r):
            per_fold = [top1(z[f"fold{f}_logits"][list(subset)].mean(0), y_all[z[f"fold{f}_test_index"]])
                        for f in folds]
            rows.append({"members": [names[j] for j in subset], "top1_folds": per_fold,
                         "top1_mean": round(float(np.mean(per_fold)), 4)})
    return rows


def member_plan(spec: str | Sequence[str], members: int, seed: int) -> list[tuple[str, int]]:
    """The ``(recipe, seed)`` of each member: ``members`` seeds of one recipe, or one member per recipe."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    if not specs:
        raise ValueError("ensemble_cv: no recipe given")
    if len(specs) == 1:
        return [(specs[0], seed + j) for j in range(members)]
    return [(s, seed) for s in specs]


def run(data: Path, spec: str | Sequence[str], members: int, folds: int, seed: int, threads: int,
        epochs: int | None, device: str = "cpu", save_logits: Path | None = None) -> dict[str, Any]:
    dataset = load_dataset(data)
    splits = stratified_kfold(dataset.labels, folds, seed)
    plan = member_plan(spec, members, seed)
    rows: list[dict[str, Any]] = []
    kept: dict[str, np.ndarray] = {}
    t_all = time.perf_counter()
    for f, split in enumerate(splits):
        train, test = dataset.subset(split.train), dataset.subset(split.test)
        logits, y = [], None
        for j, (recipe, member_seed) in enumerate(plan):
            t0 = time.perf_counter()
            model = CNNModel(CNNSpec.parse(recipe), seed=member_seed, threads=threads, epochs=epochs,
                             device=device).fit(train)
            z = model.scores(test.spectra, test.wavenumbers)
            y = np.searchsorted(model.classes, test.labels)
            logits.append(z)
            log.info("fold %d member %d (%s, seed %d): top-1 %.3f (%.0f s)", f + 1, j + 1, recipe, member_seed,
                     top1(z, y), time.perf_counter() - t0)
        kept[f"fold{f + 1}_test_index"] = np.asarray(split.test)
        kept[f"fold{f + 1}_logits"] = np.stack(logits)
        rows.append({"fold": f + 1, "test_spectra": int(y.size),
                     "member_top1": [top1(z, y) for z in logits],
                     "ensemble_top1": [top1(np.mean(logits[:n], axis=0), y) for n in range(1, len(plan) + 1)]})
    if save_logits is not None:  # every member's test logits, for combinations scored without retraining
        np.savez_compressed(save_logits, classes=np.asarray(dataset.classes), labels=dataset.labels, **kept)
    ens = np.array([r["ensemble_top1"] for r in rows])
    mem = np.array([r["member_top1"] for r in rows])
    return {
        "benchmark": "ensemble_cv", **provenance([data], threads),
        "protocol": {"name": "stratified k-fold CV", "folds": folds, "seed": seed},
        "spec": plan[0][0] if len({r for r, _ in plan}) == 1 else [r for r, _ in plan],
        "members": len(plan), "member_seeds": [s for _, s in plan],
        "seconds": round(time.perf_counter() - t_all, 1),
        "folds": rows,
        "summary": {
            "member_top1_mean": [round(float(v), 4) for v in mem.mean(0)],
            "member_top1_mean_of_members": round(float(mem.mean()), 4),
            "ensemble_top1_mean": [round(float(v), 4) for v in ens.mean(0)],
            "ensemble_top1_std": [round(float(v), 4) for v in ens.std(0, ddof=1)] if len(rows) > 1 else None,
        },
    }


@click.command()
@click.option("--data", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_DATA, show_default=True)
@click.option("--spec", "specs", multiple=True, default=[SHIPPED_RECIPE], show_default=True,
              help="CNN recipe (soysal_table.py syntax). Repeat it for an ensemble of recipes: one member each, "
                   "all with --seed (--members is then ignored).")
@click.option("--members", type=click.IntRange(2, 8), default=3, show_default=True,
              help="Members (seeds seed .. seed+N-1) of a single --spec.")
@click.option("--folds", type=click.IntRange(2, 10), default=5, show_default=True)
@click.option("--seed", type=click.IntRange(0, 2**31), default=0, show_default=True,
              help="Folds and the first member's seed.")
@click.option("--threads", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option("--device", default="cpu", show_default=True, help=DEVICE_HELP)
@click.option("--quick", is_flag=True, help="2 folds, 2 members, 2 epochs; no JSON unless --out.")
@click.option("--latency", "latency_only", is_flag=True, help="Only time 1 vs N members in ONNX Runtime.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--save-logits", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write every member's test logits per fold (.npz).")
@click.option("--score-logits", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Only score every subset of the members in a --save-logits file (names: --names), exit.")
@click.option("--names", default=None, help="Comma-separated member names for --score-logits.")
def main(data: Path, specs: tuple[str, ...], members: int, folds: int, seed: int, threads: int, device: str,
         quick: bool, latency_only: bool, out: Path | None, save_logits: Path | None, score_logits: Path | None,
         names: str | None) -> None:
    """Seed ensembles of a CNN recipe: top-1 of 1..N members, 5-fold CV on the Soysal split."""
    if score_logits is not None:
        print("| members (logits averaged) | top-1 mean | folds |")
        print("|---|---:|---|")
        for row in score_subsets(score_logits, names.split(",") if names else None):
            print(f"| {' + '.join(row['members'])} | {row['top1_mean']:.3f} | "
                  f"{' '.join(f'{v:.3f}' for v in row['top1_folds'])} |")
        return
    if latency_only:  # several --spec: each of their networks alone, then together
        archs = [CNNSpec.parse(s).arch for s in specs] if len(specs) > 1 else None
        print("| members | p50 µs | p99 µs | backbone ONNX bytes |")
        print("|---|---:|---:|---:|")
        for r in latency(members, archs=archs):
            print(f"| {' + '.join(r['archs'])} | {r['p50_us']} | {r['p99_us']} | {r['backbone_onnx_bytes']:,} |")
        return
    if not data.exists():
        raise SystemExit(f"{data}: not found (see ../shared/data/README.md)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("trainer").setLevel(logging.WARNING)
    if quick:
        members, folds = 2, 2
    plan = member_plan(list(specs), members, seed)
    doc = run(data, list(specs), members, folds, seed, threads, epochs=2 if quick else None, device=device,
              save_logits=save_logits)
    s = doc["summary"]
    print(f"{folds}-fold CV (seed {seed}); members: " + "; ".join(f"{r} (seed {m})" for r, m in plan))
    print("| members | ensemble top-1 | single member (recipe, seed) |")
    print("|---:|---:|---:|")
    for n in range(1, len(plan) + 1):
        std = f" ± {s['ensemble_top1_std'][n - 1]:.3f}" if s["ensemble_top1_std"] else ""
        print(f"| {n} | {s['ensemble_top1_mean'][n - 1]:.3f}{std} | {s['member_top1_mean'][n - 1]:.3f} "
              f"({plan[n - 1][0]}, {plan[n - 1][1]}) |")
    write_result(out, doc, default=DEFAULT_OUT, quick=quick)


if __name__ == "__main__":
    main()
