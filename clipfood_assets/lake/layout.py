"""Where every artifact lives: the seed's zone layout, in one place."""

from __future__ import annotations

import re

TRUSTED_ZONE = "trusted-zone"
FINE_TUNING_ZONE = "fine-tuning-zone"

# trusted-zone
RECIPES_KEY = "documents/recipes.jsonl"
TRUSTED_IMAGES_PREFIX = "images/"

# fine-tuning-zone
DATASETS_PREFIX = "datasets/"
TRAIN_PAIRS_KEY = "datasets/train_pairs_positive.csv"
TEST_PAIRS_KEY = "datasets/test_pairs_positive.csv"
AUGMENTED_PAIRS_KEY = "datasets/train_pairs_augmented_with_negatives.csv"
QUARANTINE_KEY = "quarantine/pairing_quarantine.csv"
# The trusted-zone identity (ETag, size) of each image copy, recorded when it was copied.
IMAGE_COPIES_KEY = "manifests/image_copies.csv"
IMAGES_PREFIX = "images/"
AUGMENTED_IMAGES_PREFIX = "augmented_images/"
BASELINE_PREFIX = "experiments/baseline/"
LORA_PREFIX = "experiments/lora/"
REPORT_PREFIX = "experiments/report/"

RUN_KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def validate_run_key(run_key: str) -> str:
    """Run keys become folder names (`run_<key>`), so they are kept to a safe alphabet."""
    if not isinstance(run_key, str) or not RUN_KEY_PATTERN.match(run_key) or ".." in run_key:
        raise ValueError(
            f"invalid experiment run key {run_key!r}: use 1-64 letters, digits, '-', '_' or '.', "
            "starting with a letter or digit"
        )
    return run_key


def run_prefix(run_key: str) -> str:
    return f"{LORA_PREFIX}run_{validate_run_key(run_key)}/"


def run_config_key(run_key: str) -> str:
    """The keys a user set for a run (registered); the resolved config is the run's config.yaml."""
    return run_prefix(run_key) + "run_config.yaml"


def run_checkpoints_prefix(run_key: str) -> str:
    return run_prefix(run_key) + "checkpoints/"
