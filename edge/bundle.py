"""The model bundle: a directory the trainer writes and the daemon verifies.

Layout::

    BUNDLE/
      manifest.json   format version, classes, preprocessing spec, input grid,
                      feature size, temperature, file hashes, architecture,
                      training provenance (data hash, command, seed, versions)
      backbone.onnx   spectrum (N, points) float32  -> features (N, F)
      head.onnx       features (N, F)     float32  -> logits   (N, K)

Backbone and head are separate files so that a head can be replaced alone (new
minerals) while the backbone stays bit-identical.  This module is the single
definition of the format: the trainer writes through :func:`write_bundle`, the
edge reads through :func:`load_bundle`.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from calibration.dataset import file_sha256 as sha256_file
from calibration.errors import BundleError, ConfigError, RamanEdgeError
from calibration.preprocess import Preprocessor

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "raman-edge.bundle"
BUNDLE_VERSION = 1
MANIFEST = "manifest.json"
BACKBONE = "backbone.onnx"
HEAD = "head.onnx"

# Tensor names every bundle uses; the ONNX graphs are checked against them on load.
BACKBONE_INPUT, BACKBONE_OUTPUT = "spectrum", "features"
HEAD_INPUT, HEAD_OUTPUT = "features", "logits"


def default_model_path() -> Path:
    """The bundle shipped inside the package (``edge/models/default``)."""
    return Path(__file__).resolve().parent / "models" / "default"


def package_dir() -> Path:
    """The installed ``edge`` package directory (it holds the shipped model)."""
    return Path(__file__).resolve().parent


def refuse_package_path(path: str | Path, option: str) -> None:
    """Refuse an output path inside the installed package.

    Writing there would replace the shipped model (or sit beside it) in a place
    that a reinstall silently reverts and that every user of the installation shares.

    Parameters
    ----------
    path : path
        Where a command is about to write (need not exist yet).
    option : str
        The option or argument that named it, for the message (e.g. ``--out``).

    Raises
    ------
    ConfigError
        ``path`` resolves (symbolic links followed) to the package directory or below it.
    """
    target = Path(path).expanduser().resolve()
    pkg = package_dir()
    if target == pkg or pkg in target.parents:
        raise ConfigError(f"{option} {path}: lies inside the installed raman-edge package ({pkg}); "
                          "write bundles and head files elsewhere (the shipped model is never modified)")


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def validation_figures(manifest: dict[str, Any]) -> dict[str, float | int]:
    """The figures a bundle's manifest records about its fit, those that are present.

    Keys: ``val_top1``/``val_spectra`` (the trainer's validation split),
    ``heldout_top1``/``heldout_spectra`` (a head swap's cross-fitted new spectra),
    ``train_top1``, ``temperature``, ``ece`` (15-bin ECE after temperature scaling).
    """
    training = manifest.get("training")
    metrics = training.get("metrics") if isinstance(training, dict) else None
    m = metrics if isinstance(metrics, dict) else {}
    cal = m.get("calibration") if isinstance(m.get("calibration"), dict) else {}
    out: dict[str, float | int] = {}
    for key, value in (("val_top1", m.get("val_top1")), ("val_spectra", m.get("val_spectra")),
                       ("heldout_top1", m.get("heldout_top1")), ("heldout_spectra", m.get("heldout_spectra")),
                       ("train_top1", m.get("train_top1")), ("temperature", manifest.get("temperature")),
                       ("ece", cal.get("ece_after"))):
        number = _number(value)
        if number is not None:
            out[key] = int(number) if key.endswith("_spectra") else number
    return out


def validation_summary(manifest: dict[str, Any]) -> str:
    """:func:`validation_figures` on one short line, e.g. ``val top-1 84.2% (52), T 1.04, ECE 0.036``."""
    f = validation_figures(manifest)
    parts: list[str] = []
    for key, label in (("val_top1", "val top-1"), ("heldout_top1", "held-out top-1")):
        if key in f:
            n = f.get(key.replace("top1", "spectra"))
            parts.append(f"{label} {f[key]:.1%}" + (f" ({n})" if n is not None else ""))
            break
    else:
        if "train_top1" in f:
            parts.append(f"no validation split (train top-1 {f['train_top1']:.1%})")
    if "temperature" in f:
        parts.append(f"T {f['temperature']:.3g}")
    if "ece" in f:
        parts.append(f"ECE {f['ece']:.3f}")
    return ", ".join(parts) if parts else "no validation figures recorded"


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk."""

    path: Path
    manifest: dict[str, Any]
    preprocessor: Preprocessor
    backbone_session: Any  # onnxruntime.InferenceSession, verified against the manifest
    head_session: Any

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def model_id(self) -> str:
        return str(self.manifest["model_id"])

    @property
    def feature_size(self) -> int:
        return int(self.manifest["feature_size"])

    @property
    def input_points(self) -> int:
        return int(self.manifest["input"]["points"])

    @property
    def temperature(self) -> float:
        return float(self.manifest.get("temperature", 1.0))

    @property
    def head_info(self) -> dict[str, Any]:
        """``architecture.head`` of the manifest: ``{"kind": "linear"}`` unless the head says otherwise
        (``shift-mean`` with its ``copies``: :mod:`trainer.shift_average`, :func:`edge.head.head_copies`)."""
        return {"kind": "linear", **((self.manifest.get("architecture") or {}).get("head") or {})}

    @property
    def backbone_path(self) -> Path:
        return self.path / self.manifest["files"]["backbone"]["path"]

    @property
    def head_path(self) -> Path:
        return self.path / self.manifest["files"]["head"]["path"]

    @property
    def parts(self) -> list[str]:
        """Every file part the manifest lists (``backbone``, ``head`` and any extra ones, e.g. ``support``)."""
        return list(self.manifest["files"])

    def part_path(self, part: str) -> Path:
        """Path of a listed file part (its sha256 was verified on load).

        Raises
        ------
        BundleError
            The bundle has no such part.
        """
        files = self.manifest["files"]
        if part not in files:
            raise BundleError(f"{self.path / MANIFEST}: the bundle has no {part!r} file (it has {sorted(files)})")
        return self.path / files[part]["path"]


def model_id_for(backbone_sha: str, head_sha: str, classes: list[str], spec: dict[str, Any], arch: str) -> str:
    """Content-derived id: the same weights, classes and preprocessing give the same id."""
    h = hashlib.sha256()
    for part in (backbone_sha, head_sha, json.dumps(classes), json.dumps(spec, sort_keys=True)):
        h.update(part.encode())
    return f"{arch}-{h.hexdigest()[:12]}"


def write_bundle(
    out_dir: str | Path,
    *,
    backbone_onnx: bytes,
    head_onnx: bytes,
    classes: list[str],
    preprocessing: dict[str, Any],
    feature_size: int,
    architecture: dict[str, Any],
    training: dict[str, Any],
    temperature: float = 1.0,
    parent: dict[str, Any] | None = None,
    extra_files: dict[str, tuple[str, bytes]] | None = None,
    extra: dict[str, Any] | None = None,
) -> Bundle:
    """Write a bundle atomically (to a temporary sibling, then rename) and verify it.

    Parameters
    ----------
    backbone_onnx, head_onnx : bytes
        Serialised ONNX models with the tensor names of this module.
    classes : list of str
        Class names in head-output order.
    preprocessing : dict
        The preprocessing spec the model was trained with.
    feature_size : int
        Width of the backbone output.
    architecture : dict
        ``{"name": ..., "params": {...}}``.
    training : dict
        Provenance: data file and hash, command, seed, library versions, metrics.
    temperature : float
        Softmax temperature (1.0 until calibrated).
    parent : dict, optional
        For a head swap: the parent bundle's id and the classes added.
    extra_files : dict, optional
        More file parts, ``{part: (file name, bytes)}`` (e.g. ``{"support": ("support.npz", ...)}``):
        listed under ``files`` with their sha256 and verified on load like the graphs.
    extra : dict, optional
        More top-level manifest fields (must not clash with the standard ones).
    """
    out = Path(out_dir)
    if len(set(classes)) != len(classes) or not classes:
        raise BundleError(f"{out}: class list must be non-empty and unique")
    pre = Preprocessor(preprocessing)
    backbone_sha = hashlib.sha256(backbone_onnx).hexdigest()
    head_sha = hashlib.sha256(head_onnx).hexdigest()
    manifest: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "model_id": model_id_for(backbone_sha, head_sha, classes, pre.spec, architecture.get("name", "model")),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "classes": list(classes),
        "preprocessing": pre.spec,
        "input": {"name": BACKBONE_INPUT, "points": int(pre.grid.size), "grid": pre.spec["grid"]},
        "feature_size": int(feature_size),
        "temperature": float(temperature),
        "files": {
            "backbone": {"path": BACKBONE, "sha256": backbone_sha, "input": BACKBONE_INPUT, "output": BACKBONE_OUTPUT},
            "head": {"path": HEAD, "sha256": head_sha, "input": HEAD_INPUT, "output": HEAD_OUTPUT},
        },
        "architecture": architecture,
        "training": training,
        "parent": parent,
    }
    extra_files = dict(extra_files or {})
    taken = {BACKBONE, HEAD, MANIFEST}
    for part, (name, data) in extra_files.items():
        # one plain file name per part, inside the bundle, never one of the standard files
        if part in manifest["files"] or name in taken or len(PurePosixPath(name).parts) != 1 or name in (".", ".."):
            raise BundleError(f"{out}: bad extra file part {part!r} -> {name!r}")
        taken.add(name)
        manifest["files"][part] = {"path": name, "sha256": hashlib.sha256(data).hexdigest()}
    for key, value in (extra or {}).items():
        if key in manifest:
            raise BundleError(f"{out}: extra manifest field {key!r} clashes with a standard one")
        manifest[key] = value
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / BACKBONE).write_bytes(backbone_onnx)
        (tmp / HEAD).write_bytes(head_onnx)
        for name, data in extra_files.values():
            (tmp / name).write_bytes(data)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
        load_bundle(tmp)  # refuse to publish something we could not load back
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; an installed model must be readable by the daemon's user
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_bundle(out)


