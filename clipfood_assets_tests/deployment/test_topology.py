"""The compose deployment's topology run as processes on this machine (see topology.py): the instance
from docker/dagster.yaml on a real PostgreSQL, a gRPC code server, a webserver and a daemon, over a
lake on the S3 test server that a user built first with the CLI (`clipfood materialize --run`),
exactly as the README says to before `docker compose up`.

The tests share one topology and run in order: a new instance adopts the lake; the UI walk in
Chromium; two trainings launched together; a run worker SIGKILLed mid-training; PostgreSQL restarted
during a run; a 30-point sweep with the daemon restarted half-way; the sensor rebuilding a changed
trusted zone; and no secret in PostgreSQL after all of it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import dagster as dg
import pytest
import yaml

from clipfood_assets.lake import S3Lake
from clipfood_assets.lake.artifacts import read_bundle
from clipfood_assets.lake.layout import FINE_TUNING_ZONE, run_checkpoints_prefix, run_prefix, sweep_key
from clipfood_assets_tests import REPO_ROOT
from clipfood_assets_tests.deployment import topology
from clipfood_assets_tests.deployment.postgres import PASSWORD
from clipfood_assets_tests.integration.dagster_client import LAUNCH, REPOSITORY
from clipfood_assets_tests.integration.test_ui_browser import CHROMIUM

pytestmark = pytest.mark.slow

SECRET_KEY = "s3-secret-9c2d"  # the lake's secret: it must never reach the event log
ADOPTED_RUN = "cli-run"
FAST = {"training": {"epochs": 1, "batch_size": 8, "effective_batch_size": 16}, "evaluation": {"bootstrap_samples": 50}}
LONG = {"training": {"epochs": 25, "batch_size": 8, "effective_batch_size": 16, "checkpoint_every_steps": 2},
        "lora": {"lora_dropout": 0.0}, "evaluation": {"bootstrap_samples": 50}}
TRAIN_JOB = "train_and_evaluate_run"
EXPLOITATION_ASSETS = {"exploitation_image_embeddings", "exploitation_title_embeddings", "exploitation_collections"}

ADD_PARTITION = """
mutation Add($selector: RepositorySelector!, $name: String!, $key: String!) {
  addDynamicPartition(repositorySelector: $selector, partitionsDefName: $name, partitionKey: $key) { __typename }
}
"""
SENSOR_TICKS = """
query Ticks($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    ... on Sensor { sensorState { ticks(limit: 20) { status skipReason runIds error { message } } } }
  }
}
"""


def _cli(env: dict, *args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "clipfood_assets.cli", *args], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, postgres, s3_server):
    root = tmp_path_factory.mktemp("deployment")
    s3_server.reset()
    database = postgres.create_database("dagster_topology")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MINIO_", "DAGSTER_", "CLIPFOOD_"))}
    env.update(MINIO_ENDPOINT=s3_server.endpoint, MINIO_ACCESS_KEY="testing", MINIO_SECRET_KEY=SECRET_KEY,
               CLIPFOOD_HOME=str(root / "state"), CLIPFOOD_CACHE_DIR=str(root / "cache"),
               CLIPFOOD_TORCH_THREADS="1")
    # What a user does before `docker compose up`: a base model, a zone, the CLI's materialize with a
    # run, all recorded in the CLI's own (sqlite) instance, none of it in PostgreSQL.
    _cli(env, "base-model", "--out", str(root / "base-model"), "--pretrain-steps", "30")
    _cli(env, "synth", "--recipes", "30", "--seed", "3")
    config = root / "cli-run.yaml"
    config.write_text(yaml.safe_dump(FAST))
    _cli(env, "materialize", "--run", ADOPTED_RUN, "--config", str(config))

    env.update(postgres.env(database), CLIPFOOD_BASE_MODEL=str(root / "base-model"),
               DAGSTER_HOME=str(topology.write_home(root / "dagster_home", topology.process_instance())))
    deployed = topology.Topology(env, root)
    try:
        deployed.start()
    except BaseException:
        deployed.stop()  # a service that came up must not outlive a topology that did not
        raise
    saved = dict(os.environ)
    os.environ.update(env)  # this process reads the same instance, as an operator's `dagster` CLI would
    instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
    lake = S3Lake(s3_server.endpoint, "testing", SECRET_KEY, secure=False, retries=2, backoff=0.05, timeout=10)
    try:
        yield {"topology": deployed, "client": deployed.client, "instance": instance, "lake": lake,
               "postgres": postgres, "database": database, "env": env}
    finally:
        instance.dispose()
        deployed.stop()
        os.environ.clear()
        os.environ.update(saved)


def _ticks(client, sensor: str) -> list[dict]:
    data = client.query(SENSOR_TICKS, {"selector": {**REPOSITORY, "sensorName": sensor}})
    return data["sensorOrError"]["sensorState"]["ticks"]


def _launch_training(client, run_key: str, overrides: dict) -> str:
    client.query(ADD_PARTITION, {"selector": REPOSITORY, "name": "experiment_runs", "key": run_key})
    launched = client.query(LAUNCH, {"params": {
        "selector": {**REPOSITORY, "jobName": TRAIN_JOB},
        "runConfigData": {"ops": {"lora_adapters": {"config": {"overrides_yaml": yaml.safe_dump(overrides)}}}},
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": run_key}]},
    }})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    return launched["run"]["runId"]


def _run(instance, run_id: str) -> dg.DagsterRun:
    return instance.get_run_by_id(run_id)


def _finished(instance, run_id: str) -> dg.DagsterRun | None:
    run = _run(instance, run_id)
    return run if run.is_finished else None


def _training_runs(instance) -> list:
    return instance.get_run_records(filters=dg.RunsFilter(job_name=TRAIN_JOB))


def _peak_overlap(records) -> int:
    """Most training runs in progress at one moment, from their start and end times."""
    edges = []
    for record in records:
        if record.start_time is None:
            continue
        edges += [(record.start_time, 1), (record.end_time or time.time(), -1)]
    peak = current = 0
    for _, step in sorted(edges, key=lambda edge: (edge[0], edge[1])):
        current += step
        peak = max(peak, current)
    return peak


def test_a_new_instance_over_a_built_lake_adopts_it_and_launches_nothing(deployment):
    client, instance, lake = deployment["client"], deployment["instance"], deployment["lake"]
    ticks = topology.wait_for("the trusted-zone sensor's first tick", lambda: [
        t for t in _ticks(client, "trusted_zone_sensor") if t["status"] != "STARTED"], 180)
    first = ticks[-1]
    assert first["status"] == "SKIPPED" and "built from this trusted zone" in first["skipReason"], first
    # The run the CLI trained is registered from the lake, and nothing is launched for it.
    topology.wait_for("the lake's runs registered", lambda: ADOPTED_RUN in instance.get_dynamic_partitions(
        "experiment_runs"), 120)
    time.sleep(20)  # past the automation sensor's next ticks
    # Nothing of what the lake holds is rebuilt: no refresh, no data zone, M0 or run. (The exploitation
    # zone follows the trusted-zone observations the sensor records, syncing by ETag; the report may
    # follow the run recorded from the lake, and then counts it.)
    launched = {key.to_user_string() for record in instance.get_run_records()
                for key in (record.dagster_run.asset_selection or {dg.AssetKey(record.dagster_run.job_name)})}
    assert launched <= EXPLOITATION_ASSETS | {"comparison_report"}, launched
    # The UI shows what the lake holds as materialized, saying it was adopted.
    for asset, partition in (("test_pairs_positive", None), ("baseline_results", None), ("lora_adapters", ADOPTED_RUN),
                             ("lora_results", ADOPTED_RUN)):
        records = instance.fetch_materializations(dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None), limit=1).records
        assert records and "adopted from the lake" in records[0].asset_materialization.metadata, asset
    # Rebuilt on this instance, the report counts the lake's run, not the instance's (none).
    launched = client.query(LAUNCH, {"params": {"selector": {**REPOSITORY, "jobName": "rebuild_report"}}})["launchRun"]
    run = topology.wait_for("the report", lambda: _finished(instance, launched["run"]["runId"]), 300)
    assert run.status == dg.DagsterRunStatus.SUCCESS, deployment["topology"].logs()
    report = instance.get_latest_materialization_event(dg.AssetKey("comparison_report")).asset_materialization
    assert report.metadata["runs"].value == 1
    assert ADOPTED_RUN in lake.get_bytes(FINE_TUNING_ZONE, "experiments/report/report.md").decode()


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (.ci/run installs Debian's chromium)")
def test_the_readme_walk_in_chromium_on_the_deployment(deployment):
    from playwright.sync_api import sync_playwright

    from clipfood_assets_tests.integration.test_ui_browser import CHROMIUM_ARGS, walk_the_readme

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            walk_the_readme(deployment["client"], browser, runs_after=2, run_key="ui-run")  # cli-run + ui-run
        finally:
            browser.close()


def test_two_trainings_launched_together_never_train_at_once(deployment):
    client, instance = deployment["client"], deployment["instance"]
    ids = [_launch_training(client, key, FAST) for key in ("pair-a", "pair-b")]
    runs = [topology.wait_for(f"run {i[:8]}", lambda i=i: _finished(instance, i), 600, 2) for i in ids]
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs), deployment["topology"].logs()
    records = [instance.get_run_record_by_id(i) for i in ids]
    assert _peak_overlap(records) == 1, [(r.start_time, r.end_time) for r in records]


def test_a_worker_killed_mid_training_is_failed_its_slot_freed_and_the_retry_resumes(deployment):
    from clipfood_assets.defs.run_launcher import worker_pid

    client, instance, lake = deployment["client"], deployment["instance"], deployment["lake"]
    run_id = _launch_training(client, "killed", LONG)
    checkpoint = topology.wait_for("a checkpoint in the lake", lambda: [
        o.key for o in lake.list(FINE_TUNING_ZONE, run_checkpoints_prefix("killed")) if o.key.endswith("COMPLETE")],
        600, 0.5)
    assert checkpoint
    pid = worker_pid(instance, run_id)
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    failed = topology.wait_for("the killed run to be marked failed", lambda: _finished(instance, run_id), 120, 0.5)
    took = time.monotonic() - killed_at
    poll = topology.FAST_MONITORING["poll_interval_seconds"]
    print(f"\nSIGKILLed worker {pid}: run marked {failed.status.value} after {took:.1f} s (poll interval {poll} s)")
    assert failed.status == dg.DagsterRunStatus.FAILURE
    assert took < 10 * poll + 10
    # The retry (run_retries: a crashed worker, not a refusal) resumes from the checkpoint and succeeds.
    retry = topology.wait_for("the retry", lambda: [r for r in instance.get_run_records(
        filters=dg.RunsFilter(tags={"dagster/parent_run_id": run_id}))], 120)[0].dagster_run
    done = topology.wait_for("the retry to finish", lambda: _finished(instance, retry.run_id), 600, 2)
    assert done.status == dg.DagsterRunStatus.SUCCESS, deployment["topology"].logs()
    logs = read_bundle(lake, FINE_TUNING_ZONE, run_prefix("killed"), "lora_adapters").read("training_logs.json")
    assert logs["resumed_from_step"] >= 2
    # Nothing holds the gpu pool any more: a new training starts and ends.
    after = _launch_training(client, "after-kill", FAST)
    assert topology.wait_for("the next training", lambda: _finished(instance, after), 600, 2).status == \
        dg.DagsterRunStatus.SUCCESS


def test_postgres_restarted_during_a_run_loses_no_run_and_launches_no_refresh(deployment):
    client, instance, postgres = deployment["client"], deployment["instance"], deployment["postgres"]
    lake = deployment["lake"]
    before = {r.dagster_run.run_id for r in instance.get_run_records()}
    run_id = _launch_training(client, "pg-restart", LONG)
    topology.wait_for("a checkpoint", lambda: [o for o in lake.list(FINE_TUNING_ZONE, run_checkpoints_prefix(
        "pg-restart")) if o.key.endswith("COMPLETE")], 600, 0.5)
    postgres.restart()  # while the daemon runs and the worker writes events: both lose their connections
    time.sleep(5)
    postgres.restart()
    # The run ends one way or the other (a worker whose event write failed fails its step): never stuck.
    run = topology.wait_for("the run to finish", lambda: _finished(instance, run_id), 900, 2)
    print(f"\nrun during two PostgreSQL restarts: {run.status.value}")
    assert before | {run_id} <= {r.dagster_run.run_id for r in instance.get_run_records()}  # no record lost
    if run.status != dg.DagsterRunStatus.SUCCESS:
        # Launched again, the run resumes from its checkpoint in the lake.
        again = _launch_training(client, "pg-restart", LONG)
        rerun = topology.wait_for("the relaunch", lambda: _finished(instance, again), 900, 2)
        assert rerun.status == dg.DagsterRunStatus.SUCCESS, deployment["topology"].logs()
        logs = read_bundle(lake, FINE_TUNING_ZONE, run_prefix("pg-restart"), "lora_adapters").read("training_logs.json")
        assert logs["resumed_from_step"] >= 2
    refreshes = instance.get_run_records(filters=dg.RunsFilter(job_name="refresh_from_trusted_zone"))
    assert refreshes == []  # the zone did not change: the sensor launched nothing across the restarts
    assert all(s.proc.poll() is None for s in deployment["topology"].services)  # every service survived


def test_a_30_point_sweep_trains_one_point_at_a_time_once_each_across_a_daemon_restart(deployment):
    instance, lake, deployed = deployment["instance"], deployment["lake"], deployment["topology"]
    spec = {"name": "sw", "base": FAST, "grid": {"lora.r": list(range(1, 31))}}
    started = time.monotonic()
    lake.put_bytes(FINE_TUNING_ZONE, sweep_key("sw"), yaml.safe_dump(spec).encode(), "application/yaml")

    def sweep_runs():
        return [r for r in _training_runs(instance) if r.dagster_run.tags.get("clipfood/sweep") == "sw"]

    topology.wait_for("the sweep's runs to be queued", lambda: len(sweep_runs()) == 30, 180, 2)
    topology.wait_for("a third of the sweep", lambda: sum(r.dagster_run.is_success for r in sweep_runs()) >= 10,
                      1800, 5)
    deployed.daemon.restart()
    topology.wait_for("the whole sweep", lambda: all(r.dagster_run.is_finished for r in sweep_runs()), 3600, 5)
    wall = time.monotonic() - started
    runs = sweep_runs()
    points = {}
    for record in runs:
        points.setdefault(record.dagster_run.tags["dagster/partition"], []).append(record.dagster_run.status)
    successes = sum(s == dg.DagsterRunStatus.SUCCESS for statuses in points.values() for s in statuses)
    peak = _peak_overlap(_training_runs(instance))
    print(f"\n30-point sweep: {successes} successes, {len(runs)} runs, peak concurrent trainings {peak}, "
          f"{wall:.0f} s wall ({wall / 30:.1f} s a point), daemon restarted after 10")
    assert len(points) == 30 and successes == 30
    assert all(len(statuses) == 1 for statuses in points.values()), points  # no point trained twice
    assert peak == 1


def test_a_changed_trusted_zone_is_rebuilt_by_the_sensor(deployment):
    instance, env = deployment["instance"], deployment["env"]
    _cli(env, "synth", "--recipes", "32", "--seed", "4")
    refresh = topology.wait_for("the sensor's refresh", lambda: instance.get_run_records(
        filters=dg.RunsFilter(job_name="refresh_from_trusted_zone")), 240, 2)
    assert len(refresh) == 1 and "images changed" in refresh[0].dagster_run.tags["clipfood/trusted_zone_change"]
    done = topology.wait_for("the refresh", lambda: _finished(instance, refresh[0].dagster_run.run_id), 900, 2)
    assert done.status == dg.DagsterRunStatus.SUCCESS, deployment["topology"].logs()


def test_no_secret_reaches_postgres(deployment):
    postgres, database = deployment["postgres"], deployment["database"]
    dump = subprocess.run(
        [str(postgres.bindir / "pg_dump"), "-h", "127.0.0.1", "-p", str(postgres.port), "-U", "dagster", database],
        env=dict(os.environ, PGPASSWORD=PASSWORD), capture_output=True, text=True, timeout=300, check=True).stdout
    assert "event_logs" in dump and len(dump) > 10_000
    for secret in (SECRET_KEY, PASSWORD):
        assert secret not in dump
    assert json.dumps(SECRET_KEY)[1:-1] not in dump
