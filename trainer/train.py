"""Supervised training of the Liu CNN on raw labelled spectra.

Every epoch the raw training spectra are augmented (:mod:`trainer.augment`) and
then run through the shared :class:`calibration.preprocess.Preprocessor` — the
same code the edge runs — so the trainer never preprocesses any other way.

Loss: cross-entropy with balanced class weights (``n / (K · count)``).  Optimiser:
Adam; the learning rate halves when the validation loss plateaus
(``ReduceLROnPlateau``); training stops early when the monitored validation
score has not improved for ``patience`` epochs, and the best weights are restored.

The validation split is stratified but never starves a class: only classes with
at least :data:`MIN_CLASS_FOR_VAL` spectra give any to validation, and each keeps
at least two for training (see :func:`split_validation`).  When no class
qualifies, training runs for the full epoch budget on the training loss.

When the data names RRUFF specimens (:meth:`calibration.dataset.Dataset.specimen_ids`)
and some specimen has several spectra (orientations, lasers, repeats), the
validation split and the temperature's cross-fitting folds are grouped by specimen:
every spectrum of a specimen falls on one side, so early stopping and the
temperature are judged on specimens the model never saw, not on twins of its
training spectra.  Without such ids the splits are exactly the ungrouped ones.

Runs are deterministic for a given seed and thread count: all randomness comes
from the seed (numpy ``SeedSequence`` streams for the split, augmentation and
shuffling; ``torch.manual_seed`` for initialisation and dropout), and torch's
deterministic algorithms are requested.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from calibration.dataset import NO_SPECIMEN, Dataset
from calibration.errors import ConfigError
from calibration.preprocess import DEFAULT_SPEC, Preprocessor

from .augment import Augmenter
from .config import TrainConfig, default_threads
from .models import build_model, count_parameters
from .temperature import calibrate

log = logging.getLogger(__name__)

#: A class gives spectra to validation only when it has at least this many.
MIN_CLASS_FOR_VAL = 3
#: ... and always keeps at least this many for training.
MIN_CLASS_FOR_TRAIN = 2


@dataclass
class EpochLog:
    """Metrics of one epoch (``val_*`` are None without a validation set)."""

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float | None
    val_acc: float | None
    lr: float
    seconds: float
    improved: bool


@dataclass
class TrainResult:
    """A trained model (best weights restored, eval mode) and how it got there."""

    model: nn.Module
    classes: list[str]
    config: TrainConfig
    preprocessing: dict[str, Any]
    history: list[EpochLog]
    best_epoch: int
    train_index: np.ndarray
    val_index: np.ndarray
    metrics: dict[str, Any]
    seconds: float
    #: Softmax temperature fitted on the validation split (1.0 when not calibrated).
    temperature: float = 1.0

    @property
    def epochs_run(self) -> int:
        return len(self.history)


def configure_torch(seed: int, threads: int | None = None) -> int:
    """Seed torch, request deterministic kernels, set the thread count; return the threads used."""
    threads = threads or default_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return threads


def resolve_device(name: str) -> torch.device:
    """The torch device of ``--device`` (``cpu``, ``cuda``, ``cuda:N``, ``auto``).

    Raises
    ------
    ConfigError
        CUDA asked for where this torch build or machine has none (names the build).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name}: torch {torch.__version__} sees no CUDA GPU "
                              f"(use --device cpu, or a CUDA build of torch on a machine with a GPU)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
        # Repeatable runs on one GPU: no autotuned (timing-dependent) convolution algorithms.
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    return device


def specimen_groups(dataset: Dataset) -> np.ndarray | None:
    """Specimen per spectrum when grouping by it changes a split, else ``None``.

    ``None`` when the dataset has no specimen ids or no two spectra share one: every
    group would be a single spectrum, and the ungrouped splits (bit for bit those of
    data without ids) are already grouped.
    """
    groups = dataset.specimen_ids()
    if groups is None or np.unique(groups).size == groups.size:
        return None
    return groups


