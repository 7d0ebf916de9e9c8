"""Tracebacks of unexpected failures, kept in a log file so the user sees one line and a path instead.

The folder is ``<cache>/logs`` when the cache can be written, else ``zoo-<uid>/logs`` in the
system's temp folder (the failure may be the cache itself: read-only, full, ``/proc``). The
newest `KEEP` logs are kept. Secrets in URLs are masked before anything is written.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

KEEP = 20


def _folders() -> list[Path]:
    folders = []
    try:
        from zoo.config import cache_dir

        folders.append(cache_dir() / "logs")
    except Exception:  # noqa: BLE001, S110  a broken configuration falls back to the temp folder
        pass
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    folders.append(Path(tempfile.gettempdir()) / f"zoo-{uid}" / "logs")
    return folders


def write_log(text: str, what: str = "zoo") -> str | None:
    """Write `text` (a traceback) to a new log file; its path, or None when no folder can be written."""
    from zoo._redact import mask_secrets

    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    body = f"{what}, {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, pid {os.getpid()}\n\n{mask_secrets(text)}"
    for folder in _folders():
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            path = folder / f"zoo-{stamp}-{os.getpid()}-{time.monotonic_ns() % 100000}.log"
            with open(path, "x", encoding="utf-8", errors="replace") as fh:
                fh.write(body)
        except OSError:
            continue
        _prune(folder)
        return str(path)
    return None


def _prune(folder: Path) -> None:
    try:
        logs = sorted(folder.glob("zoo-*.log"), key=lambda p: p.stat().st_mtime)
        for old in logs[:-KEEP]:
            old.unlink(missing_ok=True)
    except OSError:
        pass


__all__ = ["KEEP", "write_log"]
