"""Classes of interest the active model cannot name are refused before anything is measured."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from calibration.errors import ConfigError
from edge.cli import main
from edge.interest import check_interest, unknown_interest


def _cli(*args: Any) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, [str(a) for a in args])
    return r.exit_code, r.stdout, r.stderr


def test_unknown_names_are_named_with_the_nearest_class() -> None:
    classes = ["Calcite", "Hematite", "Quartz"]
    assert unknown_interest(["hematite", " Quartz ", ""], classes) == []  # case and spaces do not matter
    with pytest.raises(ConfigError, match=r"'Hematit' \(did you mean 'Hematite'\?\), 'Unobtainium' are not classes"):
        check_interest(["Hematit", "Calcite", "Unobtainium"], classes, "m-1")


def test_run_refuses_a_misspelt_interest(tmp_path: Path) -> None:
    db = tmp_path / "log.sqlite"
    code, out, err = _cli("run", "--interest", "Hematite,Hematit", "--count", "1", "--db", db,
                          "--state-dir", tmp_path / "sd", "--quiet")
    assert code == 2, out + err
    assert err.count("\n") == 1 and err.startswith("raman-edge: error: --interest: 'Hematit' (did you mean 'Hematite'?)")
    assert not db.exists()  # refused before the log was opened


def test_run_names_the_config_file_of_a_bad_interest(tmp_path: Path) -> None:
    cfg = tmp_path / "rover.toml"
    cfg.write_text('[priority]\ninterest = ["Opall"]\n')
    code, out, err = _cli("run", "--config", cfg, "--count", "1", "--db", tmp_path / "log.sqlite",
                          "--state-dir", tmp_path / "sd", "--quiet")
    assert code == 2 and f"{cfg}: [priority] interest: 'Opall' (did you mean 'Opal'?)" in err, err


def test_run_accepts_known_interest(tmp_path: Path) -> None:
    code, out, err = _cli("run", "--interest", "hematite", "--source", "sim://?rate=50&minerals=Hematite",
                          "--count", "2", "--db", tmp_path / "log.sqlite", "--state-dir", tmp_path / "sd", "--quiet")
    assert code == 0, err
