"""Issue 11's failing inputs, each through the real `prepare_data` job on the local lake AND the S3 server.

1 ids that look like numbers, 2 a lone surrogate, 3+4 16-bit and transparent photos, 5 multipart
ETags, 6 an emptied recipes.jsonl (the refresh guard); plus folder markers, and hostile variants.
"""

from __future__ import annotations

import json

import boto3
import dagster as dg
import numpy as np
import pytest

from clipfood_assets.data.decode import BACKGROUND_RGB
from clipfood_assets.defs.data_zone.assets import accept_degenerate_refresh_config
from clipfood_assets.definitions import build_definitions
from clipfood_assets.lake import LocalLake
from clipfood_assets.lake.artifacts import decode
from clipfood_assets.lake.layout import (
    AUGMENTED_PAIRS_KEY,
    FINE_TUNING_ZONE,
    QUARANTINE_KEY,
    RECIPES_KEY,
    TEST_PAIRS_KEY,
    TRAIN_PAIRS_KEY,
    TRUSTED_ZONE,
    VALIDATION_PAIRS_KEY,
)

from ..data import factories as f
from ..data.test_copy_identity import _multipart_put


class Zone:
    """A trusted zone on one backend and the platform's definitions pointed at it."""

    def __init__(self, backend: str, lake, s3_server, lake_dir: str | None):
        self.backend, self.lake, self.s3_server = backend, lake, s3_server
        self.defs = build_definitions(lake_dir=lake_dir, base_model="not-used-by-the-data-zone")
        self.instance = dg.DagsterInstance.ephemeral()

    def write(self, recipes: list[dict] | bytes, images: dict[str, bytes]) -> None:
        for key, data in images.items():
            self.lake.put_bytes(TRUSTED_ZONE, key, data)
        jsonl = recipes if isinstance(recipes, bytes) else "".join(json.dumps(r) + "\n" for r in recipes).encode()
        self.lake.put_bytes(TRUSTED_ZONE, RECIPES_KEY, jsonl)

    def run(self, ops: dict | None = None, *, expect_success: bool = True):
        job = self.defs.resolve_job_def("prepare_data")
        result = job.execute_in_process(instance=self.instance, raise_on_error=False,
                                        run_config={"ops": ops} if ops else None)
        if expect_success:
            assert result.success, _failure(result)
            failed = [e.check_name for e in result.get_asset_check_evaluations() if not e.passed]
            assert failed == [], failed
        return result

    def table(self, key: str):
        return decode(key, self.lake.get_bytes(FINE_TUNING_ZONE, key))

    def snapshot(self) -> dict[str, tuple[int, bytes]]:
        """Every object of the fine-tuning zone with its size and bytes."""
        return {o.key: (o.size, self.lake.get_bytes(FINE_TUNING_ZONE, o.key)) for o in self.lake.list(FINE_TUNING_ZONE)}


def _failure(result) -> str:
    messages = []
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data.error:
            error = event.step_failure_data.error
            while error is not None:
                messages.append(error.message.strip())
                error = error.cause
    return " | ".join(messages)


@pytest.fixture(params=["local", "s3"])
def zone(request, monkeypatch, tmp_path, s3_server) -> Zone:
    if request.param == "s3":
        for name, value in s3_server.env().items():
            monkeypatch.setenv(name, value)
        lake = request.getfixturevalue("s3_lake")
        return Zone("s3", lake, s3_server, None)
    monkeypatch.delenv("MINIO_ENDPOINT", raising=False)
    lake_dir = str(tmp_path / "lake")
    return Zone("local", LocalLake(lake_dir), s3_server, lake_dir)


def _recipes(ids, prefix: str = "Dish") -> list[dict]:
    return [{"id": recipe_id, "title_text_raw": f"{prefix} number {i}"} for i, recipe_id in enumerate(ids)]


def _images(ids, per_recipe: int = 1) -> dict[str, bytes]:
    return {
        f"images/dish__{recipe_id}_{n}.jpg": f.image_bytes("RGB", (32, 32), "JPEG", seed=i * 10 + n)
        for i, recipe_id in enumerate(ids) for n in range(per_recipe)
    }


def _paired_ids(zone: Zone) -> list[str]:
    return sorted([*zone.table(TRAIN_PAIRS_KEY)["recipe_id"], *zone.table(TEST_PAIRS_KEY)["recipe_id"],
                   *zone.table(VALIDATION_PAIRS_KEY)["recipe_id"]])


# --- 1: ids that look like numbers ---------------------------------------------------------------


