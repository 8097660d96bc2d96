"""Bundle signatures: who made this model, and is it exactly what they made?

A signature covers the sha256 of a bundle's ``manifest.json``; the manifest holds
the sha256 of every ONNX file, and :func:`edge.bundle.load_bundle` checks those,
so a verified signature plus a successful load covers every byte the edge runs.

Two algorithms:

``ed25519``
    The ground keeps the private key; the rover holds only public keys (the
    default, via the ``cryptography`` package).
``hmac-sha256``
    One shared secret on the ground and the rover, for teams that prefer it
    (standard library only).  Whoever reads the rover's key can sign.

The signature lives beside the manifest as ``BUNDLE/signature.json``::

    {"format": "raman-edge.signature", "version": 1, "algorithm": "ed25519",
     "key_id": "3f9a…", "covers": "manifest.json", "manifest_sha256": "…",
     "signature": "<base64>", "signed_utc": "…"}

The bytes signed are :func:`signing_payload` (a fixed text with the algorithm,
key id, covered file name and its sha256), never the JSON itself, so formatting
cannot matter.  ``signed_utc`` is informational and not signed.

``covers`` names the signed manifest file: a later "head package" (a head alone
with its own manifest) will be signed the same way with ``covers`` naming its
manifest; :func:`verify_manifest` already takes the file name.

Trust policy (:func:`check_trust`): the bundle shipped inside the package is
trusted as part of the installed software by its content, never by its path:
its manifest's sha256 is recorded here (:data:`SHIPPED_MANIFEST_SHA256`), and the
manifest holds the sha256 of every file the load checks.  A bundle at the
shipped path whose content differs is just another unsigned bundle.  Any other
bundle needs a valid signature from a trusted key, unless unsigned bundles are
allowed (development).
"""
from __future__ import annotations

import base64
import binascii
import datetime as _dt
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Union

from calibration.errors import BundleError, ConfigError

from .bundle import MANIFEST, Bundle, load_bundle

log = logging.getLogger(__name__)

# sha256 of edge/models/default/manifest.json as released (tests/test_signing_verify.py
# checks it against the file): rebuilding the shipped model means updating it here.
SHIPPED_MANIFEST_SHA256 = "856ed878a822e844d489a96fa54adfc8ca8afae730ea11fab6b5cf0cd16aa7f5"


class TrustError(BundleError, ConfigError):
    """A bundle is unsigned or signed by a key that is not trusted here.

    Both a :class:`BundleError` (callers that refuse bad bundles catch it) and a
    :class:`ConfigError` (exit status 2): the bundle may be fine, the trust
    configuration (trusted keys, ``--allow-unsigned``) does not admit it, and
    restarting will not change that.
    """

SIGNATURE = "signature.json"
SIGNATURE_FORMAT = "raman-edge.signature"
SIGNATURE_VERSION = 1
ED25519 = "ed25519"
HMAC_SHA256 = "hmac-sha256"
ALGORITHMS = (ED25519, HMAC_SHA256)

# Key file names written by generate_key; the trusted-keys loader reads these suffixes.
PRIVATE_SUFFIX = ".private.pem"
PUBLIC_SUFFIX = ".public.pem"
HMAC_SUFFIX = ".hmac"
_HMAC_BEGIN = "-----BEGIN RAMAN-EDGE HMAC-SHA256 KEY-----"
_HMAC_END = "-----END RAMAN-EDGE HMAC-SHA256 KEY-----"
_HMAC_MIN_BYTES = 16
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

# Statuses of SignatureInfo.
SIGNED = "signed"          # valid signature from a trusted key
BUILTIN = "builtin"        # the model shipped with the package
UNSIGNED = "unsigned"      # no signature; accepted only because allow_unsigned
UNVERIFIED = "unverified"  # signed by a key not trusted here; accepted only because allow_unsigned


