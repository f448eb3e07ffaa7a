"""The Dagster UI as a newcomer meets it: Playwright driving Debian's Chromium against `clipfood dev`.

A small demo lake is built with the CLI (base model, synthetic zone, `clipfood materialize`), then
`clipfood dev` starts on it. The test waits past the sensors' first ticks (no failed run may
appear by itself), adds an experiment run from the asset page the way the README says, waits for
its M1 numbers and for the report to follow by itself, checks that every figure renders, and stops
`clipfood dev` with SIGTERM (its whole process group must be gone within 10 s).

Set CLIPFOOD_SCREENSHOT_DIR=docs to refresh the README's screenshots.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clipfood_assets.cli import process_group_alive
from clipfood_assets_tests import REPO_ROOT
from clipfood_assets_tests.integration.dagster_client import REPOSITORY, Dagster, free_port, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
RUN_KEY = "ui-run"
# The flags a headless Chromium needs on a machine with a closed network (and as root in CI).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (.ci/run installs Debian's chromium)"),
]

SENSOR_TICKS = """
query Ticks($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    ... on Sensor { sensorState { ticks(limit: 10) { status skipReason runIds error { message } } } }
  }
}
"""
RUNS = """
query Runs($filter: RunsFilter) {
  runsOrError(filter: $filter) { ... on Runs { results { runId status jobName tags { key value } } } }
}
"""
MATERIALIZATIONS = """
query Mats($key: AssetKeyInput!, $partitions: [String!]) {
  assetOrError(assetKey: $key) {
    ... on Asset { assetMaterializations(partitions: $partitions, limit: 1) {
      timestamp metadataEntries { label ... on IntMetadataEntry { intValue } } } }
  }
}
"""


def _cli(env: dict, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "clipfood_assets.cli", *args], env=env, cwd=REPO_ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)


@pytest.fixture(scope="module")
def clipfood_dev(tmp_path_factory):
    """`clipfood dev` on a freshly built small demo lake, in a state folder of its own."""
    home = tmp_path_factory.mktemp("clipfood_home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MINIO_", "DAGSTER_", "CLIPFOOD_"))}
    env.update(CLIPFOOD_HOME=str(home), CLIPFOOD_CACHE_DIR=str(home / "cache"), CLIPFOOD_TORCH_THREADS="1")
    _cli(env, "base-model", "--out", str(home / "base-model"), "--pretrain-steps", "30")
    _cli(env, "synth", "--recipes", "30", "--seed", "3")
    _cli(env, "materialize")
    port = free_port()
    log_path = home / "dev.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "clipfood_assets.cli", "dev", "--port", str(port)], env=env,
                            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    client = Dagster(f"http://127.0.0.1:{port}")
    try:
        client.wait_until_loaded(proc, log_path)
        yield client, proc, log_path
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _ticks(client: Dagster, sensor: str) -> list[dict]:
    data = client.query(SENSOR_TICKS, {"selector": {**REPOSITORY, "sensorName": sensor}})
    return data["sensorOrError"]["sensorState"]["ticks"]


def _failed_runs(client: Dagster) -> list[str]:
    runs = client.query(RUNS, {"filter": {"statuses": ["FAILURE"]}})["runsOrError"]["results"]
    return [f"{r['jobName']} {r['runId'][:8]}" for r in runs]


def _latest(client: Dagster, asset: str, partition: str | None = None) -> dict | None:
    data = client.query(MATERIALIZATIONS, {"key": {"path": [asset]},
                                           "partitions": [partition] if partition else None})
    events = data["assetOrError"]["assetMaterializations"]
    return events[0] if events else None


def _dismiss_newcomer_dialog(page) -> None:
    """Dagster greets a new browser with a community dialog; a newcomer clicks Skip."""
    skip = page.get_by_role("button", name="Skip")
    try:
        skip.wait_for(timeout=3000)
        skip.click()
    except Exception:  # noqa: BLE001 - Playwright's TimeoutError: no dialog this time
        pass


def _figures_in_markdown(page, label: str) -> list[tuple[str, int]]:
    """Open the metadata entry's markdown (the UI's "Show Markdown") and read every image's size."""
    row = page.locator("tr", has_text=label).filter(has=page.get_by_text("Show Markdown")).first
    row.get_by_text("Show Markdown").click()
    dialog = page.locator("[role=dialog]").last
    dialog.locator("img").first.wait_for(timeout=20000)
    images = dialog.locator("img")
    wait_for("figures to load", lambda: images.evaluate_all("els => els.every(e => e.complete)"), 20, 0.5)
    images.first.scroll_into_view_if_needed()
    page.wait_for_timeout(1000)  # the dialog fades in
    return images.evaluate_all("els => els.map(e => [e.alt, e.naturalWidth])")


