"""Novelty: how far a spectrum's features lie from every mineral the model knows.

The score of a spectrum with backbone features ``f`` is

    novelty = 1 − max_{c ∈ top-k} cos(f, μ_c)

where ``μ_c`` is the mean feature vector of class ``c`` (from the bundle's support) and
the maximum runs over the ``k`` classes the head ranked highest (k = 3).  The head has
already chosen those classes, so the score costs ``k·F`` multiply-adds whatever the
number of classes (docs/novelty.md: on the shipped model it equals the maximum over all
classes, and separates known from unknown spectra better than the softmax, the energy
or a Mahalanobis distance).

The bundle carries the class directions and its own threshold in ``novelty.npz``
(:func:`add_novelty`, :func:`fit_novelty`).  The threshold is chosen without any
unknown spectrum: each support exemplar is scored against its own class mean with
itself left out (a held-out known spectrum), and the threshold is the quantile that
flags ``target`` (5 %) of them.  Scoring each class's exemplars against the *other*
classes only (leave-one-class-out) mimics unknown minerals; the share of those above
the threshold is recorded as the expected detection rate, not used to choose it.
"""
from __future__ import annotations

import io
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from calibration.errors import BundleError, ConfigError

from .bundle import Bundle, load_bundle, write_bundle

log = logging.getLogger(__name__)

NOVELTY_PART = "novelty"
NOVELTY_FILE = "novelty.npz"
NOVELTY_FORMAT = "raman-edge.novelty"
NOVELTY_VERSION = 1
METHOD = "cosine-class-mean-top-k"
#: Candidate classes the score looks at: the head's top 3 (docs/novelty.md, "Top-k").
DEFAULT_TOP = 3
#: Share of known spectra the bundle's threshold aims to flag.
DEFAULT_TARGET = 0.05
_CHUNK = 4096  # exemplars scored at a time: bounds memory at 10,000 classes


