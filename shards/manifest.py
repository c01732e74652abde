"""``manifest.json``: every shard of a folder and what made them.

The manifest lists each shard (from its stats file) with count and sha256, plus
the config, environment, dataset, score scale and threshold, view size, tau,
EB layer and stage-1 checkpoint digest of the run. Preprocessing writes it with
``complete=False`` when a run starts (so a resume can be compared with
:func:`compare_config` and refused when the config or environment differ) and
with ``complete=True`` when every shard is done. No timestamps: the same run
gives the same bytes.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from gpf.errors import GPFError
from gpf.shards.layout import (MANIFEST_NAME, STATS_SUFFIX, TEMP_PREFIX, parse_shard_name,
                               parquet_relpath, tar_filename)
from gpf.shards.writer import atomic_write_bytes, dump_json, read_stats

MANIFEST_FORMAT = 1
_RUN_FIELDS = ("dataset", "scores", "threshold", "view_size", "tau", "eb_layer", "stage1_digest")


class ManifestError(GPFError, ValueError):
    """``manifest.json`` is missing, unreadable or not a gpf manifest."""


def find_stats_files(out_dir: str | os.PathLike) -> list[tuple[str, int]]:
    """``(split, index)`` of every ``{split}-{index}.stats.json`` in ``out_dir``, sorted."""
    found = []
    for path in Path(out_dir).glob("*" + STATS_SUFFIX):
        if path.name.startswith(TEMP_PREFIX):
            continue
        parsed = parse_shard_name(path.name[: -len(STATS_SUFFIX)])
        if parsed is not None:
            found.append(parsed)
    return sorted(found)


def shard_entry(stats: dict, split: str, index: int) -> dict:
    """The manifest's record of one shard, taken from its stats."""
    return {
        "name": f"{split}-{index:06d}",
        "split": split,
        "index": index,
        "tar": tar_filename(split, index),
        "parquet": parquet_relpath(split, index),
        "count": stats["count"],
        "rows": stats.get("rows"),
        "bytes": stats["bytes"],
        "sha256": stats["sha256"],
        "parquet_bytes": stats.get("parquet_bytes"),
        "parquet_sha256": stats["parquet_sha256"],
        "status_counts": stats["status_counts"],
        "periph_shapes": stats.get("periph_shapes", []),
        "random_crops": stats.get("random_crops", 0),
        "features": stats.get("features", False),
    }


def _split_totals(shards: list[dict]) -> dict:
    totals: dict[str, dict] = {}
    for entry in shards:
        split = totals.setdefault(entry["split"], {"shards": 0, "samples": 0, "rows": 0,
                                                   "status_counts": Counter()})
        split["shards"] += 1
        split["samples"] += entry["count"]
        split["rows"] += entry["rows"] or 0
        split["status_counts"].update(entry["status_counts"])
    return {name: {**t, "status_counts": dict(sorted(t["status_counts"].items()))}
            for name, t in sorted(totals.items())}


def build_manifest(out_dir: str | os.PathLike, config: dict | None, environment: dict | None, *,
                   dataset: str | None, scores, threshold, view_size, tau, eb_layer,
                   stage1_digest, gpf_version: str | None = None, complete: bool = True) -> dict:
    """The manifest dict of ``out_dir`` (shards from the stats files found there)."""
    if gpf_version is None:
        from gpf._version import __version__ as gpf_version
    shards = [shard_entry(read_stats(out_dir, split, index), split, index)
              for split, index in find_stats_files(out_dir)]
    with_samples = [s for s in shards if s["count"]]
    return {
        "format": MANIFEST_FORMAT,
        "gpf_version": gpf_version,
        "complete": bool(complete),
        "dataset": dataset,
        "scores": None if scores is None else [float(s) for s in scores],
        "threshold": None if threshold is None else float(threshold),
        "view_size": view_size,
        "tau": tau,
        "eb_layer": eb_layer,
        "stage1_digest": stage1_digest,
        "random_crops": min((s["random_crops"] for s in with_samples), default=0),
        "features": bool(with_samples) and all(s["features"] for s in with_samples),
        "config": config,
        "environment": environment,
        "splits": _split_totals(shards),
        "shards": shards,
    }


