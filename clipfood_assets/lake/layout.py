"""Where every artifact lives: the original notebooks' zone layout, in one place."""

from __future__ import annotations

import re

TRUSTED_ZONE = "trusted-zone"
FINE_TUNING_ZONE = "fine-tuning-zone"

# trusted-zone
RECIPES_KEY = "documents/recipes.jsonl"
TRUSTED_IMAGES_PREFIX = "images/"
# The trusted-zone version each data-zone artifact was built from (one small JSON per artifact): the
# lake, not a Dagster instance, says whether the data zone is up to date.
BUILT_FROM_PREFIX = "manifests/built_from/"

# fine-tuning-zone
TRAIN_PAIRS_KEY = "datasets/train_pairs_positive.csv"
TEST_PAIRS_KEY = "datasets/test_pairs_positive.csv"
VALIDATION_PAIRS_KEY = "datasets/validation_pairs_positive.csv"
AUGMENTED_PAIRS_KEY = "datasets/train_pairs_augmented_with_negatives.csv"
QUARANTINE_KEY = "quarantine/pairing_quarantine.csv"
# The trusted-zone identity (ETag, size) of each image copy, recorded when it was copied.
IMAGE_COPIES_KEY = "manifests/image_copies.csv"
IMAGES_PREFIX = "images/"
AUGMENTED_IMAGES_PREFIX = "augmented_images/"
BASELINE_PREFIX = "experiments/baseline/"
LORA_PREFIX = "experiments/lora/"
REPORT_PREFIX = "experiments/report/"
# Packed uint8 pixels of every fine-tuning image, one folder per preprocessing signature digest.
PREPROCESSED_IMAGES_PREFIX = "preprocessed_images/"

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


_SIGNATURE_DIGEST = re.compile(r"^[0-9a-f]{8,64}$")


def preprocessed_images_prefix(signature_digest: str) -> str:
    """`preprocessed_images/<signature digest>/`: the packed image store of one preprocessing."""
    if not isinstance(signature_digest, str) or not _SIGNATURE_DIGEST.match(signature_digest):
        raise ValueError(f"invalid preprocessing signature digest {signature_digest!r}: 8-64 lower-case hex digits")
    return f"{PREPROCESSED_IMAGES_PREFIX}{signature_digest}/"


SWEEPS_PREFIX = "experiments/sweeps/"


def sweep_key(name: str, *, submitted: bool = True) -> str:
    """Where a sweep file lives: submitted ones directly under the prefix (the sweep sensor launches
    them), ones already run by the CLI under ``ran/`` (kept for the report, never launched again)."""
    return f"{SWEEPS_PREFIX}{'' if submitted else 'ran/'}{validate_run_key(name)}.yaml"


def run_config_key(run_key: str) -> str:
    """The keys a user set for a run (registered); the resolved config is the run's config.yaml."""
    return run_prefix(run_key) + "run_config.yaml"


def run_checkpoints_prefix(run_key: str) -> str:
    return run_prefix(run_key) + "checkpoints/"


# fine-tuning-zone: the promoted model, one folder per promotion, `current.json` written last.
PROMOTED_PREFIX = "models/promoted/"
PROMOTED_POINTER_KEY = PROMOTED_PREFIX + "current.json"

# exploitation-zone: embeddings of every trusted-zone image and recipe title, per model version.
EXPLOITATION_ZONE = "exploitation-zone"
EMBEDDINGS_PREFIX = "embeddings/"
EXPLOITATION_QUARANTINE_PREFIX = "quarantine/"


_VERSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def validate_version_id(value: str, what: str = "version id") -> str:
    """Promotion ids and model versions become folder names: the run-key alphabet, up to 128 characters."""
    if not isinstance(value, str) or not _VERSION_ID.match(value) or ".." in value:
        raise ValueError(f"invalid {what} {value!r}: 1-128 letters, digits, '-', '_' or '.'")
    return value


def promotion_prefix(promotion_id: str) -> str:
    """Folder of one promotion: `models/promoted/<promotion id>/`."""
    return f"{PROMOTED_PREFIX}{validate_version_id(promotion_id, 'promotion id')}/"


def embeddings_prefix(model_version: str, kind: str) -> str:
    """`embeddings/<model version>/<images|titles>/`: shards and their index.csv."""
    if kind not in ("images", "titles"):
        raise ValueError(f"unknown embedding kind {kind!r}: images or titles")
    return f"{EMBEDDINGS_PREFIX}{validate_version_id(model_version, 'model version')}/{kind}/"


def embedding_quarantine_key(kind: str) -> str:
    return f"{EXPLOITATION_QUARANTINE_PREFIX}{kind}_embedding_quarantine.csv"
