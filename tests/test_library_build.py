"""`raman-edge dataset build` and calibration.library: sources, names, resampling, duplicates, provenance."""
from __future__ import annotations

import hashlib
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from calibration.dataset import load_dataset
from calibration.errors import ConfigError, InputError
from calibration.library import build, class_names, normalise_name, parse_grid, specimen_from_file
from calibration.preprocess import DEFAULT_SPEC, Preprocessor
from edge.cli import main
from tests.conftest import BANDS, lorentz, shared_data

GRID = "100:1500:1"


def rruff_txt(mineral: str, specimen: str, *, filetype: str = "Raman RAW", laser: str = "532",
              start: float = 150.0, stop: float = 1400.0, shift: float = 0.0, bands: str = "Calcite") -> str:
    """A RRUFF ``.txt`` file with the headers RRUFF writes, on an uneven 1.3 cm-1 axis."""
    axis = np.arange(start, stop, 1.3)
    y = 50.0 + 1000.0 * lorentz(axis - shift, BANDS[bands])
    head = [f"##NAMES={mineral}", f"##RRUFFID={specimen}", "##LOCALITY=Somewhere,", "  continued on a second line",
            f"##FILETYPE={filetype}", f"##RAMAN WAVELENGTH={laser}", ""]
    return "\n".join(head + [f"{x:.3f}, {v:.4f}" for x, v in zip(axis, y)] + ["##END=", ""])


def rruff_name(mineral: str, sample: str, laser: str, kind: str, n: int) -> str:
    """A RRUFF file name: ``Mineral__R040063-4__Raman__514__0__ccw__Raman_Data_RAW__1507.txt``."""
    return f"{mineral}__{sample}__Raman__{laser}__0__unoriented__Raman_Data_{kind}__{n}.txt"


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """Five good RRUFF files (two spellings of one mineral), one binary file, one off the grid, a README."""
    d = tmp_path / "rruff"
    d.mkdir()
    files = {
        rruff_name("Calcite", "R040070-1", "532", "RAW", 1): rruff_txt("Calcite", "R040070"),
        rruff_name("Calcite", "R040070-1", "785", "Processed", 2):
            rruff_txt("Calcite", "R040070", filetype="Raman Processed", laser="785", shift=3.0),
        rruff_name("AgarditeY", "R060711-2", "532", "RAW", 3): rruff_txt("Agardite-(Y)", "R060711", bands="Quartz"),
        rruff_name("AgarditeY", "R060711-2", "780", "RAW", 4):
            rruff_txt("agardite (Y)", "R060711", laser="780", bands="Quartz", shift=2.0),
        rruff_name("Hematite", "R050300-1", "514", "Processed", 5):
            rruff_txt("Hematite", "R050300", filetype="Raman Processed", laser="514", bands="Hematite"),
        "Broken__R000001-1__Raman__532__0__unoriented__Raman_Data_RAW__6.txt": "##NAMES=Broken\n\x00\x01binary",
        "Far__R000002-1__Raman__532__0__unoriented__Raman_Data_RAW__7.txt":
            rruff_txt("Far", "R000002", start=1450.0, stop=3000.0),
    }
    for name, text in files.items():
        (d / name).write_text(text, encoding="utf-8")
    (d / "README.md").write_text("not a spectrum\n")
    return d


def zip_of(files: list[Path], out: Path, inner: str = "") -> Path:
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            zf.write(f, inner + f.name)
    return out


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("spelling, expected", [
    ("Calcite", "Calcite"), ("calcite", "Calcite"), ("Agardite-(Y)", "AgarditeY"), ("AgarditeY", "AgarditeY"),
    ("Alum (K)", "AlumK"), ("Hainite-(Y)", "HainiteY"), ("roselitebeta", "Roselitebeta"),
    ("Roselite-β", "Roselitebeta"), ("Bastnäsite-(Ce)", "BastnasiteCe"),
    ("Magnesiotaaffeite-2N2S", "Magnesiotaaffeite2N2S"),
    ("AlSO4OH", "AlSO4OH"), ("Axinite_(Fe)", "AxiniteFe"), ("-()", ""),
])
def test_normalise_name(spelling: str, expected: str) -> None:
    assert normalise_name(spelling) == expected