def test_integer_ids_and_ids_that_look_like_numbers_stay_distinct_strings(zone):
    # The issue: JSON integer ids 1..20 failed negatives_cross_recipe (int64 vs str); "1", "01",
    # "001", "0001" were read back as one number and tripped the leakage check.
    lookalikes = ["01", "001", "0001", "0012e5", "1200000", "1e5", "0001e52345", "0004073370", "-1", "NaN", "NA"]
    recipes = _recipes(range(1, 21)) + _recipes(lookalikes, prefix="Lookalike")
    images = {**_images([str(i) for i in range(1, 21)]), **_images(lookalikes)}
    zone.write(recipes, images)
    zone.run()  # every blocking check (leakage, negatives cross recipe...) passes
    expected = sorted([str(i) for i in range(1, 21)] + lookalikes)
    assert _paired_ids(zone) == expected
    augmented = zone.table(AUGMENTED_PAIRS_KEY)
    assert set(augmented["recipe_id"]) <= set(expected) and str(augmented["recipe_id"].dtype) == "str"
    splits = [set(zone.table(key)["recipe_id"]) for key in (TRAIN_PAIRS_KEY, VALIDATION_PAIRS_KEY, TEST_PAIRS_KEY)]
    assert not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2])


def test_the_same_id_as_integer_and_as_string_is_one_recipe(zone):
    recipes = [{"id": 7, "title_text_raw": "Seven Layer Cake"}, {"id": "7", "title_text_raw": "Seven Layer Cake"},
               {"id": 8, "title_text_raw": "Eight Treasure Rice"}, {"id": "8", "title_text_raw": "Other Title"},
               *_recipes(["a1", "b2", "c3"])]
    zone.write(recipes, _images(["7", "8", "a1", "b2", "c3"]))
    zone.run()
    assert _paired_ids(zone) == ["7", "a1", "b2", "c3"]
    quarantine = zone.table(QUARANTINE_KEY)
    assert sorted(quarantine.loc[quarantine["reason"] == "conflicting_duplicate_id", "source"]) == [
        f"{RECIPES_KEY}:line 3", f"{RECIPES_KEY}:line 4"]


# --- 2: text that cannot be stored ----------------------------------------------------------------


def test_a_lone_surrogate_costs_its_record_not_the_run(zone):
    ids = [f.synthetic_id(i) for i in range(6)]
    recipes = _recipes(ids)
    recipes[2]["title_text_raw"] = "Mushroom Salad \ud83c"  # the input
    recipes[4]["id"] = "ab\udc00cd"  # the same kind in an id
    zone.write(recipes, _images(ids))
    zone.run()
    assert _paired_ids(zone) == sorted(ids[:2] + [ids[3], ids[5]])
    quarantine = zone.table(QUARANTINE_KEY)
    assert quarantine.loc[quarantine["reason"] == "unencodable_text", "source"].tolist() == [
        f"{RECIPES_KEY}:line 3", f"{RECIPES_KEY}:line 5"]
    assert set(quarantine.loc[quarantine["reason"] == "unknown_recipe", "source"]) == {
        f"images/dish__{ids[2]}_0.jpg", f"images/dish__{ids[4]}_0.jpg"}


# --- 3 + 4: 16-bit and transparent photos ----------------------------------------------------------


def test_16_bit_and_transparent_photos_reach_the_data_zone_as_the_same_photo(zone):
    from clipfood_assets_tests.test_one_decoder import gray16_png, rgba_png

    ids = [f.synthetic_id(i) for i in range(5)]
    images = _images(ids)
    images[f"images/gray16__{ids[0]}_1.png"] = gray16_png()
    images[f"images/alpha__{ids[1]}_1.png"] = rgba_png()
    images[f"images/palette__{ids[2]}_1.png"] = f.palette_png_with_transparency((32, 32))
    images[f"images/cmyk__{ids[3]}_1.jpg"] = f.image_bytes("CMYK", (32, 32), "JPEG")
    zone.write(_recipes(ids), images)
    zone.run()
    assert len(zone.table(QUARANTINE_KEY)) == 0
    keys = {*zone.table(TRAIN_PAIRS_KEY)["image_key"], *zone.table(TEST_PAIRS_KEY)["image_key"],
            *zone.table(VALIDATION_PAIRS_KEY)["image_key"]}
    assert {k for k in images if k.endswith(".png") or "cmyk" in k} <= keys

    from clipfood_assets.data.decode import decode_rgb

    photo = np.asarray(decode_rgb(zone.lake.get_bytes(FINE_TUNING_ZONE, f"images/alpha__{ids[1]}_1.png")))
    assert (photo[:, :10] == BACKGROUND_RGB).all()  # the transparent third, on the one background
    gray = np.asarray(decode_rgb(zone.lake.get_bytes(FINE_TUNING_ZONE, f"images/gray16__{ids[0]}_1.png")))
    assert abs(gray.mean() - 115.0) < 1.0  # not white


