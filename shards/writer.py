"""Write one shard atomically and reproducibly: tar + Parquet, then the stats file.

The same samples and rows always give byte-identical files: tar members carry a
fixed mtime, owner and mode, members follow a fixed order inside each sample,
``.npy`` members use one ``.npy`` format version, and JSON members are written
with sorted keys. JPEG bytes are stored as given; the writer never re-encodes.

Crash safety: tar and Parquet go to hidden temp names in their final folders,
are fsynced and renamed; the stats file (count, bytes, sha256, ...) is written
last, itself atomically. Its presence marks the shard done (:func:`is_shard_done`);
a rerun overwrites the fixed temp names a killed run left behind. On an object
store (:mod:`gpf.shards.storage`, no rename) tar and Parquet go straight to
their final keys (a multipart upload appears only when complete) and the stats
object, written last in one PUT, alone marks the shard done.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tarfile
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import GPFError
from .storage import Location, StorageError, StorageNotFoundError, as_location
from .layout import (ATTN, FEATURES, JSON, META_DIR, PARQUET_COLUMNS, PARQUET_SCHEMA, PARQUET_SUFFIX, PERIPH,
                               STATS_SUFFIX, TEMP_PREFIX, parse_shard_name,
                               REQUIRED_MEMBERS, JpegHeaderError, STATUS_OK, is_contract_member, is_safe_key,
                               jpeg_size, member_order, parquet_relpath, rand_index, safe_key,
                               shard_name, stats_filename, tar_filename, temp_name)

STATS_FORMAT = 1
TAR_MTIME = 0            # fixed member time: identical input -> identical bytes
TAR_MODE = 0o444
_COPY_CHUNK = 1 << 20


# ---------------------------------------------------------------- small file helpers
def atomic_write_bytes(path: Path | Location, data: bytes) -> None:
    """Write ``data`` atomically under a temp name that a rerun recognises and cleans
    (on an object store: one PUT, which is atomic)."""
    location = as_location(path)
    location.write_bytes(data, temp_name(location.name))


def file_sha256(path: Path | Location) -> str:
    """sha256 of a file or object (streamed)."""
    location = as_location(path)
    if location.local is None:
        return location.sha256()
    digest = hashlib.sha256()
    with open(location.local, "rb") as f:
        while chunk := f.read(_COPY_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dump_json(obj, *, what: str = "JSON") -> bytes:
    """Deterministic UTF-8 JSON: sorted keys, compact, no NaN/Infinity."""
    try:
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False, default=_json_default)
    except ValueError as exc:
        raise ValueError(f"{what} contains NaN or Infinity, which JSON cannot hold; "
                         "write null (None) for unknown numbers") from exc
    except TypeError as exc:
        raise TypeError(f"{what}: {exc}; use str, int, float, bool, None, lists and dicts") from exc
    return text.encode("utf-8")


def npy_bytes(array: np.ndarray, *, what: str, ndim: int) -> bytes:
    """``.npy`` bytes of ``array`` as C-ordered float16 (format version 1.0, no pickle)."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{what} must be a numpy array, got {type(array).__name__}")
    if array.ndim != ndim:
        raise ValueError(f"{what} must have {ndim} dimension(s), got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise TypeError(f"{what} must hold numbers, got dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.float16)
    if not np.isfinite(array).all():
        raise ValueError(f"{what} has NaN or Inf values (or values beyond float16 range)")
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, version=(1, 0), allow_pickle=False)
    return buffer.getvalue()


