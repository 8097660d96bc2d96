"""Pipeline p50 with and without the novelty score, side by side in one process.

Usage (from the repository root): ``python benchmarks/novelty_latency.py`` (~30 s).  The
shipped model (its novelty model fitted from its support at load) processes real raw
spectra through :meth:`edge.pipeline.Pipeline.process`; a twin pipeline has its novelty
model removed.  Both run in shuffled, interleaved blocks of 50 calls, so machine load
falls on both alike.
"""
from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from calibration.spectrum import Spectrum  # noqa: E402
from edge.bundle import load_bundle  # noqa: E402
from edge.pipeline import Pipeline  # noqa: E402
from firmware_bridge.source import Acquisition  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "rruff-soysal" / "raw_train.npz"


def main() -> None:
    z = np.load(DATA)
    b = load_bundle()
    on, off = Pipeline(b), Pipeline(b)
    off.classifier.novelty = None
    assert on.classifier.novelty is not None
    acqs = [Acquisition(i, Spectrum(s.astype(float), z["wavenumbers"].astype(float)), 0.0, "bench")
            for i, s in enumerate(z["spectra"])]
    for p in (on, off):
        for a in acqs[:100]:
            p.process(a)
    lat: dict[str, list[int]] = {"with novelty": [], "without": []}
    rng = random.Random(0)
    for rnd in range(60):
        names = list(lat)
        rng.shuffle(names)
        for name in names:
            p = on if name == "with novelty" else off
            for a in acqs[rnd * 5 % 300: rnd * 5 % 300 + 50]:
                t = time.perf_counter_ns()
                p.process(a)
                lat[name].append(time.perf_counter_ns() - t)
    for name, v in lat.items():
        ms = np.asarray(v) / 1e6
        print(f"{name:<14} {ms.size} calls  p50 {np.percentile(ms, 50):.4f} ms  p99 {np.percentile(ms, 99):.4f} ms")
    print(f"novelty adds {100 * (np.median(lat['with novelty']) / np.median(lat['without']) - 1):+.1f} % to the p50")


if __name__ == "__main__":
    main()
