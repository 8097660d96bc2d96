"""Softmax heads on a frozen backbone, built and trained without torch (numpy, scipy, onnx).

The backbone of a bundle maps a preprocessed spectrum to a feature vector; the
head is one affine layer ``logits = features @ W.T + b``.  A head with any number
of classes is therefore one ONNX ``Gemm``, which this module writes directly
from numpy weights so that a rover (no torch) can build and install one.

Head swap (:func:`add_head`): the parent bundle's preprocessing and backbone turn
the new labelled spectra into features (the daemon's own code path), a
multinomial logistic regression (:func:`fit_softmax_head`) is fitted on them, and
a new bundle is written with the parent's backbone file byte for byte.  The old
classes' training spectra are not on the rover, so a bundle carries a *support*
part (``support.npz``, :class:`Support`): per-class statistics of the backbone
features of its training spectra (count, mean, variance) and a few exemplar
feature vectors per class chosen by herding (iCaRL).  The new head is fitted on
the old classes' exemplars plus the new spectra's features, so the old classes
keep their decision regions; the new bundle's support holds both, so heads can
be added again and again.  ``docs/heads.md`` has the design and the numbers.

A bundle trained with test-time shift averaging (:mod:`trainer.shift_average`) has a
backbone that returns the features of ``S`` shifted copies side by side, ``(N, S x F)``,
and a head that applies one linear layer ``W (K, F)`` per copy, a softmax per copy, and
returns ``log(mean p)``; its manifest says ``architecture.head = {"kind": "shift-mean",
"copies": S}``.  :func:`add_head` fits ``W`` on the copies as rows of one regression and
writes that head again (:func:`shift_mean_head_onnx`).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from calibration.dataset import Dataset, file_sha256, load_dataset
from calibration.errors import BundleError, ConfigError, InputError

from .bundle import BACKBONE_INPUT, HEAD_INPUT, HEAD_OUTPUT, Bundle, load_bundle, write_bundle
from .novelty import NOVELTY_FILE, NOVELTY_PART, fit_novelty

log = logging.getLogger(__name__)

#: ONNX opset and IR version of written heads (the trainer's torch export uses opset 17 too).
HEAD_OPSET = 17
HEAD_IR_VERSION = 8


def _head_weights(weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``weight (K, F)`` and ``bias (K,)`` as contiguous float32, checked (BundleError names the fault)."""
    w = np.ascontiguousarray(weight, dtype=np.float32)
    b = np.ascontiguousarray(bias, dtype=np.float32)
    if w.ndim != 2 or w.shape[0] < 1 or w.shape[1] < 1:
        raise BundleError(f"head weight must be (classes, features), got shape {w.shape}")
    if b.shape != (w.shape[0],):
        raise BundleError(f"head bias shape {b.shape} does not match {w.shape[0]} classes")
    if not (np.isfinite(w).all() and np.isfinite(b).all()):
        raise BundleError("head weights contain NaN or infinity")
    return w, b


def linear_head_onnx(weight: np.ndarray, bias: np.ndarray, *, producer: str = "raman-edge") -> bytes:
    """Serialise the head ``logits = features @ weight.T + bias`` as an ONNX model.

    Parameters
    ----------
    weight : ndarray, shape (K, F)
        One row per class.
    bias : ndarray, shape (K,)
    producer : str
        Recorded as the model's ``producer_name``.

    Returns
    -------
    bytes
        A checked ONNX model with input ``features`` (N, F) and output ``logits`` (N, K),
        dynamic batch axis: the same interface as the trainer's exported heads.

    Raises
    ------
    BundleError
        Shapes disagree or a weight is not finite.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w, b = _head_weights(weight, bias)
    k, f = w.shape
    node = helper.make_node("Gemm", [HEAD_INPUT, "head.weight", "head.bias"], [HEAD_OUTPUT],
                            name="head", alpha=1.0, beta=1.0, transB=1)
    graph = helper.make_graph(
        [node], "head",
        [helper.make_tensor_value_info(HEAD_INPUT, TensorProto.FLOAT, ["batch", f])],
        [helper.make_tensor_value_info(HEAD_OUTPUT, TensorProto.FLOAT, ["batch", k])],
        initializer=[numpy_helper.from_array(w, "head.weight"), numpy_helper.from_array(b, "head.bias")],
    )
    model = helper.make_model(graph, producer_name=producer, opset_imports=[helper.make_opsetid("", HEAD_OPSET)])
    model.ir_version = HEAD_IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString()


def shift_mean_head_onnx(weight: np.ndarray, bias: np.ndarray, copies: int, *,
                         producer: str = "raman-edge") -> bytes:
    """Serialise the shift-averaged head: ``log(mean_s softmax(features_s @ weight.T + bias))``.

    Parameters
    ----------
    weight : ndarray, shape (K, F)
        One row per class, applied to each copy's ``F`` features.
    bias : ndarray, shape (K,)
    copies : int
        ``S``: the input ``features`` is ``(N, S x F)``, copy ``s`` in columns ``[s F, (s + 1) F)``.
    producer : str
        Recorded as the model's ``producer_name``.

    Returns
    -------
    bytes
        A checked ONNX model, input ``features`` (N, S x F), output ``logits`` (N, K).

    Raises
    ------
    BundleError
        Shapes disagree, ``copies`` < 1, or a weight is not finite.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w, b = _head_weights(weight, bias)
    if int(copies) < 1:
        raise BundleError(f"shift-mean head needs copies >= 1, got {copies}")
    w = np.ascontiguousarray(w.T)  # (F, K) for MatMul
    f, k = w.shape
    s = int(copies)
    nodes = [
        helper.make_node("Reshape", [HEAD_INPUT, "head.copies_shape"], ["copies"], name="split_copies"),
        helper.make_node("MatMul", ["copies", "head.weight_t"], ["z0"], name="head"),
        helper.make_node("Add", ["z0", "head.bias"], ["z"], name="head_bias"),
        helper.make_node("LogSoftmax", ["z"], ["logp"], name="per_copy_log_softmax", axis=2),
        helper.make_node("ReduceLogSumExp", ["logp"], ["lse"], name="sum_over_copies", axes=[1], keepdims=0),
        helper.make_node("Sub", ["lse", "head.log_copies"], [HEAD_OUTPUT], name="mean_over_copies"),
    ]
    graph = helper.make_graph(
        nodes, "head",
        [helper.make_tensor_value_info(HEAD_INPUT, TensorProto.FLOAT, ["batch", s * f])],
        [helper.make_tensor_value_info(HEAD_OUTPUT, TensorProto.FLOAT, ["batch", k])],
        initializer=[numpy_helper.from_array(np.array([-1, s, f], np.int64), "head.copies_shape"),
                     numpy_helper.from_array(w, "head.weight_t"), numpy_helper.from_array(b, "head.bias"),
                     numpy_helper.from_array(np.array(np.log(s), np.float32), "head.log_copies")],
    )
    model = helper.make_model(graph, producer_name=producer, opset_imports=[helper.make_opsetid("", HEAD_OPSET)])
    model.ir_version = HEAD_IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def head_copies(bundle: Bundle) -> int:
    """``S`` of a shift-averaged bundle's head (1 for a linear head).

    Raises
    ------
    BundleError
        A head kind this version does not know, or copies that do not divide the feature width.
    """
    head = bundle.head_info
    kind = head["kind"]
    if kind == "linear":
        return 1
    if kind != "shift-mean":
        raise BundleError(f"{bundle.path}: head kind {kind!r} is not known to this version (linear, shift-mean)")
    copies = head.get("copies")
    if not isinstance(copies, int) or copies < 1 or bundle.feature_size % copies:
        raise BundleError(f"{bundle.path}: shift-mean head with copies={copies!r} does not divide the "
                          f"feature width {bundle.feature_size}")
    return copies