def write_manifest(out_dir: str | os.PathLike, config: dict | None, environment: dict | None, *,
                   dataset: str | None, scores, threshold, view_size, tau, eb_layer,
                   stage1_digest, gpf_version: str | None = None, complete: bool = True) -> dict:
    """Write ``out_dir/manifest.json`` atomically and return it.

    ``scores`` is the score value of each bucket (AVA 1..10), ``threshold`` the
    high/low cut, ``stage1_digest`` the sha256 of the stage-1 checkpoint (None
    when ImageNet weights made the attention). Shards are listed from their stats
    files; whether random crops (``random_crops`` = K stored per sample) and
    peripheral features are present is derived from them.
    """
    manifest = build_manifest(out_dir, config, environment, dataset=dataset, scores=scores,
                              threshold=threshold, view_size=view_size, tau=tau,
                              eb_layer=eb_layer, stage1_digest=stage1_digest,
                              gpf_version=gpf_version, complete=complete)
    atomic_write_bytes(Path(out_dir) / MANIFEST_NAME, dump_json(manifest, what="manifest") + b"\n")
    return manifest


def read_manifest(out_dir: str | os.PathLike) -> dict:
    """The manifest of ``out_dir``; :class:`ManifestError` saying what to do otherwise."""
    path = Path(out_dir) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if not Path(out_dir).is_dir():
            raise ManifestError(f"{out_dir}: no such shard folder") from None
        raise ManifestError(f"{path}: missing — preprocessing has not finished here. Rerun "
                            "`gpf preprocess` to finish, or, if every shard is done, "
                            f"`gpf shards verify {out_dir} --write-manifest`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: unreadable ({exc}); rewrite it with "
                            f"`gpf shards verify {out_dir} --write-manifest`") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        raise ManifestError(f"{path}: not a gpf shard manifest (no 'shards' list)")
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ManifestError(f"{path}: manifest format {manifest.get('format')!r}; this gpf reads "
                            f"format {MANIFEST_FORMAT}. Re-run preprocessing with this gpf version")
    return manifest


def run_fields(manifest: dict) -> dict:
    """The parts of a manifest that must agree before a run may resume into it."""
    fields = {name: manifest.get(name) for name in _RUN_FIELDS}
    fields["config"] = manifest.get("config")
    fields["environment"] = manifest.get("environment")
    return fields


def _flatten(value, prefix: str, out: dict) -> dict:
    if isinstance(value, dict) and value:
        for key in value:
            _flatten(value[key], f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = value
    return out


def compare_config(old: dict, new: dict) -> list[str]:
    """One line per differing (dotted) key, ``'key: old -> new'``; empty when equal.

    Nested dicts are compared key by key; tuples and lists compare equal when
    their items do (JSON has no tuples), ints and equal floats compare equal.
    """
    flat_old, flat_new = _flatten(_plain(old), "", {}), _flatten(_plain(new), "", {})
    lines = []
    for key in sorted(set(flat_old) | set(flat_new), key=str):
        if key not in flat_old:
            lines.append(f"{key or '(root)'}: missing -> {flat_new[key]!r}")
        elif key not in flat_new:
            lines.append(f"{key or '(root)'}: {flat_old[key]!r} -> missing")
        elif flat_old[key] != flat_new[key]:
            lines.append(f"{key or '(root)'}: {flat_old[key]!r} -> {flat_new[key]!r}")
    return lines


def _plain(value):
    """Round-trip through JSON so tuples, numpy scalars and paths compare like stored values."""
    return json.loads(dump_json(value, what="config")) if value is not None else None
