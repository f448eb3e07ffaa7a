"""A real PostgreSQL server for the deployment tests, from the machine's own binaries.

`initdb` in a temporary folder (as the `postgres` user when the tests run as root, since the
server refuses to run as root), started on a free loopback port with password authentication,
stopped and restarted on demand.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from clipfood_assets_tests.integration.dagster_client import free_port

USER = "dagster"
PASSWORD = "pg-secret-5e1f"  # a value the tests look for: it must never reach the event log


def postgres_bindir() -> Path | None:
    """Where initdb and pg_ctl are: Debian's versioned folder, else the PATH."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else None


class Postgres:
    def __init__(self):
        bindir = postgres_bindir()
        if bindir is None:
            raise RuntimeError("no PostgreSQL server binaries (apt-get install postgresql)")
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="clipfood-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self._as_postgres:
            shutil.chown(pwfile, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", USER, f"--pwfile={pwfile}", "--auth=scram-sha-256",
                  "--encoding=UTF8", "--locale=C.UTF-8")
        pwfile.unlink()
        self.start()

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / tool), *args]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)

    def restart(self) -> None:
        self.stop()
        self.start()

    def create_database(self, name: str) -> str:
        env = dict(os.environ, PGPASSWORD=PASSWORD)
        subprocess.run([str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, name],
                       check=True, env=env, capture_output=True, timeout=60)
        return name

    def env(self, database: str) -> dict[str, str]:
        """The variables docker/dagster.yaml reads (the compose file sets the same names)."""
        return {"DAGSTER_POSTGRES_HOST": "127.0.0.1", "DAGSTER_POSTGRES_PORT": str(self.port),
                "DAGSTER_POSTGRES_USER": USER, "DAGSTER_POSTGRES_PASSWORD": PASSWORD,
                "DAGSTER_POSTGRES_DB": database}

    def query(self, database: str, sql: str) -> str:
        env = dict(os.environ, PGPASSWORD=PASSWORD)
        return subprocess.run(
            ["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, "-d", database, "-At", "-c", sql],
            check=True, env=env, capture_output=True, text=True, timeout=120).stdout

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