def grouping_summary(groups: np.ndarray | None, val_idx: np.ndarray | None = None) -> dict[str, Any]:
    """How a split was grouped, for the manifest's training provenance.

    ``by`` is ``"specimen"``, with the number of specimens, of spectra without a specimen id
    (each its own group) and, given ``val_idx``, of validation specimens; or ``"spectrum"``.
    """
    if groups is None:
        return {"by": "spectrum", "reason": "no two spectra share a specimen id (or the data has none)"}
    no_id = np.char.startswith(groups.astype(str), NO_SPECIMEN)
    out: dict[str, Any] = {"by": "specimen", "specimens": int(np.unique(groups[~no_id]).size),
                           "spectra_without_specimen": int(no_id.sum())}
    if val_idx is not None:
        out["validation_specimens"] = int(np.unique(groups[val_idx]).size)
    return out


def split_validation(labels: np.ndarray, fraction: float, rng: np.random.Generator,
                     groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/validation split that protects small classes.

    About ``fraction`` of all spectra go to validation, shared among classes in
    proportion to their size (largest remainders, ties broken at random); only
    classes with at least :data:`MIN_CLASS_FOR_VAL` spectra take part, and each
    keeps :data:`MIN_CLASS_FOR_TRAIN` for training.  Returns sorted index arrays.

    With ``groups`` (a specimen per spectrum) whole specimens go to validation
    (:func:`split_by_specimen`); without, the split is by spectrum.
    """
    if groups is not None:
        return split_by_specimen(labels, groups, fraction, rng)
    labels = np.asarray(labels)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    cap = np.where(counts >= MIN_CLASS_FOR_VAL, counts - MIN_CLASS_FOR_TRAIN, 0)
    target = min(int(round(fraction * labels.size)), int(cap.sum()))
    quota = np.zeros(classes.size, dtype=int)
    if target > 0:
        ideal = target * np.where(cap > 0, counts, 0) / np.where(cap > 0, counts, 0).sum()
        quota = np.minimum(np.floor(ideal).astype(int), cap)
        while quota.sum() < target:
            room = quota < cap
            remainder = np.where(room, ideal - quota, -np.inf) + rng.random(classes.size) * 1e-9
            quota[int(np.argmax(remainder))] += 1
    val = []
    for c in range(classes.size):
        if quota[c]:
            members = np.nonzero(inverse == c)[0]
            val.extend(rng.choice(members, size=quota[c], replace=False).tolist())
    val_idx = np.sort(np.asarray(val, dtype=int))
    train_idx = np.setdiff1d(np.arange(labels.size), val_idx)
    return train_idx, val_idx


def split_by_specimen(labels: np.ndarray, groups: np.ndarray, fraction: float,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Train/validation split with no specimen on both sides, stratified as far as specimens allow.

    A class gives validation specimens only when it has at least two specimens and
    :data:`MIN_CLASS_FOR_VAL` spectra, and it always keeps a specimen and
    :data:`MIN_CLASS_FOR_TRAIN` spectra for training.  A specimen whose spectra carry
    several labels stays in training.  Within those rules, specimens are added one at a
    time, each the one that best fills its class's share of about ``fraction`` of all
    spectra (shares in proportion to class size among the classes that can give, as in
    the ungrouped split; ties broken at random), for as long as a specimen brings the
    validation size closer to that target.  Returns sorted index arrays.
    """
    labels, groups = np.asarray(labels), np.asarray(groups).astype(str)
    if groups.shape != labels.shape:
        raise ConfigError(f"specimen groups have shape {groups.shape}, labels {labels.shape}")
    classes, y, counts = np.unique(labels, return_inverse=True, return_counts=True)
    units, g = np.unique(groups, return_inverse=True)
    n_classes, n_units = classes.size, units.size
    size = np.bincount(g, minlength=n_units)
    pairs = np.unique(g.astype(np.int64) * n_classes + y)            # (specimen, class) present
    pair_unit, pair_class = pairs // n_classes, pairs % n_classes
    pure = np.bincount(pair_unit, minlength=n_units) == 1
    unit_class = np.zeros(n_units, dtype=int)
    unit_class[pair_unit] = pair_class                               # meaningful where pure
    train_units = np.bincount(pair_class, minlength=n_classes)       # specimens per class
    giving = (train_units >= 2) & (counts >= MIN_CLASS_FOR_VAL)
    target = int(round(fraction * labels.size))
    share = target * np.where(giving, counts, 0) / max(1, int(np.where(giving, counts, 0).sum()))
    jitter = rng.random(n_units) * 1e-6
    open_ = pure & giving[unit_class]
    train_spectra = counts.copy()
    given = np.zeros(n_classes)
    taken = np.zeros(n_units, dtype=bool)
    total = 0
    while True:
        c = unit_class
        ok = (open_ & ~taken & (train_units[c] >= 2) & (train_spectra[c] - size >= MIN_CLASS_FOR_TRAIN)
              & (np.abs(total + size - target) < abs(total - target)))
        if not ok.any():
            break
        # The specimen that leaves its class closest to its share (a deficit filled, not overshot).
        u = int(np.argmax(np.where(ok, share[c] - given[c] - size / 2 + jitter, -np.inf)))
        taken[u] = True
        total += int(size[u])
        given[c[u]] += size[u]
        train_spectra[c[u]] -= size[u]
        train_units[c[u]] -= 1
    val_idx = np.nonzero(taken[g])[0]
    train_idx = np.nonzero(~taken[g])[0]
    return train_idx, val_idx


def class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Balanced weights ``n / (K_present · count)``; 0 for a class absent from ``y``."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = counts > 0
    w = np.zeros(n_classes)
    w[present] = y.size / (present.sum() * counts[present])
    return w


@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits of preprocessed spectra ``x`` (N, P) in eval mode, as float32 numpy."""
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        out = [model(torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size], dtype=np.float32)).to(device))
               .cpu() for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def topk_accuracy(logits: np.ndarray, y: np.ndarray, k: int = 1) -> float:
    """Fraction of rows whose true class is among the ``k`` largest logits."""
    if len(y) == 0:
        return float("nan")
    k = min(k, logits.shape[1])
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return float((top == np.asarray(y)[:, None]).any(axis=1).mean())


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, np.ndarray]:
    logits = torch.from_numpy(predict_logits(model, x.numpy()))
    loss = float(nn.functional.cross_entropy(logits, y))
    return loss, float((logits.argmax(1) == y).float().mean()), logits.numpy()


def train(dataset: Dataset, config: TrainConfig | None = None, *,
          preprocessing: dict[str, Any] | None = None,
          on_epoch: Callable[[EpochLog], None] | None = None,
          init_model: nn.Module | None = None,
          validation_seed: int | None = None) -> TrainResult:
    """Train a model on a labelled dataset of raw spectra.

    Parameters
    ----------
    dataset : Dataset
        Raw spectra (any ascending Raman-shift axis the preprocessing can resample).
    config : TrainConfig, optional
        Options (default :class:`TrainConfig`; the shipped model's recipe is ``--shift-tolerance 5``,
        :mod:`trainer.tolerance`).
    preprocessing : dict, optional
        Preprocessing spec (default :data:`calibration.preprocess.DEFAULT_SPEC`).
    on_epoch : callable, optional
        Called with each :class:`EpochLog` (progress display).
    init_model : torch.nn.Module, optional
        Train this model (e.g. a pretrained backbone, :mod:`trainer.semi`) instead of a freshly
        built one; it must have ``len(dataset.classes)`` outputs.  It is trained in place.
    validation_seed : int, optional
        Seed of the validation split (default ``config.seed``): the members of a seed
        ensemble (``config.ensemble`` > 1, :mod:`trainer.ensemble`) share their ensemble's split.

    Returns
    -------
    TrainResult
        The model in eval mode with the best validation weights restored.

    Raises
    ------
    ConfigError
        Bad options or fewer than two classes.
    SpectrumError
        A spectrum the preprocessing cannot use (names the spectrum).
    """
    config = (config or TrainConfig()).check()
    if config.members > 1 and init_model is None:
        from .ensemble import train_ensemble

        return train_ensemble(dataset, config, preprocessing=preprocessing, on_epoch=on_epoch)
    t_start = time.perf_counter()
    pre = Preprocessor(preprocessing if preprocessing is not None else DEFAULT_SPEC)
    classes = dataset.classes
    if len(classes) < 2:
        raise ConfigError(f"{dataset.path or 'dataset'}: need at least 2 classes to train, found {classes}")
    threads = configure_torch(config.seed, config.threads)
    device = resolve_device(config.device)
    split_ss, aug_ss, shuffle_ss = np.random.SeedSequence(config.seed).spawn(3)
    if validation_seed is not None:
        split_ss = np.random.SeedSequence(validation_seed).spawn(3)[0]
    y_all = np.searchsorted(np.asarray(classes), dataset.labels)
    groups = specimen_groups(dataset)
    train_idx, val_idx = split_validation(dataset.labels, config.val_fraction, np.random.default_rng(split_ss),
                                          groups=groups)
    if config.val_fraction > 0 and val_idx.size == 0:
        log.warning("no class has %d or more spectra%s: training without validation or early stopping",
                    MIN_CLASS_FOR_VAL, " and two specimens" if groups is not None else "")
    where = [f"{dataset.path or 'dataset'}: spectrum {i} ({lab})" for i, lab in enumerate(dataset.labels)]
    raw_train = dataset.spectra[train_idx].astype(np.float64)
    where_train = [where[i] for i in train_idx]
    axis = dataset.wavenumbers
    # Fail early, naming the spectrum, if the preprocessing cannot use the data as it is.
    x_train_clean = pre.batch(raw_train, axis, where=where_train)
    x_val = torch.from_numpy(pre.batch(dataset.spectra[val_idx], axis, where=[where[i] for i in val_idx])) \
        if val_idx.size else None
    y_train = torch.from_numpy(y_all[train_idx])
    y_val = torch.from_numpy(y_all[val_idx]) if val_idx.size else None

    if init_model is not None:
        model = init_model
        if model.params.get("classes") != len(classes):
            raise ConfigError(f"init_model has {model.params.get('classes')} outputs for {len(classes)} classes")
    else:
        try:
            model = build_model({"points": pre.grid.size, "classes": len(classes), **config.arch_params()},
                                config.arch)
        except ValueError as e:  # options that only the builder can judge (e.g. an input too short for the stack)
            raise ConfigError(f"arch {config.arch}: {e}") from None
    log.info("training %s on %d spectra (%d validation), %d classes, %d parameters, %d threads, on %s",
             config.arch, train_idx.size, val_idx.size, len(classes), count_parameters(model), threads, device)
    model.to(device)
    y_train_dev = y_train.to(device)
    weights = torch.tensor(class_weights(y_all[train_idx], len(classes)), dtype=torch.float32, device=device)
    loss_fn = nn.CrossEntropyLoss(weight=weights)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5,
                                                       patience=max(1, config.patience // 4), min_lr=1e-6)
    augmenter = Augmenter(config.augment_config, np.random.default_rng(aug_ss))
    shuffle_rng = np.random.default_rng(shuffle_ss)

    history: list[EpochLog] = []
    best: tuple[float, float] | None = None
    best_state, best_epoch, stale = copy.deepcopy(model.state_dict()), 0, 0
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        if config.augment:
            x_np = pre.batch(augmenter(raw_train, axis), axis, where=where_train)
        else:
            x_np = x_train_clean
        x_train = torch.from_numpy(x_np).to(device)
        model.train()
        order = torch.from_numpy(shuffle_rng.permutation(train_idx.size)).to(device)
        total_loss, correct = 0.0, 0
        for i in range(0, order.numel(), config.batch_size):
            b = order[i:i + config.batch_size]
            opt.zero_grad(set_to_none=True)
            logits = model(x_train[b])
            # Models with auxiliary losses (the DRCNN's recursive supervision) combine them themselves.
            loss = (model.training_loss(logits, y_train_dev[b], loss_fn) if hasattr(model, "training_loss")
                    else loss_fn(logits, y_train_dev[b]))
            loss.backward()
            opt.step()
            total_loss += loss.item() * b.numel()
            correct += int((logits.argmax(1) == y_train_dev[b]).sum())
        train_loss, train_acc = total_loss / order.numel(), correct / order.numel()
        val_loss = val_acc = None
        if x_val is not None:
            val_loss, val_acc, _ = _evaluate(model, x_val, y_val)
            # Higher is better in both orders; the second entry breaks ties.
            score = (-val_loss, val_acc) if config.monitor == "loss" else (val_acc, -val_loss)
        else:
            score = (-train_loss, train_acc)
        sched.step(val_loss if val_loss is not None else train_loss)
        improved = best is None or score > best
        if improved:
            best, best_state, best_epoch, stale = score, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            stale += 1
        entry = EpochLog(epoch, train_loss, train_acc, val_loss, val_acc, opt.param_groups[0]["lr"],
                         time.perf_counter() - t0, improved)
        history.append(entry)
        if on_epoch is not None:
            on_epoch(entry)
        if x_val is not None and stale >= config.patience:
            log.info("early stop after epoch %d (best %d)", epoch, best_epoch)
            break
    model.load_state_dict(best_state)
    model.to("cpu")  # export, the CNN+KNN features and the callers' predictions run on the CPU
    model.eval()
    if config.shift_average is not None:
        # Everything below (metrics, temperature, export) scores the averaged model the bundle will hold.
        from .shift_average import ShiftAveragedNet

        model = ShiftAveragedNet(model, config.shift_average).eval()

    metrics: dict[str, Any] = {"best_epoch": best_epoch, "epochs_run": len(history),
                               "train_spectra": int(train_idx.size), "val_spectra": int(val_idx.size),
                               "grouping": grouping_summary(groups, val_idx)}
    tr_loss, tr_acc, _ = _evaluate(model, torch.from_numpy(x_train_clean), y_train)
    metrics.update(train_loss=tr_loss, train_top1=tr_acc)
    if x_val is not None:
        v_loss, v_acc, v_logits = _evaluate(model, x_val, y_val)
        metrics.update(val_loss=v_loss, val_top1=v_acc, val_top3=topk_accuracy(v_logits, y_val.numpy(), 3))
    temperature = fit_temperature(dataset, config, pre.spec, metrics,
                                  (v_logits, y_val.numpy()) if x_val is not None else None,
                                  crossfit=init_model is None)
    return TrainResult(model=model, classes=classes, config=config, preprocessing=pre.spec, history=history,
                       best_epoch=best_epoch, train_index=train_idx, val_index=val_idx, metrics=metrics,
                       seconds=time.perf_counter() - t_start, temperature=temperature)


def fit_temperature(dataset: Dataset, config: TrainConfig, preprocessing: dict[str, Any], metrics: dict[str, Any],
                    validation: tuple[np.ndarray, np.ndarray] | None, *, crossfit: bool = True) -> float:
    """The softmax temperature ``config`` asks for; its summary goes to ``metrics["calibration"]``.

    Cross-fitted (:func:`crossfit_temperature`) when ``config.calibrate_folds`` >= 2 and
    ``crossfit``; else fitted on ``validation`` = (logits, labels) of the early-stopping split;
    1.0 when not asked for or there is no validation split.
    """
    if config.calibrate and config.calibrate_folds >= 2 and crossfit:
        temperature, calib = crossfit_temperature(dataset, config, preprocessing=preprocessing)
        metrics["calibration"] = calib
        log.info("temperature %.3f: out-of-fold ECE(15) %.3f -> %.3f (%d-fold cross-fitting)", temperature,
                 calib["ece_before"], calib["ece_after"], config.calibrate_folds)
        return temperature
    if config.calibrate and validation is not None:
        # Temperature scaling on the same validation split early stopping used (trainer.temperature).
        temperature, calib = calibrate(*validation, objective=config.calibrate_objective)
        metrics["calibration"] = dict(calib, split="validation (the early-stopping split; T fitted there)")
        log.info("temperature %.3f: validation ECE(15) %.3f -> %.3f", temperature, calib["ece_before"],
                 calib["ece_after"])
        return temperature
    if config.calibrate:
        log.warning("no validation split: temperature left at 1.0 (not calibrated)")
    return 1.0


def crossfit_temperature(dataset: Dataset, config: TrainConfig, *,
                         preprocessing: dict[str, Any] | None = None) -> tuple[float, dict[str, Any]]:
    """Softmax temperature from out-of-fold logits (K-fold cross-fitting).

    ``config.calibrate_folds`` = K models of ``config``'s recipe are trained, each on K-1
    stratified folds (scikit-learn ``StratifiedKFold``, shuffled with ``config.seed``), and
    each scores the fold it did not see.  With specimen ids (:func:`specimen_groups`) the
    folds are grouped by specimen (``StratifiedGroupKFold``): a spectrum is scored only by
    a model that saw no spectrum of its specimen; the specimens of minerals with a single
    specimen train in every fold (no fold could score them honestly) and are left out.
    T is fitted on those out-of-fold logits: held-out
    evidence for a final model that trains on every spectrum.  A spectrum whose mineral is
    missing from its fold's training part (a mineral with a single spectrum) cannot be
    scored and is left out; a mineral a fold's model does not know gets a logit far below
    the others in that row.

    Returns
    -------
    (float, dict)
        T and :func:`trainer.temperature.calibrate`'s summary, plus ``split``, ``folds``,
        ``left_out`` (spectra that could not be scored) and ``grouping`` (:func:`grouping_summary`).
    """
    k = config.calibrate_folds
    if k < 2:
        raise ConfigError(f"calibrate_folds must be >= 2 for cross-fitting, got {k}")
    pre = Preprocessor(preprocessing if preprocessing is not None else DEFAULT_SPEC)
    classes = dataset.classes
    groups = specimen_groups(dataset)
    sub = dataclasses.replace(config, calibrate=False, calibrate_folds=0)
    splits, left_out = (crossfit_folds(dataset, k, config.seed) if groups is None
                        else grouped_crossfit_folds(dataset, groups, k, config.seed))
    rows: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for i, (tr, te) in enumerate(splits, 1):
        part = dataset.subset(tr)
        if len(part.classes) < 2:
            left_out += te.size
            continue
        log.info("cross-fitting the temperature: fold %d/%d (%d spectra, %d scored)", i, k, tr.size, te.size)
        result = train(part, sub, preprocessing=pre.spec)
        known = np.isin(dataset.labels[te], part.classes)
        left_out += int((~known).sum())
        te = te[known]
        if te.size == 0:
            continue
        where = [f"{dataset.path or 'dataset'}: spectrum {j} ({dataset.labels[j]})" for j in te]
        fold_logits = predict_logits(result.model, pre.batch(dataset.spectra[te], dataset.wavenumbers, where=where))
        # Minerals this fold's model never saw: a logit far below the row's others.
        full = np.tile(fold_logits.min(axis=1, keepdims=True).astype(np.float64) - 1e3, (1, len(classes)))
        full[:, np.searchsorted(np.asarray(classes), part.classes)] = fold_logits
        rows.append(full)
        ys.append(np.searchsorted(np.asarray(classes), dataset.labels[te]))
    if not rows:
        raise ConfigError(f"{dataset.path or 'dataset'}: no spectrum could be scored out of fold")
    temperature, calib = calibrate(np.concatenate(rows), np.concatenate(ys), objective=config.calibrate_objective)
    grouped = " grouped by specimen" if groups is not None else ""
    calib.update(split=f"{k}-fold cross-fitting{grouped} (out-of-fold logits of {k} models of the same recipe)",
                 folds=k, left_out=left_out, grouping=grouping_summary(groups))
    return temperature, calib


def crossfit_folds(dataset: Dataset, k: int, seed: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
    """Stratified ``k``-fold (train, scored) index pairs by spectrum, and how many spectra are left unscored (0)."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.unique(dataset.labels, return_counts=True)[1]
    if counts.max() < k:
        raise ConfigError(f"{dataset.path or 'dataset'}: {k}-fold cross-fitting needs a mineral with at least "
                          f"{k} spectra (the largest has {counts.max()})")
    folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed % 2**32)
    with warnings.catch_warnings():  # minerals with fewer than k spectra: sklearn warns, the folds stay valid
        warnings.simplefilter("ignore", UserWarning)
        return list(folds.split(np.zeros(len(dataset.labels)), dataset.labels)), 0


