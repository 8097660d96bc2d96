"""benchmarks/temperature_objective.py: in-sample and held-out scoring of the NLL and Brier temperature fits."""
import numpy as np
from click.testing import CliRunner

from benchmarks.temperature_objective import main, score, table

from .conftest import underconfident_with_misses


def _folds(seed: int = 0, folds: int = 5, n: int = 400, k: int = 10) -> dict:
    """:func:`underconfident_with_misses` logits, split into folds."""
    z, y = underconfident_with_misses(n * folds, k, seed)
    return {**{f"fold{f + 1}_logits": z[f::folds] for f in range(folds)},
            **{f"fold{f + 1}_y": y[f::folds] for f in range(folds)}}


def test_score_compares_the_fits_in_sample_and_held_out():
    r = score(_folds())
    assert r["spectra"] == 2000 and r["folds"] == 5
    assert r["nll_share_of_worst_3pct"] > 0.2  # the misses dominate the NLL
    assert r["nll"]["temperature"] > 1.0 > r["brier"]["temperature"]
    assert len(r["brier"]["held_out_temperatures"]) == 5
    for where in ("in_sample", "held_out"):
        assert r["brier"][where]["ece"] < r["uncalibrated"]["ece"] < r["nll"][where]["ece"]
    assert r["nll"]["in_sample"]["nll"] < r["brier"]["in_sample"]["nll"]  # each fit wins its own objective
    assert r["brier"]["in_sample"]["brier"] < r["nll"]["in_sample"]["brier"]
    assert "| brier |" in table(r)


def test_cli_scores_kept_logits(tmp_path):
    path = tmp_path / "logits.npz"
    np.savez(path, **_folds(seed=1))
    out = tmp_path / "r.json"
    res = CliRunner().invoke(main, ["--score-logits", str(path), "--out", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "| nll |" in res.output and out.exists()
