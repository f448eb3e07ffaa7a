"""Validated augmentation settings (mirrors configs/augmentation_config.yaml).

Sections are :class:`~clipfood_assets.config_base.ConfigSection`: strict (no "yes" -> True, no "0.5" -> 0.5),
frozen, unknown keys forbidden, ranges checked, so a typo in the YAML fails loudly with the dotted key
instead of silently using a default.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal, Mapping

from pydantic import BaseModel, Field, ValidationError, model_validator

from clipfood_assets.config_base import ConfigSection
from clipfood_assets.yaml_files import read_yaml_mapping

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
NonEmptyText = Annotated[str, Field(min_length=1)]
ColorChannel = Annotated[int, Field(ge=0, le=255)]
CaseMode = Literal["title", "lower", "upper"]


class FieldError(ValueError):
    """A model-level check that blames one field (so the message can name its dotted key)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _ordered(model: BaseModel, low: str, high: str) -> None:
    if getattr(model, low) > getattr(model, high):
        raise FieldError(low, f"must be <= {high} ({getattr(model, low)} > {getattr(model, high)})")


class Toggle(ConfigSection):
    """An optional transform: applied when enabled, with this probability."""

    enabled: bool = True
    probability: Probability = 0.5


class RotationConfig(Toggle):
    probability: Probability = 0.4
    min_degrees: float = Field(-25.0, ge=-180.0, le=180.0)
    max_degrees: float = Field(25.0, ge=-180.0, le=180.0)
    right_angles: list[Literal[90, 180, 270]] = Field(default_factory=lambda: [90, 180, 270])
    right_angle_probability: Probability = 0.3
    fill_color: list[ColorChannel] = Field(default_factory=lambda: [255, 255, 255], min_length=3, max_length=3)

    @model_validator(mode="after")
    def _check(self) -> "RotationConfig":
        _ordered(self, "min_degrees", "max_degrees")
        if self.right_angle_probability > 0 and not self.right_angles:
            raise FieldError("right_angles", "must not be empty when right_angle_probability > 0")
        return self