# --- 5: multipart ETags -----------------------------------------------------------------------------


def test_an_unchanged_zone_is_not_copied_again_even_with_multipart_etags(zone):
    ids = [f.synthetic_id(i) for i in range(4)]
    images = _images(ids)
    # On S3 two photos arrive as multipart uploads (ETag "<md5>-2"): padding after the JPEG's end
    # takes them past the 5 MiB first part; decoders ignore it.
    big = {key: data + b"\0" * (5 * 1024 * 1024) for key, data in list(images.items())[:2]}
    for key, data in images.items():
        if zone.backend == "s3" and key in big:
            _multipart_put(zone.s3_server, key, big[key])
        else:
            zone.lake.put_bytes(TRUSTED_ZONE, key, big.get(key, data))
    zone.write(_recipes(ids), {})
    if zone.backend == "s3":
        assert sum(o.etag.endswith("-2") for o in zone.lake.list(TRUSTED_ZONE, "images/")) == 2

    def copied(result) -> int:
        return result.asset_materializations_for_node("fine_tuning_images")[0].metadata["copied"].value

    assert copied(zone.run()) == 4
    assert copied(zone.run()) == 0  # the issue: 2 re-copied on every refresh


# --- 6: the refresh guard ----------------------------------------------------------------------------


def _good_zone(zone: Zone, n: int = 10) -> list[str]:
    ids = [f.synthetic_id(i) for i in range(n)]
    zone.write(_recipes(ids), _images(ids))
    zone.run()
    return ids


def _refused(zone: Zone, ops: dict | None = None) -> str:
    before = zone.snapshot()
    result = zone.run(ops, expect_success=False)
    assert not result.success
    message = _failure(result)
    assert "refusing to refresh the data zone" in message and "Nothing was written or deleted" in message
    assert "--force" in message
    assert zone.snapshot() == before  # not one object written, changed or deleted
    return message


@pytest.mark.parametrize(
    "damage",
    ["emptied", "garbage", "half", "one_recipe", "no_images"],
)
def test_a_degenerate_refresh_is_stopped_before_anything_is_written(zone, damage):
    ids = _good_zone(zone)
    jsonl = "".join(json.dumps(r) + "\n" for r in _recipes(ids)).encode()
    if damage == "emptied":  # the input: a failed upstream write leaves 0 bytes
        zone.lake.put_bytes(TRUSTED_ZONE, RECIPES_KEY, b"")
    elif damage == "garbage":  # a writer that produced no usable line
        zone.lake.put_bytes(TRUSTED_ZONE, RECIPES_KEY, b"\x00\xff not json\n" * 50)
    elif damage == "half":  # truncated mid-file: 60 % of the recipes gone
        zone.lake.put_bytes(TRUSTED_ZONE, RECIPES_KEY, b"".join(jsonl.splitlines(keepends=True)[:4]))
    elif damage == "one_recipe":  # the split can no longer hold a test set
        zone.lake.put_bytes(TRUSTED_ZONE, RECIPES_KEY, jsonl.splitlines(keepends=True)[0])
    else:
        for key in _images(ids):
            zone.lake.delete(TRUSTED_ZONE, key)
    message = _refused(zone)
    if damage == "emptied":
        assert "train 8 -> 0, test 2 -> 0" in message and "0 recipes" in message


def test_the_guard_fraction_is_configurable_and_force_accepts(zone):
    ids = _good_zone(zone)
    zone.lake.put_bytes(TRUSTED_ZONE, RECIPES_KEY,
                        "".join(json.dumps(r) + "\n" for r in _recipes(ids[:7])).encode())  # 30 % fewer
    strict = {"positive_pairs": {"config": {"max_pair_drop_fraction": 0.1}}}
    assert "drop by 30%" in _refused(zone, strict)
    zone.run()  # the default allows a 30 % drop
    assert len(_paired_ids(zone)) == 7

    zone.lake.put_bytes(TRUSTED_ZONE, RECIPES_KEY, b"")
    _refused(zone)
    zone.run(accept_degenerate_refresh_config(), expect_success=False)  # what --force sets
    assert len(zone.table(TRAIN_PAIRS_KEY)) == 0  # accepted, so written


