"""HTTP transport for model files: resume, retries, stall rule, mirrors, locks, checksums, offline, auth.

`download` fetches one file from a list of mirror URLs into place (`zoo.download.fetch` does it
for every file of a cataloged model). How a download goes: take the `<dest>.lock` file lock;
reuse `dest` if it is already there and verifies; otherwise stream into `<dest>.part` (hashing
sha256 and the publisher's checksum in the same pass), resuming with Range + If-Range from
whatever an earlier attempt or run left (its validator is kept in `<dest>.part.json`); verify
size and checksum; rename into place.
"""
from __future__ import annotations

import email.utils
import errno
import json
import logging
import os
import queue
import re
import threading
import time
import urllib.parse
import urllib.request
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from zoo import config
from zoo._redact import mask_url
from zoo.archives import parse_size
from zoo.atomic import write_error
from zoo.units import human_size
from zoo.errors import ChecksumError, DiskFullError, FetchError, OfflineError
from zoo.hashes import MultiHasher, file_hash, parse_checksum

if TYPE_CHECKING:
    import requests

# The logger keeps its name from before the split: `zoo fetch` and users' logging configs listen to it.
log = logging.getLogger("zoo.download")

CHUNK = 1 << 20
MAX_REDIRECTS = 10
# progress(bytes of the file on disk so far, total size or None)
Progress = Callable[[int, "int | None"], None]


@dataclass(frozen=True)
class RetryPolicy:
    """How hard `download` tries before it gives up, and how long it waits.

    Attributes:
        retries: attempts per URL after connection errors, stalls, 5xx and 429 (the count restarts
            whenever an attempt brought ``min_rate * stall_seconds`` bytes or more). A refused
            connection or an unknown host is not retried: the next URL is tried at once.
        backoff: the first wait; then ``backoff * 2**n`` seconds, or what Retry-After asks.
        max_wait: the longest single wait.
        timeout: (connect, read) seconds; a server silent for longer is retried, then given up.
        min_rate, stall_seconds: an attempt bringing under `min_rate` bytes/s over `stall_seconds`
            is stalled: cut and retried (resuming); a trickle is not progress, so `retries` stalls
            in a row give up. None: ``$ZOO_FETCH_MIN_RATE`` or 1 KiB/s, ``$ZOO_FETCH_STALL_SECONDS``
            or 30 s; ``min_rate=0`` turns the rule off.
        max_time: seconds one file may take over all attempts and mirrors; None:
            ``$ZOO_FETCH_MAX_TIME`` or 12 h; 0 for no bound. The .part is kept for a rerun.
        lock_timeout: seconds to wait for another process downloading the same file; None waits.
    """

    retries: int = 4
    backoff: float = 0.5
    max_wait: float = 60.0
    timeout: float | tuple[float, float] = (10, 60)
    min_rate: float | None = None
    stall_seconds: float | None = None
    max_time: float | None = None
    lock_timeout: float | None = None

    def replace(self, **changes: Any) -> RetryPolicy:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def resolved(self) -> RetryPolicy:
        """This policy with the environment's (else the defaults') stall rule and bound filled in."""
        min_rate = self.min_rate
        if min_rate is None:
            min_rate = _env_number("ZOO_FETCH_MIN_RATE", DEFAULT_MIN_RATE, size=True)
        stall = self.stall_seconds
        if stall is None:
            stall = _env_number("ZOO_FETCH_STALL_SECONDS", DEFAULT_STALL_SECONDS)
        max_time = self.max_time
        if max_time is None:
            max_time = _env_number("ZOO_FETCH_MAX_TIME", DEFAULT_MAX_TIME)
        return dataclasses.replace(self, min_rate=max(0.0, min_rate), stall_seconds=max(0.001, stall),
                                   max_time=max_time)


@dataclass
class DownloadResult:
    """What `download` did: where the file is, its sha256, and how much went over the wire."""

    path: Path
    sha256: str
    size: int
    seconds: float
    bytes_transferred: int
    url: str | None  # credentials redacted; None when a verified cached copy was reused
    cached: bool = False

    @property
    def throughput(self) -> float:
        """Bytes per second actually transferred (0 for a cached copy)."""
        return self.bytes_transferred / self.seconds if self.seconds > 0 else 0.0


class _WriteError(FetchError):
    """Writing the download failed (permissions): no other mirror can fix that."""


