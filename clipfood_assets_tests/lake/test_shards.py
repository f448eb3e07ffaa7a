"""Shards by a stable hash of the key: the same shard in every process, tasks named by their work, completion
records that let a re-run skip what an interrupted one finished."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from clipfood_assets.lake.base import LakeError
from clipfood_assets.lake.shards import (
    ShardLedger,
    ShardsIncomplete,
    run_task,
    run_tasks,
    shard_of,
    split_by_shard,
    task_fingerprint,
)

KEYS = [f"images/image$p$2024-01-01T00-00-00Z$ab{i:04d}__{i:010d}_0.jpg" for i in range(200)] + [
    "images/café__ü_1.jpg", "images/\udcff-lone-surrogate.jpg"]


def _shards_in_subprocess(seed: str) -> list[int]:
    code = ("import json, sys; from clipfood_assets.lake.shards import shard_of; "
            "keys = json.loads(sys.stdin.read()); print(json.dumps([shard_of(k, 7) for k in keys]))")
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(KEYS), capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONHASHSEED": seed})
    return json.loads(out.stdout)


def test_shard_of_is_the_same_in_every_process_whatever_the_hash_seed():
    here = [shard_of(k, 7) for k in KEYS]
    assert _shards_in_subprocess("1") == here
    assert _shards_in_subprocess("987654") == here
    # a pinned value: sha256 of the key, first 8 bytes big-endian, modulo the count
    assert shard_of("images/a__1_0.jpg", 1000) == int.from_bytes(
        __import__("hashlib").sha256(b"images/a__1_0.jpg").digest()[:8], "big") % 1000


def test_shard_of_spreads_keys_and_rejects_bad_input():
    counts = [0] * 4
    for key in KEYS:
        counts[shard_of(key, 4)] += 1
    assert min(counts) > len(KEYS) / 4 * 0.6  # no shard starves
    assert {shard_of(k, 1) for k in KEYS} == {0}
    for bad_key in ("", None, b"images/a.jpg"):
        with pytest.raises(ValueError):
            shard_of(bad_key, 4)
    for bad_count in (0, -1, 4097, 2.0, True):
        with pytest.raises(ValueError):
            shard_of("images/a.jpg", bad_count)


def test_fingerprint_names_the_work_not_its_order():
    rows = [{"key": k, "etag": "e"} for k in KEYS[:5]]
    fp = task_fingerprint("image_copy", 1, 4, {}, rows)
    assert task_fingerprint("image_copy", 1, 4, {}, list(reversed(rows))) == fp
    assert task_fingerprint("image_copy", 1, 4, {}, [{**rows[0], "etag": "f"}, *rows[1:]]) != fp  # changed image
    assert task_fingerprint("image_copy", 1, 8, {}, rows) != fp  # another shard count
    assert task_fingerprint("image_store", 1, 4, {}, rows) != fp
    assert task_fingerprint("image_copy", 1, 4, {"signature": "x"}, rows) != fp


def _plan(ledger: ShardLedger, etag: str = "e", n: int = 4):
    rows = [{"key": k, "etag": etag if i == 0 else "e"} for i, k in enumerate(KEYS)]
    return ledger.plan(split_by_shard(rows, "key", n), n)


def test_a_run_killed_midway_redoes_only_its_unfinished_shards(local_lake):
    ledger = ShardLedger(local_lake, "fine-tuning-zone", "image_copy")
    plan = _plan(ledger)
    assert len(plan.tasks) == 4 and sum(t.items for t in plan.tasks) == len(KEYS)
    done_work: list[int] = []
    kill = {"in shard": 2}

    def work(task, rows):
        if task.shard == kill["in shard"]:
            raise RuntimeError("killed in the third shard")
        done_work.append(task.shard)
        return {"n": len(rows), "keys": sorted(r["key"] for r in rows)}

    with pytest.raises(RuntimeError, match="third shard"):
        run_tasks(ledger, plan.tasks, work)
    assert done_work == [0, 1]
    with pytest.raises(ShardsIncomplete, match=r"shards \[2, 3\]"):
        ledger.records(plan)
    # The next run plans the same work: same fingerprints, and only shards 2 and 3 run.
    kill["in shard"] = None
    again = _plan(ledger)
    assert [t.fingerprint for t in again.tasks] == [t.fingerprint for t in plan.tasks]
    assert [t.shard for t in ledger.pending(again)] == [2, 3]
    records = run_tasks(ledger, again.tasks, work)
    assert done_work == [0, 1, 2, 3]
    assert sorted(k for r in records.values() for k in r["keys"]) == sorted(KEYS)
    assert ledger.records(again) == records


def test_a_changed_item_reruns_its_shard_only(local_lake):
    ledger = ShardLedger(local_lake, "fine-tuning-zone", "image_copy")
    run_tasks(ledger, _plan(ledger).tasks, lambda t, rows: {"n": len(rows)})
    changed = _plan(ledger, etag="new")
    assert [t.shard for t in ledger.pending(changed)] == [shard_of(KEYS[0], 4)]
    ran = [run_task(ledger, t, lambda t, rows: {"n": len(rows)})[1] for t in changed.tasks]
    assert sum(ran) == 1


def test_tasks_travel_through_the_lake_and_plans_round_trip(local_lake):
    ledger = ShardLedger(local_lake, "fine-tuning-zone", "image_copy")
    plan = _plan(ledger)
    task = plan.tasks[0]
    assert {r["key"] for r in ledger.rows(task)} == {k for k in KEYS if shard_of(k, 4) == task.shard}
    ledger.save_plan("run-1", plan)
    loaded = ledger.load_plan("run-1")
    assert loaded == plan and loaded.task(task.mapping_key) == task
    with pytest.raises(KeyError):
        loaded.task("shard_0009_0123456789abcdef")
    ledger.forget(plan, "run-1")
    with pytest.raises(LakeError, match="no plan"):
        ledger.load_plan("run-1")
    with pytest.raises(LakeError, match="is gone"):
        ledger.rows(task)
    for bad in ("../x", "", "a/b"):
        with pytest.raises(ValueError):
            ledger.load_plan(bad)
    with pytest.raises(ValueError):
        ShardLedger(local_lake, "fine-tuning-zone", "../up")


def test_an_unreadable_record_means_not_done(local_lake):
    ledger = ShardLedger(local_lake, "fine-tuning-zone", "image_copy")
    task = _plan(ledger).tasks[0]
    local_lake.put_bytes("fine-tuning-zone", f"_shards/image_copy/done/{task.fingerprint}.json", b"{not json")
    assert ledger.record(task) is None
    record, ran = run_task(ledger, task, lambda t, rows: {"ok": 1})
    assert ran and ledger.record(task) == {"ok": 1}


def _count_rows(task, rows):  # module level: spawned processes import it
    return {"n": len(rows), "pid": os.getpid()}


def test_tasks_run_in_separate_processes(local_lake):
    ledger = ShardLedger(local_lake, "fine-tuning-zone", "image_copy")
    plan = _plan(ledger)
    records = run_tasks(ledger, plan.tasks, _count_rows, processes=2)
    assert sum(r["n"] for r in records.values()) == len(KEYS)
    assert os.getpid() not in {r["pid"] for r in records.values()}
