"""The ``torchrun`` launcher of multi-process LoRA training (one process per device).

    torchrun --standalone --nproc_per_node=2 -m clipfood_assets.modeling.launch \\
        --pairs train_pairs_augmented_with_negatives.csv --images-dir ./fine-tuning-zone \\
        --config configs/experiment_config.yaml --base-model ./tiny_clip --out ./runs/ddp

``--images-dir`` is the folder the pairs' ``image_key`` values are relative to (a local copy
of the fine-tuning zone: keys look like ``images/<slug>__<recipeId>_<n>.jpg``); this launcher
reads no lake.  Without ``torchrun`` (no ``WORLD_SIZE``) it trains in one process.  How the
work is split: :mod:`clipfood_assets.modeling.distributed`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.distributed as dist

from clipfood_assets.modeling.config import config_to_yaml, load_experiment_config
from clipfood_assets.modeling.distributed import DistributedWorld, _env_int
from clipfood_assets.modeling.train import train_lora

logger = logging.getLogger(__name__)


def init_from_env(device_preference: str = "auto") -> tuple[DistributedWorld, torch.device]:
    """Join the process group that ``torchrun`` describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*).

    Device: ``auto`` is ``cuda:LOCAL_RANK`` when CUDA is present, else the CPU; backend NCCL on
    CUDA, gloo on the CPU.  Without WORLD_SIZE (or with 1) no process group is created.
    """
    world_size, rank, local_rank = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    world = DistributedWorld(rank=rank, world_size=world_size, local_rank=local_rank)
    if device_preference == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(device_preference)
        if device.type == "cuda" and device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"distributed training runs on cpu or cuda, not {device}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device} requested but CUDA is not available")
        torch.cuda.set_device(device)
    if world.is_distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size,
                                device_id=device if device.type == "cuda" else None)
    return world, device


def local_image_loader(images_dir: Path | str) -> Callable[[str], bytes]:
    """``load_image(key)`` reading ``images_dir / key``; keys may not lead out of ``images_dir``."""
    root = Path(images_dir).resolve()
    if not root.is_dir():
        raise ValueError(f"images directory {root} does not exist")

    def load_image(key: str) -> bytes:
        path = None if "\x00" in key else (root / key).resolve()  # resolves links: no way out through one
        if path is None or not path.is_relative_to(root) or path == root:
            raise ValueError(f"image key {key!r} is not a file under {root}")
        return path.read_bytes()

    return load_image


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m clipfood_assets.modeling.launch",
        description="LoRA-fine-tune CLIP on N processes (run under torchrun); every process contrasts "
                    "against the global batch.",
    )
    parser.add_argument("--pairs", required=True, type=Path,
                        help="training pairs CSV: recipe_id, image_key, caption[, label]")
    parser.add_argument("--images-dir", required=True, type=Path,
                        help="folder the pairs' image_key paths are relative to")
    parser.add_argument("--config", type=Path, default=None, help="experiment config YAML (defaults if absent)")
    parser.add_argument("--base-model", default=None, help="base CLIP directory or hub id (default: model.name)")
    parser.add_argument("--out", required=True, type=Path,
                        help="work directory: adapters/, checkpoints/, training_logs.json, config.yaml")
    parser.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK if present), cpu or cuda")
    return parser.parse_args(argv)


def _read_pairs(path: Path):
    from clipfood_assets.lake.tables import read_table

    return read_table(Path(path).read_bytes())  # the artifacts' one schema: ids and captions stay text


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m clipfood_assets.modeling.launch`` (one process of the run)."""
    args = _parse_args(argv)
    rank = _env_int("RANK", 0)
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[rank {rank}] %(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_experiment_config(args.config)
    load_image = local_image_loader(args.images_dir)
    train_pairs = _read_pairs(args.pairs)
    world, device = init_from_env(args.device)
    try:
        result = train_lora(args.base_model or cfg.model.name, train_pairs, load_image, cfg,
                            device=device, work_dir=args.out, world=world)
        if world.is_main:
            (args.out / "training_logs.json").write_text(json.dumps(result.training_logs, indent=2),
                                                         encoding="utf-8")
            (args.out / "config.yaml").write_text(config_to_yaml(cfg), encoding="utf-8")
            logger.info("trained on %d processes: %.1f pairs/s, adapters in %s", world.world_size,
                        result.samples_per_s, result.adapter_dir)
        world.barrier()
    finally:
        if world.is_distributed and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
