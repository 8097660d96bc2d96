"""Head swap: new minerals on a frozen backbone (the protocol of Soysal et al., Table 11).

Usage (from the repository root)::

    nice -n 5 python benchmarks/head_swap.py --draws 3            # -> benchmarks/results/head_swap.json
    python benchmarks/head_swap.py --quick --out /tmp/hs.json     # smoke run: 2 epochs, c = 5, one draw

Protocol, for each draw ``s`` and each ``c`` in 5, 10, 15, 20, on
``rruff-soysal/raw_train.npz`` (347 raw spectra, n = 63 minerals, 3–13 each):

1. **New classes**: a seeded random permutation of the 63 minerals per draw; the
   first ``c`` are new (so the 5 new classes of a draw are among its 10, and so on:
   the ``c`` columns are paired).  Their spectra never reach the backbone.
2. **Old classes**: the other ``n − c`` are split 70/30, stratified
   (``benchmarks.protocols.random_split``: every class has ≥ 3 spectra, so each
   keeps ≥ 2 for training and gives ≥ 1 to test), *before* the backbone is trained.
3. **Backbone**: ``trainer.train.train`` on the old training part with the shipped
   default recipe (liu m=3 n=3 dense=64, augmentation, early stopping on its own
   15 % validation split, seed ``s``, torch threads 1), written by
   ``trainer.export.save_bundle``; then ``edge.head.add_support`` stores the support
   (per-class feature statistics and exemplars) from that same old training part —
   what a ground station holds, so the rover bundle can be extended later.
4. **Head swap**: the new classes' spectra are split by stratified 5-fold CV
   (``benchmarks.protocols.stratified_kfold``); for each fold the head is trained on
   4/5 by ``edge.head.add_head`` and the held-out 1/5 is tested, so every new
   spectrum is tested once.  Two heads per fold:

   * ``replace``: ``add_head(..., replace=True)``, a head over the ``c`` new classes
     alone — the paper's protocol; **new** = its ``c``-way accuracy.  The paper's
     **old** figure is the backbone bundle's own head on the old test spectra.
   * ``joint``: ``add_head(..., replace=False)``, one head over all ``n`` classes
     from the new spectra plus the parent's support; **new**, **old** and **all**
     are ``n``-way accuracies of that one head (old: mean over the 5 folds' heads;
     all: every test spectrum counted once).

Accuracy is top-1 through the edge's own path (``Bundle.preprocessor`` +
``edge.classifier.Classifier``, ONNX Runtime).  Mean ± std (ddof 0) over draws.
raw_train.npz has no specimen ids, so spectra of one specimen may fall on both
sides of a split (as in the paper's random protocol).

Paper (Table 11): new 89 / 78 / 63 / 43, old 85 / 80 / 84 / 80 for c = 5 / 10 / 15 / 20.
Goal (issue 6): new ≥ 90 / 85 / 80 / 70, joint accuracy reported.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

# One BLAS/OpenMP thread, set before numpy loads: on a shared 2-core machine idle BLAS workers
# spin against the training thread (measured here: a 2-epoch --quick run took > 15 min).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import click  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks.protocols import random_split, stratified_kfold, summarise  # noqa: E402
from calibration.dataset import Dataset, file_sha256, load_dataset  # noqa: E402
from edge.bundle import Bundle, load_bundle  # noqa: E402
from edge.classifier import Classifier  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "rruff-soysal" / "raw_train.npz"
RESULTS = ROOT / "benchmarks" / "results"
CS = (5, 10, 15, 20)
PAPER = {"new": {5: 0.89, 10: 0.78, 15: 0.63, 20: 0.43}, "old": {5: 0.85, 10: 0.80, 15: 0.84, 20: 0.80}}
GOAL_NEW = {5: 0.90, 10: 0.85, 15: 0.80, 20: 0.70}
OLD_TEST_FRACTION = 0.3
NEW_FOLDS = 5

log = logging.getLogger("head_swap")

#: ``(parent, data, out, replace=..., seed=...) -> Bundle``; the product's is edge.head.add_head.
AddHead = Callable[..., Bundle]
AddSupport = Callable[..., Bundle]


# --------------------------------------------------------------------------- pieces

def draw_new_classes(classes: list[str], c: int, draw: int) -> list[str]:
    """The ``c`` new classes of ``draw``: a prefix of the draw's seeded permutation (nested over c)."""
    order = np.random.default_rng([20261123, draw]).permutation(len(classes))
    return sorted(classes[i] for i in order[:c])


