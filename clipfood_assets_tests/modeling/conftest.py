"""Fixtures for the modeling tests: random tiny CLIPs and a saved tiny base model."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPConfig, CLIPModel


def random_clip(dropout: float = 0.0, image_size: int = 32) -> CLIPModel:
    """A randomly initialised CLIP small enough for gradient checks (ids < 100, eos 99)."""
    config = CLIPConfig(
        text_config=dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, attention_dropout=dropout,
                         bos_token_id=98, eos_token_id=99, pad_token_id=99),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=8, attention_dropout=dropout),
        projection_dim=16,
    )
    return CLIPModel(config).to(torch.float32)


@pytest.fixture(name="random_clip")
def random_clip_factory():
    """Factory fixture: ``random_clip(dropout=0.0, image_size=32)``."""
    return random_clip