# ---------------------------------------------------------------- tar output
class _HashingFile:
    """File wrapper counting and hashing what tarfile writes through it."""

    def __init__(self, raw):
        self.raw = raw  # a storage Upload
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.raw.write(data)
        self.sha256.update(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.raw.flush()


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = TAR_MTIME
    info.mode = TAR_MODE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def _serialise_sample(sample: Mapping, shard: str) -> tuple[str, list[tuple[str, bytes]]]:
    """Validate one sample dict; return its key and ``(member, bytes)`` in contract order."""
    if not isinstance(sample, Mapping) or "key" not in sample:
        raise ValueError(f"shard {shard}: a sample must be a dict with a 'key' and its members")
    key = sample["key"]
    where = f"shard {shard}, key {key!r}"
    if not is_safe_key(key):
        raise ValueError(f"{where}: not a safe key; make keys with gpf.shards.layout.safe_key(id)")
    members = [m for m in sample if m != "key"]
    unknown = [m for m in members if not is_contract_member(m)]
    if unknown:
        raise ValueError(f"{where}: unknown member(s) {unknown}; allowed: "
                         f"{', '.join(REQUIRED_MEMBERS)}, rand{{k}}.jpg, {FEATURES}, warp.jpg, orig.jpg")
    missing = [m for m in REQUIRED_MEMBERS if m not in sample]
    if missing:
        raise ValueError(f"{where}: missing member(s) {missing}")
    meta = sample[JSON]
    if not isinstance(meta, Mapping) or not isinstance(meta.get("id"), str):
        raise ValueError(f"{where}: the json member must be a dict holding the original 'id' (str)")
    if safe_key(meta["id"]) != key:
        raise ValueError(f"{where}: key does not match json id {meta['id']!r} "
                         f"(expected key {safe_key(meta['id'])!r})")
    out = []
    for member in sorted(members, key=member_order):
        value = sample[member]
        what = f"{where}, member {member}"
        if member == JSON:
            data = dump_json(dict(value), what=what)
        elif member == ATTN:
            data = npy_bytes(value, what=what, ndim=2)
        elif member == FEATURES:
            data = npy_bytes(value, what=what, ndim=1)
        else:  # JPEG members: stored as given, only the header is checked
            if not isinstance(value, (bytes, bytearray, memoryview)):
                raise TypeError(f"{what}: expected encoded JPEG bytes, got {type(value).__name__}")
            data = bytes(value)
            try:
                jpeg_size(data)
            except JpegHeaderError as exc:
                raise JpegHeaderError(f"{what}: {exc}") from None
        out.append((member, data))
    return key, out


# ---------------------------------------------------------------- Parquet rows
def _normalise_row(row: Mapping, split: str, shard: str) -> dict:
    if not isinstance(row, Mapping):
        raise TypeError(f"shard {shard}: a row must be a dict, got {type(row).__name__}")
    unknown = sorted(set(row) - set(PARQUET_COLUMNS))
    image_id = row.get("id")
    where = f"shard {shard}, row id {image_id!r}"
    if unknown:
        raise ValueError(f"{where}: unknown column(s) {unknown}; allowed: {', '.join(PARQUET_COLUMNS)}")
    if not isinstance(image_id, str) or not image_id:
        raise ValueError(f"shard {shard}: every row needs a non-empty str 'id', got {row!r}")
    status = row.get("status")
    if not isinstance(status, str) or not status:
        raise ValueError(f"{where}: 'status' must be 'ok' or a failure kind (str)")
    error = row.get("error")
    if status == STATUS_OK and error is not None:
        raise ValueError(f"{where}: status 'ok' rows must have error None, got {error!r}")
    if status != STATUS_OK and (not isinstance(error, str) or not error):
        raise ValueError(f"{where}: failure rows (status {status!r}) need an 'error' text")
    out = {column: row.get(column) for column in PARQUET_COLUMNS}
    for column, expected in (("split", split), ("shard", shard), ("key", safe_key(image_id))):
        if out[column] is None:
            out[column] = expected
        elif out[column] != expected:
            raise ValueError(f"{where}: {column} {out[column]!r} != {expected!r}")
    if out["n_votes"] is None and out["votes"] is not None:
        out["n_votes"] = int(sum(out["votes"]))
    for column in ("mean", "std", "attn_fraction"):
        value = out[column]
        if isinstance(value, (float, np.floating)) and math.isnan(value):
            out[column] = None
    return out


def rows_to_table(rows: list[dict], shard: str) -> pa.Table:
    """Rows (already normalised) as a table of :data:`PARQUET_SCHEMA`, naming a bad value."""
    try:
        return pa.Table.from_pylist(rows, schema=PARQUET_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        for row in rows:
            for field in PARQUET_SCHEMA:
                try:
                    pa.array([row[field.name]], type=field.type)
                except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as exc:
                    raise ValueError(f"shard {shard}, row id {row['id']!r}: column {field.name} "
                                     f"value {row[field.name]!r} is not {field.type}: {exc}") from None
        raise


# ---------------------------------------------------------------- the writer
class ShardWriter:
    """Write ``{split}-{index:06d}.tar``, its Parquet rows and, last, its stats file.

    >>> with ShardWriter(out_dir, "train", 0) as writer:        # doctest: +SKIP
    ...     writer.write(sample)     # {'key', 'periph.jpg': bytes, 'fovea.jpg': bytes,
    ...                              #  'attn.npy': ndarray, 'json': dict, ...}
    ...     writer.add_row(row)      # one per input image: status 'ok' rows <-> samples
    >>> writer.stats                 # doctest: +SKIP

    Samples are stored in the order written. Rows may come in any order (they
    are stored as given); on close every sample must have exactly one 'ok' row
    with its key and vice versa. An exception inside the ``with`` block (or
    :meth:`abort`) removes the temp files and leaves the shard not done.

    ``metadata`` (str -> str) becomes the Parquet file's key-value metadata, e.g.
    ``{"gpf_score_columns": json}`` (which label column holds which score bucket).
    """

    def __init__(self, out_dir: str | os.PathLike | Location, split: str, index: int,
                 metadata: Mapping[str, str] | None = None):
        self.metadata = _check_metadata(metadata)
        self.out = as_location(out_dir)
        self.split, self.index = split, index
        self.name = shard_name(split, index)
        self.tar_location = self.out.join(tar_filename(split, index))
        self.parquet_location = self.out.join(parquet_relpath(split, index))
        self.stats_location = self.out.join(stats_filename(split, index))
        self.stats: dict | None = None
        self._keys: list[str] = []
        self._key_set: set[str] = set()
        self._rows: list[dict] = []
        self._shapes: Counter = Counter()
        self._random_crops: int | None = None
        self._all_features = True
        self.out.join(META_DIR).makedirs()
        # Rewriting a shard: it stops being done before anything else changes.
        self.stats_location.delete()
        self._raw = self.tar_location.upload(temp_name(self.tar_location.name))
        self._out = _HashingFile(self._raw)
        self._tar = tarfile.open(fileobj=self._out, mode="w", format=tarfile.USTAR_FORMAT)
        self._closed = False

    # -- context manager
    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- adding data
    def write(self, sample: Mapping) -> None:
        """Append one sample (see the module doc for the members)."""
        self._check_open()
        key, members = _serialise_sample(sample, self.name)
        if key in self._key_set:
            raise ValueError(f"shard {self.name}: key {key!r} written twice")
        for member, data in members:
            self._tar.addfile(_tar_info(f"{key}.{member}", len(data)), io.BytesIO(data))
        self._keys.append(key)
        self._key_set.add(key)
        width, height = jpeg_size(sample[PERIPH])
        self._shapes[(height, width)] += 1
        crops = sum(rand_index(member) is not None for member, _ in members)
        self._random_crops = crops if self._random_crops is None else min(self._random_crops, crops)
        self._all_features &= FEATURES in sample

    def add_row(self, row: Mapping) -> None:
        """Append one Parquet row (columns of :data:`gpf.shards.layout.PARQUET_SCHEMA`).

        ``split``, ``shard``, ``key`` and ``n_votes`` are filled in when absent.
        """
        self._check_open()
        self._rows.append(_normalise_row(row, self.split, self.name))

    # -- finishing
    def close(self) -> dict:
        """Finish tar and Parquet, rename them into place, write the stats file."""
        self._check_open()
        try:
            self._check_rows_match_samples()
            table = rows_to_table(self._rows, self.name)
            if self.metadata:
                table = table.replace_schema_metadata({**(table.schema.metadata or {}), **self.metadata})
            buffer = io.BytesIO()
            pq.write_table(table, buffer, compression="zstd")
            parquet = buffer.getvalue()
            self._tar.close()
            self._raw.commit()
            atomic_write_bytes(self.parquet_location, parquet)
        except BaseException:
            self.abort()
            raise
        self.stats = self._make_stats(hashlib.sha256(parquet).hexdigest(), len(parquet))
        atomic_write_bytes(self.stats_location, dump_json(self.stats, what="stats") + b"\n")
        self._closed = True
        return self.stats

    def abort(self) -> None:
        """Drop everything written so far; the shard stays not done."""
        if self._closed:
            return
        self._closed = True
        self._raw.abort()

    # -- internals
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"shard {self.name}: the writer is already closed")

    def _check_rows_match_samples(self) -> None:
        ok_keys = Counter(r["key"] for r in self._rows if r["status"] == STATUS_OK)
        twice = sorted(k for k, n in ok_keys.items() if n > 1)
        no_row = [k for k in self._keys if k not in ok_keys]
        no_sample = sorted(set(ok_keys) - self._key_set)
        problems = []
        if twice:
            problems.append(f"keys with more than one 'ok' row: {twice[:5]}")
        if no_row:
            problems.append(f"samples without an 'ok' row: {no_row[:5]}")
        if no_sample:
            problems.append(f"'ok' rows without a sample: {no_sample[:5]}")
        if problems:
            raise ValueError(f"shard {self.name}: Parquet rows do not match the samples: "
                             + "; ".join(problems) + ". Add one row per input image; "
                             "status 'ok' exactly for the images written as samples")

    def _make_stats(self, parquet_sha: str, parquet_bytes: int) -> dict:
        return {
            "format": STATS_FORMAT,
            "shard": self.name,
            "split": self.split,
            "index": self.index,
            "count": len(self._keys),
            "bytes": self._out.size,
            "sha256": self._out.sha256.hexdigest(),
            "parquet": parquet_relpath(self.split, self.index),
            "parquet_bytes": parquet_bytes,
            "parquet_sha256": parquet_sha,
            "rows": len(self._rows),
            "status_counts": dict(sorted(Counter(r["status"] for r in self._rows).items())),
            "periph_shapes": [[h, w, n] for (h, w), n in sorted(self._shapes.items())],
            "random_crops": self._random_crops or 0,
            "features": bool(self._keys) and self._all_features,
        }


def _check_metadata(metadata: Mapping[str, str] | None) -> dict[bytes, bytes] | None:
    """Parquet key-value metadata as bytes, in sorted key order (byte-reproducible files)."""
    if not metadata:
        return None
    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise TypeError(f"Parquet metadata keys and values must be str; not so for {bad}")
    return {k.encode(): metadata[k].encode() for k in sorted(metadata)}


def write_shard(out_dir: str | os.PathLike, split: str, index: int,
                samples: Iterable[Mapping], rows: Iterable[Mapping],
                metadata: Mapping[str, str] | None = None) -> dict:
    """Write a whole shard in one call; returns its stats (see :class:`ShardWriter`)."""
    with ShardWriter(out_dir, split, index, metadata=metadata) as writer:
        for sample in samples:
            writer.write(sample)
        for row in rows:
            writer.add_row(row)
    return writer.stats


# ---------------------------------------------------------------- done markers
class StatsError(GPFError, ValueError):
    """A stats file is missing or unreadable."""


def read_stats(out_dir: str | os.PathLike | Location, split: str, index: int) -> dict:
    """The stats of a finished shard; :class:`StatsError` naming the file otherwise."""
    path = as_location(out_dir).join(stats_filename(split, index))
    try:
        stats = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise StatsError(f"{path}: missing — shard {shard_name(split, index)} is not finished; "
                         "rerun preprocessing to write it") from None
    except StorageError:
        if path.remote:
            raise       # the store failed, not the file: say so, never "delete it"
        raise StatsError(f"{path}: unreadable; delete it and rerun preprocessing to rewrite the shard") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StatsError(f"{path}: unreadable ({exc}); delete it and rerun preprocessing "
                         "to rewrite the shard") from None
    required = ("count", "bytes", "sha256", "parquet_sha256", "status_counts")
    if not isinstance(stats, dict) or any(k not in stats for k in required):
        raise StatsError(f"{path}: not a gpf stats file (needs {', '.join(required)}); "
                         "delete it and rerun preprocessing")
    return stats


def is_shard_done(out_dir: str | os.PathLike | Location, split: str, index: int) -> bool:
    """True when the stats file exists and the tar and Parquet sizes match it.

    Cheap (no hashing); ``gpf shards verify`` checks the sha256 sums. A store that cannot be
    reached raises (a shard must not be redone because the network failed).
    """
    out = as_location(out_dir)
    try:
        stats = read_stats(out, split, index)
        tar_size = out.join(tar_filename(split, index)).info().size
        parquet_size = out.join(parquet_relpath(split, index)).info().size
    except (StatsError, StorageNotFoundError, FileNotFoundError):
        return False
    except OSError as exc:
        if out.remote and isinstance(exc, StorageError):
            raise
        return False
    return tar_size == stats["bytes"] and parquet_size == stats.get("parquet_bytes", parquet_size)


def done_shards(out_dir: str | os.PathLike | Location) -> dict[tuple[str, int], dict]:
    """``{(split, index): stats}`` of every done shard in ``out_dir``: one listing of the folder (or prefix)
    and of ``meta/``, then one read per stats file; a shard is done as :func:`is_shard_done` says."""
    out = as_location(out_dir)
    top, meta = out.list(), out.join(META_DIR).list()
    done = {}
    for name in sorted(top):
        parsed = parse_shard_name(name[: -len(STATS_SUFFIX)]) if name.endswith(STATS_SUFFIX) else None
        if parsed is None or name.startswith(TEMP_PREFIX):
            continue
        try:
            stats = read_stats(out, *parsed)
        except StatsError:
            continue
        tar, parquet = top.get(tar_filename(*parsed)), meta.get(shard_name(*parsed) + PARQUET_SUFFIX)
        if tar is not None and parquet is not None and tar.size == stats["bytes"] \
                and parquet.size == stats.get("parquet_bytes", parquet.size):
            done[parsed] = stats
    return done
