"""The preprocessed_images asset materialized in-process (local lake and the S3 server), its metadata,
an incremental second materialization, and the model assets reading pixels from the store."""

from __future__ import annotations

import io
from types import SimpleNamespace

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from clipfood_assets.definitions import build_definitions, build_resources
from clipfood_assets.defs.model_zone.image_store import opened_images, preprocessed_images
from clipfood_assets.modeling.clip import load_processor
from clipfood_assets.lake import LocalLake
from clipfood_assets.lake.layout import FINE_TUNING_ZONE, PREPROCESSED_IMAGES_PREFIX
from clipfood_assets.modeling.image_store import PackedImageStore


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    from clipfood_assets.modeling.base_model import build_base_model

    return build_base_model(tmp_path_factory.mktemp("base") / "model", seed=0, pretrain_steps=0)


def _jpeg(seed: int, size=(72, 64)) -> bytes:
    y, x = np.mgrid[0:size[1], 0:size[0]]
    pixels = np.stack([x * 3 % 256, y * 3 % 256, np.full_like(x, seed * 37 % 256)], -1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


class _Log:
    def __init__(self):
        self.lines = []

    def info(self, text):
        self.lines.append(("info", text))

    def warning(self, text):
        self.lines.append(("warning", text))


def _materialize(resources, instance):
    result = dg.materialize([preprocessed_images], resources=resources, instance=instance)
    assert result.success
    return result.asset_materializations_for_node("preprocessed_images")[0].metadata


def _value(meta, name):
    return getattr(meta[name], "value", meta[name])


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_materialize_then_update(backend, tmp_path, monkeypatch, base_model, request):
    if backend == "s3":
        server = request.getfixturevalue("s3_server")
        lake = request.getfixturevalue("s3_lake")
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        lake_dir = None
    else:
        monkeypatch.delenv("MINIO_ENDPOINT", raising=False)
        lake_dir = str(tmp_path / "lake")
        lake = LocalLake(lake_dir)
    images = {f"images/dish__r{i}_0.jpg": _jpeg(i) for i in range(5)}
    images["augmented_images/dish__r0_aug1.jpg"] = _jpeg(9)
    images["images/broken__r7_0.jpg"] = _jpeg(7)[:120]
    for key, data in images.items():
        lake.put_bytes(FINE_TUNING_ZONE, key, data)
    resources = build_resources(lake_dir=lake_dir, base_model=str(base_model), device="cpu")
    instance = dg.DagsterInstance.ephemeral()

    meta = _materialize(resources, instance)
    assert (_value(meta, "images"), _value(meta, "new"), _value(meta, "reused"), _value(meta, "failures")) == (6, 7, 0, 1)
    assert _value(meta, "failures by reason") == {"corrupt": 1}
    assert "images/broken__r7_0.jpg" in _value(meta, "failed images")
    digest = _value(meta, "signature digest")
    assert f"{PREPROCESSED_IMAGES_PREFIX}{digest}" in _value(meta, "uri")
    assert _value(meta, "shards") >= 1 and _value(meta, "size_bytes") > 0 and _value(meta, "decode img/s") > 0

    lake.put_bytes(FINE_TUNING_ZONE, "images/dish__r5_0.jpg", _jpeg(5))
    lake.delete(FINE_TUNING_ZONE, "images/dish__r1_0.jpg")
    meta = _materialize(resources, instance)
    assert (_value(meta, "new"), _value(meta, "removed"), _value(meta, "reused"), _value(meta, "images")) == (1, 1, 5, 6)
    assert _value(meta, "shards written") == 1

    processor = load_processor(str(base_model))
    log = SimpleNamespace(log=_Log())
    with opened_images(log, lake, processor, ["images/dish__r5_0.jpg"]) as source:
        assert isinstance(source, PackedImageStore)
        assert source.get(["images/dish__r5_0.jpg"]).shape[0] == 1
    with opened_images(log, lake, processor, ["images/not-in-store.jpg"]) as source:
        assert callable(source) and not isinstance(source, PackedImageStore)  # the JPEG loader
    assert any(level == "warning" and "not-in-store" in text for level, text in log.log.lines)


def test_without_a_store_the_model_assets_decode_jpegs(local_lake, base_model):
    log = SimpleNamespace(log=_Log())
    local_lake.put_bytes(FINE_TUNING_ZONE, "images/a__r1_0.jpg", _jpeg(1))
    with opened_images(log, local_lake, load_processor(str(base_model)), ["images/a__r1_0.jpg"]) as source:
        assert source("images/a__r1_0.jpg") == _jpeg(1)
    assert "materialize the preprocessed_images asset" in log.log.lines[0][1]


def test_the_refresh_job_builds_the_store_and_the_baseline_reads_it(tmp_path, monkeypatch, base_model):
    from clipfood_assets.cli import write_synthetic_zone

    monkeypatch.delenv("MINIO_ENDPOINT", raising=False)
    lake = LocalLake(tmp_path / "lake")
    write_synthetic_zone(lake, n_recipes=10, seed=3)
    defs = build_definitions(lake_dir=str(tmp_path / "lake"), base_model=str(base_model), device="cpu")
    instance = dg.DagsterInstance.ephemeral()
    job = defs.resolve_job_def("refresh_from_trusted_zone")
    result = job.execute_in_process(instance=instance)
    assert result.success
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert {"preprocessed_images", "baseline_results"} <= materialized
    messages = [r.user_message for r in instance.all_logs(result.run_id) if r.step_key == "baseline_results"]
    assert any("reading pixels from PackedImageStore(" in m for m in messages), messages
    assert not any("decoding the JPEGs instead" in m for m in messages)
