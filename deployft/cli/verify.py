"""`deployft verify BUNDLE` (check every file without loading the model) and `deployft keygen` (a signing key pair)."""

from __future__ import annotations

import click


@click.command("verify")
@click.argument("bundle", type=click.Path(file_okay=False, path_type=str))
@click.option("--public-key", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Ed25519 public key (PEM): also require a matching signature of the manifest.")
def verify(bundle: str, public_key: str | None) -> None:
    """Check BUNDLE against its deployft.json without loading it; exit 1 on any mismatch.

    Checks the manifest digest, that every file name stays inside the folder, the sha256 of every listed file,
    that no file the runtime reads was added, and with --public-key the manifest's signature.

    \b
    deployft verify bundles/clf
    deployft verify bundles/clf --public-key sign.pub.pem
    """
    from ..runtime import verify_bundle

    result = verify_bundle(bundle, public_key)
    for name in result.unlisted:
        click.echo(f"note: {name} is not listed in deployft.json; the runtime never reads it", err=True)
    signed = f", signature matches {public_key}" if public_key else ""
    click.echo(f"OK: {bundle}: deployft.json and {len(result.files)} file(s) ({result.bytes / 1e6:.1f} MB) "
               f"match{signed}")


@click.command("keygen")
@click.option("--private-key", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="Where to write the private key (PEM); keep it secret, pass it to deployft export --sign-key.")
@click.option("--public-key", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="Where to write the public key (PEM); give it to whoever loads the bundles.")
def keygen(private_key: str, public_key: str) -> None:
    """Write a new Ed25519 key pair for signing bundles.

    \b
    deployft keygen --private-key sign.pem --public-key sign.pub.pem
    """
    from ..signing import generate_keys

    private, public = generate_keys(private_key, public_key)
    click.echo(f"wrote {private} (private, keep secret) and {public} (public)")