def accuracy(bundle: Bundle, ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Per-spectrum correctness (bool) and predicted labels of ``bundle`` on raw spectra ``ds``."""
    x = bundle.preprocessor.batch(ds.spectra, ds.wavenumbers)
    clf = Classifier(bundle, top_k=1)
    pred = clf.classes[np.argmax(clf.logits(x), axis=1)]
    return pred == ds.labels, pred


def train_backbone(ds: Dataset, out: Path, seed: int, threads: int, epochs: int | None,
                   command: str) -> tuple[Bundle, dict[str, Any]]:
    """Default recipe on ``ds`` -> bundle at ``out`` (torch imported only here)."""
    from trainer.config import TrainConfig
    from trainer.export import save_bundle
    from trainer.train import train

    cfg = TrainConfig(seed=seed, threads=threads)
    if epochs is not None:
        cfg.epochs = epochs
    t0 = time.perf_counter()
    result = train(ds, cfg)
    bundle = save_bundle(out, result, ds, command=command, options={"benchmark": "head_swap"})
    info = {"seconds": round(time.perf_counter() - t0, 1), "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch, "train_spectra": int(result.metrics["train_spectra"]),
            "val_top1": result.metrics.get("val_top1"), "model_id": bundle.model_id}
    return bundle, info


def run_draw(ds: Dataset, c: int, draw: int, work: Path, *, threads: int, epochs: int | None,
             add_head: AddHead, add_support: AddSupport, command: str, fit: dict[str, Any] | None = None,
             keep: bool = False) -> dict[str, Any]:
    """One draw of one ``c``: backbone on old classes, head swaps over 5 folds of the new ones."""
    classes = ds.classes
    new = draw_new_classes(classes, c, draw)
    is_new = np.isin(ds.labels, new)
    old_idx, new_idx = np.nonzero(~is_new)[0], np.nonzero(is_new)[0]
    old_split = random_split(ds.labels[old_idx], OLD_TEST_FRACTION, seed=draw)
    old_train, old_test = ds.subset(old_idx[old_split.train]), ds.subset(old_idx[old_split.test])

    parent_dir = work / f"c{c}-d{draw}-e{epochs or 'default'}-backbone"
    info_file = work / f"{parent_dir.name}.json"
    if keep and info_file.exists() and parent_dir.is_dir():
        # a backbone kept by an earlier run with --work: same data, c, draw and epoch cap
        cached = json.loads(info_file.read_text())
        if cached.get("old_train_labels") != old_train.labels.tolist():
            raise click.ClickException(f"{info_file}: kept backbone was trained on other spectra; remove {work}")
        parent, bb_info = load_bundle(parent_dir), cached["info"]
        bb_info["reused"] = True
    else:
        bundle, bb_info = train_backbone(old_train, parent_dir, draw, threads, epochs, command)
        t0 = time.perf_counter()
        parent = add_support(bundle, old_train, parent_dir)
        bb_info["support_seconds"] = round(time.perf_counter() - t0, 2)
        if keep:
            info_file.write_text(json.dumps({"info": bb_info, "old_train_labels": old_train.labels.tolist()}))
    old_ok_parent, _ = accuracy(parent, old_test)

    new_ds = ds.subset(new_idx)
    folds = stratified_kfold(new_ds.labels, NEW_FOLDS, seed=draw)
    n_new = new_idx.size
    rep_ok = np.zeros(n_new, bool)
    joint_ok = np.zeros(n_new, bool)
    tested = np.zeros(n_new, int)
    joint_old_acc, swap_seconds, old_pred_as_new = [], [], []
    backbone_sha = parent.manifest["files"]["backbone"]["sha256"]
    for f, split in enumerate(folds):
        train_part, test_part = new_ds.subset(split.train), new_ds.subset(split.test)
        tested[split.test] += 1
        for replace in (True, False):
            t1 = time.perf_counter()
            out = add_head(parent, train_part, work / f"c{c}-d{draw}-f{f}-{'replace' if replace else 'joint'}",
                           replace=replace, seed=draw, **(fit or {}))
            swap_seconds.append(time.perf_counter() - t1)
            if out.manifest["files"]["backbone"]["sha256"] != backbone_sha:
                raise click.ClickException(f"{out.path}: head swap changed the backbone")
            ok, _ = accuracy(out, test_part)
            if replace:
                rep_ok[split.test] = ok
            else:
                joint_ok[split.test] = ok
                ok_old, pred_old = accuracy(out, old_test)
                joint_old_acc.append(float(ok_old.mean()))
                old_pred_as_new.append(float(np.isin(pred_old, new).mean()))
            shutil.rmtree(out.path, ignore_errors=True)
    if (tested != 1).any():
        raise AssertionError(f"c={c} draw {draw}: {int((tested != 1).sum())} new spectra not tested exactly once")
    old_joint = float(np.mean(joint_old_acc))
    n_old = len(old_test)
    row = {
        "c": c, "draw": draw, "new_classes": new,
        "spectra": {"old_train": len(old_train), "old_test": n_old, "new": int(n_new)},
        "backbone": bb_info,
        "parent_old": float(old_ok_parent.mean()),
        "replace_new": float(rep_ok.mean()),
        "joint_new": float(joint_ok.mean()),
        "joint_old": old_joint,
        "joint_all": float((old_joint * n_old + joint_ok.sum()) / (n_old + n_new)),
        "joint_old_predicted_as_new": float(np.mean(old_pred_as_new)),
        "head_swap_seconds_mean": round(float(np.mean(swap_seconds)), 2),
    }
    log.info("c=%d draw %d: parent old %.3f | replace new %.3f | joint new %.3f old %.3f all %.3f "
             "(backbone %.0f s, %d epochs)", c, draw, row["parent_old"], row["replace_new"], row["joint_new"],
             row["joint_old"], row["joint_all"], bb_info["seconds"], bb_info["epochs_run"])
    if not keep:
        shutil.rmtree(parent_dir, ignore_errors=True)
    return row


METRICS = ("replace_new", "parent_old", "joint_new", "joint_old", "joint_all", "joint_old_predicted_as_new")


def summary(rows: list[dict[str, Any]], cs: tuple[int, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in cs:
        sel = [r for r in rows if r["c"] == c]
        if not sel:
            continue
        s = {m: summarise(r[m] for r in sel) for m in METRICS}
        s["draws"] = len(sel)
        s["paper"] = {"new": PAPER["new"].get(c), "old": PAPER["old"].get(c)}
        s["goal_new"] = GOAL_NEW.get(c)
        s["goal_met_replace"] = None if c not in GOAL_NEW else bool(s["replace_new"]["mean"] >= GOAL_NEW[c])
        s["goal_met_joint"] = None if c not in GOAL_NEW else bool(s["joint_new"]["mean"] >= GOAL_NEW[c])
        out[str(c)] = s
    return out


def print_table(summ: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    def f(s: dict[str, Any]) -> str:
        return f"{s['mean']:.3f} ± {s['std']:.3f}"

    t = Table(title="Head swap on a frozen backbone (top-1, mean ± std over draws)")
    for col in ("c", "draws", "new (replace)", "paper new", "goal", "old (parent)", "paper old",
                "joint new", "joint old", "joint all"):
        t.add_column(col, justify="right")
    for c, s in summ.items():
        p = s["paper"]
        t.add_row(c, str(s["draws"]), f(s["replace_new"]), f"{p['new']:.2f}" if p["new"] else "–",
                  f"{s['goal_new']:.2f}" if s["goal_new"] else "–", f(s["parent_old"]),
                  f"{p['old']:.2f}" if p["old"] else "–", f(s["joint_new"]), f(s["joint_old"]), f(s["joint_all"]))
    Console(width=150).print(t)


def _cs(value: str) -> tuple[int, ...]:
    try:
        cs = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: comma-separated integers expected") from None
    if not cs or min(cs) < 1:
        raise click.BadParameter(f"{value!r}: at least one c >= 1")
    return cs


@click.command()
@click.option("--data", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_DATA, show_default=True)
@click.option("--cs", "cs_text", default=",".join(map(str, CS)), show_default=True,
              help="Numbers of new classes held out of the backbone.")
@click.option("--draws", type=click.IntRange(1, 100), default=3, show_default=True, help="Seeded draws per c.")
@click.option("--first-draw", type=click.IntRange(0, 10**6), default=0, show_default=True)
@click.option("--threads", type=click.IntRange(1, 64), default=1, show_default=True, help="Torch threads.")
@click.option("--epochs", type=click.IntRange(1, 100000), default=None,
              help="Cap on backbone training epochs (default: the recipe's 300 with early stopping).")
@click.option("--quick", is_flag=True, help="Smoke run: c = 5 (or --cs), one draw, 2 epochs.")
@click.option("--fit", "fit_opts", multiple=True, metavar="KEY=VALUE",
              help="Option passed to edge.head.add_head (l2, exemplars, gaussian, folds, ...); default: its own.")
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the trained backbones here and reuse them on the next run (e.g. to compare --fit options).")
@click.option("--resume", is_flag=True, help="Keep rows already in --out for the same (c, draw, epochs).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=RESULTS / "head_swap.json",
              show_default=True)
def main(data: Path, cs_text: str, draws: int, first_draw: int, threads: int, epochs: int | None, quick: bool,
         fit_opts: tuple[str, ...], work: Path | None, resume: bool, out: Path) -> None:
    """Hold c classes out of the backbone, add them by head swap, report new/old/all accuracy."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("trainer").setLevel(logging.WARNING)
    from edge.head import add_head, add_support  # the product path (H1's API)

    if not data.exists():
        raise click.ClickException(f"{data} not found (see ../shared/data/README.md)")
    cs = _cs(cs_text)
    fit = {}
    for item in fit_opts:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r}: KEY=VALUE expected", param_hint="--fit")
        try:
            fit[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            fit[key.strip()] = value
    if quick:
        draws, epochs = 1, 2 if epochs is None else epochs
        cs = cs if cs_text != ",".join(map(str, CS)) else (5,)
    ds = load_dataset(data)
    if max(cs) > len(ds.classes) - 2:
        raise click.BadParameter(f"c = {max(cs)} leaves fewer than 2 old classes of {len(ds.classes)}",
                                 param_hint="--cs")
    command = " ".join(["python", "benchmarks/head_swap.py", *sys.argv[1:]])
    rows: list[dict[str, Any]] = []
    commands = [command]
    seconds_before = 0.0
    if resume and out.exists():
        prev = json.loads(out.read_text())
        if prev.get("settings", {}).get("epochs") == epochs and prev["settings"].get("fit", {}) == fit:
            rows = [r for r in prev.get("rows", []) if r["c"] in cs]
            commands = [*prev.get("commands", [prev.get("command")]), command]
            seconds_before = float(prev.get("seconds_total", prev.get("seconds", 0.0)))
    t_start = time.perf_counter()
    load_start = list(os.getloadavg())

    def write() -> dict[str, Any]:
        import onnxruntime
        import torch

        result = {
            "benchmark": "head_swap", "command": command, "commands": commands,
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "data": {"path": str(data), "sha256": file_sha256(data), "spectra": len(ds), "classes": len(ds.classes)},
            "protocol": (__doc__ or "").split("Protocol, ", 1)[-1].split("Paper (Table 11)")[0].strip(),
            "settings": {"cs": list(cs), "draws": sorted({r["draw"] for r in rows}), "threads": threads,
                         "epochs": epochs, "quick": quick, "fit": fit, "old_test_fraction": OLD_TEST_FRACTION,
                         "new_folds": NEW_FOLDS},
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg_start": load_start,
                        "loadavg_end": list(os.getloadavg())},
            "versions": {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
                         "onnxruntime": onnxruntime.__version__},
            "paper": {k: {str(c): v for c, v in d.items()} for k, d in PAPER.items()},
            "goal_new": {str(c): v for c, v in GOAL_NEW.items()},
            "rows": rows, "summary": summary(rows, cs),
            "seconds": round(time.perf_counter() - t_start, 1),
            "seconds_total": round(seconds_before + time.perf_counter() - t_start, 1),
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        return result

    done = {(r["c"], r["draw"]) for r in rows}
    with tempfile.TemporaryDirectory(prefix="head_swap.") as tmp:
        if work is not None:
            work.mkdir(parents=True, exist_ok=True)
        for draw in range(first_draw, first_draw + draws):
            for c in cs:
                if (c, draw) in done:
                    continue
                rows.append(run_draw(ds, c, draw, work or Path(tmp), threads=threads, epochs=epochs,
                                     add_head=add_head, add_support=add_support, command=command, fit=fit,
                                     keep=work is not None))
                write()  # partial results survive an interrupted run
    result = write()
    print_table(result["summary"])
    print(f"wrote {out} ({result['seconds']} s)")


if __name__ == "__main__":
    main()