def test_spellings_that_differ_in_case_merge_into_the_most_frequent_form_whatever_the_order() -> None:
    counts = {"Agardite-(Y)": 3, "AGARDITEY": 1, "Roselite": 5, "roselitebeta": 2, "Uranophanealpha": 1}
    names = class_names(counts)
    assert names == {"Agardite-(Y)": "AgarditeY", "AGARDITEY": "AgarditeY", "Roselite": "Roselite",
                     "roselitebeta": "Roselitebeta", "Uranophanealpha": "Uranophanealpha"}
    assert class_names(dict(reversed(list(counts.items())))) == names
    assert class_names({"ALBITE": 2, "Albite": 2})["ALBITE"] == "ALBITE"  # a tie: the form that sorts first


def test_specimen_from_file_name() -> None:
    assert specimen_from_file("Actinolite__R040063-4__Raman__514__0__ccw__Raman_Data_Processed__1507.txt") == "R040063"
    assert specimen_from_file("Abhurite__R060227__Raman__532__0__unoriented__Raman_Data_Processed__33408.txt") \
        == "R060227"
    for field, specimen in [("R050177-3_1", "R050177"), ("R060353_a", "R060353"), ("X070005.3", "X070005"),
                            ("R040022 perp to fiber axes", "R040022"), ("altered", "")]:
        assert specimen_from_file(f"Mineral__{field}__Raman__532__0__unoriented__Raman_Data_Processed__1.txt") \
            == specimen
    assert specimen_from_file("raw_train.npz[3]") == ""
    assert specimen_from_file("Mineral__R1234__Raman__532.txt") == ""


@pytest.mark.parametrize("text", ["abc", "1:2", "200:100:1", "0:10:0", "0:nan:1", "0:100000:1", "0:10:1"])
def test_bad_grids_are_configuration_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="--grid"):
        parse_grid(text)


# --------------------------------------------------------------------------- synthetic sources (always run)


def test_folder_and_zip_of_the_same_files_give_duplicates_with_both_origins(folder: Path, tmp_path: Path) -> None:
    good = sorted(p for p in folder.glob("*.txt") if not p.name.startswith(("Broken", "Far")))
    archive = zip_of(good, tmp_path / "LR-Raman.zip", inner="LR-Raman/")
    lib = build([folder, archive], GRID)
    rep = lib.report()

    assert len(lib) == 5
    assert sorted(set(lib.labels.tolist())) == ["AgarditeY", "Calcite", "Hematite"]
    assert rep["names"]["classes_merged"] == {"AgarditeY": ["Agardite-(Y)", "agardite (Y)"]}
    assert rep["names"]["spellings_renamed"] == {"Agardite-(Y)": "AgarditeY", "agardite (Y)": "AgarditeY"}

    # Every file of the zip is already in the library from the folder: dropped, both origins named.
    dup = rep["duplicates"]
    assert dup["dropped"] == 5
    assert dup["by_sources"] == [{"kept_in": "rruff", "dropped_from": "LR-Raman.zip", "count": 5}]
    first = dup["pairs"][0]
    assert first["kept"].startswith("rruff:") and first["dropped"].startswith("LR-Raman.zip:LR-Raman/")
    assert first["kept"].split(":", 1)[1] == first["dropped"].rsplit("/", 1)[1]
    assert not dup["label_conflicts"]

    # The broken and the off-grid file are reported, with their reasons; README.md is ignored.
    bad = {u["item"]: u["reason"] for u in rep["unreadable"]}
    assert set(bad) == {"Broken__R000001-1__Raman__532__0__unoriented__Raman_Data_RAW__6.txt",
                        "Far__R000002-1__Raman__532__0__unoriented__Raman_Data_RAW__7.txt"}
    assert "binary" in bad["Broken__R000001-1__Raman__532__0__unoriented__Raman_Data_RAW__6.txt"]
    assert "covers" in bad["Far__R000002-1__Raman__532__0__unoriented__Raman_Data_RAW__7.txt"]
    assert rep["sources"][0]["ignored"] == 1

    # Provenance columns from the headers and the file names.
    row = {f: i for i, f in enumerate(lib.files.tolist())}
    i = row[rruff_name("Calcite", "R040070-1", "785", "Processed", 2)]
    assert (lib.labels[i], lib.specimens[i], lib.kind[i], lib.laser_nm[i], lib.source[i]) == \
        ("Calcite", "R040070", "processed", 785.0, "rruff")
    j = row[rruff_name("AgarditeY", "R060711-2", "532", "RAW", 3)]
    assert (lib.labels[j], lib.specimens[j], lib.kind[j], lib.laser_nm[j]) == ("AgarditeY", "R060711", "raw", 532.0)


