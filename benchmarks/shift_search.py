"""Shift search at test time: is it a better answer to drift than training with shifts?

A drift of ``d`` cm⁻¹ could be met at inference instead of in training: score the
spectrum at every offset ``s`` of a window (``-W, -W+step, ..., W``), then reduce
the ``len(window)`` softmax outputs to one, by

* ``mean``: the mean probability over offsets (one class must fit well on average);
* ``geo``: the mean log-probability (same ranking as averaging the logits or, through a
  linear head, the features: what a bundle's backbone can do inside its own graph);
* ``max``: the best probability of each class over offsets (the best alignment wins);
* ``max-pen``: ``max_s log p_s(c) - penalty * |s|``, a prior that drifts are small.

It costs ``len(window)`` backbone passes per spectrum.  The benchmark trains one CNN
recipe per fold of :func:`benchmarks.protocols.stratified_kfold` (the folds of
``soysal_table.py``), shifts each test spectrum by every test drift (± each of
``--shifts``, and 0) as ``soysal_table.py`` does, then searches around that.  The
search shift is applied to the already shifted spectrum with the same fill.

Usage (repository root)::

    nice -n 2 python benchmarks/shift_search.py --threads 2                  # ~4 min per recipe on 2 cores
    nice -n 2 python benchmarks/shift_search.py --spec "cnn:liu:val_fraction=0,epochs=250,aug.max_shift=10,aug.p_shift=0.8"
    python benchmarks/shift_search.py --quick --out /tmp/s.json                # smoke run
    # on a machine with a GPU and many cores: one process per fold, then join them
    for k in 1 2 3 4 5; do python benchmarks/shift_search.py --device cuda --threads 1 --fold $k --out f$k.json & done; wait
    python benchmarks/shift_search.py --merge f1.json --merge f2.json --merge f3.json --merge f4.json --merge f5.json --out all.json

Writes ``benchmarks/results/shift_search.json`` (per fold, per window, reducer and
test drift) and prints a table of top-1.
"""
from __future__ import annotations

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

from benchmarks.baselines import DEVICE_HELP, SHIPPED_RECIPE, CNNModel, CNNSpec, provenance, write_result  # noqa: E402
from benchmarks.protocols import DEFAULT_FILL, FILL_MODES, shift_spectra, stratified_kfold  # noqa: E402
from calibration.dataset import load_dataset  # noqa: E402
from calibration.errors import ConfigError  # noqa: E402
from edge.classifier import softmax  # noqa: E402  (the device's own softmax)
from trainer.tolerance import parse_window, symmetric_offsets  # noqa: E402  (as the bundle's --shift-average)

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "rruff-soysal" / "raw_train.npz"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "shift_search.json"
DEFAULT_WINDOWS = "0:1,4:2,10:5,20:5,30:5,40:5"
DEFAULT_PENALTIES = "0.003,0.01,0.02"

log = logging.getLogger("shift_search")


def parse_windows(text: str) -> list[tuple[int, int]]:
    """``"W:STEP,..."`` -> [(W, STEP), ...]; W >= 0, STEP >= 1."""
    out = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        try:
            w, step = parse_window(item)
        except ConfigError as e:
            raise click.BadParameter(str(e)) from None
        if w < 0 or step < 1:
            raise click.BadParameter(f"{item!r}: need HALF_WIDTH >= 0 and STEP >= 1")
        out.append((w, step))
    if not out:
        raise click.BadParameter("no window given")
    return out


def offsets(w: int, step: int) -> list[int]:
    """The search offsets of a window, symmetric about 0 and always including it (0:1 is no search)."""
    return symmetric_offsets(w, step)


