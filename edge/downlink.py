"""Downlink passes: the most valuable results first, in a compact, checksummed file that fits a budget.

A pass selects the results not yet sent, orders them like F Prime's DpCatalog orders
data products (priority, then acquisition time, then row id), and packs them greedily
into a file that never exceeds the byte budget.  Routine results travel as a summary
of about ten bytes; results the team must see (priority ≥ low confidence, or status
``error``) carry their raw spectrum as well, lossless or quantised to a stated error
bound, chosen per priority level by how much of the budget is left.  Only once the file
is written, fsynced and renamed into place are its rows marked as sent, in one
transaction; a crash before that leaves them for the next pass.

The byte-level format is specified in ``docs/downlink.md``; :func:`read_downlink` is
the ground-side reader (salvaging the intact records of a damaged file).
"""
from __future__ import annotations

import base64
import binascii
import datetime as _dt
import errno
import hashlib
import json
import logging
import lzma
import math
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from calibration.errors import ConfigError, ReaderError, StorageError

from .priority import INTEREST, LOW_CONFIDENCE
from .store import ResultLog, Row

log = logging.getLogger(__name__)

MAGIC = b"\x89REDL\r\n\x1a"
FORMAT_VERSION = 1
#: end marker (a record length of 0) + u32 record count + u32 CRC-32
TRAILER_SIZE = 9
#: the smallest possible record: length, flags, id delta, time delta, CRC-16
MIN_RECORD = 6
#: error messages travel truncated to this many UTF-8 bytes
MAX_ERROR_BYTES = 240

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9, "dict_size": 1 << 16}]
_LZMA_DECODE = [{"id": lzma.FILTER_LZMA2, "dict_size": 1 << 16}]
_WIDTHS = (1, 2, 4, 8)
_KINDS = ("int", "float32", "float64", "quantised")
_META_KEYS = ("integration_ms", "detector_temp_c")
_PRIORITY_NAMES = {0: "routine", 1: "low_confidence", 2: "interest", 3: "unreadable_or_novel"}

#: The record grammar, carried in every header (docs/downlink.md spells it out).
#: uv = LEB128 varint, zz = zigzag varint, "+" = delta from the previous record,
#: uv0 = 0 for none else table index + 1; all integers little-endian.
RECORD_SCHEMA = (
    "rec=len:uv body crc:u16(crc16-ccitt-false of len+body); len 0 ends: count:u32 crc32:u32(all before). "
    "body=flags:u8(b0-2 prio,7:+prio:zz; b3 error; b4 detail; b5 model; b6 reasons) id:zz+ t_ms:zz+ "
    "[b5 model:uv0] [b6 n:uv reason:uv*n] [!b4 label:uv0 [p:u8/255 margin:u8/255]] "
    "[b4 source:uv seq:zz calibration:uv0 truth:uv0 k:uv (class:uv p:u16/65535)*k error:uv+utf8 "
    "meta:u8(b0 integration_ms,b1 detector_temp_c) f32*bits axis:uv spectrum]. "
    "spectrum=codec:u8(b0-3 int|f32|f64|quantised; b4-5 width 1|2|4|8; b6 deflate|lzma2 dict 64k) n:uv "
    "[offset:f32 step:f32] len:uv data(byte planes of zz deltas of ints or q, or of f32|f64; x=offset+q*step). "
    "uv=LEB128 zz=zigzag +=delta uv0=0 none|index+1 LE"
)


# -- primitives -------------------------------------------------------------------------------
def _uv(n: int) -> bytes:
    """Unsigned LEB128 varint."""
    if n < 0:
        raise ValueError(f"uvarint of negative {n}")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _zz(n: int) -> bytes:
    """Zigzag-mapped signed varint."""
    return _uv(2 * n if n >= 0 else -2 * n - 1)


def _crc16(data: bytes) -> int:
    return binascii.crc_hqx(data, 0xFFFF)  # CRC-16/CCITT-FALSE


def _deflate(b: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
    return c.compress(b) + c.flush()


def _inflate(b: bytes, limit: int) -> bytes:
    d = zlib.decompressobj(-15)
    out = d.decompress(b, limit)
    if d.unconsumed_tail or not d.eof:
        raise ValueError("deflate stream is longer than declared or incomplete")
    return out


def _utc_ms(iso: str) -> int:
    """Milliseconds since 1970 of the store's ISO timestamp (exact)."""
    t = _dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    return (t - _EPOCH) // _dt.timedelta(milliseconds=1)


def _iso_ms(ms: int) -> str:
    t = _EPOCH + _dt.timedelta(milliseconds=ms)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Cursor:
    """Reads primitives from ``buf[pos:end]``; raises ValueError past ``end``."""

    def __init__(self, buf: bytes, pos: int, end: int) -> None:
        self.buf, self.pos, self.end = buf, pos, end

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise ValueError(f"field of {n} bytes runs past the record end")
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def u8(self) -> int:
        return self.take(1)[0]

    def uv(self) -> int:
        n = shift = 0
        while True:
            b = self.u8()
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                return n
            shift += 7
            if shift > 63:
                raise ValueError("varint longer than 64 bits")

    def zz(self) -> int:
        n = self.uv()
        return n >> 1 if not n & 1 else -((n + 1) >> 1)

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))