@dataclass(frozen=True)
class SignatureInfo:
    """The outcome of a trust check: why a bundle may (or may not) be run.

    ``trusted`` is True for a valid signature from a trusted key and for the
    shipped model; ``unsigned``/``unverified`` bundles are only ever returned
    when the caller allowed unsigned bundles (development).
    """

    path: Path
    status: str
    manifest_sha256: str
    algorithm: str | None = None
    key_id: str | None = None
    key_name: str | None = None

    @property
    def trusted(self) -> bool:
        return self.status in (SIGNED, BUILTIN)

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "status": self.status, "trusted": self.trusted,
                "manifest_sha256": self.manifest_sha256, "algorithm": self.algorithm,
                "key_id": self.key_id, "key_name": self.key_name}

    def describe(self) -> str:
        if self.status == SIGNED:
            return f"signed ({self.algorithm}, key {self.key_name or '?'} {self.key_id})"
        if self.status == BUILTIN:
            return "shipped with the package"
        if self.status == UNVERIFIED:
            return f"UNVERIFIED signature (key {self.key_id} not trusted), accepted for development"
        return "UNSIGNED, accepted for development"


@dataclass(frozen=True)
class VerifyKey:
    """A key the rover trusts: an Ed25519 public key or an HMAC secret."""

    algorithm: str
    key_id: str
    name: str
    source: Path | None = field(default=None, compare=False)
    material: Any = field(default=None, repr=False, compare=False)  # Ed25519PublicKey or bytes

    def verify(self, payload: bytes, signature: bytes) -> bool:
        if self.algorithm == HMAC_SHA256:
            return hmac.compare_digest(hmac.new(self.material, payload, hashlib.sha256).digest(), signature)
        from cryptography.exceptions import InvalidSignature

        try:
            self.material.verify(signature, payload)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class SigningKey:
    """A key the ground signs with: an Ed25519 private key or an HMAC secret."""

    algorithm: str
    key_id: str
    name: str
    source: Path | None = field(default=None, compare=False)
    material: Any = field(default=None, repr=False, compare=False)  # Ed25519PrivateKey or bytes

    def sign(self, payload: bytes) -> bytes:
        if self.algorithm == HMAC_SHA256:
            return hmac.new(self.material, payload, hashlib.sha256).digest()
        return self.material.sign(payload)

    def verify_key(self) -> VerifyKey:
        material = self.material if self.algorithm == HMAC_SHA256 else self.material.public_key()
        return VerifyKey(self.algorithm, self.key_id, self.name, self.source, material)


