"""Open set, measured: which novelty score tells known minerals from everything else.

Usage (from the repository root)::

    python benchmarks/open_set.py        # -> benchmarks/results/open_set.json and a table (~1 min)

Model: the shipped bundle (``edge/models/default``: compact backbone, 128 features,
63-class softmax head, ``support.npz`` with the features of its 347 training spectra),
given its novelty part by :func:`edge.novelty.add_novelty` in a temporary copy (the
shipped bundle is not modified).  Features come from the daemon's own preprocessing
and backbone (:func:`edge.head.extract_features`).

KNOWN spectra (minerals among the model's 63, matched case-insensitively):

* ``d2_known`` / ``d1_known``: Sang ``dataset_2_dev`` / ``dataset_1_dev`` spectra of those
  minerals.  RRUFF *processed* spectra (baseline removed) while the model was trained on
  raw ones: a domain shift.  Some may come from the same RRUFF specimens as the training
  spectra (another orientation or laser), which makes them easier.
* ``soysal_loo``: the raw Soysal spectra — the model's own training spectra, so optimistic
  for every score; for the support-based scores each spectrum is left out of its class
  mean and of the exemplars (it is one of them), which is all the device could do.

UNKNOWN spectra: ``d2_unknown``, Sang ``dataset_2_dev`` spectra of minerals not among the
63, and ``instruments``, the non-mineral spectra of ``../shared/data/instruments``
(acetonitrile, Chlamydomonas, a glass slide; the two OpenRAMAN files are on a pixel axis
with no calibration and are left out).

Scores (higher = more novel): ``msp`` (−max softmax probability), ``energy``
(−T·logsumexp(logits/T)), ``max_logit``, ``maha_tied`` (nearest class mean, tied
within-class covariance from the exemplars, shrinkage 0.1), ``maha_global`` (one Gaussian
over all exemplars, shrinkage 0.1), ``pca_residual`` (share of the centred feature
energy outside the top 32 principal components), ``knn_cos`` (1 − best cosine with any
exemplar), ``class_mean_cos`` (1 − best cosine with any class mean),
``class_mean_cos_top3`` (the same over the head's top 3 classes only: what the device
runs) and ``energy+class_mean`` (sum of the two, each scaled by its held-out known
median and 95th percentile).  For each: AUROC, and the share of unknowns flagged at
the threshold that flags 5 % of that known set (an oracle threshold), plus, for the
device score, the shares at the bundle's own threshold.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from calibration.axis import to_shift_axis  # noqa: E402
from calibration.errors import RamanEdgeError  # noqa: E402
from calibration.readers import read  # noqa: E402
from edge.bench import auroc  # noqa: E402
from edge.bundle import default_model_path  # noqa: E402
from edge.head import extract_features, load_support, read_linear_head  # noqa: E402
from edge.novelty import add_novelty, load_novelty  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
TARGET = 0.05
log = logging.getLogger("open_set")


def _unit(a: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(a, axis=-1, keepdims=True)
    return np.divide(a, n, out=np.zeros_like(a), where=n > 0)


def _lse(a: np.ndarray) -> np.ndarray:
    m = a.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis=1, keepdims=True)))[:, 0]


def load_sets(bundle: Any) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Backbone features of every set, and for ``soysal_loo`` the exemplar index of each spectrum."""
    lower = {c.lower(): c for c in bundle.classes}
    sets: dict[str, np.ndarray] = {}
    for name, key in (("dataset_2_dev", "d2"), ("dataset_1_dev", "d1")):
        z = np.load(DATA / "rruff-sang" / f"{name}.npz")
        known = np.array([str(l).strip().lower() in lower for l in z["labels"]])
        f = extract_features(bundle, z["spectra"], z["wavenumbers"])
        sets[f"{key}_known"] = f[known]
        if key == "d2":
            sets["d2_unknown"] = f[~known]
    z = np.load(DATA / "rruff-soysal" / "raw_train.npz")
    sets["soysal_loo"] = extract_features(bundle, z["spectra"], z["wavenumbers"])
    feats, skipped = [], 0
    for p in sorted((DATA / "instruments").rglob("*")):
        if not p.is_file() or p.name == "LICENSE" or "neon" in p.name:
            continue
        r = read(p)
        for s in (r if isinstance(r, list) else [r]):
            try:
                x = bundle.preprocessor(to_shift_axis(s, None, None)[0])
            except RamanEdgeError:
                skipped += 1  # pixel axis without a calibration (OpenRAMAN)
                continue
            feats.append(bundle.backbone_session.run(None, {"spectrum": x[None].astype(np.float32)})[0][0])
    sets["instruments"] = np.asarray(feats, np.float32)
    return sets, {"instrument_spectra_skipped": skipped}