# -- spectrum codecs --------------------------------------------------------------------------
def _shuffled(values: np.ndarray, width: int) -> bytes:
    """Byte planes one after another (all low bytes, then the next...): compresses far better."""
    return np.ascontiguousarray(values.astype(f"<u{width}").view(np.uint8).reshape(-1, width).T).tobytes()


def _unshuffled(b: bytes, width: int, n: int) -> np.ndarray:
    if len(b) != width * n:
        raise ValueError(f"spectrum data holds {len(b)} bytes, expected {width * n}")
    return np.ascontiguousarray(np.frombuffer(b, np.uint8).reshape(width, n).T).view(f"<u{width}").reshape(n)


def _zigzag_deltas(q: np.ndarray) -> np.ndarray:
    d = np.diff(q.astype(np.int64), prepend=np.int64(0))
    return ((d << 1) ^ (d >> 63)).astype(np.uint64)


def _undo_zigzag_deltas(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.uint64)
    d = (z >> np.uint64(1)).astype(np.int64) ^ -(z & np.uint64(1)).astype(np.int64)
    return np.cumsum(d)


def _pack(kind: int, values: np.ndarray, width: int, extra: bytes, n: int) -> bytes:
    raw = _shuffled(values, width)
    options = [(0, _deflate(raw)), (1, lzma.compress(raw, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS))]
    comp, data = min(options, key=lambda o: len(o[1]))
    codec = kind | (_WIDTHS.index(width) << 4) | (comp << 6)
    return bytes([codec]) + _uv(n) + extra + _uv(len(data)) + data