def reduce_scores(probs: np.ndarray, shifts: list[int], reducer: str, penalty: float = 0.0) -> np.ndarray:
    """(S, N, K) probabilities at S offsets -> (N, K) scores."""
    if reducer == "mean":
        return probs.mean(0)
    if reducer == "geo":
        return np.log(probs + 1e-12).mean(0)
    if reducer == "max":
        return probs.max(0)
    if reducer == "max-pen":
        prior = penalty * np.abs(np.asarray(shifts, dtype=float))[:, None, None]
        return (np.log(probs + 1e-12) - prior).max(0)
    raise ValueError(f"unknown reducer {reducer!r}")


def run(data: Path, spec: str, windows: list[tuple[int, int]], penalties: list[float], shifts: list[float],
        fill: str, folds: int, seed: int, threads: int, epochs: int | None, device: str = "cpu",
        only_folds: list[int] | None = None) -> dict[str, Any]:
    dataset = load_dataset(data)
    splits = stratified_kfold(dataset.labels, folds, seed)
    run_folds = only_folds or list(range(1, folds + 1))
    drifts = [0.0] + [s * sign for s in shifts for sign in (1, -1)]
    reducers = [("mean", 0.0), ("geo", 0.0), ("max", 0.0)] + [("max-pen", p) for p in penalties]
    rows: list[dict[str, Any]] = []
    t_all = time.perf_counter()
    for f, split in enumerate(splits):
        if f + 1 not in run_folds:
            continue
        train, test = dataset.subset(split.train), dataset.subset(split.test)
        t0 = time.perf_counter()
        model = CNNModel(CNNSpec.parse(spec), seed=seed, threads=threads, epochs=epochs, device=device).fit(train)
        y = np.searchsorted(model.classes, test.labels)
        row: dict[str, Any] = {"fold": f + 1, "test_spectra": int(y.size), "top1": {}}
        for d in drifts:
            drifted = shift_spectra(test.spectra, test.wavenumbers, d, fill=fill) if d else test.spectra
            cache: dict[int, np.ndarray] = {}
            for w, step in windows:
                s_list = offsets(w, step)
                for s in s_list:
                    if s not in cache:
                        x = shift_spectra(drifted, test.wavenumbers, s, fill=fill) if s else drifted
                        cache[s] = softmax(model.scores(x, test.wavenumbers))
                probs = np.stack([cache[s] for s in s_list])
                for name, p in reducers:
                    key = f"{w}:{step}/{name}" + (f"{p:g}" if name == "max-pen" else "")
                    acc = float((reduce_scores(probs, s_list, name, p).argmax(1) == y).mean())
                    row["top1"].setdefault(key, {})[f"{d:+g}"] = acc
        rows.append(row)
        log.info("fold %d: unsearched top-1 %.3f (%.0f s)", f + 1, row["top1"]["0:1/mean"]["+0"],
                 time.perf_counter() - t0)
    return {"benchmark": "shift_search", **provenance([data], threads),
            "protocol": {"name": "stratified k-fold CV", "folds": folds, "seed": seed, "fill": fill,
                         "test_drifts_cm1": drifts},
            "spec": spec, "windows": [list(w) for w in windows], "penalties": penalties,
            "seconds": round(time.perf_counter() - t_all, 1), "folds": rows, "summary": summarise_folds(rows)}


