"""Third-party chatter stays off the terminal; the details that explain a failure go to zoo's log file.

TensorFlow, absl, XNNPACK, oneDNN, onnxruntime, torch.onnx and Ray all print to stderr: banners,
deprecation notices, hundreds of lines of Torch IR when an export fails. In normal use none of it
reaches the terminal: `quiet()` sets their log levels through the environment before they are
imported (it runs when zoo is imported), and `captured()` sends whatever a conversion step still
prints, with the traceback of an unexpected failure, to ``<cache>/logs/zoo.log``, which the
one-line error names. ``zoo --verbose`` or ``ZOO_LOG_LEVEL=INFO`` (or DEBUG) lets it all through.

The same file holds the traceback of every exception zoo did not anticipate (`write`, `failure`;
the CLI's top-level handler prints one line and its path) and what a sandboxed converter child
logged or printed (`absorb`, `relay`). Secrets in URLs are masked and terminal controls escaped
before anything is written; when the cache cannot be written (read-only, full, ``/proc``) the
file is ``zoo-<uid>/logs/zoo.log`` in the temp folder; it is cut to its newest entries past
`MAX_LOG_BYTES`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

LOG_LEVEL_ENV = "ZOO_LOG_LEVEL"
# Set in a sandboxed converter child: its log file, in its scratch folder (the parent absorbs it).
LOG_FILE_ENV = "ZOO_LOG_FILE"
# Environment defaults read by the libraries when they load (a value the user set wins).
_QUIET_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "3",  # TensorFlow C++, absl, XNNPACK delegate, oneDNN notices
    "GRPC_VERBOSITY": "ERROR",
    "GLOG_minloglevel": "3",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "RAY_DEDUP_LOGS": "1",
    "KMP_WARNINGS": "0",
}
# Python loggers of libraries that log at INFO or WARNING in normal operation.
_QUIET_LOGGERS = ("tensorflow", "tf2onnx", "absl", "keras", "ray", "ray.data", "torch.onnx", "onnxruntime",
                  "h5py", "jax")
# The log file's name, in <cache>/logs (or the temp folder's zoo-<uid>/logs).
LOG_NAME = "zoo.log"
# The log file is cut to its newest entries, half this size, once it grows past it.
MAX_LOG_BYTES = 8 * 1024 * 1024
_MARK = b"==="  # starts each entry


def verbose() -> bool:
    """True when ZOO_LOG_LEVEL asks for INFO or DEBUG: third-party output is then shown as is."""
    return os.environ.get(LOG_LEVEL_ENV, "").strip().upper() in ("INFO", "DEBUG", "VERBOSE")


def set_verbose(on: bool) -> None:
    """`zoo --verbose`: let third-party output through from now on (for this process and its children)."""
    if on:
        os.environ[LOG_LEVEL_ENV] = "INFO"
        for name, value in _QUIET_ENV.items():
            if os.environ.get(name) == value:
                del os.environ[name]
        for name in _QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)


def quiet() -> None:
    """Set the third-party libraries' log levels, before they are imported, unless verbose.

    TensorFlow logs a few lines while it loads, before absl reads TF_CPP_MIN_LOG_LEVEL ("All
    log messages before absl::InitializeLog() is called are written to STDERR", oneDNN and
    CPU-feature notices): the first import of those packages runs with its output sent to the
    log file (see `_QuietImports`).
    """
    if verbose():
        return
    for name, value in _QUIET_ENV.items():
        os.environ.setdefault(name, value)
    for name in _QUIET_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.ERROR)
    if not any(isinstance(finder, _QuietImports) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietImports())


# Packages whose import prints to stderr (C++ logging that runs before its level is read).
_NOISY_IMPORTS = {"tensorflow", "tf2onnx", "keras", "tflite_runtime", "ai_edge_litert", "ray"}


class _QuietImports:
    """A meta path finder that imports the noisy packages with their output captured (see `quiet`)."""

    def find_spec(self, name, path=None, target=None):
        if name not in _NOISY_IMPORTS or verbose() or name in sys.modules:
            return None
        import importlib.machinery

        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader:
    """The package's own loader, its module executed under `captured`."""

    def __init__(self, inner) -> None:
        self._inner = inner

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module) -> None:
        with captured(f"import {module.__name__}"):
            self._inner.exec_module(module)

    def __getattr__(self, name: str):  # resource readers, get_filename, is_package...
        return getattr(self._inner, name)


def onnxruntime_severity() -> int:
    """An onnxruntime session's log severity: errors come back as exceptions, so only fatal ones are
    printed (4), unless verbose (2, warnings)."""
    return 2 if verbose() else 4


def ray_options() -> dict:
    """ray.init options: its start-up notices and worker output only when verbose."""
    if verbose():
        return {"logging_level": logging.INFO, "log_to_driver": True}
    return {"logging_level": logging.ERROR, "log_to_driver": False}


def log_path() -> Path:
    """``<cache>/logs/zoo.log``; a sandboxed converter's own file when LOG_FILE_ENV names one."""
    return _candidates()[0]


