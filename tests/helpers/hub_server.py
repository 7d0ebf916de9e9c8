"""A loopback server speaking the part of the Hugging Face Hub's HTTP API that huggingface_hub uses.

As the Hub documents it and huggingface_hub 0.36 reads it (``HfApi.list_models``, ``HfApi.model_info``,
``get_hf_file_metadata``, ``hf_raise_for_status``):

- ``GET /api/models?search=&author=&filter=&sort=downloads&direction=-1&limit=`` lists models
  (``id``, ``downloads``, ``likes``, ``tags``, ``pipeline_tag``, ``library_name``...); several
  ``filter`` values must all match (the Hub ANDs them);
- ``GET /api/models/OWNER/REPO[/revision/REV][?blobs=true]`` is a model's info at a revision: its
  commit ``sha``, ``cardData``, ``gated``, and ``siblings`` (with ``blobs=true`` each one's ``size``,
  git ``blobId`` and, for an LFS file, ``lfs: {sha256, size, pointerSize}``);
- ``HEAD|GET /OWNER/REPO/resolve/REV/PATH`` answers a regular file itself (``ETag`` its git blob id,
  ``X-Repo-Commit``) and an LFS file with a 302 to a second host (the `cdn`, a `FaultServer`:
  Range, If-Range, faults) with ``X-Linked-Etag`` (its sha256), ``X-Linked-Size`` and ``ETag`` (the
  pointer's blob id), as huggingface.co does;
- errors carry ``X-Error-Code``: ``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound`` (404),
  ``GatedRepo`` (401 without an accepted token); `fail` makes the next requests to a path answer
  429 with ``Retry-After`` (or any status).

Point huggingface_hub and zoo at it with ``HF_ENDPOINT`` (the `hub` fixture does).
"""
from __future__ import annotations

import functools
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from helpers.http_server import FaultServer

LFS_SUFFIXES = (".onnx", ".onnx_data", ".tflite", ".keras", ".h5", ".pt", ".pb", ".caffemodel", ".bin",
                ".safetensors", ".data")


@functools.lru_cache(maxsize=256)
def sha256_hex(body: bytes) -> str:
    """A body's sha256, computed once per body (the Hub stores it; a 200 MB benchmark file is not re-read)."""
    return hashlib.sha256(body).hexdigest()


@functools.lru_cache(maxsize=256)
def git_blob_id(body: bytes) -> str:
    """The id git gives a file's content (what the Hub calls blobId)."""
    return hashlib.sha1(b"blob %d\0" % len(body) + body).hexdigest()


def lfs_pointer(body: bytes) -> bytes:
    return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256_hex(body)}\n"
            f"size {len(body)}\n").encode()


@dataclass
class HubRepo:
    """A model repository: commits of files, refs (branches and tags) to them, and its card facts."""

    repo_id: str
    library: str | None = "onnx"
    pipeline_tag: str | None = "image-classification"
    tags: list[str] = field(default_factory=list)
    card: dict = field(default_factory=dict)
    downloads: int = 0
    likes: int = 0
    gated: bool = False
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)

    def commit(self, files: dict[str, bytes], ref: str = "main", keep: bool = True) -> str:
        """A new commit on `ref` with `files` (added to the branch's current ones when `keep`); its sha."""
        base = dict(self.commits.get(self.refs.get(ref, ""), {})) if keep else {}
        base.update(files)
        sha = hashlib.sha1(json.dumps(sorted((p, sha256_hex(b)) for p, b in base.items()))
                           .encode() + str(len(self.commits)).encode()).hexdigest()
        self.commits[sha] = base
        self.refs[ref] = sha
        return sha

    def tag(self, name: str, sha: str | None = None) -> None:
        self.refs[name] = sha or self.refs["main"]

    @staticmethod
    def is_lfs(path: str, body: bytes) -> bool:
        return path.endswith(LFS_SUFFIXES) or len(body) > 10_000


