"""The catalogue of bad inputs for the CLI contract test (tests/test_cli_contract.py).

Each :class:`Case` is one ``raman-edge`` command line built from files it writes
into the test's own directory, the exit status the README's *Exit status* table
documents for it, and what its single error line must name.  The files are
synthetic, made here from a few lines of numpy, so the catalogue runs without
the real data in ``../shared/data``.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

import edge
from calibration.axis import AxisCalibration
from calibration.standards import NEON, raman_standard
from tests.conftest import BANDS, lorentz

OK, RUNTIME, CONFIG, STORAGE = 0, 1, 2, 3

# Areas of the code a failing case points at (for the report of a failing run).
STORAGE_AREA = "storage/db"
EXIT_AREA = "exit status/config/URL parsing"
CALIB_AREA = "calibration/readers/replay"
TRUST_AREA = "trust/registry/model/head"
PRESENT_AREA = "show/plots/train"

SHIPPED = Path(edge.__file__).resolve().parent / "models" / "default"

#: Above the size any reader should accept for one text spectrum file.
OVERSIZED_BYTES = 100 * 1024 * 1024

#: Bytes that must never reach a terminal: NUL, a clear-screen escape, invalid UTF-8.
BINARY = (b"\x00\x01\x02\x1b[2J\x1b[31mPWNED\x07" + bytes(range(256)) + b"\xff\xfe\xc3\x28") * 8

PIXEL_POLY = (544.3, 0.0551, 1.4e-6, -4.0e-10)


# --------------------------------------------------------------------------- good files


def rruff_text(mineral: str = "Calcite", laser_nm: int = 785, inf_at: int | None = None) -> str:
    """A RRUFF raw ``.txt`` export on a 100-1500 cm-1 Raman-shift axis."""
    rng = np.random.default_rng(7)
    axis = np.arange(100.0, 1500.0, 2.0)
    y = 1000.0 * lorentz(axis, BANDS[mineral]) + 200.0 + rng.normal(0, 3.0, axis.size)
    rows = [f"{x:.2f}, {v:.3f}" for x, v in zip(axis, y)]
    if inf_at is not None:
        rows[inf_at] = f"{axis[inf_at]:.2f}, inf"
    head = [f"##NAMES={mineral}", "##RRUFFID=R040070", "##FILETYPE=Raman RAW", f"##RAMAN WAVELENGTH={laser_nm}", ""]
    return "\n".join(head + rows + ["##END="]) + "\n"


def enlighten_csv(n: int = 1024) -> str:
    """A Wasatch ENLIGHTEN export (785 nm) with calcite bands on its Raman-shift column."""
    poly = (773.9, 0.0785, -4.1e-6, 0.0, 0.0)
    meta = [("ENLIGHTEN Version", "4.1.6"), ("Measurement ID", "20250101-120000-000000-WP-02071"),
            ("Serial Number", "WP-02071"), ("Model", "WP-785X-F13-R-ILC"), ("Label", "contract"),
            ("Scan Averaging", "1"), ("Technique", "Raman"), ("Integration Time", "250"),
            ("CCD C0", f"{poly[0]:g}"), ("CCD C1", f"{poly[1]:g}"), ("CCD C2", f"{poly[2]:g}"),
            ("CCD C3", "0"), ("CCD C4", "0"), ("Laser Wavelength", "785.00"), ("Pixel Count", str(n))]
    p = np.arange(n, dtype=float)
    wl = np.polynomial.polynomial.polyval(p, poly)
    shift = 1e7 / 785.0 - 1e7 / wl
    y = 900.0 + 1000.0 * lorentz(shift, BANDS["Calcite"])
    rows = [f"{k},{v}" for k, v in meta] + ["", "Pixel,Wavelength,Wavenumber,Processed"]
    rows += [f"{int(a)},{b:.2f},{c:.2f},{d:.2f}" for a, b, c, d in zip(p, wl, shift, y)]
    return "\r\n".join(rows) + "\r\n"


def pixel_csv(y: np.ndarray) -> str:
    """The OpenRAMAN pixel-axis export layout."""
    return "Pixels #,Intensity (a.u.)\n" + "\n".join(f"{i:.5e},{v:.5e}" for i, v in enumerate(y)) + "\n"


def neon_lamp_csv() -> str:
    """A neon lamp on a 2048-pixel detector behind a 532 nm laser (the calibrate tests' layout)."""
    rng = np.random.default_rng(11)
    p = np.arange(2048.0)
    lam = np.polynomial.polynomial.polyval(p, PIXEL_POLY)
    y = np.full(p.size, 0.8) + rng.normal(0, 0.003, p.size)
    for a, line in zip(rng.uniform(0.5, 3.0, len(NEON.lines_nm)), NEON.lines_nm):
        if lam[0] < line < lam[-1]:
            y += a * np.exp(-0.5 * ((p - np.interp(line, lam, p)) / 2.0) ** 2)
    return pixel_csv(y)


def acetonitrile_shift_txt(laser_nm: int = 785) -> str:
    """Acetonitrile measured on an instrument's own Raman-shift axis (a RRUFF-style text file)."""
    rng = np.random.default_rng(5)
    axis = np.arange(200.0, 3200.0, 1.5)
    bands = [(b, a, 10.0) for b, a in zip(raman_standard("acetonitrile").bands, (0.3, 0.1, 0.6, 1.0))]
    y = 100.0 + 1000.0 * lorentz(axis + 3.0, bands) + rng.normal(0, 2.0, axis.size)
    head = ["##NAMES=acetonitrile", "##FILETYPE=Raman RAW", f"##RAMAN WAVELENGTH={laser_nm}", ""]
    return "\n".join(head + [f"{x:.2f}, {v:.3f}" for x, v in zip(axis, y)] + ["##END="]) + "\n"


def labelled_npz(path: Path, nan_row: bool = False) -> Path:
    """A few labelled synthetic spectra (classes the shipped model knows), optionally one all-NaN row."""
    rng = np.random.default_rng(0)
    wn = np.arange(200.0, 1592.0, 1.0)
    names = ["Calcite", "Quartz", "Hematite", "Diamond"]
    spectra = np.stack([200.0 + 1000.0 * lorentz(wn, BANDS[m]) + rng.normal(0, 3.0, wn.size) for m in names])
    if nan_row:
        spectra[1] = np.nan
    np.savez(path, spectra=spectra.astype(np.float32), labels=np.asarray(names), wavenumbers=wn.astype(np.float32))
    return path


# --------------------------------------------------------------------------- shared and per-case state


@dataclass
class World:
    """Files made once per module: a good results log, keys, bundles, a pass file and a head file."""

    root: Path
    good_db: Path
    private_key: Path
    public_key: Path
    foreign_bundle: Path
    redl: Path
    head: Path
    npz: Path
    rruff: Path
    wasatch: Path
    neon: Path
    acetonitrile: Path


@dataclass
class LogSnapshot:
    """What a results log held before a case ran."""

    path: Path
    corrupt: bool
    rows: dict[int, int] = field(default_factory=dict)  # id -> downlinked
    sha256: str = ""


def snapshot_log(path: Path, corrupt: bool) -> LogSnapshot:
    """Rows (and their downlink marks) of a good log, or the bytes' hash of a corrupt one."""
    if corrupt:
        return LogSnapshot(path, True, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = dict(con.execute("SELECT id, downlinked FROM results"))
    finally:
        con.close()
    return LogSnapshot(path, False, rows=rows)


def corrupt_pages(path: Path, seed: int = 1) -> None:
    """Overwrite 8 KiB at offset 12288 with random bytes (pages 4-5 of a 4 KiB-page log)."""
    junk = np.random.default_rng(seed).integers(0, 256, 8192, dtype=np.uint8).tobytes()
    with path.open("r+b") as f:
        f.seek(12288)
        f.write(junk)


class Ctx:
    """One case's directory and the builders its command line uses."""

    def __init__(self, tmp: Path, world: World) -> None:
        self.tmp = tmp
        self.world = world
        self.log: LogSnapshot | None = None
        self.cleanup: list[Path] = []

    def write(self, name: str, content: bytes | str) -> str:
        """Write ``content`` to ``name`` in the case directory; its absolute path."""
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(p)

    def dir(self, name: str) -> str:
        p = self.tmp / name
        p.mkdir(parents=True, exist_ok=True)
        return str(p)

    def under_file(self, *rest: str) -> str:
        """A path below a regular file: no process, root included, can create it."""
        f = self.tmp / "plain-file"
        f.write_text("not a directory\n")
        return str(f.joinpath(*rest))

    def good_log(self, name: str = "log.sqlite") -> str:
        """A copy of the module's good log (5 rows, none sent), snapshotted for the after-check."""
        p = self.tmp / name
        shutil.copyfile(self.world.good_db, p)
        self.log = snapshot_log(p, corrupt=False)
        return str(p)

    def corrupt_log(self, name: str = "corrupt.sqlite") -> str:
        """A copy of the good log with 8 KiB of random bytes at offset 12288."""
        p = self.tmp / name
        shutil.copyfile(self.world.good_db, p)
        corrupt_pages(p)
        self.log = snapshot_log(p, corrupt=True)
        return str(p)

    def bundle(self, name: str = "bundle", source: Path | None = None) -> Path:
        """A private copy of the shipped bundle (or ``source``), free to damage."""
        p = self.tmp / name
        shutil.copytree(source or SHIPPED, p)
        return p

    def bundle_with(self, name: str, file: str, content: bytes, rehash: bool = False) -> str:
        """A bundle copy whose ``file`` holds ``content``; ``rehash`` updates the manifest's sha256 to match."""
        b = self.bundle(name)
        (b / file).write_bytes(content)
        if rehash:
            m = json.loads((b / "manifest.json").read_text())
            for entry in m["files"].values():
                if entry["path"] == file:
                    entry["sha256"] = hashlib.sha256(content).hexdigest()
            (b / "manifest.json").write_text(json.dumps(m, indent=1))
        return str(b)

    def manifest_without(self, name: str, key: str) -> str:
        b = self.bundle(name)
        m = json.loads((b / "manifest.json").read_text())
        del m[key]
        (b / "manifest.json").write_text(json.dumps(m, indent=1))
        return str(b)

    def state_dir(self, name: str, active_json: bytes) -> str:
        sd = self.tmp / name
        sd.mkdir()
        (sd / "active.json").write_bytes(active_json)
        return str(sd)

    def in_package(self, name: str) -> str:
        """A directory inside the installed package (removed after the case whatever happened)."""
        p = SHIPPED.parent / name
        self.cleanup.append(p)
        return str(p)

    def truncated(self, src: Path, name: str, fraction: float = 0.5) -> str:
        data = src.read_bytes()
        return self.write(name, data[: int(len(data) * fraction)])

    def oversized_text(self, name: str) -> str:
        """A well-formed RRUFF text file of :data:`OVERSIZED_BYTES` (about 11 M points)."""
        p = self.tmp / name
        line = b"1000.00, 123.456\n"
        with p.open("wb") as f:
            f.write(b"##NAMES=Calcite\n##RAMAN WAVELENGTH=785\n\n")
            block = line * 65536
            for _ in range(OVERSIZED_BYTES // len(block) + 1):
                f.write(block)
        return str(p)


# --------------------------------------------------------------------------- the catalogue


Argv = Callable[[Ctx], Sequence[str]]
Check = Callable[[Ctx, int, str, str], None]


@dataclass(frozen=True)
class Case:
    """One bad input.

    ``names``: every entry must occur (case-insensitively) in the error line; an
    entry that is a tuple is satisfied by any one of its alternatives.  ``exit``
    lists the statuses the contract allows (one, except where the contract leaves
    the choice open: then the alternatives are named in ``note``).
    """

    id: str
    area: str
    argv: Argv
    exit: tuple[int, ...]
    names: tuple[str | tuple[str, ...], ...] = ()
    check: Check | None = None
    slow: bool = False
    timeout: float = 60.0
    note: str = ""


def _rows(ctx: Ctx) -> list[sqlite3.Row]:
    assert ctx.log is not None
    con = sqlite3.connect(f"file:{ctx.log.path}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        return con.execute("SELECT id, status, error, priority, reasons FROM results ORDER BY id").fetchall()
    finally:
        con.close()


def _new_rows(ctx: Ctx) -> list[sqlite3.Row]:
    assert ctx.log is not None
    return [r for r in _rows(ctx) if r["id"] not in ctx.log.rows]


def check_unreadable_rows(expected: int, unreadable: int) -> Check:
    """The run logged ``expected`` new rows, ``unreadable`` of them priority-3 errors with a reason.

    Priority 3 also holds novel spectra (status ok, reason ``novel``); only errors count here.
    """
    def check(ctx: Ctx, rc: int, out: str, err: str) -> None:
        new = _new_rows(ctx)
        assert len(new) == expected, f"expected {expected} new rows, got {len(new)}: {[dict(r) for r in new]}"
        bad = [r for r in new if r["priority"] == 3 and r["status"] == "error"]
        assert len(bad) == unreadable, f"expected {unreadable} priority-3 rows: {[dict(r) for r in new]}"
        assert all((r["error"] or r["reasons"]) for r in bad), [dict(r) for r in bad]
    return check


def check_misfit_calibration(ctx: Ctx, rc: int, out: str, err: str) -> None:
    """Refused at start-up (exit 2), or every spectrum it was applied to became a priority-3 row with the reason."""
    if rc == OK:
        new = _new_rows(ctx)
        assert new and all(r["priority"] == 3 and r["status"] == "error" for r in new), [dict(r) for r in new]
        assert all("calibration" in (r["error"] or "") + (r["reasons"] or "") for r in new), [dict(r) for r in new]


def check_rows_grew(n: int) -> Check:
    def check(ctx: Ctx, rc: int, out: str, err: str) -> None:
        assert len(_new_rows(ctx)) == n, f"expected {n} new rows"
    return check


def _toml(ctx: Ctx, name: str, text: str) -> list[str]:
    return ["run", "--config", ctx.write(name, text), "--db", ctx.good_log(), "--count", "1", "--quiet"]


def _run(ctx: Ctx, *args: str, count: int | None = 2) -> list[str]:
    """``run`` on the case's copy of the good log: a failing case must leave its rows alone."""
    counted = ["--count", str(count)] if count is not None else []
    return ["run", "--db", ctx.good_log(), *counted, "--quiet", *args]


def _run_db(db: str, *args: str) -> list[str]:
    """``run`` on a faulty log, with a state directory of its own so that the log is the only fault."""
    return ["run", "--db", db, "--state-dir", "sd", "--source", SIM, "--count", "2", "--quiet", *args]


SIM = "sim://?rate=0&seed=1"


def _run_cases() -> list[Case]:
    return [
        Case("run-sim-rate-abc", EXIT_AREA, lambda c: _run(c, "--source", "sim://?rate=abc"), (CONFIG,), ("rate",)),
        Case("run-sim-count-negative", EXIT_AREA, lambda c: _run(c, "--source", "sim://?count=-1"), (CONFIG,),
             ("count",)),
        Case("run-sim-unknown-key", EXIT_AREA, lambda c: _run(c, "--source", "sim://?bogus=1"), (CONFIG,), ("bogus",)),
        Case("run-unknown-scheme", EXIT_AREA, lambda c: _run(c, "--source", "bogus://x"), (CONFIG,), ("bogus",)),
        Case("run-replay-missing", EXIT_AREA, lambda c: _run(c, "--source", f"replay://{c.tmp}/nonexistent.npz"),
             (CONFIG,), ("nonexistent.npz",)),
        Case("run-serial-baud-abc", EXIT_AREA, lambda c: _run(c, "--source", "serial:///dev/ttyUSB0?baud=abc"),
             (CONFIG,), ("baud",), timeout=30),
        Case("run-usb-bad-id", EXIT_AREA, lambda c: _run(c, "--source", "usb://zzzz:yyyy"), (CONFIG,),
             ("zzzz",), timeout=30),
        Case("run-toml-syntax", EXIT_AREA, lambda c: _toml(c, "bad.toml", "[source\nurl = 'sim://'\n"), (CONFIG,),
             ("bad.toml",)),
        Case("run-toml-binary", EXIT_AREA, lambda c: _toml(c, "binary.toml", BINARY), (CONFIG,), ("binary.toml",)),
        Case("run-toml-rate-abc", EXIT_AREA, lambda c: _toml(c, "rate.toml", '[source]\nurl = "sim://?rate=abc"\n'),
             (CONFIG,), ("rate",)),
        Case("run-toml-unknown-key", EXIT_AREA, lambda c: _toml(c, "key.toml", "[store]\ndbb = 'x.sqlite'\n"),
             (CONFIG,), ("dbb",)),
        Case("run-toml-wrong-type", EXIT_AREA, lambda c: _toml(c, "type.toml", '[priority]\ntop_k = "three"\n'),
             (CONFIG,), ("top_k",)),
        Case("run-model-missing", EXIT_AREA, lambda c: _run(c, "--source", SIM, "--model", "/nonexistent/model"),
             (CONFIG,), ("nonexistent",)),
        Case("run-model-unsigned", TRUST_AREA,
             lambda c: _run(c, "--source", SIM, "--model", str(c.world.foreign_bundle),
                            "--trusted-keys", str(c.world.public_key)),
             (CONFIG,), (("sign", "trust"),)),
        Case("run-model-manifest-garbage", TRUST_AREA,
             lambda c: _run(c, "--source", SIM, "--allow-unsigned", "--model",
                            c.bundle_with("b", "manifest.json", BINARY)),
             (CONFIG,), ("manifest.json",)),
        Case("run-model-backbone-truncated", TRUST_AREA,
             lambda c: _run(c, "--source", SIM, "--allow-unsigned", "--model",
                            c.bundle_with("b", "backbone.onnx", (SHIPPED / "backbone.onnx").read_bytes()[:5000])),
             (CONFIG,), ("backbone.onnx",)),
        Case("run-calibration-garbage", CALIB_AREA,
             lambda c: _run(c, "--source", SIM, "--calibration", c.write("cal.json", "{not json")),
             (CONFIG,), ("cal.json",)),
        Case("run-calibration-in-toml-missing", EXIT_AREA,
             lambda c: _toml(c, "cal.toml", f'[source]\nurl = "{SIM}"\n[calibration]\npath = "gone.json"\n'),
             (CONFIG,), ("gone.json",)),
        Case("run-pixel-calibration-on-shift-axis", CALIB_AREA,
             lambda c: _run(c, "--source", f"replay://{c.world.npz}", "--calibration", _pixel_cal(c)),
             (CONFIG, OK), ("calibration",), check=check_misfit_calibration,
             note="exit 2 at start-up, or 0 with every row priority 3 naming the calibration"),
        Case("run-interest-typo", TRUST_AREA, lambda c: _run(c, "--source", SIM, "--interest", "Hematit"), (CONFIG,),
             ("Hematit",)),
        Case("run-count-zero", EXIT_AREA, lambda c: _run(c, "--count", "0"), (CONFIG,), ("--count",)),
        Case("run-top-k-huge", EXIT_AREA, lambda c: _run(c, "--top-k", "10000"), (CONFIG,), ("--top-k",)),
        Case("run-min-probability-2", EXIT_AREA, lambda c: _run(c, "--min-probability", "2"), (CONFIG,),
             ("--min-probability",)),
        Case("run-min-margin-nan", EXIT_AREA, lambda c: _run(c, "--source", SIM, "--min-margin", "nan"), (CONFIG,),
             (("min-margin", "min_margin"),)),
        Case("run-db-corrupt", STORAGE_AREA, lambda c: _run_db(c.corrupt_log()),
             (STORAGE,), ("corrupt.sqlite",)),
        Case("run-db-garbage", STORAGE_AREA, lambda c: _run_db(c.write("garbage.sqlite", BINARY * 4)),
             (STORAGE,), ("garbage.sqlite",)),
        Case("run-db-is-directory", STORAGE_AREA, lambda c: _run_db(c.dir("db-dir")),
             (STORAGE,), ("db-dir",)),
        Case("run-db-under-file", STORAGE_AREA, lambda c: _run_db(c.under_file("d", "x.sqlite")),
             (STORAGE,), ("plain-file",)),
        Case("run-state-dir-under-file", EXIT_AREA, lambda c: _run(c, "--source", SIM, "--state-dir",
                                                                   c.under_file("sd")),
             (CONFIG,), ("plain-file",)),
        Case("run-watchdog-under-file", EXIT_AREA, lambda c: _run(c, "--source", SIM, "--watchdog-file",
                                                                  c.under_file("wd")),
             (CONFIG,), ("plain-file",)),
        Case("run-active-json-garbage", TRUST_AREA,
             lambda c: _run(c, "--source", SIM, "--state-dir", c.state_dir("sd", BINARY)),
             (OK,), ("active.json",), check=check_rows_grew(2),
             note="falls back to the shipped model, says so, keeps running"),
        Case("run-replay-folder-mixed", CALIB_AREA,
             lambda c: _run(c, "--source", f"replay://{_mixed_folder(c)}", count=None),
             (OK,), check=check_unreadable_rows(4, 2)),
        Case("run-replay-npz-nan-row", CALIB_AREA,
             lambda c: ["run", "--db", c.good_log(), "--quiet", "--source",
                        f"replay://{labelled_npz(c.tmp / 'nan.npz', nan_row=True)}"],
             (OK,), check=check_unreadable_rows(4, 1)),
    ]


def _pixel_cal(c: Ctx) -> str:
    p = c.tmp / "pixel-cal.json"
    AxisCalibration(PIXEL_POLY, 532.4, 2048, wavelengths_in_air=True).save(p)
    return str(p)


def _mixed_folder(c: Ctx) -> str:
    """Two good spectra (RRUFF .txt, Wasatch .csv) and two unreadable ones (inf in a .txt, a binary .csv)."""
    c.write("exports/a-calcite.txt", rruff_text())
    c.write("exports/b-wasatch.csv", enlighten_csv())
    c.write("exports/c-inf.txt", rruff_text(inf_at=40))
    c.write("exports/d-binary.csv", BINARY)
    return str(c.tmp / "exports")


def _downlink(c: Ctx, *args: str) -> list[str]:
    return ["downlink", "--db", c.good_log(), *args]


def _downlink_cases() -> list[Case]:
    return [
        Case("downlink-db-corrupt", STORAGE_AREA,
             lambda c: ["downlink", "--db", c.corrupt_log(), "--budget-bytes", "4000", "--out", "p.redl"],
             (STORAGE,), ("corrupt.sqlite",)),
        Case("downlink-db-garbage", STORAGE_AREA,
             lambda c: ["downlink", "--db", c.write("garbage.sqlite", BINARY * 4), "--budget-bytes", "4000",
                        "--dry-run"],
             (STORAGE,), ("garbage.sqlite",)),
        Case("downlink-passes-db-corrupt", STORAGE_AREA,
             lambda c: ["downlink", "passes", "--db", c.corrupt_log()], (STORAGE,), ("corrupt.sqlite",)),
        Case("downlink-budget-huge", STORAGE_AREA,
             lambda c: _downlink(c, "--budget-bytes", "99999999999999999999", "--dry-run"), (OK, CONFIG),
             note="the contract lets a huge budget be refused (2) or accepted (0)"),
        Case("downlink-budget-negative", EXIT_AREA, lambda c: _downlink(c, "--budget-bytes", "-5", "--dry-run"),
             (CONFIG,), ("--budget-bytes",)),
        Case("downlink-fine-error-nan", STORAGE_AREA,
             lambda c: _downlink(c, "--budget-bytes", "4000", "--fine-error", "nan", "--dry-run"),
             (CONFIG,), ("fine-error",)),
        Case("downlink-out-under-file", STORAGE_AREA,
             lambda c: _downlink(c, "--budget-bytes", "4000", "--out", c.under_file("d", "x.redl")),
             (CONFIG,), ("plain-file",)),
        Case("downlink-out-is-directory", STORAGE_AREA,
             lambda c: _downlink(c, "--budget-bytes", "4000", "--out", c.dir("outdir"), "--overwrite"),
             (CONFIG,), ("outdir",)),
        Case("downlink-read-garbage", STORAGE_AREA, lambda c: ["downlink", "read", c.write("garbage.redl", BINARY)],
             (RUNTIME,), ("garbage.redl",)),
        Case("downlink-read-empty", STORAGE_AREA, lambda c: ["downlink", "read", c.write("empty.redl", b"")],
             (RUNTIME,), ("empty.redl",)),
        Case("downlink-read-truncated", STORAGE_AREA,
             lambda c: ["downlink", "read", c.truncated(c.world.redl, "cut.redl", 0.6)], (RUNTIME,), ("cut.redl",)),
        Case("downlink-read-directory", STORAGE_AREA, lambda c: ["downlink", "read", c.dir("pass-dir")], (CONFIG,),
             ("pass-dir",)),
    ]


def _peaks_show_cases() -> list[Case]:
    return [
        Case("peaks-binary-txt", CALIB_AREA, lambda c: ["peaks", c.write("binary.txt", BINARY)], (RUNTIME,),
             ("binary.txt",)),
        Case("peaks-empty-txt", CALIB_AREA, lambda c: ["peaks", c.write("empty.txt", b"")], (RUNTIME,),
             ("empty.txt",)),
        Case("peaks-rruff-header-only", CALIB_AREA,
             lambda c: ["peaks", c.write("header.txt", "##NAMES=Calcite\n##RAMAN WAVELENGTH=785\n##END=\n")],
             (RUNTIME,), ("header.txt",)),
        Case("peaks-rruff-text-values", CALIB_AREA,
             lambda c: ["peaks", c.write("words.txt", rruff_text().replace("200.00, ", "abc, ", 1))], (RUNTIME,),
             ("words.txt",)),
        Case("peaks-rruff-inf", CALIB_AREA, lambda c: ["peaks", c.write("inf.txt", rruff_text(inf_at=40))],
             (RUNTIME,), ("inf.txt",)),
        Case("peaks-wasatch-truncated", CALIB_AREA,
             lambda c: ["peaks", c.write("cut.csv", enlighten_csv()[:400])], (RUNTIME,), ("cut.csv",)),
        Case("peaks-wasatch-binary", CALIB_AREA,
             lambda c: ["peaks", c.write("binary.csv", enlighten_csv()[:300].encode() + BINARY)], (RUNTIME,),
             ("binary.csv",)),
        Case("peaks-npz-garbage", CALIB_AREA, lambda c: ["peaks", c.write("garbage.npz", BINARY)], (RUNTIME,),
             ("garbage.npz",)),
        Case("peaks-npz-truncated", CALIB_AREA, lambda c: ["peaks", c.truncated(c.world.npz, "cut.npz")], (RUNTIME,),
             ("cut.npz",)),
        Case("peaks-oversized-txt", CALIB_AREA, lambda c: ["peaks", c.oversized_text("huge.txt")], (RUNTIME,),
             ("huge.txt", ("size", "large", "limit", "bytes", "MB", "points")), timeout=90),
        Case("peaks-calibration-garbage", CALIB_AREA,
             lambda c: ["peaks", str(c.world.rruff), "--calibration", c.write("cal.json", BINARY)], (CONFIG,),
             ("cal.json",)),
        Case("peaks-calibration-empty-json", CALIB_AREA,
             lambda c: ["peaks", str(c.world.rruff), "--calibration", c.write("empty.json", "{}")], (CONFIG,),
             ("empty.json",)),
        Case("peaks-calibration-truncated", CALIB_AREA,
             lambda c: ["peaks", str(c.world.rruff), "--calibration", c.write("cut.json", _pixel_cal_text(c)[:120])],
             (CONFIG,), ("cut.json",)),
        Case("show-out-bad-extension", PRESENT_AREA,
             lambda c: ["show", str(c.world.rruff), "--out", "plot.xyz"], (CONFIG,), ("plot.xyz",)),
        Case("show-out-under-file", PRESENT_AREA,
             lambda c: ["show", str(c.world.rruff), "--out", c.under_file("d", "p.png")], (CONFIG,), ("plain-file",)),
        Case("show-binary-input", PRESENT_AREA,
             lambda c: ["show", c.write("binary.txt", BINARY), "--out", "p.png"], (RUNTIME,), ("binary.txt",)),
        Case("show-range-abc", PRESENT_AREA,
             lambda c: ["show", str(c.world.rruff), "--out", "p.png", "--range", "abc"], (CONFIG,), ("--range",)),
        Case("show-calibration-garbage", PRESENT_AREA,
             lambda c: ["show", str(c.world.rruff), "--out", "p.png", "--calibration", c.write("cal.json", "[1,2")],
             (CONFIG,), ("cal.json",)),
    ]


def _pixel_cal_text(c: Ctx) -> str:
    return Path(_pixel_cal(c)).read_text()


def _calibrate(c: Ctx, *args: str) -> list[str]:
    return ["calibrate", "--out", str(c.tmp / "cal.json"), *args]


def _calibrate_cases() -> list[Case]:
    return [
        Case("calibrate-lamp-garbage", CALIB_AREA,
             lambda c: _calibrate(c, "--lamp", c.write("lamp.csv", BINARY), "--laser-nm", "532"), (RUNTIME,),
             ("lamp.csv",)),
        Case("calibrate-out-under-file", CALIB_AREA,
             lambda c: ["calibrate", "--lamp", str(c.world.neon), "--laser-nm", "532", "--out",
                        c.under_file("d", "x.json")], (CONFIG,), ("plain-file",)),
        Case("calibrate-laser-1064-implausible", CALIB_AREA,
             lambda c: _calibrate(c, "--lamp", str(c.world.neon), "--laser-nm", "1064"), (CONFIG,),
             (("1064", "laser", "plausib", "raman-shift", "raman shift"),)),
        Case("calibrate-laser-negative", CALIB_AREA,
             lambda c: _calibrate(c, "--standard", str(c.world.acetonitrile), "--laser-nm", "-5"), (CONFIG,),
             (("laser-nm", "laser"),)),
        Case("calibrate-standard-binary", CALIB_AREA,
             lambda c: _calibrate(c, "--standard", c.write("std.csv", BINARY), "--laser-nm", "785"), (RUNTIME,),
             ("std.csv",)),
        Case("calibrate-lamp-gas-unknown", CALIB_AREA,
             lambda c: _calibrate(c, "--lamp", str(c.world.neon), "--lamp-gas", "xenon", "--laser-nm", "532"),
             (CONFIG,), ("xenon",)),
        Case("calibrate-guess-poly-words", CALIB_AREA,
             lambda c: _calibrate(c, "--lamp", str(c.world.neon), "--laser-nm", "532", "--guess-poly", "x,y"),
             (CONFIG,), ("guess-poly",)),
    ]


def _bench(c: Ctx, *args: str) -> list[str]:
    return ["bench", "--data", str(c.world.npz), "--no-db", *args]


def _bench_cases() -> list[Case]:
    return [
        Case("bench-data-garbage-npz", CALIB_AREA,
             lambda c: ["bench", "--no-db", "--data", c.write("garbage.npz", BINARY)], (RUNTIME,), ("garbage.npz",)),
        Case("bench-data-missing", CALIB_AREA, lambda c: ["bench", "--no-db", "--data", "missing.npz"],
             (CONFIG,), ("missing.npz",)),
        Case("bench-db-corrupt", STORAGE_AREA,
             lambda c: ["bench", "--data", str(c.world.npz), "--db", c.corrupt_log()], (STORAGE,),
             ("corrupt.sqlite",)),
        Case("bench-model-manifest-truncated", TRUST_AREA,
             lambda c: _bench(c, "--model", c.bundle_with("b", "manifest.json",
                                                          (SHIPPED / "manifest.json").read_bytes()[:300])),
             (CONFIG,), ("manifest.json",)),
        Case("bench-interest-typo", TRUST_AREA, lambda c: _bench(c, "--interest", "Hematit"), (CONFIG,),
             ("Hematit",)),
        Case("bench-json-under-file", STORAGE_AREA, lambda c: _bench(c, "--json", c.under_file("d", "r.json")),
             (CONFIG,), ("plain-file",)),
        Case("bench-plots-is-file", PRESENT_AREA, lambda c: _bench(c, "--plots", c.write("plots", "x")),
             (CONFIG,), ("plots",)),
    ]


def _model_cases() -> list[Case]:
    sd = ["--state-dir", "sd"]
    return [
        Case("model-install-manifest-garbage", TRUST_AREA,
             lambda c: ["model", "install", c.bundle_with("b", "manifest.json", BINARY), "--allow-unsigned", *sd],
             (CONFIG,),
             ("manifest.json",)),
        Case("model-install-manifest-no-classes", TRUST_AREA,
             lambda c: ["model", "install", c.manifest_without("b", "classes"), "--allow-unsigned", *sd], (CONFIG,),
             ("classes",)),
        Case("model-install-unsigned", TRUST_AREA,
             lambda c: ["model", "install", str(c.world.foreign_bundle), "--trusted-keys", str(c.world.public_key),
                        *sd], (CONFIG,), (("sign", "trust"),)),
        Case("model-install-onnx-garbage-rehashed", TRUST_AREA,
             lambda c: ["model", "install", c.bundle_with("b", "head.onnx", BINARY, rehash=True),
                        "--allow-unsigned", *sd], (CONFIG,), ("head.onnx",)),
        Case("model-install-trusted-key-garbage", TRUST_AREA,
             lambda c: ["model", "install", str(c.world.foreign_bundle), "--trusted-keys",
                        c.write("bad.public.pem", BINARY), *sd], (CONFIG,), ("bad.public.pem",)),
        Case("model-install-head-garbage", TRUST_AREA,
             lambda c: ["model", "install", c.write("garbage.head", BINARY), *sd], (CONFIG,), ("garbage.head",)),
        Case("model-install-state-dir-under-file", TRUST_AREA,
             lambda c: ["model", "install", str(SHIPPED), "--state-dir", c.under_file("sd")], (CONFIG,),
             ("plain-file",)),
        Case("model-verify-backbone-truncated", TRUST_AREA,
             lambda c: ["model", "verify", "--allow-unsigned",
                        c.bundle_with("b", "backbone.onnx", (SHIPPED / "backbone.onnx").read_bytes()[:5000])],
             (CONFIG,), ("backbone.onnx",)),
        Case("model-list-active-json-garbage", TRUST_AREA,
             lambda c: ["model", "list", "--state-dir", c.state_dir("sd", b"{\"entry\": ")], (OK, CONFIG),
             ("active.json",), note="listed with a warning (0) or refused (2), naming active.json either way"),
        Case("model-active-set-unknown", TRUST_AREA,
             lambda c: ["model", "active", "--state-dir", c.dir("sd"), "--set", "no-such-model"], (CONFIG,),
             ("no-such-model",)),
        Case("model-remove-unknown", TRUST_AREA,
             lambda c: ["model", "remove", "no-such-model", "--state-dir", c.dir("sd")], (CONFIG,),
             ("no-such-model",)),
    ]


def _sign_keys_head_status_cases() -> list[Case]:
    return [
        Case("sign-key-garbage", TRUST_AREA,
             lambda c: ["sign", str(c.bundle()), "--key", c.write("bad.private.pem", BINARY)], (CONFIG,),
             ("bad.private.pem",)),
        Case("sign-key-is-public", TRUST_AREA,
             lambda c: ["sign", str(c.bundle()), "--key", str(c.world.public_key)], (CONFIG,),
             ("ground.public.pem",)),
        Case("sign-bundle-manifest-garbage", TRUST_AREA,
             lambda c: ["sign", c.bundle_with("b", "manifest.json", b"{\"format\": 1"), "--key",
                        str(c.world.private_key)], (CONFIG,), ("manifest.json",)),
        Case("keys-generate-under-file", TRUST_AREA,
             lambda c: ["keys", "generate", "--out", c.under_file("keys")], (CONFIG,), ("plain-file",)),
        Case("head-show-garbage", TRUST_AREA, lambda c: ["head", "show", c.write("garbage.head", BINARY)],
             (RUNTIME, CONFIG), ("garbage.head",),
             note="a one-shot command refusing its input (1) or an unreadable model file (2)"),
        Case("head-show-truncated", TRUST_AREA, lambda c: ["head", "show", c.truncated(c.world.head, "cut.head")],
             (RUNTIME, CONFIG), ("cut.head",),
             note="a one-shot command refusing its input (1) or an unreadable model file (2)"),
        Case("head-verify-garbage", TRUST_AREA,
             lambda c: ["head", "verify", c.write("garbage.head", BINARY), "--parent", str(SHIPPED)], (CONFIG,),
             ("garbage.head",)),
        Case("head-export-out-under-file", TRUST_AREA,
             lambda c: ["head", "export", "--model", str(SHIPPED), "--unsigned", "--out", c.under_file("d", "x.head")],
             (CONFIG,), ("plain-file",)),
        Case("head-add-data-garbage", TRUST_AREA,
             lambda c: ["head", "add", "--model", str(SHIPPED), "--data", c.write("garbage.npz", BINARY), "--out",
                        "new"], (RUNTIME,), ("garbage.npz",)),
        Case("head-add-into-package", TRUST_AREA,
             lambda c: ["head", "add", "--model", str(SHIPPED), "--data", str(c.world.npz), "--out",
                        c.in_package("contract-probe")], (CONFIG,), ("contract-probe",)),
        Case("head-support-data-garbage", TRUST_AREA,
             lambda c: ["head", "support", "--model", str(SHIPPED), "--data", c.write("garbage.npz", BINARY),
                        "--out", "sup"], (RUNTIME,), ("garbage.npz",)),
        Case("status-no-daemon", TRUST_AREA, lambda c: ["status", "--state-dir", c.dir("sd")], (RUNTIME,), ("sd",)),
        Case("status-socket-is-file", TRUST_AREA,
             lambda c: ["status", "--state-dir", str(Path(c.write("sd/status.sock", "x")).parent)], (RUNTIME,),
             ("sd",)),
        Case("instrument-sim-port-under-file", EXIT_AREA,
             lambda c: ["instrument-sim", "--port", c.under_file("tty"), "--count", "1"], (CONFIG,), ("plain-file",),
             timeout=30),
        Case("instrument-sim-unknown-mineral", EXIT_AREA,
             lambda c: ["instrument-sim", "--port", str(c.tmp / "tty"), "--count", "1", "--minerals", "Unobtainium"],
             (CONFIG,), ("Unobtainium",), timeout=30),
    ]


def _train_cases() -> list[Case]:
    tiny = ["--epochs", "1", "--arch", "compact", "-q"]
    return [  # torch makes each of these take well over 5 s
        Case("train-data-garbage", PRESENT_AREA,
             lambda c: ["train", "--data", c.write("garbage.npz", BINARY), "--out", "b", *tiny], (RUNTIME,),
             ("garbage.npz",), timeout=120, slow=True),
        Case("train-out-under-file", PRESENT_AREA,
             lambda c: ["train", "--data", str(c.world.npz), "--out", c.under_file("d", "b"), *tiny], (CONFIG,),
             ("plain-file",), timeout=120, slow=True),
        Case("train-param-unknown", PRESENT_AREA,
             lambda c: ["train", "--data", str(c.world.npz), "--out", "b", "--param", "bogus=1", *tiny], (CONFIG,),
             ("bogus",), timeout=120, slow=True),
    ]


def _dataset_cases() -> list[Case]:
    def build(c: Ctx, *sources: str, out: str = "lib.npz", extra: Sequence[str] = ()) -> list[str]:
        return ["dataset", "build", *sources, "--out", out, *extra]

    return [
        Case("dataset-build-source-missing", CALIB_AREA, lambda c: build(c, f"{c.tmp}/nonexistent.zip"), (CONFIG,),
             ("nonexistent.zip",)),
        Case("dataset-build-zip-garbage", CALIB_AREA, lambda c: build(c, c.write("LR-Raman.zip", BINARY)), (RUNTIME,),
             ("LR-Raman.zip",)),
        Case("dataset-build-npz-garbage", CALIB_AREA, lambda c: build(c, c.write("garbage.npz", BINARY)), (RUNTIME,),
             ("garbage.npz",)),
        Case("dataset-build-folder-empty", CALIB_AREA, lambda c: build(c, c.dir("empty-folder")), (RUNTIME,),
             ("empty-folder",)),
        Case("dataset-build-only-file-unreadable", CALIB_AREA,
             lambda c: build(c, c.write("calcite-inf.txt", rruff_text(inf_at=5))), (RUNTIME,), ("calcite-inf.txt",)),
        Case("dataset-build-out-under-file", CALIB_AREA,
             lambda c: build(c, str(c.world.rruff), out=c.under_file("d", "lib.npz")), (CONFIG,), ("plain-file",)),
        Case("dataset-build-json-under-file", CALIB_AREA,
             lambda c: build(c, str(c.world.rruff), extra=["--json", c.under_file("d", "lib.json")]), (CONFIG,),
             ("plain-file",)),
        Case("dataset-build-grid-abc", CALIB_AREA, lambda c: build(c, str(c.world.rruff), extra=["--grid", "abc"]),
             (CONFIG,), ("--grid",)),
    ]


def _sim_sample_cases() -> list[Case]:
    return [
        Case("run-sim-unknown-abc", EXIT_AREA, lambda c: _run(c, "--source", "sim://?unknown=abc"), (CONFIG,),
             ("unknown",)),
        Case("run-sim-unknown-above-one", EXIT_AREA, lambda c: _run(c, "--source", "sim://?unknown=2"), (CONFIG,),
             ("unknown",)),
        Case("run-sim-sample-unknown-kind", EXIT_AREA, lambda c: _run(c, "--source", "sim://?sample=lorentz"),
             (CONFIG,), ("sample",)),
    ]


def catalogue() -> list[Case]:
    """Every case, in command order."""
    return (_run_cases() + _sim_sample_cases() + _downlink_cases() + _peaks_show_cases() + _calibrate_cases()
            + _bench_cases() + _model_cases() + _sign_keys_head_status_cases() + _train_cases() + _dataset_cases())
