import copy
from pathlib import Path

import pytest
import yaml

from clipfood_assets.data.augment_config import AugmentationConfig, load_augmentation_config

CONFIG_PATH = Path(__file__).resolve().parents[2] / "configs" / "augmentation_config.yaml"


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CONFIG_PATH.read_text())


def test_shipped_yaml_is_valid_and_carries_the_seed_settings():
    cfg = load_augmentation_config(CONFIG_PATH)
    image = cfg.image_augmentation
    assert cfg.seed == 42
    assert (image.rotation.min_degrees, image.rotation.max_degrees, image.rotation.right_angles) == (-25, 25, [90, 180, 270])
    assert (image.random_crop.min_scale, image.random_crop.max_scale) == (0.7, 0.9)
    assert (image.brightness.min, image.brightness.max, image.saturation.min, image.saturation.max) == (0.7, 1.3, 0.6, 1.4)
    assert (image.gaussian_noise.min_std, image.gaussian_noise.max_std) == (15, 35)
    assert (image.gaussian_blur.min_radius, image.gaussian_blur.max_radius) == (0.5, 2.0)
    text = cfg.text_augmentation
    assert text.max_length == 77 and text.synonym_replacement.synonyms["crispy"] == ["crunchy"]
    assert len(text.synonym_replacement.synonyms) >= 30
    assert cfg.negatives.per_positive == 1


def test_code_defaults_match_the_yaml_except_the_synonym_dictionary(raw):
    from_yaml = load_augmentation_config(raw).model_dump()
    from_yaml["text_augmentation"]["synonym_replacement"]["synonyms"] = {}
    assert AugmentationConfig().model_dump() == from_yaml


def test_mapping_and_instance_inputs(raw):
    cfg = load_augmentation_config(raw)
    assert load_augmentation_config(cfg) is cfg
    assert load_augmentation_config({}) == AugmentationConfig()


def mutate(raw: dict, path: str, value) -> dict:
    changed = copy.deepcopy(raw)
    *parents, leaf = path.split(".")
    node = changed
    for part in parents:
        node = node[part]
    node[leaf] = value
    return changed


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("image_augmentation.brightness.min", 1.5, "image_augmentation.brightness.min: must be <= max"),
        ("image_augmentation.brightness.probability", 1.5, "image_augmentation.brightness.probability:"),
        ("image_augmentation.vertical_flip.probability", -0.1, "image_augmentation.vertical_flip.probability:"),
        ("image_augmentation.random_crop.min_scale", 0.0, "image_augmentation.random_crop.min_scale:"),
        ("image_augmentation.random_crop.max_scale", 1.2, "image_augmentation.random_crop.max_scale:"),
        ("image_augmentation.random_crop.min_scale", 0.95, "image_augmentation.random_crop.min_scale: must be <= max_scale"),
        ("image_augmentation.rotation.min_degrees", 30, "image_augmentation.rotation.min_degrees: must be <= max_degrees"),
        ("image_augmentation.rotation.right_angles", [45], "image_augmentation.rotation.right_angles.0:"),
        ("image_augmentation.rotation.fill_color", [0, 0, 256], "image_augmentation.rotation.fill_color.2:"),
        ("image_augmentation.rotation.fill_color", [0, 0], "image_augmentation.rotation.fill_color:"),
        ("image_augmentation.gaussian_noise.min_std", 40, "image_augmentation.gaussian_noise.min_std: must be <= max_std"),
        ("image_augmentation.gaussian_blur.max_radius", -1, "image_augmentation.gaussian_blur.max_radius:"),
        ("image_augmentation.augmentations_per_image", -1, "image_augmentation.augmentations_per_image:"),
        ("text_augmentation.max_length", 0, "text_augmentation.max_length:"),
        ("text_augmentation.case_normalization.modes", ["camel"], "text_augmentation.case_normalization.modes.0:"),
        ("text_augmentation.suffix.suffixes", [], "text_augmentation.suffix.suffixes:"),
        ("text_augmentation.prefix.prefixes", [], "text_augmentation.prefix.prefixes:"),
        ("text_augmentation.synonym_replacement.synonyms", {"tasty": []}, "text_augmentation.synonym_replacement.synonyms.tasty:"),
        ("negatives.per_positive", -2, "negatives.per_positive:"),
    ],
)
def test_bad_ranges_name_the_key(raw, path, value, message):
    with pytest.raises(ValueError) as error:
        load_augmentation_config(mutate(raw, path, value))
    assert message in str(error.value)


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("seed", "42", "seed:"),
        ("seed", 4.2, "seed:"),
        ("image_augmentation.enabled", "yes", "image_augmentation.enabled:"),
        ("image_augmentation.horizontal_flip.probability", "0.5", "image_augmentation.horizontal_flip.probability:"),
        ("image_augmentation.brightness", [0.7, 1.3], "image_augmentation.brightness:"),
        ("text_augmentation.prefix.prefixes", "Homemade", "text_augmentation.prefix.prefixes:"),
        ("negatives", 1, "negatives:"),
    ],
)
def test_wrong_types_name_the_key(raw, path, value, message):
    with pytest.raises(ValueError) as error:
        load_augmentation_config(mutate(raw, path, value))
    assert message in str(error.value)


@pytest.mark.parametrize(
    "path, message",
    [
        ("image_augmentation.brightnes", "image_augmentation.brightnes: unknown key"),
        ("image_augmentation.rotation.degrees", "image_augmentation.rotation.degrees: unknown key"),
        ("augmentations", "augmentations: unknown key"),
    ],
)
def test_unknown_keys_are_rejected(raw, path, message):
    with pytest.raises(ValueError) as error:
        load_augmentation_config(mutate(raw, path, {"enabled": True}))
    assert message in str(error.value)


def test_every_error_is_reported_at_once(raw):
    broken = mutate(mutate(raw, "seed", -1), "image_augmentation.contrast.max", 0.1)
    with pytest.raises(ValueError) as error:
        load_augmentation_config(broken)
    assert "seed:" in str(error.value) and "image_augmentation.contrast.min: must be <= max" in str(error.value)


def test_bad_files(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_augmentation_config(empty)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("seed: [1, 2\n")
    with pytest.raises(ValueError, match="invalid YAML"):
        load_augmentation_config(bad_yaml)
    a_list = tmp_path / "list.yaml"
    a_list.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        load_augmentation_config(a_list)
    with pytest.raises(FileNotFoundError):
        load_augmentation_config(tmp_path / "missing.yaml")