def encode_spectrum(x: np.ndarray, max_rel_error: float = 0.0) -> bytes | None:
    """Encode one spectrum: lossless when ``max_rel_error`` is 0, else quantised.

    Lossless: integer counts as zigzag deltas; other values as their float32 (when
    exact) or float64 bits.  Quantised: ``x ≈ offset + q·step`` with ``step`` chosen so
    that ``|x̂ − x| ≤ max_rel_error · max|x|`` (checked here, on the decoded values).
    Returns None when a quantised encoding does not apply (non-finite or all-zero values).
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    n = x.size
    finite = bool(np.all(np.isfinite(x)))
    if max_rel_error > 0:
        peak = float(np.max(np.abs(x))) if n else 0.0
        if not finite or peak == 0.0:
            return None
        step = np.float32(2.0 * max_rel_error * peak * (1 - 1e-6))
        if float(step) > 2.0 * max_rel_error * peak:  # float32 rounded it up (tiny ranges)
            step = np.nextafter(step, np.float32(0))
        offset = np.float32(np.min(x))
        if not (np.isfinite(step) and step > 0 and np.isfinite(offset)):
            return None
        q = np.rint((x - float(offset)) / float(step)).astype(np.int64)
        if np.max(np.abs(float(offset) + q * float(step) - x)) > max_rel_error * peak:
            return None  # float rounding ate the margin (pathological ranges): not within the bound
        z = _zigzag_deltas(q)
        width = next(w for w in _WIDTHS if w == 8 or int(z.max(initial=0)) < 1 << (8 * w))
        return _pack(3, z, width, struct.pack("<ff", offset, step), n)
    if finite and np.all(x == np.round(x)) and np.all(np.abs(x) < 2.0 ** 53) and not np.signbit(x[x == 0]).any():
        z = _zigzag_deltas(x.astype(np.int64))
        width = next(w for w in _WIDTHS if w == 8 or int(z.max(initial=0)) < 1 << (8 * w))
        return _pack(0, z, width, b"", n)
    with np.errstate(over="ignore", invalid="ignore"):
        exact32 = np.array_equal(x.astype(np.float32).astype(np.float64), x, equal_nan=True) and \
            np.array_equal(np.signbit(x.astype(np.float32)), np.signbit(x))
    if exact32:
        return _pack(1, x.astype("<f4").view("<u4"), 4, b"", n)
    return _pack(2, x.astype("<f8").view("<u8"), 8, b"", n)


def decode_spectrum(cur: _Cursor) -> tuple[np.ndarray, str, float]:
    """Inverse of :func:`encode_spectrum`: (values, codec kind, absolute error bound)."""
    codec = cur.u8()
    kind, width, comp = codec & 0x0F, _WIDTHS[(codec >> 4) & 3], (codec >> 6) & 1
    if kind >= len(_KINDS) or codec & 0x80:
        raise ValueError(f"unknown spectrum codec 0x{codec:02x}")
    n = cur.uv()
    if n > 1 << 24:
        raise ValueError(f"spectrum of {n} points is implausible")
    offset = step = 0.0
    if kind == 3:
        offset, step = (float(v) for v in cur.unpack("<ff"))
    data = cur.take(cur.uv())
    if comp == 0:
        raw = _inflate(data, width * n + 1)
    else:
        try:  # bounded: a damaged stream must not expand without limit
            raw = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_LZMA_DECODE).decompress(
                data, max_length=width * n + 1)
        except lzma.LZMAError as e:
            raise ValueError(f"lzma: {e}") from None
    v = _unshuffled(raw, width, n)
    if kind == 0:
        return _undo_zigzag_deltas(v).astype(np.float64), "int", 0.0
    if kind == 1:
        return v.view("<f4").astype(np.float64), "float32", 0.0
    if kind == 2:
        return v.view("<f8").astype(np.float64), "float64", 0.0
    return offset + _undo_zigzag_deltas(v) * step, "quantised", step / 2


def _axis_entry(unit: str, axis: np.ndarray) -> dict[str, Any]:
    axis = np.asarray(axis, dtype=np.float64)
    if axis.size >= 2:
        start, step = float(axis[0]), float(axis[1] - axis[0])
        if np.array_equal(start + step * np.arange(axis.size), axis):
            return {"unit": unit, "n": int(axis.size), "start": start, "step": step}
    blob = encode_spectrum(axis)
    assert blob is not None
    return {"unit": unit, "n": int(axis.size), "values": base64.b64encode(blob).decode()}


def _axis_values(entry: dict[str, Any]) -> np.ndarray:
    n = int(entry["n"])
    if "values" in entry:
        blob = base64.b64decode(entry["values"])
        values, _, _ = decode_spectrum(_Cursor(blob, 0, len(blob)))
        if values.size != n:
            raise ValueError(f"axis holds {values.size} values, header says {n}")
        return values
    return float(entry["start"]) + float(entry["step"]) * np.arange(n)


# -- policy -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DownlinkPolicy:
    """Which results carry their spectrum, and how faithfully.

    Parameters
    ----------
    spectra_from : int
        Results of this priority or higher (and every ``error`` result) carry their spectrum.
    lossless_from : int
        From this priority on, the spectrum goes lossless when the whole priority level fits.
    fine, coarse : float
        Error bounds of the two quantised rungs, relative to the spectrum's largest |value|.
    """

    spectra_from: int = LOW_CONFIDENCE
    lossless_from: int = INTEREST
    fine: float = 2e-3
    coarse: float = 5e-3

    def __post_init__(self) -> None:
        if not (0 < self.fine <= self.coarse < 0.5):
            raise ConfigError(f"downlink error bounds need 0 < fine <= coarse < 0.5, got fine={self.fine!r}, "
                              f"coarse={self.coarse!r}")

    def carries_spectrum(self, row: Row) -> bool:
        return row.status == "error" or row.priority >= self.spectra_from

    def ladder(self, row: Row) -> list[float]:
        """Encodings to try, best first: 0.0 = lossless, else the relative error bound."""
        if not np.all(np.isfinite(row.spectrum)):
            return [0.0]  # what could not be read goes exactly as measured, NaN and all
        if row.priority >= self.lossless_from or row.status == "error":
            return [0.0, self.fine, self.coarse]
        return [self.fine, self.coarse]


# -- writing ----------------------------------------------------------------------------------
class _Tables:
    """The header's lookup tables, filled in order of first use, with rollback."""

    NAMES = ("models", "sources", "calibrations", "truths", "reasons", "axes")

    def __init__(self) -> None:
        self.lists: dict[str, list[Any]] = {k: [] for k in self.NAMES}
        self.index: dict[str, dict[Any, int]] = {k: {} for k in self.NAMES}
        self.classes: list[list[str]] = []  # per model
        self.class_index: list[dict[str, int]] = []
        self._journal: list[tuple[str, Any]] = []

    def idx(self, table: str, key: Any, value: Any = None) -> int:
        i = self.index[table].get(key)
        if i is None:
            i = len(self.lists[table])
            self.lists[table].append(key if value is None else value)
            self.index[table][key] = i
            self._journal.append((table, key))
            if table == "models":
                self.classes.append([])
                self.class_index.append({})
        return i

    def cls(self, model: int, name: str) -> int:
        i = self.class_index[model].get(name)
        if i is None:
            i = len(self.classes[model])
            self.classes[model].append(name)
            self.class_index[model][name] = i
            self._journal.append(("classes", (model, name)))
        return i

    def checkpoint(self) -> int:
        return len(self._journal)

    def rollback(self, cp: int) -> None:
        while len(self._journal) > cp:
            table, key = self._journal.pop()
            if table == "classes":
                model, name = key
                self.classes[model].pop()
                del self.class_index[model][name]
            else:
                self.lists[table].pop()
                del self.index[table][key]
                if table == "models":
                    self.classes.pop()
                    self.class_index.pop()

    def header_fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"models": [{"id": m, "classes": c} for m, c in zip(self.lists["models"], self.classes)]}
        for k in self.NAMES[1:]:
            if self.lists[k]:
                out[k] = self.lists[k]
        return out