def head_logits(features: np.ndarray, weight: np.ndarray, bias: np.ndarray, copies: int = 1) -> np.ndarray:
    """What a head of ``weight``/``bias`` over ``copies`` outputs for ``features`` (numpy, float64)."""
    from scipy.special import log_softmax, logsumexp

    x = np.asarray(features, dtype=np.float64)
    if copies == 1:
        return x @ np.asarray(weight, np.float64).T + bias
    z = x.reshape(x.shape[0], copies, -1) @ np.asarray(weight, np.float64).T + bias
    return logsumexp(log_softmax(z, axis=2), axis=1) - np.log(copies)


def read_linear_head(onnx_bytes: bytes) -> tuple[np.ndarray, np.ndarray]:
    """``(weight (K, F), bias (K,))`` of a single-Gemm head (the trainer's or :func:`linear_head_onnx`'s).

    Raises
    ------
    BundleError
        The graph is not one Gemm on ``features`` with constant weights.
    """
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load_from_string(onnx_bytes)
    except Exception as e:  # onnx raises DecodeError and others
        raise BundleError(f"head is not a readable ONNX model: {e}") from None
    nodes = list(model.graph.node)
    if len(nodes) != 1 or nodes[0].op_type != "Gemm" or nodes[0].input[0] != HEAD_INPUT:
        raise BundleError(f"head is not a single Gemm on {HEAD_INPUT!r} (ops: {[n.op_type for n in nodes]})")
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    try:
        w, b = inits[nodes[0].input[1]], inits[nodes[0].input[2]]
    except (KeyError, IndexError):
        raise BundleError("head Gemm weights are not constant initialisers") from None
    if attrs.get("transA", 0):
        raise BundleError("head Gemm with transA is not supported")
    if not attrs.get("transB", 0):
        w = w.T
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    return (alpha * w).astype(np.float32), (beta * np.broadcast_to(b, (w.shape[0],))).astype(np.float32)



# --------------------------------------------------------------------------- fitting

#: L2 penalty of :func:`fit_softmax_head` on the standardised-feature weights (chosen on
#: the Soysal data, see docs/heads.md).
DEFAULT_L2 = 1e-3


def _class_weights(y: np.ndarray, n_classes: int, class_weight: str | dict[int, float] | None) -> np.ndarray:
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    if class_weight is None or class_weight == "none":
        return np.ones(y.size)
    if class_weight == "balanced":
        present = int((counts > 0).sum())
        return y.size / (present * counts[y])
    if isinstance(class_weight, dict):
        return np.array([float(class_weight.get(int(c), 1.0)) for c in y])
    raise ConfigError(f"class_weight must be 'balanced', None or a dict, got {class_weight!r}")


