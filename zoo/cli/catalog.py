"""Catalog commands: search, info, add, scan, list, rm, source."""
from __future__ import annotations

import datetime as _dt
import os
from typing import TYPE_CHECKING, Any

import click

from zoo._redact import mask_secrets
from zoo._terminal import safe_line
from zoo.cli._app import catalog_option, cli, echo, emit, json_option, quiet_option, table
from zoo.records import FRAMEWORKS
from zoo.units import human_size

if TYPE_CHECKING:
    from zoo.records import Model

# Imports of zoo.catalog & co. happen inside the commands: `zoo --help` stays instant.


def _rows(models: list[Model]) -> str:
    rows = []
    for m in models:
        state = "fetched" if m.is_local else ("removed upstream" if m.removed_upstream else
                                              "missing" if any(a.path for a in m.artifacts if a.role != "onnx") else "")
        if m.meta.get("damaged"):
            state = f"{state}, damaged" if state else "damaged (see zoo info)"
        rows.append([m.name, m.framework, m.task, m.dataset, m.source, state])
    return table(rows, ["NAME", "FRAMEWORK", "TASK", "DATASET", "SOURCE", "LOCAL"])


def _spec_options(func):
    """The input spec options of add, scan and edit (checked by zoo.preprocessing)."""
    options = [
        click.option("--mean", metavar="R,G,B", help="Per-channel mean subtracted (after --scale), e.g. 104,117,123."),
        click.option("--std", metavar="R,G,B", help="Per-channel std divided by, e.g. 0.229,0.224,0.225."),
        click.option("--scale", metavar="X", help="Pixels (0-255) multiplied by X first, e.g. 0.00392 (1/255)."),
        click.option("--channel-order", type=click.Choice(["RGB", "BGR"], case_sensitive=False),
                     help="Channel order the net was trained on."),
        click.option("--layout", type=click.Choice(["NCHW", "NHWC"], case_sensitive=False),
                     help="Input layout (channels first or last)."),
        click.option("--resize", metavar="N|HxW", help="Resize images first: the shorter side to N, or exactly HxW."),
        click.option("--crop", metavar="N|HxW", help="Then a centre crop of NxN or HxW."),
        click.option("--input-spec", "spec_file", type=click.Path(dir_okay=False), metavar="FILE.json",
                     help="All of these as a JSON object of InputSpec fields (options given win)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _spec(spec_file, **options):
    """The input spec the options give, for the library (None when none is given)."""
    given = {k: v for k, v in options.items() if v is not None}
    if spec_file is None and not given:
        return None
    from zoo.preprocessing import parse

    return parse(spec_file, **given)


def _filters(func):
    func = click.option("--local/--remote", "local", default=None,
                        help="Only models whose files are on disk (--local) or not (--remote).")(func)
    func = click.option("--source", help="Only models from this zoo (caffe, tensorflow, local, a source).")(func)
    func = click.option("--tag", help="Only models with this tag.")(func)
    func = click.option("--dataset", help="Only models trained on this dataset, e.g. imagenet.")(func)
    func = click.option("--task", help="Only models for this task, e.g. image-classification.")(func)
    func = click.option("--framework", type=click.Choice(FRAMEWORKS, case_sensitive=False),
                        help="Only models of this framework.")(func)
    return func


def _libraries(value: tuple[str, ...]) -> list[str] | None:
    return [x.strip() for v in value for x in v.split(",") if x.strip()] or None


def _hub_rows(models: list[Model]) -> str:
    rows = []
    for m in models:
        hub = m.meta.get("hub") or {}
        downloads = hub.get("downloads")
        rows.append([m.name, m.task, hub.get("library"), m.license, f"{downloads:,}" if downloads is not None else "",
                     "" if hub.get("stub") else ("fetched" if m.is_local else "pinned")])
    return (table(rows, ["NAME", "TASK", "LIBRARY", "LICENSE", "DOWNLOADS", "STATE"])
            + "\npin one with `zoo add hf://OWNER/REPO` (or just `zoo fetch NAME`)")


@cli.command()
@click.argument("query", required=False)
@_filters
@click.option("-n", "--limit", type=click.IntRange(min=0), default=20, show_default=True,
              help="Most results to show (0: all).")
@click.option("--hub", is_flag=True,
              help="Search the Hugging Face Hub live (most downloaded first) and keep what it finds here.")
@click.option("--author", help="With --hub: only this user's or organisation's models.")
@click.option("--library", "libraries", multiple=True, metavar="LIB[,LIB]",
              help="With --hub: only these libraries [default: the hf source's, else onnx,keras,tflite,tf].")
@click.option("--offline", is_flag=True,
              help="With --hub: search what earlier Hub searches stored [env ZOO_OFFLINE, HF_HUB_OFFLINE].")
@json_option
@catalog_option
def search(query, framework, task, dataset, tag, source, local, limit, hub, author, libraries, offline, as_json,
           catalog):
    """Find models by words in their name, description, architecture, task, dataset or tags.

    \b
    Example:
        zoo search resnet --framework caffe
        zoo search "feature vector" --source tensorflow --json
        zoo search resnet --hub --library onnx
    """
    if hub:  # only here: a plain search never imports the hub's client
        from zoo.hubs import search as hub_search

        models = hub_search(query, author=author, libraries=_libraries(libraries), limit=limit,
                            offline=offline or None, catalog=catalog)
        if not models and not as_json:
            echo(f"no Hub models match{' ' + repr(query) if query else ''}", err=True, one_line=True)
            return
        emit([m.to_dict() for m in models], as_json, lambda: _hub_rows(models))
        return
    if author or libraries or offline:
        raise click.UsageError("--author, --library and --offline go with --hub")
    from zoo.catalog import open_catalog

    cat = open_catalog(catalog, create=False)  # a read never creates a catalog
    filters = dict(framework=framework, task=task, dataset=dataset, tag=tag, source=source, local=local)
    models = cat.search(query, limit=limit or None, **filters)
    if not models and not as_json:
        echo(f"no models match{' ' + repr(query) if query else ''}; list everything with `zoo list`", err=True)
        return
    emit([m.to_dict() for m in models], as_json, lambda: _rows(models))
    if limit and len(models) == limit and not as_json:  # there may be more: say how many were left out
        total = cat.count(query, **filters)
        if total > len(models):
            echo(f"{len(models)} of {total} shown; `-n 0` for all", err=True)


def _report_lines(report: dict[str, Any]) -> list[str]:
    """A ConversionReport (as stored in the onnx artifact's meta) in a few lines."""
    how = [f"from {report.get('source_format')}"]
    if report.get("converter"):
        how.append(f"by {report['converter']}")
    if report.get("opset"):
        how.append(f"opset {report['opset']}")
    if report.get("input_layout"):
        how.append(f"input {report['input_layout']}")
    lines = ["conversion: " + ", ".join(how)]
    verified = report.get("verified")
    outputs = report.get("outputs") or []
    if verified is None:
        lines.append("verified:   not compared (no reference engine)")
    else:
        # A null difference is an output that cannot agree (NaN values, missing): its problem says why.
        worst = max((float("inf") if o.get("max_rel") is None else o["max_rel"] for o in outputs),
                    default=0.0)
        lines.append(f"verified:   {'yes' if verified else 'NO'} against "
                     f"{report.get('reference') or 'the source framework'}: max relative "
                     f"difference {worst:.2g} (tolerance {report.get('tolerance')})")
        lines += [f"problem:    {o.get('name')}: {o['problem']}" for o in outputs if o.get("problem")]
    lines += [f"note:       {note}" for note in report.get("notes") or []]
    return lines


def _local_fact(model: Model) -> str:
    if model.is_local:
        return "yes: every file is on disk"
    missing = [p for p in model.missing_files if not p.endswith(".onnx") or model.framework == "onnx"]
    if missing:
        how = "`zoo fetch`" if any(a.urls for a in model.artifacts) else "`zoo scan FOLDER` where it is now"
        return f"no: {missing[0]} is gone" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "") + \
            f"; find it again with {how}"
    return f"no (get the files with `zoo fetch {model.name}`)"


def _shown_shape(shape) -> str:
    return "(" + ", ".join("N" if k == 0 and d is None else ("?" if d is None else str(d))
                           for k, d in enumerate(shape)) + ")" if shape is not None else "?"


def _info_text(model: Model) -> str:
    lines = [model.name]
    facts = [("framework", model.framework), ("format", model.format), ("task", model.task),
             ("dataset", model.dataset), ("architecture", model.architecture),
             ("source", model.source), ("revision", model.revision),
             ("license", model.license), ("homepage", model.homepage),
             ("paper", model.paper),
             ("parameters", f"{model.parameters:,}" if model.parameters else None),
             ("tags", ", ".join(model.tags) if model.tags else None),
             ("local", _local_fact(model))]
    if model.removed_upstream:
        facts.append(("upstream", "removed from its source's index; kept because fetched"))
    same = model.meta.get("same_as")
    if isinstance(same, dict):
        facts.append(("recognised as", f"{same.get('model')} (its {same.get('file')} is a copy of that entry's; "
                                       f"{', '.join(same.get('inherited') or [])} taken from it)"))
    facts += _signature_facts(model)
    # Each value on its own line: a newline in an index's text must not forge a line of its own.
    lines += [f"  {k + ':':16}{safe_line(v)}" for k, v in facts if v is not None]
    if model.description:
        lines.append(f"  {'description:':16}{safe_line(model.description)}")
    graph_inputs = model.meta.get("graph_inputs")
    if graph_inputs:  # what the graph really takes, read from the file or its conversion
        lines.append("  inputs:")
        lines += [f"    {safe_line(i['name']):16}{safe_line(i['dtype']):8} {_shown_shape(i.get('shape'))}"
                  for i in graph_inputs]
    spec = model.input.to_dict()
    if graph_inputs:  # the inputs above say it: name, shape and dtype here could only disagree
        spec = {k: v for k, v in spec.items() if k not in ("name", "shape", "dtype")}
    elif spec.get("dtype") == "float32" and "shape" not in spec:
        spec.pop("dtype")  # the record's default, not a fact about this model
    if spec:
        lines.append("  input spec:" if graph_inputs else "  input:")
        lines += [f"    {safe_line(k) + ':':16}{safe_line(v)}" for k, v in spec.items()]
    if model.metrics:
        lines.append("  metrics:")
        lines += [f"    {safe_line(k) + ':':16}{safe_line(v)}" for k, v in model.metrics.items()]
    for edit in model.meta.get("edits") or []:
        lines.append(f"  {'edited:':16}{safe_line(edit.get('at'))}: {safe_line(', '.join(edit.get('fields') or []))}")
    meta = {k: v for k, v in model.meta.items() if k not in ("same_as", "edits", "graph_inputs")}
    if meta:
        lines.append("  meta:")
        lines += [f"    {safe_line(k) + ':':16}{safe_line(v)}" for k, v in meta.items()]
    lines.append("  files:")
    for a in model.artifacts:
        size = f" ({human_size(a.size)})" if a.size is not None else ""
        lines.append(f"    {a.role}: {a.filename}{size}")
        for url in a.urls:
            lines.append(f"      url:        {url}")
        if a.checksum:
            lines.append(f"      checksum:   {a.checksum}")
        elif a.meta.get("checksum_published") is False:
            lines.append("      checksum:   none published")
        if a.extract:
            members = a.meta.get("members")
            lines.append(f"      extract:    {a.extract}" + (f" -> {members}" if members else ""))
        if a.path:
            where = a.path if os.path.exists(a.path) else f"{a.path} (missing!)"
            lines.append(f"      on disk:    {where}")
            if a.sha256:
                lines.append(f"      sha256:     {a.sha256}")
        else:
            lines.append("      on disk:    not fetched")
        if a.meta.get("manual"):
            lines.append(f"      get it:     {a.meta['manual']}")
        if a.meta.get("note") and not a.checksum:
            lines.append(f"      note:       {a.meta['note']}")
        report = a.meta.get("report")
        if isinstance(report, dict):
            lines += [f"      {line}" for line in _report_lines(report)]
        sandbox = a.meta.get("sandbox")
        if isinstance(sandbox, dict) and sandbox.get("process") == "child":
            lines.append(f"      sandbox:    {sandbox.get('summary') or ('active' if sandbox.get('active') else 'none')}")
    return "\n".join(lines)


def _signature_facts(model: Model) -> list[tuple[str, str]]:
    """ "signed by ..., verified" / "signature FAILED: ..." per signature, or "unsigned"."""
    published = any(a.role == "signature" and a.meta.get("by") != "zoo" for a in model.artifacts)
    facts = []
    for by, label in (("publisher", "signature"), ("zoo", "zoo signature")):
        check = model.signature.get(by)
        if check:
            from zoo.signing import SignatureCheck

            done = SignatureCheck.from_dict(check)
            facts.append((label, f"{done.summary()} ({_when(done.checked_at)})"))
        elif by == "publisher" and published:
            facts.append((label, f"published, not verified yet (`zoo fetch {model.name}` verifies it, "
                                 "with pip install 'zoo[provenance]')"))
    return facts or [("signature", "unsigned")]


@cli.command()
@click.argument("name", required=False)
@click.option("--paths", is_flag=True, help="Say which catalog and cache are in use and why (as `zoo --where`).")
@json_option
@catalog_option
def info(name, paths, as_json, catalog):
    """Everything known about a model (NAME or NAME@REVISION): metadata, input spec, files on disk.

    \b
    Example:
        zoo info bvlc_alexnet
        zoo info --paths
    """
    if paths or not name:
        if not paths:
            raise click.UsageError("give a model NAME, or --paths")
        from zoo.cli._where import where_text
        from zoo.config import where

        emit(where(catalog), as_json, lambda: where_text(catalog))
        return
    from zoo.catalog import open_catalog

    cat = open_catalog(catalog, create=False)
    model = cat.get(name)
    revisions = cat.revisions(name)
    data = {**model.to_dict(), "revisions": [r.to_dict() for r in revisions]}
    emit(data, as_json, lambda: _info_text(model) + _revisions_text(model, revisions))


def _revisions_text(model: Model, revisions: list) -> str:
    if not revisions:
        return ""
    lines = ["  revisions:"]
    for r in revisions:
        mark = "*" if r.revision == model.revision else " "
        lines.append(f"   {mark}{r.label()}  digest {r.digest[:12]}" + (f"  (zoo fetch {model.name.split('@')[0]}@{r.revision})"
                                                                          if not r.current else ""))
    return "\n" + "\n".join(lines)


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str), metavar="PATH [WEIGHTS]")
@click.option("--name", help="Name in the catalog [default: the file or folder stem].")
@click.option("--task", help="What the model does, e.g. image-classification.")
@click.option("--dataset", help="What it was trained on, e.g. imagenet.")
@click.option("--tag", "tags", multiple=True, help="A tag (repeat for several).")
@click.option("--description", help="A sentence about the model.")
@click.option("--input", "inputs", multiple=True, metavar="NAME=SHAPE[:DTYPE]",
              help="TorchScript: a forward() tensor, e.g. x=1x512 or image=Nx3x224x224:float32 (N: dynamic). "
                   "Repeat for several.")
