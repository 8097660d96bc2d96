"""What 8-bit head weights change in the answers: float32 vs int8 heads on real spectra.

Usage (from the repository root)::

    python benchmarks/head_int8.py        # -> benchmarks/results/head_int8.json (~1 min, 2 cores)
    python benchmarks/head_int8.py --quick --out /tmp/hi.json     # smoke run (seconds)

The edge runs a head whose float32 weights exceed 1 MiB (4,096 classes at F = 64)
with 8-bit weights (``edge.quantization``; ``Classifier(head_precision="auto")``),
which keeps a 10,000-class head within the issue's 10 % latency band
(``benchmarks/head_latency.py``).  This benchmark measures the price, through the
edge's own path (``Bundle.preprocessor`` then ``Classifier.classify``, ONNX
Runtime), once with ``head_precision="fp32"`` and once with ``"int8"``, on the
shipped backbone (liu, F = 64) and three real heads:

* ``soysal-63``: the shipped bundle's own head on the 347 raw spectra of
  ``rruff-soysal/raw_train.npz`` (its training data: a fidelity check, not an
  accuracy figure);
* ``sang-d1-192`` and ``sang-d2-1332``: a softmax head over every mineral of the Sang
  Dataset_1 / Dataset_2 dev set (``edge.head.fit_softmax_head`` on the shipped
  backbone's features of a random 70 %, seed 0), tested on the other 30 %: no real
  set here has more classes than Dataset_2's 1,332.

Reported per head: top-1 accuracy with each precision, how often the top-1 class
and the top-3 list agree, the change of the top-1 probability, the largest logit
change, and the head's bytes.  Heads this small run float32 under ``auto``; int8 is
forced here to measure it.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edge.bundle import Bundle, load_bundle, write_bundle  # noqa: E402
from edge.classifier import Classifier  # noqa: E402
from edge.head import extract_features, fit_softmax_head, linear_head_onnx  # noqa: E402
from edge.quantization import int8_head_onnx  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
log = logging.getLogger("head_int8")


def fitted_bundle(base: Bundle, spectra: np.ndarray, labels: np.ndarray, axis: np.ndarray, out: Path,
                  seed: int) -> tuple[Bundle, np.ndarray]:
    """A bundle with the shipped backbone and a softmax head fitted on a random 70 % (seed); the test indices."""
    classes, y = np.unique(labels, return_inverse=True)
    test = np.zeros(len(y), bool)
    test[np.random.default_rng(seed).permutation(len(y))[: int(round(0.3 * len(y)))]] = True
    feats = extract_features(base, spectra[~test], axis)
    w, b = fit_softmax_head(feats, y[~test], len(classes), seed=seed)
    bundle = write_bundle(out, backbone_onnx=base.backbone_path.read_bytes(), head_onnx=linear_head_onnx(w, b),
                          classes=[str(c) for c in classes], preprocessing=base.manifest["preprocessing"],
                          feature_size=base.feature_size, architecture=base.manifest["architecture"],
                          training={"benchmark": "head_int8", "seed": seed}, temperature=1.0)
    return bundle, np.flatnonzero(test)


def compare(name: str, bundle: Bundle, x: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Classify preprocessed ``x`` with float32 and 8-bit head weights; agreement and accuracy."""
    out: dict[str, Any] = {"head": name, "classes": len(bundle.classes), "spectra": int(len(x))}
    runs = {}
    for precision in ("fp32", "int8"):
        clf = Classifier(bundle, top_k=3, head_precision=precision)
        assert clf.head_precision == precision, f"{name}: {precision} head was not used"
        preds = clf.classify(x)
        runs[precision] = (preds, clf.logits(x))
        out[f"top1_{precision}"] = float(np.mean([p.label == t for p, t in zip(preds, labels)]))
    (pf, zf), (pq, zq) = runs["fp32"], runs["int8"]
    out["top1_agreement"] = float(np.mean([a.label == b.label for a, b in zip(pf, pq)]))
    out["top3_agreement"] = float(np.mean([a.classes == b.classes for a, b in zip(pf, pq)]))
    dp = np.array([abs(a.probability - b.probability) for a, b in zip(pf, pq)])
    out["top1_probability_change_mean"] = float(dp.mean())
    out["top1_probability_change_max"] = float(dp.max())
    out["logit_change_max"] = float(np.abs(zf - zq).max())
    out["logit_range"] = float(np.ptp(zf))
    changed = [i for i, (a, b) in enumerate(zip(pf, pq)) if a.label != b.label]
    # a changed answer is a near-tie: the float32 margin between the two classes involved
    out["changed_fp32_margins"] = [round(float(pf[i].probabilities[0] - pf[i].probabilities[1]), 4) for i in changed]
    head = bundle.head_path.read_bytes()
    out["head_onnx_bytes"] = {"fp32": len(head), "int8": len(int8_head_onnx(head))}
    return out


