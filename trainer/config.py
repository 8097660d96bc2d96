"""Training options and their defaults (torch-free, so the CLI can show them without importing torch)."""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from calibration.errors import ConfigError
from edge.temperature import OBJECTIVES

from .archs import LIU_MAX_N_POOL, get_arch
from .augment import AugmentConfig

ARCH_NAME = "liu"
MAX_N_POOL = LIU_MAX_N_POOL
#: Liu options that are TrainConfig fields (--pool, --n-pool, --dense, --dropout), not ``arch_options``.
LIU_FIELDS = ("pool", "n_pool", "dense", "dropout")


#: Values of ``--device``.
DEVICE_PATTERN = re.compile(r"cpu|auto|cuda(:\d+)?")

#: Semi-supervised methods of ``raman-edge train --semi`` (trainer.semi).
SEMI_METHODS = ("sgan", "contrastive")
#: Largest seed ensemble (``--ensemble``): inference cost grows linearly with it.
MAX_ENSEMBLE = 8
#: Starts of the contrastive method's linear head (SemiConfig.head_init).
HEAD_INITS = ("prototypes", "random")
#: What the softmax temperature minimises (edge.temperature; ``--calibrate-objective``).
CALIBRATE_OBJECTIVES = OBJECTIVES


@dataclass
class SemiConfig:
    """Options of semi-supervised training (``raman-edge train --semi ... --semi-opt NAME=VALUE``).

    See ``docs/semi_supervised.md`` and :mod:`trainer.semi`.  ``TrainConfig.epochs``,
    ``lr``, ``patience`` and ``batch_size`` drive the SGAN and the fine-tuning phase.

    Attributes
    ----------
    latent : int
        SGAN generator latent size.
    unsup_weight : float
        Weight of the SGAN unsupervised (real/fake) loss beside the supervised cross-entropy.
    feature_matching : bool
        Generator loss: feature matching on the backbone features (Salimans et al.) instead of
        the non-saturating GAN loss.
    gen_lr : float
        Generator Adam learning rate.
    pretrain_epochs : int
        Contrastive (SimCLR) pretraining epochs over the unlabelled + labelled spectra.
    pretrain_batch : int
        Spectra per contrastive batch (2x views).
    pretrain_lr : float
        Adam learning rate of the contrastive pretraining.
    nt_xent_temperature : float
        Temperature of the NT-Xent loss.
    projection : int
        Output width of the projection MLP (hidden width = feature size).
    head_epochs : int
        Epochs of the linear head on the frozen encoder.
    head_init : str
        Start of that head: ``"prototypes"`` (each class's mean feature, i.e. the nearest-class-mean
        classifier written as a linear layer; Qi et al. 2018 "imprinting") or ``"random"``.
    finetune : bool
        After the frozen-encoder head, fine-tune the whole network on the labelled spectra.
    finetune_lr : float
        Learning rate of the fine-tuning (default: supervised training's; 3e-4 under-trained in
        ``benchmarks/results/semi_supervised_v1.json``).
    view_aug : dict
        Augmentation options (AugmentConfig names) overriding ``TrainConfig.augment_config``
        for the two contrastive views: stronger than supervised training's.
    """

    latent: int = 128
    unsup_weight: float = 1.0
    feature_matching: bool = True
    gen_lr: float = 1e-3
    pretrain_epochs: int = 150
    pretrain_batch: int = 64
    pretrain_lr: float = 1e-3
    nt_xent_temperature: float = 0.2
    projection: int = 32
    head_epochs: int = 100
    head_init: str = "prototypes"
    finetune: bool = True
    finetune_lr: float = 1e-3
    view_aug: dict[str, Any] = field(default_factory=lambda: {
        "p_shift": 0.8, "p_scale": 0.8, "p_baseline": 0.8, "p_noise": 0.8,
        "p_fluorescence": 0.5, "p_downsample": 0.5})

    def check(self) -> "SemiConfig":
        """Raise :class:`ConfigError` naming the first invalid option."""
        rules = [
            ("latent", isinstance(self.latent, int) and self.latent >= 1, ">= 1"),
            ("unsup_weight", 0.0 <= self.unsup_weight < np.inf, ">= 0"),
            ("gen_lr", 0.0 < self.gen_lr <= 1.0, "in (0, 1]"),
            ("pretrain_epochs", isinstance(self.pretrain_epochs, int) and self.pretrain_epochs >= 0, ">= 0"),
            ("pretrain_batch", isinstance(self.pretrain_batch, int) and self.pretrain_batch >= 2, ">= 2"),
            ("pretrain_lr", 0.0 < self.pretrain_lr <= 1.0, "in (0, 1]"),
            ("nt_xent_temperature", 0.0 < self.nt_xent_temperature < np.inf, "> 0"),
            ("projection", isinstance(self.projection, int) and self.projection >= 1, ">= 1"),
            ("head_epochs", isinstance(self.head_epochs, int) and self.head_epochs >= 0, ">= 0"),
            ("finetune_lr", 0.0 < self.finetune_lr <= 1.0, "in (0, 1]"),
            ("head_init", self.head_init in HEAD_INITS, f"one of {HEAD_INITS}"),
        ]
        for name, ok, rule in rules:
            if not ok:
                raise ConfigError(f"semi option {name} must be {rule}, got {getattr(self, name)!r}")
        AugmentConfig().replace(**self.view_aug)  # names and ranges checked there
        return self