@click.option("--arg", "args", multiple=True, metavar="NAME=VALUE",
              help="TorchScript: a non-tensor forward() argument, e.g. sr=16000. Repeat for several.")
@_spec_options
@json_option
@catalog_option
def add(paths, name, task, dataset, tags, description, inputs, args, spec_file, as_json, catalog, **spec):
    """Register a model file or SavedModel folder (the format is detected from its content), or a Hub model.

    hf://OWNER/REPO[@REVISION][/PATH] registers a Hugging Face Hub model pinned to its commit.

    Formats: ONNX, TF SavedModel folder, Keras .keras/.h5, frozen GraphDef .pb, TFLite,
    Caffe .prototxt + .caffemodel (give both, or either one to find the other beside it),
    TorchScript .pt (with --input/--arg when its forward() needs more than one image tensor).
    --mean/--std/--scale/--channel-order/--layout/--resize/--crop (or --input-spec FILE.json)
    say how images become its input. A file that is a copy of a published catalog entry's
    (same checksum) is recognised as that model and takes its input spec, licence and description.

    \b
    Example:
        zoo add exports/cats.onnx --task image-classification --tag cats
        zoo add deploy.prototxt weights.caffemodel --name my_net
        zoo add vad.pt --input x=1x512 --arg sr=16000
        zoo add resnet.onnx --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 --scale 0.00392 --resize 256 --crop 224
        zoo add hf://onnx-community/resnet-18
    """
    from zoo.hubs import is_hub_ref

    if is_hub_ref(paths[0]):
        from zoo.hubs import add as hub_add

        if (len(paths) > 1 or task or dataset or tags or description or inputs or args or spec_file
                or any(v not in (None, ()) for v in spec.values())):
            raise click.UsageError("a Hub model (hf://...) takes only --name: its facts come from the Hub")
        model = hub_add(paths[0], name=name, catalog=catalog)
        others = (model.meta.get("hub") or {}).get("other_models")
        files = ", ".join(a.meta.get("hub_path", a.filename) for a in model.artifacts)
        emit(model.to_dict(), as_json, f"added {model.name} ({model.framework}, {model.format}) from "
             f"{paths[0]} at commit {model.revision}: {files}; get the files with `zoo fetch {model.name}`"
             + (f"\nalso convertible there: {', '.join(others)} (add one with hf://OWNER/REPO/PATH --name NAME)"
                if others else ""))
        return
    from zoo.local import add as run_add

    model = run_add(*paths, name=name, task=task, dataset=dataset, tags=tags, description=description,
                    inputs=inputs, args=args, input_spec=_spec(spec_file, **spec), catalog=catalog)
    files = ", ".join(a.path for a in model.artifacts)
    same = model.meta.get("same_as")
    note = (f"\nrecognised as {same['model']} (same {same['file']}): its input spec, licence and description "
            f"are used") if isinstance(same, dict) else ""
    emit(model.to_dict(), as_json, f"added {model.name} ({model.framework}, {model.format}): {files}{note}")


