"""Experiment runs as separate processes: side by side they never mix, killed they resume exactly."""

import os
import signal
import subprocess
import sys
import time

import dagster as dg
import pytest
import yaml
from safetensors.numpy import load as load_safetensors

from clipfood_assets.cli import materialize, write_synthetic_zone
from clipfood_assets.lake import LocalLake
from clipfood_assets.lake.artifacts import read_bundle
from clipfood_assets.lake.layout import FINE_TUNING_ZONE, run_checkpoints_prefix, run_prefix
from clipfood_assets_tests import REPO_ROOT

pytestmark = pytest.mark.slow

RUN = {"training": {"epochs": 2, "batch_size": 8, "gradient_accumulation_steps": 2, "learning_rate": 1e-3,
                    "checkpoint_every_steps": 2},
       "lora": {"lora_dropout": 0.0},
       "evaluation": {"bootstrap_samples": 100}}


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    """A lake with a small trusted zone, a base model, a Dagster home with the data zone built."""
    from clipfood_assets.modeling.base_model import build_base_model

    root = tmp_path_factory.mktemp("platform")
    env = dict(os.environ, CLIPFOOD_LAKE_DIR=str(root / "lake"), DAGSTER_HOME=str(root / "home"),
               CLIPFOOD_HOME=str(root / "state"), CLIPFOOD_TORCH_THREADS="1")
    env.pop("MINIO_ENDPOINT", None)
    (root / "home").mkdir()
    base = build_base_model(root / "base", seed=0, pretrain_steps=0)
    lake = LocalLake(root / "lake")
    write_synthetic_zone(lake, n_recipes=24, seed=11)
    instance = dg.DagsterInstance.from_config(str(root / "home"))
    old = {k: os.environ.get(k) for k in ("CLIPFOOD_LAKE_DIR",)}
    os.environ["CLIPFOOD_LAKE_DIR"] = env["CLIPFOOD_LAKE_DIR"]
    try:
        materialize(base_model=str(base), instance=instance)
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    return {"root": root, "env": env, "base": str(base), "lake": lake, "instance": instance}


def _launch(platform, run_key, overrides):
    path = platform["root"] / f"{run_key}.yaml"
    path.write_text(yaml.safe_dump(overrides))
    return subprocess.Popen(
        [sys.executable, "-m", "clipfood_assets.cli", "materialize", "--run", run_key, "--config", str(path),
         "--base-model", platform["base"]],
        cwd=REPO_ROOT, env=platform["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _adapter(lake, run_key):
    bundle = read_bundle(lake, FINE_TUNING_ZONE, run_prefix(run_key), "lora_adapters")
    return load_safetensors(lake.get_bytes(FINE_TUNING_ZONE, bundle.prefix + "adapters/adapter_model.safetensors"))


def _baseline_count(instance):
    return len(instance.fetch_materializations(dg.AssetKey("baseline_results"), limit=100).records)


def test_two_runs_side_by_side_keep_to_their_folders_and_share_one_baseline(platform):
    lake, instance = platform["lake"], platform["instance"]
    baselines_before = _baseline_count(instance)
    r4 = {**RUN, "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0}}
    r16 = {**RUN, "lora": {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0}}
    procs = {"side-r4": _launch(platform, "side-r4", r4), "side-r16": _launch(platform, "side-r16", r16)}
    for key, proc in procs.items():
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out.decode()[-3000:]
    assert _baseline_count(instance) == baselines_before  # computed once, before both runs
    for key, r in (("side-r4", 4), ("side-r16", 16)):
        cfg = yaml.safe_load(lake.get_bytes(FINE_TUNING_ZONE, run_prefix(key) + "config.yaml"))
        assert cfg["lora"]["r"] == r
        weights = _adapter(lake, key)
        lora = {name: t for name, t in weights.items() if "lora_" in name}  # beside them: the trained logit_scale
        assert lora and all(min(t.shape) in (r,) or r in t.shape for t in lora.values())
        read_bundle(lake, FINE_TUNING_ZONE, run_prefix(key), "lora_results")  # complete
    assert {k.split("/")[2] for k in (o.key for o in lake.list(FINE_TUNING_ZONE, "experiments/lora/"))} >= {
        "run_side-r4", "run_side-r16"}


def test_killed_training_resumes_from_its_checkpoint_and_ends_like_an_uninterrupted_run(platform):
    lake = platform["lake"]
    proc = _launch(platform, "killed", RUN)
    deadline = time.monotonic() + 600
    marker = None
    while time.monotonic() < deadline and proc.poll() is None:
        done = [o.key for o in lake.list(FINE_TUNING_ZONE, run_checkpoints_prefix("killed")) if o.key.endswith("COMPLETE")]
        if done:
            marker = done[0]
            break
        time.sleep(0.2)
    assert marker, "training never wrote a checkpoint"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not lake.exists(FINE_TUNING_ZONE, run_prefix("killed") + "_lora_adapters.manifest.json")

    resumed = _launch(platform, "killed", RUN)
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out.decode()[-3000:]
    reference = _launch(platform, "uninterrupted", RUN)
    out_ref, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, out_ref.decode()[-3000:]

    got, want = _adapter(lake, "killed"), _adapter(lake, "uninterrupted")
    assert got.keys() == want.keys()
    for name in want:
        assert (got[name] == want[name]).all(), name
    logs = read_bundle(lake, FINE_TUNING_ZONE, run_prefix("killed"), "lora_adapters").read("training_logs.json")
    assert logs["resumed_from_step"] >= 2
