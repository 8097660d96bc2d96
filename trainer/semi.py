"""Semi-supervised training: SGAN and contrastive (SimCLR) pretraining on unlabelled spectra.

Both methods learn from raw spectra without labels (an "unlabelled pool") beside
the labelled ones, and both end in an ordinary classifier (backbone + one-Linear
head, any registered ``--arch``), exported through :func:`trainer.export.save_bundle`
like a supervised model: the daemon cannot tell the difference.

SGAN (Odena 2016; Salimans et al. 2016)
---------------------------------------
The discriminator *is* the classifier.  We use Salimans et al.'s K-logit form
of the K+1-class discriminator: the "fake" class has a fixed logit 0, so with
``Z = sum_k exp(l_k)`` the probability of "real" is ``D(x) = Z / (Z + 1) =
sigmoid(logsumexp(l))``.  This is exactly a K+1-class softmax whose last logit is
pinned at 0, so the K class logits *are* the exported head, unchanged.
Losses (per step; labelled, unlabelled and generated batches):

* supervised: class-weighted cross-entropy on the labelled batch (as supervised training);
* unsupervised: ``softplus(-lse(real)) + softplus(lse(fake))`` (= ``-log D(x) - log(1 - D(G(z)))``),
  weighted by ``unsup_weight``; the "real" batch comes from the pool of labelled
  *and* unlabelled spectra (labels unused);
* generator: feature matching (Salimans et al.) — squared distance between the mean
  backbone features of a real and a generated batch — or, with
  ``feature_matching=false``, the non-saturating loss ``softplus(-lse(fake))``.

The generator maps a 128-d latent through a linear layer to 64 channels x L/16
positions and four stride-2 transposed 1-D convolutions (batch-norm, ReLU) to a
spectrum on the preprocessing grid; its output is ``softplus`` then divided by
its maximum, i.e. non-negative and max-normalised like a preprocessed real one.

Contrastive (SimCLR, Chen et al. 2020)
--------------------------------------
1. Pretraining: every spectrum of the pool (unlabelled and labelled, labels
   unused) gives two views, each drawn by :class:`trainer.augment.Augmenter` on the
   *raw* spectrum (shift, scale, baseline, fluorescence tanh/cos scaled by the mean,
   down-sampling, noise; ``SemiConfig.view_aug``) and then run through the shared
   preprocessing, exactly as supervised training does.  Encoder = the backbone,
   projection = MLP (F -> F -> ``projection``), loss = NT-Xent at temperature
   ``nt_xent_temperature``.
2. Linear head on the frozen encoder (eval mode), trained on augmented labelled
   spectra (``head_epochs``), best epoch by validation loss.
3. Optional fine-tuning (``finetune=true``, default) of the whole network from
   there (LP-FT) with :func:`trainer.train.train` at ``finetune_lr``.

Every run uses the same validation split and seeds as :func:`trainer.train.train`
and is deterministic for a seed and thread count.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from calibration.dataset import Dataset, file_sha256, read_npz
from calibration.errors import ConfigError, ReaderError
from calibration.preprocess import DEFAULT_SPEC, Preprocessor

from .augment import Augmenter, BackgroundBank
from .config import SEMI_METHODS, TrainConfig
from .models import build_model
from .temperature import calibrate
from .train import (EpochLog, TrainResult, class_weights, configure_torch, predict_logits, specimen_groups,
                    split_validation, topk_accuracy, train)

log = logging.getLogger(__name__)

#: The unlabelled spectra must cover at least this fraction of the labelled data's axis range.
MIN_AXIS_OVERLAP = 0.5


@dataclass(frozen=True)
class UnlabeledSet:
    """Raw spectra without labels (the ``--unlabeled`` file).

    ``labels`` in the file, if any, are ignored and not kept.
    """

    spectra: np.ndarray      # float (n, points)
    wavenumbers: np.ndarray  # float64 (points,)
    path: Path | None = None

    def __len__(self) -> int:
        return int(self.spectra.shape[0])

    def provenance(self) -> dict[str, Any]:
        return {"path": str(self.path) if self.path else None,
                "sha256": file_sha256(self.path) if self.path else None, "spectra": len(self)}


def load_unlabeled(path: str | Path, reference_axis: np.ndarray | None = None) -> UnlabeledSet:
    """Load an ``.npz`` of raw spectra (``spectra``, ``wavenumbers``; ``labels`` optional and ignored).

    Parameters
    ----------
    path : path
    reference_axis : numpy.ndarray, optional
        The labelled data's axis: the unlabelled axis must cover at least
        :data:`MIN_AXIS_OVERLAP` of its range (spectra zero-filled over most of the
        grid would be another domain, not more of the same data).

    Raises
    ------
    ReaderError
        Missing file or keys, shapes that do not match, NaN/inf, or an axis that
        does not match the labelled data's (names the file).
    """
    path = Path(path)
    arrays = read_npz(path, ("spectra", "wavenumbers"), where=f"--unlabeled {path}")
    spectra, wn = arrays["spectra"], arrays["wavenumbers"]
    if spectra.ndim != 2 or not np.issubdtype(spectra.dtype, np.number) or spectra.shape[0] == 0:
        raise ReaderError(f"--unlabeled {path}: 'spectra' must be a non-empty 2-D numeric array, "
                          f"got {spectra.dtype} {spectra.shape}")
    if wn.ndim != 1 or wn.size != spectra.shape[1]:
        raise ReaderError(f"--unlabeled {path}: axis mismatch: 'wavenumbers' has shape {wn.shape}, "
                          f"'spectra' has {spectra.shape[1]} points per spectrum")
    wn = wn.astype(np.float64)
    if not np.all(np.isfinite(wn)) or not np.all(np.diff(wn) > 0):
        raise ReaderError(f"--unlabeled {path}: 'wavenumbers' must be finite and strictly increasing")
    bad = ~np.isfinite(spectra).all(axis=1)
    if bad.any():
        raise ReaderError(f"--unlabeled {path}: {int(bad.sum())} spectra contain NaN or inf "
                          f"(first: row {int(np.argmax(bad))})")
    if reference_axis is not None:
        lo, hi = float(reference_axis[0]), float(reference_axis[-1])
        overlap = max(0.0, min(hi, wn[-1]) - max(lo, wn[0]))
        if overlap < MIN_AXIS_OVERLAP * (hi - lo):
            raise ReaderError(f"--unlabeled {path}: axis mismatch: its spectra cover {wn[0]:.0f}-{wn[-1]:.0f} "
                              f"cm-1, which overlaps only {overlap:.0f} cm-1 of the labelled data's "
                              f"{lo:.0f}-{hi:.0f} cm-1 (need {MIN_AXIS_OVERLAP:.0%})")
    return UnlabeledSet(spectra.astype(np.float32), wn, path)


# ----------------------------------------------------------------------------------------------- losses
def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent (SimCLR) loss of two batches of projections, views of the same ``N`` spectra.

    Each of the ``2N`` embeddings (L2-normalised) must pick its partner among the
    ``2N - 1`` others by cosine similarity / ``temperature``; the loss is the mean
    cross-entropy over all ``2N`` anchors.
    """
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def sgan_unsupervised_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """``-log D(x) - log(1 - D(G(z)))`` with ``D = sigmoid(logsumexp(logits))`` (Salimans et al.)."""
    return (F.softplus(-torch.logsumexp(real_logits, 1)).mean()
            + F.softplus(torch.logsumexp(fake_logits, 1)).mean())


