"""The architectures ``raman-edge train --arch NAME`` builds: names, options, defaults (torch-free).

This is the registry's *data*: the CLI and :class:`trainer.config.TrainConfig`
read it without importing torch.  :func:`trainer.models.build_model` turns a
resolved option dict into a module by importing the architecture's builder
lazily (``"module:Class"``).

Every architecture is a :class:`trainer.layers.Classifier`: a backbone
``spectrum (N, P) -> features (N, F)`` and a head that is exactly one
``nn.Linear(F, K)``, so every model exports through the same bundle path and a
head can be swapped without touching the backbone.

=========  ===================================================================
name       what
=========  ===================================================================
liu        Liu et al. (2017) CNN as used by Soysal et al. (pool m, n pools)
sang       Sang et al. (2022) VGG-style deep 1-D CNN (16 k=3 convs, 5 pools)
drcnn      Zhou et al. (2022) deeply-recursive CNN (one conv applied D times)
fmcnn      Guo et al. (2020) fire-module CNN (squeeze 1x1, expand 1x1 + 3x1)
cnn-lstm   four k=2 convs with pooling, one LSTM, dense layers
compact    ours: depthwise-separable convs, pooled early, for the device
=========  ===================================================================

Options are given on the command line as ``--param KEY=VALUE`` (repeatable;
tuples as ``64,128,256``); ``raman-edge train --list-archs`` prints them.
"""
from __future__ import annotations

import importlib
import textwrap
from dataclasses import dataclass, field
from typing import Any

from calibration.errors import ConfigError

#: Most pooling layers the Liu CNN accepts (its length rule keeps any n valid).
LIU_MAX_N_POOL = 16

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


#: How cnn-lstm's dense layers read the LSTM's outputs (trainer.cnn_lstm; here so the registry stays torch-free).
CNN_LSTM_SUMMARIES = ("flatten", "last", "mean", "max")


@dataclass(frozen=True)
class Param:
    """One architecture option: its default (which also fixes its type), limits and help.

    ``minimum``/``maximum`` apply to a number or to every element of a tuple;
    ``choices`` to a string; ``length`` (when set) is the required tuple length.
    """

    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    length: int | None = None
    open_max: bool = False

    @property
    def kind(self) -> type:
        return type(self.default)

    def parse(self, text: str, where: str = "value") -> Any:
        """Convert command-line text to this option's type (no range check)."""
        text = text.strip()
        kind = self.kind
        try:
            if kind is bool:
                if text.lower() in _TRUE:
                    return True
                if text.lower() in _FALSE:
                    return False
                raise ValueError(text)
            if kind is tuple:
                return tuple(int(v) for v in text.replace(" ", "").strip("()[]").split(",") if v)
            return kind(text)
        except ValueError:
            raise ConfigError(f"{where}: cannot read {text!r} as {self.type_name}") from None

    @property
    def type_name(self) -> str:
        return "comma-separated integers" if self.kind is tuple else self.kind.__name__

    def check(self, where: str, value: Any) -> Any:
        """Return ``value`` in this option's type, or raise :class:`ConfigError` naming ``where``."""
        kind = self.kind
        if isinstance(value, str) and kind is not str:
            value = self.parse(value, where)
        if kind is tuple and isinstance(value, list):
            value = tuple(value)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(f"{where} must be {self.type_name}, got {value!r}")
        items = value if kind is tuple else (value,)
        if kind is tuple:
            if not items or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
                raise ConfigError(f"{where} must be a non-empty tuple of integers, got {value!r}")
            if self.length is not None and len(items) != self.length:
                raise ConfigError(f"{where} must have {self.length} entries, got {value!r}")
        if kind in (int, float, tuple):
            for v in items:
                if self.minimum is not None and v < self.minimum:
                    raise ConfigError(f"{where} must be >= {self.minimum}, got {value!r}")
                if self.maximum is not None and (v >= self.maximum if self.open_max else v > self.maximum):
                    rule = "<" if self.open_max else "<="
                    raise ConfigError(f"{where} must be {rule} {self.maximum}, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{where} must be one of {list(self.choices)}, got {value!r}")
        return value


