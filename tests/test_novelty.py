"""Novelty: the score, the bundle's own threshold, the `novel` priority, the downlink order and `bench --unknown`."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.bundle import load_bundle
from edge.classifier import Classifier, Prediction
from edge.head import add_head, add_support, load_support
from edge.novelty import NOVELTY_FILE, NOVELTY_PART, Novelty, add_novelty, fit_novelty, load_novelty
from edge.priority import NOVEL, PriorityPolicy
from tests.conftest import lorentz, make_npz, make_test_bundle, shared_data, synth

SHIPPED = Path(__file__).resolve().parents[1] / "edge" / "models" / "default"
#: Bands of no mineral in BANDS (an unlisted mineral for the template bundle).
ALIEN = [(520.0, 1.0, 6.0), (980.0, 0.8, 8.0), (1150.0, 0.5, 10.0)]


def _spectra(bands: list[tuple[float, float, float]] | str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    wn = np.arange(200.0, 1592.0, 1.0)
    out = []
    for _ in range(n):
        y = synth(bands, wn, rng) if isinstance(bands, str) else \
            1000.0 * lorentz(wn, bands) + 200.0 + 0.1 * (wn - wn.min()) + rng.normal(0, 5.0, wn.size)
        out.append(y / y.max())
    return np.asarray(out, np.float32)


def _features(bundle_path: Path, spectra: np.ndarray) -> Classifier:
    b = load_bundle(bundle_path)
    c = Classifier(b)
    x = b.preprocessor.batch(spectra, np.arange(200.0, 1592.0, 1.0))
    return c, c.classify(x)


@pytest.fixture(scope="module")
def template_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("novelty")
    base = make_test_bundle(root / "base", minerals=["Calcite", "Quartz", "Hematite"], feature_size=6)
    data = make_npz(root / "train.npz", n_per_class=12, seed=3, minerals=["Calcite", "Quartz", "Hematite"])
    sup = add_support(base, data, root / "sup")
    new = make_npz(root / "diamond.npz", n_per_class=12, seed=5, minerals=["Diamond"])
    child = add_head(sup, new, root / "child", folds=0)
    unknown = root / "unknown.npz"
    wn = np.arange(200.0, 1592.0, 1.0, dtype=np.float32)
    np.savez(unknown, spectra=_spectra(ALIEN, 6, 9), labels=np.asarray(["Alien"] * 6), wavenumbers=wn)
    known = make_npz(root / "known.npz", n_per_class=5, seed=11, minerals=["Calcite", "Quartz", "Hematite"])
    return {"root": root, "base": base, "sup": sup.path, "child": child.path, "unknown": unknown, "known": known,
            "data": data}


def test_support_writes_the_part_and_flags_an_unlisted_mineral_not_a_known_one(template_world: dict) -> None:
    b = load_bundle(template_world["sup"])
    assert NOVELTY_PART in b.parts and (b.path / NOVELTY_FILE).is_file()
    assert b.manifest["novelty"]["method"] == "cosine-class-mean-top-k"
    _, known = _features(template_world["sup"], np.concatenate([_spectra(m, 5, 21) for m in ("Calcite", "Quartz")]))
    _, alien = _features(template_world["sup"], _spectra(ALIEN, 5, 22))
    assert not any(p.novel for p in known), [p.novelty for p in known]
    assert all(p.novel for p in alien), [p.novelty for p in alien]
    assert min(p.novelty for p in alien) > max(p.novelty for p in known)


def test_threshold_flags_about_five_percent_of_held_out_known_exemplars() -> None:
    support = load_support(load_bundle(SHIPPED))
    nov = fit_novelty(support)
    # recompute the held-out scores independently: own class mean without the exemplar, every other mean
    mean, ex, lab, n = (support.mean.astype(float), support.exemplars.astype(float), support.exemplar_labels,
                        support.counts[support.exemplar_labels])
    keep = n >= 2
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)  # noqa: E731
    own = unit((mean[lab] * n[:, None] - ex)[keep] / (n[keep, None] - 1))
    xu = unit(ex[keep])
    cos = xu @ unit(mean).T
    cos[np.arange(len(xu)), lab[keep]] = np.einsum("nf,nf->n", xu, own)
    scores = 1 - cos.max(axis=1)
    share = float((scores > nov.threshold).mean())
    assert 0.04 <= share <= 0.06, share
    assert nov.meta["heldout_flagged"] == pytest.approx(share, abs=1e-3)
    assert nov.meta["leave_class_out_flagged"] > 0.5  # unknown-like exemplars are flagged far more often
    assert fit_novelty(support, target=0.2).threshold < nov.threshold


def test_shipped_copy_with_the_part_scores_like_the_derived_one(tmp_path: Path) -> None:
    copy = add_novelty(SHIPPED, tmp_path / "copy")
    shipped = load_bundle(SHIPPED)
    assert NOVELTY_PART not in shipped.parts  # the shipped bundle itself is left alone
    assert copy.model_id == shipped.model_id and NOVELTY_PART in copy.parts
    a, b = load_novelty(copy), load_novelty(shipped)  # part vs fitted from the support at load
    assert a.threshold == pytest.approx(b.threshold, rel=1e-6)
    np.testing.assert_allclose(a.directions, b.directions, atol=1e-6)


def test_shipped_model_flags_non_minerals_and_few_known_raw_spectra(tmp_path: Path) -> None:
    from calibration.axis import to_shift_axis
    from calibration.readers import read

    raw = np.load(shared_data("rruff-soysal", "raw_train.npz"))
    copy = add_novelty(SHIPPED, tmp_path / "copy")
    c = Classifier(copy)
    preds = c.classify(copy.preprocessor.batch(raw["spectra"], raw["wavenumbers"]))
    known_flagged = np.mean([p.novel for p in preds])
    assert known_flagged < 0.05  # its own training spectra, below the held-out 5 % (docs/novelty.md)
    for name in ("Horiba_MacroRAM/acetonitrile.txt", "Renishaw_Qontor/glass_slide_background.txt",
                 "Horiba_MacroRAM/chlamy_spectra_x/chlamy_spectra/CC-124-MN-1.txt"):
        s = read(shared_data("instruments", *name.split("/")))
        x = copy.preprocessor(to_shift_axis(s, None, None)[0])
        p = c.classify(x[None])[0]
        assert p.novel, (name, p)


def test_head_add_refits_the_threshold_for_the_new_class(template_world: dict) -> None:
    sup, child = load_bundle(template_world["sup"]), load_bundle(template_world["child"])
    nov = load_novelty(child)
    assert nov.classes == child.classes and "Diamond" in nov.classes
    assert child.manifest["novelty"]["heldout_exemplars"] > load_bundle(template_world["sup"]).manifest["novelty"][
        "heldout_exemplars"]
    diamonds = _spectra("Diamond", 5, 31)
    _, before = _features(sup.path, diamonds)
    _, after = _features(child.path, diamonds)
    assert all(p.novel for p in before) and not any(p.novel for p in after)
    assert all(p.label == "Diamond" for p in after)


def test_bundle_without_support_has_no_score(template_world: dict) -> None:
    c, preds = _features(template_world["base"], _spectra(ALIEN, 2, 1))
    assert c.novelty is None and c.novelty_threshold is None
    assert all(p.novelty is None and not p.novel for p in preds)


def test_corrupt_part_is_refused_naming_the_file(template_world: dict, tmp_path: Path) -> None:
    from calibration.errors import BundleError

    with pytest.raises(BundleError, match="novelty.npz"):
        Novelty.from_bytes(b"not a zip", "x/novelty.npz")
    bad = fit_novelty(load_support(load_bundle(template_world["sup"])))
    other = Novelty(bad.classes, bad.directions, bad.threshold, bad.top, "0" * 64, bad.meta)
    from edge.novelty import novelty_files
    from edge.bundle import write_bundle

    b = load_bundle(template_world["sup"])
    extra_files, extra = novelty_files(b, other)
    out = write_bundle(tmp_path / "other", backbone_onnx=b.backbone_path.read_bytes(),
                       head_onnx=b.head_path.read_bytes(), classes=b.classes, preprocessing=b.preprocessor.spec,
                       feature_size=b.feature_size, architecture=b.manifest["architecture"], training={},
                       extra_files=extra_files, extra=extra)
    with pytest.raises(BundleError, match="backbone"):
        Classifier(out)


def test_priority_ranks_novel_above_interest_and_low_confidence() -> None:
    policy = PriorityPolicy(interest=frozenset({"Calcite"}))
    level, reasons = policy.assess(Prediction(("Calcite", "Quartz"), (0.5, 0.4), 0.4, True))
    assert level == NOVEL == 3 and reasons[0] == "novel" and {"interest", "low_confidence"} <= set(reasons)
    assert policy.assess(Prediction(("Calcite", "Quartz"), (0.5, 0.4), 0.01, False))[0] == 2
    assert policy.assess(None) == (3, ["unreadable"])


def test_downlink_sends_unreadable_then_novel_with_its_spectrum(tmp_path: Path) -> None:
    from edge.downlink import pack, read_downlink
    from edge.store import ResultLog

    axis = np.arange(100.0, 1124.0)
    base = dict(source="sim://", axis_unit="raman_shift", axis=axis, model_id=None)
    with ResultLog(tmp_path / "log.sqlite") as store:
        rows = [dict(base, acquired_at=1000.0 + i, seq=i, spectrum=np.full(axis.size, float(i + 1)), **kw)
                for i, kw in enumerate([
                    dict(topk=[("Calcite", 0.9)], priority=2, reasons=["interest"]),
                    dict(topk=[("Spinel", 0.87)], priority=3, reasons=["novel"], meta={"novelty": 0.4}),
                    dict(status="error", error="no signal", priority=3, reasons=["unreadable"]),
                    dict(topk=[("Quartz", 0.99)], priority=0)])]
        store.append_many(rows)
        order = [r.seq for r in store.unsent()]
        assert order == [2, 1, 0, 3]
        assert [r.seq for r in store.unsent(priority=3)] == [2, 1]
        packed = pack(store, 100_000, 1)
    records = read_downlink(packed.data).records
    novel = [r for r in records if r.reasons == ["novel"]][0]
    assert novel.label == "Spinel" and novel.spectrum is not None and novel.priority == 3
    assert [r.status for r in records[:2]] == ["error", "classified"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True, text=True, timeout=120)


def test_bench_reports_open_set(template_world: dict, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    r = _cli("bench", "--model", str(template_world["sup"]), "--data", str(template_world["known"]),
             "--unknown", str(template_world["unknown"]), "--json", str(out))
    assert r.returncode == 0, r.stderr
    rep = json.loads(out.read_text())
    ops = rep["open_set"]
    assert set(ops) >= {"auroc", "unknown_flagged", "known_flagged", "threshold"}
    assert ops["auroc"] == 1.0 and ops["unknown_flagged"] == 1.0 and ops["known_flagged"] == 0.0
    assert rep["top1_not_flagged"] == 1.0 and "_novelty_scores" not in rep
    assert "open set:" in r.stdout
    alone = tmp_path / "u.json"
    r = _cli("bench", "--model", str(template_world["sup"]), "--unknown", str(template_world["unknown"]),
             "--json", str(alone))
    assert r.returncode == 0, r.stderr
    ops = json.loads(alone.read_text())["open_set"]
    assert ops["unknown_flagged"] == 1.0 and ops["auroc"] is None and ops["known_flagged"] is None


@pytest.mark.parametrize("case, status, names", [
    ("missing", 2, "--unknown"), ("garbage", 1, "garbage.npz"), ("neither", 2, "--unknown"),
    ("no-novelty", 2, "novelty")])
def test_bench_bad_unknown(template_world: dict, tmp_path: Path, case: str, status: int, names: str) -> None:
    args = ["bench", "--model", str(template_world["sup"]), "--data", str(template_world["known"])]
    if case == "missing":
        args += ["--unknown", str(tmp_path / "nope.npz")]
    elif case == "garbage":
        (tmp_path / "garbage.npz").write_bytes(b"\x00\x01garbage" * 50)
        args += ["--unknown", str(tmp_path / "garbage.npz")]
    elif case == "neither":
        args = ["bench", "--model", str(template_world["sup"])]
    else:
        args = ["bench", "--model", str(template_world["base"]), "--unknown", str(template_world["unknown"])]
    r = _cli(*args)
    assert r.returncode == status, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("raman-edge: error:") and names in lines[0], r.stderr
    assert "Traceback" not in r.stderr
