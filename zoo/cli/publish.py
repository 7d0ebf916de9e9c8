"""Publishing commands: `zoo index export` (a zoo index another team can `zoo source add`)."""
from __future__ import annotations

import click

from zoo.cli._app import catalog_option, cli, emit, json_option


@cli.group()
def index():
    """Zoo indexes of your own models (docs/index-format.md): export.

    \b
    Example:
        zoo index export -o site/index.json --base-url https://models.acme.org/zoo
    """


@index.command(name="export")
@click.argument("names", nargs=-1, metavar="[NAME[@REV]]...")
@click.option("-o", "--output", default="index.json", show_default=True, type=click.Path(dir_okay=False),
              help="The index file to write.")
@click.option("--base-url", metavar="URL",
              help="Where the output's folder will be served: the files are published in it "
                   "(NAME/REVISION/FILE) and the index points there [default: the files' own URLs].")
@click.option("--name", "index_name", help="The index's name [default: the output's file or folder name].")
@click.option("--description", help="A sentence about the index.")
@json_option
@catalog_option
def export(names, output, base_url, index_name, description, as_json, catalog):
    """Write a zoo index of NAMES (default: every model whose files are on disk).

    Each model goes in at its current revision (NAME@REV: that one) with its files' sizes and
    sha256, its revision, version and input spec. Serve the folder and another team follows it
    with `zoo source add NAME URL/index.json`.

    \b
    Example:
        zoo index export resnet18 mynet -o site/index.json --base-url https://models.acme.org/zoo
        zoo index export -o team.json
    """
    from zoo.publish import export_index

    done = export_index(names, output, base_url=base_url, index_name=index_name, description=description,
                        catalog=catalog)
    text = f"wrote {done.index}: {len(done.models)} model{'s' if len(done.models) != 1 else ''}"
    if done.files:
        text += f", {len(done.files)} file{'s' if len(done.files) != 1 else ''} ({done.bytes:,} bytes) beside it"
    emit(done.to_dict(), as_json, text)