@dataclass(frozen=True)
class ArchSpec:
    """An architecture: name, one-line summary, builder (``"module:Class"``) and options."""

    name: str
    summary: str
    builder: str
    params: dict[str, Param] = field(default_factory=dict)

    def defaults(self) -> dict[str, Any]:
        return {k: p.default for k, p in self.params.items()}

    def resolve(self, options: dict[str, Any] | None = None) -> dict[str, Any]:
        """Defaults overridden by ``options``, each checked; unknown keys raise :class:`ConfigError`."""
        options = dict(options or {})
        unknown = sorted(set(options) - set(self.params))
        if unknown:
            raise ConfigError(f"arch {self.name}: unknown option(s) {unknown}; known: {sorted(self.params)}")
        out = self.defaults()
        for key, value in options.items():
            out[key] = self.params[key].check(f"arch {self.name} option {key}", value)
        return out

    def parse_options(self, items: list[str] | tuple[str, ...]) -> dict[str, Any]:
        """``["key=value", ...]`` (command line) -> checked option dict."""
        out: dict[str, Any] = {}
        for item in items:
            if "=" not in item:
                raise ConfigError(f"--param: expected KEY=VALUE, got {item!r}")
            key, text = (s.strip() for s in item.split("=", 1))
            key = key.replace("-", "_")
            if key not in self.params:
                raise ConfigError(f"--param {key}: arch {self.name} has no such option; known: {sorted(self.params)}")
            out[key] = self.params[key].check(f"--param {key}", self.params[key].parse(text, f"--param {key}"))
        return out

    def load(self) -> type:
        """Import and return the builder class (imports torch)."""
        module, _, name = self.builder.partition(":")
        return getattr(importlib.import_module(module), name)

    def describe(self) -> str:
        """Multi-line text: the summary and each option with default and help."""
        lines = [textwrap.fill(f"{self.name}: {self.summary}", 100, subsequent_indent="  ")]
        for key, p in self.params.items():
            default = ",".join(map(str, p.default)) if isinstance(p.default, tuple) else p.default
            lines.append(f"    {key} = {default}  ({p.type_name}) {p.help}")
        return "\n".join(lines)


_DROPOUT = dict(minimum=0.0, maximum=1.0, open_max=True)

