"""benchmarks/family_accuracy.py: per-family scores and a smoke run on synthetic spectra."""
from pathlib import Path

from benchmarks import family_accuracy as bench


def test_family_scores_count_members_and_inside_confusions() -> None:
    fams = {"a": ("x", "y"), "b": ("z",)}
    pairs = [("x", "x"), ("x", "y"), ("y", "z"), ("z", "z"), ("w", "x")]
    s = bench.family_scores(pairs, fams)
    assert s["a"] == {"correct": 1, "total": 3, "confusions_inside": {"x -> y": 1}}  # y -> z leaves the family
    assert s["b"] == {"correct": 1, "total": 1, "confusions_inside": {}}


def test_run_scores_every_test_spectrum_once(tmp_path: Path) -> None:
    from calibration.dataset import load_dataset
    from trainer.synthetic import write_synthetic_npz

    path = write_synthetic_npz(tmp_path / "synth.npz", n_classes=3, per_class=[6, 6, 6], seed=3)
    fams = {"pair": ("mineral_00", "mineral_01")}
    spec = "cnn:liu:pool=4,n_pool=4,dense=8,val_fraction=0"
    doc = bench.run(path, [spec], folds=2, seed=0, threads=1, epochs=2, families=fams)
    fam = doc["recipes"][spec]["families"]["pair"]
    assert fam["total"] == 12 and 0 <= fam["correct"] <= 12
    assert 0.0 <= doc["recipes"][spec]["top1"] <= 1.0 and len(load_dataset(path)) == 18


def test_write_result_policy(tmp_path: Path, capsys) -> None:
    """Results go to --out, else to the default; a --quick smoke run writes nothing unless asked."""
    from benchmarks.baselines import write_result

    doc, default = {"seconds": 1.0}, tmp_path / "default" / "r.json"
    assert write_result(None, doc, default=default, quick=True) is None and not default.exists()
    assert write_result(None, doc, default=default) == default and default.exists()
    out = tmp_path / "o" / "x.json"
    assert write_result(out, doc, default=default, quick=True) == out and out.read_text().startswith("{")
    assert str(out) in capsys.readouterr().out
