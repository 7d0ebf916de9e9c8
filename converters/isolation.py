"""Run a converter on untrusted model code in a child process that can write only inside a scratch folder.

Converting TensorFlow and TorchScript models runs the model (loading it, tracing it, and the
reference run the ONNX result is checked against). ``converters.model_code`` refuses graphs with
file, process or network ops before that; this is the second line: the whole framework side of
the conversion happens in a child process confined by Linux Landlock (`zoo.landlock`) to writing
in its scratch folder, without TCP, with its standard streams captured into that folder (and then
relayed: to the log file, or to stderr with ``--verbose``, by ``zoo.logs``). The
child hands back the ONNX file and the report as files; nothing is unpickled from it.

The parent never imports TensorFlow or torch for this. Each framework has one "zygote" per
parent process: a child started once that imports the framework (without running any graph:
forking after TensorFlow has run graphs can deadlock) and forks one grandchild per conversion,
so a process that converts several models pays the framework's import once, and `zoo convert`
pays it once as before. Where the system cannot fork, the converter runs in this process (the
report says so).
"""
from __future__ import annotations

import atexit
import contextlib
import errno
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo import errors

if TYPE_CHECKING:
    import onnx

    from converters.report import ConversionReport

# Seconds one conversion may take in the child (ZOO_CONVERT_TIMEOUT overrides); the framework's
# first import counts too.
CONVERT_TIMEOUT = 3600.0
# The modules a zygote imports before it forks: the framework and zoo's side of the conversion.
PRELOAD = {
    "tensorflow": ["sqlite3", "numpy", "onnx", "onnxruntime", "tensorflow", "keras", "tf2onnx",
                   "tf2onnx.tf_loader", "tf2onnx.convert", "tf2onnx.onnx_opset", "converters.tensorflow",
                   "converters.tflite_check", "converters.model_code"],
    "torch": ["numpy", "onnx", "onnxruntime", "torch", "converters.pytorch", "converters.model_code"],
}
FRAMEWORK = {"converters.tensorflow": "tensorflow", "converters.pytorch": "torch"}
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_EXIT_ZOO_ERROR, _EXIT_FAILURE, _EXIT_DISK_FULL = 3, 4, 5  # the last: even error.json could not be written


@dataclass
class IsolatedConversion:
    """A conversion made in a sandboxed child: the ONNX file in its scratch folder, the report, the sandbox."""

    model_path: Path
    report: ConversionReport
    sandbox: dict[str, Any] = field(default_factory=dict)
    inputs: list[dict[str, Any]] | None = None  # the graph's inputs, read by the child (no onnx.load here)

    def __post_init__(self) -> None:
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.model_path.parent), True)

    @property
    def model(self) -> onnx.ModelProto:
        import onnx

        return onnx.load(os.fspath(self.model_path))

    def save(self, path: str | os.PathLike) -> None:
        """Move the ONNX file to `path` atomically (a rename: the scratch folder is on the cache's disk)."""
        from zoo.atomic import atomic_path

        try:
            with atomic_path(os.path.abspath(path)) as tmp:
                shutil.move(os.fspath(self.model_path), tmp)
        except OSError as exc:
            raise _write_error(exc, path) from None
        self._cleanup()


def convert_isolated(module: str, path: str | os.PathLike, options: dict[str, Any], *,
                     scratch_root: str | os.PathLike, timeout: float | None = None) -> IsolatedConversion:
    """`importlib.import_module(module).convert(path, **options)` in a sandboxed child process.

    `options` must be JSON data. Errors the converter raises come back as the same ZooError type
    with the same message; a crash, a hang past `timeout` or an unexpected exception becomes a
    ConversionError of one line (the child's traceback goes to the error log).
    """
    framework = FRAMEWORK[module]
    limit = timeout if timeout is not None else _timeout()
    scratch = _scratch(Path(scratch_root))
    job = {"module": module, "path": os.fspath(path), "options": options, "scratch": str(scratch)}
    try:
        status = _run_job(framework, job, limit)
        result = _collect(scratch, status, limit, os.fspath(path), framework)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return result


def _timeout() -> float:
    raw = os.environ.get("ZOO_CONVERT_TIMEOUT", "").strip()
    try:
        return float(raw) if raw else CONVERT_TIMEOUT
    except ValueError:
        raise errors.ConversionError(f"ZOO_CONVERT_TIMEOUT={raw!r} is not a number of seconds; "
                                     f"unset it or set it like ZOO_CONVERT_TIMEOUT=3600") from None


