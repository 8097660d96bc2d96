"""A CNN-LSTM for Raman spectra, ``--arch cnn-lstm``.

Convolutions find local band shapes; an LSTM then reads the pooled sequence
from low to high Raman shift and summarises where the bands are relative to one
another.  On a spectrum of ``P`` points::

    [conv f_i k=2 (valid) -> batch-norm -> ReLU -> max-pool 2] x 4   f = (16, 32, 64, 64) -> (N, 64, L)
    LSTM(64 -> hidden 64) over the L positions, batch-first             -> (N, L, 64)
    summary: the outputs at every position, flattened                   -> (N, L * 64)
    dense 128 -> ReLU -> dropout                          = features (N, 128)   BACKBONE
    linear 128 -> K                                       = logits              HEAD

Why batch-norm and the flattened summary (``summary="flatten"``, the default): a
Raman spectrum's class is *where* its bands are.  Summarised by its last step
(``summary="last"``) the LSTM must carry each band's position through up to 86
steps of memory, and on the Soysal split it stayed at chance (4 %); a max or
mean over steps loses position altogether (0.27 on one fold without
augmentation).  Flattening every step's output keeps the position, as Liu's
flattened convolution maps do, and reaches Liu's accuracy (see BENCHMARKS.md).
Without batch-norm the k=2 convolutions shrink the spread of the features
across spectra to ~5e-3 by the fourth pooling, and the LSTM's gates barely move.

``summary`` may also be ``last`` (the last position; with ``bidirectional=True``
the backward direction's output at the *first* position, where it has read the
whole sequence, is concatenated), ``mean`` or ``max`` (over positions).  The
LSTM exports to ONNX as one ``LSTM`` node (opset 17); the export test checks ONNX
Runtime against torch on a dynamic batch.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from .archs import CNN_LSTM_SUMMARIES as SUMMARIES
from .layers import BatchNorm1d, Classifier, check_length, conv_length, dense_stack, pool_length

log = logging.getLogger(__name__)


class CNNLSTMBackbone(nn.Module):
    """Spectrum ``(N, P)`` -> features ``(N, dense[-1])``."""

    def __init__(self, points: int, filters: tuple[int, ...] = (16, 32, 64, 64), kernel: int = 2, pool: int = 2,
                 hidden: int = 64, bidirectional: bool = False, dense: tuple[int, ...] = (128,),
                 dropout: float = 0.5, batch_norm: bool = True, summary: str = "flatten") -> None:
        super().__init__()
        filters, dense = tuple(int(f) for f in filters), tuple(int(d) for d in dense)
        if not filters or not dense or min(filters + dense) < 1 or kernel < 1 or pool < 1 or hidden < 1 \
                or not 0.0 <= dropout < 1.0 or summary not in SUMMARIES:
            raise ValueError(f"cnn-lstm: bad options filters={filters} kernel={kernel} pool={pool} "
                             f"hidden={hidden} dense={dense} dropout={dropout} summary={summary!r} "
                             f"(one of {', '.join(SUMMARIES)})")
        layers: list[nn.Module] = []
        cin, length = 1, int(points)
        for i, f in enumerate(filters, 1):
            length = conv_length(length, kernel)
            check_length("cnn-lstm", points, length, f"after convolution {i}")
            window, length = pool_length(length, pool)
            layers += [nn.Conv1d(cin, f, kernel), *([BatchNorm1d(f)] if batch_norm else []), nn.ReLU(),
                       nn.MaxPool1d(window, stride=window)]
            cin = f
        self.conv = nn.Sequential(*layers)
        self.steps = length
        self.bidirectional = bool(bidirectional)
        self.lstm = nn.LSTM(cin, hidden, batch_first=True, bidirectional=self.bidirectional)
        self.hidden = int(hidden)
        self.summary = summary
        width = hidden * (2 if self.bidirectional else 1)
        self.fc = dense_stack(dense, width * (length if summary == "flatten" else 1), dropout)

    def forward(self, spectrum: torch.Tensor) -> torch.Tensor:
        seq = self.conv(spectrum.unsqueeze(1)).transpose(1, 2)   # (N, L, C): positions are time steps
        out, _ = self.lstm(seq)                                   # (N, L, H * directions)
        if self.summary == "flatten":
            summary = out.flatten(1)
        elif self.summary == "mean":
            summary = out.mean(1)
        elif self.summary == "max":
            summary = out.amax(1)
        else:
            summary = out[:, -1, :self.hidden]
            if self.bidirectional:
                summary = torch.cat([summary, out[:, 0, self.hidden:]], dim=1)
        return self.fc(summary)


class CNNLSTM(Classifier):
    """CNN-LSTM (options as in :class:`CNNLSTMBackbone`)."""

    arch = "cnn-lstm"

    def __init__(self, points: int, classes: int, filters: tuple[int, ...] = (16, 32, 64, 64), kernel: int = 2,
                 pool: int = 2, hidden: int = 64, bidirectional: bool = False, dense: tuple[int, ...] = (128,),
                 dropout: float = 0.5, batch_norm: bool = True, summary: str = "flatten") -> None:
        params: dict[str, Any] = {"points": int(points), "filters": tuple(filters), "kernel": int(kernel),
                                  "pool": int(pool), "hidden": int(hidden), "bidirectional": bool(bidirectional),
                                  "dense": tuple(dense), "dropout": float(dropout), "batch_norm": bool(batch_norm),
                                  "summary": str(summary)}
        super().__init__(CNNLSTMBackbone(points, filters, kernel, pool, hidden, bidirectional, dense, dropout,
                                         batch_norm, summary),
                         int(tuple(dense)[-1]), classes, params)
