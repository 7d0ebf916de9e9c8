"""zoo.transport.download against real HTTP servers on 127.0.0.1 that misbehave on purpose."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from helpers.archives import tar_gz
from zoo.errors import ChecksumError, FetchError, OfflineError
from zoo._redact import mask_url
from zoo.transport import Expected, RetryPolicy, download

BODY = bytes(range(256)) * 40  # 10240 bytes of "weights"
SHA = hashlib.sha256(BODY).hexdigest()
FAST = RetryPolicy(backoff=0.01, timeout=(2, 2))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix in (".part", ".json"))


def test_download_verifies_and_moves_into_place(fault_server, tmp_path):
    route = fault_server.add("/w.bin", BODY)
    result = download([fault_server.url("/w.bin")], tmp_path / "w.bin",
                      expected=Expected(checksum=f"sha256:{SHA}", size=len(BODY)))
    assert result.path.read_bytes() == BODY
    assert (result.sha256, result.size, result.bytes_transferred) == (SHA, len(BODY), len(BODY))
    assert not result.cached and result.url == fault_server.url("/w.bin")
    assert leftovers(tmp_path) == []
    assert route.requests[0].headers["Accept-Encoding"] == "identity"
    # A verified file is not downloaded again.
    again = download([fault_server.url("/w.bin")], tmp_path / "w.bin", expected=Expected(checksum=f"sha256:{SHA}"))
    assert again.cached and again.bytes_transferred == 0 and route.hits == 1
    # --force downloads again.
    forced = download([fault_server.url("/w.bin")], tmp_path / "w.bin", force=True)
    assert not forced.cached and route.hits == 2


@pytest.mark.parametrize("algo", ["sha1", "md5", "gitblob"])
def test_publisher_checksums_of_every_kind(fault_server, tmp_path, algo):
    fault_server.add("/w.bin", BODY)
    digest = (hashlib.sha1(b"blob %d\0" % len(BODY) + BODY) if algo == "gitblob" else hashlib.new(algo, BODY)).hexdigest()
    result = download([fault_server.url("/w.bin")], tmp_path / "w.bin", expected=Expected(checksum=f"{algo}:{digest}"))
    assert result.sha256 == SHA
    wrong = digest[:-1] + ("0" if digest[-1] != "0" else "1")
    with pytest.raises(ChecksumError, match=f"{algo} does not match: expected {wrong}, got {digest}"):
        download([fault_server.url("/w.bin")], tmp_path / "x.bin", expected=Expected(checksum=f"{algo}:{wrong}"))


def test_dropped_connection_resumes_with_range_and_if_range(fault_server, tmp_path):
    route = fault_server.add("/w.bin", BODY, drop_after=3000)
    result = download([fault_server.url("/w.bin")], tmp_path / "w.bin",
                      expected=Expected(checksum=f"sha256:{SHA}"), retry=FAST)
    assert result.path.read_bytes() == BODY
    assert route.hits == 2
    second = route.requests[1].headers
    assert second["Range"] == "bytes=3000-" and second["If-Range"] == route.current_etag
    assert route.bytes_sent == len(BODY) == result.bytes_transferred  # nothing sent twice


def test_server_ignoring_range_restarts_cleanly(fault_server, tmp_path):
    route = fault_server.add("/w.bin", BODY, drop_after=3000, ranges=False)
    result = download([fault_server.url("/w.bin")], tmp_path / "w.bin",
                      expected=Expected(checksum=f"sha256:{SHA}"), retry=FAST)
    assert result.path.read_bytes() == BODY and route.hits == 2
    assert route.requests[1].headers["Range"] == "bytes=3000-"  # asked, got a 200 with the whole file
    assert route.bytes_sent == 3000 + len(BODY)


def test_503_then_200_retries_with_backoff(fault_server, tmp_path):
    route = fault_server.add("/w.bin", BODY, fail=[503, 502])
    result = download([fault_server.url("/w.bin")], tmp_path / "w.bin", retry=FAST)
    assert result.sha256 == SHA and route.hits == 3


def test_retry_after_is_honoured_and_capped(fault_server, tmp_path):
    route = fault_server.add("/w.bin", BODY, fail=[429], retry_after="1")
    download([fault_server.url("/w.bin")], tmp_path / "a.bin", retry=FAST)
    gap = route.requests[1].time - route.requests[0].time
    assert gap >= 0.9, f"retried after {gap:.2f} s although Retry-After said 1 s"
    capped = fault_server.add("/c.bin", BODY, fail=[503], retry_after="3600")
    download([fault_server.url("/c.bin")], tmp_path / "c.bin", retry=FAST.replace(max_wait=0.05))
    assert capped.hits == 2


def test_persistent_5xx_gives_up_naming_the_url(fault_server, tmp_path):
    fault_server.add("/w.bin", BODY, fail=[500] * 10)
    with pytest.raises(FetchError, match=r"giving up on http://127\.0\.0\.1:\d+/w\.bin after 2 retries: .*HTTP 500"):
        download([fault_server.url("/w.bin")], tmp_path / "w.bin", retry=FAST.replace(retries=2))


def test_stall_past_read_timeout_is_retried(fault_server, tmp_path):
    route = fault_server.add("/w.bin", BODY, stall=1.5)
    result = download([fault_server.url("/w.bin")], tmp_path / "w.bin",
                      retry=RetryPolicy(timeout=(2, 0.3), backoff=0.01))
    assert result.sha256 == SHA and route.hits >= 2


def test_stall_in_the_middle_of_the_body_resumes(fault_server, tmp_path):
    route = fault_server.add("/w.bin", BODY, stall=1.5, stall_after=4000)
    result = download([fault_server.url("/w.bin")], tmp_path / "w.bin",
                      retry=RetryPolicy(timeout=(2, 0.3), backoff=0.01))
    assert result.sha256 == SHA
    assert route.requests[-1].headers["Range"] == "bytes=4000-"
    assert result.bytes_transferred == len(BODY)


def test_server_that_always_stalls_is_given_up(fault_server, tmp_path):
    fault_server.add("/w.bin", BODY, delay=0.6)
    with pytest.raises(FetchError, match="sent nothing for 0.2 s"):
        download([fault_server.url("/w.bin")], tmp_path / "w.bin",
                 retry=RetryPolicy(timeout=(2, 0.2), retries=1, backoff=0.01))
    assert not (tmp_path / "w.bin").exists()


def test_wrong_bytes_are_deleted_and_reported(fault_server, tmp_path):
    fault_server.add("/w.bin", b"not the weights" * 100)
    with pytest.raises(ChecksumError) as info:
        download([fault_server.url("/w.bin")], tmp_path / "w.bin", label="weights file w.bin of alexnet",
                 expected=Expected(checksum=f"sha256:{SHA}"))
    message = str(info.value)
    assert SHA in message and sha256(b"not the weights" * 100) in message
    assert "weights file w.bin of alexnet" in message and "Deleted" in message
    assert not (tmp_path / "w.bin").exists() and leftovers(tmp_path) == []


def test_size_mismatch(fault_server, tmp_path):
    route = fault_server.add("/w.bin", BODY)
    with pytest.raises(ChecksumError, match=f"serves {len(BODY)} bytes, expected 999"):
        download([fault_server.url("/w.bin")], tmp_path / "w.bin", expected=Expected(size=999))
    assert route.hits == 1 and leftovers(tmp_path) == []  # refused before reading the body
    # A local copy has no Content-Length to warn early: the size is checked once it is in.
    src = tmp_path / "src.bin"
    src.write_bytes(BODY)
    with pytest.raises(ChecksumError, match=f"size is {len(BODY)} bytes, expected 999"):
        download([str(src)], tmp_path / "w.bin", expected=Expected(size=999))
    assert not (tmp_path / "w.bin").exists()


def test_pinned_sha256_must_match(fault_server, tmp_path):
    fault_server.add("/w.bin", BODY)
    with pytest.raises(ChecksumError, match=f"sha256 does not match: expected {'a' * 64}, got {SHA}"):
        download([fault_server.url("/w.bin")], tmp_path / "w.bin", expected=Expected(sha256="a" * 64))


@pytest.mark.parametrize("ctype, body", [
    ("text/html", b"<!DOCTYPE html><html><body>Please sign in</body></html>"),
    ("application/octet-stream", b"\n  <html><head><title>Quota exceeded</title></head></html>"),
    ("text/html; charset=utf-8", b"Error: rate limited, try later"),
])
def test_html_page_served_with_200_is_detected(fault_server, tmp_path, ctype, body):
    fault_server.add("/w.caffemodel", body, content_type=ctype)
    with pytest.raises(FetchError, match="sent a web page .* instead of the file") as info:
        download([fault_server.url("/w.caffemodel")], tmp_path / "w.caffemodel")
    assert fault_server.url("/w.caffemodel") in str(info.value)
    assert not (tmp_path / "w.caffemodel").exists() and leftovers(tmp_path) == []


def test_html_is_fine_when_an_html_file_is_wanted(fault_server, tmp_path):
    page = b"<html><body>model card</body></html>"
    fault_server.add("/card.html", page, content_type="text/html")
    assert download([fault_server.url("/card.html")], tmp_path / "card.html").path.read_bytes() == page


def test_binary_mislabelled_as_html_is_accepted(fault_server, tmp_path):
    fault_server.add("/w.bin", BODY, content_type="text/html")  # BODY has NUL bytes: not a page
    assert download([fault_server.url("/w.bin")], tmp_path / "w.bin").sha256 == SHA


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_first_mirror_down_second_used(fault_server, tmp_path):
    fault_server.add("/w.bin", BODY)
    dead = f"http://127.0.0.1:{free_port()}/w.bin"
    result = download([dead, fault_server.url("/w.bin")], tmp_path / "w.bin", retry=FAST.replace(retries=1))
    assert result.url == fault_server.url("/w.bin") and result.sha256 == SHA


def test_all_mirrors_failing_lists_each(fault_server, tmp_path):
    fault_server.add("/gone.bin", b"", status=404)
    dead = f"http://127.0.0.1:{free_port()}/w.bin"
    with pytest.raises(FetchError) as info:
        download([dead, fault_server.url("/gone.bin")], tmp_path / "w.bin", retry=FAST.replace(retries=0))
    assert "connection refused" in str(info.value) and "HTTP 404" in str(info.value)


@pytest.mark.parametrize("status, hint", [(404, "gone or the URL is wrong"), (403, "access is denied"),
                                          (401, "needs credentials")])
def test_http_errors_name_the_url_and_model_and_are_not_retried(fault_server, tmp_path, status, hint):
    route = fault_server.add("/w.bin", b"nope", status=status)
    with pytest.raises(FetchError) as info:
        download([fault_server.url("/w.bin")], tmp_path / "w.bin", label="weights file w.bin of vgg16", retry=FAST)
    message = str(info.value)
    assert f"HTTP {status}" in message and fault_server.url("/w.bin") in message
    assert "of vgg16" in message and hint in message
    assert route.hits == 1


def test_redirects_are_followed_and_loops_named(fault_server, tmp_path):
    fault_server.add("/old.bin", redirect="/new.bin", redirect_status=301)
    fault_server.add("/new.bin", BODY)
    assert download([fault_server.url("/old.bin")], tmp_path / "w.bin").sha256 == SHA
    fault_server.add("/a", redirect="/b")
    fault_server.add("/b", redirect=fault_server.url("/a"))
    with pytest.raises(FetchError, match=r"redirect loop: .*/a -> .*/b -> .*/a"):
        download([fault_server.url("/a")], tmp_path / "loop.bin")


def test_token_goes_to_the_catalog_host_only(fault_server, second_server, tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_TOKEN", "s3cret-token")
    second_server.add("/w.bin", BODY)
    # 127.0.0.1 -> localhost on another port: a different host; the token must be stripped.
    fault_server.add("/private/w.bin", redirect=second_server.url("/w.bin", host="localhost"))
    fault_server.add("/same", redirect="/private/real.bin")
    fault_server.add("/private/real.bin", BODY, auth="Bearer s3cret-token")
    download([fault_server.url("/private/w.bin")], tmp_path / "a.bin")
    assert fault_server.routes["/private/w.bin"].requests[0].headers["Authorization"] == "Bearer s3cret-token"
    assert "Authorization" not in second_server.routes["/w.bin"].requests[0].headers
    # A same-host redirect keeps it (the private file needs it).
    assert download([fault_server.url("/same")], tmp_path / "b.bin").sha256 == SHA


def test_token_hosts_limits_where_the_token_goes(fault_server, tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_TOKEN", "s3cret-token")
    monkeypatch.setenv("ZOO_TOKEN_HOSTS", "models.example.org, localhost")
    route = fault_server.add("/w.bin", BODY)
    download([fault_server.url("/w.bin")], tmp_path / "a.bin")
    download([fault_server.url("/w.bin", host="localhost")], tmp_path / "b.bin")
    assert "Authorization" not in route.requests[0].headers
    assert route.requests[1].headers["Authorization"] == "Bearer s3cret-token"


def test_a_mirror_serving_wrong_bytes_is_skipped(fault_server, tmp_path):
    fault_server.add("/bad/w.bin", b"stale copy" * 50)
    fault_server.add("/good/w.bin", BODY)
    result = download([fault_server.url("/bad/w.bin"), fault_server.url("/good/w.bin")], tmp_path / "w.bin",
                      expected=Expected(checksum=f"sha256:{SHA}"))
    assert result.url == fault_server.url("/good/w.bin") and result.path.read_bytes() == BODY


def test_netrc_credentials_are_used_for_their_host_only(fault_server, second_server, tmp_path, monkeypatch):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login alice password wonderland\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    second_server.add("/w.bin", BODY)
    fault_server.add("/w.bin", redirect=second_server.url("/w.bin", host="localhost"))
    download([fault_server.url("/w.bin")], tmp_path / "w.bin")
    assert fault_server.routes["/w.bin"].requests[0].headers["Authorization"].startswith("Basic ")
    assert "Authorization" not in second_server.routes["/w.bin"].requests[0].headers


def test_token_and_url_credentials_never_appear_in_messages(fault_server, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("ZOO_TOKEN", "s3cret-token")
    fault_server.add("/w.bin", b"", status=403)
    url = fault_server.url("/w.bin").replace("http://", "http://bob:hunter2@") + "?token=abc123&v=1"
    with pytest.raises(FetchError) as info:
        download([url], tmp_path / "w.bin", retry=FAST)
    text = str(info.value) + repr(info.value) + caplog.text
    for secret in ("s3cret-token", "hunter2", "abc123"):
        assert secret not in text
    # The one masker everything uses (zoo._redact): the user name stays, as in catalog URLs.
    assert "bob:***@" in str(info.value) and "token=***" in str(info.value) and "v=1" in str(info.value)
    assert mask_url("http://u:p@h:1/x?sig=1") == "http://u:***@h:1/x?sig=***"


def test_offline_uses_the_cache_or_names_what_is_missing(fault_server, tmp_path, monkeypatch):
    route = fault_server.add("/w.bin", BODY)
    with pytest.raises(OfflineError) as info:
        download([fault_server.url("/w.bin")], tmp_path / "w.bin", offline=True, label="weights file w.bin of m")
    message = str(info.value)
    assert "weights file w.bin of m" in message and str(tmp_path / "w.bin") in message
    assert fault_server.url("/w.bin") in message and route.hits == 0
    download([fault_server.url("/w.bin")], tmp_path / "w.bin")
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    cached = download([fault_server.url("/w.bin")], tmp_path / "w.bin", expected=Expected(checksum=f"sha256:{SHA}"))
    assert cached.cached and route.hits == 1
    (tmp_path / "w.bin").write_bytes(b"tampered")
    with pytest.raises(OfflineError, match="is not right"):
        download([fault_server.url("/w.bin")], tmp_path / "w.bin", expected=Expected(checksum=f"sha256:{SHA}"))
    assert route.hits == 1


def test_file_urls_and_local_paths_are_copied_and_verified(tmp_path):
    src = tmp_path / "src" / "w.bin"
    src.parent.mkdir()
    src.write_bytes(BODY)
    a = download([src.as_uri()], tmp_path / "a.bin", offline=True, expected=Expected(checksum=f"sha256:{SHA}"))
    b = download([str(src)], tmp_path / "b.bin", expected=Expected(size=len(BODY)))
    assert a.path.read_bytes() == b.path.read_bytes() == BODY
    with pytest.raises(ChecksumError):
        download([str(src)], tmp_path / "c.bin", expected=Expected(checksum="md5:" + "0" * 32))
    assert not (tmp_path / "c.bin").exists() and leftovers(tmp_path) == []
    with pytest.raises(FetchError, match="does not exist"):
        download([str(tmp_path / "missing.bin")], tmp_path / "d.bin")


def test_keyboard_interrupt_keeps_the_part_for_resume(fault_server, tmp_path):
    big = os.urandom(200_000)
    route = fault_server.add("/w.bin", big, rate=2_000_000)

    def interrupt(done, total):
        raise KeyboardInterrupt

    dest = tmp_path / "w.bin"
    with pytest.raises(KeyboardInterrupt):
        download([fault_server.url("/w.bin")], dest, progress=interrupt)
    part = dest.with_name("w.bin.part")
    kept = part.stat().st_size
    assert not dest.exists() and 0 < kept < len(big)
    result = download([fault_server.url("/w.bin")], dest, expected=Expected(checksum=f"sha256:{sha256(big)}"))
    assert route.requests[-1].headers["Range"] == f"bytes={kept}-"
    assert result.bytes_transferred == len(big) - kept and dest.read_bytes() == big


def test_resume_across_runs_notices_a_changed_file(fault_server, tmp_path):
    old, new = os.urandom(50_000), os.urandom(60_000)
    route = fault_server.add("/w.bin", old, drop_after=20_000)
    dest = tmp_path / "w.bin"
    with pytest.raises(FetchError):
        download([fault_server.url("/w.bin")], dest, retry=FAST.replace(retries=0))
    assert dest.with_name("w.bin.part").stat().st_size == 20_000
    route.set_body(new)  # upstream changed: a new ETag, so If-Range gets the whole new file
    result = download([fault_server.url("/w.bin")], dest, retry=FAST)
    assert route.requests[-1].headers["If-Range"] != route.current_etag
    assert dest.read_bytes() == new and result.bytes_transferred == len(new)


def test_part_without_validator_or_checksum_is_not_trusted(fault_server, tmp_path):
    route = fault_server.add("/w.bin", BODY)
    (tmp_path / "w.bin.part").write_bytes(b"junk from who knows where")
    assert download([fault_server.url("/w.bin")], tmp_path / "w.bin").sha256 == SHA
    assert "Range" not in route.requests[0].headers


def test_complete_part_from_a_killed_run_is_finished_without_a_body(fault_server, tmp_path):
    route = fault_server.add("/w.bin", BODY)
    (tmp_path / "w.bin.part").write_bytes(BODY)
    result = download([fault_server.url("/w.bin")], tmp_path / "w.bin", expected=Expected(checksum=f"sha256:{SHA}"))
    assert result.sha256 == SHA and result.bytes_transferred == 0 and route.bytes_sent == 0


# -- other processes ----------------------------------------------------------------------

SCRIPT = textwrap.dedent("""
    import json, sys
    from zoo.transport import Expected, RetryPolicy, download
    r = download([sys.argv[1]], sys.argv[2], expected=Expected(checksum=sys.argv[3] if len(sys.argv) > 3 else None))
    print(json.dumps({"cached": r.cached, "bytes": r.bytes_transferred, "sha256": r.sha256}))
