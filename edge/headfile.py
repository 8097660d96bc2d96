"""The head file: a head-swapped bundle without its backbone, for a small signed uplink.

A rover already holds the backbone of its parent model, so the ground sends only
what changed.  The file is a zip archive::

    head-package.json   format, version, model id, the backbone sha256 it needs, parent, sizes
    manifest.json       the new bundle's manifest, byte for byte (lists every file's sha256)
    signature.json      the bundle signature over manifest.json (edge.signing; absent = unsigned)
    head.onnx           and every other file part of the bundle (support.npz, ...)
                        except backbone.onnx

Trust needs no new mechanism: the signature is the ordinary bundle signature over
``manifest.json``, and that manifest names the sha256 of the backbone, the head and
the support file.  :func:`install_head_file` rebuilds the exact signed bundle from
the installed parent's backbone (found by that sha256) plus the file's parts and
hands it to :meth:`edge.registry.Registry.install`, which verifies signature,
hashes and graphs as for any bundle.  A changed manifest fails the signature, a
changed head or support fails its hash, a head for another backbone finds no
parent and is refused.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from calibration.errors import BundleError, RamanEdgeError

from .bundle import BACKBONE, MANIFEST, default_model_path, load_bundle

log = logging.getLogger(__name__)

HEADFILE_FORMAT = "raman-edge.head"
HEADFILE_VERSION = 1
INDEX = "head-package.json"
SIGNATURE = "signature.json"  # edge.signing.SIGNATURE (not imported: keeps this module light)
#: Refuse archives that would unpack to more than this (a head file is tens of kB).
MAX_UNPACKED = 64 << 20
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)  # fixed member times: the same bundle exports to the same bytes


@dataclass(frozen=True)
class HeadFile:
    """A read head file: its index and members (name -> bytes)."""

    path: Path
    index: dict[str, Any]
    members: dict[str, bytes]

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads(self.members[MANIFEST])

    @property
    def backbone_sha256(self) -> str:
        return str(self.index["backbone_sha256"])

    @property
    def signed(self) -> bool:
        return SIGNATURE in self.members


@dataclass(frozen=True)
class ExportInfo:
    path: Path
    bytes: int
    bundle_bytes: int
    model_id: str
    signed: bool
    members: dict[str, int]


def _bundle_size(root: Path, manifest: dict[str, Any]) -> int:
    names = [MANIFEST] + [f["path"] for f in manifest["files"].values()]
    if (root / SIGNATURE).exists():
        names.append(SIGNATURE)
    return sum((root / n).stat().st_size for n in names)


def export_head(bundle: str | Path, out: str | Path, *, key: Any = None, allow_unsigned: bool = False) -> ExportInfo:
    """Write ``bundle`` minus its backbone as one signed head file.

    Parameters
    ----------
    bundle : path
        A bundle directory (typically written by :func:`edge.head.add_head`).
    out : path
        The head file to write (replaced atomically).
    key : path or edge.signing.SigningKey, optional
        Sign the bundle's manifest with this private key (the bundle directory is not
        modified).  Without it, the bundle's own ``signature.json`` is used when present.
    allow_unsigned : bool
        Write an unsigned file when there is neither a key nor a signature (development:
        a rover refuses it unless it allows unsigned bundles).

    Raises
    ------
    BundleError
        The bundle does not load, its signature does not cover its current manifest, or it is
        unsigned and neither ``key`` nor ``allow_unsigned`` was given.
    """
    root = Path(bundle)
    b = load_bundle(root)  # never export something that does not load
    manifest_bytes = (root / MANIFEST).read_bytes()
    manifest = json.loads(manifest_bytes)
    digest = hashlib.sha256(manifest_bytes).hexdigest()
    signature: bytes | None = None
    if key is not None:
        from .signing import sign_manifest

        with tempfile.TemporaryDirectory(prefix=".head-sign-") as tmp:
            (Path(tmp) / MANIFEST).write_bytes(manifest_bytes)
            sign_manifest(tmp, key)
            signature = (Path(tmp) / SIGNATURE).read_bytes()
    elif (root / SIGNATURE).exists():
        signature = (root / SIGNATURE).read_bytes()
        try:
            signed = json.loads(signature).get("manifest_sha256")
        except (ValueError, AttributeError):
            signed = None
        if signed != digest:
            raise BundleError(f"{root / SIGNATURE}: does not cover the current manifest.json (signed "
                              f"{str(signed)[:16]}…, manifest is {digest[:16]}…); re-sign the bundle or pass --key")
    elif not allow_unsigned:
        raise BundleError(f"{root}: unsigned bundle; pass --key PRIVATE_KEY to sign the head file "
                          "(or --unsigned for development: a rover refuses it unless it allows unsigned models)")
    members: dict[str, bytes] = {MANIFEST: manifest_bytes}
    if signature is not None:
        members[SIGNATURE] = signature
    for part, entry in manifest["files"].items():
        if part == "backbone":
            continue
        members[str(entry["path"])] = b.part_path(part).read_bytes()
    index = {
        "format": HEADFILE_FORMAT, "version": HEADFILE_VERSION, "model_id": b.model_id,
        "backbone_sha256": manifest["files"]["backbone"]["sha256"], "manifest_sha256": digest,
        "parent": manifest.get("parent"), "classes": len(b.classes),
        "files": {n: hashlib.sha256(v).hexdigest() for n, v in members.items()},
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in [(INDEX, (json.dumps(index, indent=2) + "\n").encode())] + list(members.items()):
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            z.writestr(info, data)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.info("exported head of %s to %s (%d bytes, %s)", b.model_id, out, len(buf.getvalue()),
             "signed" if signature else "UNSIGNED")
    return ExportInfo(out, len(buf.getvalue()), _bundle_size(root, manifest), b.model_id, signature is not None,
                      {n: len(v) for n, v in members.items()})


def is_head_file(path: str | Path) -> bool:
    """True when ``path`` is a regular file holding a zip archive (a head file or a damaged one)."""
    p = Path(path)
    return p.is_file() and zipfile.is_zipfile(p)


def read_head_file(path: str | Path) -> HeadFile:
    """Read and check the structure of a head file (not its signature: installing does that).

    Raises
    ------
    BundleError
        Not a zip, a damaged member (CRC), unexpected or unsafe member names, a missing part,
        a wrong format or version.
    """
    p = Path(path)
    if not p.is_file():
        raise BundleError(f"{p}: head file does not exist")
    try:
        with zipfile.ZipFile(p) as z:
            infos = z.infolist()
            names = [i.filename for i in infos]
            if len(set(names)) != len(names):
                raise BundleError(f"{p}: duplicate members in the head file")
            for n in names:
                pure = PurePosixPath(n)
                if len(pure.parts) != 1 or n in (".", "..") or n.endswith("/") or "\\" in n:
                    raise BundleError(f"{p}: unsafe member name {n!r} in the head file")
            if sum(i.file_size for i in infos) > MAX_UNPACKED:
                raise BundleError(f"{p}: unpacks to more than {MAX_UNPACKED >> 20} MiB; not a head file")
            members = {n: z.read(n) for n in names}
    except zipfile.BadZipFile as e:
        raise BundleError(f"{p}: not a head file or damaged ({e})") from None
    except (OSError, EOFError, zipfile.LargeZipFile) as e:
        raise BundleError(f"{p}: cannot read the head file ({e})") from None
    if INDEX not in members:
        raise BundleError(f"{p}: not a raman-edge head file (no {INDEX}); export one with `raman-edge head export`")
    try:
        index = json.loads(members.pop(INDEX))
        manifest = json.loads(members[MANIFEST])
    except KeyError:
        raise BundleError(f"{p}: head file has no {MANIFEST}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise BundleError(f"{p}: {INDEX} or {MANIFEST} is not valid JSON ({e})") from None
    if not isinstance(index, dict) or index.get("format") != HEADFILE_FORMAT:
        raise BundleError(f"{p}: {INDEX} format is {index.get('format') if isinstance(index, dict) else None!r}, "
                          f"expected {HEADFILE_FORMAT!r}")
    if index.get("version") != HEADFILE_VERSION:
        raise BundleError(f"{p}: head file version {index.get('version')!r} is not supported "
                          f"by this build (reads {HEADFILE_VERSION})")
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or "backbone" not in files or "head" not in files:
        raise BundleError(f"{p}: {MANIFEST} does not list a backbone and a head")
    try:
        backbone_sha = str(files["backbone"]["sha256"])
        need = {str(e["path"]) for part, e in files.items() if part != "backbone"}
    except (KeyError, TypeError):
        raise BundleError(f"{p}: {MANIFEST} has a malformed 'files' entry") from None
    if index.get("backbone_sha256") != backbone_sha:
        raise BundleError(f"{p}: {INDEX} and {MANIFEST} name different backbones")
    if BACKBONE in members or str(files["backbone"].get("path")) in members:
        raise BundleError(f"{p}: a head file must not carry the backbone")
    missing = sorted(need - set(members))
    extra = sorted(set(members) - need - {MANIFEST, SIGNATURE})
    if missing:
        raise BundleError(f"{p}: head file lacks {missing} listed in its {MANIFEST}")
    if extra:
        raise BundleError(f"{p}: head file holds members its {MANIFEST} does not list: {extra}")
    return HeadFile(p, index, members)


def find_backbone(registry: Any, sha256: str) -> Path | None:
    """The installed backbone file with this sha256 (registry entries first, then the shipped model)."""
    from calibration.dataset import file_sha256

    candidates = [e.path for e in registry.entries() if not e.problem] + [default_model_path()]
    for root in candidates:
        try:
            files = json.loads((root / MANIFEST).read_text())["files"]
            if files["backbone"]["sha256"] != sha256:
                continue
            path = root / files["backbone"]["path"]
            if path.is_file() and file_sha256(path) == sha256:
                return path
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def install_head_file(registry: Any, path: str | Path, trusted_keys: Any = None, allow_unsigned: bool = False,
                      activate: bool = True, providers: list[str] | None = None) -> Any:
    """Compose the bundle from the installed parent's backbone and the head file, then install it.

    Parameters
    ----------
    registry : edge.registry.Registry
    path : path
        The head file (from :func:`export_head`).
    trusted_keys, allow_unsigned, activate, providers
        As :meth:`edge.registry.Registry.install`.

    Returns
    -------
    edge.registry.InstallResult

    Raises
    ------
    BundleError
        Damaged or malformed file; parent backbone not installed; unsigned (unless allowed),
        signed by an untrusted key, manifest or parts changed after signing.  The message
        names the head file; nothing is installed or activated.
    """
    p = Path(path)
    hf = read_head_file(p)
    sha = hf.backbone_sha256
    backbone = find_backbone(registry, sha)
    if backbone is None:
        parent = hf.index.get("parent") or {}
        installed = sorted({e.model_id or e.name for e in registry.entries()})
        raise BundleError(
            f"{p}: needs the backbone sha256 {sha[:16]}… (parent model {parent.get('model_id', '?')}), which is not "
            f"installed in {registry.models_dir} (installed: {', '.join(installed) or 'none'}) nor shipped; "
            "install the parent bundle first")
    registry.root.mkdir(parents=True, exist_ok=True)
    # Not under models/: the registry cleans up its own .install-* work directories under its lock.
    tmp = Path(tempfile.mkdtemp(prefix=".head-compose-", dir=registry.root))
    try:
        for name, data in hf.members.items():
            (tmp / name).write_bytes(data)
        manifest_backbone = hf.manifest["files"]["backbone"]["path"]
        shutil.copyfile(backbone, tmp / manifest_backbone)
        try:
            return registry.install(tmp, trusted_keys, allow_unsigned=allow_unsigned, activate=activate,
                                    providers=providers, source=f"{p.resolve()} + backbone {backbone}")
        except RamanEdgeError as e:
            msg = str(e).replace(str(tmp), f"{p}[composed]")
            raise type(e)(f"{p}: head file refused: {msg}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def verify_head_file(path: str | Path, parent: str | Path, trusted_keys: Any = None,
                     allow_unsigned: bool = False) -> tuple[Any, Any]:
    """Check a head file as a rover holding ``parent`` would, without a registry (ground side).

    Composes the bundle from ``parent``'s backbone in a temporary directory and applies the
    trust policy and the full load (:func:`edge.signing.load_trusted_bundle`).

    Returns
    -------
    (edge.bundle.Bundle, edge.signing.SignatureInfo)
        The bundle points into a removed temporary directory: use its manifest, not its files.

    Raises
    ------
    BundleError
        As :func:`install_head_file`; also when ``parent`` has another backbone.
    """
    from calibration.dataset import file_sha256

    from .signing import as_trusted_keys, load_trusted_bundle

    p = Path(path)
    hf = read_head_file(p)
    pb = load_bundle(parent)
    if file_sha256(pb.backbone_path) != hf.backbone_sha256:
        raise BundleError(f"{p}: needs the backbone sha256 {hf.backbone_sha256[:16]}…, {parent} has "
                          f"{pb.manifest['files']['backbone']['sha256'][:16]}… (not its parent)")
    with tempfile.TemporaryDirectory(prefix=".head-verify-") as tmp:
        root = Path(tmp)
        for name, data in hf.members.items():
            (root / name).write_bytes(data)
        shutil.copyfile(pb.backbone_path, root / hf.manifest["files"]["backbone"]["path"])
        try:
            return load_trusted_bundle(root, as_trusted_keys(trusted_keys), allow_unsigned)
        except RamanEdgeError as e:
            raise type(e)(f"{p}: head file refused: {str(e).replace(str(root), f'{p}[composed]')}") from None


def describe_head_file(path: str | Path) -> dict[str, Any]:
    """Index, sizes and signature status of a head file (no trust decision)."""
    hf = read_head_file(path)
    m = hf.manifest
    return {"path": str(hf.path), "bytes": hf.path.stat().st_size, "model_id": hf.index.get("model_id"),
            "backbone_sha256": hf.backbone_sha256, "parent": hf.index.get("parent"), "classes": len(m.get("classes", [])),
            "signed": hf.signed, "members": {n: len(v) for n, v in hf.members.items()}}


__all__ = ["HeadFile", "ExportInfo", "export_head", "read_head_file", "install_head_file", "verify_head_file",
           "find_backbone",
           "is_head_file", "describe_head_file", "HEADFILE_FORMAT", "HEADFILE_VERSION"]
