"""replay:// source: datasets, RRUFF folders, single files, options and pacing."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest

from calibration.dataset import load_dataset
from calibration.errors import SourceError
from firmware_bridge.replay import ReplaySource, replay_path
from firmware_bridge.source import Acquisition

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
RAW_TRAIN = DATA / "rruff-soysal" / "raw_train.npz"


def _npz(folder: Path, n: int = 12, points: int = 40) -> Path:
    rng = np.random.default_rng(1)
    p = folder / "set.npz"
    np.savez(
        p,
        spectra=rng.random((n, points)).astype(np.float32),
        labels=np.array([f"M{i % 4}" for i in range(n)]),
        wavenumbers=np.linspace(200, 1200, points),
        files=np.array([f"M{i % 4}__R0600{i:02d}-2__x.txt" for i in range(n)]),
    )
    return p


def _rruff_text(mineral: str, n: int = 30) -> str:
    rows = [f"{120 + 3 * i}, {(i * 7) % 11}" for i in range(n)]
    return "\n".join([f"##NAMES={mineral}", "##RRUFFID=R010101", "##RAMAN WAVELENGTH=532", ""] + rows + ["##END="])


def _play(url: str) -> list[Acquisition]:
    with ReplaySource(url) as src:
        return list(src)


def test_raw_train_replay_yields_every_labelled_spectrum():
    if not RAW_TRAIN.exists():
        pytest.skip(f"{RAW_TRAIN} not found")
    ds = load_dataset(RAW_TRAIN)
    acqs = _play(f"replay://{RAW_TRAIN}")
    assert len(acqs) == len(ds) == 347
    assert [a.truth for a in acqs] == ds.labels.tolist()
    assert [a.seq for a in acqs] == list(range(347))
    for i in (0, 100, 346):
        np.testing.assert_array_equal(acqs[i].spectrum.intensities, ds.spectra[i])
        np.testing.assert_array_equal(acqs[i].spectrum.axis, ds.wavenumbers)
        assert acqs[i].spectrum.unit == "raman_shift"
        assert acqs[i].meta["index"] == i and acqs[i].source == f"replay://{RAW_TRAIN}"


def test_absolute_and_relative_urls(tmp_path, monkeypatch):
    p = _npz(tmp_path)
    absolute = _play(f"replay://{p}")           # replay:///tmp/.../set.npz
    assert f"replay://{p}".startswith("replay:///")
    monkeypatch.chdir(tmp_path.parent)
    relative = _play(f"replay://{tmp_path.name}/set.npz")  # netloc + path is a relative path
    assert replay_path(f"replay://{tmp_path.name}/set.npz") == Path(tmp_path.name) / "set.npz"
    monkeypatch.chdir(tmp_path)
    bare = _play("replay://set.npz")
    assert len(absolute) == len(relative) == len(bare) == 12
    assert [a.truth for a in absolute] == [a.truth for a in relative] == [a.truth for a in bare]
    assert absolute[3].meta["file"] == "M3__R060003-2__x.txt"


def test_percent_encoded_path(tmp_path):
    d = tmp_path / "with space"
    d.mkdir()
    p = _npz(d)
    assert len(_play("replay://" + str(p).replace(" ", "%20"))) == 12


def test_missing_path_names_it(tmp_path):
    missing = tmp_path / "nowhere" / "gone.npz"
    src = ReplaySource(f"replay://{missing}")
    with pytest.raises(SourceError, match="gone.npz"):
        src.open()
    with pytest.raises(SourceError, match="names no file"):
        ReplaySource("replay://")


def test_folder_with_a_corrupt_file_delivers_it_as_unreadable_and_goes_on(tmp_path, caplog):
    for name, mineral in [("a.txt", "Albite"), ("b.txt", "Calcite"), ("d.txt", "Quartz")]:
        (tmp_path / name).write_text(_rruff_text(mineral))
    (tmp_path / "c.txt").write_text(_rruff_text("Broken").replace("129, ", "129, oops"))
    (tmp_path / "notes.md").write_text("not a spectrum")
    (tmp_path / "README.txt").write_text("what these exports are")
    src = ReplaySource(f"replay://{tmp_path}")
    with caplog.at_level(logging.WARNING, logger="firmware_bridge.replay"), src:
        acqs = list(src)
    assert [a.truth for a in acqs] == ["Albite", "Calcite", None, "Quartz"]
    assert [a.seq for a in acqs] == [0, 1, 2, 3]
    assert [a.meta["file"] for a in acqs] == ["a.txt", "b.txt", "c.txt", "d.txt"]
    bad = acqs[2]
    assert "c.txt" in bad.meta["unreadable"] and "line" in bad.meta["unreadable"] and len(bad.spectrum) == 0
    assert all("unreadable" not in a.meta for a in acqs[:2] + acqs[3:])
    assert len(src.skipped) == 1
    bad_file, message = src.skipped[0]
    assert bad_file.endswith("c.txt") and message == bad.meta["unreadable"]
    assert "c.txt" in caplog.text


def test_folder_loop_delivers_a_bad_file_once(tmp_path):
    (tmp_path / "a.txt").write_text(_rruff_text("Albite"))
    (tmp_path / "b.txt").write_bytes(b"\xff\xfe\x00garbage")
    with ReplaySource(f"replay://{tmp_path}?loop=1") as src:
        acqs = [src.read() for _ in range(6)]
    assert [a.truth for a in acqs] == ["Albite", None] + ["Albite"] * 4
    assert [a.meta["pass"] for a in acqs] == [0, 0, 1, 2, 3, 4]
    assert "b.txt" in acqs[1].meta["unreadable"]
    assert len(src.skipped) == 1


def test_folder_of_only_bad_files_ends_even_with_loop(tmp_path):
    (tmp_path / "x.txt").write_text("nothing useful")
    with ReplaySource(f"replay://{tmp_path}?loop=1") as src:
        acqs = list(src)
    assert len(acqs) == 1 and "x.txt" in acqs[0].meta["unreadable"]
    assert len(src.skipped) == 1


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "README.md").write_text("no spectra here")
    with pytest.raises(SourceError, match="no spectrum files"):
        ReplaySource(f"replay://{tmp_path}").open()


def test_single_rruff_file(tmp_path):
    p = tmp_path / "Calcite__R050009-1__Raman__x.txt"
    p.write_text(_rruff_text("Calcite"))
    (acq,) = _play(f"replay://{p}")
    assert acq.truth == "Calcite" and acq.spectrum.meta["sample_id"] == "R050009-1" and len(acq.spectrum) == 30
    assert acq.meta["laser_nm"] == 532.0
    assert ReplaySource(f"replay://{p}").declared_axis() == ("raman_shift", 532.0)
    bad = tmp_path / "bad.txt"
    bad.write_text(_rruff_text("Calcite").replace("126, ", "126"))
    with pytest.raises(SourceError, match=r"bad\.txt.*line"):  # nothing to replay
        ReplaySource(f"replay://{bad}").open()
    assert ReplaySource(f"replay://{bad}").declared_axis() == (None, None)


def test_exhausted_source_raises_stop_iteration(tmp_path):
    p = _npz(tmp_path, n=2)
    with ReplaySource(f"replay://{p}") as src:
        src.read(), src.read()
        with pytest.raises(StopIteration):
            src.read()


def test_read_requires_open(tmp_path):
    with pytest.raises(SourceError, match="not open"):
        ReplaySource(f"replay://{_npz(tmp_path)}").read()


def test_start_count_shuffle_seed(tmp_path):
    p = _npz(tmp_path, n=12)
    window = [a.meta["index"] for a in _play(f"replay://{p}?start=3&count=5")]
    assert window == [3, 4, 5, 6, 7]
    assert [a.meta["index"] for a in _play(f"replay://{p}?start=10")] == [10, 11]
    a = [x.meta["index"] for x in _play(f"replay://{p}?shuffle=1&seed=4")]
    b = [x.meta["index"] for x in _play(f"replay://{p}?shuffle=true&seed=4")]
    c = [x.meta["index"] for x in _play(f"replay://{p}?shuffle=1&seed=5")]
    assert a == b and sorted(a) == list(range(12)) and a != list(range(12)) and a != c
    s = [x.meta["index"] for x in _play(f"replay://{p}?start=2&count=4&shuffle=1&seed=0")]
    assert sorted(s) == [2, 3, 4, 5]


def test_loop_reshuffles_each_pass_and_keeps_seq_increasing(tmp_path):
    p = _npz(tmp_path, n=6)
    with ReplaySource(f"replay://{p}?loop=1&shuffle=1&seed=2") as src:
        acqs = [src.read() for _ in range(18)]
    passes = [[a.meta["index"] for a in acqs[k:k + 6]] for k in (0, 6, 12)]
    assert all(sorted(q) == list(range(6)) for q in passes)
    assert len({tuple(q) for q in passes}) > 1
    assert [a.seq for a in acqs] == list(range(18))


@pytest.mark.parametrize(
    "query,match",
    [("rate=fast", "rate"), ("rate=-1", "rate"), ("rate=nan", "rate"), ("loop=maybe", "loop"),
     ("start=-2", "start"), ("count=0", "count"), ("seed=x", "seed"), ("speed=2", "unknown")],
)
def test_bad_options(tmp_path, query, match):
    with pytest.raises(SourceError, match=match):
        ReplaySource(f"replay://{tmp_path}/x.npz?{query}")


def test_start_past_the_end(tmp_path):
    with pytest.raises(SourceError, match="start=50"):
        ReplaySource(f"replay://{_npz(tmp_path)}?start=50").open()


def test_rate_is_roughly_honoured(tmp_path):
    p = _npz(tmp_path, n=6)
    t0 = time.monotonic()
    acqs = _play(f"replay://{p}?rate=40")
    elapsed = time.monotonic() - t0
    # 6 acquisitions at 40 Hz: the first at once, then 5 periods of 25 ms.
    assert 0.1 <= elapsed < 1.5
    gaps = np.diff([a.acquired_at for a in acqs])
    assert gaps.min() > 0.015
    assert acqs[0].acquired_at == pytest.approx(time.time(), abs=5)


def test_rate_zero_is_unpaced_and_timeout_returns_none(tmp_path):
    p = _npz(tmp_path, n=12)
    t0 = time.monotonic()
    assert len(_play(f"replay://{p}")) == 12
    assert time.monotonic() - t0 < 1.0
    with ReplaySource(f"replay://{p}?rate=2") as src:
        assert src.read(timeout=0) is not None      # the first is due at once
        t0 = time.monotonic()
        assert src.read(timeout=0.05) is None      # the next only after 0.5 s
        assert time.monotonic() - t0 < 0.4
        assert src.read().seq == 1                 # nothing was lost by the timeout


def test_open_source_knows_replay(tmp_path):
    pytest.importorskip("firmware_bridge.sim", reason="open_source imports firmware_bridge.sim, not written yet")
    from firmware_bridge.source import open_source

    src = open_source(f"replay://{_npz(tmp_path)}")
    assert isinstance(src, ReplaySource)
