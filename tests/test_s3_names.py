"""The S3 object-name encoding: a listing put back in key order (no server needed)."""

from __future__ import annotations

import random

from storekeeper.backends import _s3_names as names


def test_listing_order_restored_for_random_keys() -> None:
    """Keys drawn from an alphabet rich in U+007F, controls and their neighbours, listed
    in the bucket's (encoded UTF-8) order, come back from in_key_order in key order."""
    alphabet = ["\x7f", "~", " ", "!", "@", "?", "\x01", "\x1f", "a", "/", "\x80", "é"]
    rng = random.Random(7)
    for _ in range(200):
        keys = {"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 5))) for _ in range(60)}
        listed = sorted(keys, key=lambda k: names.encode_name("p/", k).encode())
        decoded = [names.decode_name("p/", names.encode_name("p/", k)) for k in listed]
        assert list(names.in_key_order(k for k in decoded if k is not None)) == sorted(keys)