def grouped_crossfit_folds(dataset: Dataset, groups: np.ndarray, k: int,
                           seed: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
    """``k`` (train, scored) index pairs with no specimen on both sides (``StratifiedGroupKFold``).

    Specimens holding a mineral that has no other specimen train in every fold and are
    never scored; their spectra are the second value returned.

    Raises
    ------
    ConfigError
        Fewer than ``k`` specimens of minerals with two or more.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    labels = dataset.labels
    _, y = np.unique(labels, return_inverse=True)
    units, g = np.unique(groups, return_inverse=True)
    pairs = np.unique(g.astype(np.int64) * (y.max() + 1) + y)
    pair_unit, pair_class = pairs // (y.max() + 1), pairs % (y.max() + 1)
    lone_class = np.bincount(pair_class) < 2
    # A specimen goes wholly to training when any of its minerals has no other specimen.
    lone_unit = np.zeros(units.size, dtype=bool)
    lone_unit[pair_unit[lone_class[pair_class]]] = True
    always = np.nonzero(lone_unit[g])[0]
    eligible = np.nonzero(~lone_unit[g])[0]
    n_units = np.unique(g[eligible]).size
    if n_units < k:
        raise ConfigError(f"{dataset.path or 'dataset'}: {k}-fold cross-fitting grouped by specimen needs at least "
                          f"{k} specimens of minerals with two or more; found {n_units}")
    folds = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed % 2**32)
    with warnings.catch_warnings():  # minerals with fewer than k specimens: sklearn warns, the folds stay valid
        warnings.simplefilter("ignore", UserWarning)
        parts = list(folds.split(np.zeros(eligible.size), labels[eligible], g[eligible]))
    return [(np.sort(np.concatenate([eligible[tr], always])), eligible[te]) for tr, te in parts], int(always.size)


def preprocess_dataset(dataset: Dataset, preprocessing: dict[str, Any] | None = None) -> np.ndarray:
    """Preprocessed ``(n, grid)`` float32 spectra of a dataset (no augmentation)."""
    pre = Preprocessor(preprocessing if preprocessing is not None else DEFAULT_SPEC)
    where = [f"{dataset.path or 'dataset'}: spectrum {i}" for i in range(len(dataset))]
    return pre.batch(dataset.spectra, dataset.wavenumbers, where=where)


__all__ = ["TrainConfig", "TrainResult", "EpochLog", "train", "fit_temperature", "crossfit_temperature",
           "crossfit_folds", "grouped_crossfit_folds", "specimen_groups", "grouping_summary", "split_by_specimen",
           "split_validation", "class_weights", "predict_logits", "topk_accuracy", "configure_torch", "preprocess_dataset"]
