"""Multi-process training: 2 gloo processes compute what one process computes.

The processes are real (``torchrun`` and plain subprocesses on 127.0.0.1), each with one
torch thread; every launch has a timeout so that a collective one process skips fails the
test instead of hanging it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from clipfood_assets.modeling.distributed import (
    DistributedWorld,
    assert_same_on_all_ranks,
    average_gradients,
    gather_contrastive_batch,
    gather_rows,
    shard_bounds,
)
from clipfood_assets.modeling.launch import init_from_env, local_image_loader
from clipfood_assets.modeling.losses import contrastive_loss

REPO_ROOT = Path(__file__).resolve().parents[2]
LAUNCH_TIMEOUT_S = 180


def _child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, CLIPFOOD_TORCH_THREADS="1", OMP_NUM_THREADS="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _finish(processes: list[subprocess.Popen]) -> list[str]:
    """Wait for every process; kill all and fail on a timeout or a non-zero exit."""
    outputs = []
    try:
        for process in processes:
            out, _ = process.communicate(timeout=LAUNCH_TIMEOUT_S)
            outputs.append(out)
    except subprocess.TimeoutExpired:
        for process in processes:
            process.kill()
        pytest.fail(f"distributed processes did not finish in {LAUNCH_TIMEOUT_S} s (a collective hung?)")
    for process, out in zip(processes, outputs, strict=True):
        assert process.returncode == 0, out[-4000:]
    return outputs


# --------------------------------------------------------------------------- pure helpers


def test_shards_partition_every_batch_in_rank_order():
    for n_items in range(0, 23):
        for world_size in range(1, 6):
            bounds = [shard_bounds(n_items, rank, world_size) for rank in range(world_size)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n_items
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))  # contiguous, in rank order
            sizes = [stop - start for start, stop in bounds]
            assert max(sizes) - min(sizes) <= 1
    for bad in [(5, 2, 2), (5, -1, 2), (5, 0, 0), (-1, 0, 1)]:
        with pytest.raises(ValueError):
            shard_bounds(*bad)


def test_local_image_loader_stays_inside_its_folder(tmp_path):
    root = tmp_path / "zone"
    (root / "images").mkdir(parents=True)
    (root / "images" / "soup__r1_1.jpg").write_bytes(b"jpeg")
    (tmp_path / "secret.txt").write_text("not an image")
    (root / "images" / "link.jpg").symlink_to(tmp_path / "secret.txt")
    load_image = local_image_loader(root)
    assert load_image("images/soup__r1_1.jpg") == b"jpeg"
    for hostile in ["../secret.txt", str(tmp_path / "secret.txt"), "images/../../secret.txt", "images/link.jpg",
                    "", ".", "images/\x00.jpg"]:
        with pytest.raises(ValueError, match="not a file under"):
            load_image(hostile)
    with pytest.raises(FileNotFoundError):
        load_image("images/missing.jpg")
    with pytest.raises(ValueError, match="does not exist"):
        local_image_loader(tmp_path / "nowhere")


def test_environment_is_validated(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    world, device = init_from_env("cpu")  # no torchrun: one process, no process group
    assert (world.rank, world.world_size, device.type) == (0, 1, "cpu") and world.is_main
    assert not world.is_distributed and not torch.distributed.is_initialized()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE must be an integer"):
        init_from_env("cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="rank 2 is not in a world of 2"):
        init_from_env("cpu")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="cpu or cuda"):
        init_from_env("meta")


def test_seed_style_accumulation_is_refused_across_processes(synthetic_data, tmp_path):
    from clipfood_assets.modeling.config import load_experiment_config
    from clipfood_assets.modeling.train import train_lora

    cfg = load_experiment_config(overrides={"training": {"accumulation": "per_micro_batch", "batch_size": 2}})
    with pytest.raises(ValueError, match="one process only"):
        train_lora("unused-model", synthetic_data.train_pairs, synthetic_data.load_image, cfg, device="cpu",
                   work_dir=tmp_path, world=DistributedWorld(rank=0, world_size=2))
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------- gather: gradients across 2 processes


@dataclass(frozen=True)
class ToyBatch:
    """7 pairs of 6-d inputs (two of recipe 1, two of recipe 3), 3 labelled negatives, linear towers."""

    image_inputs: torch.Tensor
    text_inputs: torch.Tensor
    negative_inputs: torch.Tensor
    pair_codes: torch.Tensor
    negative_codes: torch.Tensor
    image_tower: torch.Tensor
    text_tower: torch.Tensor
    logit_scale: torch.Tensor

    def loss(self, image, text, negative, pair_codes, negative_codes, logit_scale):
        return contrastive_loss(image, text, logit_scale, recipe_ids=pair_codes.numpy(),
                                negative_text_emb=negative, negative_recipe_ids=negative_codes.numpy())


def _toy_batch() -> ToyBatch:
    g = torch.Generator().manual_seed(0)
    return ToyBatch(
        image_inputs=torch.randn(7, 6, generator=g), text_inputs=torch.randn(7, 6, generator=g),
        negative_inputs=torch.randn(3, 6, generator=g),
        pair_codes=torch.tensor([0, 1, 1, 2, 3, 3, 4]), negative_codes=torch.tensor([1, 5, 3]),
        image_tower=torch.randn(6, 4, generator=g), text_tower=torch.randn(6, 4, generator=g),
        logit_scale=torch.tensor(2.0),
    )


def gather_worker(out_dir: str) -> None:
    """One rank of the 2-process gather test (run in a subprocess); writes ``rank_<r>.json``."""
    world, _ = init_from_env("cpu")
    try:
        toy, rank = _toy_batch(), world.rank
        start, stop = shard_bounds(7, rank, world.world_size)  # pairs 0-3 on rank 0, 4-6 on rank 1
        negatives = slice(0, 3) if rank == 0 else slice(0, 0)  # rank 1 has no labelled negative
        towers = [toy.image_tower.clone().requires_grad_(), toy.text_tower.clone().requires_grad_(),
                  toy.logit_scale.clone().requires_grad_()]
        image = toy.image_inputs[start:stop] @ towers[0]
        text = toy.text_inputs[start:stop] @ towers[1]
        negative = toy.negative_inputs[negatives] @ towers[1]
        image.retain_grad()
        batch = gather_contrastive_batch(image, text, negative, toy.pair_codes[start:stop],
                                         toy.negative_codes[negatives], world)
        loss = toy.loss(*batch, towers[2])
        loss.backward()
        local_image_grad = image.grad.clone()
        average_gradients(towers, world)

        # Rows that need no gradient on rank 1 only: rank 1 must still join the backward.
        rows = torch.arange(4.0).reshape(2, 2) + 10 * rank
        if rank == 0:
            rows.requires_grad_()
        gathered = gather_rows(rows, world)
        (gathered ** 2).sum().backward()
        try:
            assert_same_on_all_ranks(rank, world, "the rank", "cpu")
            disagreement = ""
        except ValueError as exc:
            disagreement = str(exc)
        result = {
            "gathered_image": batch.image.tolist(), "gathered_negative": batch.negative.tolist(),
            "pair_codes": batch.pair_codes.tolist(), "negative_codes": batch.negative_codes.tolist(),
            "loss": float(loss), "local_image_grad": local_image_grad.tolist(),
            "tower_grads": [t.grad.tolist() for t in towers],
            "gathered_rows": gathered.tolist(),
            "rows_grad": rows.grad.tolist() if rows.grad is not None else None,
            "disagreement": disagreement,
        }
        (Path(out_dir) / f"rank_{rank}.json").write_text(json.dumps(result), encoding="utf-8")
    finally:
        torch.distributed.destroy_process_group()


def test_gather_gives_every_process_the_single_process_gradient(tmp_path):
    port = _free_port()
    command = [sys.executable, "-c",
               "import sys; from clipfood_assets_tests.modeling.test_distributed import gather_worker; "
               "gather_worker(sys.argv[1])", str(tmp_path)]
    processes = [
        subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=_child_env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                                        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)))
        for rank in range(2)
    ]
    _finish(processes)
    ranks = [json.loads((tmp_path / f"rank_{r}.json").read_text()) for r in range(2)]

    # The single-process reference: the whole batch through the same towers and loss.
    toy = _toy_batch()
    towers = [toy.image_tower.clone().requires_grad_(), toy.text_tower.clone().requires_grad_(),
              toy.logit_scale.clone().requires_grad_()]
    image = toy.image_inputs @ towers[0]
    image.retain_grad()
    negative = toy.negative_inputs @ towers[1]
    loss = toy.loss(image, toy.text_inputs @ towers[1], negative, toy.pair_codes, toy.negative_codes, towers[2])
    loss.backward()

    for rank, result in enumerate(ranks):
        start, stop = shard_bounds(7, rank, 2)
        assert torch.allclose(torch.tensor(result["gathered_image"]), image.detach(), atol=1e-6)
        assert torch.allclose(torch.tensor(result["gathered_negative"]), negative.detach(), atol=1e-6)
        assert result["pair_codes"] == toy.pair_codes.tolist()
        assert result["negative_codes"] == toy.negative_codes.tolist()
        assert result["loss"] == pytest.approx(float(loss.detach()), abs=1e-6)
        # Each process's rows get the gradient of every process's (identical) loss: 2x...
        assert torch.allclose(torch.tensor(result["local_image_grad"]), 2 * image.grad[start:stop], atol=1e-6)
        # ...and averaging the parameter gradients gives back the single-process gradient.
        for got, want in zip(result["tower_grads"], towers, strict=True):
            assert torch.allclose(torch.tensor(got), want.grad, atol=1e-6)
        assert "disagree" in result["disagreement"] and "[0, 1]" in result["disagreement"]
    rows = torch.cat([torch.arange(4.0).reshape(2, 2) + 10 * r for r in range(2)])
    assert ranks[0]["gathered_rows"] == ranks[1]["gathered_rows"] == rows.tolist()
    assert ranks[0]["rows_grad"] == (2 * 2 * rows[:2]).tolist()  # d/dx sum(x^2), summed over 2 processes
    assert ranks[1]["rows_grad"] is None


# --------------------------------------------------------------------------- training: 2 processes vs 1


@dataclass(frozen=True)
class ToyRun:
    images_dir: Path
    pairs_csv: Path
    config_yaml: Path
    base_model: str
    reference: Path  # work_dir of the single-process run
    reference_logs: dict


def _write_training_data(root: Path) -> tuple[Path, Path]:
    """12 synthetic recipes written as files, pairs with caption variants and labelled negatives."""
    from clipfood_assets.synthetic import synthetic_trusted_zone

    recipes_jsonl, image_iter = synthetic_trusted_zone(12, seed=3)
    titles = {r["id"]: r["title_text_raw"] for r in map(json.loads, recipes_jsonl.decode().splitlines())}
    images_dir = root / "zone"
    keys = []
    for key, data in image_iter:
        (images_dir / key).parent.mkdir(parents=True, exist_ok=True)
        (images_dir / key).write_bytes(data)
        keys.append(key)
    positives = pd.DataFrame({"image_key": sorted(keys)})
    positives["recipe_id"] = positives["image_key"].map(lambda k: k.rsplit("__", 1)[1].rsplit("_", 1)[0])
    positives["caption"] = positives["recipe_id"].map(titles)
    # A second caption for some images: the same image can fall into both processes' slices.
    variants = positives.iloc[::5].assign(caption=lambda f: f["caption"].str.lower())
    recipes = sorted(titles)
    other = {r: recipes[(i + 1) % len(recipes)] for i, r in enumerate(recipes)}
    # Negatives for every other image only: the processes hold different numbers of them.
    negatives = positives.iloc[::2].assign(caption=lambda f: f["recipe_id"].map(other).map(titles))
    pairs = pd.concat([positives.assign(label=1), variants.assign(label=1), negatives.assign(label=0)],
                      ignore_index=True)
    pairs_csv = root / "pairs.csv"
    pairs[["recipe_id", "image_key", "caption", "label"]].to_csv(pairs_csv, index=False)
    return images_dir, pairs_csv


@pytest.fixture(scope="module")
def toy_run(tiny_model_dir, tmp_path_factory) -> ToyRun:
    """Training data on disk and the single-process reference run (fp32, no dropout)."""
    from clipfood_assets.modeling.config import load_experiment_config
    from clipfood_assets.modeling.train import train_lora

    root = tmp_path_factory.mktemp("distributed")
    images_dir, pairs_csv = _write_training_data(root)
    config_yaml = root / "config.yaml"
    # 29 positives, 8 per step: steps of 8, 8, 8, 5 pairs (the last split 3 + 2), twice.
    config_yaml.write_text(yaml.safe_dump({
        "seed": 5,
        "lora": {"r": 4, "lora_dropout": 0.0},
        "training": {"epochs": 2, "batch_size": 4, "gradient_accumulation_steps": 2, "learning_rate": 5e-3,
                     "warmup_ratio": 0.0, "precision": "fp32", "num_workers": 1,
                     "checkpoint_every_steps": 3, "keep_checkpoints": 3},
    }))
    cfg = load_experiment_config(config_yaml)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CLIPFOOD_TORCH_THREADS", "1")
        result = train_lora(str(tiny_model_dir), pd.read_csv(pairs_csv, dtype={"recipe_id": str}),
                            local_image_loader(images_dir), cfg, device="cpu", work_dir=root / "reference")
    return ToyRun(images_dir, pairs_csv, config_yaml, str(tiny_model_dir), root / "reference", result.training_logs)


def _torchrun(run: ToyRun, out: Path) -> dict:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "clipfood_assets.modeling.launch", "--pairs", str(run.pairs_csv),
               "--images-dir", str(run.images_dir), "--config", str(run.config_yaml),
               "--base-model", run.base_model, "--out", str(out), "--device", "cpu"]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=_child_env())
    _finish([process])
    return json.loads((out / "training_logs.json").read_text())


def _assert_same_adapters(expected_dir: Path, actual_dir: Path) -> None:
    expected = load_file(str(expected_dir / "adapter_model.safetensors"))
    actual = load_file(str(actual_dir / "adapter_model.safetensors"))
    assert expected.keys() == actual.keys() and expected
    # lora_B starts at zero: the weights compared are ones training moved.
    assert max(float(t.abs().max()) for n, t in expected.items() if "lora_B" in n) > 1e-3
    for name in expected:
        assert torch.allclose(expected[name], actual[name], atol=1e-5), name
    scales = [json.loads((d / "logit_scale.json").read_text())["logit_scale"] for d in (expected_dir, actual_dir)]
    assert scales[0] == pytest.approx(scales[1], abs=1e-5)


def test_two_processes_train_like_one(toy_run, tmp_path):
    logs = _torchrun(toy_run, tmp_path / "run")
    reference = toy_run.reference_logs
    assert logs["world_size"] == 2 and reference["world_size"] == 1
    assert [s["step"] for s in logs["steps"]] == [s["step"] for s in reference["steps"]] == list(range(1, 9))
    assert [s["loss"] for s in logs["steps"]] == pytest.approx([s["loss"] for s in reference["steps"]], abs=1e-5)
    assert logs["negatives_per_pair"] == pytest.approx(reference["negatives_per_pair"])
    _assert_same_adapters(toy_run.reference / "adapters", tmp_path / "run" / "adapters")
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step_3", "step_6", "step_8"]


def test_two_processes_resume_a_single_process_checkpoint(toy_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(toy_run.reference / "checkpoints" / "step_3", out / "checkpoints" / "step_3")
    logs = _torchrun(toy_run, out)
    assert logs["resumed_from_step"] == 3 and logs["world_size"] == 2
    assert [s["loss"] for s in logs["steps"]] == pytest.approx([s["loss"] for s in toy_run.reference_logs["steps"]],
                                                               abs=1e-5)
    _assert_same_adapters(toy_run.reference / "adapters", out / "adapters")
