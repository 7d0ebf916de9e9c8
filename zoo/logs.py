"""Third-party chatter stays off the terminal; the details that explain a failure go to zoo's log file.

TensorFlow, absl, XNNPACK, oneDNN, onnxruntime, torch.onnx and Ray all print to stderr: banners,
deprecation notices, hundreds of lines of Torch IR when an export fails. In normal use none of it
reaches the terminal: `quiet()` sets their log levels through the environment before they are
imported (it runs when zoo is imported), and `captured()` sends whatever a conversion step still
prints, with the traceback of an unexpected failure, to ``<cache>/logs/zoo.log``, which the
one-line error names. ``zoo --verbose`` or ``ZOO_LOG_LEVEL=INFO`` (or DEBUG) lets it all through.
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
# The log file is cut to its last half once it grows past this many bytes.
MAX_LOG_BYTES = 8 * 1024 * 1024


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
    child = os.environ.get(LOG_FILE_ENV)
    if child:
        return Path(child)
    from zoo.config import cache_dir

    return cache_dir() / "logs" / "zoo.log"


def absorb(child_log: Path) -> Path | None:
    """Append a sandboxed child's log file to this process's; the path it went to (None: nothing, or unwritable)."""
    try:
        text = child_log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    if not text.strip():
        return None
    path = log_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8", errors="replace") as fh:
            fh.write(text)
    except OSError:
        return None
    return path


def write(title: str, text: str) -> Path | None:
    """Append a titled entry to the log file; its path, or None when it cannot be written."""
    path = log_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_size > MAX_LOG_BYTES:
            data = path.read_bytes()
            path.write_bytes(data[len(data) // 2:])
        with open(path, "a", encoding="utf-8", errors="replace") as fh:
            fh.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()} {title}\n{text.rstrip()}\n\n")
    except OSError:
        return None
    return path


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


__all__ = ["LOG_FILE_ENV", "LOG_LEVEL_ENV", "absorb", "captured", "failure", "log_path", "onnxruntime_severity", "quiet", "ray_options",
           "set_verbose", "step", "verbose", "write"]