class CropConfig(Toggle):
    min_scale: float = Field(0.7, gt=0.0, le=1.0)
    max_scale: float = Field(0.9, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _check(self) -> "CropConfig":
        _ordered(self, "min_scale", "max_scale")
        return self


class FactorRangeConfig(Toggle):
    """An ImageEnhance factor drawn uniformly from [min, max]; 1.0 leaves the image unchanged."""

    probability: Probability = 0.4
    min: float = Field(0.7, ge=0.0, le=10.0)
    max: float = Field(1.3, ge=0.0, le=10.0)

    @model_validator(mode="after")
    def _check(self) -> "FactorRangeConfig":
        _ordered(self, "min", "max")
        return self


class NoiseConfig(Toggle):
    probability: Probability = 0.2
    min_std: float = Field(15.0, ge=0.0, le=255.0)
    max_std: float = Field(35.0, ge=0.0, le=255.0)

    @model_validator(mode="after")
    def _check(self) -> "NoiseConfig":
        _ordered(self, "min_std", "max_std")
        return self


class BlurConfig(Toggle):
    probability: Probability = 0.2
    min_radius: float = Field(0.5, ge=0.0, le=100.0)
    max_radius: float = Field(2.0, ge=0.0, le=100.0)

    @model_validator(mode="after")
    def _check(self) -> "BlurConfig":
        _ordered(self, "min_radius", "max_radius")
        return self


class ImageAugmentationConfig(ConfigSection):
    enabled: bool = True
    augmentations_per_image: int = Field(1, ge=0, le=100)
    horizontal_flip: Toggle = Toggle()
    vertical_flip: Toggle = Toggle(probability=0.2)
    rotation: RotationConfig = RotationConfig()
    random_crop: CropConfig = CropConfig()
    brightness: FactorRangeConfig = FactorRangeConfig()
    contrast: FactorRangeConfig = FactorRangeConfig()
    saturation: FactorRangeConfig = FactorRangeConfig(min=0.6, max=1.4)
    gaussian_noise: NoiseConfig = NoiseConfig()
    gaussian_blur: BlurConfig = BlurConfig()


class SynonymConfig(Toggle):
    synonyms: dict[str, list[NonEmptyText]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> "SynonymConfig":
        for word, replacements in self.synonyms.items():
            if not word.strip():
                raise FieldError("synonyms", "words must be non-empty")
            if not replacements:
                raise FieldError(f"synonyms.{word}", "needs at least one synonym")
        return self


class PrefixConfig(Toggle):
    probability: Probability = 0.3
    prefixes: list[NonEmptyText] = Field(
        default_factory=lambda: ["Homemade", "Classic", "Easy", "Quick", "Simple", "Delicious", "Best", "Traditional"]
    )
    remove_probability: Probability = 0.5

    @model_validator(mode="after")
    def _check(self) -> "PrefixConfig":
        if self.enabled and not self.prefixes:
            raise FieldError("prefixes", "must not be empty when prefix is enabled")
        return self


class CaseConfig(Toggle):
    probability: Probability = 0.2
    modes: list[CaseMode] = Field(default_factory=lambda: ["title", "lower", "upper"], min_length=1)


class SuffixConfig(Toggle):
    probability: Probability = 0.2
    suffixes: list[NonEmptyText] = Field(default_factory=lambda: ["Recipe", "- Easy Recipe"], min_length=1)


class TextAugmentationConfig(ConfigSection):
    enabled: bool = True
    augmentations_per_caption: int = Field(1, ge=0, le=100)
    synonym_replacement: SynonymConfig = SynonymConfig()
    prefix: PrefixConfig = PrefixConfig()
    reorder: Toggle = Toggle(probability=0.3)
    case_normalization: CaseConfig = CaseConfig()
    suffix: SuffixConfig = SuffixConfig()
    simplification: Toggle = Toggle()
    max_length: int = Field(77, ge=8, le=10_000)


class NegativesConfig(ConfigSection):
    per_positive: int = Field(1, ge=0, le=100)


class AugmentationConfig(ConfigSection):
    """Everything the augmentation step needs; see configs/augmentation_config.yaml."""

    seed: int = Field(42, ge=0, lt=2**63)
    image_augmentation: ImageAugmentationConfig = ImageAugmentationConfig()
    text_augmentation: TextAugmentationConfig = TextAugmentationConfig()
    negatives: NegativesConfig = NegativesConfig()


def _describe(error: Mapping[str, Any]) -> str:
    location = [str(part) for part in error["loc"]]
    cause = (error.get("ctx") or {}).get("error")
    message = str(error["msg"])
    if isinstance(cause, FieldError):
        location.append(cause.field)
        message = str(cause)
    elif error["type"] == "extra_forbidden":
        message = "unknown key"
    elif message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    return f"{'.'.join(location) or '<root>'}: {message}"


def load_augmentation_config(path_or_mapping: str | os.PathLike[str] | Mapping[str, Any] | AugmentationConfig) -> AugmentationConfig:
    """Load and validate augmentation settings from a YAML path or an already-parsed mapping.

    Raises ValueError naming each offending dotted key, e.g.
    ``image_augmentation.brightness.min: must be <= max (1.5 > 1.3)``.
    """
    if isinstance(path_or_mapping, AugmentationConfig):
        return path_or_mapping
    if isinstance(path_or_mapping, Mapping):
        raw: Mapping[str, Any] = path_or_mapping
    else:
        raw = read_yaml_mapping(
            path_or_mapping, "<root>: expected a mapping", empty="<root>: empty file", invalid="invalid YAML"
        )
    try:
        return AugmentationConfig.model_validate(dict(raw))
    except ValidationError as exc:
        raise ValueError("; ".join(_describe(error) for error in exc.errors())) from exc
