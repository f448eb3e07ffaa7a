"""Image augmentation with PIL and numpy (no torchvision).

Each enabled transform fires independently with its probability, in a fixed order
(geometry, colour, noise, blur). Every transform draws from its own child random stream,
so enabling, disabling or re-parametrising one transform does not change what the others do.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from clipfood_assets.data.augment_config import (
    AugmentationConfig,
    BlurConfig,
    CropConfig,
    FactorRangeConfig,
    ImageAugmentationConfig,
    NoiseConfig,
    RotationConfig,
    Toggle,
)
from clipfood_assets.data.decode import to_rgb

Transform = Callable[[Image.Image, Toggle, np.random.Generator], tuple[Image.Image, str]]


def _hflip(image: Image.Image, _: Toggle, __: np.random.Generator) -> tuple[Image.Image, str]:
    return ImageOps.mirror(image), "hflip"


def _vflip(image: Image.Image, _: Toggle, __: np.random.Generator) -> tuple[Image.Image, str]:
    return ImageOps.flip(image), "vflip"


def _rotate(image: Image.Image, cfg: RotationConfig, rng: np.random.Generator) -> tuple[Image.Image, str]:
    if cfg.right_angles and rng.random() < cfg.right_angle_probability:
        angle: float = int(cfg.right_angles[int(rng.integers(len(cfg.right_angles)))])
        name = f"rotate{angle}"
    else:
        angle = float(rng.uniform(cfg.min_degrees, cfg.max_degrees))
        name = "rotate"
    # expand=False keeps the size; uncovered corners (tilts, or 90/270 on non-square) get fill_color.
    rotated = image.rotate(angle, resample=Image.Resampling.BICUBIC, expand=False, fillcolor=tuple(cfg.fill_color))
    return rotated, name


def _crop(image: Image.Image, cfg: CropConfig, rng: np.random.Generator) -> tuple[Image.Image, str]:
    scale = float(rng.uniform(cfg.min_scale, cfg.max_scale))
    width, height = image.size
    crop_w, crop_h = max(1, round(width * scale)), max(1, round(height * scale))
    left = int(rng.integers(0, width - crop_w + 1))
    top = int(rng.integers(0, height - crop_h + 1))
    box = (left, top, left + crop_w, top + crop_h)
    return image.resize((width, height), Image.Resampling.BICUBIC, box=box), "crop"


def _enhancer(kind: type, name: str) -> Transform:
    def apply(image: Image.Image, cfg: FactorRangeConfig, rng: np.random.Generator) -> tuple[Image.Image, str]:
        return kind(image).enhance(float(rng.uniform(cfg.min, cfg.max))), name

    return apply


def _noise(image: Image.Image, cfg: NoiseConfig, rng: np.random.Generator) -> tuple[Image.Image, str]:
    std = float(rng.uniform(cfg.min_std, cfg.max_std))
    pixels = np.asarray(image, dtype=np.float32)
    noisy = pixels + rng.standard_normal(pixels.shape, dtype=np.float32) * np.float32(std)
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8), "RGB"), "noise"


def _blur(image: Image.Image, cfg: BlurConfig, rng: np.random.Generator) -> tuple[Image.Image, str]:
    return image.filter(ImageFilter.GaussianBlur(float(rng.uniform(cfg.min_radius, cfg.max_radius)))), "blur"


# (config attribute, transform) in application order: geometry, colour, noise, blur.
TRANSFORMS: tuple[tuple[str, Transform], ...] = (
    ("horizontal_flip", _hflip),
    ("vertical_flip", _vflip),
    ("rotation", _rotate),
    ("random_crop", _crop),
    ("brightness", _enhancer(ImageEnhance.Brightness, "brightness")),
    ("contrast", _enhancer(ImageEnhance.Contrast, "contrast")),
    ("saturation", _enhancer(ImageEnhance.Color, "saturation")),
    ("gaussian_noise", _noise),
    ("gaussian_blur", _blur),
)


def image_section(cfg: AugmentationConfig | ImageAugmentationConfig) -> ImageAugmentationConfig:
    """The image_augmentation block of a full config (or the block itself)."""
    return cfg.image_augmentation if isinstance(cfg, AugmentationConfig) else cfg


def augment_image(
    img: Image.Image,
    cfg: AugmentationConfig | ImageAugmentationConfig,
    rng: np.random.Generator,
    ensure_one: bool = True,
) -> tuple[Image.Image, list[str]]:
    """Apply each enabled transform with its probability; return (image, names of ops applied).

    The output has the input's size and is RGB. With ``ensure_one`` (default), if no transform
    fired, one enabled transform is picked at random and applied, so an augmented variant
    never equals its source. Same rng state -> same output.
    """
    section = image_section(cfg)
    image = to_rgb(img)
    if not section.enabled:
        return image, []
    streams = rng.spawn(len(TRANSFORMS))
    enabled = [i for i, (attr, _) in enumerate(TRANSFORMS) if getattr(section, attr).enabled]
    fired = [i for i in enabled if streams[i].random() < getattr(section, TRANSFORMS[i][0]).probability]
    if not fired and ensure_one and enabled:
        fired = [enabled[int(rng.integers(len(enabled)))]]
    applied: list[str] = []
    for i in fired:
        attr, transform = TRANSFORMS[i]
        image, name = transform(image, getattr(section, attr), streams[i])
        applied.append(name)
    return image, applied