class _Encoder:
    """Encodes rows into records, keeping the delta state and the header tables."""

    def __init__(self, meta: dict[str, Any]) -> None:
        self.meta = meta
        self.tables = _Tables()
        self.prev_id = self.prev_t = self.prev_model = 0
        self._header_cache: tuple[int, bytes] | None = None

    def header(self) -> bytes:
        cp = self.tables.checkpoint()
        if self._header_cache is None or self._header_cache[0] != cp:
            doc = dict(self.meta)
            doc.update(self.tables.header_fields())
            doc["priorities"] = _PRIORITY_NAMES
            doc["record"] = RECORD_SCHEMA
            body = _deflate(json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode())
            head = MAGIC + bytes([FORMAT_VERSION]) + struct.pack("<I", len(body)) + body
            self._header_cache = (cp, head + struct.pack("<I", zlib.crc32(head)))
        return self._header_cache[1]

    def record(self, row: Row, spectrum: bytes | None) -> tuple[bytes, tuple[int, int, int]]:
        """The framed record and the delta state after it (commit with :meth:`advance`)."""
        t = self.tables
        model = 0 if row.model_id is None and not row.topk else t.idx("models", row.model_id) + 1
        detail = spectrum is not None
        prio_bits = row.priority if 0 <= row.priority < 7 else 7
        flags = prio_bits | (row.status == "error") << 3 | detail << 4 | (model != self.prev_model) << 5 \
            | bool(row.reasons) << 6
        if row.status not in ("classified", "error"):
            raise StorageError(f"row {row.id}: status {row.status!r} cannot be downlinked")
        b = bytearray([flags])
        if prio_bits == 7:
            b += _zz(row.priority)
        t_ms = _utc_ms(row.acquired_utc)
        b += _zz(row.id - self.prev_id) + _zz(t_ms - self.prev_t)
        if model != self.prev_model:
            b += _uv(model)
        if row.reasons:
            b += _uv(len(row.reasons)) + b"".join(_uv(t.idx("reasons", r)) for r in row.reasons)
        if not detail:
            if row.label is None:
                b += _uv(0)
            else:
                b += _uv(t.cls(model - 1, row.label) + 1)
                b += bytes([_q8(row.probability), _q8(row.margin)])
        else:
            b += _uv(t.idx("sources", row.source)) + _zz(row.seq)
            b += _uv(0 if row.calibration_id is None else t.idx("calibrations", row.calibration_id) + 1)
            b += _uv(0 if row.truth is None else t.idx("truths", row.truth) + 1)
            b += _uv(len(row.topk))
            for name, p in row.topk:
                b += _uv(t.cls(model - 1, name)) + struct.pack("<H", int(round(min(max(p, 0.0), 1.0) * 65535)))
            err = _truncate_utf8(row.error or "", MAX_ERROR_BYTES)
            b += _uv(len(err)) + err
            mask, vals = 0, b""
            for bit, key in enumerate(_META_KEYS):
                v = row.meta.get(key)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    mask |= 1 << bit
                    vals += struct.pack("<f", v)
            b += bytes([mask]) + vals
            axis_key = (row.axis_unit, row.axis.tobytes())
            b += _uv(t.idx("axes", axis_key, _axis_entry(row.axis_unit, row.axis)))
            b += spectrum
        framed = _uv(len(b)) + b
        return framed + struct.pack("<H", _crc16(framed)), (row.id, t_ms, model)

    def advance(self, state: tuple[int, int, int]) -> None:
        self.prev_id, self.prev_t, self.prev_model = state


def _q8(p: float | None) -> int:
    return int(round(min(max(p or 0.0, 0.0), 1.0) * 255))


def _truncate_utf8(s: str, limit: int) -> bytes:
    b = s.encode("utf-8")
    if len(b) <= limit:
        return b
    return b[:limit - 3].decode("utf-8", "ignore").encode("utf-8") + "…".encode("utf-8")


