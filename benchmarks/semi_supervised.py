"""Benchmark: supervised vs SGAN vs contrastive (SimCLR) at 10 / 20 / 30 / 40 % labels (Soysal et al.).

Protocol (also written into the result JSON)
--------------------------------------------
``rruff-soysal/raw_train.npz`` (347 raw spectra, 63 minerals) is the union of the
paper's labelled splits; booleans ``in_10pct`` ... ``in_40pct`` mark them (85 /
170 / 255 / 340 spectra; all 63 minerals in each).  The paper's test set is not
provided, so for each repeat ``r`` (seed r):

1. **Test set** (never used for training, tuning, early stopping or pretraining):
   from the spectra *outside* the 10 % split, each mineral gives
   ``max(1, round(test_fraction * n))`` of its ``n`` such spectra (when n >= 1),
   drawn with seed r.  The 10 % split is therefore the paper's, whole.
2. **Labelled set at f %**: ``in_f & ~test``.
3. **Unlabelled pool at f %**: every other non-test spectrum, labels removed,
   ``~in_f & ~test``.  Because the splits cover 340 of the 347 spectra, the pool
   shrinks from ~200 spectra at 10 % to a handful at 40 %; the semi-supervised
   methods also use the labelled spectra (labels unused) as unlabelled data.
4. Contrastive pretraining uses no labels and sees labelled + unlabelled = all
   non-test spectra, the same set at every fraction: it runs once per repeat and
   every fraction's head starts from it.  The test spectra are *not* in it
   (inductive, not transductive).
5. Every method gets the same labelled set, the trainer's validation split of it
   (early stopping, temperature), the same architecture (liu m=3 n=3 dense=64)
   and augmentation; scores are top-1 / top-3 on the repeat's test set, mean ± std
   over repeats.

6. **Extra unlabelled spectra** (``--extra-unlabeled FILE.npz``, optional, e.g. the
   Sang Dataset_1 dev set: RRUFF *processed* spectra of 192 minerals, labels removed)
   join the pool of SGAN and of contrastive pretraining at every fraction.  Leak
   guard: for each repeat, an extra spectrum whose baseline-insensitive correlation
   (preprocessed, minus a 61-point running median, Pearson r) with any of that
   repeat's test spectra reaches ``--leak-guard`` (0.95) is removed, and the count is
   recorded.  The files carry no link to raw_train.npz, so the guard is by content:
   it is there for processed versions of the test spectra themselves (same peaks,
   another baseline: r near 1; ``tests/test_trainer_semi.py``), and it also removes
   some other spectra of a test mineral that happen to correlate as well.

Spectra in raw_train.npz carry no RRUFF file names, so specimens cannot be
grouped: several spectra of one specimen (orientations) may fall on both sides of
the test split, as in the paper's random splits.

Run (whole benchmark; threads 1)::

    nice -n 5 python benchmarks/semi_supervised.py --threads 1

``--quick`` runs one repeat, two fractions and a few epochs (tests).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from calibration.dataset import Dataset, file_sha256, load_dataset  # noqa: E402
from calibration.preprocess import DEFAULT_SPEC, Preprocessor  # noqa: E402
from trainer.augment import BackgroundBank, add_backgrounds, parse_augment_options  # noqa: E402
from trainer.config import SemiConfig, TrainConfig  # noqa: E402

log = logging.getLogger("semi_supervised")

DATA = ROOT.parent / "shared" / "data" / "rruff-soysal" / "raw_train.npz"
OUT = ROOT / "benchmarks" / "results" / "semi_supervised.json"
FRACTIONS = (10, 20, 30, 40)
METHODS = ("supervised", "sgan", "contrastive_frozen", "contrastive")
#: Soysal et al. top-1 (%) at 10/20/30/40 % labels.
PAPER = {"supervised": [42, 58, 65, 69], "sgan": [53, 66, 67, 71], "contrastive": [51, 65, 69, 75]}


def test_split(labels: np.ndarray, in_10: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean test mask: per mineral ``max(1, round(fraction * n))`` of its ``n`` spectra outside the 10 % split."""
    rng = np.random.default_rng([seed, 7357])
    test = np.zeros(labels.size, dtype=bool)
    for c in np.unique(labels):
        members = np.nonzero((labels == c) & ~in_10)[0]
        if members.size:
            k = max(1, int(round(fraction * members.size)))
            test[rng.choice(members, size=k, replace=False)] = True
    return test


