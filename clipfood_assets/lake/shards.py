"""Shards of a data-plane stage: work split by a stable hash of the image key, each shard done alone.

A stage (the image copy, the packed store, the exploitation embeddings) *plans* what it must do, splits
the work by :func:`shard_of` of each image key into ``n_shards`` shards, runs each shard's task on its own
(one process, one Dagster step, one pod) and *commits* once every shard is done. The lake holds the
bookkeeping, so any process (or machine) can run any shard and a run killed midway loses only the shards
it had not finished::

    <bucket>/_shards/<stage>/tasks/<fingerprint>.jsonl    one JSON object per item of the shard's work
    <bucket>/_shards/<stage>/done/<fingerprint>.json      the completion record, written last by the worker
    <bucket>/_shards/<stage>/plans/<plan id>.json         the plan: its tasks and the stage's context

A task is named by its *fingerprint*: sha256 over the stage, the shard, the shard count, the stage's
context and the task's items (sorted). Planning the same work again gives the same fingerprints, so a
shard whose completion record exists is not run again, whichever run wrote it; a shard whose images
changed gets a new fingerprint and runs. Only shards with work get a task: after a refresh, only the
shards holding changed images run. Pure: no dagster; values are JSON, never pickled in the lake.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import re
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field

from clipfood_assets.lake.base import Lake, LakeError, ObjectNotFound

log = logging.getLogger(__name__)

LEDGER_PREFIX = "_shards/"
MAX_SHARDS = 4096
_STAGE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_MAPPING_KEY = re.compile(r"^shard_(\d{4})_([0-9a-f]{16})$")
_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")


class ShardsIncomplete(LakeError):
    """A commit was asked for while some of the plan's shards have no completion record."""


def shard_of(key: str, n_shards: int) -> int:
    """The shard (0 .. n_shards - 1) of ``key``: the first 8 bytes of sha256(key as UTF-8) modulo ``n_shards``.

    The same in every process, interpreter and machine (never Python's salted ``hash()``). ValueError for an
    empty or non-string key or a shard count outside 1 .. MAX_SHARDS."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"a shard key is a non-empty string, got {key!r}")
    check_shard_count(n_shards)
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % n_shards


def check_shard_count(n_shards: int) -> int:
    if isinstance(n_shards, bool) or not isinstance(n_shards, int) or not 1 <= n_shards <= MAX_SHARDS:
        raise ValueError(f"the shard count is an integer in 1..{MAX_SHARDS}, got {n_shards!r}")
    return n_shards


def split_by_shard(rows: Iterable[dict], key: str, n_shards: int) -> dict[int, list[dict]]:
    """``rows`` grouped by :func:`shard_of` of ``row[key]``: only shards with rows, in shard order."""
    out: dict[int, list[dict]] = {}
    for row in rows:
        out.setdefault(shard_of(row[key], n_shards), []).append(row)
    return dict(sorted(out.items()))


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def task_fingerprint(stage: str, shard: int, n_shards: int, context: dict, rows: Sequence[dict]) -> str:
    """64 hex digits naming one shard's work (see the module docstring); the rows' order does not matter."""
    digest = hashlib.sha256(_canonical({"stage": stage, "shard": shard, "n_shards": n_shards,
                                        "context": context}).encode("utf-8"))
    for line in sorted(_canonical(row) for row in rows):
        digest.update(b"\n" + line.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


@dataclass(frozen=True)
class ShardTask:
    """One shard's work: ``items`` items, named by ``fingerprint``."""

    stage: str
    shard: int
    n_shards: int
    fingerprint: str
    items: int

    @property
    def mapping_key(self) -> str:
        """``shard_<NNNN>_<16 hex>``: a Dagster mapping key (letters, digits, underscores)."""
        return f"shard_{self.shard:04d}_{self.fingerprint[:16]}"


@dataclass
class ShardPlan:
    """What a stage must do: its tasks (only shards with work) and a JSON ``context`` for its commit."""

    stage: str
    n_shards: int
    tasks: list[ShardTask]
    context: dict = field(default_factory=dict)

    def task(self, mapping_key: str) -> ShardTask:
        """The task a Dagster mapping key names; KeyError when the plan has none."""
        for task in self.tasks:
            if task.mapping_key == mapping_key:
                return task
        raise KeyError(f"plan of {self.stage} has no task {mapping_key!r}")

    def to_json(self) -> bytes:
        return _canonical({"stage": self.stage, "n_shards": self.n_shards, "context": self.context,
                           "tasks": [asdict(t) for t in self.tasks]}).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> ShardPlan:
        value = json.loads(data)
        return cls(value["stage"], int(value["n_shards"]), [ShardTask(**t) for t in value["tasks"]],
                   value.get("context") or {})


