"""The image copy in shards by key hash: a copy killed midway redoes only its unfinished shards, a changed
image reruns its shard only, duplicate and malformed keys, and shards in parallel processes."""

from __future__ import annotations

import pytest

from clipfood_assets.data.prepare import copy_images, copy_ledger, plan_image_copy, read_copy_record
from clipfood_assets.lake.base import LakeError
from clipfood_assets.lake.layout import FINE_TUNING_ZONE, IMAGES_PREFIX, TRUSTED_ZONE
from clipfood_assets.lake.shards import shard_of

KEYS = [f"images/dish{i:03d}__r{i:04d}_0.jpg" for i in range(60)]


class CountingLake:
    """The lake, counting server-side copies; ``fail_in_shard`` makes the first copy of that shard fail."""

    def __init__(self, lake, n_shards: int, fail_in_shard: int | None = None):
        self._lake, self.n_shards, self.fail_in_shard = lake, n_shards, fail_in_shard
        self.copies: list[str] = []

    def __getattr__(self, name):
        return getattr(self._lake, name)

    def copy(self, src_bucket, src_key, dst_bucket, dst_key):
        if self.fail_in_shard is not None and shard_of(src_key, self.n_shards) == self.fail_in_shard:
            raise LakeError(f"killed while copying {src_key}")
        self.copies.append(src_key)
        return self._lake.copy(src_bucket, src_key, dst_bucket, dst_key)


@pytest.fixture
def zone(local_lake):
    for i, key in enumerate(KEYS):
        local_lake.put_bytes(TRUSTED_ZONE, key, b"jpeg %d" % i)
    return local_lake


def _copied(lake) -> set[str]:
    return {o.key for o in lake.list(FINE_TUNING_ZONE, IMAGES_PREFIX)}


def test_a_copy_killed_in_its_third_shard_redoes_only_the_unfinished_shards(zone):
    n = 4
    by_shard = {s: {k for k in KEYS if shard_of(k, n) == s} for s in range(n)}
    killed = CountingLake(zone, n, fail_in_shard=2)
    with pytest.raises(LakeError, match="killed"):
        copy_images(killed, KEYS, n_shards=n, workers=1)
    assert set(killed.copies) == by_shard[0] | by_shard[1]  # shards run in order: 0 and 1 done, 3 never started
    assert read_copy_record(zone) == {}  # nothing committed
    again = CountingLake(zone, n)
    stats = copy_images(again, KEYS, n_shards=n, workers=1)
    assert set(again.copies) == by_shard[2] | by_shard[3] and len(again.copies) == len(by_shard[2] | by_shard[3])
    assert stats.copied == len(KEYS) and _copied(zone) == set(KEYS)
    assert set(read_copy_record(zone)) == set(KEYS)
    assert not list(zone.list(FINE_TUNING_ZONE, "_shards/image_copy/tasks/"))  # the ledger is cleared
    third = CountingLake(zone, n)
    assert copy_images(third, KEYS, n_shards=n).skipped == len(KEYS) and third.copies == []


def test_a_changed_image_reruns_its_shard_only(zone):
    n = 4
    copy_images(zone, KEYS, n_shards=n)
    zone.put_bytes(TRUSTED_ZONE, KEYS[7], b"a new photo")
    plan = plan_image_copy(zone, KEYS, n_shards=n)
    assert [(t.shard, t.items) for t in plan.tasks] == [(shard_of(KEYS[7], n), 1)]
    counting = CountingLake(zone, n)
    stats = copy_images(counting, KEYS, n_shards=n)
    assert counting.copies == [KEYS[7]] and (stats.copied, stats.skipped) == (1, len(KEYS) - 1)
    assert zone.get_bytes(FINE_TUNING_ZONE, KEYS[7]) == b"a new photo"


def test_duplicate_keys_copy_once_and_malformed_keys_are_refused(zone):
    counting = CountingLake(zone, 3)
    stats = copy_images(counting, KEYS + KEYS[:10], n_shards=3)
    assert sorted(counting.copies) == sorted(KEYS) and stats.copied == len(KEYS)
    with pytest.raises(ValueError, match="non-empty"):
        plan_image_copy(zone, [*KEYS, ""], n_shards=3)
    with pytest.raises(LakeError, match="not in the trusted zone"):
        plan_image_copy(zone, [*KEYS, "images/missing__x_0.jpg"], n_shards=3)
    with pytest.raises(ValueError, match="shard count"):
        plan_image_copy(zone, KEYS, n_shards=0)


def test_the_shard_count_changes_the_plan_not_the_result(zone):
    copy_images(zone, KEYS[:30], n_shards=2)
    stats = copy_images(zone, KEYS, n_shards=5, processes=2)  # shards in two spawned processes
    assert (stats.copied, stats.skipped) == (30, 30) and _copied(zone) == set(KEYS)
    stats = copy_images(zone, KEYS[:20], n_shards=1)
    assert stats.deleted == 40 and _copied(zone) == set(KEYS[:20])
    assert copy_ledger(zone).pending(plan_image_copy(zone, KEYS[:20], n_shards=3)) == []  # nothing to do
