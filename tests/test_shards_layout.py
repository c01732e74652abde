"""Shard names, member names, safe keys, shard assignment and JPEG headers (gpf.shards.layout).

Checked against independent references: hashlib for the hashed keys and the
assignment order, PIL for JPEG sizes, hypothesis for the properties.
"""
from __future__ import annotations

import hashlib
import io
import random
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from helpers.shards import random_jpeg
from gpf.shards.layout import (assign_shards, is_safe_key, jpeg_size, parse_shard_name, safe_key, shard_name,
                               split_member_name)


# ---------------------------------------------------------------- names
def test_shard_name_format_and_parse():
    assert shard_name("train", 0) == "train-000000"
    assert shard_name("val", 123456) == "val-123456"
    assert parse_shard_name("test-000042") == ("test", 42)
    assert parse_shard_name("train-42") is None
    for bad_split in ("", "a-b", "a.b", None):
        with pytest.raises(ValueError, match="split"):
            shard_name(bad_split, 0)
    for bad_index in (-1, 1_000_000, 1.0, True):
        with pytest.raises(ValueError, match="index"):
            shard_name("train", bad_index)


def test_split_member_name_splits_at_first_dot():
    assert split_member_name("953619.periph.jpg") == ("953619", "periph.jpg")
    assert split_member_name("_ab12.json") == ("_ab12", "json")
    assert split_member_name("noext") == ("noext", "")


@pytest.mark.parametrize("image_id", ["953619", "abc_DEF-9", "x" * 64])
def test_safe_key_keeps_safe_ids(image_id):
    assert safe_key(image_id) == image_id
    assert is_safe_key(image_id)


@pytest.mark.parametrize("image_id", ["a.b", "dir/x", "dir\\x", "a b", "tab\tid", "new\nline",
                                      "", "é", "x" * 65, "_leading", "-leading", ".."])
def test_safe_key_hashes_unsafe_ids(image_id):
    key = safe_key(image_id)
    expected = "_" + hashlib.sha1(image_id.encode()).hexdigest()[:24]
    assert key == expected
    assert is_safe_key(key)
    assert "." not in key and "/" not in key and " " not in key


def test_safe_key_distinct_and_kept_ids_never_collide_with_hashed():
    ids = [f"img {i}.jpg" for i in range(2000)]
    keys = {safe_key(i) for i in ids}
    assert len(keys) == len(ids)
    # a kept id can never look like a hashed key (hashed keys start with '_')
    assert safe_key("_" + "0" * 24) != "_" + "0" * 24


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=80), unique=True, max_size=20))
def test_safe_key_property_safe_and_injective(ids):
    keys = [safe_key(i) for i in ids]
    assert all(is_safe_key(k) and len(k) <= 64 for k in keys)
    assert all("." not in k and "/" not in k and not any(c.isspace() for c in k) for k in keys)
    assert len(set(keys)) == len(ids)
    assert keys == [safe_key(i) for i in ids]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=12), unique=True, max_size=60),
       st.integers(1, 9), st.integers(0, 3))
def test_assign_shards_property(ids, per_shard, seed):
    assignment = assign_shards(ids, per_shard, seed)
    assert set(assignment) == set(ids)
    counts = Counter(assignment.values())
    shards = sorted(counts)
    assert shards == list(range(len(shards)))
    assert all(counts[s] == per_shard for s in shards[:-1])
    assert not shards or 1 <= counts[shards[-1]] <= per_shard
    assert assign_shards(list(reversed(ids)), per_shard, seed) == assignment


def test_safe_key_rejects_non_str():
    with pytest.raises(TypeError, match="str"):
        safe_key(953619)


# ---------------------------------------------------------------- assignment
def test_assign_shards_exact_counts_deterministic_and_order_free():
    ids = [str(i) for i in range(1003)]
    first = assign_shards(ids, 100, seed=3)
    shuffled = ids[:]
    random.Random(1).shuffle(shuffled)
    assert assign_shards(shuffled, 100, seed=3) == first
    counts = np.bincount(list(first.values()))
    assert counts.tolist() == [100] * 10 + [3]
    assert set(first) == set(ids)


def test_assign_shards_is_a_random_sample_and_depends_on_seed():
    ids = [str(i) for i in range(1000)]
    a, b = assign_shards(ids, 100, seed=0), assign_shards(ids, 100, seed=1)
    assert a != b
    shard0 = sorted(int(i) for i, s in a.items() if s == 0)
    # consecutive ids are spread: shard 0 is not a block of neighbours
    assert shard0 != list(range(shard0[0], shard0[0] + 100))
    assert np.mean(shard0) == pytest.approx(500, abs=120)
    # the order is the sha1 of (seed, id) — reproduce it independently
    rank = sorted(ids, key=lambda i: hashlib.sha1(f"0\x00{i}".encode()).digest())
    assert {i for i, s in a.items() if s == 0} == set(rank[:100])
    assert {i for i, s in a.items() if s == 9} == set(rank[900:])


def test_assign_shards_rejects_duplicates_and_bad_size():
    with pytest.raises(ValueError, match="duplicate.*'7'"):
        assign_shards(["7", "8", "7"], 2)
    with pytest.raises(ValueError, match="samples_per_shard"):
        assign_shards(["1"], 0)
    assert assign_shards([], 5) == {}


# ---------------------------------------------------------------- JPEG header
@pytest.mark.parametrize("save", [{}, {"progressive": True}, {"subsampling": 0}])
def test_jpeg_size_matches_pil(save):
    rng = np.random.default_rng(0)
    data = random_jpeg(rng, 37, 21, **save)
    assert jpeg_size(data) == Image.open(io.BytesIO(data)).size == (37, 21)


def test_jpeg_size_rejects_non_jpeg_and_truncated():
    with pytest.raises(ValueError, match="not a JPEG"):
        jpeg_size(b"\x89PNG....")
    data = random_jpeg(np.random.default_rng(0), 8, 8)
    with pytest.raises(ValueError):
        jpeg_size(data[:20])
