"""Models compared in the benchmarks (not the product path), behind one small interface.

Every model is fitted on a :class:`calibration.dataset.Dataset` of spectra and
scores spectra on the same axis: :meth:`Model.scores` returns an ``(n, K)`` array
(higher = more likely) over ``Model.classes``, from which :func:`evaluate` takes
top-k accuracy.  Feature extraction is part of the model, so shifted test spectra
go through exactly the path unshifted ones do.

Baselines of Soysal et al. (2025)
---------------------------------
* **Peak features** (§3): peaks found with ``scipy.signal.find_peaks_cwt`` (Ricker
  wavelet at widths 10 and 20 cm⁻¹, other arguments at their defaults; the wavelet
  is sampled on an odd, centred grid, see :func:`centred_ricker`), counted in 12 cm⁻¹ bins from the first axis point: 200–1591 cm⁻¹
  gives 116 counts per spectrum (Sang's 30–1599 cm⁻¹ gives 131).  Widths are in
  cm⁻¹ and converted to samples with the axis step (1 cm⁻¹ in all our data).
  ``knn-peaks``: ``KNeighborsClassifier(n_neighbors=1)`` (Euclidean);
  ``svm-peaks``: ``SVC(kernel="rbf", C=10, gamma=0.01)``.
* ``1nn-raw``: 1-NN (Euclidean) on per-spectrum min-max-normalised spectra.
* ``mlp-small`` / ``mlp-mid`` / ``mlp-large`` (§4): scikit-learn ``MLPClassifier``
  (ReLU, Adam, L2 1e-4) on the same min-max-normalised spectra, hidden layers
  :data:`MLP_SIZES`.  The paper's exact widths are not available here; these are
  our choice of one narrow, one wide and one two-layer network.
* ``cnn:<arch>``: a CNN from :mod:`trainer` (any architecture its registry
  exposes), trained with :func:`trainer.train.train` on the raw spectra and
  scored with its logits after the shared preprocessing.
* ``cnn+knn:<arch>`` (§4): the same trained CNN's backbone features — taken from
  its exported backbone ONNX graph run by ONNX Runtime, exactly as the edge
  would compute them — then 1-NN (Euclidean) on those features.

Rankings for top-k: 1-NN models rank classes by their nearest training spectrum
(distance to the closest member of each class); the SVM by its one-vs-rest
one-vs-one votes (``SVC.predict``'s class first, then
scikit-learn's one-vs-rest transform of votes and confidences); the MLP by
``predict_proba``; the CNN by its logits.  A class absent from training is
never ranked, so its test spectra count as errors.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
import warnings
from pathlib import Path
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Iterator

import numpy as np

from calibration.dataset import Dataset
from calibration.errors import ConfigError

log = logging.getLogger(__name__)

#: find_peaks_cwt widths (cm⁻¹) and bin width (cm⁻¹) of Soysal et al. §3.
PEAK_WIDTHS: tuple[float, ...] = (10.0, 20.0)
PEAK_BIN = 12.0
#: The stop-11 shipped model's recipe in CNNSpec syntax: no validation split, a fixed 250 epochs,
#: the trainer's default augmentation (±3 cm⁻¹ shifts).  The default of the scripts' ``--spec``, so
#: the commands recorded in BENCHMARKS.md still compute what they recorded.
SHIPPED_RECIPE = "cnn:liu:val_fraction=0,epochs=250"
#: The model shipped since stop 17 (``--shift-tolerance 5``): the same with ±10 shifts on 80 %.
SHIPPED_RECIPE_S10 = SHIPPED_RECIPE + ",aug.max_shift=10,aug.p_shift=0.8"
#: Hidden layers of the MLP baselines.
MLP_SIZES: dict[str, tuple[int, ...]] = {"small": (64,), "mid": (512,), "large": (1024, 256)}
#: Largest (rows × one-vs-one pairs) block of SVM decision values held at once.
SVM_DECISION_BLOCK = 20_000_000


# ----------------------------------------------------------------------------- features

def minmax(x: np.ndarray) -> np.ndarray:
    """Per-spectrum min-max normalisation to [0, 1] (flat spectra become 0)."""
    x = np.asarray(x, dtype=np.float64)
    lo = x.min(axis=1, keepdims=True)
    span = x.max(axis=1, keepdims=True) - lo
    return (x - lo) / np.where(span > 0, span, 1.0)


def _axis_step(wavenumbers: np.ndarray) -> float:
    wn = np.asarray(wavenumbers, dtype=np.float64)
    if wn.ndim != 1 or wn.size < 2 or not np.all(np.diff(wn) > 0):
        raise ConfigError("wavenumbers must be a strictly increasing 1-D axis with at least 2 points")
    return float(np.median(np.diff(wn)))


def peak_bin_count(wavenumbers: np.ndarray, bin_width: float = PEAK_BIN) -> int:
    """Number of ``bin_width`` bins covering the axis (116 for 200–1591 cm⁻¹ at 12 cm⁻¹)."""
    wn = np.asarray(wavenumbers, dtype=np.float64)
    span = wn[-1] - wn[0] + _axis_step(wn)
    return int(np.ceil(span / bin_width - 1e-9))


def centred_ricker(points: int, a: float) -> np.ndarray:
    """The Ricker (Mexican-hat) wavelet of width ``a`` samples on an odd number of points.

    scipy's own Ricker is sampled on ``points`` = 10 × width points, an even number
    for integer widths, so its centre falls between two samples and the
    ``mode='same'`` convolution in ``find_peaks_cwt`` shifts every row by half a
    sample.  A symmetric band centred on a grid point then becomes a two-sample
    plateau whose equal halves differ only by rounding, and the strict relative
    maximum that builds ridge lines finds it or not depending on which convolution
    method scipy picks (direct or FFT, chosen by size heuristics that change
    between releases).  One more point puts the centre on a sample: the band's
    maximum is one sample, found the same way on every scipy version.
    """
    n = int(points) | 1
    x = np.arange(n) - (n - 1) / 2.0
    amp = 2.0 / (np.sqrt(3.0 * a) * np.pi ** 0.25)
    return amp * (1.0 - (x / a) ** 2) * np.exp(-(x ** 2) / (2.0 * a * a))


def peak_positions(spectrum: np.ndarray, wavenumbers: np.ndarray,
                   widths: tuple[float, ...] = PEAK_WIDTHS) -> np.ndarray:
    """Peak positions (cm⁻¹) by ``scipy.signal.find_peaks_cwt`` with Ricker widths in cm⁻¹."""
    from scipy.signal import find_peaks_cwt

    step = _axis_step(wavenumbers)
    idx = find_peaks_cwt(np.asarray(spectrum, dtype=np.float64), np.asarray(widths, dtype=np.float64) / step,
                         wavelet=centred_ricker)
    return np.asarray(wavenumbers, dtype=np.float64)[np.asarray(idx, dtype=int)]


class PeakCounter:
    """Peak counts per ``bin_width`` bin for each spectrum, remembered by spectrum content.

    The cache keys on the spectrum's bytes, so the KNN and SVM baselines (and
    repeated folds) find peaks in each distinct spectrum once.
    """

    def __init__(self, widths: tuple[float, ...] = PEAK_WIDTHS, bin_width: float = PEAK_BIN) -> None:
        self.widths, self.bin_width = tuple(float(w) for w in widths), float(bin_width)
        self._cache: dict[tuple[bytes, bytes], np.ndarray] = {}

    def __call__(self, spectra: np.ndarray, wavenumbers: np.ndarray) -> np.ndarray:
        return peak_features(spectra, wavenumbers, self.widths, self.bin_width, cache=self._cache)


def peak_features(spectra: np.ndarray, wavenumbers: np.ndarray, widths: tuple[float, ...] = PEAK_WIDTHS,
                  bin_width: float = PEAK_BIN, cache: dict | None = None) -> np.ndarray:
    """Soysal et al. §3 peak features: peak counts per ``bin_width`` bin, ``(n, bins)`` float64.

    Bin ``b`` holds peaks at ``wn[0] + b·bin_width <= x < wn[0] + (b+1)·bin_width``.
    """
    spectra = np.atleast_2d(np.asarray(spectra))
    wn = np.asarray(wavenumbers, dtype=np.float64)
    if spectra.shape[1] != wn.size:
        raise ConfigError(f"spectra have {spectra.shape[1]} points, axis has {wn.size}")
    n_bins = peak_bin_count(wn, bin_width)
    out = np.zeros((spectra.shape[0], n_bins))
    axis_key = hashlib.sha1(wn.tobytes() + repr((widths, bin_width)).encode()).digest()
    for i, row in enumerate(spectra):
        key = (axis_key, hashlib.sha1(np.ascontiguousarray(row).tobytes()).digest())
        if cache is not None and key in cache:
            out[i] = cache[key]
            continue
        pos = peak_positions(row, wn, widths)
        b = np.clip(np.floor((pos - wn[0]) / bin_width + 1e-9).astype(int), 0, n_bins - 1)
        out[i] = np.bincount(b, minlength=n_bins)
        if cache is not None:
            cache[key] = out[i].copy()
    return out


# ----------------------------------------------------------------------------- scoring

def nearest_class_scores(knn: Any, x: np.ndarray, y_fit_idx: np.ndarray, n_classes: int) -> np.ndarray:
    """``-`` distance to the nearest training member of each class (``-inf`` for absent classes).

    ``knn`` is a fitted ``KNeighborsClassifier``; ``y_fit_idx`` the class index of
    each of its training rows.
    """
    n_fit = y_fit_idx.size
    dist, idx = knn.kneighbors(x, n_neighbors=n_fit)
    best = np.full((x.shape[0], n_classes), np.inf)
    rows = np.repeat(np.arange(x.shape[0]), n_fit)
    np.minimum.at(best, (rows, y_fit_idx[idx].ravel()), dist.ravel())
    return -best


def evaluate(scores: np.ndarray, classes: np.ndarray | list[str], truth: np.ndarray,
             ks: tuple[int, ...] = (1, 3)) -> dict[str, float]:
    """Top-k accuracy of ``scores`` (n, K) over ``classes`` against ``truth`` labels.

    Ties are broken by class order (stable sort); a true label that is not among
    ``classes`` is always wrong.
    """
    classes = np.asarray(classes).astype(str)
    truth = np.asarray(truth).astype(str)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), axis=1, kind="stable")
    ranked = classes[order]
    out = {}
    for k in ks:
        kk = min(k, classes.size)
        out[f"top{k}"] = float((ranked[:, :kk] == truth[:, None]).any(axis=1).mean()) if truth.size else float("nan")
    return out


# ----------------------------------------------------------------------------- models

class Model:
    """Interface of a benchmark model: ``fit(Dataset)``, ``scores(spectra, wavenumbers)``, ``classes``."""

    name: str = "model"
    description: str = ""

    def fit(self, train: Dataset) -> "Model":  # pragma: no cover - interface
        raise NotImplementedError

    def scores(self, spectra: np.ndarray, wavenumbers: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    classes: np.ndarray

    def info(self) -> dict[str, Any]:
        """JSON-able facts about the fitted model (size, training time ...)."""
        return {}


class _SklearnOnFeatures(Model):
    """A scikit-learn classifier on features computed per spectrum."""

    def __init__(self, name: str, description: str, features: Callable[[np.ndarray, np.ndarray], np.ndarray],
                 make_estimator: Callable[[], Any], ranking: str) -> None:
        self.name, self.description = name, description
        self._features, self._make, self._ranking = features, make_estimator, ranking
        self.estimator: Any = None
        self._fit_seconds = 0.0

    def fit(self, train: Dataset) -> "_SklearnOnFeatures":
        t0 = time.perf_counter()
        x = self._features(train.spectra, train.wavenumbers)
        self._axis = train.wavenumbers
        self.estimator = self._make().fit(x, train.labels)
        self.classes = np.asarray(self.estimator.classes_).astype(str)
        self._y_idx = np.searchsorted(self.classes, np.asarray(train.labels).astype(str))
        self._fit_seconds = time.perf_counter() - t0
        return self

    def scores(self, spectra: np.ndarray, wavenumbers: np.ndarray) -> np.ndarray:
        if not np.array_equal(np.asarray(wavenumbers), np.asarray(self._axis)):
            raise ConfigError(f"{self.name}: test spectra are on a different axis than the training spectra")
        x = self._features(spectra, wavenumbers)
        if self._ranking == "nearest":
            return nearest_class_scores(self.estimator, x, self._y_idx, self.classes.size)
        if self._ranking == "proba":
            return self.estimator.predict_proba(x)
        if self._ranking == "decision":
            return _blocked_decision(self.estimator, x)
        raise AssertionError(self._ranking)

    def info(self) -> dict[str, Any]:
        return {"fit_seconds": round(self._fit_seconds, 3)}


def _blocked_decision(svc: Any, x: np.ndarray) -> np.ndarray:
    """Class scores of a one-vs-one ``SVC`` whose argmax is ``SVC.predict``, computed in blocks of rows.

    scikit-learn's ``decision_function_shape="ovr"`` transform (votes, ties
    broken by the summed confidences squeezed into (−1/3, 1/3)) with libsvm's
    predicted class moved to the top, computed with sparse matrix products
    instead of scikit-learn's Python loop over the K(K−1)/2 class pairs (many
    minutes for Sang's 1332 minerals).
    """
    from scipy import sparse

    k = len(svc.classes_)
    if k == 2:  # binary SVC returns one column, positive for classes_[1]
        d = svc.decision_function(x)
        return np.stack([-d, d], axis=1)
    ii, jj = np.triu_indices(k, 1)  # libsvm's pair order: (0,1), (0,2), ..., (1,2), ...
    pairs = ii.size
    a_i = sparse.csr_matrix((np.ones(pairs), (np.arange(pairs), ii)), shape=(pairs, k))
    a_j = sparse.csr_matrix((np.ones(pairs), (np.arange(pairs), jj)), shape=(pairs, k))
    rows = max(1, SVM_DECISION_BLOCK // pairs)
    out = []
    for start in range(0, len(x), rows):
        dec = svc.decision_function(x[start:start + rows])  # (rows, pairs), > 0 votes for the first class
        win_i = (dec > 0).astype(np.float64)  # libsvm's vote (scikit-learn's transform counts 0 for i)
        votes = (a_i.T @ win_i.T).T + (a_j.T @ (1.0 - win_i).T).T
        conf = (a_i.T @ dec.T).T - (a_j.T @ dec.T).T
        scores = votes + conf / (3.0 * (np.abs(conf) + 1.0))
        # libsvm's predict breaks tied votes by class order, not by confidence: rank its answer
        # first so that top-1 is SVC.predict's accuracy (the confidences order the rest).
        scores[np.arange(len(votes)), np.argmax(votes, axis=1)] += 1.0
        out.append(scores)
    return np.concatenate(out) if out else np.zeros((0, k))


def _minmax_features(spectra: np.ndarray, wavenumbers: np.ndarray) -> np.ndarray:
    return minmax(spectra)


def knn_peaks(counter: PeakCounter | None = None) -> Model:
    """Soysal §3: 1-NN (Euclidean) on 116 peak counts."""
    from sklearn.neighbors import KNeighborsClassifier

    counter = counter or PeakCounter()
    return _SklearnOnFeatures("knn-peaks", "1-NN (Euclidean) on find_peaks_cwt counts in 12 cm-1 bins",
                              counter, lambda: KNeighborsClassifier(n_neighbors=1), "nearest")


def svm_peaks(counter: PeakCounter | None = None) -> Model:
    """Soysal §3: SVM, RBF kernel, C=10, gamma=0.01, on 116 peak counts."""
    from sklearn.svm import SVC

    counter = counter or PeakCounter()
    return _SklearnOnFeatures("svm-peaks", "SVC(rbf, C=10, gamma=0.01) on find_peaks_cwt counts in 12 cm-1 bins",
                              counter, lambda: SVC(kernel="rbf", C=10.0, gamma=0.01, decision_function_shape="ovo"),
                              "decision")


def nn_raw() -> Model:
    """1-NN (Euclidean) on per-spectrum min-max-normalised spectra."""
    from sklearn.neighbors import KNeighborsClassifier

    return _SklearnOnFeatures("1nn-raw", "1-NN (Euclidean) on min-max-normalised spectra",
                              _minmax_features, lambda: KNeighborsClassifier(n_neighbors=1), "nearest")


def mlp(size: str, seed: int = 0, max_iter: int = 300) -> Model:
    """MLP baseline (scikit-learn) on min-max-normalised spectra; ``size`` in :data:`MLP_SIZES`."""
    from sklearn.neural_network import MLPClassifier

    if size not in MLP_SIZES:
        raise ConfigError(f"unknown MLP size {size!r}; known: {sorted(MLP_SIZES)}")
    hidden = MLP_SIZES[size]

    def make() -> Any:
        return MLPClassifier(hidden_layer_sizes=hidden, alpha=1e-4, max_iter=max_iter, random_state=seed)

    return _SklearnOnFeatures(f"mlp-{size}", f"MLPClassifier{hidden} (ReLU, Adam, {max_iter} epochs max) on "
                              "min-max-normalised spectra", _minmax_features, make, "proba")


# ----------------------------------------------------------------------------- CNNs from the trainer

def discover_architectures() -> list[str]:
    """Architecture names the trainer registers, read at run time.

    The registry is ``trainer.archs.ARCHS`` (a dict, torch-free).  For older
    trees the lookup falls back to a mapping or name sequence called
    ``ARCHS``/``ARCH_NAMES``/``ARCHITECTURES`` in :mod:`trainer.models` or
    :mod:`trainer.config`, and finally to the single ``ARCH_NAME`` (``"liu"``).
    """
    import importlib

    for mod_name in ("trainer.archs", "trainer.models", "trainer.config"):
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:
            continue
        for attr in ("ARCHS", "ARCH_NAMES", "ARCHITECTURES"):
            reg = getattr(mod, attr, None)
            if isinstance(reg, dict) and reg:
                return [str(k) for k in reg]
            if isinstance(reg, (list, tuple)) and reg and all(isinstance(n, str) for n in reg):
                return list(reg)
    from trainer.config import ARCH_NAME

    return [ARCH_NAME]


@dataclass
class CNNSpec:
    """A CNN to train: architecture name and TrainConfig overrides (``cnn:liu:pool=2,dense=2048``)."""

    arch: str
    overrides: dict[str, Any] = field(default_factory=dict)
    alias: str | None = None

    @property
    def name(self) -> str:
        if self.alias:
            return self.alias
        if not self.overrides:
            return f"cnn:{self.arch}"
        def text(v: Any) -> str:
            return json.dumps(list(v), separators=(",", ":")) if isinstance(v, tuple) else str(v)

        return f"cnn:{self.arch}:" + ",".join(f"{k}={text(v)}" for k, v in self.overrides.items())

    @classmethod
    def parse(cls, text: str) -> "CNNSpec":
        """``cnn:ARCH`` or ``cnn:ARCH:key=value,key=value``.

        Values are read as JSON when they can be (``dense=2048``, ``skip=false``,
        ``widths=[32,64]``; lists become tuples), as text otherwise.
        """
        import re

        parts = text.split(":", 2)
        if len(parts) < 2 or parts[0] != "cnn" or not parts[1]:
            raise ConfigError(f"CNN model {text!r}: expected cnn:ARCH[:key=value,...]")
        overrides: dict[str, Any] = {}
        if len(parts) == 3 and parts[2]:
            for item in re.split(r",(?![^\[]*\])", parts[2]):  # commas outside [...]
                if "=" not in item:
                    raise ConfigError(f"CNN model {text!r}: {item!r} is not key=value")
                k, v = item.split("=", 1)
                try:
                    value = json.loads(v)
                except ValueError:
                    value = v.strip()
                overrides[k.strip()] = tuple(value) if isinstance(value, list) else value
        return cls(parts[1], overrides)


def make_train_config(spec: CNNSpec, *, seed: int, threads: int | None, epochs: int | None = None,
                      patience: int | None = None, device: str | None = None) -> Any:
    """A checked :class:`trainer.config.TrainConfig` for ``spec``.

    Overrides that are TrainConfig fields (``pool``, ``dense``, ``lr`` ...) set
    those; the others go to ``arch_options`` (the architecture's own options,
    ``raman-edge train --list-archs``), where the trainer checks them.
    ``device`` (``--device`` of the scripts) applies unless the spec sets its own.
    """
    import trainer.config as tc
    from trainer.config import TrainConfig

    known = {f.name for f in fields(TrainConfig)} - {"augment_config", "arch_options", "arch"}
    if spec.arch != tc.ARCH_NAME:  # liu's TrainConfig fields are other architectures' arch_options
        known -= set(getattr(tc, "LIU_FIELDS", ()))
    kw: dict[str, Any] = {"arch": spec.arch, "seed": seed, "threads": threads}
    if device is not None:
        kw["device"] = device
    arch_options: dict[str, Any] = {}
    aug: dict[str, Any] = {}
    for k, v in spec.overrides.items():
        if k.startswith("aug."):  # cnn:liu:aug.p_background_swap=0.8 (an AugmentConfig field)
            aug[k[4:]] = v
        else:
            (kw if k in known else arch_options)[k] = v
    if aug:
        from trainer.augment import AugmentConfig

        kw["augment_config"] = AugmentConfig().replace(**aug)
    if arch_options:
        if "arch_options" not in {f.name for f in fields(TrainConfig)}:
            raise ConfigError(f"{spec.name}: {sorted(arch_options)} are not TrainConfig options")
        kw["arch_options"] = arch_options
    if epochs is not None:
        kw["epochs"] = min(epochs, kw.get("epochs", TrainConfig().epochs))
    if patience is not None:
        kw["patience"] = patience
    return TrainConfig(**kw).check()


class CNNModel(Model):
    """A trainer CNN; after :meth:`fit`, :attr:`feature_knn` is its CNN+KNN sibling (same weights)."""

    def __init__(self, spec: CNNSpec, *, seed: int = 0, threads: int | None = 1, epochs: int | None = None,
                 patience: int | None = None, preprocessing: dict[str, Any] | None = None,
                 device: str | None = None) -> None:
        self.spec = spec
        self.name = spec.name
        self.config = make_train_config(spec, seed=seed, threads=threads, epochs=epochs, patience=patience,
                                        device=device)
        self.description = f"{spec.arch} CNN via trainer.train.train ({self.config.to_dict()['epochs']} epochs max)"
        self.preprocessing = preprocessing
        self.result: Any = None
        self.feature_knn: CNNFeatureKNN | None = None

    def fit(self, train: Dataset) -> "CNNModel":
        from calibration.preprocess import Preprocessor
        from trainer.train import train as fit

        self.result = fit(train, self.config, preprocessing=self.preprocessing)
        self._pre = Preprocessor(self.result.preprocessing)
        self.classes = np.asarray(self.result.classes).astype(str)
        self.feature_knn = CNNFeatureKNN(self).fit(train)  # exports the CPU model to ONNX
        if self.config.device != "cpu":  # score where it trained (predict_logits follows the model)
            from trainer.train import resolve_device

            self.result.model.to(resolve_device(self.config.device))
        return self

    def preprocess(self, spectra: np.ndarray, wavenumbers: np.ndarray) -> np.ndarray:
        return self._pre.batch(np.asarray(spectra, dtype=np.float64), wavenumbers)

    def scores(self, spectra: np.ndarray, wavenumbers: np.ndarray) -> np.ndarray:
        from trainer.train import predict_logits

        return predict_logits(self.result.model, self.preprocess(spectra, wavenumbers))

    def info(self) -> dict[str, Any]:
        from trainer.models import count_parameters

        r = self.result
        return {"parameters": int(count_parameters(r.model)), "train_seconds": round(r.seconds, 1),
                "epochs_run": r.epochs_run, "best_epoch": r.best_epoch, "config": r.config.to_dict()}


class CNNFeatureKNN(Model):
    """CNN+KNN: 1-NN (Euclidean) on a trained CNN's backbone features from its exported ONNX graph.

    Falls back to the torch backbone (eval mode, the same function) when the
    architecture cannot be exported; :meth:`info` says which was used.
    """

    def __init__(self, cnn: CNNModel) -> None:
        self.cnn = cnn
        self.name = cnn.name.replace("cnn:", "cnn+knn:", 1) if cnn.name.startswith("cnn:") else cnn.name + "+knn"
        self.description = f"1-NN (Euclidean) on backbone features of {cnn.name}"
        self._session: Any = None
        self.features_via = "onnx"

    def _features(self, spectra: np.ndarray, wavenumbers: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(self.cnn.preprocess(spectra, wavenumbers), dtype=np.float32)
        if self._session is not None:
            from edge.bundle import BACKBONE_INPUT, BACKBONE_OUTPUT

            return self._session.run([BACKBONE_OUTPUT], {BACKBONE_INPUT: x})[0].astype(np.float64)
        import torch

        model = self.cnn.result.model
        model.eval()
        with torch.no_grad():
            device = next(model.parameters()).device
            return model.backbone(torch.from_numpy(x).to(device)).cpu().numpy().astype(np.float64)

    def fit(self, train: Dataset) -> "CNNFeatureKNN":
        from sklearn.neighbors import KNeighborsClassifier

        try:
            import onnxruntime as ort

            from trainer.export import export_onnx

            backbone, _ = export_onnx(self.cnn.result.model)
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            opts.intra_op_num_threads = self.cnn.config.threads or 1
            self._session = ort.InferenceSession(backbone, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # an architecture the exporter does not handle yet
            log.warning("%s: ONNX export failed (%s); using the torch backbone", self.cnn.name, e)
            self._session, self.features_via = None, "torch"
        self.classes = np.asarray(self.cnn.classes)
        x = self._features(train.spectra, train.wavenumbers)
        self.knn = KNeighborsClassifier(n_neighbors=1).fit(x, np.asarray(train.labels).astype(str))
        self._y_idx = np.searchsorted(self.classes, np.asarray(train.labels).astype(str))
        return self

    def scores(self, spectra: np.ndarray, wavenumbers: np.ndarray) -> np.ndarray:
        return nearest_class_scores(self.knn, self._features(spectra, wavenumbers), self._y_idx, self.classes.size)

    def info(self) -> dict[str, Any]:
        return {"features_via": self.features_via, "feature_size": int(self.knn.n_features_in_)}


#: The baselines by name (each call returns a fresh, unfitted model).
BASELINES: dict[str, Callable[..., Model]] = {
    "knn-peaks": lambda counter=None, **_: knn_peaks(counter),
    "svm-peaks": lambda counter=None, **_: svm_peaks(counter),
    "1nn-raw": lambda **_: nn_raw(),
    "mlp-small": lambda seed=0, max_iter=300, **_: mlp("small", seed, max_iter),
    "mlp-mid": lambda seed=0, max_iter=300, **_: mlp("mid", seed, max_iter),
    "mlp-large": lambda seed=0, max_iter=300, **_: mlp("large", seed, max_iter),
}




# ----------------------------------------------------------------------------- driver helpers

#: The benchmark scripts' ``--device`` option (trainer ``TrainConfig.device``).
DEVICE_HELP = "Where the CNNs train: cpu, cuda, cuda:N or auto (raman-edge train --device)."


def model_factory(name: str, *, counter: PeakCounter, seed: int, threads: int | None, epochs: int | None,
                  patience: int | None, mlp_iter: int, preprocessing: dict[str, Any] | None,
                  aliases: dict[str, CNNSpec] | None = None, device: str | None = None) -> Callable[[], Model]:
    """A function returning a fresh model for ``name`` (a baseline, an alias, or ``cnn:ARCH[:k=v,...]``)."""
    if name in BASELINES:
        return lambda: BASELINES[name](counter=counter, seed=seed, max_iter=mlp_iter)
    spec = (aliases or {}).get(name) or (CNNSpec.parse(name) if name.startswith("cnn:") else None)
    if spec is None:
        raise ConfigError(f"unknown model {name!r}; known: {sorted(BASELINES) + sorted(aliases or {})} "
                          "or cnn:ARCH[:key=value,...]")
    make_train_config(spec, seed=seed, threads=threads, epochs=epochs, patience=patience, device=device)  # fail early
    return lambda: CNNModel(spec, seed=seed, threads=threads, epochs=epochs, patience=patience,
                            preprocessing=preprocessing, device=device)


def split_model_list(items: tuple[str, ...] | list[str]) -> list[str]:
    """Model names from repeated/comma-separated options: ``"1nn-raw,cnn:liu:pool=2,dense=64,cnn:sang"``.

    A comma starts a new name unless what follows is a ``key=value`` of the CNN before it.
    """
    import re

    out: list[str] = []
    for item in items:
        for piece in (p.strip() for p in re.split(r",(?![^\[]*\])", item)):  # commas outside [...]
            if not piece:
                continue
            if out and "=" in piece and not piece.startswith("cnn:") and out[-1].count(":") >= 2:
                out[-1] += "," + piece
            else:
                out.append(piece)
    return out


def write_result(out: Path | None, doc: dict[str, Any], *, default: Path, quick: bool = False) -> Path | None:
    """Write a benchmark's JSON document (folders made) and say where, with its run time.

    To ``out`` when given; otherwise to ``default``, except for a ``quick`` smoke run, which
    writes nothing unless asked (its figures are not results).  Returns the path written, if any.
    """
    if out is None:
        if quick:
            return None
        out = default
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{doc['seconds']:.0f} s -> {out}")
    return out


def provenance(paths: list[Any], threads: int | None) -> dict[str, Any]:
    """Data hashes, command line, library versions and machine of a benchmark run."""
    import datetime as dt
    import os
    import platform
    import sys
    from pathlib import Path

    import scipy
    import sklearn

    from calibration.dataset import file_sha256

    versions = {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
                "sklearn": sklearn.__version__}
    try:
        import torch

        versions["torch"] = torch.__version__
        if torch.cuda.is_available():  # a GPU the trainer may have used (--device)
            versions["cuda_device"] = torch.cuda.get_device_name()
    except ImportError:  # pragma: no cover - benchmarks need the train extra for CNN rows only
        pass
    return {"data": [{"path": str(p), "sha256": file_sha256(p)} for p in map(Path, paths)],
            "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]) if sys.argv else "",
            "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "threads": threads, "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "machine": platform.machine(), "versions": versions}


def fmt_mean_std(s: dict[str, Any] | None, pct: bool = True) -> str:
    """``0.761 ± 0.072`` (or ``76.1 ± 7.2`` with ``pct``); ``–`` when missing."""
    if not s or s.get("mean") is None or not np.isfinite(s["mean"]):
        return "–"
    if pct:
        return f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}"
    return f"{s['mean']:.3f} ± {s['std']:.3f}"



def previous_result(out: "Path | None") -> dict[str, Any] | None:
    """An earlier run's JSON at ``out`` (to merge or resume from), or None when absent or unreadable."""
    if out is None or not out.exists():
        return None
    try:
        old = json.loads(out.read_text())
    except ValueError:
        log.warning("%s: not JSON; starting afresh", out)
        return None
    return old if isinstance(old, dict) else None


@contextlib.contextmanager
def quiet_sklearn() -> Iterator[None]:
    """Silence scikit-learn's convergence warnings (MLP epochs are capped on purpose)."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


__all__ = ["quiet_sklearn", "PEAK_WIDTHS", "PEAK_BIN", "MLP_SIZES", "BASELINES", "minmax", "peak_bin_count", "peak_positions",
           "peak_features", "PeakCounter", "nearest_class_scores", "evaluate", "Model", "knn_peaks", "svm_peaks",
           "nn_raw", "mlp", "discover_architectures", "CNNSpec", "make_train_config", "CNNModel", "CNNFeatureKNN",
           "model_factory", "split_model_list", "provenance", "fmt_mean_std"]