# ----------------------------------------------------------------------------------------------- modules
class Generator(nn.Module):
    """Latent ``(N, latent)`` -> spectrum ``(N, points)``: non-negative, maximum 1.

    Linear to 64 channels x ceil(points / 16), four stride-2 transposed convolutions
    (64 -> 32 -> 16 -> 8 -> 1 channels, kernel 4) with batch-norm and ReLU between,
    cropped to ``points``; softplus, then divided by each spectrum's maximum.
    """

    def __init__(self, points: int, latent: int = 128, channels: tuple[int, ...] = (64, 32, 16, 8)) -> None:
        super().__init__()
        self.points, self.latent = int(points), int(latent)
        self.start = -(-self.points // 2 ** len(channels))
        self.fc = nn.Sequential(nn.Linear(latent, channels[0] * self.start), nn.BatchNorm1d(channels[0] * self.start),
                                nn.ReLU())
        layers: list[nn.Module] = []
        for cin, cout in zip(channels, channels[1:] + (1,)):
            layers.append(nn.ConvTranspose1d(cin, cout, 4, stride=2, padding=1))
            if cout != 1:
                layers += [nn.BatchNorm1d(cout), nn.ReLU()]
        self.deconv = nn.Sequential(*layers)
        self.channels = channels

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(z.shape[0], self.channels[0], self.start)
        y = F.softplus(self.deconv(h)[:, 0, :self.points])
        return y / y.amax(dim=1, keepdim=True).clamp_min(1e-6)


class Projection(nn.Module):
    """SimCLR projection head: ``Linear(F, F) -> ReLU -> Linear(F, out)``."""

    def __init__(self, features: int, out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, features), nn.ReLU(), nn.Linear(features, out))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