def parse_semi_options(items: list[str] | tuple[str, ...], base: SemiConfig | None = None) -> SemiConfig:
    """``base`` (default :class:`SemiConfig`) with ``NAME=VALUE`` items applied (``--semi-opt``).

    Booleans as true/false; ``view_aug`` entries as ``view_aug.p_fluorescence=0.3``.
    Raises :class:`ConfigError` naming a bad item.
    """
    from dataclasses import fields, replace

    base = base or SemiConfig()
    kinds = {f.name: type(getattr(base, f.name)) for f in fields(base)}
    changes: dict[str, Any] = {}
    view_aug = dict(base.view_aug)
    for item in items:
        name, sep, text = (s.strip() for s in item.partition("="))
        name = name.replace("-", "_")
        if not sep or not name:
            raise ConfigError(f"--semi-opt {item!r}: expected NAME=VALUE")
        if name.startswith("view_aug."):
            try:
                view_aug[name.split(".", 1)[1]] = float(text)
            except ValueError:
                raise ConfigError(f"--semi-opt {item!r}: expected a number") from None
            continue
        if name not in kinds or name == "view_aug":
            raise ConfigError(f"--semi-opt {name}: unknown option; known: "
                              f"{sorted(k for k in kinds if k != 'view_aug')} and view_aug.NAME")
        kind = kinds[name]
        try:
            if kind is bool:
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(text)
                changes[name] = text.lower() in ("true", "1", "yes")
            else:
                changes[name] = kind(text)
        except ValueError:
            raise ConfigError(f"--semi-opt {name}: cannot read {text!r} as {kind.__name__}") from None
    return replace(base, **changes, view_aug=view_aug).check()


