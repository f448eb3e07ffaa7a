"""`dagster dev` on 127.0.0.1 against a real S3 server, driven over its GraphQL API."""

import os
import signal
import subprocess
import sys
import time

import pytest

from clipfood_assets.cli import write_synthetic_zone
from clipfood_assets_tests import REPO_ROOT
from clipfood_assets_tests.integration.dagster_client import LAUNCH, LOCATION, Dagster, free_port


@pytest.fixture
def dagster_dev(s3_server, s3_lake, tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    port = free_port()
    env = dict(os.environ, DAGSTER_HOME=str(home), **s3_server.env())
    env.pop("CLIPFOOD_LAKE_DIR", None)
    log = open(tmp_path / "dagster.log", "wb")
    # Its own session, so the whole process group (webserver, daemon, code server) is stopped by pid.
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagster", "dev", "-w", str(REPO_ROOT / "workspace.yaml"),
         "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    client = Dagster(f"http://127.0.0.1:{port}")
    try:
        client.wait_until_loaded(proc, tmp_path / "dagster.log")
        yield client
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()



RUN_STATUS = "query Status($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"

ASSET_METADATA = """
query Meta($key: AssetKeyInput!) {
  assetOrError(assetKey: $key) {
    ... on Asset {
      assetMaterializations(limit: 1) {
        metadataEntries {
          label
          ... on IntMetadataEntry { intValue }
          ... on PathMetadataEntry { path }
        }
      }
    }
  }
}
"""


@pytest.mark.slow
def test_launch_prepare_data_over_graphql_and_read_metadata(dagster_dev, s3_lake):
    write_synthetic_zone(s3_lake, n_recipes=12, seed=3)
    client = dagster_dev
    launched = client.query(LAUNCH, {"params": {
        "selector": {"repositoryLocationName": LOCATION, "repositoryName": "__repository__", "jobName": "prepare_data"},
        "runConfigData": {},
    }})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    deadline = time.monotonic() + 300
    status = None
    while time.monotonic() < deadline:
        status = client.query(RUN_STATUS, {"id": run_id})["runOrError"]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(2)
    assert status == "SUCCESS"

    entries = client.query(ASSET_METADATA, {"key": {"path": ["train_pairs_positive"]}})
    meta = {e["label"]: e for e in entries["assetOrError"]["assetMaterializations"][0]["metadataEntries"]}
    assert meta["uri"]["path"] == "s3://fine-tuning-zone/datasets/train_pairs_positive.csv"
    written = s3_lake.get_bytes("fine-tuning-zone", "datasets/train_pairs_positive.csv").decode().strip().splitlines()
    assert meta["rows"]["intValue"] == len(written) - 1 > 0
    assert s3_lake.exists("fine-tuning-zone", "datasets/train_pairs_augmented_with_negatives.csv")
