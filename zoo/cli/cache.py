"""Cache commands: list and remove features, cuts, converted ONNX, fetched files and trained-model copies."""
from __future__ import annotations

import datetime as _dt

import click

from zoo.cache_manager import KINDS
from zoo.cli._app import cache_option, catalog_option, cli, emit, json_option, table

kind_option = click.option("--kind", "kinds", multiple=True, type=click.Choice(KINDS),
                           help="Only this kind of entry (repeat for several).")


def _detail(entry) -> str:
    """What the entry is, in a few words: rows and shape of features, layers of a cut."""
    d = entry.detail
    if entry.kind == "features":
        created = _dt.datetime.fromtimestamp(d["created"]).strftime("%Y-%m-%d %H:%M") if d.get("created") else "-"
        shape = "x".join(map(str, d.get("shape") or [])) or "-"
        state = "complete" if d.get("complete") else "partial"
        layer = d.get("layer")
        at = f"at {', '.join(map(str, layer)) if isinstance(layer, list) else layer}, " if layer is not None else ""
        return (f"{at}{d.get('rows', 0)} rows of {shape}, {state}, {created}"
                + (f", {d['dataset']}" if d.get("dataset") else ""))
    if entry.kind == "cuts":
        return "at " + ", ".join(d.get("layers") or ["?"])
    return ""


@cli.group("cache")
def cache_group() -> None:
    """The cache: features, cut graphs, converted ONNX, fetched model files and trained-model copies."""


@cache_group.command("list")
@kind_option
@json_option
@cache_option
@catalog_option
def cache_list(kinds: tuple[str, ...], as_json: bool, cache_dir: str | None, catalog: str | None) -> None:
    """List what the cache holds: kind, key, size, model (the catalog tells trained copies apart).

    \b
    Example:
        zoo cache list
        zoo cache list --kind cuts --kind onnx --json
    """
    from zoo.cache_manager import scan, usage
    from zoo.units import human_size

    found = scan(cache_dir, kinds, catalog=catalog)
    use = usage(found, cache_dir) if not as_json else None

    def text() -> str:
        if not found:
            return "the cache is empty" + (f"; {human_size(use.unreferenced)} of blobs nothing uses "
                                           "(`zoo cache gc` frees them)" if use.unreferenced else "")
        rows = [[e.kind, e.key[:12] if e.kind == "features" else e.key, human_size(e.bytes), e.model or "",
                 _detail(e)] for e in found]
        total = human_size(sum(e.bytes for e in found))
        entries = "1 entry" if len(found) == 1 else f"{len(found)} entries"
        lines = [table(rows, ["KIND", "KEY", "SIZE", "MODEL", "WHAT"]), f"{entries}, {total}"]
        if not kinds:  # the whole cache: what it takes on disk, and what the store saves
            lines[-1] += (f"; {human_size(use.on_disk)} on disk: the store keeps each file once, "
                          f"saving {human_size(use.saved)}")
            if use.unreferenced:
                lines[-1] += f"; {human_size(use.unreferenced)} of blobs nothing uses (`zoo cache gc` frees them)"
        return "\n".join(lines)

    emit([e.to_dict() for e in found], as_json, text)


@cache_group.command("rm")
@click.argument("keys", nargs=-1)
@click.option("--model", help="Everything cached for this model (converted ONNX, cuts, fetched files).")
@click.option("--all", "everything", is_flag=True,
              help="Every entry (of --kind); trained-model copies only with --kind trained.")
@kind_option
@click.option("--dry-run", is_flag=True, help="Say what would be removed and the space it frees; remove nothing.")
@json_option
@cache_option
@catalog_option
def cache_rm(keys: tuple[str, ...], model: str | None, everything: bool, kinds: tuple[str, ...], dry_run: bool,
             as_json: bool, cache_dir: str | None, catalog: str | None) -> None:
    """Remove cache entries by KEY (unique prefixes, part by part, as `zoo cache list` shows them), --model or --all.

    An entry another process is writing (a fetch, an unpack, a feature extraction) is refused, not waited for.

    \b
    Example:
        zoo cache rm 3fa9c2
        zoo cache rm onnx/bvlc_alexnet cuts/5e1b/fc7
        zoo cache rm --model bvlc_alexnet --dry-run
        zoo cache rm --all --kind features
    """
    from zoo.cache_manager import plan_removal, scan
    from zoo.errors import InputError
    from zoo.units import human_size

    if everything == bool(keys or model):
        raise InputError("give the KEYs to remove (see `zoo cache list`), --model NAME or --all; not --all with them")
    plan = plan_removal(scan(cache_dir, kinds, catalog=catalog), keys, model, everything, kinds, cache_dir)
    if dry_run:
        lines = [f"would remove {e.key} ({human_size(e.bytes)})" for e in plan.entries]
        lines.append(f"would remove {len(plan.entries)} entries, freeing {human_size(plan.bytes)}")
        emit({**plan.to_dict(), "dry_run": True}, as_json, "\n".join(lines))
        return
    freed = plan.execute()
    text = f"removed {len(plan.entries)} entries, freed {human_size(freed)}"
    if plan.blobs:
        text += f" (with {len(plan.blobs)} stored files nothing else uses)"
    trained = [e.model for e in plan.entries if e.kind == "trained"]
    if trained:  # their catalog entries now point at nothing
        text += f"; the catalog still lists {', '.join(trained)}: `zoo rm NAME` drops an entry you no longer want"
    emit(plan.to_dict(), as_json, text)


@cache_group.command("gc")
@click.option("--dry-run", is_flag=True, help="Say what would be removed and the space it frees; remove nothing.")
@json_option
@cache_option
def cache_gc(dry_run: bool, as_json: bool, cache_dir: str | None) -> None:
    """Remove the stored files (blobs) no model folder uses any more; never one a running fetch holds.

    Fetched and converted files live once in the cache's store (blobs/sha256/); a model's folder
    holds views of them. Removing a model's files (`zoo cache rm`, a new revision) can leave a blob
    nothing refers to: this frees it.

    \b
    Example:
        zoo cache gc --dry-run
        zoo cache gc
    """
    from zoo.cache_manager import plan_gc
    from zoo.units import human_size

    plan = plan_gc(cache_dir)
    busy = f"; {len(plan.held)} held by a running fetch are kept" if plan.held else ""
    if dry_run:
        lines = [f"would remove blob {b.name[:12]} ({human_size(b.stat().st_size)})" for b in plan.blobs]
        lines.append(f"would remove {len(plan.blobs)} unused stored files, freeing {human_size(plan.bytes)}{busy}")
        emit({**plan.to_dict(), "dry_run": True}, as_json, "\n".join(lines))
        return
    freed, kept = plan.execute()
    held = {b.name for b in plan.held} | {b.name for b in kept}
    removed = [b.name for b in plan.blobs if b.name not in held]
    busy = f"; {len(held)} in use by a running fetch were kept" if held else ""
    emit({"removed": removed, "bytes": freed, "in_use": sorted(held)}, as_json,
         f"removed {len(removed)} unused stored files, freed {human_size(freed)}{busy}")