@dataclass
class Packed:
    """One pass, packed in memory."""

    data: bytes
    row_ids: list[int]
    pass_no: int
    budget: int
    unsent_before: int
    by_priority: dict[int, dict[str, int]] = field(default_factory=dict)
    encodings: dict[str, int] = field(default_factory=dict)

    @property
    def spectra(self) -> int:
        return sum(v for k, v in self.encodings.items() if k != "summary")

    def report(self) -> dict[str, Any]:
        return {"pass": self.pass_no, "bytes": len(self.data), "budget_bytes": self.budget,
                "records": len(self.row_ids), "spectra": self.spectra, "unsent_before": self.unsent_before,
                "unsent_after": self.unsent_before - len(self.row_ids), "encodings": dict(self.encodings),
                "by_priority": {str(k): v for k, v in sorted(self.by_priority.items(), reverse=True)}}


def _rung_name(eps: float) -> str:
    return "lossless" if eps == 0 else f"bound {eps:g}"


def pack(store: ResultLog, budget: int, pass_no: int, policy: DownlinkPolicy | None = None,
         now: float | None = None) -> Packed:
    """Pack unsent results, most valuable first, into at most ``budget`` bytes.

    Policy (see docs/downlink.md): priority levels in descending order; within a level,
    oldest first.  A spectrum-carrying level goes at its best encoding when all of it
    fits in what is left, else at its compact encodings (dropping to the coarsest bound
    when a record does not fit).  A record that does not fit at all is skipped — smaller
    ones behind it still go — and stays unsent for the next pass.

    Raises
    ------
    ConfigError
        If the budget cannot hold even an empty file.
    """
    policy = policy or DownlinkPolicy()
    now = _dt.datetime.now(_dt.timezone.utc).timestamp() if now is None else now
    enc = _Encoder({
        "format": "raman-edge.downlink", "format_version": FORMAT_VERSION,
        "created_utc": _iso_ms(int(now * 1000)), "db": {"id": store.identity, "name": store.path.name},
        "pass": pass_no, "budget_bytes": int(budget),
    })
    empty = len(enc.header()) + TRAILER_SIZE
    if budget < empty:
        raise ConfigError(f"downlink budget of {budget} bytes cannot hold even an empty pass file ({empty} bytes)")
    out = Packed(b"", [], pass_no, int(budget), store.count_unsent())
    parts: list[bytes] = []
    used = 0  # record bytes
    # Encoding spectra is the costly part: once what is left is smaller than the smallest
    # spectrum record tried so far, spectrum records are no longer tried.
    smallest_spectrum = math.inf

    def room() -> int:
        return budget - len(enc.header()) - TRAILER_SIZE - used

    def try_add(row: Row, spectrum: bytes | None) -> bool:
        nonlocal used, smallest_spectrum
        cp = enc.tables.checkpoint()
        rec, state = enc.record(row, spectrum)
        if spectrum is not None:
            smallest_spectrum = min(smallest_spectrum, len(rec))
        if len(rec) <= room():
            enc.advance(state)
            parts.append(rec)
            used += len(rec)
            return True
        enc.tables.rollback(cp)
        return False

    for level, waiting in store.unsent_by_priority().items():
        out.by_priority[level] = {"sent": 0, "left": waiting}
    for level in store.unsent_priorities():
        if room() < MIN_RECORD:
            break
        rows = store.unsent(priority=level)
        # Does the whole level fit at its best encodings?  Stop summing once it cannot.
        cache: dict[tuple[int, float], bytes | None] = {}
        first_rung_fits, total = True, 0
        for row in store.unsent(priority=level):
            if policy.carries_spectrum(row):
                eps = policy.ladder(row)[0]
                cache[(row.id, eps)] = encode_spectrum(row.spectrum, eps)
                total += len(cache[(row.id, eps)] or b"") + 24  # + the record's other fields, roughly
            else:
                total += 12
            if total > room():
                first_rung_fits = False
                break
        for row in rows:
            if room() < MIN_RECORD:
                break
            counts = out.by_priority[row.priority]
            if not policy.carries_spectrum(row):
                ok, how = try_add(row, None), "summary"
            else:
                ladder = policy.ladder(row)
                if not first_rung_fits and len(ladder) > 1:
                    ladder = ladder[1:]
                ok, how = False, ""
                if smallest_spectrum == math.inf or room() >= smallest_spectrum:
                    for eps in ladder:
                        blob = cache.pop((row.id, eps), None) if (row.id, eps) in cache \
                            else encode_spectrum(row.spectrum, eps)
                        if blob is None:  # no quantised form (all zero, odd range): lossless instead
                            if eps == ladder[-1] and 0.0 not in ladder:
                                ladder.append(0.0)
                            continue
                        if try_add(row, blob):
                            ok, how = True, _rung_name(eps)
                            break
            if ok:
                out.row_ids.append(row.id)
                out.encodings[how] = out.encodings.get(how, 0) + 1
                counts["sent"] += 1
                counts["left"] -= 1
    body = enc.header() + b"".join(parts) + b"\x00" + struct.pack("<I", len(parts))
    out.data = body + struct.pack("<I", zlib.crc32(body))
    assert len(out.data) <= budget, (len(out.data), budget)
    return out


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


