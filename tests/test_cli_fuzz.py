"""Random option values for the commands: every answer keeps the CLI contract.

Hypothesis feeds text, integers (huge and negative included), floats (nan and
inf included) and paths that do not exist to one option at a time of `run`,
`downlink`, `peaks`, `calibrate`, `bench` and `show`, through click's CliRunner
in this process.  Whatever the value, the command must exit 0, 1, 2 or 3, print
no traceback, say what was wrong in one error line when it fails, and never let
an exception escape (the "internal error" net counts as one escaping).
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import traceback
from pathlib import Path
from typing import Iterator

import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.cli import main
from tests.contract_cases import acetonitrile_shift_txt, labelled_npz, rruff_text

ERROR_PREFIXES = ("raman-edge: error:", "Error:")
SECONDS_PER_CALL = 60

FUZZ = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# The real command line cannot carry NUL; surrogates cannot be encoded into argv either.
TEXT = st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=24)
INTS = st.one_of(st.integers(), st.sampled_from([0, -1, 1, 2**31, 2**63, 10**20, -(10**20)])).map(str)
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                   st.sampled_from(["nan", "inf", "-inf", "1e309", "-0.0", "1e-320", "0x10", "1,5"]))


@pytest.fixture(scope="module")
def place(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A working directory with a good log, spectra and a file that paths cannot pass through."""
    root = tmp_path_factory.mktemp("fuzz")
    work = root / "work"
    work.mkdir()
    (root / "plain-file").write_text("not a directory\n")
    (root / "calcite.txt").write_text(rruff_text())
    (root / "acetonitrile.txt").write_text(acetonitrile_shift_txt())
    labelled_npz(root / "tiny.npz")
    with contextlib.chdir(work):
        r = invoke(["run", "--db", str(root / "good.sqlite"), "--state-dir", str(root / "good.d"),
                    "--source", "sim://?rate=0&seed=1", "--count", "3", "--quiet"])
    assert r.exit_code == 0, r.output
    return {"root": root, "work": work, "db": root / "good.sqlite", "rruff": root / "calcite.txt",
            "acn": root / "acetonitrile.txt", "npz": root / "tiny.npz"}


def paths(place: dict[str, Path]) -> st.SearchStrategy[str]:
    """Paths that do not exist, a directory, a regular file where a directory must be, or any text."""
    root = place["root"]
    return st.one_of(st.sampled_from([str(root / "missing" / "x.json"), str(root / "plain-file" / "x"),
                                      str(root / "plain-file"), str(root), ".", "", "missing.txt",
                                      str(root / "out.unknown-ext")]), TEXT)


def values(place: dict[str, Path]) -> st.SearchStrategy[str]:
    return st.one_of(TEXT, INTS, FLOATS, paths(place))


class _Stalled(Exception):
    """A command that neither finished nor failed within SECONDS_PER_CALL."""


def _alarm(signum: int, frame: object) -> None:
    raise _Stalled(f"no answer within {SECONDS_PER_CALL} s")