class ShardLedger:
    """The tasks, completion records and plans of one stage under ``<bucket>/_shards/<stage>/``."""

    def __init__(self, lake: Lake, bucket: str, stage: str) -> None:
        if not _STAGE.match(stage):
            raise ValueError(f"a stage name is lower-case letters, digits and underscores, got {stage!r}")
        self.lake, self.bucket, self.stage = lake, bucket, stage
        self.prefix = f"{LEDGER_PREFIX}{stage}/"

    def _key(self, folder: str, name: str) -> str:
        return f"{self.prefix}{folder}/{name}"

    def plan(self, groups: dict[int, list[dict]], n_shards: int, context: dict | None = None,
             task_context: dict | None = None) -> ShardPlan:
        """A plan with one task per shard of ``groups`` (shard -> rows); each task's rows are stored unless a
        task of that fingerprint already is. ``task_context`` enters every fingerprint; ``context`` is the
        commit's and does not."""
        check_shard_count(n_shards)
        tasks = []
        for shard, rows in sorted(groups.items()):
            if not rows:
                continue
            fp = task_fingerprint(self.stage, shard, n_shards, task_context or {}, rows)
            key = self._key("tasks", f"{fp}.jsonl")
            if not self.lake.exists(self.bucket, key):
                data = "".join(_canonical(row) + "\n" for row in rows).encode("utf-8", "surrogatepass")
                self.lake.put_bytes(self.bucket, key, data, "application/x-ndjson")
            tasks.append(ShardTask(self.stage, shard, n_shards, fp, len(rows)))
        return ShardPlan(self.stage, n_shards, tasks, dict(context or {}))

    def rows(self, task: ShardTask) -> list[dict]:
        """The task's items, as planned. LakeError when its task file is gone (plan again)."""
        try:
            data = self.lake.get_bytes(self.bucket, self._key("tasks", f"{_checked(task.fingerprint)}.jsonl"))
        except ObjectNotFound:
            raise LakeError(f"{self.stage}: the task of shard {task.shard} ({task.fingerprint[:16]}) is gone; "
                            "run the stage again to plan it anew") from None
        return [json.loads(line) for line in data.decode("utf-8", "surrogatepass").splitlines() if line]

    def record(self, task: ShardTask) -> dict | None:
        """The task's completion record, or None while it is not done (an unreadable record is not done)."""
        try:
            return json.loads(self.lake.get_bytes(self.bucket, self._key("done", f"{_checked(task.fingerprint)}.json")))
        except ObjectNotFound:
            return None
        except ValueError as exc:
            log.warning("%s: unreadable completion record of shard %d (%s); it runs again", self.stage, task.shard, exc)
            return None

    def complete(self, task: ShardTask, record: dict) -> None:
        """Mark the task done with ``record`` (JSON): the last thing a worker writes."""
        self.lake.put_bytes(self.bucket, self._key("done", f"{_checked(task.fingerprint)}.json"),
                            _canonical(record).encode("utf-8", "surrogatepass"), "application/json")

    def pending(self, plan: ShardPlan) -> list[ShardTask]:
        """The plan's tasks without a completion record."""
        return [t for t in plan.tasks if self.record(t) is None]

    def records(self, plan: ShardPlan) -> dict[int, dict]:
        """shard -> completion record of every task of ``plan``; ShardsIncomplete naming those not done."""
        out, missing = {}, []
        for task in plan.tasks:
            record = self.record(task)
            if record is None:
                missing.append(task.shard)
            else:
                out[task.shard] = record
        if missing:
            raise ShardsIncomplete(f"{self.stage}: shards {missing} of {plan.n_shards} are not done; "
                                   "run them (re-execute the failed steps) before the commit")
        return out

    def save_plan(self, plan_id: str, plan: ShardPlan) -> None:
        self.lake.put_bytes(self.bucket, self._key("plans", f"{_plan_name(plan_id)}.json"), plan.to_json(),
                            "application/json")

    def load_plan(self, plan_id: str) -> ShardPlan:
        """The plan saved under ``plan_id``; LakeError when there is none."""
        try:
            return ShardPlan.from_json(self.lake.get_bytes(self.bucket, self._key("plans", f"{_plan_name(plan_id)}.json")))
        except ObjectNotFound:
            raise LakeError(f"{self.stage}: no plan {plan_id!r}; run the stage's plan step again") from None

    def forget(self, plan: ShardPlan, plan_id: str | None = None) -> None:
        """After the commit: the plan's task files, records (and the saved plan) are of no more use."""
        for task in plan.tasks:
            self.lake.delete(self.bucket, self._key("tasks", f"{task.fingerprint}.jsonl"))
            self.lake.delete(self.bucket, self._key("done", f"{task.fingerprint}.json"))
        if plan_id is not None:
            self.lake.delete(self.bucket, self._key("plans", f"{_plan_name(plan_id)}.json"))


def _checked(fingerprint: str) -> str:
    if not isinstance(fingerprint, str) or not _FINGERPRINT.match(fingerprint):
        raise ValueError(f"not a task fingerprint: {fingerprint!r}")
    return fingerprint


def _plan_name(plan_id: str) -> str:
    if not re.match(r"^[A-Za-z0-9_-]{1,128}$", plan_id or ""):
        raise ValueError(f"a plan id is letters, digits, '-' and '_', got {plan_id!r}")
    return plan_id


def run_task(ledger: ShardLedger, task: ShardTask, work: Callable[[ShardTask, list[dict]], dict]) -> tuple[dict, bool]:
    """(record, ran): the task's completion record, running ``work(task, rows)`` and recording its result
    only when the task is not done yet."""
    record = ledger.record(task)
    if record is not None:
        return record, False
    record = work(task, ledger.rows(task))
    ledger.complete(task, record)
    return record, True


def run_tasks(ledger: ShardLedger, tasks: Sequence[ShardTask], work: Callable[[ShardTask, list[dict]], dict],
              *, processes: int = 1) -> dict[int, dict]:
    """shard -> record of every task, the pending ones run by ``work`` in this process (``processes`` 1) or in
    ``processes`` spawned processes (``work`` and the ledger's lake must then be picklable: a module-level
    function or a partial of one). A failing shard raises after the others have finished (their records stay)."""
    if processes <= 1 or len(tasks) <= 1:
        return {t.shard: run_task(ledger, t, work)[0] for t in tasks}
    out, errors = {}, []
    with ProcessPoolExecutor(max_workers=processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {t.shard: pool.submit(run_task, ledger, t, work) for t in tasks}
        for shard, future in futures.items():
            try:
                out[shard] = future.result()[0]
            except Exception as exc:  # noqa: BLE001 - every shard finishes before the first failure is raised
                errors.append((shard, exc))
    if errors:
        raise errors[0][1]
    return out
