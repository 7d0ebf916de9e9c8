"""Provenance commands: sign (OpenSSF model signatures), lineage (where an artifact came from), bom (CycloneDX)."""
from __future__ import annotations

import click

from zoo.cli._app import cache_option, catalog_option, cli, echo, emit, json_option


@cli.command("sign")
@click.argument("name")
@click.option("--key", required=True, type=click.Path(dir_okay=False), metavar="KEY.pem",
              help="Elliptic-curve private key (PEM) to sign with.")
@click.option("--key-password", envvar="ZOO_KEY_PASSWORD", metavar="PASSWORD",
              help="Password of an encrypted key [env ZOO_KEY_PASSWORD; never printed].")
@click.option("--certificate", type=click.Path(dir_okay=False), metavar="CERT.pem",
              help="Sign with this X.509 certificate of the key (then --cert-chain is needed).")
@click.option("--cert-chain", "chain", multiple=True, type=click.Path(dir_okay=False), metavar="CHAIN.pem",
              help="The certificate's issuing CA certificates (repeat for several files).")
@cache_option
@catalog_option
@json_option
def sign_command(name, key, key_password, certificate, chain, cache_dir, catalog, as_json):
    """Sign a model's files, its converted ONNX and its lineage with OpenSSF Model Signing.

    A derived artifact (a conversion, a trained model) is signed with a statement of where it
    came from: its parents' digests, the converter and framework versions, the verified
    difference. `zoo verify --signatures` checks it later. Needs pip install 'zoo[provenance]'.

    \b
    Example:
        zoo sign bvlc_alexnet --key release.pem
        zoo sign my-classifier --key team.pem --certificate team.crt --cert-chain ca.pem
    """
    from zoo.signatures import sign

    check = sign(name, key=key, password=key_password, certificate=certificate, chain=list(chain),
                 catalog=catalog, cache_dir=cache_dir)
    emit({"model": name, **check.to_dict()}, as_json,
         f"{name}: {check.summary()}; {len(check.files)} files signed")


@cli.command("lineage")
@click.argument("name")
@cache_option
@catalog_option
@json_option
def lineage_command(name, cache_dir, catalog, as_json):
    """Print the chain from the publisher's files to a model's derived artifacts.

    Each step shows its digest, how it was made (converter, cut layer, training settings), the
    tools' versions and the figures that verified it; parents are found by digest in the catalog
    and the cache.

    \b
    Example:
        zoo lineage my-classifier
        zoo lineage bvlc_alexnet --json
    """
    from zoo.lineage import chain, render

    root = chain(name, catalog=catalog, cache_dir=cache_dir)
    emit(root.to_dict(), as_json, lambda: render(root))


@cli.command("bom")
@click.argument("name")
@click.option("-o", "--output", type=click.Path(dir_okay=False), metavar="BOM.cdx.json",
              help="Write the BOM here [default: print it].")
@cache_option
@catalog_option
def bom_command(name, output, cache_dir, catalog):
    """Write a CycloneDX 1.6 ML-BOM of a model and everything derived from it.

    Components: the model and its files (hashes, licence, model card with task, datasets and
    metrics), each conversion, cut, feature cache and trained head; the steps that made them as
    the formulation; dependencies between them. Validated against the CycloneDX schema before it
    is written. Needs pip install 'zoo[provenance]'.

    \b
    Example:
        zoo bom my-classifier -o my-classifier.cdx.json
    """
    from zoo.bom import write

    if output is not None:
        from zoo.destinations import prepare

        prepare(output, "--output")  # a folder made outside the working directory is said
    data, path = write(name, output, catalog=catalog, cache_dir=cache_dir)
    if path is None:
        emit(data, True)  # strict JSON: every control character escaped
    else:
        echo(f"wrote the ML-BOM of {name} to {path}: {len(data.get('components', []))} components, "
             f"CycloneDX {data['specVersion']}, schema-valid")
