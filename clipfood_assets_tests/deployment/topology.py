"""The compose deployment's topology as local processes: the instance from docker/dagster.yaml on a
real PostgreSQL, a code server, a webserver and a daemon, each its own process, wired by
docker/workspace.yaml exactly as in docker-compose.yml.

The one difference from the compose deployment: runs are launched as processes of the code server
(``ProcessRunLauncher``, Dagster's default launcher with a worker health check) instead of
containers (``DockerRunLauncher``); no Docker engine runs here. The monitoring intervals are
shortened so that tests wait seconds, not minutes.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from clipfood_assets_tests.integration.dagster_client import Dagster, free_port, wait_for

from clipfood_assets.defs.meta import GPU_POOL, GPU_POOL_LIMIT
from clipfood_assets_tests import REPO_ROOT as REPO
INSTANCE_FILE = REPO / "docker" / "dagster.yaml"
WORKSPACE_FILE = REPO / "docker" / "workspace.yaml"
BIN = Path(sys.executable).parent

PROCESS_LAUNCHER = {"module": "clipfood_assets.defs.run_launcher", "class": "ProcessRunLauncher"}
# Seconds, so a test sees a dead worker failed and its slot freed within a minute.
FAST_MONITORING = {"poll_interval_seconds": 2, "free_slots_after_run_end_seconds": 2, "start_timeout_seconds": 120}


def compose_instance() -> dict:
    return yaml.safe_load(INSTANCE_FILE.read_text())


def process_instance(monitoring: dict | None = None) -> dict:
    """docker/dagster.yaml with runs launched as local processes (and faster monitoring)."""
    config = copy.deepcopy(compose_instance())
    config["run_launcher"] = dict(PROCESS_LAUNCHER)
    config["run_monitoring"].update(FAST_MONITORING if monitoring is None else monitoring)
    return config


def write_home(folder: Path, config: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder


class Service:
    """One process of the topology, in its own session so it is stopped with everything it started."""

    def __init__(self, name: str, cmd: list[str], env: dict, log_dir: Path):
        self.name, self.cmd, self.env = name, cmd, env
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass

    def restart(self) -> None:
        self.stop()
        self.start()

    def tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


class Topology:
    """user-code (gRPC code server), webserver and daemon, as docker-compose.yml runs them."""

    def __init__(self, env: dict, log_dir: Path):
        grpc_port, web_port = free_port(), free_port()
        env = dict(env, DAGSTER_CODE_SERVER_HOST="127.0.0.1", DAGSTER_CODE_SERVER_PORT=str(grpc_port))
        self.env = env
        self.code_server = Service("user-code", [
            str(BIN / "dagster"), "code-server", "start", "-h", "127.0.0.1", "-p", str(grpc_port),
            "--location-name", "clipfood_assets", "-m", "clipfood_assets.definitions"], env, log_dir)
        self.webserver = Service("webserver", [
            str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(web_port), "-w", str(WORKSPACE_FILE)],
            env, log_dir)
        self.daemon = Service("daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(WORKSPACE_FILE)], env, log_dir)
        self.client = Dagster(f"http://127.0.0.1:{web_port}")

    @property
    def services(self) -> list[Service]:
        return [self.code_server, self.webserver, self.daemon]

    def code_server_healthy(self) -> bool:
        """What the compose healthcheck asks before the webserver and the daemon start."""
        done = subprocess.run([str(BIN / "dagster"), "api", "grpc-health-check", "-p", self.env["DAGSTER_CODE_SERVER_PORT"]],
                              env=self.env, capture_output=True, timeout=60)
        return done.returncode == 0

    def set_pool_limits(self) -> None:
        """What docker-compose.yml's daemon command runs before the daemon itself."""
        subprocess.run([str(BIN / "dagster"), "instance", "concurrency", "set", GPU_POOL, str(GPU_POOL_LIMIT)],
                       env=self.env, check=True, capture_output=True, timeout=120)

    def start(self, timeout_s: float = 240) -> None:
        self.code_server.start()
        try:
            wait_for("the code server", lambda: self.code_server.proc.poll() is not None or self.code_server_healthy(),
                     timeout_s, 2)
        except TimeoutError as exc:
            raise RuntimeError(f"{exc}\n{self.code_server.tail()}") from exc
        if self.code_server.proc.poll() is not None:
            raise RuntimeError(f"the code server exited\n{self.code_server.tail()}")
        self.webserver.start()
        self.set_pool_limits()
        self.daemon.start()
        try:
            self.client.wait_until_loaded(self.webserver.proc, self.webserver.log_path, timeout_s)
        except Exception as exc:
            raise RuntimeError(f"{exc}\n--- user-code ---\n{self.code_server.tail()}") from exc

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {s.name} ---\n{s.tail()}" for s in self.services)

