"""`raman-edge head ...`: add minerals to a model by training a new softmax head (no torch), export it alone."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from ..options import FiniteFloatRange


def _kb(n: int) -> str:
    return f"{n / 1024:.1f} KiB"


@click.group(name="head")
def head() -> None:
    """New minerals on a frozen backbone: train a head (add), give a bundle support (support), uplink it (export)."""


@head.command()
@click.option("--model", "model", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True,
              help="Parent bundle (its backbone and preprocessing are kept bit-identical).")
@click.option("--data", type=click.Path(path_type=Path, exists=True, dir_okay=False), required=True,
              help="Labelled RAW spectra of the new minerals (.npz: spectra, labels, wavenumbers).")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="New bundle directory (replaced atomically when it exists; never inside the installed package).")
@click.option("--replace", is_flag=True,
              help="Head over the data's classes alone (the paper's protocol) instead of old + new classes.")
@click.option("--l2", type=FiniteFloatRange(min=0.0), default=None, help="Ridge penalty (default: edge.head.DEFAULT_L2).")
@click.option("--exemplars", type=click.IntRange(min=1), default=None,
              help="Exemplar feature vectors kept per new class in the bundle's support.")
@click.option("--synthetic-support", is_flag=True,
              help="MODEL has no support part and its training data is gone: synthesise old-class features from "
                   "its head (old classes lose more accuracy than with real support; docs/heads.md).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
def add(model: Path, data: Path, out: Path, replace: bool, l2: float | None, exemplars: int | None,
        synthetic_support: bool, seed: int) -> None:
    """Train a head over MODEL's classes plus the new ones in DATA and write the bundle OUT.

    The backbone file is copied byte for byte; the old classes are kept through MODEL's
    support part (create it with `raman-edge head support`), unless --replace.
    """
    from edge.bundle import refuse_package_path
    from edge.head import add_head

    refuse_package_path(out, "--out")
    opts: dict = {"command": shlex.join(["raman-edge", *sys.argv[1:]])}
    if l2 is not None:
        opts["l2"] = l2
    if exemplars is not None:
        opts["exemplars"] = exemplars
    if synthetic_support:
        opts["synthetic_support"] = True
    b = add_head(model, data, out, replace=replace, seed=seed, **opts)
    p = b.manifest["parent"]
    tr = b.manifest["training"]
    m = tr["metrics"]
    kept = len(b.classes) - len(p["classes_added"])
    if tr["fit"].get("synthetic_support_classes"):
        click.echo(f"  warning: old classes kept through SYNTHETIC support ({tr['fit']['synthetic_support_classes']} "
                   "classes; see docs/heads.md)")
    names = f"({', '.join(p['classes_added'][:8])}{', …' if len(p['classes_added']) > 8 else ''})"
    if p["replaced"]:
        click.echo(f"{out}: model {b.model_id}: head replaced by one over {len(b.classes)} classes {names}")
    else:
        click.echo(f"{out}: model {b.model_id}: {kept} kept + {len(p['classes_added'])} new classes {names}")
    click.echo(f"  backbone {p['backbone_sha256'][:16]}… unchanged (parent {p['model_id']}); "
               f"{tr['data']['used']} spectra used, {tr['data']['skipped_nonfinite']} skipped (NaN/inf)")
    if "heldout_top1" in m:
        click.echo(f"  held-out new spectra: top-1 {m['heldout_top1']:.3f} on {m['heldout_spectra']} "
                   f"(cross-fitted); temperature {b.temperature:.3g}")
    else:
        click.echo(f"  temperature {b.temperature:.3g} ({tr['temperature_source']})")


@head.command()
@click.option("--model", "model", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True,
              help="Bundle to give a support part (e.g. one trained before support existed).")
@click.option("--data", type=click.Path(path_type=Path, exists=True, dir_okay=False), required=True,
              help="The model's training spectra (raw .npz): every class of the model must occur.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Bundle to write (may be MODEL itself, its signature must then be renewed; never inside the "
                   "installed package).")
@click.option("--exemplars", type=click.IntRange(min=1), default=None, help="Exemplars kept per class.")
def support(model: Path, data: Path, out: Path, exemplars: int | None) -> None:
    """Write a copy of MODEL with backbone-feature statistics and exemplars of its classes (for `head add`)."""
    from edge.bundle import refuse_package_path
    from edge.head import DEFAULT_EXEMPLARS, add_support

    refuse_package_path(out, "--out")
    b = add_support(model, data, out, exemplars=exemplars or DEFAULT_EXEMPLARS)
    s = b.manifest["support"]
    click.echo(f"{out}: model {b.model_id} with support for {s['classes']} classes ({s['exemplars']} exemplars, "
               f"{_kb(b.part_path('support').stat().st_size)})")


@head.command()
@click.option("--model", "model", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True,
              help="Bundle whose head (and support) to export; the rover must hold its backbone.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True, help="Head file to write.")
@click.option("--key", "key_path", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="Ed25519 private key (NAME.private.pem) or HMAC key (NAME.hmac) to sign with; default: the "
                   "bundle's own signature.json.")
@click.option("--unsigned", is_flag=True, help="DEVELOPMENT ONLY: write an unsigned head file.")
def export(model: Path, out: Path, key_path: Path | None, unsigned: bool) -> None:
    """Write MODEL without its backbone as one small signed file for `raman-edge model install FILE`."""
    from edge.bundle import refuse_package_path
    from edge.headfile import export_head

    refuse_package_path(out, "--out")
    info = export_head(model, out, key=key_path, allow_unsigned=unsigned)
    click.echo(f"{out}: head of model {info.model_id}, {_kb(info.bytes)} ({info.bytes / info.bundle_bytes:.1%} of the "
               f"{_kb(info.bundle_bytes)} bundle); {'signed' if info.signed else 'UNSIGNED'}")


@head.command()
@click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--parent", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True,
              help="The parent bundle (the backbone the rover holds).")
@click.option("--trusted-keys", type=click.Path(path_type=Path, exists=True), multiple=True,
              envvar="RAMAN_EDGE_TRUSTED_KEYS", show_envvar=True, help="Trusted key file or directory; repeatable.")
@click.option("--allow-unsigned", is_flag=True, help="DEVELOPMENT ONLY: accept an unsigned head file.")
def verify(file: Path, parent: Path, trusted_keys: tuple[Path, ...], allow_unsigned: bool) -> None:
    """Check FILE as a rover holding PARENT would (signature, hashes, graphs) before uplinking it."""
    from edge.headfile import verify_head_file

    b, info = verify_head_file(file, parent, list(trusted_keys), allow_unsigned)
    click.echo(f"{file}: OK: model {b.model_id}, {len(b.classes)} classes on backbone "
               f"{b.manifest['files']['backbone']['sha256'][:16]}…; {info.describe()}")


@head.command()
@click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
def show(file: Path) -> None:
    """Describe a head file: model, parent backbone, classes, members, signature (no trust decision)."""
    import json

    from edge.headfile import describe_head_file

    click.echo(json.dumps(describe_head_file(file), indent=2))


COMMAND = head
