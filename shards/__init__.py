"""The on-disk shard contract: names, writer, manifest, streaming reader, verify.

``from gpf.shards import ShardWriter, make_loader, verify_shards`` work; the
modules load on first use (the reader pulls in torch), so importing the package
is cheap and has no side effects. See ``docs/shards.md``.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "shard_name": "layout", "safe_key": "layout", "assign_shards": "layout",
    "rand_member": "layout", "PARQUET_SCHEMA": "layout",
    "ShardWriter": "writer", "write_shard": "writer", "is_shard_done": "writer",
    "read_stats": "writer",
    "write_manifest": "manifest", "read_manifest": "manifest", "compare_config": "manifest",
    "ManifestError": "manifest",
    "ShardDataset": "reader", "make_loader": "reader", "list_shards": "reader",
    "verify_shards": "verify", "info": "verify",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gpf.shards' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"gpf.shards.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