def _scratch(root: Path) -> Path:
    """A new scratch folder under `root`; leftovers of dead processes are removed first."""
    import tempfile

    try:
        root.mkdir(parents=True, exist_ok=True)
        for old in root.glob("convert-*"):
            pid = old.name.split("-")[1] if old.name.count("-") >= 2 else ""
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)
        return Path(tempfile.mkdtemp(prefix=f"convert-{os.getpid()}-", dir=root))
    except OSError as exc:
        raise _write_error(exc, root) from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_error(exc: OSError, path: str | os.PathLike) -> errors.ZooError:
    from zoo.atomic import write_error

    return write_error(exc, path)


def _collect(scratch: Path, status: int, limit: float, path: str, framework: str) -> IsolatedConversion:
    """The child's result, or its error raised as one line (its log and output kept in this process's log)."""
    from converters.report import ConversionReport
    from zoo.logs import absorb, relay

    child_log = scratch / "zoo.log"
    log = absorb(child_log)
    relay(scratch / "output.log", f"{framework} converter for {path}")  # what the model and libraries printed
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == _EXIT_ZOO_ERROR:
        error = _read_json(scratch / "error.json") or {}
        kind = getattr(errors, str(error.get("type")), None)
        if not (isinstance(kind, type) and issubclass(kind, errors.ZooError)):
            kind = errors.ConversionError
        message = error.get("message") or "the converter failed without saying why"
        # The child named its own log, which goes with the scratch folder: name the one it went to.
        raise kind(message.replace(str(child_log), str(log) if log else "a log no folder could hold"))
    if os.WIFSIGNALED(status):
        raise errors.ConversionError(_signal_message(os.WTERMSIG(status), limit, path, framework, scratch))
    if os.WEXITSTATUS(status) == _EXIT_DISK_FULL:
        raise _write_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), scratch.parent)
    if os.WEXITSTATUS(status) != 0:
        error = _read_json(scratch / "error.json") or {}
        log = _keep_traceback(scratch)
        raise errors.ConversionError(
            f"converting {path} failed in {framework}: {error.get('message') or _last_line(scratch)}"
            + (f" (the traceback is in {log})" if log else ""))
    report = ConversionReport.from_dict(_read_json(scratch / "report.json") or {})
    sandbox = _read_json(scratch / "sandbox.json") or {}
    return IsolatedConversion(scratch / "model.onnx", report, sandbox, _read_json(scratch / "inputs.json"))


def _signal_message(signum: int, limit: float, path: str, framework: str, scratch: Path) -> str:
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    if (scratch / ".timed-out").exists():
        return (f"converting {path} took longer than {limit:.0f} s, so zoo stopped it (a model that loops "
                f"forever, or a very large one: raise ZOO_CONVERT_TIMEOUT)")
    if signum == signal.SIGKILL:
        return (f"the {framework} side of converting {path} was killed (SIGKILL), most likely for running "
                f"out of memory; nothing was stored")
    return (f"{framework} crashed ({name}) converting {path}: the file is corrupt or triggers a bug in "
            f"{framework} (it ran in a child process, so nothing else was affected){_last_words(scratch)}")