#: Errors of the medium, not of the path the operator chose.
_MEDIUM_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG})


def _out_error(out: Path, e: OSError) -> ConfigError | StorageError:
    """A full or failing disk is a storage error (3); an unusable path given as --out is configuration (2)."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageError(f"disk full: {out} ({e.strerror or e}); the pass file was not written")
    if e.errno in _MEDIUM_ERRNOS:
        return StorageError(f"{out}: cannot write downlink file: {e.strerror or e}")
    return ConfigError(f"--out {out}: cannot write downlink file: {e.strerror or e}")


def run_pass(store: ResultLog, out: Path | None, budget: int, policy: DownlinkPolicy | None = None,
             dry_run: bool = False, overwrite: bool = False) -> Packed | None:
    """One downlink pass: pack, write ``out`` (fsynced, renamed into place), then mark the rows sent.

    With ``dry_run`` nothing is written or marked (``out`` may be None).  Returns None
    when nothing is waiting to be sent.

    Raises
    ------
    ConfigError
        If ``out`` exists (unless ``overwrite``) or no waiting record fits in ``budget``.
    StorageError
        If the disk is full or failing, or the rows cannot be marked (they then stay unsent).
        An ``out`` that cannot be written for any other reason is a ConfigError.
    """
    if store.count_unsent() == 0:
        return None
    if dry_run:
        return pack(store, budget, store.next_pass(), policy)
    if out is None:
        raise ConfigError("a downlink pass needs an output file (--out)")
    out = Path(out)
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} exists (an earlier pass not yet sent?); choose another name or overwrite it")
    if not out.parent.is_dir():
        raise ConfigError(f"{out}: directory {out.parent} does not exist")
    pass_no = store.begin_pass(budget, out)
    try:
        packed = pack(store, budget, pass_no, policy)
        if not packed.row_ids:
            raise ConfigError(f"no waiting result fits in {budget} bytes ({store.count_unsent()} waiting; "
                              f"an empty pass file alone takes {len(packed.data)} bytes)")
        try:
            _write_atomically(out, packed.data)
        except OSError as e:
            raise _out_error(out, e) from None
        store.finish_pass(pass_no, packed.row_ids, len(packed.data), hashlib.sha256(packed.data).hexdigest())
    except BaseException as e:
        try:
            store.fail_pass(pass_no, f"{type(e).__name__}: {e}")
        except Exception as note_error:  # the original error matters more; no traceback over it
            log.warning("could not record the failure of downlink pass %d: %s", pass_no, note_error)
        raise
    log.info("downlink pass %d: %d records (%d spectra), %d bytes -> %s", pass_no, len(packed.row_ids),
             packed.spectra, len(packed.data), out)
    return packed


# -- reading ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DownlinkRecord:
    """One result as the ground reads it back."""

    offset: int
    id: int
    acquired_utc: str
    priority: int
    status: str
    reasons: list[str]
    model_id: str | None
    label: str | None
    probability: float | None
    margin: float | None
    topk: list[tuple[str, float]] = field(default_factory=list)
    source: str | None = None
    seq: int | None = None
    calibration_id: str | None = None
    truth: str | None = None
    error: str | None = None
    meta: dict[str, float] = field(default_factory=dict)
    axis_unit: str | None = None
    axis: np.ndarray | None = None
    spectrum: np.ndarray | None = None
    spectrum_codec: str | None = None
    #: largest |decoded − logged| of the spectrum (0 when lossless)
    error_bound: float | None = None

    def as_dict(self, spectra: bool = True) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("axis", "spectrum")}
        d["topk"] = [[c, p] for c, p in self.topk]
        if spectra and self.spectrum is not None:
            d["axis"] = [float(v) for v in self.axis] if self.axis is not None else None
            d["spectrum"] = [None if not math.isfinite(v) else float(v) for v in self.spectrum]
        return d


@dataclass(frozen=True)
class DownlinkFile:
    """A read pass file: its header, the intact records, and what was wrong with it if anything."""

    header: dict[str, Any]
    records: list[DownlinkRecord]
    size: int
    damage: "DownlinkFormatError | None" = None


class DownlinkFormatError(ReaderError):
    """A downlink file is not one, or is damaged; ``offset`` says where, ``partial`` what was salvaged."""

    def __init__(self, where: str, offset: int, problem: str, partial: DownlinkFile | None = None) -> None:
        super().__init__(f"{where}: at byte offset {offset}: {problem}")
        self.offset = offset
        self.partial = partial


def read_downlink(source: str | Path | bytes, strict: bool = True) -> DownlinkFile:
    """Read a pass file.

    Parameters
    ----------
    source : path or bytes
    strict : bool
        When True, any damage raises :class:`DownlinkFormatError` (its ``partial``
        holds the records before the damage, if the header was intact).  When False,
        damage after the header is returned in ``DownlinkFile.damage`` instead.

    Raises
    ------
    DownlinkFormatError
        Garbage, an unknown format version or a damaged header, always; damage after
        the header when ``strict``.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        buf, where = bytes(source), "<downlink bytes>"
    else:
        where = str(source)
        try:
            buf = Path(source).read_bytes()
        except OSError as e:
            raise ReaderError(f"{where}: cannot read downlink file: {e.strerror or e}") from None

    def fail(offset: int, problem: str) -> DownlinkFormatError:
        return DownlinkFormatError(where, offset, problem)

    if buf[:len(MAGIC)] != MAGIC:
        raise fail(0, f"not a raman-edge downlink file (starts with {buf[:8]!r}, expected {MAGIC!r})")
    if len(buf) < len(MAGIC) + 5:
        raise fail(len(buf), "file ends inside the header (truncated)")
    version = buf[8]
    if version != FORMAT_VERSION:
        raise fail(8, f"format version {version}; this reader reads version {FORMAT_VERSION}")
    (hlen,) = struct.unpack_from("<I", buf, 9)
    hend = 13 + hlen
    if hend + 4 > len(buf):
        raise fail(9, f"header of {hlen} bytes runs past the end of the {len(buf)}-byte file (truncated)")
    (hcrc,) = struct.unpack_from("<I", buf, hend)
    if zlib.crc32(buf[:hend]) != hcrc:
        # Offset 9, not hend: a damaged length field puts hend (and the checksum read) past the real header.
        raise fail(9, f"header checksum mismatch over bytes 0-{hend} (checksum at offset {hend}): "
                      "the header or its length field is damaged")
    try:
        header = json.loads(_inflate(buf[13:hend], 1 << 24))
        tables = _ReadTables(header)
    except (ValueError, KeyError, TypeError, zlib.error) as e:
        raise fail(13, f"header is not valid: {e}") from None

    records: list[DownlinkRecord] = []
    pos = hend + 4
    state = [0, 0, 0]  # previous id, time, model code

    def damaged(offset: int, problem: str) -> DownlinkFile:
        err = fail(offset, problem)
        partial = DownlinkFile(header, records, len(buf), err)
        err.partial = partial
        if strict:
            raise err
        return partial

    while True:
        start = pos
        if pos >= len(buf):
            return damaged(pos, f"file ends after record {len(records)} without the end marker (truncated)")
        cur = _Cursor(buf, pos, len(buf))
        try:
            blen = cur.uv()
        except ValueError:
            return damaged(start, f"record {len(records) + 1}: unreadable length (truncated or damaged)")
        if blen == 0:
            pos = cur.pos
            break
        body_start, end = cur.pos, cur.pos + blen
        if end + 2 > len(buf):
            return damaged(start, f"record {len(records) + 1} of {blen} bytes runs past the end of the file "
                                  f"(truncated)")
        (crc,) = struct.unpack_from("<H", buf, end)
        if _crc16(buf[start:end]) != crc:
            return damaged(start, f"record {len(records) + 1}: checksum mismatch (damaged)")
        try:
            rec = _decode_record(_Cursor(buf, body_start, end), start, tables, state)
        except (ValueError, IndexError, KeyError, zlib.error) as e:
            return damaged(start, f"record {len(records) + 1}: malformed: {e}")
        records.append(rec)
        pos = end + 2
    if pos + 8 > len(buf):
        return damaged(pos, "file ends inside the trailer (truncated)")
    count, crc = struct.unpack_from("<II", buf, pos)
    if count != len(records):
        return damaged(pos, f"trailer says {count} records, the file holds {len(records)}")
    if zlib.crc32(buf[:pos + 4]) != crc:
        return damaged(pos + 4, "file checksum mismatch (damage the record checksums did not catch)")
    if pos + 8 != len(buf):
        return damaged(pos + 8, f"{len(buf) - pos - 8} unexpected bytes after the end of the pass")
    return DownlinkFile(header, records, len(buf))