def _unit(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    n = np.linalg.norm(a, axis=-1, keepdims=True)
    # an all-zero feature vector (ReLU features can be) has no direction: cosine 0 with everything
    return np.divide(a, n, out=np.zeros_like(a), where=n > 0)


@dataclass(frozen=True)
class Novelty:
    """Class directions and the threshold of one bundle.

    Attributes
    ----------
    classes : list of str
        In head order.
    directions : ndarray (K, F) float32
        Unit vectors of the class-mean features.
    threshold : float
        Scores above it are novel; NaN when no threshold could be fitted (never flags).
    top : int
        Candidate classes per spectrum (the head's top ``top``).
    backbone_sha256 : str
        The backbone whose features these are.
    meta : dict
        How the threshold was chosen (target, held-out and leave-class-out counts and rates).
    """

    classes: list[str]
    directions: np.ndarray
    threshold: float
    top: int
    backbone_sha256: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def feature_size(self) -> int:
        return int(self.directions.shape[1])

    def score(self, features: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Novelty ``(n,)`` of features ``(n, F)`` given the head's ranked class indices ``(n, ≥1)``.

        Only the first :attr:`top` candidates are used: constant cost in the number of classes.
        """
        f = np.asarray(features, dtype=np.float32).reshape(len(candidates), -1)
        cand = np.asarray(candidates)[:, : self.top]
        if len(f) <= 4:
            # the daemon scores one spectrum at a time: a row loop costs half the vectorised call's overhead
            out = np.empty(len(f))
            for i, (row, c) in enumerate(zip(f, cand)):
                norm = math.sqrt(float(row @ row))
                out[i] = 1.0 - (float((self.directions[c] @ row).max()) / norm if norm > 0 else 0.0)
            return out
        d = self.directions[cand]  # (n, k, F)
        return 1.0 - np.einsum("nf,nkf->nk", _unit(f), d).max(axis=1)

    def flags(self, scores: np.ndarray) -> np.ndarray:
        """True where a score lies above the threshold (never with a NaN threshold)."""
        return np.asarray(scores) > self.threshold if np.isfinite(self.threshold) else np.zeros(np.shape(scores), bool)

    def select(self, classes: list[str]) -> "Novelty":
        index = {c: i for i, c in enumerate(self.classes)}
        return Novelty(list(classes), self.directions[[index[c] for c in classes]], self.threshold, self.top,
                       self.backbone_sha256, self.meta)

    def summary(self) -> dict[str, Any]:
        """The manifest's ``novelty`` field."""
        return {"format": NOVELTY_FORMAT, "version": NOVELTY_VERSION, "method": METHOD, "top": self.top,
                "threshold": None if not np.isfinite(self.threshold) else round(float(self.threshold), 6),
                **{k: v for k, v in self.meta.items() if k != "threshold"}}

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez_compressed(
            buf, format=np.str_(NOVELTY_FORMAT), version=np.int64(NOVELTY_VERSION), method=np.str_(METHOD),
            classes=np.asarray(self.classes, dtype=np.str_), directions=self.directions.astype(np.float32),
            threshold=np.float64(self.threshold), top=np.int64(self.top),
            backbone_sha256=np.str_(self.backbone_sha256), meta=np.str_(json.dumps(self.meta, sort_keys=True)))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, where: str = NOVELTY_FILE) -> "Novelty":
        """Parse and validate ``novelty.npz`` bytes; :class:`BundleError` naming ``where`` otherwise."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                a = {k: z[k] for k in z.files}
        except Exception as e:  # zip/npy decoding raises several types; all mean "unreadable"
            raise BundleError(f"{where}: not a readable novelty file ({e})") from None
        missing = [k for k in ("format", "version", "method", "classes", "directions", "threshold", "top",
                               "backbone_sha256") if k not in a]
        if missing:
            raise BundleError(f"{where}: missing arrays {missing}")
        if str(a["format"]) != NOVELTY_FORMAT or int(a["version"]) != NOVELTY_VERSION or str(a["method"]) != METHOD:
            raise BundleError(f"{where}: {str(a['format'])!r} v{int(a['version'])} method {str(a['method'])!r} is not "
                              f"{NOVELTY_FORMAT!r} v{NOVELTY_VERSION} {METHOD!r}")
        classes = [str(c) for c in a["classes"].tolist()]
        d = a["directions"].astype(np.float32)
        top = int(a["top"])
        if not (classes and len(set(classes)) == len(classes) and d.ndim == 2 and d.shape[0] == len(classes)
                and top >= 1):
            raise BundleError(f"{where}: inconsistent shapes (classes {len(classes)}, directions {d.shape}, top {top})")
        if not np.isfinite(d).all():
            raise BundleError(f"{where}: directions contain NaN or infinity")
        try:
            meta = json.loads(str(a["meta"])) if "meta" in a else {}
        except json.JSONDecodeError:
            meta = {}
        return cls(classes, d, float(a["threshold"]), top, str(a["backbone_sha256"]), meta)


def _best_cosines(x: np.ndarray, directions: np.ndarray, own: np.ndarray, own_dir: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per exemplar: the best cosine with another class, and with its own held-out class mean."""
    other, mine = np.empty(len(x)), np.empty(len(x))
    for s in range(0, len(x), _CHUNK):
        xs = x[s:s + _CHUNK]
        c = xs @ directions.T
        c[np.arange(len(xs)), own[s:s + _CHUNK]] = -np.inf
        other[s:s + _CHUNK] = c.max(axis=1) if directions.shape[0] > 1 else -1.0
        mine[s:s + _CHUNK] = np.einsum("nf,nf->n", xs, own_dir[s:s + _CHUNK])
    return other, mine


def fit_novelty(support: Any, *, target: float = DEFAULT_TARGET, top: int = DEFAULT_TOP) -> Novelty:
    """Class directions and a threshold from a bundle's support (:class:`edge.head.Support`), no unknowns needed.

    Held-out known scores: every exemplar of a class with at least two spectra, against
    its class mean recomputed without it (``(n·μ − x)/(n − 1)``: exemplars are among the
    spectra the mean was taken over) and every other class mean.  The threshold is their
    ``1 − target`` quantile.  Leave-one-class-out scores (each exemplar against the other
    classes only) estimate how many spectra of unknown minerals it flags.

    Parameters
    ----------
    support : edge.head.Support
    target : float
        Share of held-out known scores above the threshold (0 < target < 1).
    top : int
        Candidate classes per spectrum on the device.
    """
    if not (0.0 < target < 1.0):
        raise ConfigError(f"novelty target must lie in (0, 1), got {target!r}")
    mean = np.asarray(support.mean, np.float64)
    directions = _unit(mean)
    ex = np.asarray(support.exemplars, np.float64)
    lab = np.asarray(support.exemplar_labels, np.int64)
    counts = np.asarray(support.counts, np.int64)
    n = counts[lab]
    keep = n >= 2
    own = (mean[lab] * n[:, None] - ex)[keep] / (n[keep, None] - 1)
    xu = _unit(ex)
    other, mine = _best_cosines(xu[keep], directions, lab[keep], _unit(own))
    known = 1.0 - np.maximum(other, mine)
    unknown = 1.0 - (_best_cosines(xu, directions, lab, directions[lab])[0] if len(directions) > 1 else np.ones(0))
    meta: dict[str, Any] = {"target": float(target), "heldout_exemplars": int(known.size),
                            "leave_class_out_exemplars": int(unknown.size)}
    if known.size == 0:
        log.warning("novelty: no class has two spectra, so no held-out known score: the threshold is undefined "
                    "and nothing will be flagged novel")
        threshold = float("nan")
    else:
        threshold = float(np.quantile(known, 1.0 - target))
        meta["heldout_flagged"] = round(float((known > threshold).mean()), 4)
        if unknown.size:
            meta["leave_class_out_flagged"] = round(float((unknown > threshold).mean()), 4)
    return Novelty(list(support.classes), directions.astype(np.float32), threshold, int(top),
                   str(support.backbone_sha256), meta)


def load_novelty(bundle: Bundle) -> Novelty | None:
    """The bundle's novelty model: its ``novelty`` part, else one fitted from its support at load, else None.

    Raises
    ------
    BundleError
        The novelty file is unreadable, from another backbone or width, or lacks some of the bundle's classes.
    """
    from .head import load_support

    sha = bundle.manifest["files"]["backbone"]["sha256"]
    if NOVELTY_PART not in bundle.parts:
        support = load_support(bundle)
        if support is None:
            log.info("%s: no novelty part and no support: results carry no novelty score", bundle.model_id)
            return None
        nov = fit_novelty(support)
        log.info("%s: novelty fitted from the support at load (threshold %.4f)", bundle.model_id, nov.threshold)
        return nov
    path = bundle.part_path(NOVELTY_PART)
    nov = Novelty.from_bytes(path.read_bytes(), str(path))
    if nov.backbone_sha256 != sha:
        raise BundleError(f"{path}: novelty directions come from backbone {nov.backbone_sha256[:16]}…, "
                          f"the bundle's backbone is {sha[:16]}…")
    if nov.feature_size != bundle.feature_size and nov.feature_size % bundle.feature_size:
        raise BundleError(f"{path}: novelty directions are {nov.feature_size} wide, the backbone gives "
                          f"{bundle.feature_size}")
    missing = [c for c in bundle.classes if c not in nov.classes]
    if missing:
        raise BundleError(f"{path}: no novelty direction for {len(missing)} of the bundle's classes "
                          f"(first: {missing[0]!r})")
    return nov.select(bundle.classes)


def novelty_files(bundle: Bundle, novelty: Novelty) -> tuple[dict[str, tuple[str, bytes]], dict[str, Any]]:
    """``extra_files`` and ``extra`` manifest fields of a copy of ``bundle`` carrying ``novelty``."""
    files = bundle.manifest["files"]
    extra_files = {p: (files[p]["path"], bundle.part_path(p).read_bytes()) for p in bundle.parts
                   if p not in ("backbone", "head", NOVELTY_PART)}
    extra_files[NOVELTY_PART] = (NOVELTY_FILE, novelty.to_bytes())
    return extra_files, {"novelty": novelty.summary()}


_STANDARD = {"format", "format_version", "model_id", "created_utc", "classes", "preprocessing", "input",
             "feature_size", "temperature", "files", "architecture", "training", "parent"}


def add_novelty(bundle: str | Path | Bundle, out: str | Path, *, target: float = DEFAULT_TARGET,
                top: int = DEFAULT_TOP) -> Bundle:
    """Write a copy of ``bundle`` carrying ``novelty.npz`` fitted from its support (:func:`fit_novelty`).

    Backbone, head, classes, temperature and ``model_id`` are unchanged; the manifest gains
    ``files.novelty`` and ``novelty`` (so a signature must be renewed).  ``out`` may equal the
    bundle's own path (atomic replace).

    Raises
    ------
    BundleError
        The bundle has no support part (``raman-edge head support`` adds one).
    """
    from .head import load_support

    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    support = load_support(b)
    if support is None:
        raise BundleError(f"{b.path}: no support part to fit novelty from; add it first with "
                          "`raman-edge head support --model B --data TRAIN.npz --out B2`")
    nov = fit_novelty(support, target=target, top=top)
    extra_files, extra = novelty_files(b, nov)
    extra = {**{k: v for k, v in b.manifest.items() if k not in _STANDARD}, **extra}
    return write_bundle(out, backbone_onnx=b.backbone_path.read_bytes(), head_onnx=b.head_path.read_bytes(),
                        classes=b.classes, preprocessing=b.preprocessor.spec, feature_size=b.feature_size,
                        architecture=b.manifest.get("architecture") or {"name": "model", "params": {}},
                        training=b.manifest.get("training") or {}, temperature=b.temperature,
                        parent=b.manifest.get("parent"), extra_files=extra_files, extra=extra)


__all__ = ["Novelty", "fit_novelty", "load_novelty", "add_novelty", "novelty_files", "NOVELTY_PART", "NOVELTY_FILE",
           "DEFAULT_TARGET", "DEFAULT_TOP"]