def test_resampling_is_linear_with_zeros_outside_the_measured_range(folder: Path) -> None:
    name = rruff_name("Calcite", "R040070-1", "532", "RAW", 1)
    lib = build([folder / name], GRID)
    grid = np.arange(100.0, 1501.0, 1.0)
    assert np.array_equal(lib.wavenumbers, grid.astype(np.float32))
    axis = np.arange(150.0, 1400.0, 1.3)
    y = 50.0 + 1000.0 * lorentz(axis, BANDS["Calcite"])
    expected = np.interp(grid, axis, np.round(y, 4), left=0.0, right=0.0)
    assert np.allclose(lib.spectra[0], expected, rtol=1e-5, atol=1e-3)
    assert np.all(lib.spectra[0][grid < 150.0] == 0) and np.all(lib.spectra[0][grid > axis[-1]] == 0)
    assert lib.spectra[0][grid == 200.0][0] > 0


def test_npz_source_keeps_files_and_infers_columns_and_reports_bad_rows(tmp_path: Path) -> None:
    wn = np.arange(200.0, 1592.0, 1.0, dtype=np.float32)
    spectra = np.stack([100 + 1000 * lorentz(wn.astype(float), BANDS[m]) for m in ("Calcite", "Quartz", "Diamond")])
    spectra = np.vstack([spectra, np.full((1, wn.size), np.nan), np.zeros((1, wn.size))]).astype(np.float32)
    labels = np.array(["calcite", "Quartz", "Diamond", "Calcite", "Calcite"])
    files = np.array([rruff_name("Calcite", "R040070-1", "514", "RAW", 1), rruff_name("Quartz", "R040031", "780",
                      "Processed", 2), "diamond-7", "nan-row", "zero-row"])
    src = tmp_path / "raw_train.npz"
    np.savez(src, spectra=spectra, labels=labels, wavenumbers=wn, files=files)
    plain = tmp_path / "plain.npz"
    np.savez(plain, spectra=spectra[2:3], labels=labels[2:3], wavenumbers=wn)

    lib = build([src, plain], "30:1599:1")
    rep = lib.report()
    assert lib.labels.tolist() == ["Calcite", "Quartz", "Diamond"]  # the plain Diamond is a duplicate
    assert lib.specimens.tolist() == ["R040070", "R040031", ""]
    assert lib.kind.tolist() == ["raw", "processed", "raw"]  # no RRUFF fields: the file's name says raw
    assert lib.laser_nm[:2].tolist() == [514.0, 780.0] and math.isnan(lib.laser_nm[2])
    assert {u["item"]: u["reason"] for u in rep["unreadable"]} == {
        "nan-row": "NaN or inf intensities",
        "zero-row": "no positive signal on the grid 30-1599 cm-1 (cannot be normalised)"}
    assert rep["duplicates"]["pairs"][0] | {} == {"kept": "raw_train.npz[2]", "dropped": "plain.npz[0]",
                                                  "kept_label": "Diamond", "dropped_label": "Diamond",
                                                  "kept_source": "raw_train.npz", "dropped_source": "plain.npz"}
    # The measured range 200-1591 is kept exactly; 30-199 and 1592-1599 are zero.
    g = lib.wavenumbers
    assert np.array_equal(lib.spectra[0][(g >= 200) & (g <= 1591)], spectra[0])
    assert not lib.spectra[:, g < 200].any() and not lib.spectra[:, g > 1591].any()


def test_identical_spectra_with_two_labels_are_a_reported_conflict(tmp_path: Path) -> None:
    wn = np.arange(200.0, 1592.0, 1.0, dtype=np.float32)
    y = (100 + 1000 * lorentz(wn.astype(float), BANDS["Calcite"])).astype(np.float32)
    np.savez(tmp_path / "a.npz", spectra=np.stack([y, y * 2]), labels=np.array(["Diadochite", "Diadochite"]),
             wavenumbers=wn)
    np.savez(tmp_path / "b.npz", spectra=y[None], labels=np.array(["Gelosaite"]), wavenumbers=wn)
    rep = build([tmp_path / "a.npz", tmp_path / "b.npz"], "200:1591:1").report()
    assert rep["duplicates"]["label_conflicts"] == [
        {"kept": "a.npz[0]", "dropped": "b.npz[0]", "kept_label": "Diadochite", "dropped_label": "Gelosaite",
         "kept_source": "a.npz", "dropped_source": "b.npz"}]
    assert rep["names"]["classes_lost_to_duplicates"] == ["Gelosaite"]


