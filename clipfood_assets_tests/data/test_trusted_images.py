from io import BytesIO

import pandas as pd
import pytest
from PIL import Image

from clipfood_assets.data.decode import decode_rgb
from clipfood_assets.data.trusted import parse_image_keys, validate_image

from . import factories as f


def test_valid_keys_parse_to_recipe_and_position():
    keys = [
        "images/pasta__a1b2c3d4e5_0.jpg",
        "images/crème brûlée à la maison__a1b2c3d4e5_12.JPEG",
        "images/sub/folder/x__real_id-7_3.png",
        "images/__under_score_id_2.jpg",
        "images/x__abc_1_0.jpg",  # id ending in _<digits>: the LAST _<n> is the position
        "images/a__b__c_4.Jpg",  # the id follows the LAST '__'
    ]
    images, quarantined = parse_image_keys(keys)
    assert quarantined == []
    assert images.columns.tolist() == ["image_key", "recipe_id", "position"]
    assert images["image_key"].tolist() == keys
    assert images["recipe_id"].tolist() == ["a1b2c3d4e5", "a1b2c3d4e5", "real_id-7", "under_score_id", "abc_1", "c"]
    assert images["position"].tolist() == [0, 12, 3, 2, 0, 4]
    assert str(images["position"].dtype) == "int64"


@pytest.mark.parametrize(
    "key, reason",
    [
        ("images/../secret__a1b2c3d4e5_0.jpg", "unsafe_key"),
        ("images/sub/../../x__a1b2c3d4e5_0.jpg", "unsafe_key"),
        ("images/./x__a1b2c3d4e5_0.jpg", "unsafe_key"),
        ("/images/x__a1b2c3d4e5_0.jpg", "unsafe_key"),
        ("images//x__a1b2c3d4e5_0.jpg", "unsafe_key"),
        ("images\\x__a1b2c3d4e5_0.jpg", "unsafe_key"),
        ("images/x\x00y__a1b2c3d4e5_0.jpg", "unsafe_key"),
        ("images/x__a1b2c3d4e5_0.jpg\n", "unsafe_key"),
        ("images/x\x1b[31m__a1b2c3d4e5_0.jpg", "unsafe_key"),
        ("images/x__a1b2c3d4e5_0.gif", "bad_extension"),
        ("images/x__a1b2c3d4e5_0.jpg.exe", "bad_extension"),
        ("images/x__a1b2c3d4e5_0", "bad_extension"),
        ("images/x__a1b2c3d4e5_0.", "bad_extension"),
        ("images/no_recipe_here.jpg", "unparseable_key"),
        ("images/x__a1b2c3d4e5.jpg", "unparseable_key"),
        ("images/x__a1b2c3d4e5_one.jpg", "unparseable_key"),
        ("images/x___0.jpg", "unparseable_key"),
        ("images/x__a1b2c3d4e5_12345678901.jpg", "unparseable_key"),
        ("other/x__a1b2c3d4e5_0.jpg", "unparseable_key"),
        ("", "unparseable_key"),
    ],
)
def test_bad_keys_are_quarantined_with_reason(key, reason):
    images, quarantined = parse_image_keys(["images/ok__a1b2c3d4e5_0.jpg", key])
    assert images["image_key"].tolist() == ["images/ok__a1b2c3d4e5_0.jpg"]
    assert [q.reason for q in quarantined] == [reason]
    assert "\x00" not in quarantined[0].source and "\n" not in quarantined[0].source


def test_non_string_keys_do_not_crash():
    images, quarantined = parse_image_keys(["images/ok__a_0.jpg", None, 17, b"images/x__a_0.jpg"])
    assert len(images) == 1
    assert sorted(q.reason for q in quarantined) == ["unparseable_key"] * 3


def test_duplicate_keys_kept_once_and_extensions_configurable():
    images, quarantined = parse_image_keys(
        ["images/a__r_0.webp", "images/a__r_0.webp", "images/a__r_1.jpg"], allowed_extensions=(".webp",)
    )
    assert images["image_key"].tolist() == ["images/a__r_0.webp"]
    assert images.attrs["duplicate_keys"] == 1
    assert [q.reason for q in quarantined] == ["bad_extension"]


def test_many_keys_in_one_vectorized_call():
    keys = pd.Series([f"images/dish {i}__{f.synthetic_id(i // 3)}_{i % 3}.jpg" for i in range(60_000)])
    keys.iloc[::1000] = "images/../evil.jpg"
    images, quarantined = parse_image_keys(keys)
    assert len(images) == 60_000 - 60 and len(quarantined) == 1  # repeated bad key counted once
    assert images["recipe_id"].iloc[1] == f.synthetic_id(0)


