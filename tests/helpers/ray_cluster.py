"""A throw-away Ray cluster of several nodes on this machine, started as a user would: `ray start`.

Each node is `ray start --block` in its own process group, with its own temp folder and ports
that were free a moment before, bound to 127.0.0.1 only, so it never meets another Ray on the
machine (a bare `ray.init()` elsewhere looks for clusters in /tmp/ray, not in these folders).
`kill` ends a node at once (SIGKILL to its whole process tree, as a machine that dies);
`stop` ends every node and removes the folders, whatever happened before.
A node can be started in its own mount namespace with folders hidden under an empty tmpfs: a
machine that lacks files the others have (root and unshare(1) needed; `can_hide` says).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

HOST = "127.0.0.1"
# The head's health checks, fast: a killed node is declared dead in seconds, not half a minute.
FAST_HEALTH_CHECKS = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


def _free_ports(count: int) -> list[int]:
    """Ports nobody listens on now (each bound once, then released)."""
    sockets, ports = [], []
    try:
        while len(ports) < count:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            sockets.append(s)
            if s.getsockname()[1] not in ports:
                ports.append(s.getsockname()[1])
    finally:
        for s in sockets:
            s.close()
    return ports


def can_hide() -> str | None:
    """None when a node can be started with hidden folders here, else why not."""
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed"
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True,
                          text=True, check=False)
    return None if done.returncode == 0 else f"unshare --mount is not permitted ({done.stderr.strip()})"


class Node:
    """One `ray start --block` process and what it started."""

    def __init__(self, name: str, process: subprocess.Popen, folder: Path, log: Path) -> None:
        self.name, self.process, self.folder, self.log = name, process, folder, log

    def tree(self) -> list[int]:
        """The pids of this node's processes (the `ray start`, its raylet, workers...)."""
        try:
            import psutil
        except ImportError:
            return [self.process.pid]
        try:
            root = psutil.Process(self.process.pid)
            return [root.pid] + [p.pid for p in root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def kill(self) -> None:
        """End every process of the node at once, as a machine that loses power."""
        pids = self.tree()
        for signalled in (lambda: os.killpg(self.process.pid, signal.SIGKILL),
                          *(lambda pid=pid: os.kill(pid, signal.SIGKILL) for pid in pids)):
            try:
                signalled()
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass


class RayCluster:
    """A head and the nodes added to it; `address` is what `ray.init` / `zoo --address` take, with
    `env` (the cluster's own token: Ray authenticates every node and driver) in the environment."""

    def __init__(self) -> None:
        self.env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": os.urandom(16).hex()}
        # Short: Ray's unix sockets live under the temp folder and their paths are limited.
        self.root = Path(tempfile.mkdtemp(prefix="zr", dir="/tmp"))
        self.nodes: dict[str, Node] = {}
        self.address = ""
        self.python_bin = Path(sys.executable).parent

    def _start(self, name: str, args: list[str], env: dict[str, str], hide: list[Path] = ()) -> Node:
        folder = self.root / name
        folder.mkdir()
        ports = _free_ports(8 + 10)
        command = [
            str(self.python_bin / "ray"), "start", "--block", "--disable-usage-stats",
            "--node-ip-address", HOST, "--temp-dir", str(folder / "t"),
            "--node-manager-port", str(ports[0]), "--object-manager-port", str(ports[1]),
            "--metrics-export-port", str(ports[2]), "--runtime-env-agent-port", str(ports[3]),
            "--dashboard-agent-listen-port", str(ports[4]), "--dashboard-agent-grpc-port", str(ports[5]),
            "--worker-port-list", ",".join(map(str, ports[8:])), *args,
        ]
        if hide:
            mounts = " && ".join(f"mount -t tmpfs zoo-hidden {p}" for p in hide)
            command = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                       f'{mounts} && exec "$@"', "sh", *command]
        log = folder / "ray-start.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                       start_new_session=True, cwd=folder)
        node = self.nodes[name] = Node(name, process, folder, log)
        deadline = time.monotonic() + 180
        while b"--block" not in log.read_bytes():  # "--block: This command will now block forever..."
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start of node {name} failed:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        return node

    def start_head(self, cpus: int = 1, resources: dict[str, float] | None = None) -> Node:
        port, client = _free_ports(2)
        node = self._start("head", [
            "--head", "--port", str(port), "--ray-client-server-port", str(client), "--include-dashboard", "false",
            "--num-cpus", str(cpus), "--resources", json.dumps(resources or {}),
        ], dict(os.environ, **self.env, **FAST_HEALTH_CHECKS))
        self.address = f"{HOST}:{port}"
        return node

    def add_node(self, name: str, cpus: int = 1, resources: dict[str, float] | None = None,
                 hide: list[Path] = ()) -> Node:
        """A node joining the head, named by a custom resource (`resources`), `hide` folders empty on it."""
        return self._start(name, ["--address", self.address, "--num-cpus", str(cpus),
                                  "--resources", json.dumps(resources or {})], dict(os.environ, **self.env), hide)

    def stop(self) -> None:
        """End every node (workers first, then the head) and remove the folders."""
        for node in sorted(self.nodes.values(), key=lambda n: n.name == "head"):
            pids = node.tree()
            if node.process.poll() is None:
                try:
                    os.killpg(node.process.pid, signal.SIGTERM)  # `ray start --block` stops what it started
                    node.process.wait(timeout=5)  # then, throw-away as it is, it is killed
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass
            for pid in pids:  # anything that outlived it
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            try:
                os.killpg(node.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.nodes.clear()
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster() -> RayCluster:
    """An empty cluster object whose `stop` is safe to call at once (use it in a finally)."""
    return RayCluster()


def _main() -> None:  # python -m helpers.ray_cluster: start a head and a node, print ids, stop
    cluster = start_cluster()
    try:
        cluster.start_head(resources={"zoo_head": 1})
        cluster.add_node("b", resources={"zoo_b": 1})
        print(cluster.address, flush=True)
        time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 5)
    finally:
        cluster.stop()


if __name__ == "__main__":
    _main()