ARCHS: dict[str, ArchSpec] = {
    spec.name: spec for spec in (
        ArchSpec("liu", "Liu et al. (2017) CNN as in Soysal et al.; set with --pool/--n-pool/--dense/--dropout",
                 "trainer.models:LiuCNN", {
                     "pool": Param(3, "max-pool size m", minimum=1),
                     "n_pool": Param(3, "number of pooling layers n", minimum=0, maximum=LIU_MAX_N_POOL),
                     "dense": Param(64, "dense width = feature size", minimum=1),
                     "dropout": Param(0.5, "dropout after the dense layer", **_DROPOUT),
                     "negative_slope": Param(0.01, "LeakyReLU slope", minimum=0.0),
                 }),
        ArchSpec("sang", "Sang et al. (2022) VGG-style 1-D CNN: k=3 convs 64..512, a max-pool after each "
                         "block, two dense layers with batch-norm and dropout",
                 "trainer.sang:SangCNN", {
                     "widths": Param((64, 128, 256, 512, 512), "filters of each block (one pool per block)",
                                     minimum=1),
                     "depths": Param((2, 2, 4, 4, 4), "convolutions in each block", minimum=1),
                     "kernel": Param(3, "convolution kernel", minimum=1),
                     "same_padding": Param(False, "pad convolutions to keep the length (published: valid)"),
                     "dense": Param(512, "width of both dense layers = feature size", minimum=1),
                     "dropout": Param(0.5, "dropout after each dense layer", **_DROPOUT),
                 }),
        ArchSpec("drcnn", "Zhou et al. (2022) deeply-recursive CNN: embedding convs, one shared conv applied "
                          "`depth` times, a shared supervision branch per level, learnable level weights",
                 "trainer.drcnn:DRCNN", {
                     "embed": Param((64, 128), "filters of the embedding convolutions", minimum=1),
                     "kernel": Param(3, "kernel of embedding, recursive and reconstruction convs (odd)",
                                     minimum=1),
                     "pool": Param(4, "max-pool after each embedding convolution", minimum=1),
                     "depth": Param(9, "recursions D of the shared convolution", minimum=1, maximum=64),
                     "recon": Param(16, "channels of the reconstruction convolution", minimum=1),
                     "dense": Param((1024, 512), "dense layers of the supervision branch (last = feature size)",
                                    minimum=1),
                     "dropout": Param(0.5, "dropout after each dense layer", **_DROPOUT),
                     "skip": Param(True, "add the embedding output to every level (DRCN skip connection)"),
                     "alpha": Param(0.5, "weight of the per-level (recursive-supervision) loss", minimum=0.0,
                                    maximum=1.0),
                 }),
        ArchSpec("fmcnn", "Guo et al. (2020) fire-module CNN: stem conv, fire modules (squeeze 1x1, "
                          "expand 1x1 and 3x1 concatenated), each followed by a max-pool, dense",
                 "trainer.fmcnn:FMCNN", {
                     "stem": Param(32, "filters of the stem convolution", minimum=1),
                     "stem_kernel": Param(7, "kernel of the stem convolution (odd)", minimum=1),
                     "squeeze": Param((16, 16, 32, 32), "squeeze (1x1) filters of each fire module", minimum=1),
                     "expand": Param((32, 32, 64, 64), "filters of each expand branch (output = 2x this)",
                                     minimum=1),
                     "pool": Param(2, "max-pool after the stem and after each fire module", minimum=1),
                     "batch_norm": Param(True, "batch-norm after every convolution"),
                     "dense": Param(128, "dense width = feature size", minimum=1),
                     "dropout": Param(0.5, "dropout after the dense layer", **_DROPOUT),
                 }),
        ArchSpec("cnn-lstm", "four k=2 convolutions each followed by a max-pool, one LSTM over the pooled "
                             "sequence (every step's output, flattened), dense layers",
                 "trainer.cnn_lstm:CNNLSTM", {
                     "filters": Param((16, 32, 64, 64), "filters of the convolutions", minimum=1),
                     "kernel": Param(2, "convolution kernel (valid padding)", minimum=1),
                     "pool": Param(2, "max-pool after each convolution", minimum=1),
                     "hidden": Param(64, "LSTM hidden size", minimum=1),
                     "bidirectional": Param(False, "run the LSTM both ways"),
                     "summary": Param("flatten", "what the dense layers read of the LSTM: flatten (every step's "
                                                 "output; keeps band positions), last, mean or max",
                                      choices=CNN_LSTM_SUMMARIES),
                     "batch_norm": Param(True, "batch-norm after every convolution"),
                     "dense": Param((128,), "dense layers after the LSTM (last = feature size)", minimum=1),
                     "dropout": Param(0.5, "dropout after each dense layer", **_DROPOUT),
                 }),
        ArchSpec("compact", "ours, for the device: a wide-kernel stem, depthwise-separable blocks each "
                            "pooled, a 1x1 channel reduction flattened with global average+max pooling, one "
                            "small dense",
                 "trainer.compact:CompactCNN", {
                     "stem": Param(16, "filters of the stem convolution", minimum=1),
                     "stem_kernel": Param(21, "kernel of the stem convolution (odd)", minimum=1),
                     "widths": Param((32, 64), "output channels of each depthwise-separable block", minimum=1),
                     "kernels": Param((11, 5), "depthwise kernel of each block (odd)", minimum=1),
                     "pool": Param(3, "max-pool after the stem and after each block", minimum=1),
                     "reduce": Param(32, "channels of the 1x1 reduction that is flattened (0: none)",
                                     minimum=0),
                     "global_pool": Param(True, "append global average and max of the last block"),
                     "batch_norm": Param(True, "batch-norm after every convolution"),
                     "dense": Param(128, "dense width = feature size", minimum=1),
                     "dropout": Param(0.5, "dropout after the dense layer", **_DROPOUT),
                     "separable": Param(True, "depthwise-separable blocks (false: full convolutions)"),
                     "activation": Param("relu", "activation after every convolution",
                                         choices=("relu", "leaky_relu", "tanh")),
                     "dense_activation": Param("relu", "activation of the dense layer",
                                               choices=("relu", "leaky_relu", "tanh")),
                 }),
    )
}

ARCH_NAMES: tuple[str, ...] = tuple(ARCHS)


def get_arch(name: str) -> ArchSpec:
    """The :class:`ArchSpec` called ``name``; :class:`ConfigError` listing the known ones otherwise."""
    try:
        return ARCHS[name]
    except KeyError:
        raise ConfigError(f"arch: unknown architecture {name!r} (known: {', '.join(ARCHS)})") from None


def describe_archs() -> str:
    """Every architecture with its options (``raman-edge train --list-archs``)."""
    return "\n\n".join(spec.describe() for spec in ARCHS.values())


__all__ = ["Param", "ArchSpec", "ARCHS", "ARCH_NAMES", "get_arch", "describe_archs", "LIU_MAX_N_POOL"]
