"""Fetch commands: fetch (download, verify, unpack, register) and verify (re-hash what is on disk)."""
from __future__ import annotations

import logging
import sys

import click

from zoo.cli._app import cache_option, catalog_option, cli, echo, emit, json_option, quiet_option


class _StderrLines(logging.Handler):
    """Retry and lock-wait notices from zoo.download as plain lines on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        from zoo._redact import mask_secrets

        echo(f"zoo: {mask_secrets(record.getMessage())}", err=True, one_line=True)


def _show_notices(quiet: bool):
    logger = logging.getLogger("zoo.download")
    handler = _StderrLines(level=logging.ERROR if quiet else logging.WARNING)
    logger.addHandler(handler)
    logger.propagate = False
    return logger, handler


@cli.command("fetch")
@click.argument("names", nargs=-1)
@click.option("--locked", is_flag=True,
              help="Fetch exactly what zoo.lock pins (its revisions and file hashes); NAMES limits it to those.")
@click.option("--lock-file", type=click.Path(dir_okay=False, path_type=str),
              help="The lock file for --locked [default: the nearest zoo.lock].")
@click.option("--force", is_flag=True, help="Download again even if a verified copy is cached.")
@click.option("--offline", is_flag=True, help="Never touch the network; use the cache [env ZOO_OFFLINE=1].")
@click.option("--max-unpack-size", metavar="SIZE", envvar="ZOO_MAX_UNPACK_BYTES",
              help="Refuse archives unpacking to more than SIZE, e.g. 64G [default 32G; env ZOO_MAX_UNPACK_BYTES].")
@cache_option
@catalog_option
@quiet_option
@json_option
def fetch_command(names, locked, lock_file, force, offline, max_unpack_size, cache_dir, catalog, quiet, as_json):
    """Download every file of the named models (NAME or NAME@REVISION), verify and register them.

    Files are checked against their published size and checksum, resumed after a broken
    connection, and reused when already cached. Private zoos: set ZOO_TOKEN or use ~/.netrc.
    A transfer under 1 KiB/s for 30 s is retried, then given up (ZOO_FETCH_MIN_RATE,
    ZOO_FETCH_STALL_SECONDS; ZOO_FETCH_MAX_TIME bounds one file, default 12 h); a rerun
    resumes. Archives over 32 GiB, 200x compression or 100k members are refused
    (ZOO_MAX_UNPACK_BYTES / --max-unpack-size, ZOO_MAX_UNPACK_RATIO, ZOO_MAX_UNPACK_MEMBERS).

    \b
    Example:
        zoo fetch bvlc_alexnet
        zoo fetch resnet9.acme@v1
        zoo fetch --locked
        zoo fetch mobilenet_v1.tflite --offline --json
    """
    from zoo.archives import UnpackLimits
    from zoo.download import fetch
    from zoo.errors import InputError
    from zoo.units import human_size

    if not names and not locked:
        raise InputError("name the models to fetch (NAME or NAME@REVISION), or fetch what zoo.lock pins with --locked")
    if lock_file and not locked:
        raise InputError("--lock-file goes with --locked")

    report: list[dict] = []

    def on_file(name, artifact, result) -> None:
        entry = {"model": name, **artifact.to_dict()}
        if result is None:
            how = "your own file"
        elif result.cached:
            how = "cached, verified"
        else:
            how = (f"{result.seconds:.1f} s, {human_size(result.throughput)}/s"
                   + (f", {human_size(result.bytes_transferred)} transferred" if result.bytes_transferred != result.size else ""))
        if result is not None:
            entry["download"] = {"cached": result.cached, "seconds": round(result.seconds, 3),
                                 "bytes_transferred": result.bytes_transferred, "url": result.url}
        report.append(entry)
        size = human_size(artifact.size) if artifact.size is not None else "?"
        line = f"{name}  {artifact.role:<8} {artifact.filename}  {size}  ({how})  -> {artifact.path}"
        if as_json:
            return
        # Print as each file lands, so a failure later still shows what did arrive.
        echo(line, one_line=True)

    logger, handler = _show_notices(quiet or as_json)
    try:
        if locked:
            from zoo.lockfile import fetch_locked

            for done in fetch_locked(list(names) or None, lock_file=lock_file, catalog=catalog, cache_dir=cache_dir,
                                     offline=True if offline else None, quiet=quiet or as_json, on_file=on_file):
                if not as_json:
                    echo(f"{done.name}: locked revision {done.revision}, as {done.ref}", one_line=True)
                    for change in done.changed:
                        echo(f"  note: {change}", one_line=True)
        else:
            fetch(list(names), catalog=catalog, cache_dir=cache_dir, force=force,
                  offline=True if offline else None, quiet=quiet or as_json, on_file=on_file,
                  unpack_limits=UnpackLimits.from_env(max_bytes=max_unpack_size))
    except KeyboardInterrupt:
        echo("zoo: interrupted; the partial download is kept (.part) and the same command "
                   "resumes it", err=True)
        sys.exit(130)
    finally:
        logger.removeHandler(handler)
    emit(report, as_json)


@cli.command("verify")
@click.argument("names", nargs=-1)
@click.option("--signatures", is_flag=True,
              help="Check the OpenSSF model signatures (the publisher's and zoo sign's) of the signed "
                   "models instead; exit 1 if one fails.")
@click.option("--key", type=click.Path(dir_okay=False), metavar="PUB.pem",
              help="With --signatures: check zoo's own signatures against this public key instead of "
                   "the one recorded when signing.")
@catalog_option
@json_option
def verify_command(names, signatures, key, catalog, as_json):
    """Re-hash the fetched files of the named models (default: all); exit 1 if any changed.

    \b
    Example:
        zoo verify bvlc_alexnet
        zoo verify --signatures
    """
    if signatures:
        _verify_signatures(list(names) or None, key, catalog, as_json)
        return
    if key:
        raise click.UsageError("--key goes with --signatures")
    from zoo.download import verify

    problems = verify(list(names) or None, catalog=catalog)
    emit([p.to_dict() for p in problems], as_json,
         lambda: "\n".join(str(p) for p in problems) or "all fetched files verify")
    if problems:
        sys.exit(1)


def _verify_signatures(names, key, catalog, as_json) -> None:
    from zoo.signatures import verify_signatures
    from zoo.signing import Signer

    signer = Signer.from_files(key=key) if key else None
    verdicts = verify_signatures(names, signer=signer, catalog=catalog)

    def text() -> str:
        if not verdicts:
            return "no signed model to check"
        lines = []
        for verdict in verdicts:
            for by, check in verdict.checks.items():
                lines.append(f"{verdict.name} ({by}): {check.summary()}")
            lines += [f"  attests {line}" for line in verdict.attested]
        return "\n".join(lines)

    emit([v.to_dict() for v in verdicts], as_json, text)
    if not all(v.ok for v in verdicts):
        sys.exit(1)


@cli.command("lock")
@click.argument("names", nargs=-1, required=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=str),
              help="The lock file [default: the nearest zoo.lock, else ./zoo.lock].")
@cache_option
@catalog_option
@quiet_option
@json_option
def lock_command(names, output, cache_dir, catalog, quiet, as_json):
    """Pin models (NAME or NAME@REVISION) in zoo.lock: source, revision and every file's sha256.

    `zoo fetch --locked` then fetches exactly that, here or on another machine, or fails naming
    what changed. A file with no published sha256 is fetched once to hash it.

    \b
    Example:
        zoo lock resnet9.acme bvlc_alexnet
        zoo fetch --locked
    """
    from zoo.lockfile import lock

    logger, handler = _show_notices(quiet or as_json)
    try:
        path, pinned = lock(list(names), output=output, catalog=catalog, cache_dir=cache_dir, quiet=quiet or as_json)
    finally:
        logger.removeHandler(handler)
    emit({"lock_file": str(path), "models": {m.name: m.to_dict() for m in pinned}}, as_json,
         "\n".join(f"locked {m.name} at revision {m.revision}{f' ({m.tag})' if m.tag else ''}: {len(m.files)} files"
                   for m in pinned) + f"\nwrote {path}")