# ----------------------------------------------------------------------------------------------- helpers
@dataclass
class _Data:
    """Labelled data split as :func:`trainer.train.train` splits it, preprocessed where fixed."""

    classes: list[str]
    y_all: np.ndarray
    train_idx: np.ndarray
    val_idx: np.ndarray
    raw_train: np.ndarray
    axis: np.ndarray
    x_train_clean: np.ndarray
    x_val: np.ndarray | None
    where_train: list[str]


def _split(dataset: Dataset, config: TrainConfig, pre: Preprocessor) -> _Data:
    classes = dataset.classes
    if len(classes) < 2:
        raise ConfigError(f"{dataset.path or 'dataset'}: need at least 2 classes to train, found {classes}")
    split_ss = np.random.SeedSequence(config.seed).spawn(3)[0]  # the stream train() splits with
    # Grouped by RRUFF specimen when the data names specimens, as in train().
    train_idx, val_idx = split_validation(dataset.labels, config.val_fraction, np.random.default_rng(split_ss),
                                          groups=specimen_groups(dataset))
    where = [f"{dataset.path or 'dataset'}: spectrum {i} ({lab})" for i, lab in enumerate(dataset.labels)]
    raw = dataset.spectra[train_idx].astype(np.float64)
    where_train = [where[i] for i in train_idx]
    x_val = pre.batch(dataset.spectra[val_idx], dataset.wavenumbers, where=[where[i] for i in val_idx]) \
        if val_idx.size else None
    return _Data(classes, np.searchsorted(np.asarray(classes), dataset.labels), train_idx, val_idx, raw,
                 dataset.wavenumbers, pre.batch(raw, dataset.wavenumbers, where=where_train), x_val, where_train)


def _pool(parts: list[tuple[np.ndarray, np.ndarray]], pre: Preprocessor) -> list[tuple[np.ndarray, np.ndarray]]:
    """Check that every raw pool part preprocesses (fail early, naming the spectrum)."""
    for i, (spectra, axis) in enumerate(parts):
        pre.batch(spectra[:1], axis, where=[f"unlabelled part {i}: spectrum 0"])
    return parts


def _augmented(parts: list[tuple[np.ndarray, np.ndarray]], augmenter: Augmenter | None,
               pre: Preprocessor) -> np.ndarray:
    """Augment each raw part on its own axis (when ``augmenter``), preprocess, concatenate."""
    out = []
    for spectra, axis in parts:
        raw = spectra.astype(np.float64)
        out.append(pre.batch(augmenter(raw, axis) if augmenter is not None else raw, axis))
    return np.concatenate(out) if out else np.zeros((0, pre.grid.size), np.float32)


