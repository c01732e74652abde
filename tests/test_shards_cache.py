"""`gpf.shards.cache.ShardCache`: verified tars by sha256, bounded by size, least recently used first out.
(Its use by the reader, filled from an S3 server and read back, is in tests/test_s3_end_to_end.py.)"""
from __future__ import annotations

import os

from gpf.shards.cache import ShardCache

def test_cache_keeps_verified_files_within_its_bound(tmp_path):
    cache = ShardCache(tmp_path / "cache", max_bytes=250)
    for i, sha in enumerate(("a" * 64, "b" * 64, "c" * 64)):
        writer = cache.writer(sha)
        writer.write(bytes([i]) * 100)
        writer.commit()
        os.utime(cache.path(sha), ns=(i * 10**9, i * 10**9))   # a distinct "last used" time each
    assert cache.get("a" * 64, 100) is None                    # the least recently used went first
    assert cache.get("c" * 64, 100) == cache.path("c" * 64)
    assert cache.get("c" * 64, 99) is None                     # size must match the stats
    aborted = cache.writer("d" * 64)
    aborted.write(b"x")
    aborted.abort()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [f"{'b' * 64}.tar", f"{'c' * 64}.tar"]


def test_cache_remembers_etags(tmp_path):
    cache = ShardCache(tmp_path)
    cache.remember_etag("s3://b/x.tar", "e1", "f" * 64)
    assert ShardCache(tmp_path).etags() == {"s3://b/x.tar": {"etag": "e1", "sha256": "f" * 64}}