""")


def spawn(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def test_two_processes_fetching_at_once_download_once(fault_server, tmp_path):
    import threading

    big = os.urandom(300_000)
    # The server holds the body until both processes are in: the first with the lock and
    # the response headers, the second waiting for the lock.
    route = fault_server.add("/w.bin", big, gate=threading.Event())
    dest = tmp_path / "w.bin"
    args = (fault_server.url("/w.bin"), str(dest), f"sha256:{sha256(big)}")
    first = spawn(*args)
    deadline = time.monotonic() + 30
    while not dest.with_name("w.bin.part.json").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    second = spawn(*args)
    waiting = second.stderr.readline()  # its first words: it is blocked on the lock
    route.gate.set()
    (out1, err1), (out2, err2) = first.communicate(timeout=60), second.communicate(timeout=60)
    assert first.returncode == 0 and second.returncode == 0, (err1, err2)
    assert "waiting for another process" in waiting
    one, two = json.loads(out1), json.loads(out2)
    assert route.hits == 1 and route.bytes_sent == len(big)
    assert (one["cached"], one["bytes"]) == (False, len(big))
    assert (two["cached"], two["bytes"]) == (True, 0) and two["sha256"] == one["sha256"]
    assert dest.read_bytes() == big


def test_killed_process_leaves_a_resumable_part(fault_server, tmp_path):
    big = os.urandom(400_000)
    route = fault_server.add("/w.bin", big, rate=200_000)
    dest = tmp_path / "w.bin"
    part = dest.with_name("w.bin.part")
    proc = spawn(fault_server.url("/w.bin"), str(dest))
    deadline = time.monotonic() + 30
    while (not part.exists() or part.stat().st_size < 50_000) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    kept = part.stat().st_size
    assert not dest.exists() and 0 < kept < len(big)
    route.rate = None
    result = download([fault_server.url("/w.bin")], dest, expected=Expected(checksum=f"sha256:{sha256(big)}"),
                      retry=RetryPolicy(lock_timeout=5))
    assert route.requests[-1].headers["Range"] == f"bytes={kept}-"
    assert result.bytes_transferred == len(big) - kept and dest.read_bytes() == big


def test_disk_full_is_a_clear_error_and_removes_the_part(fault_server, tmp_path):
    """A real full disk: a 64 KiB tmpfs in a user namespace (skipped where that is not allowed)."""
    if not shutil.which("unshare"):
        pytest.skip("unshare is not installed")
    mnt = tmp_path / "small"
    mnt.mkdir()
    big = os.urandom(200_000)
    fault_server.add("/w.bin", big)
    code = textwrap.dedent(f"""
        import json, os
        from zoo.transport import Expected, RetryPolicy, download
        from zoo.errors import FetchError
        try:
            download([{fault_server.url('/w.bin')!r}], {str(mnt / 'w.bin')!r}, retry=RetryPolicy(retries=0))
        except FetchError as exc:
            print(json.dumps({{"error": str(exc), "left": sorted(os.listdir({str(mnt)!r}))}}))
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    shell = f"mount -t tmpfs -o size=64k zoo-full {mnt} && exec {sys.executable} -c \"$0\""
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", shell, code], capture_output=True, text=True,
                          env=env, timeout=60)
    if "mount" in proc.stderr or "unshare" in proc.stderr:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.strip()}")
    out = json.loads(proc.stdout)
    assert "disk full while writing" in out["error"] and "ZOO_CACHE" in out["error"]
    assert out["left"] == []  # no .part, no .part.json, no .lock


