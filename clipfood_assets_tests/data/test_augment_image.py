import numpy as np
import pytest
from PIL import Image, ImageOps

from clipfood_assets.data.augment_config import AugmentationConfig, load_augmentation_config
from clipfood_assets.data.augment_image import TRANSFORMS, augment_image

TOGGLES = [attr for attr, _ in TRANSFORMS]


def noisy(size=(48, 32), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def only(attr: str, **params) -> AugmentationConfig:
    """A config where exactly one transform is enabled, with probability 1."""
    image = {name: {"enabled": name == attr, "probability": 1.0} for name in TOGGLES}
    image[attr].update(params)
    return load_augmentation_config({"image_augmentation": image})


def test_all_transforms_keep_size_and_mode_and_report_their_names():
    image = {name: {"enabled": True, "probability": 1.0} for name in TOGGLES}
    cfg = load_augmentation_config({"image_augmentation": image})
    out, ops = augment_image(noisy(), cfg, np.random.default_rng(1))
    assert out.size == (48, 32) and out.mode == "RGB"
    assert ops[:2] == ["hflip", "vflip"] and ops[2].startswith("rotate")
    assert ops[3:] == ["crop", "brightness", "contrast", "saturation", "noise", "blur"]


def test_flips_are_exact():
    source = noisy()
    out, ops = augment_image(source, only("horizontal_flip"), np.random.default_rng(0))
    assert ops == ["hflip"] and out.tobytes() == ImageOps.mirror(source).tobytes()
    out, ops = augment_image(source, only("vertical_flip"), np.random.default_rng(0))
    assert ops == ["vflip"] and out.tobytes() == ImageOps.flip(source).tobytes()


def test_right_angle_rotation_on_a_square_is_exact_and_tilt_uses_fill_colour():
    square = noisy((32, 32))
    cfg = only("rotation", right_angle_probability=1.0, right_angles=[180])
    out, ops = augment_image(square, cfg, np.random.default_rng(0))
    assert ops == ["rotate180"] and out.tobytes() == square.rotate(180).tobytes()
    cfg = only("rotation", right_angle_probability=0.0, min_degrees=20, max_degrees=25, fill_color=[0, 255, 0])
    out, ops = augment_image(square, cfg, np.random.default_rng(0))
    assert ops == ["rotate"] and out.getpixel((0, 0)) == (0, 255, 0)
    wide = noisy((48, 24))
    out, ops = augment_image(wide, only("rotation", right_angle_probability=1.0, right_angles=[90]), np.random.default_rng(0))
    assert out.size == (48, 24) and out.getpixel((0, 0)) == (255, 255, 255)


def test_crop_zooms_in_and_colour_ops_move_pixel_statistics():
    gradient = Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1)), "L").convert("RGB")
    out, _ = augment_image(gradient, only("random_crop", min_scale=0.7, max_scale=0.7), np.random.default_rng(0))
    columns = np.asarray(out)[0, :, 0].astype(int)
    assert out.size == (64, 64) and (columns.max() - columns.min()) < 0.8 * 252  # 70 % of the range left
    grey = Image.new("RGB", (16, 16), (100, 100, 100))
    darker, _ = augment_image(grey, only("brightness", min=0.5, max=0.5), np.random.default_rng(0))
    assert darker.getpixel((0, 0)) == (50, 50, 50)
    colourful = Image.new("RGB", (16, 16), (200, 50, 50))
    washed, _ = augment_image(colourful, only("saturation", min=0.0, max=0.0), np.random.default_rng(0))
    r, g, b = washed.getpixel((0, 0))
    assert r == g == b


def test_noise_and_blur_change_pixels_in_opposite_directions():
    source = noisy((32, 32))
    base_std = np.asarray(source, dtype=float).std()
    blurred, ops = augment_image(source, only("gaussian_blur", min_radius=2.0, max_radius=2.0), np.random.default_rng(0))
    assert ops == ["blur"] and np.asarray(blurred, dtype=float).std() < 0.5 * base_std
    flat = Image.new("RGB", (32, 32), (128, 128, 128))
    grainy, ops = augment_image(flat, only("gaussian_noise", min_std=20, max_std=20), np.random.default_rng(0))
    assert ops == ["noise"] and 15 < np.asarray(grainy, dtype=float).std() < 25


def test_same_seed_same_image_and_different_seed_differs():
    cfg = AugmentationConfig()
    first = [augment_image(noisy(), cfg, np.random.default_rng(s)) for s in range(8)]
    again = [augment_image(noisy(), cfg, np.random.default_rng(s)) for s in range(8)]
    assert all(a[0].tobytes() == b[0].tobytes() and a[1] == b[1] for a, b in zip(first, again))
    assert len({image.tobytes() for image, _ in first}) == 8


def test_disabling_one_transform_does_not_change_the_others_decisions():
    cfg = AugmentationConfig()
    without_noise = load_augmentation_config({"image_augmentation": {"gaussian_noise": {"enabled": False}}})
    for seed in range(20):
        _, ops = augment_image(noisy(), cfg, np.random.default_rng(seed))
        _, ops_without = augment_image(noisy(), without_noise, np.random.default_rng(seed))
        if ops != ["noise"]:  # the fallback pick is the one thing allowed to differ
            assert [op for op in ops if op != "noise"] == ops_without


def test_at_least_one_transform_unless_disabled():
    rarely = {name: {"probability": 0.0} for name in TOGGLES}
    cfg = load_augmentation_config({"image_augmentation": rarely})
    for seed in range(5):
        out, ops = augment_image(noisy(), cfg, np.random.default_rng(seed))
        assert len(ops) == 1 and out.size == (48, 32)
    _, ops = augment_image(noisy(), cfg, np.random.default_rng(0), ensure_one=False)
    assert ops == []
    off = load_augmentation_config({"image_augmentation": {"enabled": False}})
    out, ops = augment_image(noisy(), off, np.random.default_rng(0))
    assert ops == [] and out.tobytes() == noisy().tobytes()


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_non_rgb_inputs_come_out_rgb(mode):
    out, _ = augment_image(noisy().convert(mode), AugmentationConfig(), np.random.default_rng(0))
    assert out.mode == "RGB" and out.size == (48, 32)
