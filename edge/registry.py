"""The daemon's on-disk model registry: installed bundles and which one is active.

Layout::

    STATE_DIR/
      active.json                pointer to the active entry (replaced atomically)
      .active.last-good.json     copy of the last pointer written, to recover from outside damage
      trusted-keys/              default trusted keys (*.public.pem, *.hmac), optional
      models/
        <model_id>.<sha8>/       one installed bundle (manifest, signature, ONNX files,
                                 install.json); never modified after the rename into place
        .install-*/ .trash-*/    work directories; ignored, cleaned up by the next install
      .lock                      serialises installs and switches (flock)

An entry's name is the bundle's ``model_id`` plus the first 8 hex digits of its
manifest's sha256: ``model_id`` does not cover the temperature, so a recalibrated
model gets its own entry instead of overwriting the running one.

Install order (each step durable before the next): verify the signature and load
the source bundle fully -> copy the verified files into ``models/.install-*``
(fsync each file and the directory) -> verify and load the copy -> rename it to
its final name (fsync ``models/``) -> write ``active.json`` to a temporary file,
fsync, ``os.replace``, fsync ``STATE_DIR``.  A crash at any point leaves either
the old pointer or the new one, and only complete entries under a final name.

The running daemon notices a switch with :meth:`Registry.active_id` (a stat;
a small read only when the pointer file changed), loads the new entry with
:meth:`Registry.load` (signature, hashes, graphs) beside the old model, and swaps
between two spectra; :class:`ModelWatcher` packages that.  A model that fails to
load is refused and the old one keeps running; the refusal and its reason are
kept for `raman-edge status`.  The trust store is read again for every model the
watcher verifies, so keys added while the daemon runs count.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, NamedTuple

from calibration.errors import BundleError, ConfigError, RamanEdgeError

from .bundle import MANIFEST, Bundle, validation_figures, validation_summary
from .signing import SIGNATURE, SignatureInfo, TrustedKeys, TrustSpec, as_trusted_keys, load_trusted_bundle

log = logging.getLogger(__name__)

ACTIVE = "active.json"
ACTIVE_BACKUP = ".active.last-good.json"
ACTIVE_FORMAT = "raman-edge.registry-active"
ACTIVE_VERSION = 1
INSTALL_RECORD = "install.json"
MODELS = "models"
TRUSTED_KEYS_DIR = "trusted-keys"
_MODEL_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_ENTRY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")


class PointerError(BundleError, ConfigError):
    """``active.json`` is unreadable or malformed.

    It is always replaced atomically, so this means damage from outside; it is a
    configuration error (exit status 2): restarting cannot repair it, and
    ``raman-edge model active --set ID`` does.
    """


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def refusal_record(reason: str, ptr: ActivePointer | None = None, *, entry: str | None = None,
                   switch_id: str | None = None) -> dict[str, Any]:
    """What ``status`` shows and the ``model_refused`` event carries: which model, why, and when.

    ``ptr`` fills the entry, model id and switch id; without one, ``entry`` and
    ``switch_id`` may be given (a swap refused after the pointer was read).
    """
    if ptr is not None:
        entry, switch_id = ptr.entry, ptr.switch_id
    return {"entry": entry, "model_id": ptr.model_id if ptr else None, "switch_id": switch_id,
            "reason": reason, "at": _utc_now()}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_file(src: Path, dst: Path) -> None:
    """Copy one file and fsync it (module-level so tests can simulate a crash mid-copy)."""
    with open(src, "rb") as fi, open(dst, "xb") as fo:
        shutil.copyfileobj(fi, fo, 1 << 20)
        fo.flush()
        os.fsync(fo.fileno())


def _write_durable(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically: temporary sibling, fsync, rename, fsync the directory."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


@dataclass(frozen=True)
class ActivePointer:
    """The content of ``active.json``."""

    entry: str
    model_id: str
    manifest_sha256: str
    previous: str | None
    switched_utc: str
    switch_id: str = ""  # random per write, so two switches to the same entry differ

    def as_dict(self) -> dict[str, Any]:
        return {"format": ACTIVE_FORMAT, "version": ACTIVE_VERSION, "entry": self.entry, "model_id": self.model_id,
                "manifest_sha256": self.manifest_sha256, "previous": self.previous,
                "switched_utc": self.switched_utc, "switch_id": self.switch_id}


@dataclass(frozen=True)
class RegistryEntry:
    """One installed bundle, as listed (its ONNX files are not read for a listing)."""

    name: str
    path: Path
    model_id: str | None
    manifest_sha256: str | None
    classes: int | None
    installed_utc: str | None
    source: str | None
    signature: dict[str, Any] | None
    active: bool
    problem: str | None = None  # set when the entry's manifest or install record cannot be read
    validation: dict[str, float | int] | None = None  # figures the manifest records (edge.bundle.validation_figures)
    validation_text: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "model_id": self.model_id,
                "manifest_sha256": self.manifest_sha256, "classes": self.classes,
                "installed_utc": self.installed_utc, "source": self.source, "signature": self.signature,
                "active": self.active, "problem": self.problem, "validation": self.validation}


@dataclass(frozen=True)
class InstallResult:
    entry: RegistryEntry
    signature: SignatureInfo
    reused: bool      # the same content was already installed (nothing copied)
    activated: bool
    previous: str | None


def entry_name(model_id: str, manifest_sha256: str) -> str:
    return f"{model_id}.{manifest_sha256[:8]}"


class Registry:
    """Installed model bundles under ``state_dir`` and the pointer to the active one.

    Parameters
    ----------
    state_dir : path
        The daemon's state directory; created on the first install.
    """

    def __init__(self, state_dir: str | Path) -> None:
        self.root = Path(state_dir)
        self.models_dir = self.root / MODELS
        self.active_path = self.root / ACTIVE
        self._active_cache: tuple[tuple[int, int, int], ActivePointer] | None = None

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r})"

    # ------------------------------------------------------------------ trust

    @property
    def default_trusted_keys(self) -> Path:
        """``STATE_DIR/trusted-keys``, used when no trusted keys are given."""
        return self.root / TRUSTED_KEYS_DIR

    def trusted_keys(self, spec: TrustSpec = None) -> TrustedKeys:
        """``spec`` as :class:`TrustedKeys`; when None, the default directory if it exists."""
        if spec is None and self.default_trusted_keys.is_dir():
            return TrustedKeys.load(self.default_trusted_keys)
        return as_trusted_keys(spec)

    # ------------------------------------------------------------------ reading

    def _parse_pointer(self, path: Path, data: bytes) -> ActivePointer:
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PointerError(f"{path}: unreadable active-model pointer ({e}); "
                               "`raman-edge model active --set ID` replaces it") from None
        try:
            if not isinstance(doc, dict):
                raise ValueError(f"a JSON {type(doc).__name__}, not an object")
            if doc.get("format") != ACTIVE_FORMAT or doc.get("version") != ACTIVE_VERSION:
                raise ValueError(f"format/version {doc.get('format')!r}/{doc.get('version')!r}")
            entry, previous = doc["entry"], doc.get("previous")
            if not isinstance(entry, str) or not _ENTRY_RE.match(entry):
                raise ValueError(f"entry {entry!r} is not an entry name")
            if previous is not None and (not isinstance(previous, str) or not _ENTRY_RE.match(previous)):
                raise ValueError(f"previous {previous!r} is not an entry name")
            return ActivePointer(entry, str(doc["model_id"]), str(doc["manifest_sha256"]), previous,
                                 str(doc.get("switched_utc", "")), str(doc.get("switch_id", "")))
        except (KeyError, ValueError) as e:
            raise PointerError(f"{path}: malformed active-model pointer ({e}); "
                               "`raman-edge model active --set ID` replaces it") from None

    def active(self) -> ActivePointer | None:
        """The active pointer, or None when nothing was ever activated.

        Cheap enough to call between two spectra: one ``stat``; the file (a few
        hundred bytes) is read only when it was replaced since the last call.

        Raises
        ------
        PointerError
            ``active.json`` is unreadable or malformed (it is always replaced
            atomically, so this means outside damage).
        """
        try:
            st = os.stat(self.active_path)
        except FileNotFoundError:
            self._active_cache = None
            return None
        except OSError as e:
            raise PointerError(f"{self.active_path}: cannot read the active-model pointer: {e.strerror or e}") from None
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._active_cache is not None and self._active_cache[0] == stamp:
            return self._active_cache[1]
        try:
            data = self.active_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise PointerError(f"{self.active_path}: cannot read the active-model pointer: {e.strerror or e}") from None
        ptr = self._parse_pointer(self.active_path, data)
        self._active_cache = (stamp, ptr)
        return ptr

    def last_good(self) -> ActivePointer | None:
        """The last pointer this registry wrote (its backup copy), or None when absent or unreadable too."""
        path = self.root / ACTIVE_BACKUP
        try:
            return self._parse_pointer(path, path.read_bytes())
        except (OSError, PointerError):
            return None

    def active_id(self) -> str | None:
        """Name of the active entry (changes whenever another model is activated), or None."""
        ptr = self.active()
        return ptr.entry if ptr is not None else None

    def _active_or_none(self) -> ActivePointer | None:
        try:
            return self.active()
        except BundleError:
            return self.last_good()  # a damaged pointer is simply replaced by the next switch

    def _entry_dirs(self) -> list[Path]:
        if not self.models_dir.is_dir():
            return []
        # Dot-directories are installs or removals in progress (or interrupted): never entries.
        return sorted(p for p in self.models_dir.iterdir() if p.is_dir() and not p.name.startswith("."))

    def _read_entry(self, path: Path, active: str | None) -> RegistryEntry:
        problem = None
        model_id = sha = classes = installed = source = signature = None
        figures = text = None
        try:
            rec = json.loads((path / INSTALL_RECORD).read_text())
            model_id, sha = rec.get("model_id"), rec.get("manifest_sha256")
            installed, source, signature = rec.get("installed_utc"), rec.get("source"), rec.get("signature")
            classes = rec.get("classes")
        except (OSError, ValueError, AttributeError) as e:
            problem = f"install record unreadable: {e}"
        try:
            manifest = json.loads((path / MANIFEST).read_text())
            if isinstance(manifest, dict):
                figures, text = validation_figures(manifest), validation_summary(manifest)
        except (OSError, ValueError) as e:
            problem = problem or f"manifest unreadable: {e}"
        return RegistryEntry(path.name, path, model_id, sha, classes, installed, source, signature,
                             path.name == active, problem, figures, text)

    def entries(self) -> list[RegistryEntry]:
        """Installed entries, oldest install first (no ONNX file is read)."""
        try:
            active = self.active_id()
        except BundleError:
            active = None
        out = [self._read_entry(p, active) for p in self._entry_dirs()]
        return sorted(out, key=lambda e: (e.installed_utc or "", e.name))

    def resolve(self, ref: str) -> RegistryEntry:
        """An entry by its name, by a model id with one entry, or by a unique name prefix.

        Raises
        ------
        BundleError
            Nothing or more than one entry matches.
        """
        entries = self.entries()
        for rule in (lambda e: e.name == ref, lambda e: e.model_id == ref, lambda e: e.name.startswith(ref)):
            hits = [e for e in entries if rule(e)]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise BundleError(f"{self.models_dir}: {ref!r} is ambiguous: {', '.join(e.name for e in hits)}")
        names = ", ".join(e.name for e in entries) or "none"
        raise BundleError(f"{self.models_dir}: no installed model matches {ref!r} (installed: {names})")

    # ------------------------------------------------------------------ loading

    def load(self, ref: str, trusted_keys: TrustSpec = None, allow_unsigned: bool = False,
             providers: list[str] | None = None) -> Bundle:
        """Verify (signature, hashes, graphs) and load one installed entry.

        Safe to call while the daemon runs another model: nothing is shared.
        ``Bundle.path.name`` is the entry name.
        """
        path = self.models_dir / ref
        if ref.startswith(".") or "/" in ref or not path.is_dir():
            path = self.resolve(ref).path
        bundle, _ = load_trusted_bundle(path, self.trusted_keys(trusted_keys), allow_unsigned, providers)
        return bundle

    def load_active(self, trusted_keys: TrustSpec = None, allow_unsigned: bool = False,
                    providers: list[str] | None = None, pointer: ActivePointer | None = None) -> Bundle:
        """Verify and load the active model (or the entry ``pointer`` names, e.g. :meth:`last_good`).

        Raises
        ------
        BundleError
            No model is active, the pointer is damaged (:class:`PointerError`), the
            active entry is missing, damaged, unsigned or mis-signed, or differs
            from what the pointer recorded.
        """
        ptr = pointer or self.active()
        if ptr is None:
            raise BundleError(f"{self.root}: no model installed (no {ACTIVE}); "
                              "use `raman-edge model install BUNDLE`")
        path = self.models_dir / ptr.entry
        if ptr.entry.startswith(".") or "/" in ptr.entry or not path.is_dir():
            raise BundleError(f"{self.active_path}: active entry {ptr.entry!r} is not installed in {self.models_dir}")
        bundle, info = load_trusted_bundle(path, self.trusted_keys(trusted_keys), allow_unsigned, providers)
        if info.manifest_sha256 != ptr.manifest_sha256:
            raise BundleError(f"{path / MANIFEST}: differs from the manifest that was activated "
                              f"({info.manifest_sha256[:16]}… vs {ptr.manifest_sha256[:16]}…); refused")
        return bundle

    # ------------------------------------------------------------------ changing

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.models_dir.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def _clean_work_dirs(self) -> None:
        """Remove what an interrupted install or removal left (we hold the lock)."""
        for p in self.models_dir.iterdir():
            if p.is_dir() and (p.name.startswith(".install-") or p.name.startswith(".trash-")):
                log.info("removing leftover %s", p)
                shutil.rmtree(p, ignore_errors=True)

    def _discard(self, path: Path) -> None:
        """Rename out of the entry namespace first, so a crash mid-delete leaves no half entry."""
        trash = self.models_dir / f".trash-{path.name}-{os.getpid()}-{time.monotonic_ns()}"
        os.rename(path, trash)
        _fsync_dir(self.models_dir)
        shutil.rmtree(trash, ignore_errors=True)

    @staticmethod
    def _bundle_files(bundle: Bundle) -> list[str]:
        names = [MANIFEST]
        for part in bundle.manifest["files"]:  # backbone, head and any extra part (e.g. a head's support set)
            rel = bundle.manifest["files"][part]["path"]
            pure = PurePosixPath(rel)
            if pure.is_absolute() or ".." in pure.parts or not str(rel).strip():
                raise BundleError(f"{bundle.path / MANIFEST}: files.{part}.path {rel!r} must stay inside the bundle")
            names.append(str(pure))
        return names

    def install(self, bundle_path: str | Path, trusted_keys: TrustSpec = None, allow_unsigned: bool = False,
                activate: bool = True, providers: list[str] | None = None,
                source: str | None = None) -> InstallResult:
        """Verify a bundle, copy it into the registry atomically, and (by default) activate it.

        Parameters
        ----------
        bundle_path : path
            The bundle directory to install (e.g. as uplinked), or a head file
            (``raman-edge head export``): composed with the installed parent's backbone
            by :func:`edge.headfile.install_head_file`, then installed like a bundle.
        trusted_keys : TrustedKeys, path(s), or None
            None: ``STATE_DIR/trusted-keys`` when it exists, else no keys.
        allow_unsigned : bool
            Development only (see :func:`edge.signing.verify_bundle`).
        activate : bool
            Switch ``active.json`` to the new entry once it is in place.

        Raises
        ------
        BundleError
            The bundle is unsigned, mis-signed, damaged or does not load; the
            registry and the active pointer are then unchanged.
        """
        src = Path(bundle_path)
        if src.is_file():
            from .headfile import install_head_file

            return install_head_file(self, src, trusted_keys, allow_unsigned, activate, providers)
        trust = self.trusted_keys(trusted_keys)
        bundle, info = load_trusted_bundle(src, trust, allow_unsigned, providers)
        model_id = bundle.model_id
        if not _MODEL_ID_RE.match(model_id):
            raise BundleError(f"{src / MANIFEST}: model_id {model_id!r} is not usable as a registry name "
                              "(letters, digits, '.', '_', '-')")
        files = self._bundle_files(bundle)
        if (src / SIGNATURE).exists():
            files.append(SIGNATURE)
        name = entry_name(model_id, info.manifest_sha256)
        with self._locked():
            self._clean_work_dirs()
            dest = self.models_dir / name
            reused = False
            if dest.exists():
                try:
                    load_trusted_bundle(dest, trust, allow_unsigned, providers)
                    reused = True
                    log.info("%s is already installed as %s", src, name)
                except RamanEdgeError as e:
                    log.warning("installed copy %s is damaged (%s); replacing it", dest, e)
                    self._discard(dest)
            if not reused:
                tmp = Path(tempfile.mkdtemp(prefix=f".install-{name}.", dir=self.models_dir))
                try:
                    for rel in files:
                        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                        _copy_file(src / rel, tmp / rel)
                    record = {"model_id": model_id, "manifest_sha256": info.manifest_sha256,
                              "classes": len(bundle.classes), "installed_utc": _utc_now(),
                              "source": source or str(src.resolve()), "signature": info.as_dict()}
                    record["signature"].pop("path", None)
                    _write_durable(tmp / INSTALL_RECORD, (json.dumps(record, indent=2) + "\n").encode())
                    _, copied = load_trusted_bundle(tmp, trust, allow_unsigned, providers)
                    if copied.manifest_sha256 != info.manifest_sha256:
                        raise BundleError(f"{src / MANIFEST}: changed during the install; refused")
                    os.rename(tmp, dest)
                    _fsync_dir(self.models_dir)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
                log.info("installed %s from %s (%s)", name, src, info.describe())
            ptr = self._active_or_none()
            previous = ptr.entry if ptr is not None else None
            if activate:
                self._point_to(name, model_id, info.manifest_sha256)
        entry = self.resolve(name)
        return InstallResult(entry, info, reused, activate, previous)

    def _point_to(self, name: str, model_id: str, manifest_sha256: str) -> ActivePointer:
        current = self._active_or_none()
        if current is None:
            previous = None
        elif current.entry != name:
            previous = current.entry
        else:
            previous = current.previous
        ptr = ActivePointer(name, model_id, manifest_sha256, previous, _utc_now(), secrets.token_hex(8))
        self.root.mkdir(parents=True, exist_ok=True)
        data = (json.dumps(ptr.as_dict(), indent=2) + "\n").encode()
        _write_durable(self.active_path, data)
        _write_durable(self.root / ACTIVE_BACKUP, data)  # second, so it never names a switch that did not happen
        log.info("active model is now %s (previous %s)", name, previous)
        return ptr

    def set_active(self, ref: str, trusted_keys: TrustSpec = None, allow_unsigned: bool = False,
                   providers: list[str] | None = None) -> RegistryEntry:
        """Activate an installed entry (e.g. roll back), after verifying it loads.

        Raises
        ------
        BundleError
            No such entry, or it fails verification (the pointer is unchanged).
        """
        entry = self.resolve(ref)
        with self._locked():
            _, info = load_trusted_bundle(entry.path, self.trusted_keys(trusted_keys), allow_unsigned, providers)
            self._point_to(entry.name, entry.model_id or "", info.manifest_sha256)
        return self.resolve(entry.name)

    def rollback(self, trusted_keys: TrustSpec = None, allow_unsigned: bool = False) -> RegistryEntry:
        """Re-activate the entry that was active before the current one."""
        ptr = self._active_or_none()  # a damaged pointer: roll back from the last one written
        if ptr is None or not ptr.previous:
            raise BundleError(f"{self.active_path}: no previous model to roll back to")
        return self.set_active(ptr.previous, trusted_keys, allow_unsigned)

    def remove(self, ref: str) -> RegistryEntry:
        """Delete an installed entry that is not active."""
        entry = self.resolve(ref)
        with self._locked():
            ptr = self._active_or_none()
            if ptr is not None and entry.name == ptr.entry:
                raise BundleError(f"{entry.path}: is the active model; activate another one before removing it")
            self._discard(entry.path)
        log.info("removed %s", entry.name)
        return entry


class Swap(NamedTuple):
    """A newly activated model, verified and loaded: what :meth:`ModelWatcher.poll` hands over."""

    entry: str
    bundle: Bundle
    switch_id: str


def _trust_stamp(paths: list[Path]) -> tuple[Any, ...]:
    """What the trust store looks like on disk (names, sizes, mtimes): changes when a key is added."""
    out: list[Any] = []
    for p in paths:
        try:
            files = sorted(p.iterdir()) if p.is_dir() else [p]
            out.append((str(p), tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)))
        except OSError:
            out.append((str(p), None))
    return tuple(out)


class ModelWatcher:
    """Notices a newly activated model and loads it beside the running one.

    Call :meth:`poll` between spectra (or from a helper thread, since a load takes
    as long as opening the ONNX graphs): it returns a :class:`Swap` when a new model
    was activated and verified, else None.  A model that fails verification is
    refused (logged, counted in ``refused``, described by :attr:`refusal`) and not
    retried until the pointer is written again or the trust store changes; the
    caller keeps its old model.

    Parameters
    ----------
    registry : Registry
    trusted_keys, allow_unsigned
        As for :meth:`Registry.load`.  Key files and directories (``None``: the
        registry's ``trusted-keys``) are read again for every verification, so a
        key added while the daemon runs counts; a :class:`TrustedKeys` instance is used as given.
    current : str, optional
        The entry the daemon runs (None: another bundle, e.g. the shipped one).
    settled : ActivePointer, optional
        A pointer already dealt with at start (refused, or overridden by an explicit
        model path): not acted upon until it is written again.
    refusal : dict, optional
        Why the daemon refused the active model at start (same shape as :attr:`refusal`).
    """

    def __init__(self, registry: Registry, trusted_keys: TrustSpec = None, allow_unsigned: bool = False,
                 current: str | None = None, providers: list[str] | None = None, *,
                 settled: ActivePointer | None = None, refusal: dict[str, Any] | None = None) -> None:
        self.registry = registry
        self._trust_spec = trusted_keys
        self.allow_unsigned = allow_unsigned
        self.current = current
        self.providers = providers
        self.refused = 1 if refusal else 0
        self.swaps = 0
        self.refusal: dict[str, Any] | None = refusal
        self._settled = settled
        self._refused_stamp: tuple[Any, ...] | None = self._stamp() if refusal else None
        self.switch_id: str | None = settled.switch_id if settled is not None and settled.entry == current else None

    @property
    def last_error(self) -> str | None:
        return self.refusal["reason"] if self.refusal else None

    def _trust_paths(self) -> list[Path] | None:
        spec = self._trust_spec
        if isinstance(spec, TrustedKeys):
            return None  # given in memory: nothing on disk to watch
        if spec is None:
            return [self.registry.default_trusted_keys]
        if isinstance(spec, (str, Path)):
            return [Path(spec)]
        return [Path(p) for p in spec]

    def _stamp(self) -> tuple[Any, ...] | None:
        paths = self._trust_paths()
        return None if paths is None else _trust_stamp(paths)

    def _refuse(self, ptr: ActivePointer | None, reason: str) -> None:
        self.refused += 1
        self.refusal = refusal_record(reason, ptr)
        self._settled = ptr
        self._refused_stamp = self._stamp()
        what = f"model {ptr.entry}" if ptr else "the active-model pointer"
        log.error("refusing %s: %s; keeping model %s", what, reason, self.current or "(shipped)")

    def _is_new(self, ptr: ActivePointer) -> bool:
        if ptr != self._settled:
            return True
        # A refusal is retried once the trust store changed (e.g. the missing key was added).
        return (self.refusal is not None and self.refusal.get("switch_id") == ptr.switch_id
                and self._stamp() != self._refused_stamp)

    def poll(self) -> Swap | None:
        try:
            ptr = self.registry.active()
        except RamanEdgeError as e:
            if self.refusal is None or self.refusal["reason"] != str(e):
                self._refuse(None, str(e))
            return None
        if ptr is None or not self._is_new(ptr):
            return None
        if ptr.entry == self.current:
            self._settled, self.switch_id, self.refusal = ptr, ptr.switch_id, None  # re-activated: nothing to load
            return None
        try:
            keys = self.registry.trusted_keys(self._trust_spec)  # read now: keys added since start count
            bundle = self.registry.load_active(keys, self.allow_unsigned, self.providers, pointer=ptr)
        except RamanEdgeError as e:
            self._refuse(ptr, str(e))
            return None
        try:
            if self.registry.active() != ptr:
                return None  # switched again while loading: take the newer one on the next poll
        except RamanEdgeError:
            return None  # the pointer error is reported by the next poll
        log.info("model %s verified and loaded; swapping from %s", ptr.entry, self.current or "(shipped)")
        self.current, self.switch_id, self._settled, self.refusal = ptr.entry, ptr.switch_id, ptr, None
        self.swaps += 1
        return Swap(ptr.entry, bundle, ptr.switch_id)


__all__ = ["ACTIVE", "ACTIVE_BACKUP", "ActivePointer", "InstallResult", "ModelWatcher", "PointerError", "Registry",
           "RegistryEntry", "Swap", "entry_name"]
