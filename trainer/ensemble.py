"""Seed ensembles folded into one backbone and one linear head (``raman-edge train --ensemble N``).

``N`` models of one recipe, differing only in their seed (member ``j`` is trained
exactly as ``--seed S+j`` alone would be), are combined so that the bundle format
does not change:

* **backbone**: the members' backbones side by side, their features concatenated
  (``F_total = N x F``): one ONNX graph, ``spectrum -> features``;
* **head**: the mean of the members' logits, which is linear in the concatenated
  features, so it is *one* ``nn.Linear`` with ``W = [W_1 ... W_N] / N`` and
  ``b = mean(b_j)`` — a head like any other, swappable by ``raman-edge head add``.

Averaging logits (not probabilities) keeps the head linear.  Inference costs N
backbone passes and one head: the cost is still constant in the number of known
spectra and minerals.  Why and how much it helps: BENCHMARKS.md ("Seed
ensembles").
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from calibration.dataset import Dataset
from calibration.errors import ConfigError
from calibration.preprocess import Preprocessor

from .config import TrainConfig
from .models import arch_of

if TYPE_CHECKING:
    from .train import EpochLog, TrainResult

log = logging.getLogger(__name__)


class EnsembleBackbone(nn.Module):
    """The members' backbones run side by side; their features concatenated along axis 1."""

    def __init__(self, backbones: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(backbones)

    def forward(self, spectrum: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(spectrum) for b in self.members], dim=1)


