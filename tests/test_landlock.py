"""zoo.landlock: a confined child writes inside its folder only, opens no TCP connection, signals nobody outside."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap

import pytest

from zoo import landlock

needs_landlock = pytest.mark.skipif(landlock.abi_version() < 1, reason="this kernel has no Linux Landlock")

CHILD = textwrap.dedent("""
    import json, os, socket, sys
    from zoo.landlock import restrict_writes

    scratch, outside, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    status = restrict_writes([scratch])
    seen = {"status": status.to_dict()}

    def attempt(name, action):
        try:
            action()
            seen[name] = "ok"
        except OSError as exc:
            seen[name] = exc.errno

    attempt("write_inside", lambda: open(os.path.join(scratch, "a.txt"), "w").write("x"))
    attempt("mkdir_inside", lambda: os.mkdir(os.path.join(scratch, "sub")))
    attempt("write_outside", lambda: open(os.path.join(outside, "b.txt"), "w").write("x"))
    attempt("overwrite_outside", lambda: open(os.path.join(outside, "victim.txt"), "r+").write("y"))
    attempt("remove_outside", lambda: os.remove(os.path.join(outside, "victim.txt")))
    attempt("devnull", lambda: open(os.devnull, "w").write("x"))
    attempt("tcp", lambda: socket.create_connection(("127.0.0.1", port), timeout=5).close())
    attempt("signal_parent", lambda: os.kill(os.getppid(), 0))
    print(json.dumps(seen))
""")


@needs_landlock
def test_a_confined_child_writes_only_inside_its_folder(tmp_path):
    scratch, outside = tmp_path / "scratch", tmp_path / "outside"
    scratch.mkdir()
    outside.mkdir()
    (outside / "victim.txt").write_text("original")
    with socket.socket() as server:  # a real listener: without the sandbox the connection would succeed
        server.bind(("127.0.0.1", 0))
        server.listen()
        out = subprocess.run([sys.executable, "-c", CHILD, str(scratch), str(outside), str(server.getsockname()[1])],
                             capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen["status"]["active"] is True and seen["status"]["abi"] == landlock.abi_version()
    assert (seen["write_inside"], seen["mkdir_inside"], seen["devnull"]) == ("ok", "ok", "ok")
    assert seen["write_outside"] == seen["overwrite_outside"] == seen["remove_outside"] == 13  # EACCES
    assert (outside / "victim.txt").read_text() == "original" and not (outside / "b.txt").exists()
    if landlock.abi_version() >= 4:
        assert seen["tcp"] == 13
    if landlock.abi_version() >= 6:
        assert seen["signal_parent"] == 1  # EPERM


def test_without_landlock_nothing_changes_and_the_reason_is_said(tmp_path, monkeypatch):
    (tmp_path / "scratch").mkdir()
    monkeypatch.setenv("ZOO_SANDBOX", "off")  # the user's switch; it reports like a kernel without Landlock
    script = ("import json, sys; from converters.isolation import enter_sandbox; "
              "s = enter_sandbox(sys.argv[1]); open(sys.argv[2], 'w').write('x'); print(json.dumps(s))")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "scratch"), str(tmp_path / "free.txt")],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["active"] is False and "ZOO_SANDBOX=off" in status["reason"]
    assert status["summary"].startswith("none (") and (tmp_path / "free.txt").exists()
    inactive = landlock.SandboxStatus(active=False, reason="no Landlock here")
    assert inactive.describe() == "none (no Landlock here)"
