"""`raman-edge model ...`: install, list, activate (roll back), remove and verify model bundles."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click


def _state_dir_option(f: Any) -> Any:
    return click.option("--state-dir", type=click.Path(path_type=Path, file_okay=False), required=True,
                        envvar="RAMAN_EDGE_STATE_DIR", show_envvar=True,
                        help="The daemon's state directory (holds models/ and active.json).")(f)


def _trust_options(f: Any) -> Any:
    f = click.option("--allow-unsigned", is_flag=True,
                     help="DEVELOPMENT ONLY: accept bundles without a valid signature from a trusted key.")(f)
    return click.option("--trusted-keys", type=click.Path(path_type=Path, exists=True), multiple=True,
                        envvar="RAMAN_EDGE_TRUSTED_KEYS", show_envvar=True,
                        help="Trusted public key (*.public.pem) or HMAC key (*.hmac) file, or a directory of "
                             "them; repeatable. Default: STATE_DIR/trusted-keys when it exists.")(f)


def _trust(registry: Any, trusted_keys: tuple[Path, ...]) -> Any:
    return registry.trusted_keys(list(trusted_keys) if trusted_keys else None)


def _describe(entry: Any) -> str:
    sig = entry.signature or {}
    how = sig.get("status", "?")
    if how == "signed":
        how = f"signed by {sig.get('key_name') or '?'} ({sig.get('key_id')})"
    return how


@click.group(name="model")
def model() -> None:
    """Install signed model bundles and choose the active one (the running daemon picks it up)."""


@model.command()
@click.argument("bundle", type=click.Path(path_type=Path, exists=True))
@_state_dir_option
@_trust_options
@click.option("--no-activate", is_flag=True, help="Install only; activate later with `model active --set`.")
def install(bundle: Path, state_dir: Path, trusted_keys: tuple[Path, ...], allow_unsigned: bool,
            no_activate: bool) -> None:
    """Verify BUNDLE (signature, file hashes, graphs), copy it into the registry and activate it.

    BUNDLE may also be a head file (`raman-edge head export`): it is composed with the
    installed parent's backbone (matched by sha256) and then checked like a bundle.
    A bundle that fails any check is refused and the active model is untouched.
    The previous model stays installed (`model active --previous` rolls back).
    """
    from edge.registry import Registry

    reg = Registry(state_dir)
    res = reg.install(bundle, _trust(reg, trusted_keys), allow_unsigned=allow_unsigned, activate=not no_activate)
    verb = "already installed as" if res.reused else "installed as"
    click.echo(f"{bundle}: {res.signature.describe()}; {verb} {res.entry.name}")
    if res.activated:
        click.echo(f"active model: {res.entry.name} (previous: {res.previous or 'none'})")


@model.command(name="list")
@_state_dir_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_(state_dir: Path, as_json: bool) -> None:
    """List installed models; the active one is marked with '*'."""
    from edge.registry import Registry

    entries = Registry(state_dir).entries()
    if as_json:
        click.echo(json.dumps([e.as_dict() for e in entries], indent=2))
        return
    if not entries:
        click.echo(f"no models installed in {state_dir}")
        return
    for e in entries:
        mark = "*" if e.active else " "
        if e.problem:
            click.echo(f"{mark} {e.name:<40} DAMAGED: {e.problem}")
        else:
            click.echo(f"{mark} {e.name:<40} {e.classes or '?':>4} classes  installed {(e.installed_utc or '?')[:19]}Z  "
                       f"{_describe(e)}")


@model.command()
@_state_dir_option
@click.option("--set", "set_ref", metavar="ID", default=None,
              help="Activate this installed model (entry name, model id, or unique prefix).")
@click.option("--previous", is_flag=True, help="Roll back to the model active before the current one.")
@_trust_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def active(state_dir: Path, set_ref: str | None, previous: bool, trusted_keys: tuple[Path, ...],
           allow_unsigned: bool, as_json: bool) -> None:
    """Show the active model, or switch it (--set ID, --previous); the target is verified first."""
    from calibration.errors import ConfigError
    from edge.registry import Registry

    if set_ref and previous:
        raise ConfigError("give either --set ID or --previous, not both")
    reg = Registry(state_dir)
    if set_ref:
        reg.set_active(set_ref, _trust(reg, trusted_keys), allow_unsigned)
    elif previous:
        reg.rollback(_trust(reg, trusted_keys), allow_unsigned)
    ptr = reg.active()
    if as_json:
        click.echo(json.dumps(ptr.as_dict() if ptr else None, indent=2))
    elif ptr is None:
        click.echo(f"no active model in {state_dir}")
    else:
        click.echo(f"{ptr.entry}  (model {ptr.model_id}, since {ptr.switched_utc}; previous: {ptr.previous or 'none'})")


@model.command()
@click.argument("ref", metavar="ID")
@_state_dir_option
def remove(ref: str, state_dir: Path) -> None:
    """Delete an installed model that is not active."""
    from edge.registry import Registry

    entry = Registry(state_dir).remove(ref)
    click.echo(f"removed {entry.name}")


@model.command()
@click.argument("bundle", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--trusted-keys", type=click.Path(path_type=Path, exists=True), multiple=True,
              envvar="RAMAN_EDGE_TRUSTED_KEYS", show_envvar=True,
              help="Trusted key file or directory; repeatable.")
@click.option("--allow-unsigned", is_flag=True, help="DEVELOPMENT ONLY: accept an unsigned bundle.")
def verify(bundle: Path, trusted_keys: tuple[Path, ...], allow_unsigned: bool) -> None:
    """Check BUNDLE as the rover would (trust policy, hashes, graphs) without installing it."""
    from edge.signing import as_trusted_keys, load_trusted_bundle

    b, info = load_trusted_bundle(bundle, as_trusted_keys(list(trusted_keys)), allow_unsigned)
    click.echo(f"{bundle}: OK: model {b.model_id}, {len(b.classes)} classes; {info.describe()}")


COMMAND = model