def _one_blas_thread() -> Any:
    """Limit BLAS to one thread during a fit: these matrices are small, and on a shared or
    busy CPU a multi-threaded BLAS made each product ~100x slower (measured, docs/heads.md)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional on the device
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def fit_softmax_head(features: np.ndarray, labels: np.ndarray, n_classes: int, *, l2: float = DEFAULT_L2,
                     class_weight: str | dict[int, float] | None = "balanced",
                     sample_weight: np.ndarray | None = None, seed: int = 0, max_iter: int = 2000,
                     tol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression on fixed features (the softmax head), numpy + scipy L-BFGS.

    Minimises the weighted mean cross-entropy plus ``l2 / 2 * ||W||^2``.  Features are
    standardised inside the fit (so ``l2`` means the same for any backbone) and the
    scaling is folded back into the returned weights, which act on raw features.

    Parameters
    ----------
    features : ndarray, shape (N, F)
    labels : ndarray of int, shape (N,)
        Class indices in ``0 .. n_classes - 1``.
    n_classes : int
        K, the head's output width (a class without samples gets a row that never wins
        against a trained one, and a warning).
    l2 : float
        Ridge penalty on the weights of the standardised features (bias not penalised).
    class_weight : "balanced", None or dict
        "balanced": every class weighs the same in the loss whatever its count.
    sample_weight : ndarray, optional
        Multiplies the class weights.
    seed : int
        Accepted for a uniform interface; the problem is convex and the fit starts from
        zeros, so the result does not depend on it.
    max_iter, tol : int, float
        L-BFGS limits (``tol``: largest gradient component at convergence).

    Returns
    -------
    (W, b) : ndarray (K, F) float32, ndarray (K,) float32
        ``logits = features @ W.T + b``.

    Raises
    ------
    InputError
        Shapes disagree, non-finite features, labels out of range, no samples.
    """
    from scipy.optimize import minimize
    from scipy.special import log_softmax

    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    k = int(n_classes)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise InputError(f"fit_softmax_head: features must be a non-empty (N, F) array, got shape {x.shape}")
    if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"fit_softmax_head: labels must be ({x.shape[0]},) integers, got {y.dtype} {y.shape}")
    if k < 1 or y.min() < 0 or y.max() >= k:
        raise InputError(f"fit_softmax_head: labels must lie in 0..{k - 1} (got {y.min()}..{y.max()})")
    if not np.isfinite(x).all():
        rows = np.nonzero(~np.isfinite(x).all(axis=1))[0]
        raise InputError(f"fit_softmax_head: {rows.size} feature rows contain NaN or inf (first: row {rows[0]})")
    if l2 < 0:
        raise ConfigError(f"fit_softmax_head: l2 must be >= 0, got {l2}")
    y = y.astype(np.int64)
    missing = np.setdiff1d(np.arange(k), y)
    if missing.size:
        log.warning("fit_softmax_head: %d of %d classes have no samples (first: %d)", missing.size, k, missing[0])
    mu = x.mean(axis=0)
    sd = x.std(axis=0)
    sd[sd < 1e-8] = 1.0
    z = (x - mu) / sd
    w = _class_weights(y, k, class_weight)
    if sample_weight is not None:
        sw = np.asarray(sample_weight, dtype=np.float64)
        if sw.shape != y.shape or (sw < 0).any() or not np.isfinite(sw).all():
            raise InputError(f"fit_softmax_head: sample_weight must be ({y.size},) finite and >= 0")
        w = w * sw
    w = w / w.sum()
    n, f = z.shape
    onehot = np.zeros((n, k))
    onehot[np.arange(n), y] = 1.0

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        wm, bias = theta[: k * f].reshape(k, f), theta[k * f:]
        logp = log_softmax(z @ wm.T + bias, axis=1)
        value = -float((w * logp[np.arange(n), y]).sum()) + 0.5 * l2 * float((wm * wm).sum())
        g = (np.exp(logp) - onehot) * w[:, None]
        grad_w = g.T @ z + l2 * wm
        return value, np.concatenate([grad_w.ravel(), g.sum(axis=0)])

    with _one_blas_thread():
        res = minimize(loss, np.zeros(k * f + k), jac=True, method="L-BFGS-B",
                       options={"maxiter": int(max_iter), "gtol": tol, "ftol": 1e-12})
    if not res.success and res.nit >= max_iter:
        log.warning("fit_softmax_head: L-BFGS stopped after %d iterations (%s)", res.nit, res.message)
    wm, bias = res.x[: k * f].reshape(k, f), res.x[k * f:]
    w_raw = wm / sd
    b_raw = bias - w_raw @ mu
    return w_raw.astype(np.float32), b_raw.astype(np.float32)


# --------------------------------------------------------------------------- features

def extract_features(bundle: Bundle, spectra: np.ndarray, axis: np.ndarray, *, where: list[str] | None = None,
                     batch_size: int = 256) -> np.ndarray:
    """Backbone features ``(N, F)`` of raw spectra: the bundle's preprocessor, then its backbone session.

    The same two calls the daemon makes for every measured spectrum.
    """
    x = bundle.preprocessor.batch(spectra, axis, where=where)
    out = [bundle.backbone_session.run(None, {BACKBONE_INPUT: x[i:i + batch_size]})[0]
           for i in range(0, x.shape[0], batch_size)]
    return np.concatenate(out, axis=0).astype(np.float32) if out else np.zeros((0, bundle.feature_size), np.float32)


# --------------------------------------------------------------------------- support

SUPPORT_PART = "support"
SUPPORT_FILE = "support.npz"
SUPPORT_FORMAT = "raman-edge.support"
SUPPORT_VERSION = 1
#: Exemplar feature vectors kept per class (herding); docs/heads.md has the measurement.
DEFAULT_EXEMPLARS = 20