def _last_line(scratch: Path) -> str:
    try:
        lines = [line for line in (scratch / "output.log").read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    return lines[-1][:300] if lines else "no message"


def _last_words(scratch: Path) -> str:
    line = _last_line(scratch)
    return "" if line == "no message" else f"; its last output: {line}"


def _keep_traceback(scratch: Path) -> str | None:
    """Move the child's traceback to the log file; its path, or None."""
    try:
        text = (scratch / "traceback.txt").read_text(errors="replace")
    except OSError:
        return None
    from zoo.logs import write

    return write("converter child: unexpected failure", text)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# the zygote: one per framework and parent process


class _Zygote:
    """A child that imported one framework and forks a sandboxed grandchild per job (see the module docstring)."""

    def __init__(self, framework: str):
        from zoo.logs import verbose

        # The libraries' log levels come with the environment (zoo.logs.quiet set them, unless verbose).
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1",
               "PYTHONPATH": os.pathsep.join(p for p in [*sys.path, os.environ.get("PYTHONPATH", "")] if p)}
        self.framework = framework
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from converters.isolation import _zygote_main; _zygote_main()", framework],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None if verbose() else subprocess.DEVNULL,
            env=env, start_new_session=True)  # Ctrl-C reaches the parent, which stops the job itself
        self.buffer = b""
        self.ready = False

    def alive(self) -> bool:
        return self.process.poll() is None

    def _message(self, deadline: float) -> dict[str, Any] | None:
        """The zygote's next JSON line, or None at the deadline or when it died."""
        fd = self.process.stdout.fileno()
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], min(remaining, 1.0))
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return None
                self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return json.loads(line)

    def start(self, deadline: float) -> None:
        message = self._message(deadline)
        if message is None:
            self.close()
            raise errors.ConversionError(
                f"the {self.framework} converter process did not start (it died, or importing {self.framework} "
                f"took past the time limit: raise ZOO_CONVERT_TIMEOUT)")
        if not message.get("ready"):
            self.close()
            kind = getattr(errors, str(message.get("type")), errors.ConversionError)
            raise kind(message.get("error") or f"the {self.framework} converter process cannot start")
        self.ready = True

    def run(self, job: dict[str, Any], limit: float) -> int:
        """Fork a grandchild for `job`; its wait status. Kills it past `limit` seconds."""
        deadline = time.monotonic() + limit
        if not self.ready:
            self.start(deadline)
        self.process.stdin.write(json.dumps(job).encode() + b"\n")
        self.process.stdin.flush()
        started = self._message(deadline)
        if started is None or "pid" not in started:
            self.close()
            raise errors.ConversionError(f"the {self.framework} converter process died before converting")
        pid = started["pid"]
        try:
            finished = self._message(deadline)
            if finished is None and self.alive():  # past the time limit: stop the grandchild
                (Path(job["scratch"]) / ".timed-out").touch()
                _kill(pid)
                finished = self._message(time.monotonic() + 30)
        except BaseException:  # interrupted (Ctrl-C): the job does not outlive the request
            _kill(pid)
            self.close()
            raise
        if finished is None or "status" not in finished:
            self.close()
            raise errors.ConversionError(f"the {self.framework} converter process died while converting")
        return int(finished["status"])

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _kill(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)


# (process id, framework) -> zygote: a forked copy of this process starts its own.
_ZYGOTES: dict[tuple[int, str], _Zygote] = {}
_LOCK = threading.Lock()  # a zygote answers one job after another


def _run_job(framework: str, job: dict[str, Any], limit: float) -> int:
    """Run `job` in this process's zygote for `framework` (started, or restarted, when needed)."""
    key = (os.getpid(), framework)
    with _LOCK:
        zygote = _ZYGOTES.get(key)
        if zygote is None or not zygote.alive():
            zygote = _ZYGOTES[key] = _Zygote(framework)
        return zygote.run(job, limit)


@atexit.register
def _close_zygotes() -> None:
    for (pid, framework), zygote in list(_ZYGOTES.items()):
        if pid == os.getpid():
            zygote.close()
            del _ZYGOTES[(pid, framework)]


# ---------------------------------------------------------------------------------------------
# inside the zygote and its grandchildren


_REPLIES = 1  # the zygote's fd for replies to the parent (its stdout until imports could print there)


def _send(message: dict[str, Any]) -> None:
    os.write(_REPLIES, json.dumps(message).encode() + b"\n")


def _zygote_main() -> None:
    """The zygote: import the framework, then fork a grandchild per job line read from stdin."""
    import importlib

    global _REPLIES
    framework = sys.argv[1]
    # Replies get their own fd; whatever the imports print goes to stderr (the terminal when verbose,
    # else /dev/null), not into the replies.
    _REPLIES = os.dup(1)
    os.dup2(2, 1)
    try:
        for name in PRELOAD[framework]:
            try:
                importlib.import_module(name)
            except ImportError as exc:
                if name in ("tensorflow", "keras", "tf2onnx", "torch"):
                    errors.require(name, "tensorflow" if framework == "tensorflow" else "torch")
                raise errors.ConversionError(f"cannot import {name} for converting: {exc}") from None
    except errors.ZooError as exc:
        _send({"ready": False, "type": type(exc).__name__, "error": str(exc)})
        return
    except BaseException as exc:  # noqa: BLE001  reported to the parent as one line
        _send({"ready": False, "error": f"cannot import {framework}: {type(exc).__name__}: {exc}"})
        return
    _send({"ready": True})
    for line in sys.stdin.buffer:
        job = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _grandchild(job)  # never returns
        _send({"pid": pid})
        _, status = os.waitpid(pid, 0)
        _send({"status": status})