def _require(cond: bool, where: Path, what: str) -> None:
    if not cond:
        raise BundleError(f"{where}: {what}")


def _open_onnx(path: Path, expect_in: str, expect_out: str, in_width: int | None, out_width: int | None,
               providers: list[str]) -> Any:
    """Open an ONNX file as a Runtime session, checked against the manifest.

    On the host the onnx checker runs first; on the device (onnx not installed)
    the session's declared input/output names and widths are the check.
    """
    try:
        import onnx  # host only; optional on the device
    except ImportError:
        onnx = None
    if onnx is not None:
        try:
            onnx.checker.check_model(str(path))
        except Exception as e:  # onnx raises several types; all mean "not a valid model"
            raise BundleError(f"{path}: ONNX checker rejected the graph: {str(e).splitlines()[0]}") from None
    import onnxruntime as ort

    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as e:  # ORT raises its own Fail/InvalidGraph types
        raise BundleError(f"{path}: ONNX Runtime cannot load it: {str(e).splitlines()[0][:300]}") from None
    ins, outs = sess.get_inputs(), sess.get_outputs()
    _require(len(ins) == 1 and ins[0].name == expect_in, path,
             f"expected one input named {expect_in!r}, found {[i.name for i in ins]}")
    _require(len(outs) >= 1 and outs[0].name == expect_out, path,
             f"expected output {expect_out!r}, found {[o.name for o in outs]}")
    for label, shape, width in (("input", ins[0].shape, in_width), ("output", outs[0].shape, out_width)):
        if width is not None:
            _require(len(shape) == 2 and shape[1] == width, path,
                     f"{label} {shape} does not match the manifest's width {width}")
    return sess


