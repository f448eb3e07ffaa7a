"""The `clipfood` command: synthetic trusted zone, offline base model, materialize, demo, UI, search."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path


from clipfood_assets.paths import DEMO_RUN_CONFIG, EXPERIMENT_CONFIG, state_dir

log = logging.getLogger("clipfood")

DEFAULT_BASE_MODEL_DIR = state_dir() / "base-model"

_WRITTEN_BY_US = "# Written by `clipfood`"
# docker/dagster.yaml's behaviour on one machine: runs are processes of the code server (checked by
# pid, so a killed worker is failed and its slot freed), one training at a time, crashed workers retried.
DAGSTER_YAML = f"""\
{_WRITTEN_BY_US} (rewritten by it while this line is here): local run storage, runs as processes.
run_launcher:
  module: clipfood_assets.defs.run_launcher
  class: ProcessRunLauncher
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  poll_interval_seconds: 15
  max_resume_run_attempts: 0
  free_slots_after_run_end_seconds: 30
run_retries:
  enabled: true
  max_retries: 2
  retry_on_asset_or_op_failure: false
concurrency:
  pools:
    granularity: run
    default_limit: 1
telemetry:
  enabled: false
"""
# `clipfood dev`'s workspace: the installed package's definitions, run from the working directory.
WORKSPACE_YAML = """\
# Written by `clipfood dev`.
load_from:
  - python_module:
      module_name: clipfood_assets.definitions
      location_name: clipfood_assets
      working_directory: {cwd}
