"""Constant time, measured: the head-swap path against a reference matcher, one spectrum at a time.

Usage (from the repository root)::

    python benchmarks/head_latency.py            # -> benchmarks/results/head_latency.json (~2 min)
    python benchmarks/head_latency.py --quick --out /tmp/hl.json    # smoke run (seconds)

What is timed, per spectrum, end to end, exactly as the edge runs it:

* **head path**: ``Pipeline.prepare`` (the bundle's shared preprocessing: despike,
  resample, normalise) then ``Classifier.classify`` (backbone ONNX session, head
  ONNX session, top-3 chosen on the logits, their softmax probabilities) — :mod:`edge.pipeline` and :mod:`edge.classifier`
  themselves, with a head of ``K`` classes written by
  :func:`edge.head.linear_head_onnx` from random weights;
* **reference matcher** (:class:`edge.matcher.ReferenceMatcher`, the Siamese /
  reference-matching approach Soysal et al. argue against): the same preprocessing
  and backbone, then cosine similarity with ``k`` stored reference embeddings
  (one ONNX graph: normalise, ``MatMul`` with the ``F × k`` matrix, ``TopK``), best
  match wins; with 1 and with ``r`` references per class (``k = r·K``).
  References are cached embeddings (random, the bundle's width): the matcher's
  best case — a Siamese twin re-run per reference would cost ``k`` backbone passes.

Head and reference weights are run as the edge runs them: ``--precision auto`` (the
default) applies :func:`edge.quantization.resolve_precision`, so heads and reference
sets over 1 MiB of float32 (10,000 rows and up here) run with 8-bit weights;
``--precision fp32`` gives the float32 figures, ``int8`` forces 8-bit everywhere.
Each row records the precision it ran.

Backbone: the shipped default bundle (``edge/models/default``, liu, F = 64).  Every
ONNX Runtime session has one intra-op and one inter-op thread, as on the device.
Inputs cycle through real raw spectra of ``rruff-soysal/raw_train.npz`` (synthetic
ones when the file is absent).  Configurations are timed round-robin in shuffled
blocks after a warm-up, so load from other processes on a shared machine falls on
all of them alike; ``time.perf_counter_ns`` per call; p50/p99 over all calls.

Memory: each configuration is built in a fresh interpreter, and the resident-set
growth (``/proc/self/statm``) from just before its head/matcher session is created
to after 20 warm calls is reported, beside the ONNX bytes and the raw weight bytes.

Goal (issue 6): the head path stays within 10 % of its 10-class p50 up to 10,000
classes.  The matcher's *crossing* is where its p50 leaves that band (log-linear
interpolation between measured ``k``).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import gc
import json
import logging
import os
import platform
import subprocess
import sys
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from calibration.spectrum import Spectrum  # noqa: E402
from edge.bundle import Bundle, load_bundle, write_bundle  # noqa: E402
from edge.classifier import Classifier  # noqa: E402
from edge.head import linear_head_onnx  # noqa: E402
from edge.matcher import ReferenceMatcher  # noqa: E402
from edge.quantization import HEAD_PRECISIONS, int8_head_onnx  # noqa: E402
from edge.pipeline import Pipeline  # noqa: E402
from firmware_bridge.source import Acquisition  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "rruff-soysal" / "raw_train.npz"
RESULTS = ROOT / "benchmarks" / "results"
#: The issue's class counts, and one step beyond them to show that both paths are linear in the end.
HEAD_CLASSES = (10, 100, 1000, 10000, 100000)
MATCHER_REFS = (10, 100, 1000, 10000, 100000)
REFS_PER_CLASS = 10
MATCHER_CLASSES_MULTI = (10, 100, 1000, 10000)
TOP_K = 3
BAND = 0.10  # the goal: within 10 % of the 10-class latency

log = logging.getLogger("head_latency")


# --------------------------------------------------------------------------- configurations

@dataclasses.dataclass(frozen=True)
class Config:
    """One timed configuration: ``path`` is head | matcher."""

    path: str
    classes: int
    refs_per_class: int = 1

    @property
    def references(self) -> int | None:
        return self.classes * self.refs_per_class if self.path == "matcher" else None

    @property
    def key(self) -> str:
        return f"{self.path}:{self.classes}:{self.refs_per_class}"

    @property
    def label(self) -> str:
        if self.path == "matcher":
            return f"matcher, {self.refs_per_class} ref/class"
        return "head"

    @classmethod
    def parse(cls, key: str) -> "Config":
        path, classes, r = key.split(":")
        return cls(path, int(classes), int(r))


def ort_session(model: bytes | str) -> Any:
    """An ONNX Runtime CPU session with one intra-op and one inter-op thread (the device's setting)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


def single_thread_bundle(bundle: Bundle) -> Bundle:
    """The bundle with its backbone re-opened on one thread (``load_bundle`` uses Runtime's default)."""
    return dataclasses.replace(bundle, backbone_session=ort_session(str(bundle.backbone_path)))


def class_names(n: int) -> list[str]:
    return [f"mineral-{i:06d}" for i in range(n)]


def head_weights(classes: int, features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.normal(0.0, 1.0 / np.sqrt(features), (classes, features)).astype(np.float32),
            rng.normal(0.0, 0.1, classes).astype(np.float32))


def reference_embeddings(k: int, features: int, seed: int) -> np.ndarray:
    # Non-negative like the backbone's ReLU features; values do not change the cost.
    return np.abs(np.random.default_rng(seed).normal(size=(k, features))).astype(np.float32) + 1e-3


def model_bytes(cfg: Config, features: int, seed: int, precision: str = "auto") -> tuple[bytes, int]:
    """(ONNX bytes, raw float32 weight bytes) of the head or matcher graph of ``cfg`` as the edge runs it."""
    from edge.matcher import reference_matcher_onnx
    from edge.quantization import int8_head_onnx, resolve_precision

    if cfg.path == "matcher":
        ref = reference_embeddings(cfg.references, features, seed)
        return (reference_matcher_onnx(ref, top=TOP_K * cfg.refs_per_class,
                                       precision=resolve_precision(precision, ref.nbytes)), ref.nbytes)
    w, b = head_weights(cfg.classes, features, seed)
    head = linear_head_onnx(w, b)
    if resolve_precision(precision, w.nbytes) == "int8":
        head = int8_head_onnx(head)
    return head, w.nbytes + b.nbytes


def build(cfg: Config, bundle: Bundle, seed: int, precision: str = "auto") -> Callable[[Acquisition], Any]:
    """A callable that runs one acquisition end to end through ``cfg``'s path."""
    f = bundle.feature_size
    if cfg.path == "matcher":
        pipe = Pipeline(bundle)  # its prepare() is the shared preprocessing; its head is not used
        ref = reference_embeddings(cfg.references, f, seed)
        labels = np.repeat(np.asarray(class_names(cfg.classes)), cfg.refs_per_class)
        matcher = ReferenceMatcher(bundle, ref, labels, top_k=TOP_K, threads=1, precision=precision)

        def run_matcher(acq: Acquisition) -> Any:
            x, _ = pipe.prepare(acq)
            return matcher.match(x)[0]

        run_matcher.parts = (pipe, matcher, None)  # type: ignore[attr-defined]
        return run_matcher
    w, b = head_weights(cfg.classes, f, seed)
    names = class_names(cfg.classes)
    # a real bundle on disk (the classifier builds its top-k selection from the head file), 1-thread sessions
    tmp = Path(tempfile.mkdtemp(prefix="head_latency."))
    written = write_bundle(tmp / "bundle", backbone_onnx=bundle.backbone_path.read_bytes(),
                           head_onnx=linear_head_onnx(w, b), classes=names,
                           preprocessing=bundle.manifest["preprocessing"], feature_size=f,
                           architecture={"name": "latency", "params": {}}, training={},
                           temperature=bundle.temperature)
    swapped = dataclasses.replace(written, backbone_session=bundle.backbone_session,
                                  head_session=ort_session(str(written.head_path)))
    pipe = Pipeline(swapped, top_k=TOP_K, head_precision=precision)
    head = swapped.head_session
    if pipe.classifier.head_precision == "int8":  # the head as the classifier runs it, for the stage timing
        head = ort_session(int8_head_onnx(written.head_path.read_bytes()))
    shutil.rmtree(tmp, ignore_errors=True)  # the sessions hold what they need

    def run_head(acq: Acquisition) -> Any:
        x, _ = pipe.prepare(acq)
        return pipe.classifier.classify(x)[0]

    run_head.parts = (pipe, None, head)  # type: ignore[attr-defined]
    return run_head


# --------------------------------------------------------------------------- inputs

def acquisitions(data: Path, n: int, seed: int) -> tuple[list[Acquisition], str]:
    """``n`` raw spectra as acquisitions (real ones from ``data`` when present)."""
    rng = np.random.default_rng(seed)
    if data.exists():
        from calibration.dataset import load_dataset

        ds = load_dataset(data)
        idx = rng.choice(len(ds), size=min(n, len(ds)), replace=False)
        axis = ds.wavenumbers.astype(np.float64)
        spectra = [ds.spectra[i].astype(np.float64) for i in idx]
        source = f"{data.name} ({len(idx)} raw spectra)"
    else:
        axis = np.arange(200.0, 1592.0)
        spectra = []
        for _ in range(n):
            centres = rng.uniform(250, 1550, 5)
            y = sum(1.0 / (1.0 + ((axis - c) / 4.0) ** 2) for c in centres) + 0.2 + rng.normal(0, 0.01, axis.size)
            spectra.append(y / y.max())
        source = f"synthetic ({n} spectra; {data} not found)"
    acqs = [Acquisition(i, Spectrum(y, axis, "raman_shift"), 0.0, "bench://head_latency", None, None, {})
            for i, y in enumerate(spectra)]
    return acqs, source


# --------------------------------------------------------------------------- measurement

MIN_CALLS = 200


def time_round_robin(runners: dict[str, Callable[[Acquisition], Any]], acqs: list[Acquisition], repeats: int,
                     warmup: int, block: int, seed: int, max_seconds: float = np.inf) -> dict[str, np.ndarray]:
    """Per-call nanoseconds for every runner, interleaved in shuffled blocks of ``block`` calls.

    A runner stops once it has used ``max_seconds`` of timed calls (and made at least
    ``MIN_CALLS``), so a slow configuration cannot stretch the run for hours.
    """
    rng = np.random.default_rng(seed)
    n = len(acqs)
    for run in runners.values():
        for i in range(warmup):
            run(acqs[i % n])
    times: dict[str, list[int]] = {k: [] for k in runners}
    keys = list(runners)
    clock = time.perf_counter_ns
    budget_ns = max_seconds * 1e9
    done = 0
    while done < repeats:
        step = min(block, repeats - done)
        for key in rng.permutation(keys):
            run, out = runners[key], times[key]
            if len(out) >= MIN_CALLS and sum(out) > budget_ns:
                continue
            for j in range(step):
                acq = acqs[(done + j) % n]
                t0 = clock()
                run(acq)
                out.append(clock() - t0)
        done += step
    return {k: np.asarray(v, dtype=np.int64) for k, v in times.items()}


def stage_times(cfg: Config, run: Callable[[Acquisition], Any], acqs: list[Acquisition], calls: int) -> dict[str, float]:
    """p50 (µs) of each stage of ``cfg``'s path, timed separately on the same sessions."""
    from edge.bundle import BACKBONE_INPUT, HEAD_INPUT

    pipe, matcher, head = run.parts  # type: ignore[attr-defined]
    x = pipe.prepare(acqs[0])[0][None, :]
    feats = pipe.bundle.backbone_session.run(None, {BACKBONE_INPUT: x})[0]
    stages: dict[str, Callable[[], Any]] = {
        "preprocess": lambda: pipe.prepare(acqs[0]),
        "backbone": lambda: pipe.bundle.backbone_session.run(None, {BACKBONE_INPUT: x}),
    }
    if matcher is None:
        # classify = backbone + head + what Classifier.classify does with the logits (top-k, softmax)
        stages.update({"head": lambda: head.run(None, {HEAD_INPUT: feats}),
                       "classify": lambda: pipe.classifier.classify(x)})
    else:
        stages.update({"match": lambda: matcher.session.run(["scores", "indices"], {"features": feats}),
                       "match_total": lambda: matcher.match_features(feats)})
    out = {}
    for name, fn in stages.items():
        for _ in range(max(5, calls // 10)):
            fn()
        t: list[int] = []
        while len(t) < calls and (len(t) < 20 or sum(t) < 2e9):  # at most ~2 s per stage
            t0 = time.perf_counter_ns()
            fn()
            t.append(time.perf_counter_ns() - t0)
        out[name] = round(float(np.percentile(t, 50)) / 1e3, 2)
    return out


def rss_bytes() -> int:
    """Resident set size of this process from ``/proc/self/statm`` (Linux)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def probe_memory(key: str, graph: Path, seed: int) -> dict[str, Any]:
    """In this (fresh) interpreter: RSS growth from opening ``graph`` (``key``'s ONNX file) and 20 warm calls.

    The graph was written by the parent process, so nothing freed here by building it can
    be reused by the session and hide its growth; Runtime's process-wide state is paid first
    by a one-class session.
    """
    bundle = single_thread_bundle(load_bundle())
    acqs, _ = acquisitions(Path("/nonexistent"), 4, seed)
    x = Pipeline(bundle).prepare(acqs[0])[0]
    feats = np.ascontiguousarray(bundle.backbone_session.run(None, {"spectrum": x[None, :]})[0])
    warm = ort_session(linear_head_onnx(np.ones((1, feats.shape[1]), np.float32), np.zeros(1, np.float32)))
    warm.run(None, {"features": feats})
    gc.collect()
    before = rss_bytes()
    sess = ort_session(str(graph))
    for _ in range(20):
        sess.run(None, {"features": feats})
    after = rss_bytes()
    return {"key": key, "rss_delta_bytes": int(after - before)}


def memory(configs: list[Config], features: int, seed: int, precision: str = "auto") -> dict[str, dict[str, Any]]:
    """ONNX and weight bytes of each configuration's graph, and :func:`probe_memory` in its own interpreter."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="head_latency.") as tmp:
        for cfg in configs:
            model, weights = model_bytes(cfg, features, seed, precision)
            path = Path(tmp) / "graph.onnx"
            path.write_bytes(model)
            r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--probe-memory", cfg.key,
                                "--probe-file", str(path), "--seed", str(seed)],
                               capture_output=True, text=True, timeout=300, cwd=ROOT)
            if r.returncode != 0:
                raise click.ClickException(f"memory probe {cfg.key} failed: {r.stderr[-2000:]}")
            out[cfg.key] = {**json.loads(r.stdout.strip().splitlines()[-1]), "onnx_bytes": len(model),
                            "weight_bytes": int(weights)}
            del model
    return out


def crossing(ks: list[int], p50: list[float], band: float) -> dict[str, Any]:
    """First ``k`` where ``p50`` exceeds ``band``, log-linearly interpolated between measured points."""
    for i, (k, p) in enumerate(zip(ks, p50)):
        if p > band:
            if i == 0:
                return {"k": float(k), "bracket": [None, k], "note": "already above the band at the smallest k"}
            k0, p0 = ks[i - 1], p50[i - 1]
            frac = (band - p0) / (p - p0) if p != p0 else 1.0
            kx = float(np.exp(np.log(k0) + frac * (np.log(k) - np.log(k0))))
            return {"k": round(kx), "bracket": [k0, k], "note": "log-linear interpolation"}
    return {"k": None, "bracket": [ks[-1], None], "note": f"within the band up to k = {ks[-1]}"}


# --------------------------------------------------------------------------- reporting

def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "cpu": model, "cpus": os.cpu_count(),
            "loadavg_start": list(os.getloadavg())}


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"python": platform.python_version(), "numpy": np.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}