class _ReadTables:
    def __init__(self, header: dict[str, Any]) -> None:
        if header.get("format") != "raman-edge.downlink":
            raise ValueError(f"format {header.get('format')!r} is not raman-edge.downlink")
        self.models = [m["id"] for m in header.get("models", [])]
        self.classes = [list(m["classes"]) for m in header.get("models", [])]
        self.lists = {k: list(header.get(k, [])) for k in ("sources", "calibrations", "truths", "reasons")}
        self.axes = [(a["unit"], _axis_values(a)) for a in header.get("axes", [])]


def _pick(seq: list[Any], i: int, what: str) -> Any:
    if not 0 <= i < len(seq):
        raise ValueError(f"{what} index {i} outside the header's table of {len(seq)}")
    return seq[i]


def _decode_record(cur: _Cursor, offset: int, t: _ReadTables, state: list[int]) -> DownlinkRecord:
    flags = cur.u8()
    if flags & 0x80:
        raise ValueError(f"reserved flag bit set (flags 0x{flags:02x})")
    priority = flags & 7
    if priority == 7:
        priority = cur.zz()
    rid = state[0] + cur.zz()
    t_ms = state[1] + cur.zz()
    model = cur.uv() if flags & 0x20 else state[2]
    model_id = None if model == 0 else _pick(t.models, model - 1, "model")
    reasons = [_pick(t.lists["reasons"], cur.uv(), "reason") for _ in range(cur.uv())] if flags & 0x40 else []
    status = "error" if flags & 0x08 else "classified"
    classes = t.classes[model - 1] if model else []
    kw: dict[str, Any] = {}
    label = probability = margin = None
    topk: list[tuple[str, float]] = []
    if not flags & 0x10:
        code = cur.uv()
        if code:
            label = _pick(classes, code - 1, "class")
            probability, margin = cur.u8() / 255, cur.u8() / 255
    else:
        kw["source"] = _pick(t.lists["sources"], cur.uv(), "source")
        kw["seq"] = cur.zz()
        c = cur.uv()
        kw["calibration_id"] = _pick(t.lists["calibrations"], c - 1, "calibration") if c else None
        c = cur.uv()
        kw["truth"] = _pick(t.lists["truths"], c - 1, "truth") if c else None
        for _ in range(cur.uv()):
            name = _pick(classes, cur.uv(), "class")
            topk.append((name, cur.unpack("<H")[0] / 65535))
        if topk:
            label, probability = topk[0]
            margin = probability - (topk[1][1] if len(topk) > 1 else 0.0)
        kw["error"] = cur.take(cur.uv()).decode("utf-8") or None
        mask = cur.u8()
        kw["meta"] = {key: float(cur.unpack("<f")[0]) for bit, key in enumerate(_META_KEYS) if mask & (1 << bit)}
        kw["axis_unit"], kw["axis"] = _pick(t.axes, cur.uv(), "axis")
        kw["spectrum"], kw["spectrum_codec"], kw["error_bound"] = decode_spectrum(cur)
        if kw["spectrum"].size != kw["axis"].size:
            raise ValueError(f"spectrum of {kw['spectrum'].size} points on an axis of {kw['axis'].size}")
    if cur.pos != cur.end:
        raise ValueError(f"{cur.end - cur.pos} bytes left over in the record body")
    state[:] = [rid, t_ms, model]
    return DownlinkRecord(offset, rid, _iso_ms(t_ms), priority, status, reasons, model_id, label, probability,
                          margin, topk, **kw)