@cli.command()
@click.argument("name")
@_spec_options
@click.option("--task", help="What the model does, e.g. image-classification.")
@click.option("--dataset", help="What it was trained on, e.g. imagenet.")
@click.option("--description", help="A sentence about the model.")
@click.option("--license", "license_", metavar="LICENSE", help="Its licence, e.g. apache-2.0.")
@json_option
@catalog_option
def edit(name, spec_file, task, dataset, description, license_, as_json, catalog, **spec):
    """Change a model's input spec (the fields given; the others stay) or its task, dataset,
    description or licence. Each edit is recorded and shown by `zoo info`.

    \b
    Example:
        zoo edit my_net --mean 104,117,123 --channel-order BGR --resize 256 --crop 227
        zoo edit my_net --input-spec spec.json
    """
    from zoo.local import edit as run_edit

    model = run_edit(name, input_spec=_spec(spec_file, **spec), task=task, dataset=dataset,
                     description=description, license=license_, catalog=catalog)
    changed = ", ".join((model.meta.get("edits") or [{}])[-1].get("fields") or [])
    emit(model.to_dict(), as_json, f"edited {model.name}: {changed}")


@cli.command()
@click.argument("folder", type=click.Path(path_type=str))
@_spec_options
@json_option
@quiet_option
@catalog_option
def scan(folder, spec_file, as_json, quiet, catalog, **spec):
    """Register every model under a folder. Safe to re-run: moved and changed files are noticed.

    The input spec options apply to the models added; a copy of a published entry's file
    takes that entry's spec.

    \b
    Example:
        zoo scan ~/models
        zoo scan ~/caffe-nets --mean 104,117,123 --channel-order BGR
    """
    from zoo.local import scan as run_scan

    result = run_scan(folder, input_spec=_spec(spec_file, **spec), catalog=catalog)
    if as_json:
        emit(result.to_dict(), True)
        return
    for path, error in result.problems:
        echo(f"warning: skipped {error}", err=True, one_line=True)
    if not quiet:
        for what in ("added", "moved", "changed", "missing"):
            for name in getattr(result, what):
                echo(f"{what:9} {name}", one_line=True)
    echo(f"{len(result.added)} added, {len(result.unchanged)} unchanged, "
               f"{len(result.moved)} moved, {len(result.changed)} changed"
               + (f", {len(result.missing)} missing" if result.missing else ""))