def _finish(model: nn.Module, data: _Data, config: TrainConfig, pre: Preprocessor, history: list[EpochLog],
            best_epoch: int, t_start: float, extra: dict[str, Any]) -> TrainResult:
    """Metrics, temperature and the :class:`TrainResult` of a model trained here (as train() reports them)."""
    model.eval()
    y_train = data.y_all[data.train_idx]
    tr = predict_logits(model, data.x_train_clean)
    metrics: dict[str, Any] = {"best_epoch": best_epoch, "epochs_run": len(history),
                               "train_spectra": int(data.train_idx.size), "val_spectra": int(data.val_idx.size),
                               "train_loss": float(F.cross_entropy(torch.from_numpy(tr), torch.from_numpy(y_train))),
                               "train_top1": topk_accuracy(tr, y_train)}
    temperature = 1.0
    if data.x_val is not None:
        y_val = data.y_all[data.val_idx]
        v = predict_logits(model, data.x_val)
        metrics.update(val_loss=float(F.cross_entropy(torch.from_numpy(v), torch.from_numpy(y_val))),
                       val_top1=topk_accuracy(v, y_val), val_top3=topk_accuracy(v, y_val, 3))
        if config.calibrate:
            temperature, calib = calibrate(v, y_val, objective=config.calibrate_objective)
            metrics["calibration"] = dict(calib, split="validation (the early-stopping split; T fitted there)")
    metrics["semi"] = extra
    return TrainResult(model=model, classes=data.classes, config=config, preprocessing=pre.spec, history=history,
                       best_epoch=best_epoch, train_index=data.train_idx, val_index=data.val_idx, metrics=metrics,
                       seconds=time.perf_counter() - t_start, temperature=temperature)


def _val_loss(model: nn.Module, data: _Data) -> tuple[float | None, float | None]:
    if data.x_val is None:
        return None, None
    v = predict_logits(model, data.x_val)
    y = data.y_all[data.val_idx]
    return float(F.cross_entropy(torch.from_numpy(v), torch.from_numpy(y))), topk_accuracy(v, y)


def _build(config: TrainConfig, points: int, classes: int) -> nn.Module:
    try:
        return build_model({"points": points, "classes": classes, **config.arch_params()}, config.arch)
    except ValueError as e:
        raise ConfigError(f"arch {config.arch}: {e}") from None


