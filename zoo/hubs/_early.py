"""A hub search started before the catalog opens, so the wait for the hub overlaps the catalog's start.

Both sides of `zoo search --hub` are mostly imports: the hub's client (huggingface_hub) and the
catalog's SQLAlchemy. Imports hold the GIL, so a thread overlaps only the requests. On Linux the
search runs in a forked child instead: the child imports the client, asks the hub and sends the
models back as JSON over a pipe, while the parent imports SQLAlchemy and opens the catalog. The
parent never imports the hub's client then. The child only searches: it never touches the catalog,
its output goes to /dev/null, it leaves by ``os._exit`` (no atexit, none of the parent's buffers
flushed), and it dies with the parent (killed and reaped when the parent stops before reading it,
SIGKILL by the kernel when the parent dies).

A zoo error the child meets (`HubError` and its status, `MissingDependencyError`...) is raised in
the parent as it was raised there, fields and all. Anything else it cannot hand over (another
exception, a crash) makes the parent search again itself, so that error shows as it would have.

Where forking is unsafe the search runs in a thread as before: off Linux (macOS system libraries
do not survive a fork), and when the process already runs other threads (a threaded program
calling `zoo.hubs.search`, a test's loopback server): one of them may hold a lock the child would
wait on forever.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from typing import TYPE_CHECKING, Callable, NoReturn, Protocol, Sequence

from zoo import errors
from zoo.records import Model

if TYPE_CHECKING:
    from types import ModuleType

__all__ = ["EarlySearch", "start_search"]

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class EarlySearch(Protocol):
    """A hub search under way: `asked` is the (author, libraries) it was sent with."""

    asked: tuple[str | None, list[str]]

    def result(self) -> list[Model]:
        """The models found (or the search's error), once it is done."""

    def close(self) -> None:
        """Abandon the search if it is still under way; safe to call again."""


def start_search(module: ModuleType, query: str | None, author: str | None, libraries: Sequence[str] | None,
                 limit: int) -> EarlySearch:
    """Start `module.search(...)` in a forked child where that is safe, else in a thread."""
    asked = (author, list(libraries or module.DEFAULT_LIBRARIES))
    if _can_fork():
        return _ChildSearch(module, query, asked, limit)
    return _ThreadSearch(module, query, asked, limit)


def _can_fork() -> bool:
    if sys.platform != "linux":
        return False
    try:  # every thread of the process, not only Python's (a library's native pool counts too)
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


class _ChildSearch:
    """The search in a forked child that writes its answer to a pipe (see the module docstring)."""

    def __init__(self, module: ModuleType, query: str | None, asked: tuple[str | None, list[str]],
                 limit: int) -> None:
        self.asked = asked
        self._again = lambda: module.search(query, author=asked[0], libraries=asked[1], limit=limit)
        parent = os.getpid()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            _child(self._again, write, parent)
        os.close(write)
        self._pid: int | None = pid
        self._read: int | None = read

    def result(self) -> list[Model]:
        try:
            chunks = []
            while chunk := os.read(self._read, 1 << 16):
                chunks.append(chunk)
            _, status = os.waitpid(self._pid, 0)  # the pipe closes when the child exits
            self._pid = None
        finally:
            self.close()
        if status != 0:  # it met what it cannot hand over, or died: ask here, where that shows as itself
            return self._again()
        answer = json.loads(b"".join(chunks))
        if "error" in answer:
            kind = getattr(errors, answer["error"])
            raise kind(answer["message"], **answer["fields"])
        return [Model.from_dict(data) for data in answer["models"]]

    def close(self) -> None:
        if self._read is not None:
            os.close(self._read)
            self._read = None
        if self._pid is not None:
            pid, self._pid = self._pid, None
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def _child(search: Callable[[], list[Model]], write: int, parent: int) -> NoReturn:
    """In the child: run the search, write its models (or its zoo error) as JSON, exit."""
    code = 1
    try:
        quiet = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(quiet, fd)
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C: the parent stops, and reaps this child
        _die_with(parent)
        try:
            answer = {"models": [model.to_dict() for model in search()]}
        except errors.ZooError as error:
            if type(error) is not getattr(errors, type(error).__name__, None):
                raise  # not one of zoo.errors': the parent searches again
            answer = {"error": type(error).__name__, "message": str(error), "fields": error.fields}
        data = memoryview(json.dumps(answer).encode())
        while data:
            data = data[os.write(write, data):]
        code = 0
    except BaseException:  # noqa: BLE001  no answer: the parent searches again and meets it itself
        pass
    finally:
        os._exit(code)


def _die_with(parent: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies, whatever kills the parent."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), ctypes.c_ulong(0),
                                            ctypes.c_ulong(0), ctypes.c_ulong(0))
    if os.getppid() != parent:  # it died before the line above
        os._exit(1)


class _ThreadSearch:
    """The search in a thread (the hub's client is imported here, in the caller's thread: only the
    requests overlap the catalog's start)."""

    def __init__(self, module: ModuleType, query: str | None, asked: tuple[str | None, list[str]],
                 limit: int) -> None:
        import threading

        self.asked = asked
        self._found: list[Model] | None = None
        self._error: BaseException | None = None
        if hasattr(module, "client"):
            module.client()  # imports stay in this thread
        self._thread = threading.Thread(target=self._run, args=(module, query, limit), daemon=True,
                                        name="zoo-hub-search")
        self._thread.start()

    def _run(self, module: ModuleType, query: str | None, limit: int) -> None:
        try:
            self._found = module.search(query, author=self.asked[0], libraries=self.asked[1], limit=limit)
        except BaseException as error:  # handed to the caller by result()
            self._error = error

    def result(self) -> list[Model]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._found or []

    def close(self) -> None:
        pass  # a daemon thread that only waits on the hub: left to end by itself