class TrustedKeys:
    """The set of keys a rover accepts signatures from, by key id.

    Build it with :meth:`load` from key files or directories (a directory
    contributes every ``*.pem`` and ``*.hmac`` file in it).
    """

    def __init__(self, keys: Iterable[VerifyKey] = (), sources: Iterable[Path] = ()) -> None:
        self._keys: dict[str, VerifyKey] = {}
        for k in keys:
            self._keys[k.key_id] = k
        self.sources = [Path(s) for s in sources]

    @classmethod
    def load(cls, *paths: str | Path) -> "TrustedKeys":
        """Read trusted keys from files and/or directories.

        Raises
        ------
        ConfigError
            A path does not exist, a key file cannot be read, or a private key
            was found (the rover needs only public keys).
        """
        keys: list[VerifyKey] = []
        for p in map(Path, paths):
            if p.is_dir():
                files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")
                               and (f.name.endswith(".pem") or f.name.endswith(HMAC_SUFFIX)))
                if not files:
                    log.warning("%s: trusted-keys directory holds no *.pem or *%s key files", p, HMAC_SUFFIX)
                keys.extend(load_verify_key(f) for f in files)
            elif p.is_file():
                keys.append(load_verify_key(p))
            else:
                raise ConfigError(f"{p}: trusted keys path does not exist")
        return cls(keys, paths)

    def get(self, key_id: str) -> VerifyKey | None:
        return self._keys.get(key_id)

    @property
    def ids(self) -> list[str]:
        return sorted(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[VerifyKey]:
        return iter(self._keys.values())

    def __repr__(self) -> str:
        return f"TrustedKeys({', '.join(f'{k.name}={k.key_id}' for k in self)})"


TrustSpec = Union[TrustedKeys, str, Path, Iterable[Union[str, Path]], None]


def as_trusted_keys(spec: TrustSpec) -> TrustedKeys:
    """A :class:`TrustedKeys` from an instance, one path, several paths, or None (no keys)."""
    if isinstance(spec, TrustedKeys):
        return spec
    if spec is None:
        return TrustedKeys()
    if isinstance(spec, (str, Path)):
        return TrustedKeys.load(spec)
    return TrustedKeys.load(*spec)


# --------------------------------------------------------------------------- keys

def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise ConfigError("Ed25519 signatures need the 'cryptography' package (a dependency of raman-edge); "
                          "reinstall raman-edge or use an hmac-sha256 key") from None
    return serialization, ed25519


def ed25519_key_id(public_key: Any) -> str:
    """First 16 hex digits of sha256 over the raw 32-byte public key."""
    serialization, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def hmac_key_id(secret: bytes) -> str:
    """A one-way id for a shared secret (domain-separated hash, 64 bits shown)."""
    return hashlib.sha256(b"raman-edge.hmac-key-id\0" + secret).hexdigest()[:16]


def _key_name(path: Path) -> str:
    name = path.name
    for suffix in (PRIVATE_SUFFIX, PUBLIC_SUFFIX, HMAC_SUFFIX, ".pem"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _read_key_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read key file: {e.strerror or e}") from None
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a key file (binary content)") from None


def _parse_hmac(path: Path, text: str) -> bytes:
    body = text.strip().splitlines()
    if len(body) < 3 or body[0].strip() != _HMAC_BEGIN or body[-1].strip() != _HMAC_END:
        raise ConfigError(f"{path}: not a raman-edge HMAC key file (expected {_HMAC_BEGIN} ... {_HMAC_END})")
    try:
        secret = base64.b64decode("".join(line.strip() for line in body[1:-1]), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{path}: HMAC key body is not valid base64") from None
    if len(secret) < _HMAC_MIN_BYTES:
        raise ConfigError(f"{path}: HMAC key is {len(secret)} bytes; at least {_HMAC_MIN_BYTES} are required")
    return secret


def _warn_if_readable(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & 0o077:
        log.warning("%s: secret key file is readable by group/others (mode %o); chmod 600 it", path, mode & 0o777)


def load_signing_key(path: str | Path) -> SigningKey:
    """Read a private key: an Ed25519 PKCS#8 PEM or a raman-edge HMAC key file.

    Raises
    ------
    ConfigError
        Unreadable, a public key, or not Ed25519/HMAC.
    """
    p = Path(path)
    text = _read_key_text(p)
    name = _key_name(p)
    if _HMAC_BEGIN in text:
        secret = _parse_hmac(p, text)
        _warn_if_readable(p)
        return SigningKey(HMAC_SHA256, hmac_key_id(secret), name, p, secret)
    if "PUBLIC KEY-----" in text:
        raise ConfigError(f"{p}: is a public key; signing needs the private key ({name}{PRIVATE_SUFFIX})")
    if "PRIVATE KEY-----" not in text:
        raise ConfigError(f"{p}: not a PEM private key or raman-edge HMAC key")
    serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_private_key(text.encode(), password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{p}: cannot read the private key ({e}); encrypted keys are not supported") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"{p}: is a {type(key).__name__}; only Ed25519 keys are supported")
    _warn_if_readable(p)
    return SigningKey(ED25519, ed25519_key_id(key.public_key()), name, p, key)


def load_verify_key(path: str | Path) -> VerifyKey:
    """Read a key the rover trusts: an Ed25519 public-key PEM or an HMAC key file.

    Raises
    ------
    ConfigError
        Unreadable, a private key (keep it on the ground), or not Ed25519/HMAC.
    """
    p = Path(path)
    text = _read_key_text(p)
    name = _key_name(p)
    if _HMAC_BEGIN in text:
        secret = _parse_hmac(p, text)
        _warn_if_readable(p)
        return VerifyKey(HMAC_SHA256, hmac_key_id(secret), name, p, secret)
    if "PRIVATE KEY-----" in text:
        raise ConfigError(f"{p}: is a private key; the rover trusts public keys only "
                          f"(copy {name}{PUBLIC_SUFFIX}, keep the private key on the ground)")
    if "PUBLIC KEY-----" not in text:
        raise ConfigError(f"{p}: not a PEM public key or raman-edge HMAC key")
    serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_public_key(text.encode())
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{p}: cannot read the public key ({e})") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ConfigError(f"{p}: is a {type(key).__name__}; only Ed25519 keys are supported")
    return VerifyKey(ED25519, ed25519_key_id(key), name, p, key)


@dataclass(frozen=True)
class GeneratedKey:
    """Files written by :func:`generate_key`; ``public`` equals ``private`` for HMAC."""

    algorithm: str
    key_id: str
    name: str
    private: Path
    public: Path


def _write_new(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    """Create ``path`` with ``mode`` from the first byte on (a secret is never briefly world-readable)."""
    if path.exists() and not overwrite:
        raise ConfigError(f"{path}: already exists; refusing to overwrite a key (use --force to replace it)")
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def generate_key(out_dir: str | Path, name: str = "raman-edge", algorithm: str = ED25519,
                 overwrite: bool = False) -> GeneratedKey:
    """Create a signing key in ``out_dir``.

    Ed25519 writes ``NAME.private.pem`` (PKCS#8, mode 0600; stays on the ground)
    and ``NAME.public.pem`` (give it to the rover's trusted-keys directory).
    HMAC-SHA256 writes one secret ``NAME.hmac`` (mode 0600) used on both sides.
    """
    if not _NAME_RE.match(name):
        raise ConfigError(f"key name {name!r}: use letters, digits, '.', '_' or '-' (max 64, no leading dot)")
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"algorithm {algorithm!r}: expected one of {', '.join(ALGORITHMS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if algorithm == HMAC_SHA256:
        secret = secrets.token_bytes(32)
        path = out / f"{name}{HMAC_SUFFIX}"
        text = f"{_HMAC_BEGIN}\n{base64.b64encode(secret).decode()}\n{_HMAC_END}\n"
        _write_new(path, text.encode(), 0o600, overwrite)
        return GeneratedKey(algorithm, hmac_key_id(secret), name, path, path)
    serialization, ed25519 = _crypto()
    key = ed25519.Ed25519PrivateKey.generate()
    private, public = out / f"{name}{PRIVATE_SUFFIX}", out / f"{name}{PUBLIC_SUFFIX}"
    if not overwrite:
        for p in (private, public):
            if p.exists():
                raise ConfigError(f"{p}: already exists; refusing to overwrite a key (use --force to replace it)")
    _write_new(private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()), 0o600, overwrite)
    _write_new(public, key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo), 0o644, overwrite)
    return GeneratedKey(ED25519, ed25519_key_id(key.public_key()), name, private, public)


# --------------------------------------------------------------------------- sign / verify

def signing_payload(algorithm: str, key_id: str, covers: str, manifest_sha256: str) -> bytes:
    """The exact bytes signed: algorithm and key id included, so neither can be swapped."""
    return (f"{SIGNATURE_FORMAT} v{SIGNATURE_VERSION}\nalgorithm: {algorithm}\nkey_id: {key_id}\n"
            f"covers: {covers}\nmanifest_sha256: {manifest_sha256}\n").encode()


def _manifest_bytes(root: Path, covers: str) -> bytes:
    if not root.is_dir():
        raise BundleError(f"{root}: model bundle directory does not exist")
    try:
        return (root / covers).read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{root / covers}: missing; not a model bundle") from None
    except OSError as e:
        raise BundleError(f"{root / covers}: cannot read: {e.strerror or e}") from None


def sign_manifest(path: str | Path, key: SigningKey | str | Path, covers: str = MANIFEST) -> SignatureInfo:
    """Sign ``path/covers`` and write ``path/signature.json`` atomically (no content check)."""
    root = Path(path)
    sk = key if isinstance(key, SigningKey) else load_signing_key(key)
    digest = hashlib.sha256(_manifest_bytes(root, covers)).hexdigest()
    sig = sk.sign(signing_payload(sk.algorithm, sk.key_id, covers, digest))
    doc = {"format": SIGNATURE_FORMAT, "version": SIGNATURE_VERSION, "algorithm": sk.algorithm,
           "key_id": sk.key_id, "covers": covers, "manifest_sha256": digest,
           "signature": base64.b64encode(sig).decode(),
           "signed_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    _write_new(root / SIGNATURE, (json.dumps(doc, indent=2) + "\n").encode(), 0o644, overwrite=True)
    log.info("signed %s with %s key %s (%s)", root, sk.algorithm, sk.name, sk.key_id)
    return SignatureInfo(root, SIGNED, digest, sk.algorithm, sk.key_id, sk.name)


def sign_bundle(path: str | Path, key: SigningKey | str | Path, check: bool = True) -> SignatureInfo:
    """Sign a model bundle on the ground.

    Parameters
    ----------
    path : path
        The bundle directory; ``signature.json`` is written (or replaced) there.
    key : SigningKey or path
        An Ed25519 private key (PEM) or an HMAC key file.
    check : bool
        Load the bundle first (hashes, graphs) so a broken bundle is never signed.
    """
    if check:
        load_bundle(path)
    return sign_manifest(path, key)


def _field(doc: dict[str, Any], name: str, where: Path) -> str:
    value = doc.get(name)
    if not isinstance(value, str) or not value:
        raise BundleError(f"{where}: field {name!r} is missing or not a string")
    return value


def verify_manifest(path: str | Path, trusted_keys: TrustSpec, allow_unsigned: bool = False,
                    covers: str = MANIFEST) -> SignatureInfo:
    """Check ``path/signature.json`` against ``path/covers`` and the trusted keys.

    The generic form of :func:`verify_bundle` (``covers`` names the manifest file,
    the hook for other package kinds such as a head alone).

    With ``allow_unsigned`` a missing signature, or one by a key not trusted here,
    is accepted (status ``unsigned``/``unverified``, logged as a warning); a
    signature that contradicts the manifest or fails with a trusted key is refused
    even then, because that means damage or tampering, not development.
    """
    root = Path(path)
    data = _manifest_bytes(root, covers)
    digest = hashlib.sha256(data).hexdigest()
    sig_path = root / SIGNATURE
    if not sig_path.exists():
        if allow_unsigned:
            log.warning("%s: unsigned bundle accepted (unsigned bundles are allowed: development only)", root)
            return SignatureInfo(root, UNSIGNED, digest)
        raise TrustError(f"{root}: unsigned bundle (no {SIGNATURE}); refused. Sign it on the ground with "
                          f"`raman-edge sign {root} --key PRIVATE_KEY`, or allow unsigned bundles (development only)")
    try:
        doc = json.loads(sig_path.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{sig_path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BundleError(f"{sig_path}: cannot read: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != SIGNATURE_FORMAT:
        raise BundleError(f"{sig_path}: not a raman-edge signature ('format' must be {SIGNATURE_FORMAT!r})")
    if doc.get("version") != SIGNATURE_VERSION:
        raise BundleError(f"{sig_path}: signature version {doc.get('version')!r} is not supported "
                          f"by this build (reads {SIGNATURE_VERSION})")
    algorithm = _field(doc, "algorithm", sig_path)
    if algorithm not in ALGORITHMS:
        raise BundleError(f"{sig_path}: unknown algorithm {algorithm!r} (supported: {', '.join(ALGORITHMS)})")
    key_id = _field(doc, "key_id", sig_path)
    signed_covers = doc.get("covers", MANIFEST)
    if signed_covers != covers:
        raise BundleError(f"{sig_path}: signature covers {signed_covers!r}, expected {covers!r}")
    signed_digest = _field(doc, "manifest_sha256", sig_path)
    try:
        signature = base64.b64decode(_field(doc, "signature", sig_path), validate=True)
    except (binascii.Error, ValueError):
        raise BundleError(f"{sig_path}: 'signature' is not valid base64") from None
    if not hmac.compare_digest(signed_digest, digest):
        raise BundleError(f"{root / covers}: manifest changed after signing: the signature covers sha256 "
                          f"{signed_digest[:16]}…, the file is {digest[:16]}…; refused")
    trust = as_trusted_keys(trusted_keys)
    key = trust.get(key_id)
    if key is None:
        known = ", ".join(f"{k.name}={k.key_id}" for k in trust) or "none configured"
        if allow_unsigned:
            log.warning("%s: signed by key %s which is not trusted here; accepted (unsigned bundles are "
                        "allowed: development only)", root, key_id)
            return SignatureInfo(root, UNVERIFIED, digest, algorithm, key_id)
        raise TrustError(f"{sig_path}: signed by unknown key id {key_id} ({algorithm}); refused. "
                          f"Trusted keys: {known}")
    if key.algorithm != algorithm:
        raise BundleError(f"{sig_path}: says {algorithm} but trusted key {key.name} ({key_id}) is {key.algorithm}; "
                          "refused")
    if not key.verify(signing_payload(algorithm, key_id, covers, digest), signature):
        raise BundleError(f"{sig_path}: bad signature: it does not verify with trusted key {key.name} ({key_id}); "
                          "the signature file was altered or made with another key; refused")
    log.debug("%s: valid %s signature by %s (%s)", root, algorithm, key.name, key_id)
    return SignatureInfo(root, SIGNED, digest, algorithm, key_id, key.name)


def verify_bundle(path: str | Path, trusted_keys: TrustSpec, allow_unsigned: bool = False) -> SignatureInfo:
    """Verify a bundle's signature (not its ONNX files: :func:`load_bundle` hashes those).

    Parameters
    ----------
    path : path
        The bundle directory.
    trusted_keys : TrustedKeys, path, list of paths, or None
        Keys (or key files/directories) whose signatures are accepted.
    allow_unsigned : bool
        Development only: accept a bundle with no signature or signed by an
        untrusted key (a contradicting or failing signature is still refused).

    Raises
    ------
    BundleError
        Unsigned, unknown key id, bad signature, manifest changed after signing,
        or a malformed ``signature.json``; the message names the file.
    """
    return verify_manifest(path, trusted_keys, allow_unsigned, MANIFEST)


def is_builtin(path: str | Path) -> bool:
    """True when ``path`` holds the shipped bundle's exact manifest (wherever it lies).

    Content, not location: a bundle written over the shipped directory is not
    trusted because of where it is.  The manifest pins every other file by sha256,
    which :func:`edge.bundle.load_bundle` checks.
    """
    try:
        digest = hashlib.sha256((Path(path) / MANIFEST).read_bytes()).hexdigest()
    except OSError:
        return False
    return hmac.compare_digest(digest, SHIPPED_MANIFEST_SHA256)


def check_trust(path: str | Path, trusted_keys: TrustSpec, allow_unsigned: bool = False) -> SignatureInfo:
    """The trust policy the daemon and the CLI apply before running any bundle.

    The shipped model (any directory whose manifest is byte-identical to the one
    released, :data:`SHIPPED_MANIFEST_SHA256`; its other files are then checked by
    the load) is trusted as part of the installed software; any other bundle needs a valid signature
    from a trusted key unless ``allow_unsigned`` (development).

    Raises
    ------
    TrustError
        Unsigned, or signed by a key not trusted here (exit status 2).
    BundleError
        Otherwise as :func:`verify_bundle` (a signature that fails, a manifest
        changed after signing: damage or tampering).
    """
    root = Path(path)
    if is_builtin(root):
        data = _manifest_bytes(root, MANIFEST)
        return SignatureInfo(root, BUILTIN, hashlib.sha256(data).hexdigest())
    return verify_bundle(root, trusted_keys, allow_unsigned)


def load_trusted_bundle(path: str | Path, trusted_keys: TrustSpec, allow_unsigned: bool = False,
                        providers: list[str] | None = None) -> tuple[Bundle, SignatureInfo]:
    """:func:`check_trust`, then :func:`load_bundle`, then prove both read the same manifest.

    The last step closes the gap between reading the manifest to verify it and
    reading it again to load it.
    """
    info = check_trust(path, trusted_keys, allow_unsigned)
    bundle = load_bundle(path, providers=providers)
    root = Path(path)
    data = _manifest_bytes(root, MANIFEST)
    try:
        same = hashlib.sha256(data).hexdigest() == info.manifest_sha256 and json.loads(data) == bundle.manifest
    except json.JSONDecodeError:
        same = False
    if not same:
        raise BundleError(f"{root / MANIFEST}: changed while it was being verified and loaded; refused")
    return bundle, info


__all__ = [
    "ALGORITHMS", "BUILTIN", "ED25519", "HMAC_SHA256", "SHIPPED_MANIFEST_SHA256", "SIGNATURE", "SIGNED",
    "UNSIGNED", "UNVERIFIED", "GeneratedKey", "SignatureInfo", "SigningKey", "TrustError", "TrustedKeys", "VerifyKey",
    "as_trusted_keys", "check_trust", "generate_key", "is_builtin", "load_signing_key", "load_trusted_bundle",
    "load_verify_key", "sign_bundle", "sign_manifest", "signing_payload", "verify_bundle", "verify_manifest",
]