class HubServer:
    """The Hub's API and resolve endpoints on 127.0.0.1; LFS files are served by `cdn` on another host name."""

    def __init__(self, cdn: FaultServer) -> None:
        self.cdn = cdn
        self.repos: dict[str, HubRepo] = {}
        self.tokens: set[str] = set()  # tokens whose owner accepted the gated repos' conditions
        self.latency = 0.0  # seconds each API answer waits, as a far-away Hub's round trip would
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._fail: list[tuple[str, int, str | None]] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> HubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def repo(self, repo_id: str, files: dict[str, bytes] | None = None, **facts) -> HubRepo:
        """Create a repository with a first commit of `files` on main."""
        repo = HubRepo(repo_id, **facts)
        self.repos[repo_id] = repo
        self.publish(repo, {"README.md": b"# " + repo_id.encode() + b"\n", **(files or {})})
        return repo

    def publish(self, repo: HubRepo, files: dict[str, bytes], ref: str = "main", keep: bool = True) -> str:
        """Commit `files` to `ref`; LFS bodies go to the CDN under their sha256."""
        for path, body in files.items():
            if repo.is_lfs(path, body):
                self.cdn.add(f"/lfs/{sha256_hex(body)}", body)
        return repo.commit(files, ref, keep)

    def fail(self, path_prefix: str, status: int = 429, retry_after: str | None = "1", times: int = 1) -> None:
        """The next `times` requests whose path starts with `path_prefix` answer `status`."""
        with self._lock:
            self._fail += [(path_prefix, status, retry_after)] * times

    def hits(self, prefix: str) -> int:
        return sum(1 for _, path, _ in self.requests if path.startswith(prefix))

    def _failure(self, path: str) -> tuple[int, str | None] | None:
        with self._lock:
            for i, (prefix, status, retry) in enumerate(self._fail):
                if path.startswith(prefix):
                    del self._fail[i]
                    return status, retry
        return None

    # ---- answers -----------------------------------------------------------------------------
    def listing(self, query: dict[str, list[str]]) -> list[dict]:
        search = (query.get("search") or [""])[0].lower()
        author = (query.get("author") or [None])[0]
        filters = query.get("filter", [])
        found = [r for r in self.repos.values()
                 if search in r.repo_id.lower() and (author is None or r.repo_id.split("/")[0] == author)
                 and all(f in r.tags or f == r.library or f == r.pipeline_tag for f in filters)]
        if (query.get("sort") or [""])[0] == "downloads":
            found.sort(key=lambda r: r.downloads, reverse=(query.get("direction") or [""])[0] == "-1")
        limit = int((query.get("limit") or ["1000"])[0])
        return [self._summary(r) for r in found[:limit]]

    def _summary(self, repo: HubRepo) -> dict:
        return {"_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id,
                "modelId": repo.repo_id, "likes": repo.likes, "downloads": repo.downloads, "private": False,
                "tags": [*repo.tags, *([repo.library] if repo.library else []),
                         *([f"license:{repo.card['license']}"] if repo.card.get("license") else [])],
                "pipeline_tag": repo.pipeline_tag, "library_name": repo.library,
                "createdAt": "2025-01-01T00:00:00.000Z", "trendingScore": 0}

    def info(self, repo: HubRepo, sha: str, blobs: bool) -> dict:
        siblings = []
        for path, body in sorted(repo.commits[sha].items()):
            sibling = {"rfilename": path}
            if blobs:
                if repo.is_lfs(path, body):
                    pointer = lfs_pointer(body)
                    sibling.update(blobId=git_blob_id(pointer), size=len(body), lfs={
                        "sha256": sha256_hex(body), "size": len(body), "pointerSize": len(pointer)})
                else:
                    sibling.update(blobId=git_blob_id(body), size=len(body))
            siblings.append(sibling)
        return {**self._summary(repo), "author": repo.repo_id.split("/")[0], "sha": sha,
                "lastModified": "2025-01-02T00:00:00.000Z", "disabled": False,
                "gated": "manual" if repo.gated else False, "cardData": repo.card, "siblings": siblings}


