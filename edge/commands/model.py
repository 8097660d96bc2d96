"""`raman-edge model ...`: install, list, activate (roll back), remove and verify model bundles."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from ..options import FiniteFloatRange

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


def _wait_option(f: Any) -> Any:
    return click.option("--wait", "wait_s", type=FiniteFloatRange(min=0, max=600), default=None, metavar="SECONDS",
                        help="When a daemon runs on STATE_DIR, wait up to SECONDS for it to take the newly active "
                             "model or refuse it (default: twice its check interval plus 5 s; 0: do not ask).")(f)


def _daemon_status(state_dir: Path) -> dict[str, Any] | None:
    """The status document of the daemon running on ``state_dir``, or None when none answers."""
    from calibration.errors import RamanEdgeError
    from edge.status import query

    try:
        return query(state_dir, timeout=1.0)
    except RamanEdgeError:
        return None


def _daemon_verdict(s: dict[str, Any], ptr: Any) -> str | None:
    """``"accepted"`` or ``"refused"`` once the daemon answered the switch ``ptr``, else None."""
    refused = s.get("model_refused") or {}
    if refused.get("switch_id") and refused.get("switch_id") == ptr.switch_id:
        return "refused"
    if "model_switch_id" not in s:  # a daemon that does not report switches: judge by the model it runs
        return "accepted" if s.get("model_id") == ptr.model_id else None
    if s.get("model_switch_id") == ptr.switch_id and s.get("model_entry") == ptr.entry:
        return "accepted"
    return None


def await_daemon(state_dir: Path, ptr: Any, wait_s: float | None) -> None:
    """Tell the operator whether the daemon running on ``state_dir`` took the switch to ``ptr``.

    Prints one line when no daemon runs (the model is used at its next start) or
    when it took the model.

    Raises
    ------
    ConfigError
        The daemon refused the model (its trust configuration does not admit it,
        or its copy fails verification there): exit status 2.
    RamanEdgeError
        The daemon gave no answer within the wait, or stopped answering: exit status 1.
    """
    from calibration.errors import ConfigError, RamanEdgeError

    if wait_s == 0:
        return
    s = _daemon_status(state_dir)
    if s is None:
        click.echo(f"no daemon is running on {state_dir}; it will start with {ptr.entry}")
        return
    interval = s.get("model_check_interval_s")
    budget = wait_s if wait_s is not None else 2 * float(interval if isinstance(interval, (int, float)) else 1.0) + 5.0
    deadline = time.monotonic() + budget
    while True:
        verdict = _daemon_verdict(s, ptr)
        if verdict == "accepted":
            click.echo(f"the running daemon (pid {s.get('pid')}) switched to {ptr.entry} (model {s.get('model_id')})")
            return
        if verdict == "refused":
            raise ConfigError(f"the running daemon (pid {s.get('pid')}) refused {ptr.entry}: "
                              f"{s['model_refused'].get('reason')}; it keeps running model {s.get('model_id')}")
        if time.monotonic() >= deadline:
            raise RamanEdgeError(f"the running daemon (pid {s.get('pid')}) has not taken {ptr.entry} within "
                                 f"{budget:g} s (it runs model {s.get('model_id')}); "
                                 f"see `raman-edge status --state-dir {state_dir}`")
        time.sleep(0.2)
        s = _daemon_status(state_dir)
        if s is None:
            raise RamanEdgeError(f"the daemon on {state_dir} stopped answering before it took {ptr.entry}; "
                                 "it will load the active model when it starts again")


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
@_wait_option
def install(bundle: Path, state_dir: Path, trusted_keys: tuple[Path, ...], allow_unsigned: bool,
            no_activate: bool, wait_s: float | None) -> None:
    """Verify BUNDLE (signature, file hashes, graphs), copy it into the registry and activate it.

    BUNDLE may also be a head file (`raman-edge head export`): it is composed with the
    installed parent's backbone (matched by sha256) and then checked like a bundle.
    A bundle that fails any check is refused and the active model is untouched.
    The previous model stays installed (`model active --previous` rolls back).
    The bundle's validation figures (as its manifest records them) are shown.

    When a daemon runs on STATE_DIR, the command then waits (--wait) for it to
    switch to the new model or refuse it, and says which.

    \b
    Exit status: 0 installed (and taken by the running daemon, if one runs);
    1 bundle refused as damaged, or the daemon gave no answer within --wait;
    2 bundle unsigned or signed by an untrusted key, a bad option or key file,
      or the running daemon refused the model (its trust configuration differs:
      the model stays installed and active; the daemon keeps its old model).
    """
    from edge.registry import Registry

    reg = Registry(state_dir)
    res = reg.install(bundle, _trust(reg, trusted_keys), allow_unsigned=allow_unsigned, activate=not no_activate)
    verb = "already installed as" if res.reused else "installed as"
    click.echo(f"{bundle}: {res.signature.describe()}; {verb} {res.entry.name}")
    click.echo(f"  {res.entry.classes or '?'} classes; {res.entry.validation_text or 'no validation figures recorded'}")
    if res.activated:
        click.echo(f"active model: {res.entry.name} (previous: {res.previous or 'none'})")
        ptr = reg.active()
        if ptr is not None and ptr.entry == res.entry.name:
            await_daemon(state_dir, ptr, wait_s)


@model.command(name="list")
@_state_dir_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_(state_dir: Path, as_json: bool) -> None:
    """List installed models; the active one is marked with '*'.

    Each line shows the bundle's validation figures as its manifest records them.
    A damaged active-model pointer (active.json) is reported on one line on
    stderr; the listing still follows, with no entry marked active.
    """
    from calibration.errors import RamanEdgeError
    from edge.registry import Registry

    reg = Registry(state_dir)
    try:
        reg.active()
    except RamanEdgeError as e:
        click.echo(f"raman-edge: warning: {e}", err=True)
    entries = reg.entries()
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
                       f"{_describe(e)}; {e.validation_text or 'no validation figures recorded'}")


@model.command()
@_state_dir_option
@click.option("--set", "set_ref", metavar="ID", default=None,
              help="Activate this installed model (entry name, model id, or unique prefix).")
@click.option("--previous", is_flag=True, help="Roll back to the model active before the current one.")
@_trust_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_wait_option
def active(state_dir: Path, set_ref: str | None, previous: bool, trusted_keys: tuple[Path, ...],
           allow_unsigned: bool, as_json: bool, wait_s: float | None) -> None:
    """Show the active model, or switch it (--set ID, --previous); the target is verified first.

    After a switch, a daemon running on STATE_DIR is asked whether it took the
    model, as for `model install` (--wait).  A damaged active.json is one error
    line (exit status 2); --set ID replaces it.

    \b
    Exit status: 0 done; 1 no such entry, or the daemon gave no answer within --wait;
    2 damaged active.json, target not trusted, or the running daemon refused it.
    """
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
    if ptr is not None and (set_ref or previous) and not as_json:
        await_daemon(state_dir, ptr, wait_s)


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