def _candidates() -> list[Path]:
    """Where the log may go, in order: a sandboxed child's own file (only that), else the cache's
    ``logs/zoo.log``, else ``zoo-<uid>/logs/zoo.log`` in the temp folder (the failure being logged
    may be the cache itself: read-only, full, ``/proc``, a broken ZOO_CACHE)."""
    child = os.environ.get(LOG_FILE_ENV)
    if child:
        return [Path(child)]
    paths = []
    try:
        from zoo.config import cache_dir

        paths.append(cache_dir() / "logs" / LOG_NAME)
    except Exception:  # noqa: BLE001, S110  a broken configuration falls back to the temp folder
        pass
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    paths.append(Path(tempfile.gettempdir()) / f"zoo-{uid}" / "logs" / LOG_NAME)
    return paths


def _append(text: str) -> Path | None:
    """Append `text` to the first log file that can be written; its path, or None when none can."""
    for path in _candidates():
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            _trim(path)
            with open(path, "a", encoding="utf-8", errors="replace") as fh:
                fh.write(text)
        except OSError:
            continue
        return path
    return None


def _trim(path: Path) -> None:
    """Past MAX_LOG_BYTES, keep the newest entries that fit in half of it (the file is replaced atomically)."""
    if not path.exists() or path.stat().st_size <= MAX_LOG_BYTES:
        return
    from zoo.atomic import write_atomic

    data = path.read_bytes()[-(MAX_LOG_BYTES // 2):]
    entry = data.find(b"\n" + _MARK)
    write_atomic(path, data[entry + 1:] if entry >= 0 else data)


def _clean(text: str) -> str:
    """What may be written: secrets in URLs masked, terminal controls shown as escapes (the file gets `cat`)."""
    from zoo._redact import mask_secrets
    from zoo._terminal import safe_text

    return safe_text(mask_secrets(text))


def absorb(child_log: Path) -> Path | None:
    """Append a sandboxed child's log file to this process's; the path it went to (None: nothing, or unwritable)."""
    text = _tail(child_log)
    if not text.strip():
        return None
    return _append(_clean(text))


def _tail(path: Path) -> str:
    """A child's file, its last MAX_LOG_BYTES // 2 bytes at most (a model may print without end); "" if unreadable."""
    keep = MAX_LOG_BYTES // 2
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(size - keep, 0))
            data = fh.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return f"[the first {size - keep} bytes were left out]\n{text}" if size > keep else text


def relay(output: Path, title: str) -> Path | None:
    """What a sandboxed child printed (its captured stdout/stderr, `output`): on stderr, with terminal
    controls shown as escapes, when verbose; else an entry in the log file (its path; None: nothing)."""
    text = _tail(output)
    if not text.strip():
        return None
    if verbose():
        from zoo._terminal import safe_text

        sys.stderr.write(safe_text(text))
        sys.stderr.flush()
        return None
    return write(f"{title}: output", text)


def write(title: str, text: str) -> Path | None:
    """Append a titled entry (a traceback, a library's output) to the log file; its path, or None when
    no log file can be written. Secrets are masked and terminal controls escaped first."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return _append(_clean(f"{_MARK.decode()} {stamp} pid {os.getpid()} {title}\n{text.rstrip()}\n\n"))


@contextlib.contextmanager
def captured(title: str) -> Iterator[None]:
    """Send what third-party code prints on stdout/stderr (file descriptors 1 and 2) to the log file.

    C++ libraries write to the descriptors directly, so Python's sys.stderr cannot catch them;
    the descriptors are pointed at a temporary file while the block runs. Nothing is captured
    when verbose, or when the descriptors cannot be redirected.
    """
    if verbose():
        yield
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
    except (OSError, ValueError, AttributeError):
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            text = sink.read().decode("utf-8", errors="replace")
            if text.strip():
                write(f"{title}: output", text)


@contextlib.contextmanager
def step(label: str) -> Iterator[None]:
    """Name the step an unexpected exception comes from ("running the original model in onnxruntime").

    The exception is re-raised as it is, tagged with the innermost step, for the one-line error
    that `failure` makes of it.
    """
    try:
        yield
    except Exception as exc:
        if not hasattr(exc, "zoo_step"):
            try:
                exc.zoo_step = label
            except (AttributeError, TypeError):  # built-in exceptions without a __dict__
                pass
        raise


def failure(what: str, exc: BaseException, default_step: str) -> tuple[str, Path | None]:
    """(one line naming the step and the cause, log file holding the traceback) for an unexpected exception."""
    import traceback

    where = getattr(exc, "zoo_step", None) or default_step
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()] or [type(exc).__name__]
    path = write(f"{what}: {where} failed", "".join(traceback.format_exception(exc)))
    cause = f"{type(exc).__name__}: {lines[0][:300]}"
    return f"{where} failed ({cause})", path


__all__ = ["LOG_FILE_ENV", "LOG_LEVEL_ENV", "LOG_NAME", "MAX_LOG_BYTES", "absorb", "captured", "failure", "log_path",
           "onnxruntime_severity", "quiet", "ray_options", "relay", "set_verbose", "step", "verbose", "write"]
