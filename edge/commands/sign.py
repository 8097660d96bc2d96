"""`raman-edge sign BUNDLE --key PRIVATE_KEY`: sign a model bundle on the ground."""
from __future__ import annotations

from pathlib import Path

import click


@click.command(name="sign")
@click.argument("bundle", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--key", "key_path", type=click.Path(path_type=Path, exists=True, dir_okay=False), required=True,
              help="Ed25519 private key (NAME.private.pem) or HMAC key (NAME.hmac).")
@click.option("--no-check", is_flag=True, help="Do not load the bundle before signing it (not recommended).")
def sign(bundle: Path, key_path: Path, no_check: bool) -> None:
    """Sign BUNDLE: writes BUNDLE/signature.json over its manifest (which hashes every ONNX file).

    The bundle is loaded first (hashes, graphs) so that a broken bundle is never signed.
    A bundle inside the installed package (the shipped model) is refused: copy it first.
    """
    from edge.bundle import refuse_package_path
    from edge.signing import sign_bundle

    refuse_package_path(bundle, "BUNDLE")  # the shipped model is trusted by its content; it is never signed in place
    info = sign_bundle(bundle, key_path, check=not no_check)
    click.echo(f"{bundle}: signed ({info.algorithm}, key {info.key_name} {info.key_id}); "
               f"manifest sha256 {info.manifest_sha256}")


COMMAND = sign
