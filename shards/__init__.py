"""The on-disk shard contract: names, writer, manifest, streaming reader, verify.

``from gpf.shards import ShardWriter, make_loader, verify_shards`` work; the
modules load on first use (the reader pulls in torch), so importing the package
is cheap and has no side effects. See ``docs/shards.md``.
"""
from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "shard_name": "layout", "safe_key": "layout", "assign_shards": "layout",
    "rand_member": "layout", "PARQUET_SCHEMA": "layout",
    "ShardWriter": "writer", "write_shard": "writer", "is_shard_done": "writer",
    "read_stats": "writer",
    "write_manifest": "manifest", "read_manifest": "manifest", "compare_config": "manifest",
    "ManifestError": "manifest", "Manifest": "manifest", "RunFields": "manifest", "ShardEntry": "manifest",
    "ShardReadError": "layout", "JpegHeaderError": "layout", "DuplicateIdError": "layout",
    "ShardDataset": "reader", "make_loader": "reader", "list_shards": "reader",
    "verify_shards": "verify", "info": "verify",
    "Location": "storage", "StorageError": "storage", "using_options": "storage", "public_url": "storage",
    "webdataset_pipeline": "webdataset",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
