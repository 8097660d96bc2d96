"""`raman-edge bench --plots` and the bench's confidence report (reliability bins, ECE at T and at 1)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from click.testing import CliRunner

from calibration.errors import MissingExtraError
from edge.bench import run_bench
from edge.bundle import load_bundle, write_bundle
from edge.cli import main
from edge.pipeline import Pipeline
from firmware_bridge.source import open_source

from .conftest import make_npz

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _with_temperature(src: Path, out: Path, temperature: float) -> Path:
    b = load_bundle(src)
    write_bundle(out, backbone_onnx=b.backbone_path.read_bytes(), head_onnx=b.head_path.read_bytes(),
                 classes=b.classes, preprocessing=b.manifest["preprocessing"], feature_size=b.feature_size,
                 architecture=b.manifest["architecture"], training=b.manifest["training"], temperature=temperature)
    return out


def _bench(bundle: Path, npz: Path) -> dict:
    with open_source("replay://" + quote(str(npz))) as src:
        acqs = list(src)
    return run_bench(Pipeline(load_bundle(bundle), top_k=3), acqs, warmup=0)


@pytest.fixture(scope="module")
def noisy_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Mixed-up labels so that the template model is wrong on some spectra and ECE has something to measure.
    p = make_npz(tmp_path_factory.mktemp("d") / "d.npz", n_per_class=5, seed=2)
    d = dict(np.load(p))
    d["labels"] = d["labels"].copy()
    d["labels"][::3] = np.roll(d["labels"][::3], 1)
    np.savez(p, **d)
    return p


def test_reliability_bins_match_ece_and_temperature_is_applied(tmp_path: Path, test_bundle: Path,
                                                               noisy_npz: Path) -> None:
    r1 = _bench(test_bundle, noisy_npz)
    r4 = _bench(_with_temperature(test_bundle, tmp_path / "t4", 4.0), noisy_npz)
    for r in (r1, r4):
        bins = r["reliability"]
        assert len(bins) == 15 and sum(b["n"] for b in bins) == r["n"] == 20
        ece = sum(b["n"] / r["n"] * abs(b["accuracy"] - b["confidence"]) for b in bins if b["n"])
        assert ece == pytest.approx(r["ece"])
        assert sum(c for _, _, c in r["confusion"]) == r["n"]
        assert sum(c for t, p, c in r["confusion"] if t == p) == pytest.approx(r["top1"] * r["n"])
    assert r1["temperature"] == 1.0 and r4["temperature"] == 4.0
    assert r1["top1"] == r4["top1"] < 1.0  # temperature never changes the ranking
    # At T = 1 both bundles are the same model; the daemon's own figures differ.
    assert r4["ece_uncalibrated"] == pytest.approx(r1["ece"]) == pytest.approx(r1["ece_uncalibrated"])
    assert r4["mean_margin_uncalibrated"] == pytest.approx(r1["mean_margin"])
    assert r4["mean_margin"] < r1["mean_margin"] and r4["ece"] != pytest.approx(r1["ece"])


def test_bench_plots_writes_pngs(tmp_path: Path, test_bundle: Path, noisy_npz: Path) -> None:
    pytest.importorskip("matplotlib")
    out, figs = tmp_path / "bench.json", tmp_path / "figs"
    r = CliRunner().invoke(main, ["bench", "--model", str(test_bundle), "--data", str(noisy_npz), "--no-db",
                                  "--json", str(out), "--plots", str(figs)])
    assert r.exit_code == 0, r.output
    for name in ("reliability.png", "confusion.png"):
        data = (figs / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
    rep = json.loads(out.read_text())
    assert len(rep["reliability"]) == 15 and "ece" in rep and "ece_uncalibrated" in rep
    assert "ECE(15)" in r.output and "at temperature 1" in r.output


def test_bench_plots_without_matplotlib_names_the_extra(tmp_path: Path, test_bundle: Path, noisy_npz: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    from edge.plots import write_bench_plots

    with pytest.raises(MissingExtraError, match=r"raman-edge\[plot\]"):
        write_bench_plots({"reliability": []}, tmp_path / "x")
    assert not (tmp_path / "x").exists()
    db = tmp_path / "b.sqlite"
    r = CliRunner().invoke(main, ["bench", "--model", str(test_bundle), "--data", str(noisy_npz), "--db", str(db),
                                  "--plots", str(tmp_path / "figs")])
    assert r.exit_code == 1 and "matplotlib" in r.output and "raman-edge[plot]" in r.output
    assert "Traceback" not in r.output
    assert not db.exists() and not (tmp_path / "figs").exists()  # refused before any work


# --------------------------------------------------------------------------- confusion matrix at many classes

def _many_class_confusion(k: int = 63) -> list[list]:
    """k classes of 5 spectra; classes 0-5 confused with their neighbour, the rest all right."""
    names = [f"Mineral{i:02d}" for i in range(k)]
    rows = []
    for i, n in enumerate(names):
        wrong = {0: 4, 1: 3, 2: 2, 3: 1, 4: 1, 5: 1}.get(i, 0)
        rows.append([n, n, 5 - wrong])
        if wrong:
            rows.append([n, names[i + 1], wrong])
    return [r for r in rows if r[2] > 0]


def test_confused_pairs_most_spectra_first() -> None:
    from edge.plots import confused_pairs

    pairs = confused_pairs(_many_class_confusion())
    assert [(t, p, n) for t, p, n, _ in pairs[:3]] == [("Mineral00", "Mineral01", 4), ("Mineral01", "Mineral02", 3),
                                                       ("Mineral02", "Mineral03", 2)]
    assert pairs[0][3] == pytest.approx(0.8) and len(pairs) == 6
    assert confused_pairs(_many_class_confusion(), limit=2) == pairs[:2]
    assert confused_pairs([["A", "A", 3]]) == []


def test_many_classes_draw_only_the_confused_ones_and_a_pairs_table(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from edge.plots import confusion_matrix_plot

    svg = confusion_matrix_plot(_many_class_confusion(), tmp_path / "c.svg", title="Confusion: m").read_text()
    # matplotlib's SVG writer keeps each drawn string as a comment beside its glyphs.
    assert "most confused pairs" in svg and "Mineral00" in svg and "Mineral06" in svg  # 06: predicted for 05
    assert "Mineral07" not in svg and "Mineral62" not in svg  # every spectrum right: not drawn
    assert "56 with every spectrum right" in svg
    few = confusion_matrix_plot(_many_class_confusion(12), tmp_path / "f.svg").read_text()
    assert "Mineral11" in few and "most confused pairs" not in few  # up to 20 classes: the whole matrix


def test_many_confused_classes_get_a_figure_that_fits_their_names(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from PIL import Image

    from edge.plots import confusion_matrix_plot

    k = 63
    names = [f"Mineral{i:02d}" for i in range(k)]
    confusion = [[n, names[(i + 1) % k], 1] for i, n in enumerate(names)] + [[n, n, 3] for n in names]
    png = confusion_matrix_plot(confusion, tmp_path / "c.png")
    w, h = Image.open(png).size
    assert h >= k * 0.2 * 120 and w > h  # a 0.2-inch cell per class at 120 dpi, the pairs table beside
    svg = confusion_matrix_plot(confusion, tmp_path / "p.svg").read_text()
    assert all(n in svg for n in names)


def test_real_63_class_bench_plot(tmp_path: Path) -> None:
    """The shipped model on its training spectra with the axis 25 cm-1 off: every class confused somewhere."""
    pytest.importorskip("matplotlib")
    from PIL import Image

    from .conftest import shared_data

    d = dict(np.load(shared_data("rruff-soysal", "raw_train.npz")))
    d["wavenumbers"] = d["wavenumbers"] + 25.0
    shifted = tmp_path / "shifted.npz"
    np.savez(shifted, **d)
    figs = tmp_path / "figs"
    r = CliRunner().invoke(main, ["bench", "--data", str(shifted), "--no-db", "--plots", str(figs)])
    assert r.exit_code == 0, r.output
    w, h = Image.open(figs / "confusion.png").size
    assert h >= 63 * 0.2 * 120 and w > h


def test_plots_dir_that_cannot_be_created_is_one_line(tmp_path: Path, test_bundle: Path, noisy_npz: Path) -> None:
    pytest.importorskip("matplotlib")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    r = CliRunner().invoke(main, ["bench", "--model", str(test_bundle), "--data", str(noisy_npz), "--no-db",
                                  "--plots", str(blocker / "figs")])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert f"--plots {blocker / 'figs'}" in r.output and "is not a folder" in r.output
    assert blocker.read_text() == "x"


def test_a_full_disk_is_one_runtime_error_not_a_traceback(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    from calibration.errors import ConfigError, RamanEdgeError
    from edge.plots import confusion_matrix_plot

    full = tmp_path / "full.png"
    full.symlink_to("/dev/full")  # every write fails with ENOSPC
    with pytest.raises(RamanEdgeError, match=r"full\.png: cannot write the image \(No space left") as e:
        confusion_matrix_plot([["A", "A", 2], ["A", "B", 1]], full)
    assert e.value.exit_code == 1 and not isinstance(e.value, ConfigError)
