"""A GraphQL client for a running `dagster dev`, and what tests wait for with it."""

import socket
import time

import requests

LOCATION = "clipfood_assets"
REPOSITORY = {"repositoryLocationName": LOCATION, "repositoryName": "__repository__"}

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


def wait_for(what: str, check, timeout_s: float, every_s: float = 1.0):
    """``check()``'s first truthy value, polled; TimeoutError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s:.0f} s for {what}")
        time.sleep(every_s)


def free_port() -> int:
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

    def wait_until_loaded(self, proc, log_path, timeout_s: float = 180) -> None:
        """Until the code location has loaded (raises with the log's tail if the process died)."""
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(log_path.read_text(errors="replace")[-3000:])
            try:
                data = self.query("{ workspaceOrError { ... on Workspace { locationEntries { name "
                                  "locationOrLoadError { __typename } } } } }")
                entries = data["workspaceOrError"]["locationEntries"]
                if entries and entries[0]["locationOrLoadError"]["__typename"] == "RepositoryLocation":
                    return
                if entries and entries[0]["locationOrLoadError"]["__typename"] == "PythonError":
                    raise RuntimeError(f"code location failed to load: {data}")
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("dagster dev did not come up")
            time.sleep(1)