def _grandchild(job: dict[str, Any]) -> None:
    """Confine this process to the scratch folder, convert, write the result there, exit."""
    code = _EXIT_FAILURE
    scratch = job["scratch"]
    try:
        os.close(_REPLIES)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        _capture_streams(scratch)
        from zoo.logs import LOG_FILE_ENV

        os.environ[LOG_FILE_ENV] = os.path.join(scratch, "zoo.log")  # the cache's log is outside the sandbox
        try:
            status = enter_sandbox(scratch)
        except OSError as exc:  # the kernel has Landlock but refuses the rules: never convert unconfined silently
            _write_json(os.path.join(scratch, "error.json"), {
                "type": "ConversionError",
                "message": f"cannot confine the converter with Linux Landlock ({exc}); if you trust "
                           f"{job['path']}, convert it without the sandbox with ZOO_SANDBOX=off"})
            os._exit(_EXIT_ZOO_ERROR)
        _write_json(os.path.join(scratch, "sandbox.json"), status)
        code = _convert(job, scratch)
    except OSError as exc:
        code = _EXIT_DISK_FULL if exc.errno in _DISK_FULL else code
        _record_failure(scratch)
    except BaseException:  # noqa: BLE001  reported through the scratch folder
        _record_failure(scratch)
    finally:
        os._exit(code)


def _capture_streams(scratch: str) -> None:
    """stdin from /dev/null; stdout and stderr (a model's prints, TensorFlow's logs) into output.log."""
    os.chdir(scratch)
    out = os.open(os.path.join(scratch, "output.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    os.close(null)


def enter_sandbox(scratch: str) -> dict[str, Any]:
    """Confine this process to writing in `scratch` (unless ZOO_SANDBOX=off); what was enforced, as a dict.

    `scratch` becomes the temp folder too: the only place left to write temporary files.
    """
    import tempfile

    from zoo.landlock import SandboxStatus, restrict_writes

    os.environ["TMPDIR"] = scratch
    tempfile.tempdir = scratch
    if os.environ.get("ZOO_SANDBOX", "").strip().lower() in ("0", "off", "no", "false"):
        status = SandboxStatus(active=False, reason="turned off with ZOO_SANDBOX=off")
    else:
        status = restrict_writes([scratch])
    return {**status.to_dict(), "process": "child", "summary": status.describe()}


def _convert(job: dict[str, Any], scratch: str) -> int:
    import importlib

    try:
        conversion = importlib.import_module(job["module"]).convert(job["path"], **job["options"])
        _save_model(conversion.model, os.path.join(scratch, "model.onnx"))
        _write_json(os.path.join(scratch, "report.json"), conversion.report.to_dict())
        from converters.onnx_model import input_records

        _write_json(os.path.join(scratch, "inputs.json"), input_records(conversion.model))
        return 0
    except errors.ZooError as exc:
        _write_json(os.path.join(scratch, "error.json"), {"type": type(exc).__name__, "message": str(exc)})
    except MemoryError:
        _write_json(os.path.join(scratch, "error.json"), {
            "type": "ConversionError",
            "message": f"converting {job['path']} ran out of memory; free some memory or convert it on a "
                       f"machine with more"})
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            return _EXIT_DISK_FULL
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        _write_json(os.path.join(scratch, "error.json"), {"type": type(_write_error(exc, scratch)).__name__,
                                                          "message": _os_message(exc, job["path"])})
    return _EXIT_ZOO_ERROR


def _os_message(exc: OSError, path: str) -> str:
    return (f"converting {path} tried to write {exc.filename or 'a file'} outside its scratch folder and the "
            f"sandbox refused ({exc.strerror}); a model must not write files while it is converted")


def _save_model(model: onnx.ModelProto, path: str) -> None:
    import onnx

    onnx.save(model, path)


def _record_failure(scratch: str) -> None:
    import traceback

    with contextlib.suppress(BaseException):
        exc = sys.exc_info()[1]
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        _write_json(os.path.join(scratch, "error.json"), {"type": "internal",
                                                          "message": f"{type(exc).__name__}: {first}"})
        with open(os.path.join(scratch, "traceback.txt"), "w") as fh:
            traceback.print_exc(file=fh)


def _write_json(path: str, data: Any) -> None:
    with open(path, "w") as fh:
        json.dump(data, fh)


__all__ = ["CONVERT_TIMEOUT", "FRAMEWORK", "IsolatedConversion", "convert_isolated", "enter_sandbox"]