def test_output_loads_preprocesses_and_is_reproducible(folder: Path, tmp_path: Path) -> None:
    lib = build([folder], GRID)
    sha = lib.save(tmp_path / "lib.npz")
    assert sha == hashlib.sha256((tmp_path / "lib.npz").read_bytes()).hexdigest()
    assert build([folder], GRID).save(tmp_path / "again.npz") == sha  # same inputs, same bytes

    ds = load_dataset(tmp_path / "lib.npz")
    assert len(ds) == 5 and ds.spectra.dtype == np.float32
    assert set(ds.extras) == {"files", "specimens", "kind", "laser_nm", "source"}
    assert ds.specimen_ids().tolist() == ds.extras["specimens"].tolist()
    x = Preprocessor(DEFAULT_SPEC).batch(ds.spectra, ds.wavenumbers)  # what training does to every row
    assert x.shape == (5, 1392) and np.allclose(x.max(axis=1), 1.0)


def test_sources_that_give_nothing_are_refused(tmp_path: Path, folder: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="nothing usable: no RRUFF .txt file"):
        build([tmp_path / "empty"])
    fake = tmp_path / "LR-Raman.zip"
    fake.write_text("this is not a zip\n")
    with pytest.raises(InputError, match="not a zip archive"):
        build([folder, fake])
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.txt").write_bytes(b"##NAMES=X\n\x00\x01")
    with pytest.raises(InputError, match=r"nothing usable: none of 1 .*x\.txt"):
        build([broken])
    with pytest.raises(ConfigError, match="no such file"):
        build([tmp_path / "gone.zip"])


def test_zip_members_never_leave_the_temporary_folder(tmp_path: Path) -> None:
    """A member named with '..' is read under its base name only."""
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../../escaped__R040070-1__Raman__532__0__u__Raman_Data_RAW__1.txt",
                    rruff_txt("Calcite", "R040070"))
        zf.writestr("notes.pdf", b"%PDF")
    lib = build([archive], GRID)
    assert lib.files.tolist() == ["escaped__R040070-1__Raman__532__0__u__Raman_Data_RAW__1.txt"]
    assert lib.report()["sources"][0]["ignored"] == 1
    assert not list(tmp_path.parent.glob("escaped*")) and not list(tmp_path.glob("escaped*"))


# --------------------------------------------------------------------------- the command


def test_command_prints_the_summary_and_writes_the_json(folder: Path, tmp_path: Path) -> None:
    out, rep = tmp_path / "lib.npz", tmp_path / "lib.json"
    r = CliRunner().invoke(main, ["dataset", "build", str(folder), "--out", str(out), "--json", str(rep),
                                  "--grid", GRID])
    assert r.exit_code == 0, r.output
    doc = json.loads(rep.read_text())
    sha = hashlib.sha256(out.read_bytes()).hexdigest()
    assert doc["sha256"] == sha and f"sha256 {sha}" in r.output
    assert doc["spectra"] == 5 and doc["classes"] == 3 and doc["specimens"] == 3
    assert "rruff (folder): 5 read, 5 kept" in r.output
    assert "unreadable: 2" in r.output and "Broken__R000001-1" in r.output


@pytest.mark.parametrize("args, status, names", [
    (["MISSING"], 2, "MISSING"),
    (["FOLDER", "--grid", "1:0:1"], 2, "--grid"),
    (["FOLDER", "--out-under-file"], 2, "plain-file"),
    (["NOTZIP"], 1, "not-a-zip.zip"),
    (["EMPTY"], 1, "nothing usable"),
])
def test_command_bad_inputs_give_one_line_and_the_documented_status(args: list[str], status: int, names: str,
                                                                     folder: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "not-a-zip.zip").write_text("PK? no\n")
    (tmp_path / "plain-file").write_text("x")
    subst = {"MISSING": str(tmp_path / "MISSING.zip"), "FOLDER": str(folder), "NOTZIP": str(tmp_path / "not-a-zip.zip"),
             "EMPTY": str(tmp_path / "empty")}
    out = str(tmp_path / "plain-file" / "lib.npz") if "--out-under-file" in args else str(tmp_path / "lib.npz")
    argv = ["dataset", "build", *[subst.get(a, a) for a in args if a != "--out-under-file"], "--out", out]
    r = CliRunner().invoke(main, argv)
    errors = [ln for ln in r.output.splitlines() if ln.startswith(("raman-edge: error:", "Error:"))]
    assert r.exit_code == status, r.output
    assert len(errors) == 1 and names in errors[0], r.output
    assert "Traceback" not in r.output
    assert not (tmp_path / "lib.npz").exists()


# --------------------------------------------------------------------------- real RRUFF files


