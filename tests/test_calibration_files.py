"""Output-path checks: refused before any work, as configuration errors naming the option."""
from __future__ import annotations

from pathlib import Path

import pytest

from calibration.errors import ConfigError
from calibration.files import check_output_dir, check_output_file, check_writable_dir


def test_a_file_in_an_existing_folder_passes(tmp_path: Path) -> None:
    assert check_output_file(tmp_path / "x.json", "--out") == tmp_path / "x.json"
    assert check_output_file("x.json", "--out") == Path("x.json")  # the current folder


@pytest.mark.parametrize("make, expect", [
    (lambda t: t / "missing" / "x.json", "folder .*missing does not exist"),
    (lambda t: t, "is a folder; give a file name"),
    (lambda t: (t / "f").touch() or t / "f" / "x.json", "is not a folder"),
])
def test_bad_output_files_name_the_option_and_path(tmp_path: Path, make, expect: str) -> None:
    path = make(tmp_path)
    with pytest.raises(ConfigError, match=expect) as e:
        check_output_file(path, "--json")
    assert str(e.value).startswith(f"--json {path}") and e.value.exit_code == 2


def test_output_dir_may_be_missing_but_not_under_a_file(tmp_path: Path) -> None:
    assert check_output_dir(tmp_path / "a" / "b", "--plots") == tmp_path / "a" / "b"
    (tmp_path / "f").touch()
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        check_output_dir(tmp_path / "f", "--plots")
    with pytest.raises(ConfigError, match="is not a folder"):
        check_output_dir(tmp_path / "f" / "sub", "--plots")


def test_a_read_only_folder_is_refused(tmp_path: Path) -> None:
    import os

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root)")
        with pytest.raises(ConfigError, match="is not writable"):
            check_writable_dir(ro, "--out ro/x")
    finally:
        ro.chmod(0o700)