def highpass(x: np.ndarray) -> np.ndarray:
    """Unit-norm, zero-mean rows of ``x`` minus a 61-point running median: peaks kept, baselines gone."""
    from scipy.ndimage import median_filter

    y = x - median_filter(x, size=(1, 61), mode="nearest")
    y = y - y.mean(axis=1, keepdims=True)
    return y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)


def leak_guard(extra: np.ndarray, test: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean keep-mask over preprocessed ``extra`` rows: False where r with any ``test`` row >= threshold."""
    if not extra.size or not test.size:
        return np.ones(len(extra), dtype=bool)
    r = highpass(extra) @ highpass(test).T
    return r.max(axis=1) < threshold


def evaluate(model: Any, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from trainer.train import predict_logits, topk_accuracy

    logits = predict_logits(model, x)
    return {"top1": topk_accuracy(logits, y, 1), "top3": topk_accuracy(logits, y, 3)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from trainer.semi import UnlabeledSet, load_unlabeled, pretrain_contrastive, train_contrastive, train_sgan
    from trainer.train import train

    t_all = time.perf_counter()
    torch.set_num_threads(args.threads)
    data = load_dataset(args.data)
    pre = Preprocessor(DEFAULT_SPEC)
    classes = np.asarray(data.classes)
    masks = {f: data.extras[f"in_{f}pct"].astype(bool) for f in FRACTIONS}
    semi = SemiConfig(pretrain_epochs=args.pretrain_epochs, head_epochs=args.head_epochs, head_init=args.head_init)
    base = TrainConfig(epochs=args.epochs, patience=args.patience, threads=args.threads, semi_config=semi,
                       val_fraction=args.val_fraction,
                       augment_config=parse_augment_options(args.aug))
    sgan_cfg = dataclasses.replace(base, semi="sgan", epochs=args.sgan_epochs, patience=args.sgan_patience)
    runs: list[dict[str, Any]] = []
    repeats: list[dict[str, Any]] = []
    # labels of the extra files are never read: spectra and axis only
    extras = [load_unlabeled(p, reference_axis=data.wavenumbers) for p in args.extra_unlabeled]
    extras_pre = [pre.batch(u.spectra, u.wavenumbers) for u in extras]
    for seed in args.seeds:
        test = test_split(data.labels, masks[10], args.test_fraction, seed)
        x_test = pre.batch(data.spectra[test], data.wavenumbers)
        y_test = np.searchsorted(classes, data.labels[test])
        cfg = dataclasses.replace(base, seed=seed)
        pool_all = data.subset(np.nonzero(~test)[0])
        rep: dict[str, Any] = {"seed": seed, "test_spectra": int(test.sum()),
                               "test_minerals": int(np.unique(data.labels[test]).size), "fractions": {}}
        extra_sets = []
        # processed spectra into the raw domain: real backgrounds of this repeat's non-test raw spectra
        bank = BackgroundBank.from_spectra(pool_all.spectra, pool_all.wavenumbers) \
            if args.extra_backgrounds and extras else None
        for path, u, xp in zip(args.extra_unlabeled, extras, extras_pre):
            keep = leak_guard(xp, x_test, args.leak_guard)
            kept = u.spectra[keep]
            if bank is not None:
                kept = add_backgrounds(kept, u.wavenumbers, bank, np.random.default_rng([seed, 7]),
                                       base.augment_config.background_factor).astype(np.float32)
            extra_sets.append(UnlabeledSet(kept, u.wavenumbers, path=u.path))
            rep.setdefault("extra_unlabeled", []).append({"file": str(path), "spectra": len(u),
                                                          "kept": int(keep.sum()),
                                                          "removed_by_leak_guard": int((~keep).sum())})
            log.info("seed %d: %s: %d of %d extra spectra kept (leak guard r < %.2f)", seed, path,
                     int(keep.sum()), len(u), args.leak_guard)
        pretrained = None
        if {"contrastive", "contrastive_frozen"} & set(args.methods):
            t0 = time.perf_counter()
            pretrained = pretrain_contrastive([(pool_all.spectra, pool_all.wavenumbers)]
                                              + [(u.spectra, u.wavenumbers) for u in extra_sets],
                                              dataclasses.replace(cfg, semi="contrastive"), classes=len(classes))
            rep["pretrain"] = {"spectra": pretrained.pool_spectra, "epochs": len(pretrained.history),
                               "seconds": round(time.perf_counter() - t0, 1),
                               "nt_xent_first": round(pretrained.history[0], 4),
                               "nt_xent_last": round(pretrained.history[-1], 4)}
            log.info("seed %d: pretrained on %d spectra in %.0f s (NT-Xent %.3f -> %.3f)", seed,
                     pretrained.pool_spectra, rep["pretrain"]["seconds"], pretrained.history[0],
                     pretrained.history[-1])
        for f in args.fractions:
            lab = masks[f] & ~test
            labelled = data.subset(np.nonzero(lab)[0])
            missing = sorted(set(classes) - set(labelled.labels.tolist()))
            if missing:  # the model's class list must be the full one for a comparable test
                raise SystemExit(f"fraction {f}: minerals without a labelled spectrum: {missing}")
            unl = [UnlabeledSet(data.spectra[~lab & ~test], data.wavenumbers)] + extra_sets
            rep["fractions"][f] = {"labelled": int(lab.sum()), "unlabelled": int(sum(len(u) for u in unl))}

            def record(method: str, model: Any, seconds: float, epochs: int, **more: Any) -> None:
                scores = evaluate(model, x_test, y_test)
                runs.append({"seed": seed, "fraction": f, "method": method, **scores,
                             "seconds": round(seconds, 1), "epochs": epochs, **more})
                log.info("seed %d %2d%% %-18s top-1 %.3f top-3 %.3f (%d epochs, %.0f s)", seed, f, method,
                         scores["top1"], scores["top3"], epochs, seconds)

            if "supervised" in args.methods:
                r = train(labelled, cfg)
                record("supervised", r.model, r.seconds, r.epochs_run)
            if "sgan" in args.methods:
                r = train_sgan(labelled, unl, dataclasses.replace(sgan_cfg, seed=seed))
                record("sgan", r.model, r.seconds, r.epochs_run)
            if pretrained is not None:
                c_cfg = dataclasses.replace(cfg, semi="contrastive",
                                            semi_config=dataclasses.replace(semi, finetune=False))
                r = train_contrastive(labelled, unl, c_cfg, pretrained=pretrained)
                if "contrastive_frozen" in args.methods:
                    record("contrastive_frozen", r.model, r.seconds, r.epochs_run)
                if "contrastive" in args.methods:
                    t0 = time.perf_counter()
                    ft = train(labelled, dataclasses.replace(cfg, lr=semi.finetune_lr),
                               init_model=copy.deepcopy(r.model))
                    record("contrastive", ft.model, r.seconds + time.perf_counter() - t0, ft.epochs_run,
                           head_epochs=r.epochs_run)
            # Written after every fraction: a long run interrupted still leaves what it measured.
            save(args, _result(args, base, semi, runs, repeats + [rep], t_all, complete=False))
        repeats.append(rep)
    return _result(args, base, semi, runs, repeats, t_all, complete=True)


def save(args: argparse.Namespace, result: dict[str, Any]) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(args.out)


def _result(args: argparse.Namespace, base: TrainConfig, semi: SemiConfig, runs: list[dict[str, Any]],
            repeats: list[dict[str, Any]], t_all: float, complete: bool) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for method in args.methods:
        summary[method] = {}
        for f in args.fractions:
            vals = [r for r in runs if r["method"] == method and r["fraction"] == f]
            if vals:
                t1 = np.array([r["top1"] for r in vals])
                t3 = np.array([r["top3"] for r in vals])
                summary[method][str(f)] = {"top1_mean": round(float(t1.mean()), 4),
                                           "top1_std": round(float(t1.std(ddof=1)) if t1.size > 1 else 0.0, 4),
                                           "top3_mean": round(float(t3.mean()), 4), "n": int(t1.size)}
    return {
        "benchmark": "semi_supervised",
        "complete": complete,
        "command": shlex.join(["python"] + sys.argv),
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t_all, 1),
        "torch_threads": args.threads,
        "data": str(args.data), "data_sha256": file_sha256(args.data),
        "protocol": __doc__.split("Protocol (also written into the result JSON)")[1].split("Run (whole")[0].strip(),
        "test_fraction": args.test_fraction,
        "extra_unlabeled": [str(p) for p in args.extra_unlabeled], "leak_guard": args.leak_guard,
        "extra_backgrounds": args.extra_backgrounds,
        "config": {"supervised": base.to_dict(), "sgan": {"epochs": args.sgan_epochs, "patience": args.sgan_patience},
                   "contrastive": "pretrain once per repeat on every non-test spectrum; linear head on the frozen "
                                  "encoder (contrastive_frozen); then fine-tune the whole network at "
                                  f"lr {semi.finetune_lr} (contrastive)"},
        "paper_top1_pct": PAPER,
        "repeats": repeats,
        "summary": summary,
        "runs": runs,
    }


def markdown_table(result: dict[str, Any]) -> str:
    """Top-1 mean ± std (n repeats) per method and fraction, the paper's figure beside it."""
    fractions = sorted({int(f) for rows in result["summary"].values() for f in rows})
    lines = ["| method | " + " | ".join(f"{f} %" for f in fractions) + " |",
             "|---|" + "---|" * len(fractions)]
    for method, rows in result["summary"].items():
        paper = PAPER.get(method)
        cells = []
        for f in fractions:
            v = rows.get(str(f))
            cell = f"{v['top1_mean']:.3f} ± {v['top1_std']:.3f} (n={v['n']})" if v else "–"
            if paper:
                cell += f" [paper {paper[FRACTIONS.index(f)]}]"
            cells.append(cell)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--fractions", type=int, nargs="+", default=list(FRACTIONS), choices=FRACTIONS)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--test-fraction", type=float, default=0.25)
    p.add_argument("--epochs", type=int, default=200, help="supervised and fine-tuning epoch budget")
    p.add_argument("--patience", type=int, default=40)
    p.add_argument("--val-fraction", type=float, default=TrainConfig.val_fraction,
                   help="validation split of the labelled set (early stopping); 0: fixed epoch budgets")
    p.add_argument("--sgan-epochs", type=int, default=None, help="default: --epochs (same budget)")
    p.add_argument("--sgan-patience", type=int, default=None, help="default: --patience")
    p.add_argument("--pretrain-epochs", type=int, default=100)
    p.add_argument("--head-epochs", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--extra-unlabeled", type=Path, action="append", default=[], metavar="FILE.npz",
                   help="more unlabelled spectra for SGAN and contrastive pretraining (labels in the file are ignored)")
    p.add_argument("--extra-backgrounds", action="store_true",
                   help="put a real fluorescence background (from the repeat's non-test raw spectra) under each "
                        "extra spectrum: processed RRUFF spectra brought into the raw domain")
    p.add_argument("--leak-guard", type=float, default=0.95,
                   help="drop extra spectra whose high-passed correlation with a test spectrum reaches this")
    p.add_argument("--aug", action="append", default=[], metavar="NAME=VALUE",
                   help="augmentation option for every method (as raman-edge train --aug), e.g. p_background_swap=0.8")
    p.add_argument("--head-init", default="prototypes", choices=("prototypes", "random"),
                   help="start of the contrastive frozen-encoder head")
    p.add_argument("--quick", action="store_true", help="1 repeat, 10 and 40 %%, 2 epochs of everything (tests)")
    p.add_argument("--table", type=Path, metavar="RESULT.json", help="print the markdown table of a result, exit")
    args = p.parse_args(argv)
    if args.table:
        print(markdown_table(json.loads(args.table.read_text())))
        return
    args.sgan_epochs = args.epochs if args.sgan_epochs is None else args.sgan_epochs
    args.sgan_patience = args.patience if args.sgan_patience is None else args.sgan_patience
    if args.quick:
        args.seeds, args.fractions = args.seeds[:1], [10, 40]
        args.epochs = args.sgan_epochs = args.pretrain_epochs = args.head_epochs = 2
    if not args.data.exists():
        raise SystemExit(f"{args.data}: not found (see ../shared/data/README.md)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("trainer").setLevel(logging.WARNING)
    result = run(args)
    save(args, result)
    for method, rows in result["summary"].items():
        cells = "  ".join(f"{f}%: {v['top1_mean']:.3f}±{v['top1_std']:.3f}" for f, v in rows.items())
        print(f"{method:20s} {cells}")
    print(f"{result['seconds']:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
