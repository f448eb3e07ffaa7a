"""One decode-to-RGB for every path: every image mode gives the same pixels to validation,
augmentation, training, evaluation, search, the image tensor cache and the report's thumbnails.

Each path is fed a photo in an awkward mode and the same photo already decoded by
``decode_rgb`` (saved as a plain RGB PNG); both must come out pixel for pixel the same.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

from clipfood_assets.data import trusted
from clipfood_assets.data.augment import render_variants
from clipfood_assets.data.augment_config import AugmentationConfig
from clipfood_assets.data.decode import BACKGROUND_RGB, DECODER_VERSION, decode_rgb
from clipfood_assets.modeling.embed import ImagePreprocessor, embed_images, iter_uint8_batches
from clipfood_assets.modeling.search import RunSearcher
from clipfood_assets.modeling.image_decode import decode_resize_crop, resize_crop_of
from clipfood_assets.modeling.image_store import TOLERANCE, store_signature
from clipfood_assets.modeling.images import DecodedImages
from clipfood_assets.reporting.examples_figure import ThumbnailCache

W, H = 96, 80  # larger than the 72 px thumbnail, so no path scales the JPEG decode differently


def _save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _photo(seed: int = 0) -> np.ndarray:
    """A smooth colour photo with some texture: resizing and JPEG keep it meaningful."""
    y, x = np.mgrid[0:H, 0:W]
    rng = np.random.default_rng(seed)
    rgb = np.stack([x * 255 / W, y * 255 / H, (x + y) * 127 / (W + H) + 64], axis=-1)
    return np.clip(rgb + rng.normal(0, 12, rgb.shape), 0, 255).astype(np.uint8)


def _alpha() -> np.ndarray:
    """Transparent left third, half-transparent middle, opaque right third."""
    alpha = np.full((H, W), 255, dtype=np.uint8)
    alpha[:, : W // 3] = 0
    alpha[:, W // 3 : 2 * W // 3] = 128
    return alpha


def gray16_png() -> bytes:
    # Issue 11 input 3: a 16-bit grayscale photo whose 8-bit mean is about 115.
    ramp = np.linspace(30 * 257, 200 * 257, W * H).reshape(H, W).astype(np.uint16)
    return _save(Image.fromarray(ramp), "PNG")


def rgba_png() -> bytes:
    # Issue 11 input 4: a transparent PNG (transparent pixels hold black, as most editors save them).
    rgba = np.dstack([_photo(), _alpha()])
    rgba[_alpha() == 0, :3] = 0
    return _save(Image.fromarray(rgba, "RGBA"), "PNG")


def palette_png_with_transparency() -> bytes:
    image = Image.fromarray(_photo()).quantize(32)
    return _save(image, "PNG", transparency=bytes([0] * 4 + [255] * 28))  # 4 palette entries transparent


def cmyk_jpeg() -> bytes:
    return _save(Image.fromarray(_photo()).convert("CMYK"), "JPEG", quality=95)


def la_png() -> bytes:
    gray = Image.fromarray(_photo()).convert("L")
    return _save(Image.merge("LA", (gray, Image.fromarray(_alpha()))), "PNG")


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees clockwise
    return _save(Image.fromarray(_photo()), "JPEG", quality=95, exif=exif.tobytes())


def webp_with_alpha() -> bytes:
    return _save(Image.fromarray(np.dstack([_photo(), _alpha()]), "RGBA"), "WEBP", lossless=True)


def gray16_with_transparent_value() -> bytes:
    ramp = np.linspace(0, 65535, W * H).reshape(H, W).astype(np.uint16)
    ramp[:10] = 1234
    return _save(Image.fromarray(ramp), "PNG", transparency=1234)


def rgb_with_transparent_colour() -> bytes:
    photo = _photo()
    photo[:10] = (1, 2, 3)
    return _save(Image.fromarray(photo), "PNG", transparency=(1, 2, 3))


def one_bit_png() -> bytes:
    return _save(Image.fromarray(_photo()).convert("1"), "PNG")


MODES = {
    "16-bit gray": gray16_png,
    "RGBA": rgba_png,
    "palette + transparency": palette_png_with_transparency,
    "CMYK": cmyk_jpeg,
    "gray + alpha": la_png,
    "EXIF-rotated": exif_rotated_jpeg,
    "WEBP + alpha": webp_with_alpha,
    "16-bit gray + tRNS": gray16_with_transparent_value,
    "RGB + tRNS": rgb_with_transparent_colour,
    "1-bit": one_bit_png,
}


@pytest.fixture(params=sorted(MODES), scope="module")
def photo(request) -> tuple[str, bytes, bytes]:
    """(mode, the photo's bytes, the same photo decoded once and saved as plain RGB PNG)."""
    data = MODES[request.param]()
    return request.param, data, _save(decode_rgb(data), "PNG")


@pytest.fixture(scope="module")
def processor():
    return CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=98, eos_token_id=99,
                         pad_token_id=99),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    return CLIPModel(config).eval()


# --- the decoder itself --------------------------------------------------------------------------


