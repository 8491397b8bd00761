"""A throwaway PostgreSQL cluster on a free port, for faults that restart the server.

The rest of the suite shares the server at 127.0.0.1:5432; a test that restarts
PostgreSQL must never touch it. ``pg_cluster()`` runs ``initdb`` in a temporary
directory (trust authentication, no fsync: nothing here must survive a power cut),
starts it on its own port and socket directory, and removes it all afterwards::

    with pg_cluster() as cluster:
        url = cluster.create_database("credits")
        ...
        cluster.restart()  # pg_ctl restart -m fast: every connection is cut

``pg_ctl`` refuses to run as root, so as root every command runs as the
``postgres`` OS user (``runuser -u postgres --``), which owns the directory.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text

from tests.hub import free_ports

#: Where Debian puts the server's programs when they are not on PATH.
_DEBIAN_BIN = Path("/usr/lib/postgresql")


class ClusterUnavailable(RuntimeError):
    """PostgreSQL's server programs are missing, or the cluster did not start."""


def _program(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(_DEBIAN_BIN.glob(f"*/bin/{name}"), reverse=True)
    if candidates:
        return str(candidates[0])
    raise ClusterUnavailable(f"{name} not found (install the postgresql package)")


class PgCluster:
    def __init__(self, directory: Path, port: int):
        self.directory = directory
        self.data = directory / "data"
        self.port = port
        self.log_path = directory / "postgres.log"
        self.admin_url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
        self._as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str, timeout: float = 60) -> None:
        result = subprocess.run([*self._as_postgres, *args], capture_output=True, text=True,
                                timeout=timeout)
        if result.returncode != 0:
            raise ClusterUnavailable(f"{' '.join(args[:2])} failed ({result.returncode}): "
                                     f"{result.stderr.strip() or result.stdout.strip()}")

    def init(self) -> None:
        self._run(_program("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "--no-sync", "-E", "UTF8")
        # In the cluster's own configuration, so that a restart keeps them.
        (self.data / "postgresql.auto.conf").write_text(
            "".join(f"{line}\n" for line in (
                f"port = {self.port}", f"unix_socket_directories = '{self.directory}'",
                "listen_addresses = '127.0.0.1'", "fsync = off", "synchronous_commit = off",
                "full_page_writes = off", "max_connections = 100")))

    def start(self) -> None:
        self._run(_program("pg_ctl"), "start", "-w", "-t", "60", "-D", str(self.data),
                  "-l", str(self.log_path))

    def restart(self) -> float:
        """``pg_ctl restart -m fast`` (every session cut, no wait for them); seconds taken."""
        started = time.monotonic()
        self._run(_program("pg_ctl"), "restart", "-m", "fast", "-w", "-t", "60",
                  "-D", str(self.data), "-l", str(self.log_path))
        return time.monotonic() - started

    def stop(self, mode: str = "fast") -> None:
        self._run(_program("pg_ctl"), "stop", "-m", mode, "-w", "-D", str(self.data))

    def create_database(self, name: str) -> str:
        """A new empty database in this cluster; its SQLAlchemy URL."""
        engine = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@contextmanager
def pg_cluster():
    """A running throwaway cluster (``PgCluster``); stopped and deleted on exit.

    Raises ``ClusterUnavailable`` when PostgreSQL's programs are missing or it cannot start.
    """
    directory = Path(tempfile.mkdtemp(prefix="credits-pgcluster-"))
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(directory, ignore_errors=True)
            raise ClusterUnavailable("no postgres OS user to run the server as") from None
        os.chown(directory, owner.pw_uid, owner.pw_gid)
    cluster = PgCluster(directory, free_ports(1)[0])
    started = False
    try:
        cluster.init()
        cluster.start()
        started = True
        yield cluster
    finally:
        if started:
            try:
                cluster.stop("immediate")
            except (ClusterUnavailable, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(directory, ignore_errors=True)