@dataclass(frozen=True)
class Support:
    """What a head needs about a bundle's classes when their spectra are gone.

    Attributes
    ----------
    classes : list of str
    counts : ndarray (K,)
        Spectra the statistics were computed from.
    mean, var : ndarray (K, F)
        Per-class mean and variance of the backbone features.
    exemplars : ndarray (M, F) float32
        Real feature vectors (herding-selected, at most ``per_class`` per class).
    exemplar_labels : ndarray (M,) int
        Index into ``classes``.
    backbone_sha256 : str
        The backbone that produced the features (support is useless with another one).
    """

    classes: list[str]
    counts: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    exemplars: np.ndarray
    exemplar_labels: np.ndarray
    backbone_sha256: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def feature_size(self) -> int:
        return int(self.mean.shape[1])

    def select(self, classes: list[str]) -> "Support":
        """The support of ``classes`` only, in that order."""
        index = {c: i for i, c in enumerate(self.classes)}
        idx = np.array([index[c] for c in classes], dtype=np.int64)
        remap = np.full(len(self.classes), -1, np.int64)
        remap[idx] = np.arange(idx.size)
        keep = remap[self.exemplar_labels] >= 0
        meta = dict(self.meta)
        if "synthetic_classes" in meta:
            meta["synthetic_classes"] = [c for c in meta["synthetic_classes"] if c in classes]
        return Support(list(classes), self.counts[idx], self.mean[idx], self.var[idx], self.exemplars[keep],
                       remap[self.exemplar_labels[keep]], self.backbone_sha256, meta)

    def merge(self, other: "Support") -> "Support":
        """Classes of ``self`` then those of ``other`` (names must not overlap)."""
        if other.backbone_sha256 != self.backbone_sha256 or other.feature_size != self.feature_size:
            raise BundleError("cannot merge support sets of different backbones")
        if set(self.classes) & set(other.classes):
            raise BundleError(f"support sets overlap: {sorted(set(self.classes) & set(other.classes))}")
        k = len(self.classes)
        synthetic = list(self.meta.get("synthetic_classes", [])) + list(other.meta.get("synthetic_classes", []))
        return Support(self.classes + other.classes, np.concatenate([self.counts, other.counts]),
                       np.concatenate([self.mean, other.mean]), np.concatenate([self.var, other.var]),
                       np.concatenate([self.exemplars, other.exemplars]),
                       np.concatenate([self.exemplar_labels, other.exemplar_labels + k]),
                       self.backbone_sha256, {**self.meta, **other.meta, "synthetic_classes": synthetic})

    def to_bytes(self) -> bytes:
        """``support.npz`` bytes (no pickle: strings as unicode arrays, meta as JSON)."""
        buf = io.BytesIO()
        np.savez_compressed(
            buf, format=np.str_(SUPPORT_FORMAT), version=np.int64(SUPPORT_VERSION),
            classes=np.asarray(self.classes, dtype=np.str_), counts=self.counts.astype(np.int64),
            mean=self.mean.astype(np.float32), var=self.var.astype(np.float32),
            # float16 halves the uplink; its ~3 significant digits hold any feature scale (liu's tanh
            # features lie in [-1, 1], compact's ReLU features reach ~60)
            exemplars=self.exemplars.astype(np.float16), exemplar_labels=self.exemplar_labels.astype(np.int32),
            backbone_sha256=np.str_(self.backbone_sha256), meta=np.str_(json.dumps(self.meta, sort_keys=True)))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "support.npz") -> "Support":
        """Parse and validate ``support.npz`` bytes; :class:`BundleError` naming ``where`` otherwise."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as e:  # zip/npy decoding raises several types; all mean "unreadable"
            raise BundleError(f"{where}: not a readable support file ({e})") from None
        need = ("format", "version", "classes", "counts", "mean", "var", "exemplars", "exemplar_labels",
                "backbone_sha256")
        missing = [k for k in need if k not in arrays]
        if missing:
            raise BundleError(f"{where}: missing arrays {missing}")
        if str(arrays["format"]) != SUPPORT_FORMAT or int(arrays["version"]) != SUPPORT_VERSION:
            raise BundleError(f"{where}: format {str(arrays['format'])!r} v{int(arrays['version'])} is not "
                              f"{SUPPORT_FORMAT!r} v{SUPPORT_VERSION}")
        classes = [str(c) for c in arrays["classes"].tolist()]
        mean, var = arrays["mean"].astype(np.float32), arrays["var"].astype(np.float32)
        ex, exl = arrays["exemplars"].astype(np.float32), arrays["exemplar_labels"].astype(np.int64)
        counts = arrays["counts"].astype(np.int64)
        k = len(classes)
        ok = (k > 0 and len(set(classes)) == k and mean.ndim == 2 and mean.shape[0] == k and var.shape == mean.shape
              and counts.shape == (k,) and ex.ndim == 2 and ex.shape[1] == mean.shape[1] and exl.shape == (ex.shape[0],)
              and (exl.size == 0 or (exl.min() >= 0 and exl.max() < k)))
        if not ok:
            raise BundleError(f"{where}: inconsistent shapes (classes {k}, mean {mean.shape}, var {var.shape}, "
                              f"counts {counts.shape}, exemplars {ex.shape}, labels {exl.shape})")
        if not (np.isfinite(mean).all() and np.isfinite(var).all() and np.isfinite(ex).all()):
            raise BundleError(f"{where}: contains NaN or infinity")
        try:
            meta = json.loads(str(arrays["meta"])) if "meta" in arrays else {}
        except json.JSONDecodeError:
            meta = {}
        return cls(classes, counts, mean, var, ex, exl, str(arrays["backbone_sha256"]), meta)


def herding(features: np.ndarray, m: int) -> np.ndarray:
    """Indices of ``m`` rows whose running mean tracks the class mean best (Welling 2009; iCaRL)."""
    n = features.shape[0]
    if m >= n:
        return np.arange(n)
    mu = features.mean(axis=0)
    chosen: list[int] = []
    total = np.zeros_like(mu)
    free = np.ones(n, bool)
    for t in range(1, m + 1):
        d = np.linalg.norm(mu - (total + features) / t, axis=1)
        d[~free] = np.inf
        i = int(np.argmin(d))
        chosen.append(i)
        free[i] = False
        total += features[i]
    return np.asarray(chosen)


def support_from_features(features: np.ndarray, labels: np.ndarray, classes: list[str], backbone_sha256: str, *,
                          per_class: int = DEFAULT_EXEMPLARS, meta: dict[str, Any] | None = None) -> Support:
    """Build a :class:`Support` from features ``(N, F)`` and class indices ``labels`` into ``classes``."""
    f = features.shape[1]
    k = len(classes)
    counts = np.bincount(labels, minlength=k)
    mean = np.zeros((k, f), np.float32)
    var = np.zeros((k, f), np.float32)
    ex, exl = [], []
    for c in range(k):
        fc = features[labels == c].astype(np.float64)
        if fc.shape[0] == 0:
            raise InputError(f"support: class {classes[c]!r} has no spectra")
        mean[c], var[c] = fc.mean(axis=0), fc.var(axis=0)
        pick = herding(fc, per_class)
        ex.append(fc[pick])
        exl.append(np.full(pick.size, c))
    return Support(list(classes), counts, mean, var, np.concatenate(ex).astype(np.float32),
                   np.concatenate(exl).astype(np.int64), backbone_sha256,
                   {"per_class": int(per_class), **(meta or {})})


def load_support(bundle: Bundle) -> Support | None:
    """The bundle's support for its classes (in head order), or None when it has none.

    Raises
    ------
    BundleError
        The support file is unreadable, from another backbone, or lacks some of the bundle's classes.
    """
    if SUPPORT_PART not in bundle.parts:
        return None
    path = bundle.part_path(SUPPORT_PART)
    sup = Support.from_bytes(path.read_bytes(), str(path))
    sha = bundle.manifest["files"]["backbone"]["sha256"]
    if sup.backbone_sha256 != sha:
        raise BundleError(f"{path}: support features come from backbone {sup.backbone_sha256[:16]}…, "
                          f"the bundle's backbone is {sha[:16]}…")
    if sup.feature_size != bundle.feature_size:
        raise BundleError(f"{path}: support features are {sup.feature_size} wide, the backbone gives "
                          f"{bundle.feature_size}")
    missing = [c for c in bundle.classes if c not in sup.classes]
    if missing:
        raise BundleError(f"{path}: no support for {len(missing)} of the bundle's classes (first: {missing[0]!r})")
    return sup.select(bundle.classes)


# --------------------------------------------------------------------------- data

def _as_bundle(parent: str | Path | Bundle) -> Bundle:
    return parent if isinstance(parent, Bundle) else load_bundle(parent)


@dataclass(frozen=True)
class _Data:
    features: np.ndarray
    labels: np.ndarray         # str (n,)
    where: str
    sha256: str | None
    skipped: list[int]
    total: int


def _load_data(data: str | Path | Dataset, bundle: Bundle) -> _Data:
    """Load labelled raw spectra, skip non-finite rows (counted), and turn them into backbone features."""
    ds = data if isinstance(data, Dataset) else load_dataset(data, allow_nonfinite=True)
    where = str(ds.path if ds.path is not None else "<dataset>") if isinstance(data, Dataset) else str(data)
    n = len(ds)
    if n == 0 or ds.spectra.ndim != 2:
        raise InputError(f"{where}: no spectra")
    labels = np.asarray(ds.labels).astype(str)
    if labels.shape != (n,):
        raise InputError(f"{where}: labels have shape {labels.shape}, expected ({n},)")
    blank = np.nonzero(np.char.strip(labels) == "")[0]
    if blank.size:
        raise InputError(f"{where}: {blank.size} spectra have an empty label (first: row {int(blank[0])})")
    bad = ~np.isfinite(ds.spectra).all(axis=1)
    skipped = np.nonzero(bad)[0].tolist()
    if skipped:
        log.warning("%s: skipping %d of %d spectra with NaN or inf (rows %s%s)", where, len(skipped), n,
                    ", ".join(map(str, skipped[:10])), ", …" if len(skipped) > 10 else "")
    keep = np.nonzero(~bad)[0]
    if keep.size == 0:
        raise InputError(f"{where}: all {n} spectra contain NaN or inf; nothing to learn from")
    try:
        feats = extract_features(bundle, ds.spectra[keep], ds.wavenumbers, where=[f"{where}: row {i}" for i in keep])
    except InputError as e:
        raise InputError(f"{where}: cannot be preprocessed for model {bundle.model_id} "
                         f"(axis {ds.wavenumbers[0]:.1f}…{ds.wavenumbers[-1]:.1f}, expected Raman shift in cm⁻¹): "
                         f"{e}") from None
    sha = file_sha256(ds.path) if ds.path is not None and Path(ds.path).is_file() else None
    return _Data(feats, labels[keep], where, sha, skipped, n)


def _check_classes(new: list[str], old: list[str], where: str, bundle: Bundle) -> None:
    """Refuse names that clash with the parent's classes, also when they differ only by case or spaces."""
    norm = {}
    for c in new:
        key = " ".join(c.split()).casefold()
        if key in norm:
            raise InputError(f"{where}: labels {norm[key]!r} and {c!r} differ only by case or spaces; "
                             "use one spelling per mineral")
        norm[key] = c
    clash = sorted(c for c in new if c in old)
    if clash:
        raise InputError(f"{where}: {len(clash)} class(es) already in model {bundle.model_id} ({bundle.path}): "
                         f"{', '.join(clash[:10])}{', …' if len(clash) > 10 else ''}. head add learns new classes "
                         "only; drop those spectra, or use --replace for a head over the data's classes alone")
    old_norm = {" ".join(c.split()).casefold(): c for c in old}
    near = sorted(f"{c!r}~{old_norm[k]!r}" for k, c in norm.items() if k in old_norm)
    if near:
        raise InputError(f"{where}: class names differ from model {bundle.model_id}'s only by case or spaces: "
                         f"{', '.join(near[:10])}; use the model's spelling (then they clash: see --replace)")