def summarise_folds(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean top-1 over folds, per window/reducer and test drift."""
    return {k: {d: round(float(np.mean([r["top1"][k][d] for r in rows])), 4) for d in rows[0]["top1"][k]}
            for k in rows[0]["top1"]}


def merge_fold_runs(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """One document from runs of single folds (``--fold``) of the same recipe and protocol.

    Raises
    ------
    click.BadParameter
        The runs differ in recipe, protocol, windows or data, or repeat a fold.
    """
    first = docs[0]
    same = ("spec", "protocol", "windows", "penalties")
    for d in docs[1:]:
        diff = [k for k in same if d.get(k) != first.get(k)] + \
            (["data"] if d["data"][0]["sha256"] != first["data"][0]["sha256"] else [])
        if diff:
            raise click.BadParameter(f"runs differ in {diff}: {first['command']!r} vs {d['command']!r}")
    rows = sorted((r for d in docs for r in d["folds"]), key=lambda r: r["fold"])
    numbers = [r["fold"] for r in rows]
    if len(set(numbers)) != len(numbers):
        raise click.BadParameter(f"fold repeated among the runs: {numbers}")
    return {**first, "command": [d["command"] for d in docs], "seconds": round(sum(d["seconds"] for d in docs), 1),
            "folds": rows, "summary": summarise_folds(rows)}


@click.command()
@click.option("--data", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_DATA, show_default=True)
@click.option("--spec", default=SHIPPED_RECIPE, show_default=True, help="CNN recipe (soysal_table.py syntax).")
@click.option("--windows", default=DEFAULT_WINDOWS, show_default=True,
              help="Search windows HALF_WIDTH:STEP (cm⁻¹); 0:1 is no search.")
@click.option("--penalties", default=DEFAULT_PENALTIES, show_default=True, help="max-pen priors (per cm⁻¹).")
@click.option("--shifts", default="15,30", show_default=True, help="Test drifts (cm⁻¹), each + and -.")
@click.option("--fill", type=click.Choice(FILL_MODES), default=DEFAULT_FILL, show_default=True)
@click.option("--folds", type=click.IntRange(2, 10), default=5, show_default=True)
@click.option("--seed", type=click.IntRange(0, 2**31), default=0, show_default=True)
@click.option("--threads", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option("--device", default="cpu", show_default=True, help=DEVICE_HELP)
@click.option("--fold", "only_folds", type=click.IntRange(1, 10), multiple=True,
              help="Run only this fold (repeatable), e.g. one process per fold; join the JSONs with --merge.")
@click.option("--merge", "merge_runs", type=click.Path(exists=True, dir_okay=False, path_type=Path), multiple=True,
              help="Join the JSONs of --fold runs of one recipe into one (no training).")
@click.option("--quick", is_flag=True, help="2 folds, 2 epochs; no JSON unless --out.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None)
def main(data: Path, spec: str, windows: str, penalties: str, shifts: str, fill: str, folds: int, seed: int,
         threads: int, device: str, only_folds: tuple[int, ...], merge_runs: tuple[Path, ...], quick: bool,
         out: Path | None) -> None:
    """Test-time shift search vs none, on the Soysal split (stratified k-fold CV)."""
    if merge_runs:
        import json

        doc = merge_fold_runs([json.loads(p.read_text()) for p in merge_runs])
        print_summary(doc)
        write_result(out, doc, default=DEFAULT_OUT)
        return
    if any(f > folds for f in only_folds):
        raise click.BadParameter(f"{list(only_folds)}: there are {folds} folds", param_hint="--fold")
    if not data.exists():
        raise SystemExit(f"{data}: not found (see ../shared/data/README.md)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("trainer").setLevel(logging.WARNING)
    try:
        pens = [float(p) for p in penalties.split(",") if p.strip()]
        drift = [float(s) for s in shifts.split(",") if s.strip()]
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    doc = run(data, spec, parse_windows(windows), pens, drift, fill, 2 if quick else folds, seed, threads,
              epochs=2 if quick else None, device=device, only_folds=list(only_folds) or None)
    print_summary(doc)
    write_result(out, doc, default=DEFAULT_OUT, quick=quick)


def print_summary(doc: dict[str, Any]) -> None:
    """The summary as a markdown table."""
    p = doc["protocol"]
    print(f"{doc['spec']}, folds {[r['fold'] for r in doc['folds']]} of {p['folds']}-fold CV (seed {p['seed']}), "
          f"fill {p['fill']}; top-1 by test drift (cm⁻¹)")
    drifts = list(next(iter(doc["summary"].values())))
    print("| window / reducer | " + " | ".join(drifts) + " |")
    print("|---|" + "---:|" * len(drifts))
    for key, by in doc["summary"].items():
        print(f"| {key} | " + " | ".join(f"{by[d]:.3f}" for d in drifts) + " |")


if __name__ == "__main__":
    main()
