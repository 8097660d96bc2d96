"""The results log: one SQLite row per spectrum, raw data included, versioned schema.

Durability: WAL journal with ``synchronous=FULL`` by default, so a committed row
survives a process kill *and* a power cut (NORMAL would survive a kill but may
lose the last commits on power loss).  Each result is committed on its own; a
row the daemon printed is a row on disk.

The raw spectrum is stored losslessly and compactly: as uint16/uint32 when it
holds integer counts, float32 when that is exact, float64 otherwise; then zlib.
Axes repeat for every spectrum of an instrument, so they are stored once in
``axes`` and referenced by content hash.

Schema history (``PRAGMA user_version``); older files are migrated in place, in
one transaction, when opened:

1. models, axes, results.
2. ``store_info`` (the database's identity, a random id made once), ``downlink_passes``
   (one row per downlink pass; ``results.downlinked`` holds the pass that carried a
   row, 0 while unsent) and ``results.status`` may also be ``deferred`` (a raw row
   whose classification is still to come; never downlinked).  ``results.downlinked = -1``
   marks a row that is never to be downlinked: a ``raman-edge bench`` replay, not a field
   measurement.  ``events`` (what the daemon noted besides results, e.g. a refused model
   update) is created when the first event is logged; a v2 file without it is complete,
   and builds that do not know it ignore it, so it needs no new schema version.

Failures are :class:`~calibration.errors.StorageError` (exit status 3) naming the file:
a corrupt file (checked with ``PRAGMA quick_check`` when an existing file is opened),
a full disk (``disk full: PATH``), a read-only file, or a database that another daemon
writes (a daemon holds an exclusive lock on ``PATH.lock`` for its whole life; readers
such as ``downlink``, ``status`` and ``bench`` do not take it).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import logging
import os
import sqlite3
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from calibration.errors import StorageError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2

#: ``results.downlinked`` of a row that no pass may carry (a bench replay).
NOT_FOR_DOWNLINK = -1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    model_id    TEXT PRIMARY KEY,
    classes     TEXT NOT NULL,          -- JSON list, head order
    manifest    TEXT NOT NULL,          -- the bundle manifest as loaded
    first_used  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS axes (
    axis_id     TEXT PRIMARY KEY,       -- sha256 of unit + values
    unit        TEXT NOT NULL,
    data        BLOB NOT NULL           -- packed array, see pack_array
);
CREATE TABLE IF NOT EXISTS results (
    id              INTEGER PRIMARY KEY,
    acquired_utc    TEXT NOT NULL,      -- ISO 8601, UTC
    logged_utc      TEXT NOT NULL,
    source          TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('classified', 'error', 'deferred')),
    error           TEXT,
    model_id        TEXT REFERENCES models(model_id),
    calibration_id  TEXT,
    label           TEXT,               -- top-1 class
    probability     REAL,               -- top-1 probability
    margin          REAL,               -- top-1 minus top-2 probability
    topk            TEXT,               -- JSON [[class, probability], ...]
    priority        INTEGER NOT NULL,
    reasons         TEXT,               -- JSON list
    truth           TEXT,               -- known label (replay, simulator), else NULL
    axis_id         TEXT NOT NULL REFERENCES axes(axis_id),
    spectrum        BLOB NOT NULL,      -- raw intensities, packed, lossless
    meta            TEXT,               -- JSON: integration time, temperature, timings ...
    downlinked      INTEGER NOT NULL DEFAULT 0  -- downlink pass that carried the row, 0 = not yet
);
CREATE INDEX IF NOT EXISTS results_priority ON results (downlinked, priority DESC, acquired_utc);
""" + """
CREATE TABLE IF NOT EXISTS store_info (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS calibrations (
    calibration_id  TEXT PRIMARY KEY,       -- AxisCalibration.id or ShiftCorrection.id
    doc             TEXT NOT NULL           -- the calibration JSON
);
CREATE TABLE IF NOT EXISTS downlink_passes (
    pass            INTEGER PRIMARY KEY,    -- 1, 2, ... never reused
    started_utc     TEXT NOT NULL,
    finished_utc    TEXT,
    state           TEXT NOT NULL CHECK (state IN ('writing', 'sent', 'failed')),
    budget_bytes    INTEGER NOT NULL,
    out_path        TEXT NOT NULL,
    bytes           INTEGER,
    records         INTEGER,
    sha256          TEXT,                   -- of the file as written
    note            TEXT                    -- why a pass failed
);
"""

_EVENTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY,
    logged_utc  TEXT NOT NULL,
    kind        TEXT NOT NULL,          -- e.g. model_refused
    message     TEXT NOT NULL,          -- one line for a person
    details     TEXT                    -- JSON
)"""

# v1 -> v2: results is rebuilt only to widen the status CHECK (SQLite cannot ALTER a
# CHECK); the new tables come from _SCHEMA's IF NOT EXISTS statements.
_RESULTS_COLUMNS = ("id, acquired_utc, logged_utc, source, seq, status, error, model_id, calibration_id, label,"
                    " probability, margin, topk, priority, reasons, truth, axis_id, spectrum, meta, downlinked")


def pack_array(values: np.ndarray) -> bytes:
    """Losslessly pack a 1-D array: 1-byte dtype code + little-endian data, zlib-compressed."""
    x = np.asarray(values).reshape(-1)
    # Integer counts (no -0.0, which an unsigned type would turn into +0.0) pack as integers.
    if x.dtype.kind == "f" and x.size and np.all(np.isfinite(x)) and np.all(x == np.round(x)) \
            and not np.signbit(x).any():
        if x.max() <= 0xFFFF:
            code, data = b"H", x.astype("<u2")
        elif x.max() <= 0xFFFFFFFF:
            code, data = b"I", x.astype("<u4")
        else:
            code, data = b"d", x.astype("<f8")
    elif x.dtype.kind in "iu":
        code, data = b"q", x.astype("<i8")
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            exact32 = np.array_equal(x.astype(np.float32), x, equal_nan=True)
        code, data = (b"f", x.astype("<f4")) if exact32 else (b"d", x.astype("<f8"))
    return code + zlib.compress(data.tobytes(), 6)


_CODES = {b"H": "<u2", b"I": "<u4", b"q": "<i8", b"f": "<f4", b"d": "<f8"}


def unpack_array(blob: bytes) -> np.ndarray:
    """Inverse of :func:`pack_array` (always returns float64)."""
    dtype = _CODES.get(bytes(blob[:1]))
    if dtype is None:
        raise StorageError(f"unknown packed-array code {bytes(blob[:1])!r}")
    return np.frombuffer(zlib.decompress(blob[1:]), dtype=dtype).astype(np.float64)


_NEARLY_FULL = 1 << 20  # bytes free below which an I/O error on the database is a full disk


def _free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged writer may still use on the file system holding ``path``."""
    try:
        st = os.statvfs(path.parent if not path.is_dir() else path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def storage_error(path: str | Path, e: sqlite3.Error, doing: str) -> StorageError:
    """Turn an SQLite error into a one-line :class:`StorageError` that says what is wrong with ``path``.

    Parameters
    ----------
    path : str or Path
        The results database.
    e : sqlite3.Error
        What SQLite raised.
    doing : str
        What was being done, e.g. ``"write result"``.
    """
    name = str(getattr(e, "sqlite_errorname", "") or "")
    text = str(e)
    if name.startswith("SQLITE_CORRUPT") or "malformed" in text:
        return StorageError(f"results database {path} is corrupt ({text}); cannot {doing}. Stop writing to it and "
                            f"salvage the readable rows: sqlite3 {path} .recover | sqlite3 recovered.sqlite")
    if name == "SQLITE_NOTADB" or "not a database" in text:
        return StorageError(f"results database {path} is not an SQLite database or its header is corrupt "
                            f"({text}); cannot {doing}")
    if name == "SQLITE_FULL" or "disk is full" in text:
        return StorageError(f"disk full: {path} ({text}); cannot {doing}")
    if name.startswith("SQLITE_IOERR") or "I/O error" in text:
        # SQLite reports some ENOSPC writes as plain I/O errors: tell a full disk apart.
        free = _free_bytes(Path(path))
        if free is not None and free < _NEARLY_FULL:
            return StorageError(f"disk full: {path} ({text}; {free} bytes free); cannot {doing}")
        return StorageError(f"results database {path}: {text}; cannot {doing}. Check the medium, its free "
                            f"space and the process's file size limit")
    if name.startswith("SQLITE_READONLY") or "readonly" in text:
        return StorageError(f"results database {path} is read-only ({text}); cannot {doing}")
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
        return StorageError(f"results database {path} is locked by another process ({text}); cannot {doing}")
    if name.startswith("SQLITE_CANTOPEN") or "unable to open" in text:
        return StorageError(f"results database {path} cannot be opened ({text}); cannot {doing}")
    return StorageError(f"{path}: cannot {doing}: {text}")


def utc_iso(epoch: float) -> str:
    return _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Row:
    """One logged result, as read back."""

    id: int
    acquired_utc: str
    source: str
    seq: int
    status: str
    error: str | None
    model_id: str | None
    calibration_id: str | None
    label: str | None
    probability: float | None
    margin: float | None
    topk: list[tuple[str, float]]
    priority: int
    reasons: list[str]
    truth: str | None
    axis_unit: str
    axis: np.ndarray
    spectrum: np.ndarray
    meta: dict[str, Any]
    downlinked: int = 0  # the downlink pass that carried it, 0 while unsent


class ResultLog:
    """Append-only results database.

    Parameters
    ----------
    path : str or Path
        SQLite file; created with the current schema when missing.
    synchronous : str
        SQLite ``synchronous`` level: ``FULL`` (default, power-cut safe) or ``NORMAL``.
    check : bool
        Run ``PRAGMA quick_check`` when an existing file is opened (about 1.5 s per GB
        from the page cache), so that a corrupt file is refused before anything is
        appended to it rather than part-way through a run or a downlink pass.
    """

    def __init__(self, path: str | Path, synchronous: str = "FULL", check: bool = True) -> None:
        self.path = Path(path)
        self._lock_fd: int | None = None
        self._axes: set[str] = set()
        self._models: set[str] = set()
        self._calibrations: set[str] = set()
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise StorageError(f"synchronous must be FULL, NORMAL or EXTRA, got {synchronous!r}")
        if self.path.parent and not self.path.parent.is_dir():
            raise StorageError(f"{self.path}: directory {self.path.parent} does not exist")
        if self.path.is_dir():
            raise StorageError(f"results database {self.path} is a directory, not a file")
        existing = self.path.is_file() and self.path.stat().st_size > 0
        try:
            self.db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise storage_error(self.path, e, "open results database") from None
        try:
            if existing and check:
                self._quick_check()
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(f"PRAGMA synchronous={synchronous.upper()}")
            # Off while a migration may rebuild tables (the pragma is ignored inside a transaction).
            self.db.execute("PRAGMA foreign_keys=OFF")
            self._create_or_migrate()
            self.db.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error as e:
            self.db.close()
            raise storage_error(self.path, e, "open results database") from None
        except BaseException:
            self.db.close()
            raise

    def _quick_check(self) -> None:
        """Refuse a file whose pages are damaged (``PRAGMA quick_check``: b-tree structure, no index cross-check)."""
        problems = [str(r[0]) for r in self.db.execute("PRAGMA quick_check(3)").fetchall()]
        if problems != ["ok"]:
            raise StorageError(f"results database {self.path} is corrupt ({'; '.join(problems)[:300]}). "
                               f"Stop writing to it and salvage the readable rows: "
                               f"sqlite3 {self.path} .recover | sqlite3 recovered.sqlite")

    @contextlib.contextmanager
    def _guard(self, doing: str) -> Iterator[None]:
        """Any SQLite error inside becomes a StorageError naming the file and what is wrong."""
        try:
            yield
        except sqlite3.Error as e:
            raise storage_error(self.path, e, doing) from None

    # -- one writer per database ---------------------------------------------
    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def lock_writer(self) -> None:
        """Take the database's exclusive writer lock (``PATH.lock``) for as long as this log is open.

        One daemon per database, whatever its state directory: a second one is refused
        here.  Readers (``downlink``, ``status``, ``bench``) do not take the lock, and
        SQLite's own locking lets them read and mark passes beside the daemon.

        Raises
        ------
        StorageError
            If another process holds the lock (names its pid) or the lock file cannot be made.
        """
        if self._lock_fd is not None:
            return
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StorageError(f"results database {self.path}: cannot create its lock file {self.lock_path}: "
                               f"{e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            who = f"pid {holder}" if holder.isdigit() else "another process"
            raise StorageError(f"results database {self.path} is in use by another raman-edge daemon ({who}, "
                               f"lock {self.lock_path}); one daemon per database") from None
        # The pid is only a hint for the refusal message; the flock is the lock.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _unlock_writer(self) -> None:
        if self._lock_fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._lock_fd, 0)
        os.close(self._lock_fd)  # closing releases the flock
        self._lock_fd = None

    def _create_or_migrate(self) -> None:
        # A current file needs no write lock (read-only media, a daemon mid-commit).
        if self.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return
        # Otherwise the version is read again inside the write transaction, so two
        # processes opening the same file at once cannot both create or migrate it.
        self.db.execute("BEGIN IMMEDIATE")
        try:
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, 1, SCHEMA_VERSION):
                raise StorageError(
                    f"{self.path}: results schema version {version}, this build writes version {SCHEMA_VERSION}"
                )
            if version == 0:
                tables = self.db.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0]
                if tables:
                    raise StorageError(f"{self.path}: an SQLite file that is not a raman-edge results log")
            if version == 1:
                log.info("%s: migrating the results schema from version 1 to %d", self.path, SCHEMA_VERSION)
                results_ddl = _SCHEMA[_SCHEMA.index("CREATE TABLE IF NOT EXISTS results ("):]
                results_ddl = results_ddl[:results_ddl.index(";")]
                self.db.execute(results_ddl.replace("CREATE TABLE IF NOT EXISTS results (", "CREATE TABLE results_v2 ("))
                self.db.execute(f"INSERT INTO results_v2 ({_RESULTS_COLUMNS}) SELECT {_RESULTS_COLUMNS} FROM results")
                self.db.execute("DROP TABLE results")
                self.db.execute("ALTER TABLE results_v2 RENAME TO results")
            if version != SCHEMA_VERSION:
                # executescript() would COMMIT first; run the statements in our own transaction.
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        self.db.execute(stmt)
                self.db.execute("INSERT OR IGNORE INTO store_info (key, value) VALUES ('db_id', ?)",
                                (uuid.uuid4().hex,))
                if self.db.execute("PRAGMA foreign_key_check").fetchone() is not None:
                    raise StorageError(f"{self.path}: foreign-key check failed while migrating; file left unchanged")
                self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self.db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    # -- writing ------------------------------------------------------------
    def _axis_id(self, unit: str, axis: np.ndarray) -> str:
        axis = np.asarray(axis, dtype=np.float64)
        aid = hashlib.sha256(unit.encode() + axis.tobytes()).hexdigest()[:16]
        if aid not in self._axes:
            self.db.execute("INSERT OR IGNORE INTO axes (axis_id, unit, data) VALUES (?, ?, ?)",
                            (aid, unit, pack_array(axis)))
            self._axes.add(aid)
        return aid

    def register_model(self, model_id: str, classes: list[str], manifest: dict[str, Any]) -> None:
        if model_id in self._models:
            return
        self._write(lambda: self.db.execute(
            "INSERT OR IGNORE INTO models (model_id, classes, manifest, first_used) VALUES (?, ?, ?, ?)",
            (model_id, json.dumps(classes), json.dumps(manifest), utc_iso(_dt.datetime.now().timestamp())),
        ), "register the model")
        self._models.add(model_id)

    def _write(self, fn: Any, doing: str = "write result") -> Any:
        """Run ``fn`` in one write transaction; any SQLite failure is a StorageError naming the cause."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                out = fn()
                self.db.execute("COMMIT")
                return out
            except BaseException:
                self._rollback()
                raise
        except sqlite3.Error as e:
            # Disk full, read-only file, corrupt page, locked beyond the timeout: stop, don't crash-loop.
            raise storage_error(self.path, e, doing) from None

    def _rollback(self) -> None:
        # SQLite rolls back by itself on SQLITE_FULL and some I/O errors; a ROLLBACK then
        # fails with "no transaction is active" and would hide the real cause.
        # Rows cached as present may have been rolled back with the transaction.
        self._axes.clear()
        self._calibrations.clear()
        if not self.db.in_transaction:
            return
        try:
            self.db.execute("ROLLBACK")
        except sqlite3.Error as e:
            log.warning("%s: rollback after a failed write: %s", self.path, e)

    def _calibration_id(self, calibration: Any) -> str | None:
        if calibration is None:
            return None
        cid = calibration.id
        if cid not in self._calibrations:
            self.db.execute("INSERT OR IGNORE INTO calibrations (calibration_id, doc) VALUES (?, ?)",
                            (cid, json.dumps(calibration.to_dict())))
            self._calibrations.add(cid)
        return cid

    @staticmethod
    def _result_columns(r: dict[str, Any]) -> tuple[Any, ...]:
        topk = r.get("topk") or []
        label, prob = (topk[0][0], float(topk[0][1])) if topk else (None, None)
        margin = (prob - (float(topk[1][1]) if len(topk) > 1 else 0.0)) if topk else None
        return (r.get("status", "classified"), r.get("error"), r.get("model_id"), label, prob, margin,
                json.dumps([[c, float(p)] for c, p in topk]), int(r.get("priority", 0)),
                json.dumps(r.get("reasons") or []), json.dumps(r.get("meta") or {}, default=str))

    def _insert(self, r: dict[str, Any]) -> int:
        aid = self._axis_id(r["axis_unit"], r["axis"])
        cal_id = self._calibration_id(r.get("calibration"))
        for c in r.get("calibrations") or ():  # configured calibrations applied (e.g. a shift correction)
            self._calibration_id(c)
        status, error, model_id, label, prob, margin, topk, priority, reasons, meta = self._result_columns(r)
        cur = self.db.execute(
            "INSERT INTO results (acquired_utc, logged_utc, source, seq, status, error, model_id,"
            " calibration_id, label, probability, margin, topk, priority, reasons, truth, axis_id,"
            " spectrum, meta, downlinked) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (utc_iso(r["acquired_at"]), utc_iso(_dt.datetime.now().timestamp()), r["source"], int(r["seq"]),
             status, error, model_id, r.get("calibration_id") or cal_id, label, prob, margin, topk, priority,
             reasons, r.get("truth"), aid, pack_array(r["spectrum"]), meta,
             0 if r.get("downlink", True) else NOT_FOR_DOWNLINK),
        )
        return int(cur.lastrowid)

    def _complete(self, row_id: int, r: dict[str, Any]) -> None:
        self._calibration_id(r.get("calibration"))
        for c in r.get("calibrations") or ():
            self._calibration_id(c)
        status, error, model_id, label, prob, margin, topk, priority, reasons, meta = self._result_columns(r)
        self.db.execute(
            "UPDATE results SET status=?, error=?, model_id=?, calibration_id=coalesce(?, calibration_id), label=?,"
            " probability=?, margin=?, topk=?, priority=?, reasons=?, meta=? WHERE id=? AND status='deferred'",
            (status, error, model_id, r.get("calibration_id"), label, prob, margin, topk, priority, reasons, meta,
             int(row_id)),
        )

    def append(self, **record: Any) -> int:
        """Commit one result and return its row id (the acknowledgement).

        Keywords: ``acquired_at, source, seq, axis_unit, axis, spectrum`` (required);
        ``status, error, model_id, calibration_id, calibration (AxisCalibration), topk,
        priority, reasons, truth, meta``; ``downlink=False`` logs a row no downlink pass
        will carry (a bench replay).
        """
        return self._write(lambda: self._insert(record))

    def append_many(self, records: list[dict[str, Any]],
                    complete: list[tuple[int, dict[str, Any]]] = ()) -> list[int]:
        """Commit new rows and completions of deferred rows in one transaction (one fsync).

        Returns the new rows' ids, in order; nothing is acknowledged unless all is committed.
        """
        def work() -> list[int]:
            ids = [self._insert(r) for r in records]
            for row_id, r in complete:
                self._complete(row_id, r)
            return ids

        return self._write(work)

    def log_event(self, kind: str, message: str, details: dict[str, Any] | None = None,
                  at: float | None = None) -> int:
        """Commit one event row (``events`` is created with the first one); returns its id."""
        def insert() -> int:
            self.db.execute(_EVENTS_SCHEMA)
            cur = self.db.execute(
                "INSERT INTO events (logged_utc, kind, message, details) VALUES (?, ?, ?, ?)",
                (utc_iso(_dt.datetime.now().timestamp() if at is None else at), str(kind), str(message),
                 json.dumps(details or {}, default=str)))
            return int(cur.lastrowid)

        return self._write(insert, "log an event")

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Logged events, oldest first (none when the table was never created)."""
        with self._guard("read events"):
            if self.db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='events'").fetchone() is None:
                return []
            q = "SELECT id, logged_utc, kind, message, details FROM events"
            cur = self.db.execute(q + " WHERE kind = ? ORDER BY id" if kind else q + " ORDER BY id",
                                  (kind,) if kind else ())
            return [{"id": i, "logged_utc": t, "kind": k, "message": m, "details": json.loads(d or "{}")}
                    for i, t, k, m, d in cur]

    # -- deferred classification ---------------------------------------------
    def _scalar(self, sql: str, params: tuple[Any, ...] = (), doing: str = "read it") -> Any:
        with self._guard(doing):
            return self.db.execute(sql, params).fetchone()[0]

    def count_deferred(self) -> int:
        return int(self._scalar("SELECT count(*) FROM results WHERE status='deferred'", doing="count deferred rows"))

    def deferred(self, after_id: int = 0, limit: int = 16) -> list[tuple[int, Any]]:
        """Oldest deferred rows after ``after_id`` as ``(row_id, Acquisition)``, for re-processing.

        Reads through its own connection, so the classify loop may call it while the
        writer holds the main one (WAL lets readers run beside the writer).
        """
        from calibration.axis import AxisCalibration
        from calibration.spectrum import Spectrum
        from firmware_bridge.source import Acquisition

        try:
            con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        except sqlite3.Error as e:
            raise storage_error(self.path, e, "read deferred rows") from None
        try:
            rows = con.execute(
                "SELECT r.id, r.acquired_utc, r.source, r.seq, r.truth, r.meta, r.spectrum, a.unit, a.data, c.doc"
                " FROM results r JOIN axes a ON a.axis_id = r.axis_id"
                " LEFT JOIN calibrations c ON c.calibration_id = r.calibration_id"
                " WHERE r.status='deferred' AND r.id > ? ORDER BY r.id LIMIT ?", (int(after_id), int(limit))).fetchall()
        except sqlite3.Error as e:
            raise storage_error(self.path, e, "read deferred rows") from None
        finally:
            con.close()
        out = []
        for rid, acq_utc, source, seq, truth, meta, blob, unit, axis_blob, cal_doc in rows:
            meta = json.loads(meta or "{}")
            spectrum = Spectrum(unpack_array(blob), unpack_array(axis_blob), unit=unit,
                                meta={"where": f"{self.path} row {rid}"})
            cal = AxisCalibration.from_dict(json.loads(cal_doc)) if cal_doc else None
            epoch = _dt.datetime.fromisoformat(acq_utc.replace("Z", "+00:00")).timestamp()
            out.append((int(rid), Acquisition(seq=int(seq), spectrum=spectrum, acquired_at=epoch, source=source,
                                              calibration=cal, truth=truth, meta=meta)))
        return out

    # -- reading ------------------------------------------------------------
    def count(self) -> int:
        return int(self._scalar("SELECT count(*) FROM results", doing="count rows"))

    def rows(self, where: str = "", params: tuple[Any, ...] = (), order: str = "r.id") -> Iterator[Row]:
        """Rows matching an SQL ``where`` clause (on alias ``r``), in ``order``."""
        q = ("SELECT r.id, r.acquired_utc, r.source, r.seq, r.status, r.error, r.model_id, r.calibration_id,"
             " r.label, r.probability, r.margin, r.topk, r.priority, r.reasons, r.truth, a.unit, a.data,"
             " r.spectrum, r.meta, r.downlinked FROM results r JOIN axes a ON a.axis_id = r.axis_id "
             + where + " ORDER BY " + order)
        with self._guard("read rows"):
            cur = self.db.execute(q, params)
        while True:
            # Fetched one by one under the guard: a damaged page may sit anywhere in the scan.
            with self._guard("read rows"):
                r = cur.fetchone()
            if r is None:
                return
            yield self._row(r)

    def _row(self, r: tuple[Any, ...]) -> Row:
        try:
            return Row(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10],
                       [(c, p) for c, p in json.loads(r[11] or "[]")], r[12], json.loads(r[13] or "[]"), r[14],
                       r[15], unpack_array(r[16]), unpack_array(r[17]), json.loads(r[18] or "{}"), r[19])
        except (ValueError, TypeError, zlib.error) as e:  # damaged bytes inside an intact page
            raise StorageError(f"results database {self.path} is corrupt: row {r[0]} cannot be decoded ({e}). "
                               f"Salvage the readable rows: sqlite3 {self.path} .recover | sqlite3 recovered.sqlite"
                               ) from None

    # -- downlink bookkeeping ------------------------------------------------
    @property
    def identity(self) -> str:
        """A random id made when the database was created (or migrated to v2); names it on the ground."""
        return str(self._scalar("SELECT value FROM store_info WHERE key='db_id'", doing="read its identity"))

    _UNSENT = "WHERE r.downlinked = 0 AND r.status IN ('classified', 'error')"

    def unsent(self, priority: int | None = None) -> Iterator[Row]:
        """Rows not yet downlinked, most valuable first: priority, then unreadable before
        classified (level 3 holds both unreadable and novel results), then acquisition time, then id.

        ``priority`` restricts them to one level.  Deferred rows (classification still to
        come) are left out until they are classified.
        """
        if priority is None:
            return self.rows(self._UNSENT, order="r.priority DESC, r.status = 'error' DESC, r.acquired_utc, r.id")
        return self.rows(self._UNSENT + " AND r.priority = ?", (int(priority),),
                         order="r.status = 'error' DESC, r.acquired_utc, r.id")

    def unsent_priorities(self) -> list[int]:
        """The priority levels that have rows waiting, highest first."""
        with self._guard("read unsent rows"):
            return [int(p) for (p,) in self.db.execute(
                "SELECT DISTINCT r.priority FROM results r " + self._UNSENT + " ORDER BY r.priority DESC")]

    def unsent_by_priority(self) -> dict[int, int]:
        """How many rows wait at each priority level."""
        with self._guard("read unsent rows"):
            return {int(p): int(n) for p, n in self.db.execute(
                "SELECT r.priority, count(*) FROM results r " + self._UNSENT + " GROUP BY 1")}

    def count_unsent(self) -> int:
        return int(self._scalar("SELECT count(*) FROM results r " + self._UNSENT, doing="count unsent rows"))

    def next_pass(self) -> int:
        """The number the next downlink pass will get."""
        return int(self._scalar("SELECT coalesce(max(pass), 0) + 1 FROM downlink_passes", doing="read its passes"))

    def begin_pass(self, budget_bytes: int, out_path: str | Path) -> int:
        """Reserve a pass number (state ``writing``) before its file is written; numbers are never reused."""
        def insert() -> int:
            cur = self.db.execute(
                "INSERT INTO downlink_passes (started_utc, state, budget_bytes, out_path) VALUES (?, 'writing', ?, ?)",
                (utc_iso(_dt.datetime.now().timestamp()), int(budget_bytes), str(out_path)))
            return int(cur.lastrowid)

        return self._write(insert, "record a downlink pass")

    def finish_pass(self, pass_no: int, row_ids: list[int], nbytes: int, sha256: str) -> int:
        """Mark ``row_ids`` as sent by ``pass_no`` and close the pass, in one transaction.

        Call only once the pass file is on disk (written, fsynced, renamed).  Returns how
        many rows were marked; rows another pass marked meanwhile are left as they are.
        """
        def mark() -> int:
            state = self.db.execute("SELECT state FROM downlink_passes WHERE pass = ?", (pass_no,)).fetchone()
            if state is None or state[0] != "writing":
                raise StorageError(f"{self.path}: downlink pass {pass_no} is not being written "
                                   f"(state {state[0] if state else 'missing'})")
            cur = self.db.executemany("UPDATE results SET downlinked = ? WHERE id = ? AND downlinked = 0",
                                      [(pass_no, int(i)) for i in row_ids])
            self.db.execute(
                "UPDATE downlink_passes SET state='sent', finished_utc=?, bytes=?, records=?, sha256=? WHERE pass=?",
                (utc_iso(_dt.datetime.now().timestamp()), int(nbytes), len(row_ids), sha256, pass_no))
            return int(cur.rowcount)

        marked = self._write(mark, "mark rows as sent")
        if marked != len(row_ids):
            log.warning("downlink pass %d: %d of %d rows had been sent by another pass", pass_no,
                        len(row_ids) - marked, len(row_ids))
        return marked

    def fail_pass(self, pass_no: int, note: str) -> None:
        """Record that a pass did not complete; its rows stay unsent."""
        self._write(lambda: self.db.execute(
            "UPDATE downlink_passes SET state='failed', finished_utc=?, note=? WHERE pass=? AND state='writing'",
            (utc_iso(_dt.datetime.now().timestamp()), note[:500], pass_no)), "record a failed pass")

    def passes(self) -> list[dict[str, Any]]:
        """Every downlink pass, oldest first."""
        with self._guard("read its passes"):
            cur = self.db.execute("SELECT * FROM downlink_passes ORDER BY pass")
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r)) for r in cur]

    def close(self) -> None:
        try:
            self.db.close()
        except sqlite3.Error as e:  # closing must never mask the error that got us here
            log.warning("closing %s: %s", self.path, e)
        finally:
            self._unlock_writer()

    def __enter__(self) -> "ResultLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
