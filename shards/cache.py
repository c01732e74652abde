"""A size-bounded local cache of streamed shards (``--cache-dir``), verified against their stats.

A shard read from a URL is written to ``DIR/{sha256}.tar`` while it streams, and
kept only when the streamed bytes hash to the sha256 its stats file records, so a
cached file is named by the content it was verified to have. Later epochs read
it from local disk. The least recently used files are removed beyond
``max_bytes``. The cache also remembers each verified object's ETag (the
store's content tag): a later run refuses before training an object whose ETag
changed while its stats did not (:func:`gpf.shards.verify.check_checksums`).
Several loader workers may share one folder: files appear by rename.
"""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

DEFAULT_MAX_BYTES = 20 << 30
ETAGS = "etags.json"


class ShardCache:
    """``DIR/{sha256}.tar`` files of verified shards, at most ``max_bytes`` in all."""

    def __init__(self, folder: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES):
        self.folder = Path(folder)
        self.max_bytes = int(max_bytes)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.folder / f"{sha256}.tar"

    def get(self, sha256: str | None, size: int | None) -> Path | None:
        """The cached file of a shard with this sha256 and size (marked used), or None."""
        if not sha256:
            return None
        path = self.path(sha256)
        try:
            if size is not None and path.stat().st_size != size:
                return None
            os.utime(path)
        except FileNotFoundError:
            return None
        return path

    def writer(self, sha256: str) -> "_CacheFile":
        return _CacheFile(self, sha256)

    def evict(self, keep: Path | None = None) -> None:
        """Remove the least recently used files until the cache holds at most ``max_bytes``."""
        files = []
        for path in self.folder.glob("*.tar"):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            files.append((st.st_mtime_ns, st.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files, key=lambda f: (f[2] == keep, f[0])):  # ``keep`` last
            if total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size

    # -- ETags of verified objects
    def etags(self) -> dict:
        try:
            data = json.loads((self.folder / ETAGS).read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def remember_etag(self, url: str, etag: str | None, sha256: str) -> None:
        if not etag:
            return
        from ..fsutil import atomic_write_text

        data = self.etags()
        data[url] = {"etag": etag, "sha256": sha256}
        atomic_write_text(self.folder / ETAGS, json.dumps(data, sort_keys=True))


class _CacheFile:
    """Bytes of one shard on their way into the cache; :meth:`commit` after the hash matched."""

    def __init__(self, cache: ShardCache, sha256: str):
        self.cache, self.sha256 = cache, sha256
        self.tmp = cache.folder / f".{sha256}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        self.file = open(self.tmp, "wb")

    def write(self, data: bytes) -> None:
        self.file.write(data)

    def commit(self) -> None:
        self.file.close()
        final = self.cache.path(self.sha256)
        os.replace(self.tmp, final)
        self.cache.evict(keep=final)

    def abort(self) -> None:
        if not self.file.closed:
            self.file.close()
        self.tmp.unlink(missing_ok=True)
