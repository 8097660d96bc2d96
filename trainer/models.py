"""The model registry, and the CNN of Liu et al. (2017) as used by Soysal et al. (2025).

Registry
--------
:data:`ARCHS` (from :mod:`trainer.archs`, torch-free) maps every name
``raman-edge train --arch`` accepts to its builder and options;
:func:`build_model` builds any of them from ``points``, ``classes`` and options
(the manifest's ``architecture["params"]``).  The other architectures live in
their own modules (:mod:`trainer.sang`, :mod:`trainer.drcnn`,
:mod:`trainer.fmcnn`, :mod:`trainer.cnn_lstm`, :mod:`trainer.compact`); every
one has ``backbone`` (spectrum -> features), ``head`` (one ``nn.Linear``),
``params``, ``feature_size`` and ``arch``.

Architecture (``"liu"``)::

    spectrum (N, P)  -> unsqueeze -> (N, 1, P)
    conv 16 filters k=21 -> LeakyReLU -> max-pool m      } block 1
    conv 32 filters k=11 -> LeakyReLU -> max-pool m      } block 2
    conv 64 filters k=5  -> LeakyReLU -> max-pool m      } block 3
    [conv 64 filters k=5 -> LeakyReLU -> max-pool m] x (n - 3)   extra blocks when n > 3
    flatten -> dense (width D) -> tanh -> dropout        = features (N, D)   BACKBONE
    linear D -> K                                         = logits   (N, K)   HEAD

Convolutions use "same" padding (odd kernels, ``k // 2`` on each side), so only
pooling changes the length.

Pooling rule (number of pooling layers ``n``, pool size ``m``)
---------------------------------------------------------------
* ``n <= 3``: the first ``n`` of the three convolution blocks end in a max-pool,
  the others do not (``n = 0``: no pooling at all).
* ``n > 3``: ``n - 3`` extra blocks (conv 64 filters k=5, LeakyReLU, max-pool)
  follow block 3.  They keep pooling where the original network stops, which is
  how a smaller dense layer is reached without discarding the conv features.
* Every pooling layer uses a window of ``min(m, L)`` (stride equal to the window)
  on its input length ``L``, so ``L -> floor(L / min(m, L))``.  The length thus
  never falls below 1: once the sequence is shorter than ``m`` the pool collapses
  it to a single position, and a pool on length 1 is the identity.  Very deep
  settings (``m = 2, n = 10`` on 1392 points) therefore stay valid.
* With ``n > 3`` every convolution starts from He initialisation (for LeakyReLU);
  with torch's default init ten layers passed no usable signal and ``m = 2, n = 10``
  did not train at all (stop 18).

:func:`pooled_lengths` is this rule as arithmetic; the tests check that the
module's output length follows it for many ``(m, n)``.

The softmax is *not* part of the head: the edge applies
``softmax(logits / temperature)`` itself.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from calibration.errors import ConfigError

from .archs import ARCH_NAMES, ARCHS, ArchSpec, get_arch
from .config import ARCH_NAME, MAX_N_POOL
from .layers import Classifier, Head

log = logging.getLogger(__name__)

#: (filters, kernel) of the three convolution blocks of Liu et al. (2017).
LIU_BLOCKS: tuple[tuple[int, int], ...] = ((16, 21), (32, 11), (64, 5))
#: (filters, kernel) of each extra pooling block when n > 3.
EXTRA_BLOCK: tuple[int, int] = (64, 5)


def pool_window(length: int, m: int) -> int:
    """Window (and stride) of a pooling layer on a sequence of ``length``: ``min(m, length)``."""
    return max(1, min(int(m), int(length)))


def pooled_lengths(points: int, m: int, n: int) -> list[int]:
    """Sequence length after each convolution block (see the module's pooling rule).

    Returns one length per block: ``max(3, n)`` entries.
    """
    if points < 1 or m < 1 or n < 0:
        raise ValueError(f"need points >= 1, m >= 1, n >= 0 (got {points}, {m}, {n})")
    lengths, length = [], int(points)
    for i in range(max(len(LIU_BLOCKS), n)):
        if i < n:
            length = length // pool_window(length, m)
        lengths.append(length)
    return lengths


def flat_size(points: int, m: int, n: int) -> int:
    """Width of the flattened conv output that feeds the dense layer."""
    channels = (LIU_BLOCKS + (EXTRA_BLOCK,) * max(0, n - len(LIU_BLOCKS)))[-1][0]
    return channels * pooled_lengths(points, m, n)[-1]


def parameter_count(points: int, classes: int, m: int, n: int, dense: int) -> int:
    """Trainable parameters of backbone + head, computed without building the model."""
    specs = LIU_BLOCKS + (EXTRA_BLOCK,) * max(0, n - len(LIU_BLOCKS))
    total, cin = 0, 1
    for filters, k in specs:
        total += cin * filters * k + filters
        cin = filters
    return total + flat_size(points, m, n) * dense + dense + dense * classes + classes


class Backbone(nn.Module):
    """Spectrum ``(N, P)`` -> features ``(N, dense)`` (conv stack, dense, tanh, dropout)."""

    def __init__(self, points: int, pool: int = 2, n_pool: int = 3, dense: int = 2048,
                 dropout: float = 0.5, negative_slope: float = 0.01) -> None:
        super().__init__()
        if not 0 <= n_pool <= MAX_N_POOL:
            raise ValueError(f"n_pool must be in 0..{MAX_N_POOL}, got {n_pool}")
        if pool < 1 or dense < 1 or points < 1 or not 0.0 <= dropout < 1.0:
            raise ValueError(f"bad Backbone options: points={points} pool={pool} dense={dense} dropout={dropout}")
        self.points, self.pool, self.n_pool, self.dense = int(points), int(pool), int(n_pool), int(dense)
        specs = LIU_BLOCKS + (EXTRA_BLOCK,) * max(0, n_pool - len(LIU_BLOCKS))
        layers: list[nn.Module] = []
        cin, length = 1, self.points
        for i, (filters, k) in enumerate(specs):
            layers += [nn.Conv1d(cin, filters, k, padding=k // 2), nn.LeakyReLU(negative_slope)]
            if i < n_pool:
                w = pool_window(length, pool)
                layers.append(nn.MaxPool1d(w, stride=w))
                length //= w
            cin = filters
        self.conv = nn.Sequential(*layers)
        if n_pool > len(LIU_BLOCKS):
            # Deep stacks start with He initialisation for their LeakyReLU: torch's default
            # (kaiming_uniform, a=sqrt(5)) passes a third of the variance per layer, so after ten
            # convolutions the features hardly depend on the spectrum (spread across spectra ~1e-5,
            # the biases dominate) and m=2 n=10 never left chance (train loss stayed at ln K).
            # n <= 3 keeps the default: the shipped models' recorded commands still rebuild them.
            for layer in self.conv:
                if isinstance(layer, nn.Conv1d):
                    nn.init.kaiming_normal_(layer.weight, a=negative_slope, nonlinearity="leaky_relu")
                    nn.init.zeros_(layer.bias)
        self.flat_size = cin * length
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(self.flat_size, dense), nn.Tanh(), nn.Dropout(dropout))

    def forward(self, spectrum: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(spectrum.unsqueeze(1)))


class LiuCNN(nn.Module):
    """Backbone + head; ``forward`` returns logits.

    Parameters
    ----------
    points : int
        Input length (the preprocessing grid's size, 1392 by default).
    classes : int
        Number of output classes.
    pool : int
        Max-pool size ``m``.
    n_pool : int
        Number of pooling layers ``n`` (0..16; see the module docstring).
    dense : int
        Width of the dense layer = feature size ``F``.
    dropout : float
        Dropout after the dense tanh (inactive in eval mode and in the ONNX export).
    """

    arch = ARCH_NAME

    def __init__(self, points: int, classes: int, pool: int = 2, n_pool: int = 3, dense: int = 2048,
                 dropout: float = 0.5, negative_slope: float = 0.01) -> None:
        super().__init__()
        if classes < 1:
            raise ValueError(f"classes must be >= 1, got {classes}")
        self.backbone = Backbone(points, pool, n_pool, dense, dropout, negative_slope)
        self.head = Head(dense, classes)
        self.params: dict[str, Any] = {"points": int(points), "classes": int(classes), "pool": int(pool),
                                       "n_pool": int(n_pool), "dense": int(dense), "dropout": float(dropout),
                                       "negative_slope": float(negative_slope)}

    @property
    def feature_size(self) -> int:
        return self.backbone.dense

    def forward(self, spectrum: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(spectrum))


#: Keys export adds to ``architecture["params"]`` for the record; ignored when rebuilding.
RECORD_KEYS = frozenset({"flat_size", "parameters", "feature_size", "macs"})


def build_model(params: dict[str, Any], arch: str | None = None) -> nn.Module:
    """Build any registered architecture from its parameters.

    Parameters
    ----------
    params : dict
        ``points``, ``classes`` and the architecture's options, as written in a
        bundle manifest's ``architecture["params"]`` (tuples may come as lists;
        record-only keys such as ``parameters`` are ignored).  Options left out
        take the registry's defaults (those of ``raman-edge train``; for ``liu``
        the shipped m=3, n=3, dense=64, not the :class:`LiuCNN` signature's).
    arch : str, optional
        Registered name (:data:`trainer.archs.ARCHS`); default ``params["arch"]``
        if present, else ``"liu"`` (the manifest's ``architecture["name"]``).

    Returns
    -------
    torch.nn.Module
        A :class:`LiuCNN` or :class:`trainer.layers.Classifier` (train mode, fresh weights).

    Raises
    ------
    ValueError
        Unknown architecture, unknown option or an invalid value.
    """
    params = dict(params)
    if int(params.get("ensemble", 1)) > 1:  # trainer.ensemble: one member's params do not describe the whole
        raise ValueError(f"an ensemble of {params['ensemble']} models cannot be rebuilt as one architecture")
    params.pop("ensemble", None)
    if params.pop("shift_average", None) is not None:  # trainer.shift_average: a wrapper, not an option
        raise ValueError("a shift-averaged model (params['shift_average']) cannot be rebuilt as one architecture; "
                         "rebuild the inner network without it and wrap it in trainer.shift_average.ShiftAveragedNet")
    name = arch or params.pop("arch", None) or ARCH_NAME
    params.pop("arch", None)
    try:
        spec = get_arch(name)
        shape = {k: int(params.pop(k)) for k in ("points", "classes") if k in params}
        options = {k: v for k, v in params.items() if k not in RECORD_KEYS}
        unknown = sorted(set(options) - set(spec.params))
        if unknown:
            raise ConfigError(f"arch {name}: unknown architecture parameter(s) {unknown}; "
                              f"known: {sorted(spec.params)}")
        options = spec.resolve(options)
    except ConfigError as e:
        raise ValueError(str(e)) from None
    missing = {"points", "classes"} - set(shape)
    if missing:
        raise ValueError(f"arch {name}: parameters need {sorted(missing)}")
    return spec.load()(**shape, **options)


def arch_of(model: nn.Module) -> str:
    """Registered name of a built model (``"liu"`` for a :class:`LiuCNN`)."""
    return getattr(model, "arch", "") or ARCH_NAME


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
