"""Sharded stages as Dagster graphs: a plan step, one step per shard with work, a commit step.

The plan step saves its plan in the lake (:class:`~clipfood_assets.lake.shards.ShardLedger`) under the run's
root id and yields one dynamic output per task, mapped to a shard step; the commit step collects them. Every
value between the steps is ``Nothing`` (nothing is pickled, no I/O manager is involved): a shard step finds
its task through its mapping key, the commit its plan through the root run id. Under the multiprocess
executor the shard steps run in parallel processes, under dagster-k8s's ``k8s_job_executor`` in pods; a step
retried (the jobs' retry policy) or re-executed from failure redoes its shard alone, and a fresh run skips
every shard whose completion record is in the lake.
"""

from collections.abc import Iterator

import dagster as dg

from clipfood_assets.lake.shards import ShardLedger, ShardPlan, ShardTask
from clipfood_assets.settings import ClipfoodSettings


def shard_count() -> int:
    """The data plane's shard count (CLIPFOOD_SHARDS, read when a plan is made)."""
    return ClipfoodSettings.from_env().shards


def plan_id(context: dg.OpExecutionContext) -> str:
    """The id a run's plan is saved under: the root run's, so a re-execution's commit finds its plan."""
    return context.run.root_run_id or context.run_id


def emit_tasks(context: dg.OpExecutionContext, ledger: ShardLedger, plan: ShardPlan) -> Iterator[dg.DynamicOutput]:
    """Save ``plan`` and yield one dynamic output per shard still to do (done shards get no step)."""
    ledger.save_plan(plan_id(context), plan)
    pending = ledger.pending(plan)
    context.log.info(f"{plan.stage}: {len(plan.tasks)} of {plan.n_shards} shards have work, {len(pending)} not "
                     f"done yet ({sum(t.items for t in pending)} items)")
    for task in pending:
        yield dg.DynamicOutput(None, mapping_key=task.mapping_key)


def current_task(context: dg.OpExecutionContext, ledger: ShardLedger) -> ShardTask:
    """The task of this mapped shard step."""
    return ledger.load_plan(plan_id(context)).task(context.get_mapping_key())


def shard_metadata(plan: ShardPlan) -> dict:
    """What the commit tells about the sharding: the shard count and the shards that had work."""
    return {"shards": plan.n_shards, "shards with work": len(plan.tasks),
            "items in shards with work": sum(t.items for t in plan.tasks)}


PLAN_OUT = dg.DynamicOut(dg.Nothing, description="One output per shard with work (no value: the task is in the lake).")
SHARD_IN = {"start": dg.In(dg.Nothing)}
SHARD_OUT = dg.Out(dg.Nothing)
COMMIT_IN = {"shards": dg.In(dg.Nothing)}
