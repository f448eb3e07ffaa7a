"""`dagster dev` on 127.0.0.1 against a real S3 server, driven over its GraphQL API."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests

from clipfood_assets.cli import write_synthetic_zone
from clipfood_assets.paths import PROJECT_ROOT

LOCATION = "clipfood_assets"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Dagster:
    def __init__(self, url: str):
        self.url = url

    def query(self, query: str, variables: dict | None = None) -> dict:
        response = requests.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60)
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body
        return body["data"]


@pytest.fixture
def dagster_dev(s3_server, s3_lake, tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    port = _free_port()
    env = dict(os.environ, DAGSTER_HOME=str(home), **s3_server.env())
    env.pop("CLIPFOOD_LAKE_DIR", None)
    log = open(tmp_path / "dagster.log", "wb")
    # Its own session, so the whole process group (webserver, daemon, code server) is stopped by pid.
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagster", "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"),
         "-h", "127.0.0.1", "-p", str(port)],
        cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    client = Dagster(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError((tmp_path / "dagster.log").read_text()[-3000:])
            try:
                data = client.query("{ workspaceOrError { ... on Workspace { locationEntries { name "
                                    "locationOrLoadError { __typename } } } } }")
                entries = data["workspaceOrError"]["locationEntries"]
                if entries and entries[0]["locationOrLoadError"]["__typename"] == "RepositoryLocation":
                    break
                if entries and entries[0]["locationOrLoadError"]["__typename"] == "PythonError":
                    raise RuntimeError(f"code location failed to load: {data}")
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("dagster dev did not come up")
            time.sleep(1)
        yield client
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""

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
