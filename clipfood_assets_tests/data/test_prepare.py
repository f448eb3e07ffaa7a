"""The data zone against real lakes: a salted trusted zone, storage outages, idempotent copies."""

import boto3
import pytest

from clipfood_assets.data.prepare import copy_images, read_positive_pairs
from clipfood_assets.lake import LakeError, LocalLake, UnsafeKey
from clipfood_assets.lake.layout import FINE_TUNING_ZONE, RECIPES_KEY, TRUSTED_ZONE

from .test_salted import build_salted_zone


def _write_zone(lake, s3_server, jsonl, objects):
    """Write what a backend can hold; keys our lake refuses go in raw through boto3 on S3."""
    raw = None
    written_unsafe = set()
    for key, data in objects.items():
        try:
            lake.put_bytes(TRUSTED_ZONE, key, data)
        except UnsafeKey:
            if isinstance(lake, LocalLake):
                continue  # a filesystem cannot hold these names at all
            if "\x00" in key:
                continue  # not even S3 stores NUL in keys
            raw = raw or boto3.client("s3", endpoint_url=s3_server.url, region_name="us-east-1")
            raw.put_object(Bucket=TRUSTED_ZONE, Key=key, Body=data)
            written_unsafe.add(key)
    lake.put_bytes(TRUSTED_ZONE, RECIPES_KEY, jsonl)
    return written_unsafe


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_salted_zone_quarantines_every_bad_record_and_keeps_every_good_pair(backend, request, s3_server):
    lake = request.getfixturevalue("local_lake" if backend == "local" else "s3_lake")
    jsonl, objects, expected_pairs, expected_quarantine = build_salted_zone()
    _write_zone(lake, s3_server, jsonl, objects)
    result = read_positive_pairs(lake, workers=4, max_line_bytes=2_000)

    pairs = {tuple(r) for r in result.train[["recipe_id", "image_key", "caption"]].itertuples(index=False)}
    pairs |= {tuple(r) for r in result.test[["recipe_id", "image_key", "caption"]].itertuples(index=False)}
    pairs |= {tuple(r) for r in result.validation[["recipe_id", "image_key", "caption"]].itertuples(index=False)}
    assert pairs == set(expected_pairs.itertuples(index=False, name=None)), "a good pair was lost or a bad one let through"
    splits = [set(result.train["recipe_id"]), set(result.validation["recipe_id"]), set(result.test["recipe_id"])]
    assert all(split for split in splits)
    assert not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2])

    got = dict(zip(result.quarantine["source"], result.quarantine["reason"]))
    in_lake = {o.key for o in lake.list(TRUSTED_ZONE, "images/")}  # what the zone lists as images
    checked = 0
    for source, reason in expected_quarantine.items():
        if not source.startswith(RECIPES_KEY) and source not in in_lake:
            continue  # a key this backend cannot even hold (NUL, backslash, `..` on a filesystem)
        assert got.get(source) == reason, (source, got.get(source), reason)
        checked += 1
    assert checked >= len(expected_quarantine) - 6


class FlakyLake:
    """A real lake whose reads fail as if the server went down after the listing."""

    def __init__(self, lake):
        self._lake = lake

    def __getattr__(self, name):
        return getattr(self._lake, name)

    def get_bytes(self, bucket, key):
        raise LakeError(f"S3 server unreachable for s3://{bucket}/{key}")


def test_a_storage_outage_fails_the_run_instead_of_quarantining_good_images(local_lake, s3_server):
    jsonl, objects, _, _ = build_salted_zone()
    _write_zone(local_lake, s3_server, jsonl, objects)
    with pytest.raises(LakeError, match="unreachable"):
        read_positive_pairs(FlakyLake(local_lake), workers=2)


def test_missing_recipes_file_is_a_clear_error(local_lake):
    local_lake.put_bytes(TRUSTED_ZONE, "images/soup__aaaaaaaaaa_0.jpg", b"x")
    with pytest.raises(LakeError, match="has no .*recipes.jsonl"):
        read_positive_pairs(local_lake)


def test_copy_is_idempotent_and_mirrors_deletions(lake, s3_server):
    for i in range(6):
        lake.put_bytes(TRUSTED_ZONE, f"images/dish__r{i:09d}_0.jpg", f"jpeg {i}".encode())
    keys = [f"images/dish__r{i:09d}_0.jpg" for i in range(6)]
    first = copy_images(lake, keys, workers=4)
    assert (first.copied, first.skipped, first.deleted) == (6, 0, 0)
    again = copy_images(lake, keys, workers=4)
    assert (again.copied, again.skipped) == (0, 6)
    lake.put_bytes(TRUSTED_ZONE, keys[0], b"edited photo")
    changed = copy_images(lake, keys[:5], workers=4)
    assert (changed.copied, changed.skipped, changed.deleted) == (1, 4, 1)
    assert lake.get_bytes(FINE_TUNING_ZONE, keys[0]) == b"edited photo"
    assert sorted(o.key for o in lake.list(FINE_TUNING_ZONE, "images/")) == keys[:5]
    with pytest.raises(LakeError, match="not in the trusted zone"):
        copy_images(lake, ["images/ghost__r000000099_0.jpg"])


def test_validation_is_carved_from_training_recipes_reproducibly_and_disjoint():
    import pandas as pd

    from clipfood_assets.data.pairs import split_by_recipe
    from clipfood_assets.data.prepare import carve_validation

    pairs = pd.DataFrame({"recipe_id": [f"{i:010x}" for i in range(200) for _ in range(2)],
                          "image_key": [f"images/x__{i:010x}_{n}.jpg" for i in range(200) for n in range(2)],
                          "caption": [f"Dish {i}" for i in range(200) for _ in range(2)]})
    train_all, test = split_by_recipe(pairs, test_size=0.2, seed=42)
    train, validation = carve_validation(train_all, 0.1, 42)
    assert validation["recipe_id"].nunique() == 16 and train["recipe_id"].nunique() == 144
    assert not set(validation["recipe_id"]) & (set(train["recipe_id"]) | set(test["recipe_id"]))
    assert len(train) + len(validation) + len(test) == len(pairs)
    again = carve_validation(train_all.sample(frac=1, random_state=1), 0.1, 42)[1]
    assert set(again["recipe_id"]) == set(validation["recipe_id"])  # input order does not matter
    assert set(carve_validation(train_all, 0.1, 7)[1]["recipe_id"]) != set(validation["recipe_id"])
    none_train, none = carve_validation(train_all, 0.0, 42)
    assert none.empty and len(none_train) == len(train_all)
    assert carve_validation(train_all[train_all["recipe_id"] == train_all["recipe_id"].iloc[0]], 0.1, 42)[1].empty
    with pytest.raises(ValueError, match="validation_fraction"):
        carve_validation(train_all, 1.0, 42)