"""


def open_lake(lake_dir: str | None = None):
    """The lake the environment names; ``lake_dir`` replaces CLIPFOOD_LAKE_DIR (the embedded lake's folder)."""
    from clipfood_assets.lake import lake_from_settings
    from clipfood_assets.settings import ClipfoodSettings

    settings = ClipfoodSettings.from_env()
    if lake_dir:
        settings = settings.model_copy(update={"lake_dir": Path(lake_dir)})
    return lake_from_settings(settings)


class CliError(Exception):
    """A one-line error for the user; no traceback."""


def dagster_home() -> Path:
    from clipfood_assets.settings import DAGSTER_HOME_ENV, ClipfoodSettings

    home = ClipfoodSettings.from_env().dagster_home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    instance_file = home / "dagster.yaml"
    current = instance_file.read_text() if instance_file.exists() else None
    # A file a person wrote is theirs; ours follows the current version of the platform.
    if current is None or (current.startswith(_WRITTEN_BY_US) and current != DAGSTER_YAML):
        instance_file.write_text(DAGSTER_YAML)
    os.environ[DAGSTER_HOME_ENV] = str(home)
    return home


# --- synth -------------------------------------------------------------------------------------


def write_synthetic_zone(lake, n_recipes: int, seed: int, progress=None, zone_format: str = "adsdb") -> dict:
    """Write a synthetic trusted zone; ``zone_format`` "adsdb" (the real zone's shape) or "simple"."""
    from clipfood_assets.lake.layout import RECIPES_KEY, TRUSTED_ZONE
    from clipfood_assets.synthetic import synthetic_trusted_zone

    recipes_jsonl, images = synthetic_trusted_zone(n_recipes, seed, zone_format=zone_format)
    n_images = 0
    for key, data in images:
        lake.put_bytes(TRUSTED_ZONE, key, data, "image/jpeg")
        n_images += 1
        if progress and n_images % 100 == 0:
            progress(n_images)
    # recipes.jsonl last: a reader that sees it sees every image it names.
    lake.put_bytes(TRUSTED_ZONE, RECIPES_KEY, recipes_jsonl, "application/x-ndjson")
    return {"recipes": n_recipes, "images": n_images, "uri": lake.uri(TRUSTED_ZONE)}


def write_scale_zone(lake, n_recipes: int, photos_per_recipe: int, seed: int, workers: int = 8,
                     progress=None) -> dict:
    """Write a trusted zone at scale (``synthetic.scale_trusted_zone``): photos ``workers`` at a time, a
    thousand in flight at most, then recipes.jsonl streamed from a temporary file (memory stays flat)."""
    import tempfile
    from concurrent.futures import ThreadPoolExecutor
    from itertools import islice

    from clipfood_assets.lake.layout import RECIPES_KEY, TRUSTED_ZONE
    from clipfood_assets.synthetic import scale_trusted_zone

    lines, images = scale_trusted_zone(n_recipes, photos_per_recipe, seed)
    n_images = 0
    with ThreadPoolExecutor(workers) as pool:
        while batch := list(islice(images, 1000)):
            for _ in pool.map(lambda item: lake.put_bytes(TRUSTED_ZONE, *item, "image/jpeg"), batch):
                pass  # consumed: a failed write raises here
            n_images += len(batch)
            if progress:
                progress(n_images)
    with tempfile.NamedTemporaryFile(prefix="clipfood-recipes-", suffix=".jsonl") as tmp:
        tmp.writelines(lines)
        tmp.flush()
        # recipes.jsonl last: a reader that sees it sees every image it names.
        lake.put_file(TRUSTED_ZONE, RECIPES_KEY, Path(tmp.name), "application/x-ndjson")
    return {"recipes": n_recipes, "images": n_images, "uri": lake.uri(TRUSTED_ZONE)}


def cmd_synth(args) -> None:
    from clipfood_assets.lake import lake_from_env

    if args.recipes < 2:
        raise CliError("--recipes must be at least 2 (the split needs a train and a test recipe)")
    if args.photos < 1 or args.workers < 1:
        raise CliError("--photos and --workers must be at least 1")
    lake = lake_from_env()
    start = time.perf_counter()
    if args.scale:
        summary = write_scale_zone(lake, args.recipes, args.photos, args.seed, args.workers,
                                   lambda n: log.info("wrote %d images", n))
    else:
        summary = write_synthetic_zone(lake, args.recipes, args.seed, lambda n: log.info("wrote %d images", n),
                                       zone_format=args.format)
    print(f"synthetic trusted zone: {summary['recipes']} recipes, {summary['images']} images -> {summary['uri']} "
          f"({time.perf_counter() - start:.1f} s)")


# --- base-model ----------------------------------------------------------------------------------


def cmd_base_model(args) -> None:
    from clipfood_assets.deployment import BASE_MODEL_ENV, platform_base_model, record_base_model
    from clipfood_assets.settings import ClipfoodSettings

    if args.show:
        print(platform_base_model().describe())
        return
    if args.use:
        local = Path(args.use).expanduser()
        if (local.exists() or args.use.startswith((".", "/", "~"))) and not (local / "config.json").is_file():
            raise CliError(f"--use {args.use}: no Hugging Face model folder there (config.json missing)")
        name = args.use
    else:
        from clipfood_assets.modeling.base_model import DEFAULT_PRETRAIN_STEPS, build_base_model

        out = Path(args.out).resolve()
        steps = DEFAULT_PRETRAIN_STEPS if args.pretrain_steps is None else args.pretrain_steps
        if steps < 0:
            raise CliError("--pretrain-steps must be >= 0")
        start = time.perf_counter()
        build_base_model(out, seed=args.seed, pretrain_steps=steps)
        print(f"offline base model -> {out} ({time.perf_counter() - start:.0f} s)")
        name = str(out)
    where = record_base_model(name)
    print(f"platform base model: {name} (recorded in {where}; the CLI, the UI and every run use it)")
    overriding = ClipfoodSettings.from_env().base_model
    if overriding:
        print(f"note: ${BASE_MODEL_ENV}={overriding} is set and overrides it in this environment")


# --- materialize ---------------------------------------------------------------------------------


PID_TAG = "clipfood/pid"
HOST_TAG = "clipfood/host"


def reap_dead_runs(instance) -> list[str]:
    """Mark runs whose `clipfood` process died (killed, machine crash) as failed.

    A dead run still holds its `gpu` pool slot; without this a re-run after a kill would
    wait for that slot forever. Only runs started by this host's CLI are judged.
    """
    import socket

    import dagster as dg

    from clipfood_assets.defs.run_launcher import process_alive

    reaped = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
        pid = run.tags.get(PID_TAG)
        if run.tags.get(HOST_TAG) == socket.gethostname() and pid and not process_alive(int(pid)):
            instance.report_run_failed(run, message=f"its process {pid} is gone (killed or crashed)")
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            reaped.append(run.run_id)
    return reaped


def failure_reason(error) -> str:
    """The product's own message first (the first error that is not Dagster's wrapper), then its cause."""
    chain = []
    while error is not None:
        chain.append(error)
        error = error.cause
    # Dagster's wrappers: the step error, and the retry policy's "Exceeded max_retries".
    own = [e for e in chain if not (e.cls_name or "").startswith(("Dagster", "RetryRequested"))] or chain
    reason = _message(own[0])
    if len(own) > 1:
        reason += f" (cause: {_message(own[-1]).splitlines()[0][:300]})"
    return reason


def _message(error) -> str:
    """The error's message without the 'ClassName: ' that Dagster puts in front."""
    text = error.message.strip()
    if not error.cls_name:
        return text
    # Dagster writes "Failure: …" or "dagster._core.definitions.events.Failure: …".
    return re.sub(rf"^(?:[\w.]+\.)?{re.escape(error.cls_name)}: ", "", text)


def _run_job(defs, instance, name: str, ops: dict | None = None, **kwargs) -> None:
    import socket

    job = defs.resolve_job_def(name)
    log.info("running job %s %s", name, kwargs.get("partition_key") or "")
    tags = {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}
    # Dagster's step events are DEBUG; the assets' own progress is INFO.
    level = "DEBUG" if log.isEnabledFor(logging.DEBUG) else "INFO"
    run_config = {"loggers": {"console": {"config": {"log_level": level}}}}
    if ops:
        run_config["ops"] = ops
    result = job.execute_in_process(instance=instance, raise_on_error=False, tags=tags, run_config=run_config,
                                    **kwargs)
    if not result.success:
        # The step's own error says what went wrong; the run failure only says that it did.
        steps = [e for e in result.all_events if e.is_step_failure and e.step_failure_data.error]
        reason = "see the Dagster logs"
        if steps:
            reason = failure_reason(steps[0].step_failure_data.error)
        where = f" in {steps[0].step_key}" if steps else ""
        raise CliError(f"job {name} failed{where}: {reason}")


def materialize(run_key: str | None = None, run_config: Path | None = None, base_model: str = "", instance=None,
                lake_dir: str | None = None, force: bool = False, runs: dict[str, dict] | None = None) -> dict:
    """Materialize the whole asset graph; with a run key (or ``runs``: key -> overrides, a sweep's
    points), register the runs and train and evaluate each, one after another.

    The data zone and the baseline are rebuilt only when the trusted zone changed since they
    were built (or with force), so runs launched side by side share one baseline.
    """
    import dagster as dg

    from clipfood_assets.definitions import build_definitions
    from clipfood_assets.defs.model_zone.partitions import experiment_runs
    from clipfood_assets.defs.resources import ExperimentSettings
    from clipfood_assets.defs.trusted_zone.sensors import record_observations
    from clipfood_assets.lake.layout import FINE_TUNING_ZONE, validate_run_key
    from clipfood_assets.lake.provenance import zone_built_from
    from clipfood_assets.modeling.config import read_config_mapping
    from clipfood_assets.modeling.runs import register_run, resolve_run_config

    base_model = ExperimentSettings(base_model=base_model).resolve_base_model()
    runs = dict(runs or {})
    if run_key is not None:
        runs[run_key] = read_config_mapping(run_config) if run_config else {}
    for key, overrides in runs.items():
        # A bad key or config fails here, before anything is written or run.
        validate_run_key(key)
        resolve_run_config(EXPERIMENT_CONFIG, overrides, {}, base_model)
    if instance is None:
        dagster_home()
        instance = dg.DagsterInstance.get()
    for run_id in reap_dead_runs(instance):
        log.warning("run %s was left running by a dead process; marked failed", run_id)
    defs = build_definitions(base_model=base_model, lake_dir=lake_dir)
    lake = open_lake(lake_dir)
    for key, overrides in runs.items():
        register_run(lake, key, EXPERIMENT_CONFIG, overrides, base_model)
    instance.add_dynamic_partitions(experiment_runs.name, list(runs))
    # Observed first: what is built next records these versions and is not shown as stale.
    zone = record_observations(instance, lake)
    if force or zone_built_from(lake) != zone.version:
        from clipfood_assets.defs.data_zone.assets import accept_degenerate_refresh_config

        # --force also lets a refresh through the guard that stops degenerate ones (pairs to 0...).
        _run_job(defs, instance, "refresh_from_trusted_zone", ops=accept_degenerate_refresh_config() if force else None)
    else:
        log.info("data zone and baseline are up to date with the trusted zone; not rebuilt")
    for key in runs:
        _run_job(defs, instance, "train_and_evaluate_run", partition_key=key)
    _run_job(defs, instance, "rebuild_report")
    return {"fine_tuning_zone": lake.uri(FINE_TUNING_ZONE)}


def cmd_materialize(args) -> None:
    if args.config and not args.run:
        raise CliError("--config needs --run KEY (the experiment run it configures)")
    if args.config and not Path(args.config).is_file():
        raise CliError(f"no such config file: {args.config}")
    out = materialize(args.run, Path(args.config) if args.config else None, base_model=args.base_model or "",
                      force=args.force)
    print(f"materialized; results in {out['fine_tuning_zone']}")


# --- sweep ---------------------------------------------------------------------------------------


def cmd_sweep(args) -> None:
    from clipfood_assets.defs.resources import ExperimentSettings
    from clipfood_assets.modeling.sweep import load_sweep

    path = Path(args.file)
    if not path.is_file():
        raise CliError(f"no such sweep file: {path}")
    base_model = ExperimentSettings(base_model=args.base_model or "").resolve_base_model()
    sweep = load_sweep(path, EXPERIMENT_CONFIG, base_model)  # every point validated before anything runs
    print(f"sweep {sweep.name}: {len(sweep.points)} runs: {', '.join(sweep.run_keys)}")
    from clipfood_assets.lake import lake_from_env
    from clipfood_assets.lake.layout import FINE_TUNING_ZONE, sweep_key

    # Stored in the lake either way (the report's sweep table reads it from there); a sweep run here
    # goes where the sweep sensor of a running `clipfood dev` does not launch it a second time.
    lake = lake_from_env()
    lake.put_bytes(FINE_TUNING_ZONE, sweep_key(sweep.name, submitted=args.submit), path.read_bytes(),
                   "application/yaml")
    if args.submit:
        print(f"submitted to {lake.uri(FINE_TUNING_ZONE, sweep_key(sweep.name))}: the sweep_sensor of a running "
              "`clipfood dev` registers the runs and launches them (one training at a time, pool gpu)")
        return
    out = materialize(base_model=base_model, force=args.force,
                      runs={point.run_key: point.overrides for point in sweep.points})
    print(f"sweep {sweep.name} materialized; report in {out['fine_tuning_zone']}")


# --- demo ----------------------------------------------------------------------------------------


def cmd_demo(args) -> None:
    from clipfood_assets.lake import lake_from_env
    from clipfood_assets.lake.artifacts import read_bundle
    from clipfood_assets.lake.layout import FINE_TUNING_ZONE, REPORT_PREFIX, run_prefix

    start = time.perf_counter()
    lake = lake_from_env()
    summary = write_synthetic_zone(lake, args.recipes, args.seed, zone_format="adsdb")
    print(f"[1/3] synthetic trusted zone: {summary['recipes']} recipes, {summary['images']} images")
    base = Path(args.base_model_dir).resolve()
    if not (base / "config.json").exists():
        from clipfood_assets.modeling.base_model import DEFAULT_PRETRAIN_STEPS, build_base_model

        build_base_model(base, seed=0, pretrain_steps=DEFAULT_PRETRAIN_STEPS)
    from clipfood_assets.deployment import record_base_model

    where = record_base_model(str(base))
    print(f"[2/3] offline base model: {base} (the platform's base model, recorded in {where})")
    materialize(args.run, DEMO_RUN_CONFIG, base_model=str(base))
    print(f"[3/3] every asset materialized ({time.perf_counter() - start:.0f} s)")
    results = read_bundle(lake, FINE_TUNING_ZONE, run_prefix(args.run), "lora_results").read("results_lora.json")
    comparison = results["comparison_to_baseline"]["text_to_image"]["R@1"]
    print(
        f"text->image R@1 on unseen recipes: M0 {comparison['m0']:.3f} -> M1 {comparison['m1']:.3f} "
        f"(diff {comparison['diff']:+.3f}, 95% CI [{comparison['ci'][0]:+.3f}, {comparison['ci'][1]:+.3f}])"
    )
    print(f"results: {lake.uri(FINE_TUNING_ZONE, run_prefix(args.run))}")
    print(f"report:  {lake.uri(FINE_TUNING_ZONE, REPORT_PREFIX + 'report.md')}")
    print("UI:      clipfood dev   (then open http://127.0.0.1:3000)")
    # Exploitation zone: the report's run promoted (when its H1 holds), every photo and title in Chroma.
    print_exploitation(promote_and_index(base_model=str(base)))


# --- dev -----------------------------------------------------------------------------------------


DEV_STOP_GRACE_S = 8


def stop_process_group(proc: subprocess.Popen, grace_s: float = DEV_STOP_GRACE_S) -> int:
    """SIGTERM to the whole group (webserver, daemon, code server, run workers); SIGKILL what is
    left after ``grace_s``. Returns the leader's exit code."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return proc.wait()
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and process_group_alive(proc.pid):
        proc.poll()  # reap the leader, or its zombie keeps the group alive
        time.sleep(0.2)
    if process_group_alive(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()


def process_group_alive(pgid: int) -> bool:
    """Whether any process of the group ``pgid`` still exists."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def cmd_dev(args) -> None:
    from clipfood_assets.deployment import platform_base_model

    import dagster as dg

    from clipfood_assets.defs.meta import GPU_POOL, GPU_POOL_LIMIT

    home = dagster_home()
    with dg.DagsterInstance.get() as instance:  # as docker-compose.yml's daemon does before it starts
        instance.event_log_storage.set_concurrency_slots(GPU_POOL, GPU_POOL_LIMIT)
    workspace = home / "workspace.yaml"
    workspace.write_text(WORKSPACE_YAML.format(cwd=json.dumps(str(Path.cwd()))))
    cmd = [sys.executable, "-m", "dagster", "dev", "-w", str(workspace), "-h", args.host, "-p", str(args.port)]
    base = platform_base_model()
    print(f"Dagster UI on http://{args.host}:{args.port} (DAGSTER_HOME={home})\nbase model: {base.describe()}",
          flush=True)
    # Its own process group, so that Ctrl-C / SIGTERM here stops every process it starts, at once.
    proc = subprocess.Popen(cmd, start_new_session=True)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        print("stopping the Dagster UI, daemon and code server…", flush=True)
        code = stop_process_group(proc)
    raise SystemExit(code if code >= 0 else 0)


# --- search --------------------------------------------------------------------------------------


def cmd_search(args) -> None:
    from clipfood_assets.exploitation.search import checked_k, checked_query, read_query_image
    from clipfood_assets.lake import lake_from_env

    if not args.query and not args.image:
        raise CliError("give a text query or --image PATH")
    # Checked before anything is opened; a ValueError is one line and exit 2.
    image = read_query_image(args.image) if args.image else None
    query = checked_query(args.query) if image is None else None
    k = checked_k(args.k)
    if args.run:
        # One run's own model, searching the fine-tuning zone's pairs (embedded on the fly).
        from clipfood_assets.modeling.search import open_run_searcher

        searcher = open_run_searcher(lake_from_env(), args.run)
        if image is not None:
            hits = searcher.captions_for_image(image, k=k)
            for i, hit in enumerate(hits, 1):
                print(f"{i}. {hit['score']:.3f}  {hit['caption']}  (recipe {hit['recipe_id']})")
        else:
            hits = searcher.images_for_text(query, k=k)
            for i, hit in enumerate(hits, 1):
                print(f"{i}. {hit['score']:.3f}  {hit['image_key']}  {hit['caption']}")
        return
    from clipfood_assets.exploitation.index import ExploitationIndex, IndexUnavailable
    from clipfood_assets.exploitation.search import IndexSearcher

    try:
        index = ExploitationIndex.open(create=False)
        searcher = IndexSearcher(index, lake_from_env())
    except IndexUnavailable as exc:
        raise CliError(f"{exc} (or search one run's model over its pairs with --run KEY)") from None
    print(f"from {index.location.describe()}, made by the {searcher.model_info.describe()}", file=sys.stderr)
    try:
        hits = searcher.titles_for_image(image, k=k) if image is not None else searcher.images_for_text(query, k=k)
    except IndexUnavailable as exc:  # the server stopped answering, or the index went away meanwhile
        raise CliError(str(exc)) from None
    for i, hit in enumerate(hits, 1):
        print(f"{i}. {hit.score:.3f}  {hit.title}  (recipe {hit.recipe_id})" if image is not None
              else f"{i}. {hit.score:.3f}  {hit.object_key}  {hit.title}")


# --- promote -------------------------------------------------------------------------------------


def promote_and_index(run_key: str | None = None, allow_unsupported: bool = False, base_model: str = "",
                      instance=None, lake_dir: str | None = None) -> dict:
    """Run `promote_model` (the report's run, or ``run_key``), then `index_exploitation_zone`.

    Returns ``{"promotion": Promotion | None, "skipped": reason | None, "index": pointer metadata}``.
    A refused pinned run raises CliError (nothing is indexed then); a run the rule refuses is skipped
    and the zone is indexed with the model already current (the base model if none).
    """
    import dagster as dg

    from clipfood_assets.definitions import build_definitions
    from clipfood_assets.defs.resources import ExperimentSettings
    from clipfood_assets.exploitation.index import ExploitationIndex
    from clipfood_assets.exploitation.promotion import current_promotion

    base_model = ExperimentSettings(base_model=base_model).resolve_base_model()
    if instance is None:
        dagster_home()
        instance = dg.DagsterInstance.get()
    defs = build_definitions(base_model=base_model, lake_dir=lake_dir)
    key = dg.AssetKey("promoted_model")

    def latest() -> int | None:
        records = instance.fetch_materializations(key, limit=1).records
        return records[0].storage_id if records else None

    before = latest()
    config = {"run_key": run_key or "", "allow_unsupported": bool(allow_unsupported)}
    _run_job(defs, instance, "promote_model", ops={"promoted_model": {"config": config}})
    skipped = None
    if latest() in (None, before):
        observed = instance.fetch_observations(key, limit=1).records
        meta = observed[0].asset_observation.metadata if observed else {}
        skipped = str(meta["skipped"].value) if "skipped" in meta else "promoted_model did not materialize"
    _run_job(defs, instance, "index_exploitation_zone")
    lake = open_lake(lake_dir)
    promotion = None
    if skipped is None:
        from dataclasses import replace

        reused = instance.fetch_materializations(key, limit=1).records[0].asset_materialization.metadata.get("reused")
        promotion = replace(current_promotion(lake), reused=bool(reused.value) if reused else False)
    index = ExploitationIndex.open(create=False)
    return {"promotion": promotion, "skipped": skipped,
            "index": index.pointer() or {}, "location": index.location.describe()}


def print_exploitation(outcome: dict) -> None:
    """What promote_and_index did, for a person: the promotion (or why none), the index, how to search."""
    promotion = outcome["promotion"]
    if promotion is not None:
        print(f"promoted: run {promotion.run_key} ({promotion.promotion_id}{', unchanged' if promotion.reused else ''})"
              f" -> fine-tuning-zone/{promotion.prefix}")
        for warning in promotion.warnings:
            print(f"  warning: {warning}")
    else:
        print(f"not promoted: {outcome['skipped']}")
    index = outcome["index"]
    made_by = (f"promoted model of run {index.get('model_run_key')}" if index.get("model_kind") == "promoted"
               else f"base model {index.get('model_name')}")
    print(f"index:   {index.get('n_images', 0)} photos, {index.get('n_titles', 0)} titles in "
          f"{outcome['location']} (exploitation_images, exploitation_multimodal; made by the {made_by})")
    print('search:  clipfood search "chocolate cake"   |   clipfood search --image PHOTO.jpg')


def cmd_promote(args) -> None:
    outcome = promote_and_index(args.run, args.allow_unsupported)
    print_exploitation(outcome)
    if outcome["skipped"] is not None:
        raise CliError(f"nothing promoted: {outcome['skipped']}")


def build_parser() -> argparse.ArgumentParser:
    from importlib.metadata import version

    parser = argparse.ArgumentParser(prog="clipfood", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('clipfood_assets')}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write a synthetic trusted zone into the configured lake")
    p.add_argument("--recipes", type=int, default=300, help="number of recipes (each with 1-4 photos; default 300)")
    p.add_argument("--seed", type=int, default=42, help="random seed of the zone (default 42)")
    p.add_argument("--format", choices=("adsdb", "simple"), default="adsdb",
                   help="adsdb: the real trusted zone's shape (image$<project>$<time>$<md5>__<id>_<n>.jpg from 0, "
                        "raw/clean text fields); simple: <slug>__<id>_<n>.jpg from 1")
    p.add_argument("--scale", action="store_true",
                   help="a zone at scale, fast: --photos photos per recipe, a few 64 px pictures reused under "
                        "distinct ADSDB keys, each with its own ETag (for listing, copy and sensor benchmarks)")
    p.add_argument("--photos", type=int, default=4, help="photos per recipe with --scale (default 4)")
    p.add_argument("--workers", type=int, default=8, help="parallel writes with --scale (default 8)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("base-model", help="build the small offline CLIP and make it the platform's base model; "
                       "--use NAME records a hub id or folder instead; --show prints the one in use")
    p.add_argument("--out", default=str(DEFAULT_BASE_MODEL_DIR),
                   help="folder to save the model in (Hugging Face format; default <state folder>/base-model)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the model and its pre-training (default 0)")
    p.add_argument("--pretrain-steps", type=int, default=None,
                   help="brief pre-training steps on generic synthetic pairs (default: the builder's)")
    p.add_argument("--use", default=None, metavar="NAME",
                   help="record a hub id (openai/clip-vit-base-patch32) or a local model folder; builds nothing")
    p.add_argument("--show", action="store_true", help="print the platform's base model and where it comes from")
    p.set_defaults(func=cmd_base_model)

    p = sub.add_parser("materialize", help="materialize every asset; --run KEY adds and trains an experiment run")
    p.add_argument("--run", default=None, help="experiment-run key (a partition)")
    p.add_argument("--config", default=None, help="YAML overrides of configs/experiment_config.yaml for the run")
    p.add_argument("--base-model", default=None,
                   help="hub id or local folder for this invocation (default: the platform's, see `base-model --show`)")
    p.add_argument("--force", action="store_true",
                   help="rebuild the data zone and baseline even if up to date, and accept a refresh the guard "
                        "stops (pairs dropping to 0 or by more than the allowed fraction)")
    p.set_defaults(func=cmd_materialize)

    p = sub.add_parser("sweep", help="run every point of a sweep file (a base config and a grid or list of runs)")
    p.add_argument("file", help="sweep YAML: name, base, grid (config key -> values) or runs (list of overrides)")
    p.add_argument("--submit", action="store_true",
                   help="hand the sweep to a running `clipfood dev` (its sweep_sensor) instead of running it here")
    p.add_argument("--base-model", default=None, help="hub id or local folder for this invocation")
    p.add_argument("--force", action="store_true", help="rebuild the data zone and baseline even if up to date")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("demo", help="synth + base-model + materialize with one run, on the configured lake")
    # 500 recipes hold out 100 for testing: enough queries for a confidence interval that means something.
    p.add_argument("--recipes", type=int, default=500, help="recipes in the synthetic zone (default 500)")
    p.add_argument("--seed", type=int, default=42, help="random seed of the zone (default 42)")
    p.add_argument("--run", default="demo", help="key of the experiment run it trains (default demo)")
    p.add_argument("--base-model-dir", default=str(DEFAULT_BASE_MODEL_DIR),
                   help="where the offline base model is built (default <state folder>/base-model)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("dev", help="start the Dagster UI on this project")
    p.add_argument("--host", default="127.0.0.1", help="address the UI listens on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=3000, help="port of the UI (default 3000)")
    p.set_defaults(func=cmd_dev)

    p = sub.add_parser("search", help="photos for a text (or recipe titles for a photo) from the exploitation "
                       "index; --run KEY searches with that run's own model instead")
    p.add_argument("query", nargs="?", default=None, help="the text to search photos for (omit with --image)")
    p.add_argument("--run", default=None,
                   help="search the fine-tuning zone's pairs with this run's model (embedded on the fly) instead "
                        "of the exploitation index")
    p.add_argument("--k", type=int, default=5, help="how many results (1-1000, default 5)")
    p.add_argument("--image", default=None, help="a photo (file) to search recipe titles for, instead of a text")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("promote", help="promote the report's run (or --run KEY) and index every trusted-zone photo "
                       "and title with it in Chroma")
    p.add_argument("--run", default=None, help="pin this run instead of the report's best_run")
    p.add_argument("--allow-unsupported", action="store_true",
                   help="promote even if the run's H1 is not supported (or it is worse than M0); the model card "
                        "says so")
    p.set_defaults(func=cmd_promote)
    return parser


def main(argv: list[str] | None = None) -> int:
    import warnings

    args = build_parser().parse_args(argv)
    # Dagster flags APIs it may still change (observable sources, partitioned checks); not for users.
    warnings.filterwarnings("ignore", message=r".*(is currently in (beta|preview)|preview, and may)")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S", force=True)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # Dagster's storage migrations
    from clipfood_assets.lake import LakeError

    try:
        args.func(args)
    except (CliError, LakeError, ValueError, FileNotFoundError) as exc:
        # Expected failures (bad arguments, bad config, unreachable lake) get one line, no traceback.
        print("clipfood: error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
