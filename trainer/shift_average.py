"""Test-time shift averaging: the class probabilities of a spectrum averaged over axis offsets.

A network trained with shifts of ±d cm⁻¹ tolerates about ±d and little beyond.  Scoring
the spectrum again at offsets ``-W, -W+STEP, ..., W`` and averaging the *probabilities*
(not the logits: one badly aligned copy must not veto a class that fits the others)
widens that: on the Soysal split a liu trained with ±20 and averaged over 0, ±20, ±40
by this module gives 0.77 / 0.74 unshifted and 0.69 / 0.65 at ±30 (two seeds, mean of both
directions), against 0.75 / 0.73 and 0.63 / 0.59 for training with ±40 (BENCHMARKS.md,
"Stop 18"; the ``--shift-tolerance 30`` rule since then).

It travels inside the bundle, so the device needs nothing new:

* the **backbone** graph makes the ``S`` shifted copies itself (the vacated end is filled
  with the edge value, as the training augmentation fills it) and returns their features
  side by side, ``(N, S x F)``: copy ``s`` is the block ``[s F, (s + 1) F)``;
* the **head** applies one linear layer ``W (K, F)`` to every copy, a softmax per copy,
  and returns ``log(mean_s p_s)`` as its "logits".  The edge's ``softmax(logits / T)``
  of that is the averaged probability for ``T = 1``, and a temperature still sharpens or
  flattens it.

``raman-edge head add`` fits such a head with numpy (:func:`edge.head.add_head`): the
copies' features are rows of one softmax regression.  The manifest says
``architecture.head = {"kind": "shift-mean", "copies": S}``.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .tolerance import window_offsets  # torch-free, so TrainConfig and the CLI check windows without torch


class ShiftCopies(nn.Module):
    """Backbone wrapper: spectrum ``(N, P)`` -> features of its shifted copies, ``(N, S x F)``.

    Copy ``s`` is the spectrum moved by ``offsets[s]`` grid points towards higher shift
    (``y[i] = x[i - offset]``), its vacated end filled with the edge value.
    """

    def __init__(self, backbone: nn.Module, offsets: list[int], points: int, features: int) -> None:
        super().__init__()
        self.inner = backbone
        self.offsets = [int(o) for o in offsets]
        self.points, self.features = int(points), int(features)
        self.pad = max(abs(o) for o in self.offsets)

    def forward(self, spectrum: torch.Tensor) -> torch.Tensor:
        p = self.pad
        padded = nn.functional.pad(spectrum.unsqueeze(1), (p, p), mode="replicate").squeeze(1)
        copies = torch.cat([padded[:, p - o:p - o + self.points] for o in self.offsets], dim=0)  # (S N, P)
        feats = self.inner(copies)                                                            # (S N, F)
        s, f = len(self.offsets), self.features  # Python ints: the exported width stays static
        return feats.reshape(s, -1, f).transpose(0, 1).reshape(-1, s * f)


class ProbabilityMeanHead(nn.Module):
    """Head: features ``(N, S x F)`` -> ``log(mean_s softmax(W f_s + b))``, shape ``(N, K)``."""

    def __init__(self, linear: nn.Linear, copies: int) -> None:
        super().__init__()
        self.linear = linear
        self.copies = int(copies)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = self.linear(features.reshape(-1, self.copies, self.linear.in_features))  # (N, S, K)
        return torch.logsumexp(torch.log_softmax(z, dim=2), dim=1) - math.log(self.copies)


class ShiftAveragedNet(nn.Module):
    """A trained model whose bundle averages its probabilities over ``offsets`` (see the module doc).

    Raises
    ------
    ConfigError
        The model's head is not one linear layer.
    """

    def __init__(self, model: nn.Module, window: tuple[int, int] | list[int]) -> None:
        super().__init__()
        from .ensemble import linear_of
        from .models import arch_of

        half_width, step = (int(v) for v in window)
        self.offsets = window_offsets(half_width, step)
        self.arch = arch_of(model)
        self.backbone = ShiftCopies(model.backbone, self.offsets, model.params["points"], model.feature_size)
        self.head = ProbabilityMeanHead(linear_of(model.head), len(self.offsets))
        self.params: dict[str, Any] = {**model.params,
                                       "shift_average": {"window": [half_width, step], "offsets": self.offsets}}
        self._feature_size = len(self.offsets) * int(model.feature_size)
        #: What ``raman-edge head add`` must know to fit and write a head for this backbone.
        self.head_info = {"kind": "shift-mean", "copies": len(self.offsets)}

    @property
    def feature_size(self) -> int:
        return self._feature_size

    def forward(self, spectrum: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(spectrum))


__all__ = ["ShiftCopies", "ProbabilityMeanHead", "ShiftAveragedNet"]
