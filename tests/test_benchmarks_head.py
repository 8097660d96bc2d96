"""benchmarks/head_latency.py, head_int8.py and head_swap.py: their --quick paths end to end."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.bundle import load_bundle

from .conftest import ROOT, make_npz, shared_data

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def _run(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=ENV)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


def test_crossing_interpolates_between_bracketing_points() -> None:
    from benchmarks.head_latency import crossing

    cx = crossing([10, 100, 1000], [1.0, 1.0, 3.0], band=2.0)
    assert cx["bracket"] == [100, 1000]
    assert cx["k"] == round(10 ** 2.5)
    assert crossing([10, 100], [1.0, 1.5], band=2.0)["k"] is None
    assert crossing([10, 100], [3.0, 4.0], band=2.0)["bracket"] == [None, 10]


def test_head_latency_quick(tmp_path: Path) -> None:
    out = tmp_path / "hl.json"
    # no data file: synthetic spectra, so the test does not need ../shared/data
    r = _run(["benchmarks/head_latency.py", "--quick", "--data", str(tmp_path / "absent.npz"), "--out", str(out)])
    assert "matcher" in r.stdout
    res = json.loads(out.read_text())
    for key in ("command", "machine", "versions", "bundle", "settings", "rows", "summary"):
        assert key in res
    assert res["settings"]["ort_threads"] == 1 and res["settings"]["quick"]
    paths = {(row["path"], row["classes"], row["refs_per_class"]) for row in res["rows"]}
    assert ("head", 10, None) in paths and ("head", 100, None) in paths and ("matcher", 100, 1) in paths
    for row in res["rows"]:
        assert 0 < row["p50_ms"] <= row["p99_ms"], row
        assert row["calls"] >= 10 and math.isfinite(row["p50_vs_head10"])
        assert isinstance(row["within_band"], bool)
        assert row["onnx_bytes"] > 0 and row["weight_bytes"] > 0 and isinstance(row["rss_delta_bytes"], int)
        assert {"preprocess", "backbone"} <= set(row["stages_p50_us"])
    by = {(row["path"], row["classes"], row["refs_per_class"]): row for row in res["rows"]}
    # weights grow with the number of classes / references: 4 bytes per weight (F + 1 with the bias)
    f = res["bundle"]["feature_size"]
    assert f == load_bundle().feature_size
    assert by[("head", 100, None)]["weight_bytes"] == 100 * (f + 1) * 4
    assert by[("matcher", 10, 2)]["weight_bytes"] == 20 * f * 4
    assert res["summary"]["head10_p50_ms"] == by[("head", 10, None)]["p50_ms"]


def test_head_latency_int8_rows(tmp_path: Path) -> None:
    """--precision int8 runs (and reports) 8-bit heads and references; their ONNX is about a quarter."""
    out = tmp_path / "hl.json"
    _run(["benchmarks/head_latency.py", "--quick", "--precision", "int8", "--data", str(tmp_path / "absent.npz"),
          "--out", str(out)])
    res = json.loads(out.read_text())
    assert res["settings"]["precision"] == "int8"
    assert {row["precision"] for row in res["rows"]} == {"int8"}
    head100 = next(r for r in res["rows"] if r["path"] == "head" and r["classes"] == 100)
    assert head100["onnx_bytes"] < 0.4 * head100["weight_bytes"]


def test_head_int8_quick(tmp_path: Path) -> None:
    shared_data("rruff-soysal", "raw_train.npz")  # skips, naming the file, when the data is absent
    shared_data("rruff-sang", "dataset_1_dev.npz")
    out = tmp_path / "hi.json"
    r = _run(["benchmarks/head_int8.py", "--quick", "--out", str(out)])
    assert "top-1 agree" in r.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [row["classes"] for row in rows] == [63, 192]
    for row in rows:
        # On the shipped compact backbone (ReLU features up to ~58) 8-bit heads keep 98.9 % of the
        # 192-class answers; on liu's tanh features they kept 99.9 % (docs/heads.md, "Large heads").
        assert row["top1_agreement"] >= 0.985 and abs(row["top1_fp32"] - row["top1_int8"]) <= 0.01, row
        assert row["head_onnx_bytes"]["int8"] < 0.35 * row["head_onnx_bytes"]["fp32"]
        assert len(row["changed_fp32_margins"]) == round((1 - row["top1_agreement"]) * row["spectra"])


def test_head_swap_quick(tmp_path: Path) -> None:
    data = make_npz(tmp_path / "four.npz", n_per_class=5, seed=3)
    out = tmp_path / "hs.json"
    work = tmp_path / "work"
    _run(["benchmarks/head_swap.py", "--quick", "--cs", "2", "--data", str(data), "--out", str(out),
          "--work", str(work)])
    res = json.loads(out.read_text())
    for key in ("command", "protocol", "settings", "rows", "summary", "paper", "data"):
        assert key in res
    assert res["settings"]["threads"] == 1 and res["settings"]["epochs"] == 2
    (row,) = res["rows"]
    assert row["c"] == 2 and len(row["new_classes"]) == 2
    sp = row["spectra"]
    assert sp["old_train"] + sp["old_test"] + sp["new"] == 20 and sp["new"] == 10
    for m in ("parent_old", "replace_new", "joint_new", "joint_old", "joint_all", "joint_old_predicted_as_new"):
        assert 0.0 <= row[m] <= 1.0, (m, row[m])
    s = res["summary"]["2"]
    assert s["draws"] == 1 and s["replace_new"]["mean"] == pytest.approx(row["replace_new"])
    # all = every test spectrum once: between the old and the new accuracy
    lo, hi = sorted((row["joint_old"], row["joint_new"]))
    assert lo - 1e-9 <= row["joint_all"] <= hi + 1e-9
    assert "reused" not in row["backbone"]
    # a second run with other head options reuses the kept backbone (no training) and records the options
    out2 = tmp_path / "hs2.json"
    _run(["benchmarks/head_swap.py", "--quick", "--cs", "2", "--data", str(data), "--out", str(out2),
          "--work", str(work), "--fit", "l2=0.01"])
    res2 = json.loads(out2.read_text())
    assert res2["settings"]["fit"] == {"l2": 0.01}
    (row2,) = res2["rows"]
    assert row2["backbone"]["reused"] is True and row2["backbone"]["model_id"] == row["backbone"]["model_id"]
    assert row2["parent_old"] == row["parent_old"]


def test_head_swap_draws_are_nested_and_seeded() -> None:
    from benchmarks.head_swap import draw_new_classes

    classes = [f"m{i:02d}" for i in range(63)]
    five, ten = draw_new_classes(classes, 5, 0), draw_new_classes(classes, 10, 0)
    assert set(five) < set(ten) and len(set(ten)) == 10
    assert draw_new_classes(classes, 5, 0) == five and draw_new_classes(classes, 5, 1) != five
    assert np.isin(ten, classes).all()