class EnsembleNet(nn.Module):
    """``N`` trained models as one network whose logits are the mean of theirs.

    Parameters
    ----------
    members : sequence of nn.Module
        Trained models of one class list and input length, each with ``backbone``,
        a linear ``head`` (an ``nn.Linear`` or a module holding exactly one),
        ``params`` and ``feature_size``.  Of one architecture (a seed ensemble), or
        of several (``--ensemble-archs``: ``arch`` is then ``"ensemble"`` and
        ``params["members"]`` lists each member's architecture and options).

    Raises
    ------
    ConfigError
        Fewer than two members, mixed class counts or input lengths, or a head that is not linear.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ConfigError(f"an ensemble needs at least 2 members, got {len(members)}")
        arches = [arch_of(m) for m in members]
        classes = {m.params["classes"] for m in members}
        points = {m.params["points"] for m in members}
        if len(classes) != 1 or len(points) != 1:
            raise ConfigError(f"ensemble members must share classes and input length, got {sorted(classes)} "
                              f"classes and {sorted(points)} points")
        linears = [linear_of(m.head) for m in members]
        n, n_classes, n_points = len(members), classes.pop(), points.pop()
        self.arch = arches[0] if len(set(arches)) == 1 else "ensemble"
        self.backbone = EnsembleBackbone([m.backbone for m in members])
        self.head = nn.Linear(sum(lin.in_features for lin in linears), n_classes)
        with torch.no_grad():
            self.head.weight.copy_(torch.cat([lin.weight for lin in linears], dim=1) / n)
            self.head.bias.copy_(torch.stack([lin.bias for lin in linears]).mean(0))
        if self.arch != "ensemble":
            self.params: dict[str, Any] = {**members[0].params, "ensemble": n}
        else:  # one member's options do not describe the others
            self.params = {"points": n_points, "classes": n_classes, "ensemble": n,
                           "members": [{"arch": a, **m.params} for a, m in zip(arches, members)]}
        self._feature_size = sum(int(m.feature_size) for m in members)

    @property
    def feature_size(self) -> int:
        return self._feature_size

    def forward(self, spectrum: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(spectrum))


def linear_of(head: nn.Module) -> nn.Linear:
    """The one ``nn.Linear`` of a head (the head itself, or its ``linear``: :class:`trainer.layers.Head`)."""
    lin = head if isinstance(head, nn.Linear) else getattr(head, "linear", None)
    if not isinstance(lin, nn.Linear) or (sum(p.numel() for p in head.parameters())
                                          != sum(p.numel() for p in lin.parameters())):
        raise ConfigError(f"ensembles need a head that is one linear layer; {type(head).__name__} is not")
    return lin


def member_config(config: TrainConfig, j: int) -> TrainConfig:
    """Member ``j`` of ``config``'s ensemble: one model, no temperature of its own; seed ``seed + j``
    (a seed ensemble), or network ``ensemble_archs[j]`` with the same seed and its default options
    (liu's fields kept for a liu member)."""
    one = dataclasses.replace(config, ensemble=1, ensemble_archs=(), calibrate=False, calibrate_folds=0)
    if not config.ensemble_archs:
        return dataclasses.replace(one, seed=(config.seed + j) % 2**32)
    return dataclasses.replace(one, arch_options={}).with_arch(config.ensemble_archs[j])


def train_ensemble(dataset: Dataset, config: TrainConfig, *, preprocessing: dict[str, Any] | None = None,
                   on_epoch: Callable[["EpochLog"], None] | None = None) -> "TrainResult":
    """Train ``config.members`` models and fold them into one :class:`EnsembleNet`.

    Member ``j`` (:func:`member_config`) is ``config`` with seed ``config.seed + j`` (mod 2**32),
    or, for an ensemble of architectures, with ``arch = ensemble_archs[j]``, the same seed and
    that architecture's default options; each is trained by :func:`trainer.train.train` on the
    same validation split (that of ``config.seed``),
    so the split stays held out from every member: the ensemble's early-stopping
    metrics and its temperature (fitted on that split, or cross-fitted when
    ``config.calibrate_folds`` >= 2, each fold training a whole ensemble) are honest.

    Returns
    -------
    TrainResult
        ``model`` is the :class:`EnsembleNet`; ``history`` the members' epochs one after
        another; ``metrics["members"]`` each member's seed, epochs and scores.
    """
    from .train import TrainResult, fit_temperature, predict_logits, topk_accuracy, train

    t_start = time.perf_counter()
    n = config.members
    results: list[TrainResult] = []
    history: list[EpochLog] = []
    for j in range(n):
        member = member_config(config, j)
        offset = len(history)

        def relay(entry: "EpochLog", offset: int = offset) -> None:  # one progress bar over all members
            if on_epoch is not None:
                on_epoch(dataclasses.replace(entry, epoch=offset + entry.epoch))

        log.info("ensemble member %d/%d (%s, seed %d)", j + 1, n, member.arch, member.seed)
        r = train(dataset, member, preprocessing=preprocessing, on_epoch=relay, validation_seed=config.seed)
        results.append(r)
        history += [dataclasses.replace(e, epoch=offset + e.epoch) for e in r.history]
    model = EnsembleNet([r.model for r in results]).eval()
    pre = Preprocessor(results[0].preprocessing)  # the spec train() resolved
    classes = results[0].classes
    train_idx, val_idx = results[0].train_index, results[0].val_index
    y_all = np.searchsorted(np.asarray(classes), dataset.labels)
    where = [f"{dataset.path or 'dataset'}: spectrum {i} ({lab})" for i, lab in enumerate(dataset.labels)]
    metrics: dict[str, Any] = {
        "ensemble": n, "best_epoch": results[0].best_epoch, "epochs_run": len(history),
        "train_spectra": int(train_idx.size), "val_spectra": int(val_idx.size),
        # Every member split as the first did (the ensemble's seed): one grouping for all.
        "grouping": results[0].metrics["grouping"],
        "members": [{"arch": r.config.arch, "seed": r.config.seed, "best_epoch": r.best_epoch,
                     "epochs_run": r.epochs_run,
                     **{k: r.metrics[k] for k in ("train_top1", "val_top1", "val_top3") if k in r.metrics}}
                    for r in results]}
    x_train = pre.batch(dataset.spectra[train_idx], dataset.wavenumbers, where=[where[i] for i in train_idx])
    metrics["train_top1"] = topk_accuracy(predict_logits(model, x_train), y_all[train_idx], 1)
    validation = None
    if val_idx.size:
        x_val = pre.batch(dataset.spectra[val_idx], dataset.wavenumbers, where=[where[i] for i in val_idx])
        v_logits = predict_logits(model, x_val)
        y_val = y_all[val_idx]
        v_loss = float(nn.functional.cross_entropy(torch.from_numpy(v_logits), torch.from_numpy(y_val)))
        metrics.update(val_loss=v_loss, val_top1=topk_accuracy(v_logits, y_val, 1),
                       val_top3=topk_accuracy(v_logits, y_val, 3))
        validation = (v_logits, y_val)
    temperature = fit_temperature(dataset, config, pre.spec, metrics, validation)
    return TrainResult(model=model, classes=classes, config=config, preprocessing=pre.spec, history=history,
                       best_epoch=results[0].best_epoch, train_index=train_idx, val_index=val_idx, metrics=metrics,
                       seconds=time.perf_counter() - t_start, temperature=temperature)


__all__ = ["EnsembleNet", "EnsembleBackbone", "linear_of", "member_config", "train_ensemble"]
