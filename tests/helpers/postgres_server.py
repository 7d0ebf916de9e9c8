"""A throw-away PostgreSQL server for the catalog tests: initdb in a temp folder, unix socket only.

Root may not run PostgreSQL, so as root the cluster belongs to the `postgres` user (Debian's
package creates it). The binaries come from /usr/lib/postgresql/*/bin; when they are missing,
scripts/postgres.sh installs Debian's package (as root).
"""
from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# A login with a password, for the tests of credentials (trust is only for the admin user).
TEAM_USER, TEAM_PASSWORD = "zoo_team", "s3cret-Pa55word"


def bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin folder, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def install() -> str:
    """Run scripts/postgres.sh (installs Debian's postgresql if missing); its output on failure."""
    done = subprocess.run(["bash", str(ROOT / "scripts" / "postgres.sh")], capture_output=True,
                          text=True, timeout=900)
    return "" if done.returncode == 0 else (done.stderr or done.stdout).strip()[-500:]


class PostgresServer:
    """One cluster in a temp folder, listening only on a unix socket in that folder."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        # A short path: unix socket paths are limited to ~100 bytes.
        self.folder = Path(tempfile.mkdtemp(prefix="zoo-pg-", dir="/tmp"))
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        self._user = None
        if os.geteuid() == 0:
            self._user = "postgres" if _has_user("postgres") else "nobody"
            account = pwd.getpwnam(self._user)
            os.chown(self.folder, account.pw_uid, account.pw_gid)
        self.folder.chmod(0o755)  # the test processes (root) must reach the socket
        self._names = itertools.count()

    def _run(self, *args: str) -> None:
        done = subprocess.run([str(self.bindir / args[0]), *args[1:]], capture_output=True, text=True,
                              timeout=120, user=self._user, cwd=self.folder)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-1500:] if self.log.exists() else ""
            raise RuntimeError(f"{args[0]} failed: {done.stderr.strip()[-1500:]}\n{log}")

    def start(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--locale=C.UTF-8", "--no-sync")
        (self.data / "pg_hba.conf").write_text(
            "local all postgres trust\n"
            "local all all scram-sha-256\n")
        options = (f"-c listen_addresses='' -k {self.folder} -c fsync=off -c synchronous_commit=off "
                   "-c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")
        with self.admin() as connection:
            connection.execute(f"CREATE ROLE {TEAM_USER} LOGIN PASSWORD '{TEAM_PASSWORD}'")

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def admin(self):
        import psycopg

        return psycopg.connect(host=str(self.folder), user="postgres", dbname="postgres", autocommit=True)

    def url(self, database: str, user: str = "postgres", password: str | None = None) -> str:
        login = f"{user}:{password}" if password else user
        return f"postgresql+psycopg://{login}@/{database}?host={self.folder}"

    def create_database(self, owner: str = "postgres") -> str:
        name = f"zoo_test_{os.getpid()}_{next(self._names)}"
        with self.admin() as connection:
            connection.execute(f'CREATE DATABASE "{name}" OWNER {owner}')
        return name

    def drop_database(self, name: str) -> None:
        with self.admin() as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def start_server() -> PostgresServer:
    """A running throw-away server; RuntimeError saying why when there cannot be one."""
    bindir = bin_dir()
    if bindir is None:
        problem = install()
        bindir = bin_dir()
        if bindir is None:
            raise RuntimeError(f"PostgreSQL is not installed and scripts/postgres.sh could not "
                               f"install it: {problem or 'no initdb afterwards'}")
    try:
        import psycopg  # noqa: F401
    except ImportError as error:
        raise RuntimeError(f"{error}; install it with: pip install -e '.[postgres]'") from None
    server = PostgresServer(bindir)
    try:
        server.start()
    except BaseException:
        try:
            server.stop()
        except Exception:  # it never started: stop() still removed the folder
            pass
        raise
    return server
