"""Retrieval with a run's model: text -> food photos, photo -> recipe titles."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from clipfood_assets.lake.artifacts import decode, read_bundle
from clipfood_assets.lake.base import Lake
from clipfood_assets.lake.layout import (
    FINE_TUNING_ZONE,
    TEST_PAIRS_KEY,
    TRAIN_PAIRS_KEY,
    VALIDATION_PAIRS_KEY,
    run_prefix,
)


@dataclass
class RunSearcher:
    model: object
    processor: object
    device: object
    images: pd.DataFrame  # image_key, recipe_id, caption (one row per image)
    image_embeddings: np.ndarray
    captions: pd.DataFrame  # caption, recipe_id (one row per caption)
    caption_embeddings: np.ndarray

    def images_for_text(self, query: str, k: int = 5) -> list[dict]:
        from clipfood_assets.modeling.embed import embed_texts

        q, _ = embed_texts(self.model, self.processor, [query], batch_size=1, device=self.device)
        return self._top(self.image_embeddings @ q[0], self.images, k)

    def captions_for_image(self, image: bytes, k: int = 5) -> list[dict]:
        from clipfood_assets.modeling.embed import embed_images

        q, _ = embed_images(self.model, self.processor, ["query"], lambda _: image, batch_size=1, device=self.device)
        return self._top(self.caption_embeddings @ q[0], self.captions, k)

    @staticmethod
    def _top(scores: np.ndarray, table: pd.DataFrame, k: int) -> list[dict]:
        order = np.argsort(-scores, kind="stable")[: max(1, k)]
        rows = table.iloc[order].to_dict("records")
        for row, i in zip(rows, order):
            row["score"] = float(scores[i])
        return rows


def open_run_searcher(lake: Lake, run_key: str, device: str = "auto", batch_size: int = 64) -> RunSearcher:
    """The run's adapters merged into its base model, over every image of the fine-tuning zone's pairs."""
    from clipfood_assets.modeling.clip import resolve_device
    from clipfood_assets.modeling.config import ExperimentConfig
    from clipfood_assets.modeling.embed import embed_images, embed_texts
    from clipfood_assets.modeling.lora import load_adapted_model

    bundle = read_bundle(lake, FINE_TUNING_ZONE, run_prefix(run_key), "lora_adapters")
    cfg = ExperimentConfig.model_validate(bundle.read("config.yaml"))
    torch_device = resolve_device(device)
    with tempfile.TemporaryDirectory(prefix="clipfood-search-") as tmp:
        adapters = bundle.download("adapters", Path(tmp) / "adapters")
        model, processor = load_adapted_model(cfg.model.name, adapters, torch_device, merge=True)
    pairs = pd.concat(
        [decode(key, lake.get_bytes(FINE_TUNING_ZONE, key)) for key in (TRAIN_PAIRS_KEY, TEST_PAIRS_KEY,
                                                                         VALIDATION_PAIRS_KEY)
         if key != VALIDATION_PAIRS_KEY or lake.exists(FINE_TUNING_ZONE, key)],  # older zones have none
        ignore_index=True,
    )
    images = pairs.drop_duplicates("image_key").sort_values("image_key").reset_index(drop=True)
    captions = pairs.drop_duplicates("caption").sort_values("caption")[["caption", "recipe_id"]].reset_index(drop=True)
    image_emb, _ = embed_images(
        model, processor, images["image_key"].tolist(), lambda key: lake.get_bytes(FINE_TUNING_ZONE, key),
        batch_size=batch_size, device=torch_device,
    )
    caption_emb, _ = embed_texts(model, processor, captions["caption"].tolist(), batch_size=batch_size, device=torch_device)
    return RunSearcher(model, processor, torch_device, images, image_emb, captions, caption_emb)