def format_table(f: DownlinkFile) -> str:
    """The records of a pass file as a fixed-width table (one line each)."""
    h = f.header
    lines = [f"pass {h.get('pass')} of db {h.get('db', {}).get('id')} ({h.get('db', {}).get('name')}), "
             f"created {h.get('created_utc')}, {len(f.records)} records, {f.size} bytes",
             f"{'id':>7} {'acquired_utc':<24} {'prio':>4} {'status':<10} {'label':<22} {'p':>5} {'margin':>6}  "
             f"{'spectrum':<22} reasons"]
    for r in f.records:
        spec = "" if r.spectrum is None else (
            f"{r.spectrum.size} {r.spectrum_codec}" + (f" ±{r.error_bound:.3g}" if r.error_bound else ""))
        p = "" if r.probability is None else f"{r.probability:.3f}"
        m = "" if r.margin is None else f"{r.margin:.3f}"
        label = r.label if r.label is not None else ("NOT CLASSIFIED" if r.status == "error" else "")
        lines.append(f"{r.id:>7} {r.acquired_utc:<24} {r.priority:>4} {r.status:<10} {label:<22} {p:>5} {m:>6}  "
                     f"{spec:<22} {','.join(r.reasons)}")
    return "\n".join(lines)


__all__ = [
    "DownlinkFile", "DownlinkFormatError", "DownlinkPolicy", "DownlinkRecord", "FORMAT_VERSION", "MAGIC",
    "Packed", "decode_spectrum", "encode_spectrum", "format_table", "pack", "read_downlink", "run_pass",
]