def test_stale_augmented_images_are_removed_only_after_the_new_csv_is_stored(zone, monkeypatch):
    ids = _good_zone(zone)
    zone.lake.put_bytes(TRUSTED_ZONE, RECIPES_KEY,
                        "".join(json.dumps(r) + "\n" for r in _recipes(ids[:8])).encode())
    events: list[str] = []
    real = zone.lake

    class Recording:
        def __getattr__(self, name):
            return getattr(real, name)

        def put_bytes(self, bucket, key, data, content_type=None):
            events.append(f"put {key}")
            return real.put_bytes(bucket, key, data, content_type)

        def delete(self, bucket, key):
            events.append(f"delete {key}")
            return real.delete(bucket, key)

    from clipfood_assets.defs.resources import LakeResource

    monkeypatch.setattr(LakeResource, "get_lake", lambda self: Recording())
    zone.run()
    deletes = [i for i, e in enumerate(events) if e.startswith("delete augmented_images/")]
    image_deletes = [i for i, e in enumerate(events) if e.startswith("delete images/")]
    assert deletes and image_deletes
    assert min(deletes) > events.index(f"put {AUGMENTED_PAIRS_KEY}")
    assert min(image_deletes) > max(i for i, e in enumerate(events) if e == f"put {TRAIN_PAIRS_KEY}")


# --- folder markers --------------------------------------------------------------------------------


def test_folder_markers_are_skipped_and_counted_not_quarantined(zone, tmp_path):
    ids = [f.synthetic_id(i) for i in range(4)]
    zone.write(_recipes(ids), _images(ids))
    markers = ["images/", "images/sub/", "images/sub/deeper/"]
    if zone.backend == "s3":
        raw = boto3.client("s3", endpoint_url=zone.s3_server.url, region_name="us-east-1")
        for key in markers:
            raw.put_object(Bucket=TRUSTED_ZONE, Key=key, Body=b"")
        raw.put_object(Bucket=TRUSTED_ZONE, Key="images/odd/", Body=b"not a marker: it has bytes")
    else:  # a local lake's folders are directories, never objects
        (zone.lake.root / TRUSTED_ZONE / "images" / "sub" / "deeper").mkdir(parents=True)
    result = zone.run()
    quarantine = zone.table(QUARANTINE_KEY)
    assert not set(quarantine["source"]) & set(markers)
    skipped = result.asset_materializations_for_node("positive_pairs")[0].metadata["folder markers skipped"].value
    assert skipped == (3 if zone.backend == "s3" else 0)
    if zone.backend == "s3":
        assert quarantine[["source", "reason"]].values.tolist() == [["images/odd/", "bad_extension"]]
    assert _paired_ids(zone) == sorted(ids)



# --- the ADSDB zone format --------------------------------------------------------------------------


def test_the_data_zone_runs_on_an_adsdb_zone(zone):
    from clipfood_assets.cli import write_synthetic_zone

    summary = write_synthetic_zone(zone.lake, 10, seed=4, zone_format="adsdb")
    result = zone.run()
    assert len(zone.table(QUARANTINE_KEY)) == 0
    pairs = [*zone.table(TRAIN_PAIRS_KEY)["image_key"], *zone.table(TEST_PAIRS_KEY)["image_key"],
             *zone.table(VALIDATION_PAIRS_KEY)["image_key"]]
    assert len(pairs) == summary["images"] and all(k.startswith("images/image$adsdb$") for k in pairs)
    ids = _paired_ids(zone)
    assert any(i.isdigit() for i in ids) and any("e" in i and i.replace("e", "").isdigit() for i in ids)
    assert {o.key for o in zone.lake.list(FINE_TUNING_ZONE, "images/")} == set(pairs)
    assert any(k.startswith("augmented_images/image$adsdb$") for k in zone.table(AUGMENTED_PAIRS_KEY)["image_key"])
    assert result.asset_materializations_for_node("fine_tuning_images")[0].metadata["copied"].value == len(pairs)


# --- the CLI's --force reaches the guard ------------------------------------------------------------


@pytest.mark.parametrize("force", [False, True])
def test_materialize_force_accepts_through_the_refresh_jobs_config(force, tmp_path, monkeypatch):
    import clipfood_assets.cli as cli

    monkeypatch.delenv("MINIO_ENDPOINT", raising=False)
    calls = []
    monkeypatch.setattr(cli, "_run_job", lambda defs, instance, name, ops=None, **kw: calls.append((defs, name, ops)))
    cli.materialize(base_model="not-used", instance=dg.DagsterInstance.ephemeral(), lake_dir=str(tmp_path / "lake"),
                    force=force)
    defs, name, ops = calls[0]
    assert name == "refresh_from_trusted_zone"
    assert ops == (accept_degenerate_refresh_config() if force else None)
    if force:  # the run config is one the real refresh job accepts
        assert dg.validate_run_config(defs.resolve_job_def(name), {"ops": ops})