# --- image bytes ----------------------------------------------------------------------

VALID_IMAGES = {
    "rgb_jpeg": lambda: f.image_bytes("RGB", fmt="JPEG"),
    "rgb_png": lambda: f.image_bytes("RGB"),
    "grayscale_jpeg": lambda: f.image_bytes("L", fmt="JPEG"),
    "grayscale_png": lambda: f.image_bytes("L"),
    "bilevel_png": lambda: f.image_bytes("1"),
    "cmyk_jpeg": lambda: f.image_bytes("CMYK", fmt="JPEG"),
    "rgba_png": f.rgba_png,
    "la_png": lambda: f.image_bytes("LA"),
    "palette_png": lambda: f.image_bytes("P"),
    "palette_transparent_png": f.palette_png_with_transparency,
    "gray16_png": f.gray16_png,
    "exif_rotated_jpeg": f.exif_rotated_jpeg,
    "progressive_jpeg": lambda: f.image_bytes("RGB", fmt="JPEG", progressive=True),
    "png_named_jpg": lambda: f.image_bytes("RGB", fmt="PNG"),
    "min_side_8": lambda: f.image_bytes("RGB", size=(8, 100)),
}


@pytest.mark.parametrize("name", sorted(VALID_IMAGES))
def test_valid_images_pass_and_load_as_rgb(name):
    data = VALID_IMAGES[name]()
    assert validate_image(f"images/{name}__r_0.jpg", data) is None
    image = decode_rgb(data)
    assert image.mode == "RGB"
    assert image.size[0] >= 8 and image.size[1] >= 8


def invalid_images():
    jpeg = f.image_bytes("RGB", size=(64, 64), fmt="JPEG")
    png = f.image_bytes("RGB", size=(64, 64))
    return {
        "zero_bytes": (b"", "empty_image"),
        "text_named_jpg": (b"this is not an image, just text\n" * 10, "not_an_image"),
        "html_named_jpg": (b"<html><body>404 Not Found</body></html>", "not_an_image"),
        "gif_not_allowed": (f.image_bytes("P", fmt="GIF"), "not_an_image"),
        "truncated_jpeg": (jpeg[: len(jpeg) // 2], "corrupt_image"),
        "truncated_png": (png[: len(png) // 2], "corrupt_image"),
        "png_header_only": (png[:40], "corrupt_image"),
        "png_bad_crc": (png[:-20] + bytes(b ^ 0xFF for b in png[-20:-12]) + png[-12:], "corrupt_image"),
        "one_by_one": (f.image_bytes("RGB", size=(1, 1)), "image_too_small"),
        "seven_wide": (f.image_bytes("RGB", size=(7, 300)), "image_too_small"),
        "bomb_20000x20000": (f.bomb_png(), "image_too_large"),
    }


@pytest.mark.parametrize("name", sorted(invalid_images()))
def test_invalid_images_are_quarantined_with_reason(name):
    data, reason = invalid_images()[name]
    record = validate_image(f"images/{name}__r_0.jpg", data)
    assert record is not None
    assert (record.source, record.reason) == (f"images/{name}__r_0.jpg", reason)


def test_bomb_limit_is_explicit_not_pils_global(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # PIL's own guard switched off
    assert len(f.bomb_png()) < 200_000  # cheap to craft: the test never decodes 400 MP
    assert validate_image("k", f.bomb_png()).reason == "image_too_large"
    small = f.image_bytes("RGB", size=(20, 20))
    assert validate_image("k", small, max_pixels=399).reason == "image_too_large"
    assert validate_image("k", small, max_pixels=400) is None
    with pytest.raises(ValueError):
        decode_rgb(f.bomb_png())


def test_decode_rgb_composites_alpha_on_white_and_applies_exif():
    rgba = decode_rgb(f.rgba_png((16, 16)))
    assert rgba.getpixel((0, 0)) == (255, 255, 255)  # transparent -> white, not red
    assert rgba.getpixel((15, 0)) == (0, 0, 255)
    assert decode_rgb(f.palette_png_with_transparency()).getpixel((3, 3)) == (255, 255, 255)
    rotated = decode_rgb(f.exif_rotated_jpeg((40, 20), orientation=6))
    assert rotated.size == (20, 40)


def test_decode_rgb_scales_16_bit_instead_of_clipping():
    gray = decode_rgb(f.gray16_png(value=32896)).getpixel((0, 0))
    assert gray == (128, 128, 128)  # 32896 / 257; a plain convert() would give 255


def test_decode_rgb_converts_cmyk():
    buf = BytesIO()
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(buf, "JPEG")  # pure red in CMYK
    red = decode_rgb(buf.getvalue()).getpixel((8, 8))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