@click.command()
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--quick", is_flag=True, help="Smoke run: the shipped head and Dataset_1 only (seconds).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=RESULTS / "head_int8.json",
              show_default=True)
def main(seed: int, quick: bool, out: Path) -> None:
    """float32 vs 8-bit head weights on real spectra, through the edge's classifier."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    t0 = time.perf_counter()
    base = load_bundle()
    rows = []
    soysal = DATA / "rruff-soysal" / "raw_train.npz"
    if not soysal.exists():
        raise click.ClickException(f"{soysal} not found (see ../shared/data/README.md)")
    d = np.load(soysal)
    rows.append(compare("soysal-63 (shipped head, its training spectra)", base,
                        base.preprocessor.batch(d["spectra"], d["wavenumbers"]), d["labels"]))
    with tempfile.TemporaryDirectory(prefix="head_int8.") as tmp:
        for n, tag in ((1, "sang-d1"),) + (() if quick else ((2, "sang-d2"),)):
            path = DATA / "rruff-sang" / f"dataset_{n}_dev.npz"
            if not path.exists():
                log.warning("%s not found: %s skipped", path, tag)
                continue
            s = np.load(path)
            t = time.perf_counter()
            bundle, test = fitted_bundle(base, s["spectra"], s["labels"], s["wavenumbers"], Path(tmp) / tag, seed)
            log.info("%s: head over %d classes fitted in %.0f s", tag, len(bundle.classes), time.perf_counter() - t)
            x = bundle.preprocessor.batch(s["spectra"][test], s["wavenumbers"])
            rows.append(compare(f"{tag}-{len(bundle.classes)} (fitted on 70 %, 30 % tested)", bundle, x,
                                s["labels"][test]))
    from rich.console import Console
    from rich.table import Table

    table = Table(title="float32 vs 8-bit head weights, same backbone and spectra (Classifier.classify)")
    for col in ("head", "classes", "spectra", "top-1 fp32", "top-1 int8", "top-1 agree", "top-3 agree",
                "|Δp1| mean", "|Δp1| max", "head kB fp32 → int8"):
        table.add_column(col, justify="left" if col == "head" else "right")
    for r in rows:
        table.add_row(r["head"], f"{r['classes']:,}", f"{r['spectra']:,}", f"{r['top1_fp32']:.4f}",
                      f"{r['top1_int8']:.4f}", f"{r['top1_agreement']:.4f}", f"{r['top3_agreement']:.4f}",
                      f"{r['top1_probability_change_mean']:.4f}", f"{r['top1_probability_change_max']:.4f}",
                      f"{r['head_onnx_bytes']['fp32'] / 1e3:,.0f} → {r['head_onnx_bytes']['int8'] / 1e3:,.0f}")
    Console(width=170).print(table)
    import onnxruntime

    result = {"benchmark": "head_int8", "command": " ".join(["python", "benchmarks/head_int8.py", *sys.argv[1:]]),
              "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": {"platform": platform.platform()},
              "versions": {"onnxruntime": onnxruntime.__version__, "numpy": np.__version__},
              "backbone": base.model_id, "seed": seed, "quick": quick, "rows": rows,
              "seconds": round(time.perf_counter() - t0, 1)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out} ({result['seconds']} s)")


if __name__ == "__main__":
    main()
