"""Runs as local processes, with the worker health check that run monitoring needs.

Dagster's ``DefaultRunLauncher`` starts each run as a process of the code server but cannot tell
the daemon whether that process is still alive, so a worker killed by the kernel (out of memory)
or by a person stays STARTED forever and keeps its pool slot. This launcher answers from the
worker's pid, which the worker reports in its first engine event ("Started process for run").

It is for one host (daemon and code server see the same processes): ``clipfood dev`` and the
process topology the tests run. The compose deployment uses ``DockerRunLauncher``, which checks
the run's container instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus


def worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The pid the run's worker reported (its latest "Started process for run" engine event)."""
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT, ascending=False,
                                           limit=50).records
    for record in records:
        data = record.event_log_entry.dagster_event.engine_event_data
        entry = data.metadata.get("pid") if data is not None else None
        if entry is not None and "Started process for run" in (record.event_log_entry.dagster_event.message or ""):
            return int(entry.value)
    return None


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process of this host; a zombie (killed, not yet reaped by its
    parent, the code server) is dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # Field 3 of /proc/<pid>/stat is the state; the command name before it may hold spaces.
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no procfs: trust kill(0)
    return state not in ("Z", "X")


class ProcessRunLauncher(dg.DefaultRunLauncher):
    """``DefaultRunLauncher`` whose run workers the daemon's run monitoring can check."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        pid = worker_pid(self._instance, run.run_id)
        if pid is None:
            # Not reported yet (the worker is importing): the start timeout covers a worker that never starts.
            return CheckRunHealthResult(WorkerStatus.RUNNING, msg="worker pid not reported yet")
        if process_alive(pid):
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        return CheckRunHealthResult(WorkerStatus.FAILED, msg=f"run worker process {pid} is gone (killed or crashed)")