def _handler(server: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers go out line by line: without this, Nagle's algorithm holds each response's last
        # segment for the client's delayed ACK (~40 ms a request on a kept-alive connection).
        disable_nagle_algorithm = True

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            self._serve(head=False)

        def do_HEAD(self) -> None:
            self._serve(head=True)

        def _reply(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False,
                   ctype: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _error(self, status: int, code: str | None, message: str, head: bool, extra: dict | None = None) -> None:
            headers = {"X-Error-Message": message, **(extra or {})}
            if code:
                headers["X-Error-Code"] = code
            self._reply(status, json.dumps({"error": message}).encode(), headers, head)

        def _serve(self, head: bool) -> None:
            parts = urlsplit(self.path)
            path = unquote(parts.path)
            with server._lock:
                server.requests.append((self.command, path, dict(self.headers.items())))
            if server.latency and path.startswith("/api/"):
                time.sleep(server.latency)
            failure = server._failure(path)
            if failure is not None:
                status, retry = failure
                extra = {"Retry-After": retry} if retry is not None else {}
                return self._error(status, None, f"error {status}", head, extra)
            query = parse_qs(parts.query)
            if path == "/api/models":
                return self._reply(200, json.dumps(server.listing(query)).encode(), head=head)
            if path.startswith("/api/models/"):
                return self._model_info(path[len("/api/models/"):], query, head)
            pieces = path.strip("/").split("/")
            if len(pieces) >= 5 and pieces[2] == "resolve":
                return self._resolve("/".join(pieces[:2]), pieces[3], "/".join(pieces[4:]), head)
            self._error(404, None, "Not Found", head)

        def _find(self, repo_id: str, revision: str, head: bool) -> tuple[HubRepo, str] | None:
            repo = server.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound", f"Repository Not Found for url: {self.path}.", head)
                return None
            sha = repo.refs.get(revision) or (revision if revision in repo.commits else None)
            if sha is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head)
                return None
            return repo, sha

        def _model_info(self, rest: str, query: dict, head: bool) -> None:
            pieces = rest.split("/")
            repo_id, revision = "/".join(pieces[:2]), "main"
            if len(pieces) >= 4 and pieces[2] == "revision":
                revision = "/".join(pieces[3:])
            found = self._find(repo_id, revision, head)
            if found is not None:
                blobs = (query.get("blobs") or ["false"])[0].lower() == "true"
                self._reply(200, json.dumps(server.info(found[0], found[1], blobs)).encode(), head=head)

        def _resolve(self, repo_id: str, revision: str, file: str, head: bool) -> None:
            found = self._find(repo_id, revision, head)
            if found is None:
                return
            repo, sha = found
            token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            if repo.gated and token not in server.tokens:
                return self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access "
                                   "to it and be authenticated to access it. Please log in.", head)
            body = repo.commits[sha].get(file)
            if body is None:
                return self._error(404, "EntryNotFound", f"{file} does not exist on \"{revision}\"", head,
                                   {"X-Repo-Commit": sha})
            common = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
            if repo.is_lfs(file, body):
                sha256 = sha256_hex(body)
                location = server.cdn.url(f"/lfs/{sha256}", host="localhost") + \
                    f"?X-Amz-Expires=3600&X-Amz-Signature={hashlib.sha1(sha256.encode()).hexdigest()}"
                return self._reply(302, b"", {**common, "Location": location, "ETag": f'"{git_blob_id(lfs_pointer(body))}"',
                                              "X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(len(body))},
                                   head, ctype="text/plain")
            self._reply(200, body, {**common, "ETag": f'"{git_blob_id(body)}"'}, head, ctype="text/plain")

    return Handler


@pytest.fixture
def hub(monkeypatch, tmp_path) -> Iterator[HubServer]:
    """A running loopback Hub (and its CDN on `localhost`), HF_ENDPOINT pointing at it, no token, online."""
    with FaultServer() as cdn:
        server = HubServer(cdn).start()
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        for variable in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            monkeypatch.delenv(variable, raising=False)
        try:
            yield server
        finally:
            server.stop()


def wait_for(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


__all__ = ["HubRepo", "HubServer", "git_blob_id", "hub", "lfs_pointer", "wait_for"]
