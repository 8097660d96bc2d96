"""``raman-edge train``: train the Liu CNN on raw spectra and write a model bundle.

Plugged into the device CLI through the ``raman_edge.commands`` entry point, so
this module must import without torch: torch is imported inside the command and
its absence raises :class:`MissingExtraError` naming the ``train`` extra.
Errors are raised as :class:`RamanEdgeError`; the edge CLI turns them into a
message and exit code.
"""
from __future__ import annotations

import dataclasses
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

import click

from calibration.errors import ConfigError, MissingExtraError

from .archs import ARCH_NAMES, describe_archs
from .config import ARCH_NAME, CALIBRATE_OBJECTIVES, MAX_ENSEMBLE, MAX_N_POOL, SEMI_METHODS, TrainConfig
from .tolerance import MAX_TOLERANCE

log = logging.getLogger(__name__)

_D = TrainConfig()


def _require_train_extra() -> None:
    for module in ("torch", "onnx", "onnxruntime", "rich"):
        try:
            __import__(module)
        except ImportError:
            raise MissingExtraError("raman-edge train", "train", module) from None


def command_line(argv: list[str] | None = None) -> str:
    """The command as a user would retype it (``python -m trainer.cli ...`` or ``raman-edge train ...``)."""
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return "raman-edge train"
    prog = Path(argv[0])
    head = ["python", "-m", "trainer.cli"] if prog.name == "cli.py" and prog.parent.name == "trainer" else [prog.name]
    return shlex.join(head + argv[1:])