def default_threads() -> int:
    """Torch threads when not told: at most 4, never more than the CPUs we may use."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


@dataclass
class TrainConfig:
    """Options of one training run (the ``raman-edge train`` options).

    The Liu CNN's defaults (``pool``, ``n_pool``, ``dense``) were chosen by stratified
    5-fold CV on ``rruff-soysal/raw_train.npz`` (347 raw spectra, 63 minerals)
    under a size budget of 4 MB of float32 weights (``python benchmarks/cv_soysal.py
    --sweep``; numbers in ``benchmarks/results/cv_soysal_sweep.json``).  Liu's
    original ``m=2, n=3, dense=2048`` is 23 M parameters (92 MB), too big for the
    edge.  Mean top-1 ± std over folds (top-3 in brackets):

    ======================  ======  ===============  =========
    m, n, dense              size    top-1            (top-3)
    ======================  ======  ===============  =========
    3, 3, 64  (default)      0.9 MB  0.761 ± 0.072    (0.882)
    2, 4, 128                3.0 MB  0.755 ± 0.034    (0.899)
    2, 3, 32                 1.5 MB  0.749 ± 0.068    (0.876)
    3, 3, 128                1.8 MB  0.747 ± 0.057    (0.885)
    2, 3, 64                 2.9 MB  0.744 ± 0.055    (0.879)
    3, 3, 256                3.5 MB  0.738 ± 0.055    (0.885)
    4, 3, 256                1.5 MB  0.695 ± 0.073    (0.885)
    4, 3, 512                2.9 MB  0.689 ± 0.062    (0.862)
    2, 6, 256                1.8 MB  0.640 ± 0.060    (0.853)
    4, 4, 256                0.5 MB  0.571 ± 0.056    (0.795)
    1-NN on min-max raw      –       0.519 ± 0.039    (0.672)
    ======================  ======  ===============  =========

    (The rows with n > 3 predate stop 18, which gave deeper stacks He initialisation; see
    :mod:`trainer.models`.)  What mattered was the sequence length reaching the dense layer: pooling it
    down to ≤ 21 positions (m=4, or m=2 with n=6) cost 5–18 points, while the dense width
    could shrink from 256 to 32 at no measurable cost.  The top five are within
    one standard error of each other; ``m=3, n=3, dense=64`` is the best mean and
    the smallest of them, and keeps Liu's three conv blocks unchanged.  On
    ``m=2, n=3, dense=64``: without augmentation top-1 falls to 0.694; monitoring
    validation accuracy instead of loss gives 0.735; patience 80 instead of 40
    gives 0.752 at twice the training time.

    The shipped model is not these defaults but ``--shift-tolerance 5`` applied to them
    (:mod:`trainer.tolerance`): since stop 23, ``compact`` trained on every spectrum.
    """

    arch: str = ARCH_NAME
    pool: int = 3
    n_pool: int = 3
    dense: int = 64
    dropout: float = 0.5
    epochs: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    patience: int = 40
    val_fraction: float = 0.15
    monitor: str = "loss"
    seed: int = 0
    threads: int | None = None
    #: Where the network trains (``--device``): ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when
    #: torch sees a GPU).  Augmentation and preprocessing stay on the CPU (numpy); the trained model
    #: is returned on the CPU.  CUDA runs repeat on the same GPU and software, not bit for bit on a CPU.
    device: str = "cpu"
    augment: bool = True
    augment_config: AugmentConfig = field(default_factory=AugmentConfig)
    #: Fit a softmax temperature on the validation split and store it in the bundle (trainer.temperature).
    calibrate: bool = True
    #: 0: fit that temperature on the validation split.  K >= 2: fit it on the out-of-fold logits of
    #: K extra models of the same recipe, each trained on K-1 stratified folds (cross-fitting), so a
    #: model trained on every spectrum (``val_fraction`` 0) is calibrated on spectra its twins never saw.
    #: Both splits are grouped by specimen when the data names specimens (trainer.train.specimen_groups).
    calibrate_folds: int = 0
    #: What T minimises on those logits: ``brier`` (the Brier score; bounded per spectrum, so a few
    #: confident misses do not steer it) or ``nll`` (Guo et al.).  Stop 20: on out-of-fold logits of the
    #: shipped recipe and of the ±30 rule the Brier fit gave ECE(15) 0.039-0.049 where the NLL fit gave
    #: 0.050 and 0.12 (trainer.temperature, BENCHMARKS.md).
    calibrate_objective: str = "brier"
    #: Seed ensemble size (``--ensemble N``, trainer.ensemble): N models of this recipe, seeds
    #: ``seed`` .. ``seed + N - 1``, folded into one backbone (features concatenated) and one linear
    #: head (logits averaged).  1: a single model.
    ensemble: int = 1
    #: Ensemble of architectures (``--ensemble-archs liu,fmcnn,compact``, trainer.ensemble): one member
    #: per name, each with this recipe, the same seed and its architecture's default options (liu's
    #: fields above for liu members), folded into one bundle as a seed ensemble is.  Empty: none.
    #: ``arch`` is the first member's.
    ensemble_archs: tuple[str, ...] = ()
    #: Test-time shift averaging carried by the bundle (``--shift-average W:STEP``, trainer.shift_average):
    #: the class probabilities averaged over offsets -W, -W+STEP, ..., W grid points.  None: one pass.
    shift_average: tuple[int, int] | None = None
    #: Expected Raman-shift drift (cm⁻¹) that ``pool``, ``n_pool`` and the shift augmentation were
    #: chosen for by ``trainer.tolerance.apply_shift_tolerance``; None when not asked for.
    shift_tolerance: float | None = None
    #: Options of ``arch`` other than liu's fields above (``--param KEY=VALUE``; see trainer.archs).
    arch_options: dict[str, Any] = field(default_factory=dict)
    #: Semi-supervised method (``--semi``; one of :data:`SEMI_METHODS`) or None for supervised training.
    semi: str | None = None
    #: Its options (``--semi-opt NAME=VALUE``).
    semi_config: SemiConfig = field(default_factory=SemiConfig)

    def check(self) -> "TrainConfig":
        """Raise :class:`ConfigError` naming the first invalid option."""
        spec = get_arch(self.arch)
        if self.arch == ARCH_NAME:
            clash = sorted(set(self.arch_options) & set(LIU_FIELDS))
            if clash:
                raise ConfigError(f"arch_options {clash}: set these liu options with "
                                  f"{', '.join('--' + c.replace('_', '-') for c in clash)}")
        else:
            changed = self.liu_options_set()
            if changed:
                why = " (--shift-tolerance chooses them, for liu only)" if self.shift_tolerance is not None else ""
                raise ConfigError(f"{', '.join(changed)}: options of --arch liu{why}; for {self.arch} use "
                                  f"--param KEY=VALUE (raman-edge train --list-archs shows its options)")
        self.arch_options = {k: v for k, v in spec.resolve(self.arch_options).items() if k in self.arch_options}
        rules = [
            ("pool", self.pool >= 1, ">= 1"),
            ("n_pool", 0 <= self.n_pool <= MAX_N_POOL, f"in 0..{MAX_N_POOL}"),
            ("dense", self.dense >= 1, ">= 1"),
            ("dropout", 0.0 <= self.dropout < 1.0, "in [0, 1)"),
            ("epochs", self.epochs >= 1, ">= 1"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("lr", 0.0 < self.lr <= 1.0 and np.isfinite(self.lr), "in (0, 1]"),
            ("patience", self.patience >= 1, ">= 1"),
            ("val_fraction", 0.0 <= self.val_fraction <= 0.5, "in [0, 0.5]"),
            ("calibrate_folds", self.calibrate_folds == 0 or 2 <= self.calibrate_folds <= 20, "0 or in 2..20"),
            ("calibrate_objective", self.calibrate_objective in CALIBRATE_OBJECTIVES,
             f"one of {', '.join(CALIBRATE_OBJECTIVES)}"),
            ("ensemble", 1 <= self.ensemble <= MAX_ENSEMBLE, f"in 1..{MAX_ENSEMBLE}"),
            ("monitor", self.monitor in ("loss", "accuracy"), "'loss' or 'accuracy'"),
            ("seed", 0 <= self.seed < 2**32, "in 0..2**32-1"),
            ("threads", self.threads is None or self.threads >= 1, ">= 1"),
            ("device", isinstance(self.device, str) and DEVICE_PATTERN.fullmatch(self.device) is not None,
             "cpu, cuda, cuda:N or auto"),
            ("shift_tolerance", self.shift_tolerance is None or 0.0 <= self.shift_tolerance < np.inf, ">= 0"),
        ]
        for name, ok, rule in rules:
            if not ok:
                raise ConfigError(f"{name} must be {rule}, got {getattr(self, name)!r}")
        if self.semi is not None and self.semi not in SEMI_METHODS:
            raise ConfigError(f"semi must be one of {list(SEMI_METHODS)} or None, got {self.semi!r}")
        if self.semi is not None and self.calibrate_folds:
            raise ConfigError("calibrate_folds: cross-fitted temperatures are for supervised training; "
                              f"--semi {self.semi} fits T on its validation split")
        if self.shift_average is not None:
            from .tolerance import window_offsets

            if not isinstance(self.shift_average, (tuple, list)) or len(self.shift_average) != 2:
                raise ConfigError(f"shift_average must be (HALF_WIDTH, STEP), got {self.shift_average!r}")
            self.shift_average = tuple(self.shift_average)
            window_offsets(*self.shift_average)
            if self.semi is not None or self.members > 1:
                raise ConfigError("shift_average: not with --semi, --ensemble or --ensemble-archs "
                                  "(one supervised network only)")
        if self.semi is not None and self.device != "cpu":
            raise ConfigError(f"device {self.device}: --semi {self.semi} trains on the CPU only")
        if self.semi is not None and self.ensemble > 1:
            raise ConfigError(f"ensemble: seed ensembles are for supervised training, not --semi {self.semi}")
        if self.ensemble_archs:
            self._check_ensemble_archs()
        self.semi_config.check()
        return self

    def _check_ensemble_archs(self) -> None:
        archs = tuple(str(a) for a in self.ensemble_archs)
        for a in archs:
            get_arch(a)  # ConfigError naming the unknown architecture
        if not 2 <= len(archs) <= MAX_ENSEMBLE or len(set(archs)) != len(archs):
            raise ConfigError(f"ensemble_archs: need 2..{MAX_ENSEMBLE} different architectures, got {list(archs)} "
                              "(--ensemble N trains N seeds of one)")
        if self.ensemble != 1:
            raise ConfigError("ensemble_archs: an ensemble of architectures takes one member per name; "
                              "--ensemble N (seeds) is not combined with it")
        if self.semi is not None or self.shift_average is not None:
            raise ConfigError("ensemble_archs: not with --semi or --shift-average (supervised members, one pass each)")
        if self.arch_options:
            raise ConfigError("ensemble_archs: each member takes its architecture's default options; "
                              f"--param {sorted(self.arch_options)} would apply to one of them only")
        if self.arch != archs[0]:
            raise ConfigError(f"ensemble_archs {list(archs)}: arch must be the first member's ({archs[0]}), "
                              f"got {self.arch}")
        self.ensemble_archs = archs

    def liu_options_set(self) -> list[str]:
        """Liu's own fields (:data:`LIU_FIELDS`) that differ from their defaults."""
        return [f for f in LIU_FIELDS if getattr(self, f) != TrainConfig.__dataclass_fields__[f].default]

    def with_arch(self, arch: str) -> "TrainConfig":
        """This configuration for network ``arch``: liu's own fields back at their defaults unless it is liu."""
        if arch == ARCH_NAME:
            return dataclasses.replace(self, arch=arch)
        return dataclasses.replace(self, arch=arch,
                                   **{f: TrainConfig.__dataclass_fields__[f].default for f in LIU_FIELDS})

    @property
    def members(self) -> int:
        """Networks this configuration trains for one bundle (ensemble members; 1 for a single model)."""
        return len(self.ensemble_archs) or self.ensemble

    def arch_params(self) -> dict[str, Any]:
        """Options of ``arch`` (registry defaults, then liu's fields for liu, then ``arch_options``)."""
        given = dict(self.arch_options)
        if self.arch == ARCH_NAME:
            given = {"pool": self.pool, "n_pool": self.n_pool, "dense": self.dense, "dropout": self.dropout,
                     **given}
        return get_arch(self.arch).resolve(given)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["augment_config"] = self.augment_config.to_dict()
        return d


