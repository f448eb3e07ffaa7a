"""`clipfood synth --scale`: a zone of N recipes x k photos, each photo its own key and ETag, decodable,
and a trusted zone the data zone reads whole, on the local lake and on the S3 server."""

from __future__ import annotations

import hashlib
import io
import json
import re

from PIL import Image

from clipfood_assets.cli import main, write_scale_zone
from clipfood_assets.data.prepare import read_positive_pairs
from clipfood_assets.lake import LocalLake
from clipfood_assets.lake.layout import RECIPES_KEY, TRUSTED_IMAGES_PREFIX, TRUSTED_ZONE
from clipfood_assets.synthetic import SCALE_BASE_PHOTOS, SCALE_PHOTO_PX, scale_trusted_zone

ADSDB_KEY = re.compile(
    r"^images/image\$adsdb\$\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ\$([0-9a-f]{32})__([0-9a-f]{10})_(\d+)\.jpg$")


def test_a_zone_at_scale_is_a_zone_the_data_zone_reads_whole(lake):
    summary = write_scale_zone(lake, n_recipes=40, photos_per_recipe=3, seed=1, workers=4)
    assert (summary["recipes"], summary["images"]) == (40, 120)
    listed = list(lake.list(TRUSTED_ZONE, TRUSTED_IMAGES_PREFIX))
    assert len(listed) == 120 and len({o.etag for o in listed}) == 120  # every photo its own identity
    rows = [json.loads(line) for line in lake.get_bytes(TRUSTED_ZONE, RECIPES_KEY).splitlines()]
    ids = {row["id"] for row in rows}
    assert len(ids) == 40
    for obj in listed[:10]:
        md5, recipe_id, _ = ADSDB_KEY.match(obj.key).groups()
        data = lake.get_bytes(TRUSTED_ZONE, obj.key)
        assert md5 == hashlib.md5(data).hexdigest() and recipe_id in ids
        assert Image.open(io.BytesIO(data)).size == (SCALE_PHOTO_PX, SCALE_PHOTO_PX)
    pairs = read_positive_pairs(lake, workers=2)
    assert pairs.quarantine.empty and len(pairs.train) + len(pairs.validation) + len(pairs.test) == 120


def test_photos_reuse_a_few_pictures_with_their_own_bytes():
    _, images = scale_trusted_zone(25, photos_per_recipe=2)
    photos = list(images)
    pixels = {Image.open(io.BytesIO(data)).tobytes() for _, data in photos}
    assert len({data for _, data in photos}) == 50 and len(pixels) == SCALE_BASE_PHOTOS


def test_synth_scale_on_the_command_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MINIO_ENDPOINT", raising=False)
    monkeypatch.setenv("CLIPFOOD_LAKE_DIR", str(tmp_path / "lake"))
    main(["synth", "--scale", "--recipes", "30", "--photos", "2", "--workers", "2"])
    assert "30 recipes, 60 images" in capsys.readouterr().out
    assert sum(1 for _ in LocalLake(tmp_path / "lake").list(TRUSTED_ZONE, TRUSTED_IMAGES_PREFIX)) == 60