@contextlib.contextmanager
def _fresh_logging() -> Iterator[None]:
    """Let `main` configure logging onto this invocation's stderr, as a new process would."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    root.handlers.clear()
    try:
        yield
    finally:
        root.handlers[:] = saved
        root.setLevel(level)


def invoke(args: list[str]) -> Result:
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(SECONDS_PER_CALL)
    try:
        with _fresh_logging():
            return CliRunner().invoke(main, args, catch_exceptions=True)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def assert_contract(args: list[str], r: Result) -> None:
    shown = f"raman-edge {' '.join(repr(a) for a in args)}\n--- exit {r.exit_code}\n--- stdout\n{r.stdout[-2000:]}" \
            f"\n--- stderr\n{r.stderr[-2000:]}"
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        tb = "".join(traceback.format_exception(*r.exc_info)) if r.exc_info else repr(r.exception)
        pytest.fail(f"uncaught exception:\n{shown}\n{tb}")
    text = r.stdout + r.stderr
    assert "Traceback" not in text, f"traceback:\n{shown}"
    assert "internal error" not in text, f"an unclassified failure:\n{shown}"
    assert r.exit_code in (0, 1, 2, 3), f"exit {r.exit_code}:\n{shown}"
    errors = [line for line in r.stderr.splitlines() if line.startswith(ERROR_PREFIXES)]
    assert len(errors) == (0 if r.exit_code == 0 else 1), f"{len(errors)} error lines:\n{shown}"


def check(place: dict[str, Path], args: list[str]) -> None:
    with contextlib.chdir(place["work"]):
        assert_contract(args, invoke(args))


RUN_OPTIONS = ["--min-probability", "--min-margin", "--top-k", "--interest", "--head-precision", "--calibration",
               "--model", "--trusted-keys", "--source", "--db", "--config"]
SIM_KEYS = ["seed", "count", "minerals", "pixels", "drift", "spike", "noise", "laser", "fluorescence", "calibration"]


@FUZZ
@given(data=st.data())
def test_run_options(place: dict[str, Path], data: st.DataObject) -> None:
    option = data.draw(st.sampled_from(RUN_OPTIONS + ["sim-query"]), label="option")
    value = data.draw(values(place), label="value")
    sd = str(place["root"] / "run.d")
    base = ["run", "--state-dir", sd, "--count", "1", "--quiet"]
    if option == "sim-query":
        key = data.draw(st.sampled_from(SIM_KEYS), label="key")
        args = base + ["--db", str(place["root"] / "run.sqlite"), "--source", f"sim://?rate=0&{key}={value}"]
    elif option in ("--source", "--db"):
        other = {"--source": ["--db", str(place["root"] / "run.sqlite")], "--db": ["--source", "sim://?rate=0"]}
        args = base + other[option] + [option, value]
    else:
        args = base + ["--db", str(place["root"] / "run.sqlite"), "--source", "sim://?rate=0", option, value]
    check(place, args)


@FUZZ
@given(data=st.data())
def test_downlink_options(place: dict[str, Path], data: st.DataObject) -> None:
    option = data.draw(st.sampled_from(["--budget-bytes", "--fine-error", "--coarse-error", "--out", "--db", "read",
                                        "passes"]), label="option")
    value = data.draw(values(place), label="value")
    db = place["root"] / "downlink.sqlite"
    if not db.exists():
        shutil.copyfile(place["db"], db)
    if option == "read":
        args = ["downlink", "read", value]
    elif option == "passes":
        args = ["downlink", "passes", "--db", value]
    elif option == "--db":
        args = ["downlink", "--budget-bytes", "4000", "--dry-run", "--db", value]
    else:
        budget = [] if option == "--budget-bytes" else ["--budget-bytes", "4000"]
        args = ["downlink", "--db", str(db), "--dry-run", *budget, option, value]
    check(place, args)


@FUZZ
@given(data=st.data())
def test_peaks_options(place: dict[str, Path], data: st.DataObject) -> None:
    option = data.draw(st.sampled_from(["--index", "--snr", "--min-prominence", "--calibration", "FILE"]),
                       label="option")
    value = data.draw(values(place), label="value")
    args = ["peaks", value] if option == "FILE" else ["peaks", str(place["rruff"]), option, value]
    check(place, args)


@FUZZ
@given(data=st.data())
def test_calibrate_options(place: dict[str, Path], data: st.DataObject) -> None:
    option = data.draw(st.sampled_from(["--laser-nm", "--max-band-rms", "--standard-name", "--refine", "--order",
                                        "--out", "--standard", "--lamp", "--dispersion", "--guess-poly"]),
                       label="option")
    value = data.draw(values(place), label="value")
    base = {"--laser-nm": "785", "--out": str(place["root"] / "cal.json"), "--standard": str(place["acn"])}
    base[option] = value
    args = ["calibrate"] + [x for k, v in base.items() for x in (k, v)]
    check(place, args)


@FUZZ
@given(data=st.data())
def test_bench_options(place: dict[str, Path], data: st.DataObject) -> None:
    option = data.draw(st.sampled_from(["--min-probability", "--min-margin", "--top-k", "--interest",
                                        "--head-precision", "--calibration", "--json", "--model", "--data"]),
                       label="option")
    value = data.draw(values(place), label="value")
    data_file = [] if option == "--data" else ["--data", str(place["npz"])]
    check(place, ["bench", "--no-db", *data_file, option, value])


@FUZZ
@given(data=st.data())
def test_show_options(place: dict[str, Path], data: st.DataObject) -> None:
    option = data.draw(st.sampled_from(["--range", "--offset", "--baseline", "--out", "--calibration", "FILE"]),
                       label="option")
    value = data.draw(values(place), label="value")
    out = [] if option == "--out" else ["--out", str(place["root"] / "plot.png")]
    args = ["show", value, *out] if option == "FILE" else ["show", str(place["rruff"]), *out, option, value]
    check(place, args)