def _pool_parts(dataset: Dataset,
                unlabeled: UnlabeledSet | list[UnlabeledSet] | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """The pool: the labelled spectra (labels unused) and every unlabelled set, each on its own axis."""
    sets = [] if unlabeled is None else [unlabeled] if isinstance(unlabeled, UnlabeledSet) else list(unlabeled)
    parts = [(dataset.spectra, dataset.wavenumbers)]
    parts += [(u.spectra, u.wavenumbers) for u in sets if len(u)]
    return parts


def _semi_record(method: str, dataset: Dataset, unlabeled: UnlabeledSet | list[UnlabeledSet] | None,
                 pool: int, **more: Any) -> dict[str, Any]:
    sets = [] if unlabeled is None else [unlabeled] if isinstance(unlabeled, UnlabeledSet) else list(unlabeled)
    return {"method": method, "unlabeled": [u.provenance() for u in sets], "labelled_spectra": len(dataset),
            "unlabeled_spectra": int(sum(len(u) for u in sets)), "pool_spectra": int(pool), **more}


# ----------------------------------------------------------------------------------------------- SGAN
def train_sgan(dataset: Dataset, unlabeled: UnlabeledSet | list[UnlabeledSet] | None,
               config: TrainConfig | None = None, *, preprocessing: dict[str, Any] | None = None,
               on_epoch: Callable[[EpochLog], None] | None = None) -> TrainResult:
    """Train a classifier as the discriminator of a semi-supervised GAN.

    Parameters
    ----------
    dataset : Dataset
        Labelled raw spectra.
    unlabeled : UnlabeledSet or list of them or None
        Raw spectra without labels; with the labelled ones (labels unused) they form the
        "real" pool of the unsupervised loss.
    config : TrainConfig, optional
        ``epochs`` (one epoch = one pass over the pool, labelled + unlabelled), ``lr`` (discriminator),
        ``patience`` (early stopping on the validation loss), ``batch_size``,
        augmentation and ``semi_config`` (latent, unsup_weight, feature_matching, gen_lr).

    Returns
    -------
    TrainResult
        The discriminator's K-class part (a normal model; best validation weights).
    """
    config = (config or TrainConfig(semi="sgan")).check()
    sc = config.semi_config
    t_start = time.perf_counter()
    pre = Preprocessor(preprocessing if preprocessing is not None else DEFAULT_SPEC)
    data = _split(dataset, config, pre)
    threads = configure_torch(config.seed, config.threads)
    _, aug_ss, shuffle_ss = np.random.SeedSequence(config.seed).spawn(3)
    aug_ss, pool_aug_ss = aug_ss.spawn(2)
    parts = _pool(_pool_parts(dataset, unlabeled), pre)
    n_pool = sum(len(s) for s, _ in parts)
    model = _build(config, pre.grid.size, len(data.classes))
    gen = Generator(pre.grid.size, sc.latent)
    y_train = torch.from_numpy(data.y_all[data.train_idx])
    weights = torch.tensor(class_weights(data.y_all[data.train_idx], len(data.classes)), dtype=torch.float32)
    # No ReduceLROnPlateau as in supervised training: the supervised loss rises during the GAN's first
    # epochs, the halvings came before anything was learnt (40 % labels: 0.46 top-1). SGAN learns its
    # classifier late, so it wants the default 300 epochs (docs/semi_supervised.md, "Budget").
    opt_d = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(gen.parameters(), lr=sc.gen_lr, betas=(0.5, 0.999))
    augment = Augmenter(config.augment_config, np.random.default_rng(aug_ss)) if config.augment else None
    pool_augment = Augmenter(config.augment_config, np.random.default_rng(pool_aug_ss)) if config.augment else None
    rng = np.random.default_rng(shuffle_ss)
    log.info("SGAN: %d labelled (%d validation), pool %d, %d classes, %d threads", data.train_idx.size,
             data.val_idx.size, n_pool, len(data.classes), threads)
    bs = config.batch_size
    history: list[EpochLog] = []
    best, best_state, best_epoch, stale = None, copy.deepcopy(model.state_dict()), 0, 0
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        x_lab = torch.from_numpy(pre.batch(augment(data.raw_train, data.axis), data.axis, where=data.where_train)
                                 if augment is not None else data.x_train_clean)
        x_pool = torch.from_numpy(_augmented(parts, pool_augment, pre))
        # One epoch = one pass over the pool (labelled + unlabelled, so at least one over the labelled
        # spectra: an SGAN epoch never has fewer steps than a supervised one); labelled batches cycle.
        # (One pass over the labelled spectra alone gave 3 steps an epoch at 10 % labels, and early
        # stopping on the 3-spectrum validation split then ended the GAN before it had learnt anything.)
        pool_order = rng.permutation(n_pool)
        steps = max(1, -(-n_pool // bs))
        lab_order = np.concatenate([rng.permutation(len(x_lab)) for _ in range(-(-steps * bs // len(x_lab)))])
        model.train()
        gen.train()
        total, correct, seen = 0.0, 0, 0
        for s in range(steps):
            lb = torch.from_numpy(lab_order[s * bs:(s + 1) * bs])
            ub = torch.from_numpy(pool_order[s * bs:(s + 1) * bs])
            z = torch.randn(len(ub) if len(ub) > 1 else 2, sc.latent)
            fake = gen(z)
            # Discriminator: supervised CE + unsupervised real/fake.
            opt_d.zero_grad(set_to_none=True)
            logits = model(x_lab[lb])
            sup = F.cross_entropy(logits, y_train[lb], weight=weights)
            unsup = sgan_unsupervised_loss(model(x_pool[ub]), model(fake.detach()))
            (sup + sc.unsup_weight * unsup).backward()
            opt_d.step()
            # Generator.
            opt_g.zero_grad(set_to_none=True)
            if sc.feature_matching:
                with torch.no_grad():
                    real_f = model.backbone(x_pool[ub]).mean(0)
                g_loss = ((model.backbone(fake).mean(0) - real_f) ** 2).mean()
            else:
                g_loss = F.softplus(-torch.logsumexp(model(fake), 1)).mean()
            g_loss.backward()
            opt_g.step()
            total += sup.item() * len(lb)
            correct += int((logits.argmax(1) == y_train[lb]).sum())
            seen += len(lb)
        val_loss, val_acc = _val_loss(model, data)
        score = (-val_loss, val_acc) if val_loss is not None else (-total / seen, correct / seen)
        if config.monitor == "accuracy" and val_loss is not None:
            score = (val_acc, -val_loss)
        improved = best is None or score > best
        if improved:
            best, best_state, best_epoch, stale = score, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            stale += 1
        entry = EpochLog(epoch, total / seen, correct / seen, val_loss, val_acc, opt_d.param_groups[0]["lr"],
                         time.perf_counter() - t0, improved)
        history.append(entry)
        if on_epoch is not None:
            on_epoch(entry)
        if val_loss is not None and stale >= config.patience:
            log.info("SGAN: early stop after epoch %d (best %d)", epoch, best_epoch)
            break
    model.load_state_dict(best_state)
    record = _semi_record("sgan", dataset, unlabeled, n_pool, discriminator="K-logit (Salimans): "
                          "D(real) = sigmoid(logsumexp(logits)); exported head = the K class logits",
                          generator_parameters=int(sum(p.numel() for p in gen.parameters())))
    return _finish(model, data, config, pre, history, best_epoch, t_start, record)


# ----------------------------------------------------------------------------------------------- contrastive
@dataclass
class Pretrained:
    """A contrastively pretrained encoder: the backbone's weights and how they were obtained."""

    backbone_state: dict[str, torch.Tensor]
    history: list[float]
    seconds: float
    pool_spectra: int
    config: dict[str, Any]


def pretrain_contrastive(parts: list[tuple[np.ndarray, np.ndarray]], config: TrainConfig, *,
                         preprocessing: dict[str, Any] | None = None, classes: int = 2) -> Pretrained:
    """SimCLR pretraining of ``config``'s backbone on raw spectra (no labels).

    Parameters
    ----------
    parts : list of (spectra, axis)
        Raw spectra, each part on its own ascending axis (e.g. labelled and unlabelled files).
    config : TrainConfig
        Architecture, seed, threads and ``semi_config`` (pretrain_epochs, pretrain_batch,
        pretrain_lr, nt_xent_temperature, projection, view_aug).
    classes : int
        Head size of the throw-away model the backbone is built in (the head is not trained).

    Returns
    -------
    Pretrained
        Backbone weights (load them into any model of the same architecture) and the loss per epoch.
    """
    config = config.check()
    sc = config.semi_config
    t0 = time.perf_counter()
    pre = Preprocessor(preprocessing if preprocessing is not None else DEFAULT_SPEC)
    configure_torch(config.seed, config.threads)
    view_ss, order_ss = np.random.SeedSequence([config.seed, 0x51C1]).spawn(2)
    parts = _pool(parts, pre)
    n = sum(len(s) for s, _ in parts)
    if n < 2:
        raise ConfigError(f"contrastive pretraining needs at least 2 spectra, got {n}")
    model = _build(config, pre.grid.size, max(2, classes))
    proj = Projection(model.feature_size, sc.projection)
    opt = torch.optim.Adam(list(model.backbone.parameters()) + list(proj.parameters()), lr=sc.pretrain_lr)
    view_config = config.augment_config.replace(**sc.view_aug)
    # Every raw spectrum of the pool donates its background to every other (any part, any axis).
    donors = (BackgroundBank.merge([BackgroundBank.from_spectra(s, ax) for s, ax in parts])
              if view_config.p_background_swap > 0 else None)
    views = Augmenter(view_config, np.random.default_rng(view_ss), donors=donors)
    rng = np.random.default_rng(order_ss)
    bs = min(sc.pretrain_batch, n)
    losses: list[float] = []
    model.train()
    for epoch in range(1, sc.pretrain_epochs + 1):
        v1 = torch.from_numpy(_augmented(parts, views, pre))
        v2 = torch.from_numpy(_augmented(parts, views, pre))
        order = torch.from_numpy(rng.permutation(n))
        total, count = 0.0, 0
        for i in range(0, n, bs):
            b = order[i:i + bs]
            if b.numel() < 2:  # NT-Xent needs a negative
                continue
            opt.zero_grad(set_to_none=True)
            loss = nt_xent(proj(model.backbone(v1[b])), proj(model.backbone(v2[b])), sc.nt_xent_temperature)
            loss.backward()
            opt.step()
            total += loss.item() * b.numel()
            count += b.numel()
        losses.append(total / max(count, 1))
        if epoch == 1 or epoch % 25 == 0 or epoch == sc.pretrain_epochs:
            log.info("contrastive epoch %d/%d: NT-Xent %.4f", epoch, sc.pretrain_epochs, losses[-1])
    return Pretrained(copy.deepcopy(model.backbone.state_dict()), losses, time.perf_counter() - t0, n,
                      {"arch": config.arch, **config.arch_params(), "seed": config.seed})


def imprint_head(model: nn.Module, data: _Data) -> None:
    """Set the linear head to the nearest-class-mean classifier of the frozen features.

    With μ_k the mean feature of class k over the clean labelled spectra,
    ``logit_k = s (μ_k·f − |μ_k|²/2) = −s/2 |f − μ_k|² + const(f)``: the head starts as the
    Euclidean nearest-prototype rule, which is what one or two labelled spectra per class
    support best (Snell et al. 2017; Qi et al. 2018), and cross-entropy refines it from there.
    ``s`` makes the typical distance between prototypes a logit gap of about 10.
    Classes without a training spectrum keep their random rows.
    """
    with torch.no_grad():
        feats = model.backbone(torch.from_numpy(data.x_train_clean)).double()
        y = torch.from_numpy(data.y_all[data.train_idx])
        k = len(data.classes)
        present = torch.zeros(k, dtype=torch.bool)
        present[y] = True
        mu = torch.zeros(k, feats.shape[1], dtype=torch.float64).index_add_(0, y, feats)
        mu[present] /= torch.bincount(y, minlength=k)[present].unsqueeze(1).double()
        m = mu[present]
        d2 = torch.cdist(m, m).pow(2)
        spread = float(d2.sum() / max(m.shape[0] * (m.shape[0] - 1), 1))
        s = 20.0 / spread if spread > 0 else 1.0
        # Written about the mean prototype c, which drops a class-independent term:
        # μ·f − |μ|²/2 = (μ−c)·f − (μ−c)·c − |μ−c|²/2 + (c·f − |c|²/2). Features far from the
        # origin would otherwise give huge logits that cancel (float32 export checks them).
        c = m.mean(0)
        d = m - c
        lin = model.head.linear
        lin.weight[present] = (s * d).to(lin.weight.dtype)
        lin.bias[present] = (-s * (d @ c + 0.5 * (d * d).sum(1))).to(lin.bias.dtype)


def train_linear_head(model: nn.Module, data: _Data, config: TrainConfig, pre: Preprocessor,
                      epochs: int) -> tuple[list[EpochLog], int]:
    """Train ``model.head`` on the frozen backbone (eval mode) with augmented labelled spectra.

    Adam at 3x ``config.lr``: a single linear layer on fixed features tolerates (and needs, in
    ``head_epochs``) a larger step than the whole network.

    Returns the history and the best epoch (validation loss; training loss without a validation split);
    the best head weights are restored.
    """
    aug_ss = np.random.SeedSequence([config.seed, 0x4EAD]).spawn(2)
    augment = Augmenter(config.augment_config, np.random.default_rng(aug_ss[0])) if config.augment else None
    rng = np.random.default_rng(aug_ss[1])
    y = torch.from_numpy(data.y_all[data.train_idx])
    weights = torch.tensor(class_weights(data.y_all[data.train_idx], len(data.classes)), dtype=torch.float32)
    opt = torch.optim.Adam(model.head.parameters(), lr=config.lr * 3)
    model.eval()  # frozen encoder: no dropout, no batch-norm updates
    if config.semi_config.head_init == "prototypes":
        imprint_head(model, data)
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    history: list[EpochLog] = []
    best, best_state, best_epoch = None, copy.deepcopy(model.head.state_dict()), 0
    try:
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            x = (pre.batch(augment(data.raw_train, data.axis), data.axis, where=data.where_train)
                 if augment is not None else data.x_train_clean)
            with torch.no_grad():
                feats = model.backbone(torch.from_numpy(x))
            order = torch.from_numpy(rng.permutation(len(y)))
            total, correct = 0.0, 0
            for i in range(0, len(y), config.batch_size):
                b = order[i:i + config.batch_size]
                opt.zero_grad(set_to_none=True)
                logits = model.head(feats[b])
                loss = F.cross_entropy(logits, y[b], weight=weights)
                loss.backward()
                opt.step()
                total += loss.item() * len(b)
                correct += int((logits.argmax(1) == y[b]).sum())
            val_loss, val_acc = _val_loss(model, data)
            score = -(val_loss if val_loss is not None else total / len(y))
            improved = best is None or score > best
            if improved:
                best, best_state, best_epoch = score, copy.deepcopy(model.head.state_dict()), epoch
            history.append(EpochLog(epoch, total / len(y), correct / len(y), val_loss, val_acc,
                                    opt.param_groups[0]["lr"], time.perf_counter() - t0, improved))
    finally:
        for p in model.backbone.parameters():
            p.requires_grad_(True)
    model.head.load_state_dict(best_state)
    return history, best_epoch


def train_contrastive(dataset: Dataset, unlabeled: UnlabeledSet | list[UnlabeledSet] | None,
                      config: TrainConfig | None = None, *, preprocessing: dict[str, Any] | None = None,
                      on_epoch: Callable[[EpochLog], None] | None = None,
                      pretrained: Pretrained | None = None) -> TrainResult:
    """Contrastive pretraining on labelled + unlabelled spectra, a head on the frozen encoder, optional fine-tuning.

    Parameters
    ----------
    dataset : Dataset
        Labelled raw spectra.
    unlabeled : UnlabeledSet or list of them or None
        Raw spectra without labels (pretraining only).
    config : TrainConfig, optional
        ``semi_config`` drives pretraining, the head and fine-tuning; ``epochs``,
        ``patience`` and ``batch_size`` drive fine-tuning.
    pretrained : Pretrained, optional
        Reuse an encoder from :func:`pretrain_contrastive` (pretraining needs no labels, so a
        benchmark pretrains once and trains heads for several label fractions).

    Returns
    -------
    TrainResult
        A normal classifier; ``metrics["semi"]`` records the method and the data it saw.
    """
    config = (config or TrainConfig(semi="contrastive")).check()
    sc = config.semi_config
    t_start = time.perf_counter()
    pre = Preprocessor(preprocessing if preprocessing is not None else DEFAULT_SPEC)
    data = _split(dataset, config, pre)
    if pretrained is None:
        parts = _pool_parts(dataset, unlabeled)
        pretrained = pretrain_contrastive(parts, config, preprocessing=pre.spec, classes=len(data.classes))
    configure_torch(config.seed, config.threads)
    model = _build(config, pre.grid.size, len(data.classes))
    model.backbone.load_state_dict(pretrained.backbone_state)
    history, best_epoch = train_linear_head(model, data, config, pre, sc.head_epochs)
    probe_val = _val_loss(model, data)
    record = _semi_record("contrastive", dataset, unlabeled, pretrained.pool_spectra,
                          pretrain={"epochs": len(pretrained.history), "seconds": round(pretrained.seconds, 1),
                                    "nt_xent_first": pretrained.history[0] if pretrained.history else None,
                                    "nt_xent_last": pretrained.history[-1] if pretrained.history else None},
                          linear_head={"epochs": len(history), "best_epoch": best_epoch,
                                       "val_loss": probe_val[0], "val_top1": probe_val[1]},
                          finetune=sc.finetune)
    if not sc.finetune:
        return _finish(model, data, config, pre, history, best_epoch, t_start, record)
    ft_config = dataclasses.replace(config, lr=sc.finetune_lr)
    result = train(dataset, ft_config, preprocessing=pre.spec, on_epoch=on_epoch, init_model=model)
    result.config = config
    result.metrics["semi"] = record
    result.seconds = time.perf_counter() - t_start
    return result


def train_semi(dataset: Dataset, unlabeled: UnlabeledSet | list[UnlabeledSet] | None,
               config: TrainConfig, *, preprocessing: dict[str, Any] | None = None,
               on_epoch: Callable[[EpochLog], None] | None = None) -> TrainResult:
    """Dispatch on ``config.semi`` (``"sgan"`` or ``"contrastive"``)."""
    if config.semi not in SEMI_METHODS:
        raise ConfigError(f"semi must be one of {list(SEMI_METHODS)}, got {config.semi!r}")
    fit = train_sgan if config.semi == "sgan" else train_contrastive
    return fit(dataset, unlabeled, config, preprocessing=preprocessing, on_epoch=on_epoch)


__all__ = ["UnlabeledSet", "load_unlabeled", "nt_xent", "sgan_unsupervised_loss", "Generator", "Projection",
           "Pretrained", "pretrain_contrastive", "train_sgan", "train_contrastive", "train_semi"]