def test_fault_server_conditional_requests(fault_server):
    """The shared helper's ETag / Last-Modified handling (remote index sync relies on it)."""
    import requests

    route = fault_server.add("/index.json", b'{"models": []}', content_type="application/json",
                             last_modified=1_700_000_000)
    first = requests.get(fault_server.url("/index.json"))
    etag, lastmod = first.headers["ETag"], first.headers["Last-Modified"]
    assert first.status_code == 200 and first.content == b'{"models": []}'
    assert requests.get(fault_server.url("/index.json"), headers={"If-None-Match": etag}).status_code == 304
    assert requests.get(fault_server.url("/index.json"), headers={"If-Modified-Since": lastmod}).status_code == 304
    route.set_body(b'{"models": [1]}')
    changed = requests.get(fault_server.url("/index.json"), headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag
    assert [r.headers.get("If-None-Match") for r in route.requests] == [None, etag, None, etag]
    assert requests.get(fault_server.url("/missing")).status_code == 404


def test_gitblob_checksum_survives_a_resume_across_runs(fault_server, tmp_path):
    big = os.urandom(80_000)
    blob = "gitblob:" + hashlib.sha1(b"blob %d\0" % len(big) + big).hexdigest()
    route = fault_server.add("/w.bin", big, drop_after=30_000)
    with pytest.raises(FetchError):
        download([fault_server.url("/w.bin")], tmp_path / "w.bin", expected=Expected(checksum=blob),
                 retry=FAST.replace(retries=0))
    result = download([fault_server.url("/w.bin")], tmp_path / "w.bin", expected=Expected(checksum=blob), retry=FAST)
    assert route.requests[-1].headers["Range"] == "bytes=30000-" and result.bytes_transferred == 50_000
    assert result.path.read_bytes() == big


# -- stalls, the overall bound, unreachable mirrors (issue 11, items 3 and 13) --------------------

def test_a_trickling_server_is_cut_and_given_up_and_a_rerun_resumes(fault_server, tmp_path, monkeypatch):
    """1 byte every 0.25 s never trips a read timeout; the stall rule cuts it, and trickles are not progress."""
    monkeypatch.setenv("ZOO_FETCH_MIN_RATE", "1000")
    monkeypatch.setenv("ZOO_FETCH_STALL_SECONDS", "0.6")
    route = fault_server.add("/w.bin", BODY, rate=4)
    with pytest.raises(FetchError) as info:
        download([fault_server.url("/w.bin")], tmp_path / "w.bin",
                 retry=RetryPolicy(retries=2, backoff=0.01, timeout=(2, 5)))
    message = str(info.value)
    assert "giving up on" in message and "after 2 retries" in message
    assert "stalled" in message and "under the minimum of 1000 B/s (ZOO_FETCH_MIN_RATE" in message
    assert "bytes received are kept and running the same command resumes" in message
    assert route.hits == 3  # the first try and 2 retries, although every attempt brought a few bytes
    kept = (tmp_path / "w.bin.part").stat().st_size
    assert 0 < kept < len(BODY)
    route.rate = None
    result = download([fault_server.url("/w.bin")], tmp_path / "w.bin",
                      expected=Expected(checksum=f"sha256:{SHA}"), retry=FAST)
    assert route.requests[-1].headers["Range"] == f"bytes={kept}-" and result.path.read_bytes() == BODY


def test_a_stall_after_real_progress_does_not_use_up_the_retries(fault_server, tmp_path, monkeypatch):
    """Each response: 100 kB at full speed, then a trickle; the fast part is progress, the trickle is not."""
    monkeypatch.setenv("ZOO_FETCH_MIN_RATE", "1000")
    monkeypatch.setenv("ZOO_FETCH_STALL_SECONDS", "0.5")
    big = os.urandom(300_000)
    route = fault_server.add("/w.bin", big, rate=4, rate_after=100_000)
    result = download([fault_server.url("/w.bin")], tmp_path / "w.bin",
                      expected=Expected(checksum=f"sha256:{sha256(big)}"), retry=FAST.replace(retries=1))
    assert result.path.read_bytes() == big and route.hits == 3
    starts = [int(q.headers["Range"][len("bytes="):-1]) for q in route.requests[1:]]
    assert starts[0] >= 100_000 and starts[1] >= starts[0] + 100_000  # each retry resumed after the fast part


def test_a_server_dropping_every_connection_after_a_few_bytes_is_given_up(fault_server, tmp_path):
    """Each attempt brings 100 bytes and a broken connection: under the stall amount, so not progress."""
    big = os.urandom(200_000)
    route = fault_server.add("/w.bin", big, drop_after=100, drops=10**6)
    with pytest.raises(FetchError, match="giving up on .* after 3 retries: the connection .* broke"):
        download([fault_server.url("/w.bin")], tmp_path / "w.bin", retry=FAST.replace(retries=3))
    assert route.hits == 4


def test_a_fast_flaky_server_still_counts_as_progress(fault_server, tmp_path):
    big = os.urandom(400_000)
    route = fault_server.add("/w.bin", big, drop_after=60_000, drops=6)  # 7 attempts, 6 broken
    result = download([fault_server.url("/w.bin")], tmp_path / "w.bin",
                      expected=Expected(checksum=f"sha256:{sha256(big)}"), retry=FAST.replace(retries=2))
    assert result.path.read_bytes() == big and route.hits == 7


def test_the_overall_bound_stops_a_slow_download_and_keeps_the_part(fault_server, second_server, tmp_path,
                                                                    monkeypatch):
    monkeypatch.setenv("ZOO_FETCH_MAX_TIME", "2")
    big = os.urandom(100_000)
    slow = fault_server.add("/w.bin", big, rate=8_000)  # above the minimum rate, but 12 s in all
    mirror = second_server.add("/w.bin", big)
    with pytest.raises(FetchError, match=r"not finished after 2 s, the bound for one file \(ZOO_FETCH_MAX_TIME\); "
                                         r"the \d+ bytes received are kept .* resumes from there"):
        download([fault_server.url("/w.bin"), second_server.url("/w.bin")], tmp_path / "w.bin", retry=FAST)
    assert mirror.hits == 0  # the bound is for the file, not for each mirror
    kept = (tmp_path / "w.bin.part").stat().st_size
    assert 0 < kept < len(big) and slow.hits == 1
    monkeypatch.delenv("ZOO_FETCH_MAX_TIME")
    slow.rate = None
    result = download([fault_server.url("/w.bin")], tmp_path / "w.bin",
                      expected=Expected(checksum=f"sha256:{sha256(big)}"), retry=FAST)
    assert result.bytes_transferred == len(big) - kept


def test_bad_pace_settings_are_named(fault_server, tmp_path, monkeypatch):
    fault_server.add("/w.bin", BODY)
    monkeypatch.setenv("ZOO_FETCH_MIN_RATE", "fast")
    with pytest.raises(FetchError, match="ZOO_FETCH_MIN_RATE='fast' is not a number"):
        download([fault_server.url("/w.bin")], tmp_path / "w.bin")


@pytest.mark.parametrize("dead, words", [
    (lambda: f"http://127.0.0.1:{free_port()}/w.bin", "connection refused"),
    (lambda: "http://zoo-mirror.invalid/w.bin", "cannot resolve host zoo-mirror.invalid"),
])
def test_an_unreachable_mirror_is_not_retried(fault_server, tmp_path, caplog, dead, words):
    """Refused or unknown host: the next mirror at once (no 4 retries with backoff), or the error at once."""
    fault_server.add("/w.bin", BODY)
    url = dead()
    with caplog.at_level("WARNING", logger="zoo.download"):
        result = download([url, fault_server.url("/w.bin")], tmp_path / "w.bin", retry=RetryPolicy(backoff=5))
    assert result.url == fault_server.url("/w.bin")
    notices = [r.getMessage() for r in caplog.records]
    assert not any("retrying" in n for n in notices), notices
    assert any(words in n and "trying the next URL" in n for n in notices), notices
    caplog.clear()
    with caplog.at_level("WARNING", logger="zoo.download"), pytest.raises(FetchError, match=words) as info:
        download([url], tmp_path / "x.bin", retry=RetryPolicy(backoff=5))
    assert "giving up" not in str(info.value) and not caplog.records


# -- zoo fetch: unpack limits, stalls and leftovers end in one line (issue 11, items 2, 3, 11) ---

def archive_model(fault_server, data: bytes, name: str = "packed.tflite") -> None:
    from zoo.catalog import open_catalog
    from zoo.records import Artifact, Model

    fault_server.add("/m.tar.gz", data)
    open_catalog().add_model(Model(name=name, framework="tflite", artifacts=[
        Artifact("archive", "m.tar.gz", urls=[fault_server.url("/m.tar.gz")], extract="tar",
                 meta={"members": {"model": "m/model.tflite"}})]))




def test_zoo_fetch_max_unpack_size_refuses_and_allows(fault_server, zoo_env, monkeypatch):
    from click.testing import CliRunner

    from zoo.catalog import open_catalog
    from zoo.cli import cli

    archive_model(fault_server, tar_gz({"m/model.tflite": os.urandom(3 << 20)}))
    runner = CliRunner()
    refused = runner.invoke(cli, ["fetch", "packed.tflite", "--max-unpack-size", "2M"])
    assert refused.exit_code == 1
    (line,) = [text for text in refused.output.splitlines() if text.strip()]
    assert line.startswith("error: m.tar.gz would unpack to 3.0 MiB or more (from its headers), over the limit of 2.0 MiB")
    assert "--max-unpack-size" in line and open_catalog().get("packed.tflite").artifact("archive").path is None
    monkeypatch.setenv("ZOO_MAX_UNPACK_BYTES", "1M")  # the environment variable works too
    assert "over the limit of 1.0 MiB" in runner.invoke(cli, ["fetch", "packed.tflite"]).output
    bad = runner.invoke(cli, ["fetch", "packed.tflite", "--max-unpack-size", "big"])
    assert bad.exit_code == 1 and "'big' is not a size" in bad.output
    ok = runner.invoke(cli, ["fetch", "packed.tflite", "--max-unpack-size", "4M"])
    assert ok.exit_code == 0, ok.output
    folder = zoo_env / "cache" / "models" / "packed.tflite" / "m"
    assert (folder / "m" / "model.tflite").stat().st_size == 3 << 20


@pytest.mark.slow  # ~10 s: the CLI's own backoff (0.5 + 1 + 2 + 4 s) between the stalled attempts
def test_zoo_fetch_of_a_stalled_server_ends_in_one_line(fault_server, zoo_env, monkeypatch):
    from click.testing import CliRunner

    from zoo.cli import cli

    monkeypatch.setenv("ZOO_FETCH_MIN_RATE", "1K")
    monkeypatch.setenv("ZOO_FETCH_STALL_SECONDS", "0.4")
    archive_model(fault_server, tar_gz({"m/model.tflite": os.urandom(50_000)}))
    fault_server.routes["/m.tar.gz"].rate = 5
    result = CliRunner().invoke(cli, ["fetch", "--quiet", "packed.tflite"])
    assert result.exit_code == 1
    (line,) = [text for text in result.output.splitlines() if text.strip()]
    assert line.startswith("error: archive file m.tar.gz of packed.tflite: giving up on")
    assert "stalled" in line and "running the same command resumes" in line


def test_a_refetch_removes_what_a_killed_unpack_left(fault_server, zoo_env):
    from zoo.download import fetch

    archive_model(fault_server, tar_gz({"m/model.tflite": b"TFL3"}))
    fetch("packed.tflite", quiet=True)
    folder = zoo_env / "cache" / "models" / "packed.tflite"
    (folder / ".m.99999.unpacking" / "m").mkdir(parents=True)  # a `fetch --force` killed mid-unpack
    fetch("packed.tflite", quiet=True)  # cached and unpacked already: no new unpack, but cleaned
    assert not (folder / ".m.99999.unpacking").exists() and (folder / "m" / "m" / "model.tflite").exists()
    assert fault_server.routes["/m.tar.gz"].hits == 1