def _check_out(out: Path) -> None:
    """Refuse to replace anything but a previous bundle (write_bundle replaces the directory)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise ConfigError(f"--out {out}: directory exists, is not empty and is not a model bundle; "
                          "refusing to replace it (choose a new directory)")


def _key_values(ctx: click.Context, param: click.Parameter, items: tuple[str, ...]) -> dict[str, str]:
    """``--param KEY=VALUE`` items -> ``{key: text}``; TrainConfig.check() types and checks them per arch."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", ctx=ctx, param=param)
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def _list_archs(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(describe_archs())
        ctx.exit()


def _arch_list(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...]:
    """``--ensemble-archs liu,fmcnn`` -> ("liu", "fmcnn"); each name must be registered."""
    if not value:
        return ()
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = [n for n in names if n not in ARCH_NAMES]
    if unknown:
        raise click.BadParameter(f"unknown architecture(s) {unknown}; known: {', '.join(ARCH_NAMES)}",
                                 ctx=ctx, param=param)
    return names


def _parse_window(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    """``--shift-average W:STEP`` -> (W, STEP); offsets checked by TrainConfig.check."""
    from .tolerance import parse_window

    if value is None:
        return None
    try:
        return parse_window(value)
    except ConfigError as e:
        raise click.BadParameter(str(e)) from None


@click.command("train")
@click.option("--data", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="Labelled raw spectra (.npz with spectra, labels, wavenumbers).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Bundle directory to write (an existing bundle there is replaced).")
@click.option("--arch", type=click.Choice(list(ARCH_NAMES)), default=_D.arch, show_default=True,
              help="Architecture; -m/-n/--dense/--dropout set liu, --param sets the others (see --list-archs).")
@click.option("--param", "arch_options", multiple=True, metavar="KEY=VALUE", callback=_key_values,
              help="Option of --arch, repeatable (e.g. --param widths=32,64 --param dense=96).")
@click.option("--list-archs", is_flag=True, is_eager=True, expose_value=False, callback=_list_archs,
              help="List the architectures and their options, then exit.")
@click.option("--pool", "-m", type=click.IntRange(1, 64), default=_D.pool, show_default=True,
              help="Max-pool size m.")
@click.option("--n-pool", "-n", type=click.IntRange(0, MAX_N_POOL), default=_D.n_pool, show_default=True,
              help="Number of pooling layers n (> 3 adds conv+pool blocks).")
@click.option("--dense", type=click.IntRange(1, 8192), default=_D.dense, show_default=True,
              help="Dense width = feature size. 64 suits tens of minerals (Soysal, 63: 256 lost 3.1 "
                   "points top-1); for hundreds, train wider (Sang Dataset_2, 1,332 minerals: 256 gave "
                   "+4.4 points, BENCHMARKS.md).")
@click.option("--dropout", type=click.FloatRange(0.0, 1.0, max_open=True), default=_D.dropout, show_default=True)
@click.option("--epochs", type=click.IntRange(1, 100000), default=_D.epochs, show_default=True,
              help="Epoch budget (early stopping usually ends sooner).")
@click.option("--batch-size", type=click.IntRange(1, 65536), default=_D.batch_size, show_default=True)
@click.option("--lr", type=click.FloatRange(0.0, 1.0, min_open=True), default=_D.lr, show_default=True,
              help="Adam learning rate (halved on validation-loss plateaus).")
@click.option("--patience", type=click.IntRange(1, 100000), default=_D.patience, show_default=True,
              help="Epochs without improvement before early stopping.")
@click.option("--val-fraction", type=click.FloatRange(0.0, 0.5), default=_D.val_fraction, show_default=True,
              help="Fraction held out (stratified; classes with < 3 spectra never) for early stopping; "
                   "whole specimens when the data names them (a 'specimens' or 'files' column).")
@click.option("--monitor", type=click.Choice(["loss", "accuracy"]), default=_D.monitor, show_default=True,
              help="Validation score for early stopping and best weights.")
@click.option("--augment/--no-augment", default=_D.augment, show_default=True,
              help="Random shifts, scaling, baselines and noise on the raw spectra.")
@click.option("--aug", "aug", multiple=True, metavar="NAME=VALUE",
              help="Augmentation option, repeatable: a probability or size (p_spikes=0.3, max_shift=10) or a "
                   "range lo,hi (spike_height=0.1,1); names and ranges in docs/augmentation.md.")
@click.option("--shift-tolerance", type=click.FloatRange(0.0, MAX_TOLERANCE), default=None, metavar="CM",
              help="Expected Raman-shift drift of the instrument (cm⁻¹, e.g. 5, 15, 30): chooses -m, -n, the "
                   "shift augmentation, the training schedule and, above 15, test-time averaging and the "
                   "fmcnn network (explicit --arch/-m/-n/--dense/--dropout/--param/--patience/--epochs/"
                   "--val-fraction/--calibrate-folds/--shift-average/--aug max_shift,p_shift win) and records "
                   "it in the manifest. Rule and evidence: docs/augmentation.md.")
@click.option("--shift-average", "shift_average", callback=_parse_window, default=None, metavar="W:STEP",
              help="Average the class probabilities over the spectrum moved by -W, -W+STEP, ..., W cm⁻¹ "
                   "(grid points), inside the bundle: 2W/STEP+1 backbone passes per spectrum, wider drift "
                   "tolerance (e.g. 40:20 with --aug max_shift=20). docs/augmentation.md.")
@click.option("--calibrate/--no-calibrate", default=_D.calibrate, show_default=True,
              help="Fit a softmax temperature on the validation split (ECE before/after in the manifest).")
@click.option("--calibrate-folds", type=click.IntRange(0, 20), default=_D.calibrate_folds, show_default=True,
              metavar="K",
              help="Fit the temperature by K-fold cross-fitting instead (K extra models of the same recipe, "
                   "each scoring the fold it did not see; folds grouped by specimen when the data names "
                   "them): for --val-fraction 0, where the model trains on every spectrum. 0: the validation "
                   "split.")
@click.option("--calibrate-objective", type=click.Choice(CALIBRATE_OBJECTIVES), default=_D.calibrate_objective,
              show_default=True,
              help="What the temperature minimises: brier (the Brier score: a few confidently wrong spectra "
                   "cannot steer it) or nll (Guo et al.). BENCHMARKS.md, 'Stop 20'.")
@click.option("--ensemble", type=click.IntRange(1, MAX_ENSEMBLE), default=_D.ensemble, show_default=True,
              metavar="N",
              help="Train N models (seeds SEED..SEED+N-1) and fold them into one bundle: backbones side by "
                   "side, logits averaged by one linear head (N times the backbone cost). BENCHMARKS.md.")
@click.option("--ensemble-archs", "ensemble_archs", callback=_arch_list, default=None, metavar="A,B[,...]",
              help="Train one model per architecture (e.g. liu,fmcnn,compact; each with its default options, "
                   "this recipe and --seed) and fold them into one bundle as --ensemble does. --arch is the "
                   "first. BENCHMARKS.md (\"Ensembles of architectures\").")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=_D.seed, show_default=True)
@click.option("--threads", type=click.IntRange(1, 256), default=None,
              help="Torch CPU threads [default: min(4, available CPUs)].")
@click.option("--device", type=str, default=_D.device, show_default=True,
              metavar="cpu|cuda[:N]|auto",
              help="Where the network trains: cpu, cuda, cuda:N, or auto (CUDA when torch sees a GPU). "
                   "Augmentation and preprocessing run on the CPU either way; supervised training only.")
@click.option("--semi", type=click.Choice(list(SEMI_METHODS)), default=None,
              help="Semi-supervised training that also learns from --unlabeled spectra: sgan (semi-supervised "
                   "GAN) or contrastive (SimCLR pretraining, head, fine-tuning). docs/semi_supervised.md.")
@click.option("--unlabeled", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE.npz",
              help="Raw spectra without labels (.npz with spectra and wavenumbers; labels ignored); "
                   "required with --semi, refused without it.")
@click.option("--semi-opt", "semi_opt", multiple=True, metavar="NAME=VALUE",
              help="Option of --semi, repeatable (e.g. finetune=false, pretrain_epochs=100, "
                   "nt_xent_temperature=0.5, view_aug.p_fluorescence=0.3); see docs/semi_supervised.md.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary.")
def train(data: Path, out: Path, quiet: bool, **options: Any) -> None:
    """Train a mineral classifier on raw spectra and write a model bundle to OUT.

    A model whose figures look poor (held-out top-1 near chance or below 50 %, a fitted
    temperature outside 0.5-5, ECE still above 0.15 after scaling) is written all the
    same, with one warning line on stderr and the reasons in the manifest
    (training.warnings).
    """
    _require_train_extra()
    from calibration.dataset import load_dataset

    from .export import save_bundle
    from .progress import EpochProgress
    from .train import preprocess_dataset, train as fit

    _check_semi(options)
    config = _config(options)
    _check_out(out)
    dataset = load_dataset(data)
    unlabeled = None
    if config.semi:
        from .semi import load_unlabeled, train_semi

        unlabeled = load_unlabeled(options["unlabeled"], dataset.wavenumbers)  # fail before training
    command = command_line()
    with EpochProgress(config.epochs * config.members, enabled=not quiet) as progress:
        result = (train_semi(dataset, unlabeled, config, on_epoch=progress) if config.semi
                  else fit(dataset, config, on_epoch=progress))
    if options.get("unlabeled") is not None:
        options["unlabeled"] = str(options["unlabeled"])
    check_x = preprocess_dataset(dataset.subset(result.val_index[:64] if result.val_index.size
                                                else result.train_index[:64]), result.preprocessing)
    bundle = save_bundle(out, result, dataset, command=command,
                         options={"data": str(data), "out": str(out), **options}, check_x=check_x)
    if not quiet:
        m = result.metrics
        val = (f"validation top-1 {m['val_top1']:.1%}, top-3 {m['val_top3']:.1%} on {m['val_spectra']} spectra"
               if "val_top1" in m else "no validation split")
        click.echo(f"{bundle.model_id}: {len(bundle.classes)} classes, {result.epochs_run} epochs "
                   f"(best {result.best_epoch}), {val}, {result.seconds:.0f} s -> {bundle.path}")
        if "calibration" in m:
            c = m["calibration"]
            where = f"out-of-fold ({c['folds']}-fold)" if c.get("folds") else "validation"
            click.echo(f"temperature {c['temperature']:.3f} ({c.get('objective', 'nll')}): {where} ECE(15) "
                       f"{c['ece_before']:.3f} -> {c['ece_after']:.3f}, mean margin {c['mean_margin_before']:.3f} -> "
                       f"{c['mean_margin_after']:.3f}")
    _warn_if_poor(bundle)  # last, where an operator reading the end of the output sees it


def _warn_if_poor(bundle: Any) -> None:
    """One warning line on stderr when the bundle's figures look wrong (even with --quiet)."""
    from .quality import warning_line

    found = bundle.manifest.get("training", {}).get("warnings") or []
    if found:
        click.echo(warning_line(bundle.model_id, found), err=True)


def _check_semi(options: dict[str, Any]) -> None:
    """--semi needs --unlabeled, and --unlabeled/--semi-opt mean nothing without --semi."""
    if options.get("semi") and options.get("unlabeled") is None:
        raise ConfigError(f"--semi {options['semi']} needs --unlabeled FILE.npz (raw spectra without labels)")
    if not options.get("semi"):
        given = [o for o, k in (("--unlabeled", "unlabeled"), ("--semi-opt", "semi_opt")) if options.get(k)]
        if given:
            raise ConfigError(f"{' and '.join(given)}: only used with --semi {'|'.join(SEMI_METHODS)}")


def _config(options: dict[str, Any]) -> TrainConfig:
    """TrainConfig from the command's options: ``--aug`` items, then the ``--shift-tolerance`` rule."""
    from click.core import ParameterSource

    from .augment import parse_augment_options
    from .config import parse_semi_options
    from .tolerance import RULE_OPTIONS, apply_shift_tolerance

    kw = {k: v for k, v in options.items() if k not in ("aug", "shift_tolerance", "unlabeled", "semi_opt")}
    aug = parse_augment_options(options.get("aug") or ())
    config = TrainConfig(**kw, augment_config=aug, semi_config=parse_semi_options(options.get("semi_opt") or ()))
    ctx = click.get_current_context()
    if config.ensemble_archs and ctx.get_parameter_source("arch") != ParameterSource.COMMANDLINE:
        config = dataclasses.replace(config, arch=config.ensemble_archs[0])
    if options.get("shift_tolerance") is not None:
        keep = {k for k in RULE_OPTIONS if k not in ("max_shift", "p_shift")  # those two are --aug items
                and ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}
        keep |= {k for k in ("max_shift", "p_shift") if any(i.split("=")[0].strip() == k for i in options["aug"])}
        if any(ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE
               for k in ("dense", "dropout", "arch_options")):
            keep.add("arch")  # options of one network name it: the band does not choose another
        config = apply_shift_tolerance(config, options["shift_tolerance"], keep=keep)
    return config.check()


__all__ = ["train"]


def main() -> None:
    """``python -m trainer.cli``: the command standalone (errors as messages, exit code 1)."""
    from calibration.errors import RamanEdgeError

    try:
        train.main(standalone_mode=False)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        sys.exit(1)
    except RamanEdgeError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(getattr(e, "exit_code", 1))


if __name__ == "__main__":
    main()