def _shoot(page, name: str) -> None:
    folder = os.environ.get("CLIPFOOD_SCREENSHOT_DIR")
    if folder:
        target = Path(folder) if Path(folder).is_absolute() else REPO_ROOT / folder
        target.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(target / name))


def walk_the_readme(client: Dagster, browser, runs_after: int, run_key: str = RUN_KEY) -> None:
    """Steps 1-4 of the README's walk-through, in the browser, against any running deployment
    (`clipfood dev` here, the compose topology in deployment/test_topology.py)."""
    url = client.url

    # 1. Left alone, the instance launches nothing that fails: the sensor knows the zone it built from.
    wait_for("the trusted-zone sensor's first tick", lambda: [
        t for t in _ticks(client, "trusted_zone_sensor") if t["status"] != "STARTED"], 120)
    first = [t for t in _ticks(client, "trusted_zone_sensor") if t["status"] != "STARTED"][-1]
    assert first["status"] == "SKIPPED" and "built from this trusted zone" in first["skipReason"], first
    wait_for("the automation sensor's first tick", lambda: _ticks(client, "automation_condition_sensor"), 120)
    assert _failed_runs(client) == []
    report_before = _latest(client, "comparison_report")
    assert report_before is not None

    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(f"{url}/asset-groups", wait_until="networkidle")
    _dismiss_newcomer_dialog(page)

    # 2. Add a run the way the README says: Assets -> lora_adapters -> Materialize… -> Add a partition.
    page.goto(f"{url}/assets/lora_adapters", wait_until="networkidle")
    _dismiss_newcomer_dialog(page)
    page.get_by_role("button", name="Materialize…").click()
    page.get_by_text("Add a partition").click()
    page.locator("[role=dialog]", has_text="Partition name").locator("input").fill(run_key)
    page.get_by_role("button", name="Save").click()
    page.get_by_role("button", name="Launch 1 run").click()
    page.get_by_text("Launched run").wait_for(timeout=30000)

    # 3. Its M1 numbers follow by themselves, and the report follows them.
    results = wait_for("lora_results of the new run", lambda: _latest(client, "lora_results", run_key), 300)
    report = wait_for("the report to rebuild with the new run", lambda: (
        (latest := _latest(client, "comparison_report"))
        and float(latest["timestamp"]) > float(results["timestamp"]) and latest), 180)
    runs_entry = {e["label"]: e.get("intValue") for e in report["metadataEntries"]}
    assert runs_entry["runs"] == runs_after
    assert _failed_runs(client) == []

    # 4. Every figure renders in the browser: on the report's page and on the run's own page.
    page.goto(f"{url}/assets/comparison_report", wait_until="networkidle")
    figures = _figures_in_markdown(page, "report")
    assert len(figures) == 5 and all(width > 0 for _, width in figures), figures
    _shoot(page, "ui_report_figures.png")
    page.keyboard.press("Escape")

    page.goto(f"{url}/assets/lora_results?partition={run_key}", wait_until="networkidle")
    run_figures = _figures_in_markdown(page, "report")
    assert len(run_figures) == 5 and all(width > 0 for _, width in run_figures), run_figures

    page.goto(f"{url}/assets/lora_adapters?partition={run_key}", wait_until="networkidle")
    curve = _figures_in_markdown(page, "learning curve")
    assert len(curve) == 1 and curve[0][1] > 0

    # Lineage, the way the README shows it: the report's upstream graph, every zone expanded.
    page.goto(f"{url}/assets/comparison_report?view=lineage&lineageScope=upstream&lineageDepth=6",
              wait_until="networkidle")
    page.get_by_text("trusted_recipes").first.wait_for(timeout=20000)
    page.get_by_text("lora_results").first.wait_for(timeout=20000)
    _shoot(page, "ui_asset_graph.png")
    page.close()


def test_a_newcomer_adds_a_run_in_the_ui_and_the_report_follows(clipfood_dev, browser):
    client, proc, log_path = clipfood_dev
    walk_the_readme(client, browser, runs_after=1)

    # 5. SIGTERM (what Ctrl-C does too) stops the webserver, daemon and code server together.
    groups = {proc.pid, *_children(proc.pid)}  # `dagster dev` runs in a process group of its own
    os.kill(proc.pid, signal.SIGTERM)
    started = time.monotonic()
    wait_for("clipfood dev to exit", lambda: proc.poll() is not None, 15, 0.2)
    wait_for("every process of clipfood dev to stop", lambda: not any(process_group_alive(g) for g in groups), 15, 0.2)
    assert time.monotonic() - started < 10, log_path.read_text(errors="replace")[-2000:]


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]