@cli.command(name="list")
@_filters
@json_option
@catalog_option
def list_(framework, task, dataset, tag, source, local, as_json, catalog):
    """List every model in the catalog, by name.

    \b
    Example:
        zoo list --source local
    """
    from zoo.catalog import list_models

    models = list_models(catalog=catalog, framework=framework, task=task, dataset=dataset,
                         tag=tag, source=source, local=local)
    emit([m.to_dict() for m in models], as_json, lambda: _rows(models))


@cli.command()
@click.argument("name")
@json_option
@catalog_option
def rm(name, as_json, catalog):
    """Remove a model from the catalog (its files on disk are left alone).

    \b
    Example:
        zoo rm my_model
    """
    from zoo.catalog import remove

    remove(name, catalog=catalog)
    emit({"removed": name}, as_json, f"removed {name} (files on disk are kept)")


# ---- sources -----------------------------------------------------------------------------------

@cli.group()
def source():
    """Remote zoo indexes (docs/index-format.md): add, list, sync, rm.

    \b
    Example:
        zoo source add acme https://models.acme.org/zoo.json
        zoo source sync
    """


def _when(timestamp: float | None) -> str:
    if not timestamp:
        return "never"
    return _dt.datetime.fromtimestamp(timestamp, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _report_line(report: Any) -> str:
    if report.status == "error":
        return f"{report.name}: error: {report.error}"
    if report.status in ("unchanged", "added"):
        return f"{report.name}: {report.status}"
    s = report.stats
    text = (f"{report.name}: {len(s.added)} added, {len(s.updated)} updated, "
            f"{len(s.removed)} removed")
    return text + (f", {len(s.marked)} kept as removed upstream (fetched)" if s.marked else "")


@source.command(name="add")
@click.argument("name")
@click.argument("url", required=False)
@click.option("--sync/--no-sync", default=True, show_default=True,
              help="Download the index now (--no-sync: only register it).")
@click.option("--author", help="A hub source (`zoo source add hf`): follow this user's or organisation's models.")
@click.option("--library", "libraries", multiple=True, metavar="LIB[,LIB]",
              help="A hub source: only models of these libraries [default: onnx,keras,tflite,tf].")
@click.option("--require-signature/--no-require-signature", default=None,
              help="Refuse (register nothing of) any model of this source whose OpenSSF model "
                   "signature is missing or does not verify [default: keep the current policy; off].")
@click.option("--signer-key", type=click.Path(dir_okay=False), metavar="PUB.pem",
              help="Pin the publisher's elliptic-curve public key; overrides the index's signer.")
@click.option("--signer-cert-chain", type=click.Path(dir_okay=False), metavar="CHAIN.pem",
              help="Pin the CA certificates the signing certificate must chain to.")
@click.option("--signer-identity", metavar="ID",
              help="With --signer-cert-chain: the name the certificate must carry; alone with "
                   "--signer-issuer: a Sigstore (keyless) identity.")
@click.option("--signer-issuer", metavar="URL", help="Sigstore: the OIDC issuer of --signer-identity.")
@click.option("--signer-trust-config", type=click.Path(dir_okay=False), metavar="TRUST.json",
              help="Sigstore: a private instance's ClientTrustConfig [default: the public instance, online].")
@json_option
@catalog_option
def source_add(name, url, sync, author, libraries, require_signature, signer_key, signer_cert_chain,
               signer_identity, signer_issuer, signer_trust_config, as_json, catalog):
    """Follow the zoo index at URL (http(s)://, file:// or a path) as source NAME, or a hub (`zoo source add hf`).

    A hub source searches the Hugging Face Hub (`zoo search --hub` uses its --author and --library),
    and `zoo source sync hf` brings every model added from it (`zoo add hf://...`) to its branch's
    latest commit, a new revision when files changed.

    Models the index signs are verified on fetch (pip install 'zoo[provenance]'); pin who must
    have signed them with --signer-key / --signer-cert-chain / --signer-identity, and refuse
    unsigned ones with --require-signature.

    \b
    Example:
        zoo source add acme https://models.acme.org/zoo.json
        zoo source add acme https://models.acme.org/zoo.json --require-signature --signer-key acme.pub
        zoo source add hf --author onnx-community --library onnx
    """
    from zoo.hubs import SCHEMES, hub_url
    from zoo.sources import add_source

    if url is None or author or libraries:
        if url not in (None, f"{name}://") or name not in SCHEMES:
            raise click.UsageError(f"give the URL of the zoo index for source {name!r}; --author and --library "
                                   f"are for a hub source ({', '.join(f'zoo source add {s}' for s in SCHEMES)})")
        url = hub_url(name, author, _libraries(libraries))

    signer = None
    if signer_key or signer_cert_chain or signer_identity or signer_issuer or signer_trust_config:
        from zoo.signing import Signer

        signer = Signer.from_files(key=signer_key, certificate_chain=signer_cert_chain,
                                   identity=signer_identity, issuer=signer_issuer,
                                   trust_config=signer_trust_config)
    report = add_source(name, url, sync=sync, require_signature=require_signature,
                        signer=signer, catalog=catalog)
    emit(report.to_dict(), as_json, _report_line(report))


@source.command(name="list")
@json_option
@catalog_option
def source_list(as_json, catalog):
    """The sources the catalog follows: name, index URL, when last synced.

    \b
    Example:
        zoo source list --json
    """
    from zoo.sources import list_sources

    sources = list_sources(catalog=catalog)
    emit([s.to_dict() for s in sources], as_json, lambda: table(
        [[s.name, s.url, s.models, _when(s.synced_at), _policy(s)] for s in sources],
        ["NAME", "URL", "MODELS", "SYNCED", "SIGNATURES"]))


def _policy(source: Any) -> str:
    """A source's signature policy in a few words."""
    if source.signer:
        from zoo.signing import Signer

        who = Signer.from_dict(source.signer).describe()
        return f"{'required' if source.require_signature else 'checked'}, by {who}"
    return "required" if source.require_signature else "checked if published"


@source.command(name="sync")
@click.argument("name", required=False)
@click.option("--force", is_flag=True,
              help="Apply the index even if unchanged (restores entries removed with zoo rm).")
@json_option
@catalog_option
def source_sync(name, force, as_json, catalog):
    """Download the sources' indexes again (conditional GET) and update the catalog.

    \b
    Example:
        zoo source sync acme
    """
    from zoo.sources import sync_sources

    reports = sync_sources(name, force=force, catalog=catalog)
    emit([r.to_dict() for r in reports], as_json, lambda: "\n".join(
        _report_line(r) for r in reports if r.status != "error"))
    failed = [r for r in reports if r.status == "error"]
    for report in failed:
        echo(f"error: source {report.name}: {mask_secrets(report.error)}", err=True, one_line=True)
    if failed:
        raise SystemExit(1)


@source.command(name="rm")
@click.argument("name")
@json_option
@catalog_option
def source_rm(name, as_json, catalog):
    """Stop following a source; its models go, except those already fetched.

    \b
    Example:
        zoo source rm acme
    """
    from zoo.sources import remove_source

    stats = remove_source(name, catalog=catalog)
    emit({"name": name, **stats.to_dict()}, as_json,
         f"removed source {name}: {len(stats.removed)} models removed"
         + (f", {len(stats.marked)} fetched models kept" if stats.marked else ""))