def scores(f: np.ndarray, W: np.ndarray, b: np.ndarray, T: float, sup: Any, loo: np.ndarray | None) -> dict[str, np.ndarray]:
    """Every candidate score of features ``f``; ``loo`` (exemplar index per row) leaves that exemplar out."""
    f = f.astype(np.float64)
    ex, lab = sup.exemplars.astype(np.float64), sup.exemplar_labels
    mu, counts = sup.mean.astype(np.float64), sup.counts
    lg = f @ W.T + b
    z = lg / T
    out = {"msp": -np.exp(z.max(1) - _lse(z)), "energy": -T * _lse(z), "max_logit": -lg.max(1)}
    # per-row class means (own class without the spectrum when it is an exemplar)
    mus = np.broadcast_to(mu, (len(f),) + mu.shape).copy()
    if loo is not None:
        for i, j in enumerate(loo):
            c, n = lab[j], counts[lab[j]]
            if n > 1:
                mus[i, c] = (mu[c] * n - ex[j]) / (n - 1)
    resid = ex - mu[lab]
    cov = resid.T @ resid / len(ex)
    shrink = lambda s, a: (1 - a) * s + a * np.trace(s) / len(s) * np.eye(len(s))  # noqa: E731
    p = np.linalg.inv(shrink(cov, 0.1))
    d = f[:, None, :] - mus
    out["maha_tied"] = np.einsum("nkf,fg,nkg->nk", d, p, d).min(1)
    g = ex.mean(0)
    pg = np.linalg.inv(shrink(np.cov(ex.T, bias=True), 0.1))
    out["maha_global"] = np.einsum("nf,fg,ng->n", f - g, pg, f - g)
    vecs = np.linalg.eigh(np.cov(ex.T, bias=True))[1][:, ::-1][:, :32]
    c = f - g
    out["pca_residual"] = 1 - ((c @ vecs) ** 2).sum(1) / np.maximum((c ** 2).sum(1), 1e-12)
    sim = _unit(f) @ _unit(ex).T
    if loo is not None:
        sim[np.arange(len(f)), loo] = -2
    out["knn_cos"] = 1 - sim.max(1)
    cm = np.einsum("nf,nkf->nk", _unit(f), _unit(mus))
    out["class_mean_cos"] = 1 - cm.max(1)
    top = np.argsort(-lg, axis=1, kind="stable")[:, :3]
    out["class_mean_cos_top3"] = 1 - np.take_along_axis(cm, top, 1).max(1)
    return out


@click.command()
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=RESULTS / "open_set.json",
              show_default=True)
def main(out: Path) -> None:
    """Compare novelty scores of the shipped model on known and unknown spectra."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = add_novelty(default_model_path(), Path(tmp) / "default+novelty")
        nov = load_novelty(bundle)
        sup = load_support(bundle)
        W, b = read_linear_head(bundle.head_path.read_bytes())
        sets, notes = load_sets(bundle)
        ex16 = sup.exemplars.astype(np.float16).astype(np.float64)
        soy = sets["soysal_loo"].astype(np.float16).astype(np.float64)
        loo = np.array([int(np.argmin(((ex16 - s) ** 2).sum(1))) for s in soy])
        table = {k: scores(v, W, b, bundle.temperature, sup, loo if k == "soysal_loo" else None)
                 for k, v in sets.items()}
        # the device's own score, as the classifier computes it (head top-3, the part's directions)
        device = {}
        for k, v in sets.items():
            lg = v.astype(np.float64) @ W.T + b
            device[k] = nov.score(v, np.argsort(-lg, axis=1, kind="stable")[:, :3])
    ref = table["soysal_loo"]
    for t in table.values():  # scaled by held-out known statistics, then summed
        scale = {m: (np.median(ref[m]), np.quantile(ref[m], 0.95) - np.median(ref[m])) for m in
                 ("energy", "class_mean_cos_top3")}
        t["energy+class_mean"] = sum((t[m] - c) / s for m, (c, s) in scale.items())
    results: dict[str, Any] = {"sizes": {k: int(len(v)) for k, v in sets.items()}, **notes, "pairs": {}}
    for known in ("d2_known", "d1_known", "soysal_loo"):
        for unknown in ("d2_unknown", "instruments"):
            rows = {}
            for m in table[known]:
                k, u = table[known][m], table[unknown][m]
                t = np.quantile(k, 1 - TARGET)
                rows[m] = {"auroc": round(auroc(k, u), 4), "unknown_flagged_at_5pct": round(float((u > t).mean()), 4)}
            k, u = device[known], device[unknown]
            rows["device_at_bundle_threshold"] = {
                "auroc": round(auroc(k, u), 4), "known_flagged": round(float((k > nov.threshold).mean()), 4),
                "unknown_flagged": round(float((u > nov.threshold).mean()), 4)}
            results["pairs"][f"{known} vs {unknown}"] = rows
    results["bundle_threshold"] = nov.threshold
    results["bundle_novelty_meta"] = nov.meta
    results["created_utc"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    results["seconds"] = round(time.perf_counter() - t0, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    for pair, rows in results["pairs"].items():
        print(f"\n{pair}   ({results['sizes'][pair.split(' vs ')[0]]} known, {results['sizes'][pair.split(' vs ')[1]]} unknown)")
        print(f"  {'score':<24}{'AUROC':>8}{'unknown flagged @5% known':>28}")
        for m, r in rows.items():
            if m == "device_at_bundle_threshold":
                print(f"  {'device, bundle threshold':<24}{r['auroc']:>8.3f}   known {r['known_flagged']:.3f}, "
                      f"unknown {r['unknown_flagged']:.3f}")
            else:
                print(f"  {m:<24}{r['auroc']:>8.3f}{r['unknown_flagged_at_5pct']:>28.3f}")
    print(f"\nbundle threshold {nov.threshold:.4f}  {nov.meta}\nwritten to {out} ({results['seconds']} s)")


if __name__ == "__main__":
    main()