class _DiskFull(_WriteError, DiskFullError):
    """The disk filled up during a download; the partial file was removed."""


class _OutOfTime(FetchError):
    """The overall time bound for one file ran out; no other mirror gets a turn."""


class _Retry(Exception):
    """A transient failure: wait `wait` seconds (None: exponential backoff) and try again."""

    def __init__(self, reason: str, wait: float | None = None):
        super().__init__(reason)
        self.reason, self.wait = reason, wait


class _Stalled(_Retry):
    """Bytes trickle in below the minimum rate: retried, but the trickle is not progress."""

    def __init__(self, reason: str, trickle: int):
        super().__init__(reason)
        self.trickle = trickle  # bytes of the window that was too slow


# A transfer slower than 1 KiB/s for 30 s is stalled (curl's --speed-limit/--speed-time
# idea): a server sending a byte every few seconds never trips a read timeout. 12 h bounds
# one file whatever happens (a 5 GiB archive needs only 120 KiB/s to finish in it).
DEFAULT_MIN_RATE = 1024
DEFAULT_STALL_SECONDS = 30.0
DEFAULT_MAX_TIME = 12 * 3600.0


def _env_number(name: str, default: float, size: bool = False) -> float:
    """A positive number from the environment (a size like 10K when `size`), else `default`."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return float(parse_size(text, name)) if size else float(text)
    except (ValueError, FetchError):
        raise FetchError(f"{name}={text!r} is not a number; unset it or give e.g. {default:g}") from None


# --------------------------------------------------------------------------------------
# small helpers


def _is_remote(url: str) -> bool:
    return urllib.parse.urlsplit(url).scheme.lower() in ("http", "https")


def _local_path(url: str) -> Path | None:
    """The file a file:// URL or a plain path names, or None for other schemes."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() == "file":
        return Path(urllib.request.url2pathname(parts.path))
    if parts.scheme == "" or (len(parts.scheme) == 1 and os.name == "nt"):
        return Path(url).expanduser()
    return None


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) from a Content-Range header such as 'bytes 100-199/1000'."""
    m = re.match(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", value or "")
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def _looks_like_html(data: bytes) -> bool:
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or (
        head.startswith((b"<!--", b"<?xml")) and b"<html" in head
    )


class _BearerAuth:
    """Adds `Authorization: Bearer <token>`; its repr never shows the token."""

    def __init__(self, token: str):
        self._token = token

    def __call__(self, request):
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return "<bearer token from ZOO_TOKEN>"


def _token_hosts(hosts: Iterable[str] | None) -> set[str] | None:
    """Where ZOO_TOKEN may go: the hosts given, else $ZOO_TOKEN_HOSTS, else None (any URL's own host)."""
    if hosts is None:
        env = os.environ.get("ZOO_TOKEN_HOSTS", "")
        hosts = env.split(",") if env.strip() else None
    return None if hosts is None else {h.strip().lower() for h in hosts if h.strip()}


def new_session() -> "requests.Session":
    """A requests session for downloads (reads .netrc for hosts it lists, as requests does)."""
    import requests

    session = requests.Session()
    session.headers["User-Agent"] = f"zoo/{config.version()} (model zoo fetcher; python-requests)"
    return session


def _file_lock(dest: Path, label: str, lock_timeout: float | None):
    """The download's lock, `<dest>.lock`; its holder deletes it when done (`zoo.locks`), so no
    fetch, finished or failed, leaves a lock file behind."""
    from zoo.locks import LockTimeout, RemovableLock

    lock = RemovableLock(str(dest) + ".lock")
    try:
        lock.acquire(timeout=0.2)
    except LockTimeout:
        log.warning("waiting for another process that is downloading %s (%s.lock)", label, dest)
        try:
            lock.acquire(timeout=lock_timeout)
        except LockTimeout:
            raise FetchError(
                f"{label}: another process has held {dest}.lock for over {lock_timeout:.0f} s; "
                "wait for it to finish or, if no zoo process is running, delete the .lock file"
            ) from None
    return lock


# --------------------------------------------------------------------------------------
# what the file must be


@dataclass(frozen=True)
class Expected:
    """What a downloaded file must be: its size, the publisher's checksum, a sha256 pinned before.

    Attributes:
        size: bytes, when published.
        checksum: the publisher's, ``"algo:hex"`` (sha256, sha1, md5, gitblob).
        sha256: the sha256 an earlier fetch recorded; it must match too.
    """

    size: int | None = None
    checksum: str | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        sums = [parse_checksum(self.checksum)] if self.checksum else []  # a malformed one fails here
        if self.sha256:
            pin = parse_checksum("sha256:" + self.sha256)
            if pin not in sums:
                sums.append(pin)
        object.__setattr__(self, "checksums", sums)

    checksums: list[tuple[str, str]] = field(default_factory=list, init=False, repr=False, compare=False)

    @property
    def algos(self) -> list[str]:
        return [algo for algo, _ in self.checksums]

    def strong(self) -> bool:
        return bool(self.checksums)

    def problem(self, path: Path, hasher: MultiHasher | None, nbytes: int) -> _Mismatch | None:
        """None when `path` (hashed by `hasher`, when given) is right, else what is wrong."""
        if self.size is not None and nbytes != self.size:
            return _Mismatch(f"size is {nbytes} bytes, expected {self.size}", self.size, nbytes)
        for algo, want in self.checksums:
            got = hasher.hexdigest(algo) if hasher is not None else None
            if got is None:  # a git blob id whose size was not known up front
                got = file_hash(path, algo)
            if got != want:
                return _Mismatch(f"{algo} does not match: expected {want}, got {got}",
                                 f"{algo}:{want}", f"{algo}:{got}")
        return None


@dataclass(frozen=True)
class _Mismatch:
    """What is wrong with a file: the sentence, and the expected and found size or checksum."""

    text: str
    expected: Any
    got: Any

    def __str__(self) -> str:
        return self.text


def _hash_file(path: Path, algos: Sequence[str]) -> MultiHasher:
    size = path.stat().st_size
    hasher = MultiHasher(list(algos), size=size)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            hasher.update(chunk)
    return hasher


# --------------------------------------------------------------------------------------
# download


def download(
    urls: str | os.PathLike | Sequence[str | os.PathLike],
    dest: str | os.PathLike,
    *,
    expected: Expected | None = None,
    retry: RetryPolicy | None = None,
    session: "requests.Session | None" = None,
    progress: Progress | None = None,
    force: bool = False,
    offline: bool | None = None,
    label: str | None = None,
    token_hosts: Iterable[str] | None = None,
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> DownloadResult:
    """Download one file from the first of `urls` that works into `dest`, verified.

    Args:
        urls: mirror URLs tried in order: http(s)://, file:// or plain local paths.
        dest: where the verified file ends up (written as `<dest>.part` first).
        expected: its size, the publisher's checksum ("sha256:<hex>", "sha1:", "md5:",
            "gitblob:") and a sha256 pinned by an earlier fetch (`Expected`), checked in the same
            pass as the download.
        retry: retries and backoff, timeouts, the stall rule, the bound on one file and the wait
            for another process's lock (`RetryPolicy`; its defaults and the environment's).
        session: a requests.Session to reuse connections. .netrc credentials go to the host
            they are listed for (requests reads ~/.netrc or $NETRC).
        progress: called as progress(bytes_on_disk, total_or_None) while downloading; an
            exception it raises (e.g. KeyboardInterrupt) stops the download, keeping the .part.
        force: download again even when `dest` is there and verifies.
        offline: never touch the network (default: $ZOO_OFFLINE); local files still work.
        label: how messages name the file, e.g. "weights resnet50.caffemodel of resnet50.caffe".
        token_hosts: host names ZOO_TOKEN (a bearer token) may be sent to; default
            $ZOO_TOKEN_HOSTS (comma-separated), else the host of each URL given. Never sent to
            another host after a redirect, never printed.
        token: the bearer token to send under those rules instead of ZOO_TOKEN (a hub's).
        headers: extra request headers (a hub client's User-Agent).

    Returns:
        Where the file is, its sha256 and size, and what went over the wire.

    Raises:
        ChecksumError: the file is not what `expected` says (the download is deleted).
        OfflineError: offline and not cached (`missing` says what).
        FetchError: HTTP errors, HTML instead of a file, redirect loops, stalls, disk full.
        A KeyboardInterrupt keeps the `.part` for the next run to resume.

    >>> download(["https://example.org/w.bin"], "w.bin", expected=Expected(checksum="sha1:..."))  # doctest: +SKIP
    """
    if isinstance(urls, (str, os.PathLike)):
        urls = [urls]
    url_list = [os.fspath(u) for u in urls]
    dest = Path(dest).expanduser().absolute()
    label = label or dest.name
    expected = expected or Expected()
    retry = (retry or RetryPolicy()).resolved()
    offline = config.offline() if offline is None else offline
    if not url_list:
        raise FetchError(f"{label} has no URL to download from; add one to its catalog entry")
    try:  # an unwritable cache is one line naming the folder, before any byte is fetched
        dest.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        lock = _file_lock(dest, label, retry.lock_timeout)
    except OSError as exc:
        raise write_error(exc, dest) from None
    try:
        stale = None
        if dest.is_file() and not force:
            hasher = _hash_file(dest, expected.algos)
            stale = expected.problem(dest, hasher, hasher.count)
            if stale is None:
                for leftover in (dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".part.json")):
                    leftover.unlink(missing_ok=True)  # a verified file makes any partial one moot
                return DownloadResult(
                    dest, hasher.hexdigest(), hasher.count, time.monotonic() - started, 0, None, cached=True
                )
            log.warning("cached %s is not right (%s); downloading it again", dest, stale)
        if offline:
            local = [u for u in url_list if not _is_remote(u)]
            if not local:
                why = f"the cached copy {dest} is not right ({stale})" if stale else f"{dest} does not exist"
                raise OfflineError(
                    f"offline mode is on and {label} is not cached: {why}; it would come from "
                    f"{mask_url(url_list[0])}. Fetch it while online (unset ZOO_OFFLINE / drop --offline)",
                    missing=[f"{why}; from {mask_url(url_list[0])}"],
                )
            url_list = local
        own_session = session is None and any(_is_remote(u) for u in url_list)
        if own_session:
            session = new_session()
        try:
            job = _Job(dest, expected, session, retry, progress, label)
            job.token_hosts = _token_hosts(token_hosts)
            if token is not None:
                job.token = token or None
            job.extra_headers = dict(headers or {})
            errors: list[FetchError] = []
            for url in url_list:
                try:
                    return job.run(url, started)
                except (_WriteError, _OutOfTime):
                    raise
                except FetchError as exc:
                    errors.append(exc)
                    if len(url_list) > 1:
                        log.warning("%s; trying the next URL", exc)
            if len(errors) == 1:
                raise errors[0]
            kind = type(errors[-1]) if all(type(e) is type(errors[-1]) for e in errors) else FetchError
            raise kind(f"every URL for {label} failed: " + "; ".join(str(e) for e in errors))
        finally:
            if own_session:
                session.close()
    finally:
        lock.release(remove=True)


class _Job:
    """One file's download state shared by its attempts and mirrors."""

    def __init__(self, dest: Path, expected: Expected, session: Any, retry: RetryPolicy, progress: Progress | None,
                 label: str) -> None:
        self.dest: Path = dest
        self.part = dest.with_name(dest.name + ".part")
        self.meta = dest.with_name(dest.name + ".part.json")
        self.expected: Expected = expected
        self.session = session
        self.timeout = retry.timeout
        self.retries, self.backoff, self.max_wait = retry.retries, retry.backoff, retry.max_wait
        self.progress = progress
        self.label = label
        self.chunk_size = CHUNK
        self.transferred = 0
        self.token = os.environ.get("ZOO_TOKEN") or None
        self.token_hosts: set[str] | None = None  # None: the host of each URL given
        self.extra_headers: dict[str, str] = {}
        # The .part's bytes as hashed so far; None until the .part has been looked at.
        self.hasher: MultiHasher | None = None
        self.offset = 0
        self.total: int | None = None
        self.validator: str | None = None
        self.resumed_bytes = 0  # bytes of the .part that came from an earlier attempt or run
        # The stall rule and the overall bound (the policy's, resolved from the environment).
        self.min_rate, self.stall_seconds = retry.min_rate, retry.stall_seconds
        self.max_time: float | None = retry.max_time if retry.max_time > 0 else None
        self.deadline: float | None = time.monotonic() + retry.max_time if retry.max_time > 0 else None

    def _check_time(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            kept = (
                f"the {self.offset} bytes received are kept in {self.part} and running the same command "
                "again resumes from there" if self.offset and self.part.exists() else "nothing was kept"
            )
            raise _OutOfTime(
                f"{self.label}: not finished after {self.max_time:g} s, the bound for one file "
                f"(ZOO_FETCH_MAX_TIME); {kept}"
            )

    def _resume_hint(self) -> str:
        if self.offset and self.part.exists():
            return f"; the {self.offset} bytes received are kept and running the same command resumes"
        return ""

    # -- the .part file --------------------------------------------------------------

    def _new_hasher(self, total: int | None) -> MultiHasher:
        return MultiHasher(self.expected.algos, size=self.expected.size if self.expected.size is not None else total)

    def _reset(self) -> None:
        """Start the .part over, empty."""
        self.part.unlink(missing_ok=True)
        self.meta.unlink(missing_ok=True)
        self.offset, self.total, self.validator = 0, None, None
        self.resumed_bytes = 0
        self.hasher = self._new_hasher(None)

    def _discard(self) -> None:
        self.part.unlink(missing_ok=True)
        self.meta.unlink(missing_ok=True)
        self.hasher = None

    def _load_part(self, url: str) -> None:
        """Pick up a .part left by an earlier run, if it can be resumed safely."""
        if self.hasher is not None and self.part.is_file() and self.part.stat().st_size == self.offset:
            return  # another mirror of this same run: the hash state is already right
        saved: dict[str, Any] = {}
        try:
            saved = json.loads(self.meta.read_text())
        except (OSError, ValueError):
            pass
        validator = saved.get("validator")
        if not self.part.is_file() or self.part.stat().st_size == 0:
            return self._reset()
        # Without a validator (If-Range) only a checksum can tell a mix of two versions apart.
        if not _is_remote(url) or (validator is None and not self.expected.strong()):
            log.info("not resuming %s: nothing to check it against", self.part)
            return self._reset()
        self.total = saved.get("total")
        self.validator = validator
        # Hash what is there so the rest can be hashed as it arrives (one read of the .part).
        self.hasher = self._new_hasher(self.total)
        with open(self.part, "rb") as f:
            while chunk := f.read(CHUNK):
                self.hasher.update(chunk)
        self.offset = self.hasher.count
        log.info("resuming %s at byte %d", self.label, self.offset)

    def _save_meta(self, url: str) -> None:
        tmp = self.meta.with_name(self.meta.name + ".tmp")
        tmp.write_text(json.dumps({"url": mask_url(url), "validator": self.validator, "total": self.total}))
        os.replace(tmp, self.meta)

    # -- running ---------------------------------------------------------------------

    def run(self, url: str, started: float) -> DownloadResult:
        source = _local_path(url)
        if source is None and not _is_remote(url):
            raise FetchError(
                f"{self.label}: unsupported URL scheme in {mask_url(url)}; use http(s)://, file:// or a local path"
            )
        restarted = False
        while True:
            if source is not None:
                self._copy_local(source)
            else:
                self._download_http(url)
            problem = self.expected.problem(self.part, self.hasher, self.offset)
            if problem is None:
                break
            resumed = self.resumed_bytes > 0
            self._discard()
            if resumed and not restarted and source is None:
                # The earlier bytes may be of an older version of the file: redo it whole once.
                log.warning("%s: resumed download did not verify (%s); downloading it whole", self.label, problem)
                restarted = True
                continue
            raise ChecksumError(
                f"{self.label} from {mask_url(url)}: {problem}. Deleted the download for safety; the "
                "file changed upstream, the mirror serves something else, or the catalog entry is wrong",
                path=str(self.dest), expected=problem.expected, got=problem.got,
            )
        size = self.offset
        sha = self.hasher.hexdigest("sha256")
        # No fsync before the rename: a file cut short by a crash is caught anyway, because a
        # cached file is re-hashed before every reuse (and `zoo verify` re-hashes on demand).
        try:
            os.replace(self.part, self.dest)
        except OSError as exc:
            self._discard()
            raise FetchError(f"{self.label}: cannot move the download into {self.dest}: {exc}") from None
        self.meta.unlink(missing_ok=True)
        return DownloadResult(self.dest, sha, size, time.monotonic() - started, self.transferred, mask_url(url))

    def _write_error(self, exc: OSError) -> FetchError:
        self._discard()
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            need = f" ({human_size(self.total or self.expected.size or 0)} needed)" if (self.total or self.expected.size) else ""
            return _DiskFull(
                f"disk full while writing {self.part}{need}: removed the partial download of {self.label}; "
                "free some space or point ZOO_CACHE / --cache-dir at a bigger disk"
            )
        return _WriteError(f"cannot write {self.part} for {self.label}: {exc.strerror or exc}")

    def _copy_local(self, source: Path) -> None:
        if not source.is_file():
            raise FetchError(f"{self.label}: local file {source} does not exist")
        self._reset()
        total = source.stat().st_size
        self.total = total
        self.hasher = self._new_hasher(total)
        try:
            with open(source, "rb") as src, open(self.part, "wb") as out:
                while chunk := src.read(self.chunk_size):
                    out.write(chunk)
                    self.hasher.update(chunk)
                    self.offset += len(chunk)
                    if self.progress:
                        self.progress(self.offset, total)
        except OSError as exc:
            if exc.filename == str(source) or not self.part.exists():
                raise FetchError(f"{self.label}: cannot read {source}: {exc.strerror or exc}") from None
            raise self._write_error(exc) from None

    def _download_http(self, url: str) -> None:
        self._load_part(url)
        self.resumed_bytes = self.offset
        failures = 0
        # Progress that makes a broken attempt not count: what the minimum rate brings in one
        # stall window. A server that drops every connection after a few bytes is not flaky.
        enough = max(1, int(self.min_rate * self.stall_seconds))
        while True:
            self._check_time()
            before = self.offset
            trickle = 0
            try:
                if self._attempt(url):
                    return
                reason, wait = "the connection closed before the end of the file", None
            except _Retry as retry:
                reason, wait, trickle = retry.reason, retry.wait, getattr(retry, "trickle", 0)
            if self.offset - before - trickle >= enough:
                failures = 0  # progress: this is a flaky link, not a dead one
            failures += 1
            if failures > self.retries:
                raise FetchError(
                    f"{self.label}: giving up on {mask_url(url)} after {self.retries} retries: {reason}"
                    f"{self._resume_hint()}"
                )
            if wait is None:
                wait = self.backoff * 2 ** (failures - 1)
            wait = min(wait, self.max_wait)
            if self.deadline is not None:
                wait = max(0.0, min(wait, self.deadline - time.monotonic() + 0.01))
            log.warning("%s: %s; retrying in %.1f s (%d/%d)", self.label, reason, wait, failures, self.retries)
            time.sleep(wait)

    def _request(self, url: str, headers: dict[str, str]):
        """GET following redirects ourselves: loops are named, auth never crosses hosts."""
        import requests

        current, seen = url, [url]
        first_origin = _origin(url)
        for _ in range(MAX_REDIRECTS + 1):
            # The bearer token goes only to the origin the catalog named, so a redirect to a
            # CDN or another host never sees it; auth=None lets requests use .netrc for the
            # host it is listed for, as it does for any request.
            send_token = self.token and _origin(current) == first_origin and (
                self.token_hosts is None or first_origin[1] in self.token_hosts
            )
            auth = _BearerAuth(self.token) if send_token else None
            try:
                resp = self.session.get(
                    current, headers=headers, stream=True, timeout=self.timeout, allow_redirects=False, auth=auth
                )
            except requests.exceptions.SSLError as exc:  # not transient: retrying will not help
                raise FetchError(
                    f"{self.label}: TLS check failed for {mask_url(current)} ({type(exc).__name__}); behind a "
                    "proxy that re-signs traffic, point REQUESTS_CA_BUNDLE at its certificate"
                ) from None
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                if _unreachable(exc):  # offline, no such host, nothing listening: retrying cannot help
                    raise FetchError(f"{self.label}: {self._describe(exc, current)}") from None
                raise _Retry(self._describe(exc, current)) from None
            except requests.exceptions.RequestException as exc:  # a malformed URL and the like
                raise FetchError(f"{self.label}: cannot request {mask_url(current)}: {type(exc).__name__}") from None
            if not resp.is_redirect:
                return resp
            location = urllib.parse.urljoin(current, resp.headers.get("Location", ""))
            resp.close()
            if location in seen:
                chain = " -> ".join(mask_url(u) for u in [*seen[seen.index(location):], location])
                raise FetchError(f"{self.label}: redirect loop: {chain}; the server is misconfigured")
            seen.append(location)
            current = location
        raise FetchError(
            f"{self.label}: more than {MAX_REDIRECTS} redirects starting at {mask_url(url)}; the server is misconfigured"
        )

    def _describe(self, exc: Exception, url: str) -> str:
        import requests

        text = str(exc)
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            return f"cannot connect to {mask_url(url)} (connect timeout)"
        if isinstance(exc, requests.exceptions.ReadTimeout) or "Read timed out" in text:
            read = self.timeout[1] if isinstance(self.timeout, tuple) else self.timeout
            return f"{mask_url(url)} sent nothing for {read} s (read timeout)"
        if "NameResolutionError" in text or "Failed to resolve" in text:
            host = urllib.parse.urlsplit(url).hostname
            return f"cannot resolve host {host} (no network or DNS?; cached files work with --offline)"
        if "Network is unreachable" in text or "No route to host" in text:
            return (f"cannot connect to {mask_url(url)} (no route to its host: no network?; cached files "
                    "work with --offline)")
        if "Connection refused" in text or "NewConnectionError" in text:
            return f"cannot connect to {mask_url(url)} (connection refused)"
        if "IncompleteRead" in text or "Connection broken" in text or "ProtocolError" in text:
            return f"the connection to {mask_url(url)} broke after {self.offset} bytes"
        return f"network error from {mask_url(url)}: {type(exc).__name__}"

    def _attempt(self, url: str) -> bool:
        """One request; True when the .part is complete. Raises _Retry or FetchError."""
        import requests

        if self.hasher is None:
            self._reset()
        # identity: a gzip-encoded body would make byte offsets meaningless for Range.
        headers = {**self.extra_headers, "Accept-Encoding": "identity"}
        if self.offset > 0:
            headers["Range"] = f"bytes={self.offset}-"
            if self.validator:
                headers["If-Range"] = self.validator
        resp = self._request(url, headers)
        with resp:
            status = resp.status_code
            if status == 416 and self.offset > 0:
                _, total = _content_range(resp.headers.get("Content-Range"))
                if total == self.offset:
                    return True  # an earlier run had the whole file already
                log.warning("%s: server refused to resume at byte %d; starting over", self.label, self.offset)
                self._reset()
                raise _Retry("the server refused to resume", wait=0)
            if status == 429 or status >= 500:
                wait = retry_after(resp.headers.get("Retry-After"))
                raise _Retry(f"{mask_url(resp.url)} answered HTTP {status} {resp.reason or ''}".rstrip(), wait)
            if status >= 400:
                hint = {
                    401: "it needs credentials: set ZOO_TOKEN (sent to the source's host or the hosts in "
                    "ZOO_TOKEN_HOSTS) or add the host to ~/.netrc",
                    403: "access is denied: check ZOO_TOKEN / ZOO_TOKEN_HOSTS / ~/.netrc, or the file is "
                    "no longer public",
                    404: "the file is gone or the URL is wrong: check the catalog entry or add a mirror",
                    410: "the file was removed upstream",
                }.get(status, "the request was refused")
                raise FetchError(
                    f"{self.label}: {mask_url(resp.url)} answered HTTP {status} {resp.reason or ''}; {hint}"
                )
            if status not in (200, 206):
                raise FetchError(f"{self.label}: unexpected HTTP {status} from {mask_url(resp.url)}")
            length = resp.headers.get("Content-Length")
            if status == 206:
                start, total = _content_range(resp.headers.get("Content-Range"))
                if start != self.offset:
                    self._reset()
                    raise _Retry(f"the server resumed at byte {start}, not {self.offset}; starting over", wait=0)
                self.total = total
            else:
                if self.offset > 0:
                    log.warning(
                        "%s: %s ignored the range (or the file changed); downloading it whole",
                        self.label, mask_url(resp.url),
                    )
                    self._reset()
                self.total = int(length) if length and length.isdigit() else None
                if self.total is not None and self.expected.size is not None and self.total != self.expected.size:
                    raise ChecksumError(
                        f"{self.label}: {mask_url(resp.url)} serves {self.total} bytes, expected "
                        f"{self.expected.size}; not downloading it. The file changed upstream, the mirror "
                        "serves something else, or the catalog entry is wrong",
                        path=str(self.dest), expected=self.expected.size, got=self.total,
                    )
                self.validator = self._validator(resp)
                self.hasher = self._new_hasher(self.total)
                self._save_meta(url)
            return self._stream(resp, requests)

    @staticmethod
    def _validator(resp) -> str | None:
        etag = resp.headers.get("ETag")
        if etag and not etag.startswith("W/"):  # If-Range only accepts strong validators
            return etag
        return resp.headers.get("Last-Modified")

    def _stream(self, resp, requests) -> bool:
        ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
        wants_html = self.dest.suffix.lower() in (".html", ".htm")
        chunks = _body(resp, self.chunk_size)
        import urllib3

        try:
            first = next(chunks, b"")
            if not wants_html and self.offset == 0 and (
                _looks_like_html(first) or (ctype == "text/html" and b"\0" not in first[:4096])
            ):
                self._discard()
                raise FetchError(
                    f"{self.label}: {mask_url(resp.url)} sent a web page (Content-Type {ctype or 'unknown'}) "
                    "instead of the file; it is probably a login, error or 'confirm download' page. "
                    "Open the URL in a browser, or set ZOO_TOKEN for a private zoo"
                )
            # Hash in a second thread (hashlib releases the GIL) so hashing overlaps the
            # socket reads and disk writes: sha256 alone is barely faster than loopback.
            pending: queue.Queue[bytes | None] = queue.Queue(maxsize=16)
            hasher = self.hasher
            worker = threading.Thread(target=_hash_worker, args=(pending, hasher), daemon=True)
            worker.start()
            window_start, window_bytes = time.monotonic(), 0
            out_of_time = False
            try:
                with open(self.part, "ab") as out:
                    for chunk in _chain(first, chunks):
                        out.write(chunk)
                        pending.put(chunk)
                        self.offset += len(chunk)
                        self.transferred += len(chunk)
                        if self.progress:
                            self.progress(self.offset, self.total)
                        window_bytes += len(chunk)
                        now = time.monotonic()
                        if now - window_start >= self.stall_seconds:
                            self._check_pace(window_bytes, now - window_start, resp.url)
                            window_start, window_bytes = now, 0
                        if self.deadline is not None and now > self.deadline:
                            out_of_time = True
                            break
            except OSError as exc:
                raise self._write_error(exc) from None
            finally:
                pending.put(None)
                worker.join()
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                requests.exceptions.ChunkedEncodingError, urllib3.exceptions.HTTPError, ConnectionError) as exc:
            raise _Retry(self._describe(exc, resp.url)) from None
        if out_of_time and self.offset != self.total:
            self._check_time()
        if self.total is not None and self.offset < self.total:
            return False
        if self.total is not None and self.offset > self.total:
            self._reset()
            raise _Retry("the server sent more bytes than it announced; starting over", wait=0)
        return True

    def _check_pace(self, nbytes: int, seconds: float, url: str) -> None:
        """Raise _Stalled when the last window brought less than the minimum rate."""
        if nbytes < self.min_rate * seconds:
            raise _Stalled(
                f"the transfer from {mask_url(url)} stalled: {nbytes} bytes in {seconds:.1f} s, under the "
                f"minimum of {human_size(self.min_rate)}/s (ZOO_FETCH_MIN_RATE, ZOO_FETCH_STALL_SECONDS)",
                trickle=nbytes,
            )


def _unreachable(exc: Exception) -> bool:
    """True when no connection could be made at all (DNS failure, refused, no route)."""
    import urllib3

    cause = exc.args[0] if exc.args else None  # requests wraps urllib3's MaxRetryError(reason=...)
    return isinstance(getattr(cause, "reason", cause), urllib3.exceptions.NewConnectionError)


def _hash_worker(pending: "queue.Queue[bytes | None]", hasher: MultiHasher) -> None:
    while (chunk := pending.get()) is not None:
        hasher.update(chunk)


def _body(resp, size: int) -> Iterable[bytes]:
    """The response body in pieces of at most `size` bytes.

    read1 hands over whatever has arrived, so when a connection breaks every byte received
    is already on disk (iter_content's full-size reads would drop a partial last chunk).
    """
    read1 = getattr(resp.raw, "read1", None)
    if read1 is None:
        yield from resp.iter_content(size)
        return
    while data := read1(size):
        yield data


def _chain(first: bytes, rest: Iterable[bytes]) -> Iterable[bytes]:
    if first:
        yield first
    yield from rest


__all__ = ["DownloadResult", "Expected", "Progress", "RetryPolicy", "download", "new_session"]