ACTINOLITE_RAW = "Actinolite__R040063-4__Raman__514__0-000____Raman_Data_RAW__4a9aac67bcdae13cb86fe4acb05b.txt"
ALBITE_PROCESSED = "Albite__R050402-8__Raman__514__90-000__ccw__Raman_Data_Processed__e4fab2d25e35be58326aaf88f0c2.txt"


def test_real_rruff_folder() -> None:
    src = shared_data("rruff-files")
    lib = build([src])
    rep = lib.report()
    assert len(lib) == 384 and not rep["unreadable"] and rep["duplicates"]["dropped"] == 0
    assert rep["classes"] == 6 and rep["specimens"] == 17 and rep["kinds"] == {"processed": 192, "raw": 192}
    assert rep["laser_nm"] == {"514": 384}
    row = {f: i for i, f in enumerate(lib.files.tolist())}
    i, j = row[ACTINOLITE_RAW], row[ALBITE_PROCESSED]
    assert (lib.labels[i], lib.specimens[i], lib.kind[i], lib.laser_nm[i]) == ("Actinolite", "R040063", "raw", 514.0)
    assert (lib.labels[j], lib.specimens[j], lib.kind[j], lib.laser_nm[j]) == ("Albite", "R050402", "processed", 514.0)
    assert sorted(set(lib.labels.tolist())) == ["Actinolite", "Adamite", "Aegirine", "Aenigmatite", "Akermanite",
                                                "Albite"]


def test_real_rruff_zips_built_here_duplicate_the_folder(tmp_path: Path) -> None:
    src = shared_data("rruff-files")
    raw = sorted(src.glob("*Raman_Data_RAW*.txt"))[:30]
    processed = sorted(src.glob("*Raman_Data_Processed*.txt"))[:20]
    zip_of(raw, tmp_path / "LR-Raman.zip")
    zip_of(processed, tmp_path / "excellent_unoriented.zip", inner="excellent_unoriented/")
    lib = build([tmp_path / "LR-Raman.zip", tmp_path / "excellent_unoriented.zip", src])
    rep = lib.report()
    assert len(lib) == 384
    assert rep["duplicates"]["by_sources"] == [
        {"kept_in": "LR-Raman.zip", "dropped_from": "rruff-files", "count": 30},
        {"kept_in": "excellent_unoriented.zip", "dropped_from": "rruff-files", "count": 20}]
    assert [s["kept"] for s in rep["sources"]] == [30, 20, 334]
    zipped = lib.source == "LR-Raman.zip"
    assert set(lib.kind[zipped].tolist()) == {"raw"} and set(lib.files[zipped].tolist()) == {p.name for p in raw}
    assert set(lib.kind[lib.source == "excellent_unoriented.zip"].tolist()) == {"processed"}


def test_real_npz_sources_keep_specimens_lasers_and_kinds(tmp_path: Path) -> None:
    d1 = np.load(shared_data("rruff-sang", "dataset_1_dev.npz"))
    small = tmp_path / "d1_small.npz"
    np.savez(small, spectra=d1["spectra"][:60], labels=d1["labels"][:60], files=d1["files"][:60],
             wavenumbers=d1["wavenumbers"])
    soysal = shared_data("rruff-soysal", "raw_train.npz")
    lib = build([small, soysal, small])
    rep = lib.report()
    assert len(lib) == 60 + 347
    assert rep["duplicates"]["by_sources"] == [{"kept_in": str(small), "dropped_from": f"{small}#2", "count": 60}]
    assert [s["kept"] for s in rep["sources"]] == [60, 347, 0]
    sang = lib.source == str(small)
    first = str(d1["files"][0])  # Actinolite__R040063-4__Raman__514__0__ccw__Raman_Data_Processed__1507.txt
    assert (lib.files[0], lib.specimens[0], lib.kind[0], lib.laser_nm[0]) == (first, "R040063", "processed", 514.0)
    assert np.array_equal(lib.spectra[:60], d1["spectra"][:60])  # Sang's grid is the default: unchanged
    assert set(lib.kind[~sang].tolist()) == {"raw"} and np.isnan(lib.laser_nm[~sang]).all()
    assert set(lib.specimens[~sang].tolist()) == {""}
    g = lib.wavenumbers  # Soysal's 200-1591 cm-1 comes out unchanged, zero around it
    raw = np.load(soysal)["spectra"]
    assert np.array_equal(lib.spectra[~sang][:, (g >= 200) & (g <= 1591)], raw)
    assert not lib.spectra[~sang][:, (g < 200) | (g > 1591)].any()