def print_table(rows: list[dict[str, Any]], head10: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"One spectrum end to end (ms); band = 10-class head p50 {head10:.3f} ms + 10 %; "
                        "stages Σ = sum of per-stage p50s")
    for col in ("path", "classes", "refs", "weights", "p50", "p99", "vs head-10", "stages Σ µs", "Σ vs head-10", "ONNX",
                "RSS Δ"):
        table.add_column(col, justify="left" if col == "path" else "right")
    for r in rows:
        table.add_row(r["label"], f"{r['classes']:,}", f"{r['references']:,}" if r["references"] else "–",
                      r["precision"],
                      f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}", f"{r['p50_vs_head10']:+.1%}",
                      f"{r['stage_sum_us']:.0f}", f"{r['stage_sum_vs_head10']:+.1%}",
                      f"{r['onnx_bytes'] / 1e3:,.0f} kB" if r.get("onnx_bytes") is not None else "–",
                      f"{r['rss_delta_bytes'] / 1e6:.1f} MB" if r.get("rss_delta_bytes") is not None else "–")
    Console(width=160).print(table)


@click.command()
@click.option("--data", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_DATA, show_default=True,
              help="Raw spectra to feed (synthetic ones when absent).")
@click.option("--repeats", type=click.IntRange(10, 10**6), default=2000, show_default=True,
              help="Timed calls per configuration.")