def load_bundle(path: str | Path | None = None, providers: list[str] | None = None) -> Bundle:
    """Load and verify a bundle (the shipped default when ``path`` is None).

    Checks the format and version, every field the edge relies on, the sha256 of
    each ONNX file, and each graph's input/output names and widths.  Raises
    :class:`BundleError` naming the file and what differs.
    """
    root = Path(path) if path is not None else default_model_path()
    mpath = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"{root}: model bundle directory does not exist")
    try:
        manifest = json.loads(mpath.read_text())
    except FileNotFoundError:
        raise BundleError(f"{mpath}: missing; not a model bundle") from None
    except json.JSONDecodeError as e:
        raise BundleError(f"{mpath}: not valid JSON (line {e.lineno}: {e.msg})") from None
    except UnicodeDecodeError:
        raise BundleError(f"{mpath}: not a manifest (binary content)") from None
    except OSError as e:
        raise BundleError(f"{mpath}: cannot read: {e.strerror or e}") from None
    _require(isinstance(manifest, dict), mpath, "manifest must be a JSON object")
    _require(manifest.get("format") == BUNDLE_FORMAT, mpath,
             f"'format' is {manifest.get('format')!r}, expected {BUNDLE_FORMAT!r}")
    _require(manifest.get("format_version") == BUNDLE_VERSION, mpath,
             f"format_version {manifest.get('format_version')!r} is not supported by this build (reads {BUNDLE_VERSION})")
    for key in ("model_id", "classes", "preprocessing", "input", "feature_size", "files"):
        _require(key in manifest, mpath, f"missing field {key!r}")
    classes = manifest["classes"]
    _require(isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)
             and len(set(classes)) == len(classes), mpath, "'classes' must be a non-empty list of unique names")
    try:
        pre = Preprocessor(manifest["preprocessing"])
    except (RamanEdgeError, TypeError, KeyError, ValueError, AttributeError) as e:
        # a hand-edited spec may be the wrong shape entirely, not only out of range
        raise BundleError(f"{mpath}: bad preprocessing spec: {e}") from None
    points = manifest["input"].get("points") if isinstance(manifest["input"], dict) else None
    _require(points == pre.grid.size, mpath,
             f"input points {points!r} differ from the preprocessing grid's {pre.grid.size}")
    temperature = manifest.get("temperature", 1.0)
    _require(isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0, mpath,
             f"bad temperature {temperature!r}")
    feat = manifest["feature_size"]
    _require(isinstance(feat, int) and feat > 0, mpath, f"bad feature_size {feat!r}")
    files = manifest["files"]
    _require(isinstance(files, dict) and {"backbone", "head"} <= set(files), mpath,
             "'files' must list at least 'backbone' and 'head'")
    for part in files:
        _require(isinstance(files[part], dict) and {"path", "sha256"} <= set(files[part]), mpath,
                 f"files.{part} needs 'path' and 'sha256'")
        rel = PurePosixPath(str(files[part]["path"]))
        _require(not rel.is_absolute() and ".." not in rel.parts and str(rel).strip() != "", mpath,
                 f"files.{part}.path {files[part]['path']!r} must stay inside the bundle")
        fpath = root / files[part]["path"]
        _require(fpath.is_file(), fpath, f"{part} file is missing")
        try:
            actual = sha256_file(fpath)
        except OSError as e:
            raise BundleError(f"{fpath}: cannot read: {e.strerror or e}") from None
        _require(actual == files[part]["sha256"], fpath,
                 f"sha256 mismatch: manifest says {files[part]['sha256'][:16]}…, file is {actual[:16]}… "
                 "(corrupt or replaced file)")
    providers = providers or ["CPUExecutionProvider"]
    backbone = _open_onnx(root / files["backbone"]["path"], BACKBONE_INPUT, BACKBONE_OUTPUT, pre.grid.size, feat, providers)
    head = _open_onnx(root / files["head"]["path"], HEAD_INPUT, HEAD_OUTPUT, feat, len(classes), providers)
    return Bundle(path=root, manifest=manifest, preprocessor=pre, backbone_session=backbone, head_session=head)


__all__ = ["Bundle", "BundleError", "ConfigError", "load_bundle", "write_bundle", "default_model_path", "package_dir",
           "refuse_package_path", "sha256_file", "validation_figures", "validation_summary"]