def test_decoded_pixels_are_right_for_every_mode():
    gray16 = np.asarray(decode_rgb(gray16_png()), dtype=np.float64)
    assert gray16.mean() == pytest.approx(115.0, abs=0.5)  # was 255.0 (all white) on the model's path
    for make in (rgba_png, la_png, webp_with_alpha):
        pixels = np.asarray(decode_rgb(make()))
        assert (pixels[:, : W // 3] == BACKGROUND_RGB).all(), make.__name__  # transparent: the background
        assert not (pixels[:, 2 * W // 3 :] == BACKGROUND_RGB).all(), make.__name__  # opaque: the photo
    assert (np.asarray(decode_rgb(gray16_with_transparent_value()))[:10] == BACKGROUND_RGB).all()
    assert (np.asarray(decode_rgb(rgb_with_transparent_colour()))[:10] == BACKGROUND_RGB).all()
    palette = np.asarray(decode_rgb(palette_png_with_transparency()))
    assert (palette == BACKGROUND_RGB).all(axis=-1).any()
    assert decode_rgb(exif_rotated_jpeg()).size == (H, W)  # upright: portrait
    cmyk = np.asarray(decode_rgb(cmyk_jpeg()), dtype=np.float64)
    assert np.abs(cmyk - _photo()).mean() < 8  # CMYK round trip: the same photo
    for make in MODES.values():
        image = decode_rgb(make())
        assert image.mode == "RGB"


# --- every path, every mode ----------------------------------------------------------------------


def test_validation_decodes_with_the_one_decoder(photo, monkeypatch):
    mode, data, reference = photo
    seen = []

    def spy(raw, **kwargs):
        seen.append(decode_rgb(raw, **kwargs))
        return seen[-1]

    monkeypatch.setattr(trusted, "decode_rgb", spy)
    assert trusted.validate_image("images/x__r_0.png", data) is None, mode
    assert len(seen) == 1 and np.array_equal(np.asarray(seen[0]), np.asarray(Image.open(io.BytesIO(reference))))


def test_augmentation_sees_the_same_pixels(photo):
    mode, data, reference = photo
    cfg = AugmentationConfig()
    assert render_variants(data, [7, 8], cfg) == render_variants(reference, [7, 8], cfg), mode


def test_training_and_the_packed_store_see_the_same_pixels(photo, processor):
    mode, data, reference = photo
    preprocessor = ImagePreprocessor(processor)
    expected = preprocessor.to_uint8(reference)
    images = DecodedImages({"photo": data}.__getitem__, preprocessor, workers=1)
    try:
        assert torch.equal(images.get(["photo"])[0], expected), mode
    finally:
        images.close()
    # The store's decoder: DCT-scaled JPEG decoding (within the store's tolerance), every other
    # format decoded exactly as training decodes it.
    stored = torch.from_numpy(decode_resize_crop(data, resize_crop_of(preprocessor)))
    difference = (stored.int() - expected.int()).abs()
    if Image.open(io.BytesIO(data)).format == "JPEG":
        assert float(difference.float().mean()) <= TOLERANCE["mean_abs"], mode
        assert int(difference.max()) <= TOLERANCE["max_abs"], mode
    else:
        assert torch.equal(stored, expected), mode
    assert DECODER_VERSION in str(store_signature(processor))  # pixels of another decoder are never reused


def test_evaluation_and_search_see_the_same_pixels(photo, processor, model):
    mode, data, reference = photo
    preprocessor = ImagePreprocessor(processor)
    blobs = {"photo": data, "reference": reference}
    got = list(iter_uint8_batches(["photo", "reference"], blobs.__getitem__, preprocessor, batch_size=2, workers=2))
    assert torch.equal(got[0][0], got[0][1]), mode

    embedded, _ = embed_images(model, processor, ["photo", "reference"], blobs.__getitem__, batch_size=2,
                               device="cpu")
    assert np.allclose(embedded[0], embedded[1], atol=1e-6), mode
    captions = pd.DataFrame({"caption": ["a", "b", "c"], "recipe_id": ["1", "2", "3"]})
    searcher = RunSearcher(model, processor, torch.device("cpu"), pd.DataFrame(), np.zeros((0, 16), np.float32),
                           captions, np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32))
    scores = [[hit["score"] for hit in searcher.captions_for_image(blob, k=3)] for blob in (data, reference)]
    assert scores[0] == pytest.approx(scores[1], abs=1e-6), mode


def test_report_thumbnails_show_the_same_pixels(photo):
    mode, data, reference = photo
    blobs = {"photo": data, "reference": reference}
    thumbnails = ThumbnailCache(blobs.__getitem__)
    assert thumbnails.missing == []
    assert np.array_equal(np.asarray(thumbnails.get("photo")), np.asarray(thumbnails.get("reference"))), mode
    assert thumbnails.missing == []


def test_the_issue_16_bit_photo_reaches_the_model_as_the_photo_not_white(processor):
    preprocessor = ImagePreprocessor(processor)
    pixels = preprocessor.to_uint8(gray16_png()).float()
    assert pixels.mean().item() == pytest.approx(115.0, abs=2.0)  # the issue measured 255.0 here