@click.option("--warmup", type=click.IntRange(1, 10**5), default=200, show_default=True)
@click.option("--block", type=click.IntRange(1, 10**5), default=50, show_default=True,
              help="Consecutive calls per configuration in each round-robin turn.")
@click.option("--max-seconds", type=click.FloatRange(1, 3600), default=20.0, show_default=True,
              help="Timed seconds per configuration at most (slow ones stop early, after at least 200 calls).")
@click.option("--refs-per-class", type=click.IntRange(2, 1000), default=REFS_PER_CLASS, show_default=True,
              help="References per class of the multi-reference matcher.")
@click.option("--no-memory", is_flag=True, help="Skip the per-configuration memory probes.")
@click.option("--precision", type=click.Choice(HEAD_PRECISIONS), default="auto", show_default=True,
              help="Head and reference weights as run (the edge's rule: auto = 8-bit above 1 MiB of float32).")
@click.option("--quick", is_flag=True, help="Smoke run: 10 and 100 classes, 30 calls each.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=RESULTS / "head_latency.json",
              show_default=True)
@click.option("--probe-memory", "probe", default=None, hidden=True)
@click.option("--probe-file", type=click.Path(path_type=Path), default=None, hidden=True)
def main(data: Path, repeats: int, warmup: int, block: int, max_seconds: float, refs_per_class: int,
         no_memory: bool, precision: str, quick: bool, seed: int, out: Path, probe: str | None, probe_file: Path | None) -> None:
    """Time one spectrum through the head-swap path and the reference matcher at 10…10,000 classes."""
    if probe is not None:
        print(json.dumps(probe_memory(probe, probe_file, seed)))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    t_start = time.perf_counter()
    head_k, match_k, multi_k = HEAD_CLASSES, MATCHER_REFS, MATCHER_CLASSES_MULTI
    if quick:
        head_k, match_k, multi_k, refs_per_class = (10, 100), (10, 100), (10,), 2
        repeats, warmup, block = min(repeats, 30), min(warmup, 5), min(block, 10)
    configs = ([Config("head", k) for k in head_k] + [Config("matcher", k) for k in match_k] + [Config("matcher", k, refs_per_class) for k in multi_k])
    bundle = single_thread_bundle(load_bundle())
    acqs, source = acquisitions(data, 64, seed)
    log.info("building %d configurations on %s (F=%d)", len(configs), bundle.model_id, bundle.feature_size)
    runners = {c.key: build(c, bundle, seed, precision) for c in configs}
    used = {k: (r.parts[1].precision if r.parts[1] is not None else r.parts[0].classifier.head_precision)
            for k, r in runners.items()}
    log.info("timing %d calls each, round-robin blocks of %d", repeats, block)
    times = time_round_robin(runners, acqs, repeats, warmup, block, seed, max_seconds)
    stage_calls = max(20, min(500, repeats // 4))
    stages = {c.key: stage_times(c, runners[c.key], acqs, stage_calls) for c in configs}
    load_after = list(os.getloadavg())
    del runners
    mem = {} if no_memory else memory(configs, bundle.feature_size, seed, precision)

    rows: list[dict[str, Any]] = []
    for c in configs:
        ms = times[c.key] / 1e6
        m = mem.get(c.key, {})
        rows.append({"path": c.path, "label": c.label, "classes": c.classes, "references": c.references,
                     "refs_per_class": c.refs_per_class if c.path == "matcher" else None,
                     "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
                     "mean_ms": float(ms.mean()), "calls": int(ms.size), "stages_p50_us": stages[c.key],
                     "onnx_bytes": m.get("onnx_bytes"), "weight_bytes": m.get("weight_bytes"),
                     "rss_delta_bytes": m.get("rss_delta_bytes"), "precision": used[c.key]})
    head10 = next(r["p50_ms"] for r in rows if r["path"] == "head" and r["classes"] == min(head_k))
    stage10 = next(r["stages_p50_us"]["preprocess"] + r["stages_p50_us"]["classify"] for r in rows
                   if r["path"] == "head" and r["classes"] == min(head_k))
    heads = {r["classes"]: r["p50_ms"] for r in rows if r["path"] == "head"}
    for r in rows:
        st = r["stages_p50_us"]
        if "classify" in st:
            # what Classifier.classify adds after the head's matrix product (top-k, softmax of those)
            st["after_head"] = round(st["classify"] - st["backbone"] - st["head"], 2)
            total = st["preprocess"] + st["classify"]
        else:
            total = st["preprocess"] + st["backbone"] + st["match_total"]
        r["stage_sum_us"] = round(total, 2)
        r["stage_sum_vs_head10"] = total / stage10 - 1.0
        if r["path"] == "matcher" and r["classes"] in heads:
            r["p50_vs_head_same_classes"] = r["p50_ms"] / heads[r["classes"]] - 1.0
    band = head10 * (1 + BAND)
    for r in rows:
        r["p50_vs_head10"] = r["p50_ms"] / head10 - 1.0
        r["within_band"] = bool(r["p50_ms"] <= band)
    summary: dict[str, Any] = {"head10_p50_ms": head10, "band_ms": band,
                               "goal": "head p50 within 10 % of its 10-class p50 up to 10,000 classes"}
    for path in ("head",):
        sel = [r for r in rows if r["path"] == path and r["classes"] <= 10000]
        summary[f"{path}_within_band_up_to_10000"] = all(r["within_band"] for r in sel)
        summary[f"{path}_p50_vs_head10"] = {str(r["classes"]): round(r["p50_vs_head10"], 4) for r in rows
                                             if r["path"] == path}
        summary[f"{path}_stage_sum_vs_head10"] = {str(r["classes"]): round(r["stage_sum_vs_head10"], 4)
                                                  for r in rows if r["path"] == path}
        sel_all = [r for r in rows if r["path"] == path]
        summary[f"{path}_leaves_band"] = crossing([r["classes"] for r in sel_all], [r["p50_ms"] for r in sel_all],
                                                  band)
    for r_per in (1, refs_per_class):
        sel = [r for r in rows if r["path"] == "matcher" and r["refs_per_class"] == r_per]
        cx = crossing([r["references"] for r in sel], [r["p50_ms"] for r in sel], band)
        cx["classes"] = None if cx["k"] is None else round(cx["k"] / r_per)
        summary[f"matcher_{r_per}_ref_per_class_crossing"] = cx
    result = {
        "benchmark": "head_latency",
        "command": " ".join(["python", "benchmarks/head_latency.py", *sys.argv[1:]]),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {**machine(), "loadavg_end": load_after}, "versions": versions(),
        "bundle": {"model_id": bundle.model_id, "feature_size": bundle.feature_size, "path": str(bundle.path)},
        "settings": {"repeats": repeats, "warmup": warmup, "block": block, "ort_threads": 1, "top_k": TOP_K,
                     "refs_per_class": refs_per_class, "inputs": source, "quick": quick, "seed": seed,
                     "precision": precision},
        "rows": rows, "summary": summary, "seconds": round(time.perf_counter() - t_start, 1),
    }
    print_table(rows, head10)
    for key in ("head",):
        print(f"{key}: within 10 % up to 10,000 classes: {summary[f'{key}_within_band_up_to_10000']}; "
              f"leaves the band at K ≈ {summary[f'{key}_leaves_band']['k']}")
    for r_per in (1, refs_per_class):
        cx = summary[f"matcher_{r_per}_ref_per_class_crossing"]
        print(f"matcher, {r_per} ref/class: leaves the band at k ≈ {cx['k']} references "
              f"({cx['classes']} classes) {cx['bracket']}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out} ({result['seconds']} s)")


if __name__ == "__main__":
    main()
