"""The images' digest resumes anywhere: a listing paused and picked up again, through JSON, ends with
the digest of one listing, on every backend; any added, deleted, changed or renamed image moves it."""

from __future__ import annotations

import json
import random

from clipfood_assets.lake.fingerprint import ImagesPass, fingerprint_trusted_zone, images_digest
from clipfood_assets.lake.layout import RECIPES_KEY, TRUSTED_ZONE


def _fill(lake, n=23):
    keys = [f"images/dish-{i:03d}__{i:010x}_{i % 3}.jpg" for i in range(n)] + ["images/sub/café__0000000001_0.jpg"]
    for key in keys:
        lake.put_bytes(TRUSTED_ZONE, key, key.encode())
    lake.put_bytes(TRUSTED_ZONE, RECIPES_KEY, b'{"id": "0000000001", "title_text_raw": "Soup"}\n')
    return keys


def test_a_pass_resumed_in_pieces_through_json_gives_the_digest_of_one_listing(lake):
    keys = _fill(lake)
    whole = images_digest(lake)
    rng = random.Random(0)
    for _ in range(3):
        state, pieces = None, 0
        while True:
            listing = ImagesPass.from_dict(json.loads(state)) if state else ImagesPass()
            done = listing.advance(lake, limit=rng.randint(1, 6))
            state = json.dumps(listing.to_dict())
            pieces += 1
            if done:
                break
        assert (listing.digest, listing.n) == (whole[0], len(keys)) and pieces > 4
        assert len(state) < 300  # the cursor's share: the last key and four numbers
    assert fingerprint_trusted_zone(lake).images_digest == whole[0]


def test_a_budget_of_no_time_still_moves_the_pass_by_one_object(lake):
    _fill(lake, n=3)
    listing, ticks = ImagesPass(), 0
    while not listing.advance(lake, limit=100, seconds=0.0):
        ticks += 1
        assert listing.n == ticks
    assert listing.digest == images_digest(lake)[0]


def test_every_kind_of_change_moves_the_digest(lake):
    keys = _fill(lake, n=5)
    seen = {images_digest(lake)[0]}
    changes = [
        lambda: lake.put_bytes(TRUSTED_ZONE, "images/new__0000000009_0.jpg", b"new"),  # added
        lambda: lake.delete(TRUSTED_ZONE, keys[0]),  # deleted
        lambda: lake.put_bytes(TRUSTED_ZONE, keys[1], b"other bytes"),  # changed
        lambda: (lake.put_bytes(TRUSTED_ZONE, keys[2] + ".jpg", lake.get_bytes(TRUSTED_ZONE, keys[2])),
                 lake.delete(TRUSTED_ZONE, keys[2])),  # renamed, same bytes
    ]
    for change in changes:
        change()
        digest = images_digest(lake)[0]
        assert digest not in seen
        seen.add(digest)
    # Two objects trading their bytes: same multiset of ETags, other (key, ETag) pairs.
    a, b = keys[3], keys[4]
    body_a, body_b = lake.get_bytes(TRUSTED_ZONE, a), lake.get_bytes(TRUSTED_ZONE, b)
    lake.put_bytes(TRUSTED_ZONE, a, body_b)
    lake.put_bytes(TRUSTED_ZONE, b, body_a)
    assert images_digest(lake)[0] not in seen


def test_a_listing_slow_to_start_still_gets_half_the_time_after_its_first_object(monkeypatch):
    from clipfood_assets.lake import fingerprint
    from clipfood_assets.lake.base import ObjectInfo

    clock = [0.0]
    monkeypatch.setattr(fingerprint.time, "monotonic", lambda: clock[0])

    class SlowStart:
        """A folder scanned whole before the first name (10 s), then one object a second."""

        def list(self, bucket, prefix, start_after="", limit=None):
            clock[0] += 10
            for i in range(100):
                yield ObjectInfo(bucket, f"{prefix}{i:03d}.jpg", 1, "e")
                clock[0] += 1

    listing = ImagesPass()
    assert not listing.advance(SlowStart(), limit=1000, seconds=4)
    assert listing.n == 3  # objects at 10, 11 and 12 s: half of the 4 s after the first one
