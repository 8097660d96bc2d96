"""The downlink file format: primitives, spectrum codecs, and a reader that salvages damaged files."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from calibration.errors import ReaderError
from edge import downlink as dl
from edge.downlink import DownlinkFormatError, decode_spectrum, encode_spectrum, pack, read_downlink
from edge.store import ResultLog

from .test_downlink_pass import fill


def _decode(blob: bytes) -> tuple[np.ndarray, str, float]:
    cur = dl._Cursor(blob, 0, len(blob))
    out = decode_spectrum(cur)
    assert cur.pos == len(blob)
    return out


@given(st.lists(st.integers(-(2 ** 62), 2 ** 62), max_size=20))
def test_varints_round_trip(values: list[int]) -> None:
    blob = b"".join(dl._zz(v) + dl._uv(abs(v)) for v in values)
    cur = dl._Cursor(blob, 0, len(blob))
    assert [(cur.zz(), cur.uv()) for _ in values] == [(v, abs(v)) for v in values]
    assert cur.pos == len(blob)


def test_checksum_parameters_are_the_documented_ones() -> None:
    assert dl._crc16(b"123456789") == 0x29B1  # CRC-16/CCITT-FALSE check value
    assert zlib.crc32(b"123456789") == 0xCBF43926  # CRC-32 (IEEE) check value


@given(arrays(np.float64, st.integers(0, 200), elements=st.floats(allow_nan=True, allow_infinity=True, width=64)))
@settings(max_examples=150, deadline=None)
def test_lossless_is_exact_for_any_float64(x: np.ndarray) -> None:
    y, codec, bound = _decode(encode_spectrum(x))
    assert np.array_equal(y, x, equal_nan=True) and np.array_equal(np.signbit(y), np.signbit(x))
    assert bound == 0.0 and codec in ("int", "float32", "float64")


@given(arrays(np.int64, st.integers(1, 300), elements=st.integers(-(2 ** 50), 2 ** 50)))
@settings(max_examples=80, deadline=None)
def test_lossless_integers_any_range(x: np.ndarray) -> None:
    y, codec, _ = _decode(encode_spectrum(x.astype(np.float64)))
    assert codec == "int" and np.array_equal(y, x.astype(np.float64))


@given(arrays(np.float64, st.integers(1, 300), elements=st.floats(-1e12, 1e12, allow_nan=False, width=64)),
       st.sampled_from([1e-4, 1e-3, 2e-3, 5e-3, 0.05]))
@settings(max_examples=150, deadline=None)
def test_quantised_stays_within_its_bound(x: np.ndarray, eps: float) -> None:
    blob = encode_spectrum(x, eps)
    peak = np.max(np.abs(x))
    if blob is None:  # no float32 step for such a range: the packer falls back to lossless
        assert not 1e-30 < peak < 1e30
        return
    y, codec, bound = _decode(blob)
    assert codec == "quantised"
    assert np.max(np.abs(y - x)) <= eps * peak
    assert bound <= eps * peak


def test_quantised_refuses_non_finite_and_saves_bytes(rng: np.random.Generator) -> None:
    x = rng.poisson(800 + 3000 * np.exp(-0.5 * ((np.arange(1024) - 400) / 4) ** 2)).astype(np.float64)
    lossless, fine, coarse = encode_spectrum(x), encode_spectrum(x, 2e-3), encode_spectrum(x, 5e-3)
    assert len(coarse) < len(fine) < len(lossless) < 2 * x.size
    bad = x.copy()
    bad[3] = np.nan
    assert encode_spectrum(bad, 2e-3) is None and encode_spectrum(np.zeros(10), 2e-3) is None


@pytest.fixture(scope="module")
def pass_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, list[dl.DownlinkRecord]]:
    db = tmp_path_factory.mktemp("fmt") / "r.sqlite"
    fill(db, n=25, seed=3, n_points=128)
    with ResultLog(db) as log:
        data = pack(log, 6000, 1).data
    full = read_downlink(data)
    assert len(full.records) > 10 and any(r.spectrum is not None for r in full.records)
    return data, full.records


def _header_end(data: bytes) -> int:
    return 13 + struct.unpack_from("<I", data, 9)[0] + 4


def _same(a: dl.DownlinkRecord, b: dl.DownlinkRecord) -> bool:
    same_spectrum = (a.spectrum is None and b.spectrum is None) or \
        np.array_equal(a.spectrum, b.spectrum, equal_nan=True)
    return a.id == b.id and a.acquired_utc == b.acquired_utc and a.label == b.label and same_spectrum


def test_truncation_yields_the_records_before_the_cut(pass_file: tuple[bytes, list[dl.DownlinkRecord]]) -> None:
    data, full = pass_file
    hend = _header_end(data)
    ends = [r.offset for r in full[1:]] + [len(data) - dl.TRAILER_SIZE]
    cuts = sorted({*range(0, hend + 3), *(e + d for e in ends for d in (-2, -1, 0, 1)),
                   *range(len(data) - 12, len(data))})
    for cut in cuts:
        if cut < hend:
            with pytest.raises(DownlinkFormatError) as e:
                read_downlink(data[:cut], strict=False)
            assert "offset" in str(e.value) and e.value.offset <= max(cut, 9)
            continue
        f = read_downlink(data[:cut], strict=False)
        whole = sum(1 for e in ends if e <= cut)  # records wholly inside the cut
        assert f.damage is not None and f.damage.offset <= cut
        assert len(f.records) == whole, cut
        assert all(_same(a, b) for a, b in zip(f.records, full))
        with pytest.raises(DownlinkFormatError) as e:
            read_downlink(data[:cut])
        assert e.value.partial is not None and len(e.value.partial.records) == whole


@given(st.data())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_flipped_bit_is_caught_and_earlier_records_survive(pass_file: tuple[bytes, list[dl.DownlinkRecord]],
                                                                data: st.DataObject) -> None:
    good, full = pass_file
    pos = data.draw(st.integers(0, len(good) - 1))
    bit = data.draw(st.integers(0, 7))
    bad = bytearray(good)
    bad[pos] ^= 1 << bit
    try:
        f = read_downlink(bytes(bad), strict=False)
    except DownlinkFormatError as e:
        assert pos < _header_end(good)  # only a damaged header leaves nothing to salvage
        assert 0 <= e.offset <= _header_end(good)
        return
    assert f.damage is not None, pos  # every single-bit error is detected
    before = sum(1 for r in full if r.offset <= pos) - 1  # records that end before the flipped byte
    before = max(before, 0) if pos < len(good) - dl.TRAILER_SIZE else len(full)
    assert len(f.records) >= before
    assert all(_same(a, b) for a, b in zip(f.records, full))


def test_garbage_and_foreign_files_are_refused_with_an_offset(pass_file: tuple[bytes, list[dl.DownlinkRecord]],
                                                              tmp_path: Path) -> None:
    data, full = pass_file
    for junk, offset, what in [
        (b"", 0, "not a raman-edge downlink file"),
        (b"hello world, this is not it", 0, "not a raman-edge downlink file"),
        (dl.MAGIC, 8, "truncated"),
        (dl.MAGIC + b"\x02" + data[9:], 8, "format version 2"),
        (data[:20] + bytes([data[20] ^ 0xFF]) + data[21:], 9, "header checksum"),
        (data[:10] + bytes([data[10] ^ 0x01]) + data[11:], 9, "header checksum"),  # the length field itself
    ]:
        with pytest.raises(DownlinkFormatError, match=what) as e:
            read_downlink(junk, strict=False)
        assert e.value.offset == offset and f"offset {offset}" in str(e.value)
        assert isinstance(e.value, ReaderError)
    f = read_downlink(data + b"\x00junk", strict=False)
    assert len(f.records) == len(full) and f.damage.offset == len(data) and "unexpected" in str(f.damage)
    with pytest.raises(ReaderError, match="cannot read"):
        read_downlink(tmp_path / "missing.rdl")