# --------------------------------------------------------------------------- head swap

_ADD_OPTIONS = ("exemplars", "gaussian", "folds", "new_bias", "synthetic_support", "command")


def _training_set(new_feats: np.ndarray, new_y: np.ndarray, old: Support | None, gaussian: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """New features plus the old classes' exemplars (and optional Gaussian draws around their means)."""
    xs, ys = [new_feats], [new_y]
    if old is not None:
        xs.append(old.exemplars)
        ys.append(old.exemplar_labels)
        if gaussian > 0:
            pooled = np.average(old.var, axis=0, weights=np.maximum(old.counts, 1))
            for c in range(len(old.classes)):
                # a class seen a handful of times has an unreliable variance: shrink towards the pooled one
                a = old.counts[c] / (old.counts[c] + 10.0)
                sd = np.sqrt(a * old.var[c] + (1 - a) * pooled)
                xs.append((old.mean[c] + rng.standard_normal((gaussian, sd.size)) * sd).astype(np.float32))
                ys.append(np.full(gaussian, c))
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64)


def _folds(y: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Stratified fold index per row; -1 for rows of classes too small to hold one out."""
    fold = np.full(y.size, -1)
    for c in np.unique(y):
        idx = rng.permutation(np.nonzero(y == c)[0])
        if idx.size >= 2:
            fold[idx] = np.arange(idx.size) % min(k, idx.size)
    return fold


def add_head(parent: str | Path | Bundle, data: str | Path | Dataset, out: str | Path, *, replace: bool = False,
             seed: int = 0, **fit_options: Any) -> Bundle:
    """Write a bundle with the parent's backbone (bit-identical) and a new softmax head.

    Parameters
    ----------
    parent : path or Bundle
        The bundle whose backbone and preprocessing are kept.
    data : path or Dataset
        Labelled RAW spectra (``calibration.dataset`` ``.npz``: spectra, labels, wavenumbers) of the
        new classes.  Rows with NaN/inf are skipped and counted (logged, recorded in the manifest).
    out : path
        The new bundle directory (replaced atomically).
    replace : bool
        False (default): the head covers the parent's classes and the new ones; the parent must carry
        a support part (:func:`add_support` makes one).  True: a head for the data's classes alone
        (the protocol of Soysal et al., Table 11).
    seed : int
        Seeds the folds of the temperature fit and any Gaussian draws.
    **fit_options
        Passed to :func:`fit_softmax_head` (``l2``, ``class_weight``, ``max_iter``, ``tol``; not
        ``sample_weight``), plus
        ``exemplars`` (per class kept in the new support, default :data:`DEFAULT_EXEMPLARS`),
        ``gaussian`` (extra draws per old class from its support statistics, default 0),
        ``folds`` (cross-fitting folds for the held-out temperature and accuracy, default 3; 0 = T 1.0),
        ``new_bias`` (logit offset added to the new classes, default 0: > 0 trades old-class for
        new-class accuracy, measured in docs/heads.md),
        ``synthetic_support`` (for a parent without support: old-class features synthesised from
        its head by :func:`synthesize_support` instead of refusing; weaker, docs/heads.md),
        ``command`` (recorded as provenance).

    Returns
    -------
    Bundle
        The new bundle; ``manifest["parent"]`` = ``{model_id, backbone_sha256, manifest_sha256,
        classes_added, replaced}``.

    Raises
    ------
    InputError
        Unreadable or empty data, class names clashing with the parent's, spectra the preprocessing
        refuses (e.g. a pixel or wavelength axis).
    BundleError
        Corrupt parent, or (without ``replace``) a parent with no support part.
    """
    import onnx
    import onnxruntime
    import scipy

    opts = {k: fit_options.pop(k) for k in _ADD_OPTIONS if k in fit_options}
    # sample_weight is not passed on: the fit's rows are the new spectra plus the support's exemplars
    unknown = set(fit_options) - {"l2", "class_weight", "max_iter", "tol"}
    if unknown:
        raise ConfigError(f"add_head: unknown option(s) {sorted(unknown)}")
    per_class = int(opts.get("exemplars", DEFAULT_EXEMPLARS))
    gaussian = int(opts.get("gaussian", 0))
    n_folds = int(opts.get("folds", 3))
    new_bias = float(opts.get("new_bias", 0.0))
    if per_class < 1 or gaussian < 0 or n_folds < 0 or n_folds == 1:
        raise ConfigError(f"add_head: need exemplars >= 1, gaussian >= 0, folds 0 or >= 2 (got {opts})")
    rng = np.random.default_rng(seed)
    bundle = _as_bundle(parent)
    copies = head_copies(bundle)
    backbone_sha = bundle.manifest["files"]["backbone"]["sha256"]
    old_support = None
    synthetic = bool(opts.get("synthetic_support", False))
    if not replace:
        old_support = load_support(bundle)
        if old_support is None and not synthetic:
            raise BundleError(
                f"{bundle.path}: model {bundle.model_id} has no '{SUPPORT_PART}' part (backbone features of its "
                f"{len(bundle.classes)} classes), so a head over old and new classes would forget the old ones. "
                f"Add it from the model's training data: `raman-edge head support --model {bundle.path} "
                "--data TRAIN.npz --out BUNDLE_WITH_SUPPORT`; without that data, --synthetic-support invents "
                "old-class features from the model's head (weaker, docs/heads.md); or use --replace for a head "
                "over the new classes alone")
    d = _load_data(data, bundle)
    new_classes = sorted(set(d.labels.tolist()))
    old_classes = [] if replace else bundle.classes
    _check_classes(new_classes, old_classes, d.where, bundle)
    old_source = None if replace else "bundle"
    if old_support is None and synthetic and not replace:
        old_support = synthesize_support(bundle, d.features, seed=seed)
        old_source = "synthetic (inverted from the parent's head)"
    classes = old_classes + new_classes
    if len(classes) < 2:
        raise InputError(f"{d.where}: holds one class ({classes[0]!r}); a head needs at least two "
                         "(without --replace the parent's classes count)")
    index = {c: i for i, c in enumerate(classes)}
    new_y = np.array([index[c] for c in d.labels], np.int64)
    small = [c for c in new_classes if (d.labels == c).sum() < 2]
    if small:
        log.warning("%s: %d class(es) with a single spectrum (%s): learnt, but nothing can be held out to check them",
                    d.where, len(small), ", ".join(small[:5]))
    fit_kw = dict(fit_options)

    def fit(x_new: np.ndarray, y_new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, y = _training_set(x_new, y_new, old_support, gaussian, np.random.default_rng(seed))
        if copies > 1:  # every shifted copy is a row of the one regression behind the shared W
            x, y = x.reshape(x.shape[0] * copies, -1), np.repeat(y, copies)
        w, b = fit_softmax_head(x, y, len(classes), seed=seed, **fit_kw)
        b[len(old_classes):] += new_bias  # optional old/new trade-off (docs/heads.md)
        return w, b

    # Cross-fitting on the new spectra: held-out logits for the temperature and an honest accuracy.
    metrics: dict[str, Any] = {}
    temperature, t_source = 1.0, "default (folds=0)"
    if n_folds >= 2:
        fold = _folds(new_y, n_folds, rng)
        held_logits, held_y = [], []
        for k in range(n_folds):
            test = fold == k
            if not test.any():
                continue
            w, b = fit(d.features[~test], new_y[~test])
            held_logits.append(head_logits(d.features[test], w, b, copies))
            held_y.append(new_y[test])
        if held_y:
            hl, hy = np.concatenate(held_logits), np.concatenate(held_y)
            metrics.update(heldout_spectra=int(hy.size), heldout_top1=float((hl.argmax(1) == hy).mean()))
            if metrics["heldout_top1"] == 1.0:
                # every held-out spectrum right: the NLL falls as T -> 0, so the fit would only
                # find its search bound and make the whole head (old classes too) overconfident
                t_source = f"default (all {hy.size} held-out new spectra correct: T is not determined)"
            else:
                from .temperature import fit_temperature  # scipy: only when a head is fitted

                temperature = fit_temperature(hl, hy)
                t_source = f"fitted on {hy.size} held-out new spectra ({n_folds}-fold cross-fitting)"
        else:
            t_source = "default (no class has 2 spectra to hold one out)"
    w, b = fit(d.features, new_y)
    metrics["train_top1_new"] = float((head_logits(d.features, w, b, copies).argmax(1) == new_y).mean())
    if old_support is not None:
        metrics["train_top1_old_exemplars"] = float(
            (head_logits(old_support.exemplars, w, b, copies).argmax(1) == old_support.exemplar_labels).mean())
    new_support = support_from_features(d.features, new_y - len(old_classes), new_classes, backbone_sha,
                                        per_class=per_class)
    support = old_support.merge(new_support) if old_support is not None else new_support
    arch = json.loads(json.dumps(bundle.manifest.get("architecture") or {"name": "model", "params": {}}))
    arch.setdefault("params", {})["classes"] = len(classes)
    arch["head"] = ({"kind": "linear"} if copies == 1 else {"kind": "shift-mean", "copies": copies}) \
        | {"written_by": "edge.head.add_head"}
    parent_training = bundle.manifest.get("training") or {}
    training = {
        "method": "head-swap (replace)" if replace else "head-swap (add)",
        "data": {"path": d.where, "sha256": d.sha256,
                 # a Dataset may be a subset of its file: path/sha256 then name the source, not the rows
                 "source": "dataset object (rows may be a subset of the file)" if isinstance(data, Dataset) else "file",
                 "spectra": d.total, "used": int(d.features.shape[0]),
                 "skipped_nonfinite": len(d.skipped), "skipped_rows": d.skipped[:100], "classes": len(new_classes)},
        "fit": {"l2": fit_kw.get("l2", DEFAULT_L2), "class_weight": fit_kw.get("class_weight", "balanced"),
                "exemplars_per_class": per_class, "gaussian_per_old_class": gaussian, "folds": n_folds,
                "new_bias": new_bias,
                "old_exemplars": int(old_support.exemplars.shape[0]) if old_support is not None else 0,
                "old_support": old_source,
                "synthetic_support_classes": len(support.meta.get("synthetic_classes", []))},
        "temperature_source": t_source,
        "seed": seed,
        "command": opts.get("command"),
        "metrics": metrics,
        "parent_data": (parent_training.get("data") or {}) if isinstance(parent_training, dict) else {},
        "versions": {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
                     "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
    }
    # the threshold is refitted on every class's support, so it stays valid for the new classes
    novelty = fit_novelty(support, **_novelty_options(bundle))
    manifest_sha = file_sha256(bundle.path / "manifest.json")
    parent_info = {"model_id": bundle.model_id, "backbone_sha256": backbone_sha, "manifest_sha256": manifest_sha,
                   "classes_added": new_classes, "replaced": bool(replace)}
    out_bundle = write_bundle(
        out, backbone_onnx=bundle.backbone_path.read_bytes(),
        head_onnx=linear_head_onnx(w, b) if copies == 1 else shift_mean_head_onnx(w, b, copies),
        classes=classes, preprocessing=bundle.preprocessor.spec, feature_size=bundle.feature_size,
        architecture=arch, training=training, temperature=temperature, parent=parent_info,
        extra_files={SUPPORT_PART: (SUPPORT_FILE, support.to_bytes()), NOVELTY_PART: (NOVELTY_FILE, novelty.to_bytes())},
        extra={"support": _support_summary(support), "novelty": novelty.summary()})
    if out_bundle.manifest["files"]["backbone"]["sha256"] != backbone_sha:  # pragma: no cover - write_bundle copies
        raise BundleError(f"{out}: backbone changed while writing; refused")
    log.info("head swap: %s -> %s (%d old + %d new classes, T=%.3g, %s)", bundle.model_id, out_bundle.model_id,
             len(old_classes), len(new_classes), temperature, metrics)
    return out_bundle


def synthesize_support(bundle: Bundle, features: np.ndarray, *, per_class: int = 5, lam: float = 0.01,
                       seed: int = 0) -> Support:
    """Stand-in support for a bundle that has none: old-class features inverted from its head.

    For each class, ``per_class`` feature vectors are found by maximising the head's
    log-probability of that class, minus ``lam/2 * ||f - f0||^2``, within the box of feature
    values seen in ``features`` (the new spectra's; for liu's tanh features about [-1, 1], for
    compact's ReLU features [0, ~60]), each started from a randomly chosen row ``f0`` of ``features``.  The vectors are
    classified as their class by the old head by construction; they are not real spectra's
    features, so the old classes lose more accuracy than with a real support part (measured in
    docs/heads.md) but do not collapse.

    Raises
    ------
    BundleError
        The head is not a single Gemm (see :func:`read_linear_head`).
    """
    from scipy.optimize import minimize
    from scipy.special import log_softmax

    w0, b0 = (a.astype(np.float64) for a in read_linear_head(bundle.head_path.read_bytes()))
    x = np.asarray(features, dtype=np.float64)
    lo, hi = x.min(axis=0), x.max(axis=0)
    pad = 0.05 * np.maximum(hi - lo, 1e-3)
    bounds = list(zip(lo - pad, hi + pad))
    rng = np.random.default_rng(seed)
    ex, lab = [], []
    with _one_blas_thread():
        for c in range(w0.shape[0]):
            for start in x[rng.integers(0, x.shape[0], per_class)]:
                def objective(f: np.ndarray, c: int = c, start: np.ndarray = start) -> tuple[float, np.ndarray]:
                    lp = log_softmax(w0 @ f + b0)
                    grad = -(w0[c] - np.exp(lp) @ w0) + lam * (f - start)
                    return float(-lp[c] + 0.5 * lam * ((f - start) ** 2).sum()), grad

                ex.append(minimize(objective, start, jac=True, method="L-BFGS-B", bounds=bounds).x)
                lab.append(c)
    sha = bundle.manifest["files"]["backbone"]["sha256"]
    sup = support_from_features(np.asarray(ex, np.float32), np.asarray(lab), bundle.classes, sha,
                                per_class=per_class, meta={"synthetic_classes": list(bundle.classes), "method": "head inversion", "lam": lam})
    log.warning("%s: no support part; using %d old-class feature vectors synthesised from the head "
                "(weaker than real support, see docs/heads.md)", bundle.path, sup.exemplars.shape[0])
    return sup


def _support_summary(support: Support) -> dict[str, Any]:
    return {"format": SUPPORT_FORMAT, "version": SUPPORT_VERSION, "classes": len(support.classes),
            "synthetic_classes": len(support.meta.get("synthetic_classes", [])),
            "exemplars": int(support.exemplars.shape[0]), "exemplar_dtype": "float16",
            "per_class": int(support.meta.get("per_class", DEFAULT_EXEMPLARS))}


def _novelty_options(bundle: Bundle) -> dict[str, Any]:
    """The parent's novelty target and top-k, so a child keeps the same operating point."""
    summary = bundle.manifest.get("novelty") if isinstance(bundle.manifest.get("novelty"), dict) else {}
    opts: dict[str, Any] = {}
    if isinstance(summary.get("target"), float) and 0 < summary["target"] < 1:
        opts["target"] = summary["target"]
    if isinstance(summary.get("top"), int) and summary["top"] >= 1:
        opts["top"] = summary["top"]
    return opts


def add_support(bundle: str | Path | Bundle, data: str | Path | Dataset, out: str | Path, *,
                exemplars: int = DEFAULT_EXEMPLARS) -> Bundle:
    """Write a copy of ``bundle`` carrying a support part made from its training spectra ``data``.

    Backbone, head, classes, temperature and ``model_id`` are unchanged (the manifest gains
    ``files.support`` and ``support``, so a signature must be renewed).  Every class of the
    bundle needs spectra in ``data``; spectra of other classes are ignored (counted in the log).

    This is how a bundle trained before support existed (e.g. the shipped default) becomes
    extensible by :func:`add_head`; ``out`` may equal the bundle's own path (atomic replace).
    """
    b = _as_bundle(bundle)
    d = _load_data(data, b)
    known = np.isin(d.labels, b.classes)
    missing = sorted(set(b.classes) - set(d.labels.tolist()))
    if missing:
        raise InputError(f"{d.where}: no spectra for {len(missing)} of model {b.model_id}'s classes "
                         f"(first: {', '.join(missing[:5])}); support needs every class")
    if (~known).any():
        log.warning("%s: ignoring %d spectra of classes the model does not know", d.where, int((~known).sum()))
    index = {c: i for i, c in enumerate(b.classes)}
    y = np.array([index[c] for c in d.labels[known]], np.int64)
    sha = b.manifest["files"]["backbone"]["sha256"]
    sup = support_from_features(d.features[known], y, b.classes, sha, per_class=exemplars,
                                meta={"data_sha256": d.sha256})
    files = b.manifest["files"]
    extra_files = {p: (files[p]["path"], b.part_path(p).read_bytes()) for p in b.parts
                   if p not in ("backbone", "head", SUPPORT_PART)}
    extra_files[SUPPORT_PART] = (SUPPORT_FILE, sup.to_bytes())
    novelty = fit_novelty(sup, **_novelty_options(b))  # a new support makes any earlier threshold stale
    extra_files[NOVELTY_PART] = (NOVELTY_FILE, novelty.to_bytes())
    standard = {"format", "format_version", "model_id", "created_utc", "classes", "preprocessing", "input",
                "feature_size", "temperature", "files", "architecture", "training", "parent"}
    extra = {k: v for k, v in b.manifest.items() if k not in standard}
    extra["support"] = _support_summary(sup)
    extra["novelty"] = novelty.summary()
    training = dict(b.manifest.get("training") or {})
    training["support"] = {"data": d.where, "sha256": d.sha256, "spectra": int(known.sum()),
                           "skipped_nonfinite": len(d.skipped)}
    return write_bundle(out, backbone_onnx=b.backbone_path.read_bytes(), head_onnx=b.head_path.read_bytes(),
                        classes=b.classes, preprocessing=b.preprocessor.spec, feature_size=b.feature_size,
                        architecture=b.manifest.get("architecture") or {"name": "model", "params": {}},
                        training=training, temperature=b.temperature, parent=b.manifest.get("parent"),
                        extra_files=extra_files, extra=extra)


__all__ = ["linear_head_onnx", "shift_mean_head_onnx", "head_copies", "head_logits", "read_linear_head", "HEAD_OPSET",
           "fit_softmax_head",
           "extract_features", "Support", "load_support", "support_from_features", "add_head", "add_support",
           "synthesize_support",
           "herding", "DEFAULT_L2", "DEFAULT_EXEMPLARS", "SUPPORT_PART", "SUPPORT_FILE"]
