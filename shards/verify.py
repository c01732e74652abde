"""Check a shard folder against its manifest and stats, and summarise it.

:func:`verify_shards` names every problem with the shard and, where it applies,
the sample key and member: shards listed but missing, shards present but not
listed, sizes and sha256 sums that disagree with the stats file and the
manifest, members that do not decode, Parquet rows that do not match the tar.
:func:`info` gives counts per split and status and box statistics.
"""
from __future__ import annotations

import io
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .layout import (ShardReadError, ATTN, FEATURES, JSON, MANIFEST_NAME, META_DIR, PARQUET_COLUMNS,
                               PARQUET_SUFFIX, REQUIRED_MEMBERS, STATUS_OK, STATS_SUFFIX,
                               TAR_SUFFIX, TEMP_PREFIX, TEMP_SUFFIX, is_contract_member,
                               is_safe_key, parse_shard_name, safe_key, ORIG, WARP,
                               split_member_name)
from .manifest import (MANIFEST_FORMAT, Manifest, ManifestError, RunFields, ShardEntry, read_manifest,
                                 write_manifest)
from .storage import Location, StorageError, StorageNotFoundError, as_location, read_parquet
from .writer import StatsError, file_sha256, read_stats
from ..fsutil import atomic_write_bytes

_MANIFEST_FIELDS = ("count", "bytes", "sha256", "parquet_sha256")


@dataclass(frozen=True)
class Problem:
    """One thing wrong: the file or shard, the key/member inside it (if any), what."""
    shard: str
    message: str
    where: str | None = None

    def line(self) -> str:
        return f"{self.shard}: {self.where + ': ' if self.where else ''}{self.message}"


@dataclass
class Report:
    folder: Path | Location
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    shards: int = 0
    samples: int = 0
    deep: bool = True
    manifest_written: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, shard: str, message: str, where: str | None = None) -> None:
        self.problems.append(Problem(shard, message, where))

    def lines(self) -> list[str]:
        return [p.line() for p in self.problems]

    def summary(self) -> str:
        checked = "decoded every member" if self.deep else "sizes and checksums only"
        verdict = "OK" if self.ok else f"{len(self.problems)} problem(s)"
        return (f"{self.folder}: {self.shards} shard(s), {self.samples} sample(s) checked "
                f"({checked}): {verdict}")


# ---------------------------------------------------------------- what is on disk
@dataclass
class _Disk:
    tars: set[str]
    stats: set[str]
    parquets: set[str]
    leftovers: list[str]
    sizes: dict[str, int] = field(default_factory=dict)   # 'name.tar' / 'meta/name.parquet' -> bytes


def _scan(folder: Location) -> _Disk:
    """What the folder (or URL prefix) holds, from one listing of it and one of ``meta/``."""
    top, meta = folder.list(), folder.join(META_DIR).list()

    def stems(names, suffix: str) -> set[str]:
        return {n[: -len(suffix)] for n in names if n.endswith(suffix) and not n.startswith(TEMP_PREFIX)
                and parse_shard_name(n[: -len(suffix)]) is not None}

    leftovers = sorted(f"{prefix}{n}" for prefix, names in (("", top), (f"{META_DIR}/", meta))
                       for n in names if n.startswith(TEMP_PREFIX) and n.endswith(TEMP_SUFFIX))
    sizes = {**{n: i.size for n, i in top.items()}, **{f"{META_DIR}/{n}": i.size for n, i in meta.items()}}
    return _Disk(tars=stems(top, TAR_SUFFIX), stats=stems(top, STATS_SUFFIX),
                 parquets=stems(meta, PARQUET_SUFFIX), leftovers=leftovers, sizes=sizes)


class _Checksums:
    """sha256 of files, each read at most once per verification."""

    def __init__(self):
        self._cache: dict[Location, str] = {}

    def __call__(self, path: Location) -> str:
        if path not in self._cache:
            self._cache[path] = file_sha256(path)
        return self._cache[path]


def _size(location: Location) -> int | None:
    try:
        return location.info().size
    except StorageNotFoundError:
        return None


# ---------------------------------------------------------------- files vs stats
def _check_files_against_stats(folder: Location, name: str, stats: dict, report: Report,
                               sha: _Checksums, missing_reported: bool = False) -> bool:
    """Tar and Parquet of ``name`` against its stats; True when the tar is intact."""
    tar = folder.join(f"{name}{TAR_SUFFIX}")
    size = _size(tar)
    intact = True
    if size is None:
        if not missing_reported:
            report.add(name, "tar file missing (stats file without its tar)")
        intact = False
    elif size != stats["bytes"]:
        report.add(name, f"tar is {size} bytes, stats say {stats['bytes']} "
                         "(truncated or overwritten); rewrite the shard")
        intact = False
    elif sha(tar) != stats["sha256"]:
        report.add(name, "tar sha256 differs from its stats file (content changed on disk); "
                         "rewrite the shard")
        intact = False
    parquet = folder.join(META_DIR, f"{name}{PARQUET_SUFFIX}")
    if _size(parquet) is None:
        report.add(name, f"Parquet file {META_DIR}/{parquet.name} missing")
    elif sha(parquet) != stats["parquet_sha256"]:
        report.add(name, f"Parquet {META_DIR}/{parquet.name} sha256 differs from its stats file")
    return intact


def _stats_or_problem(folder: Location, name: str, report: Report) -> dict | None:
    split, index = parse_shard_name(name)
    try:
        return read_stats(folder, split, index)
    except StatsError as exc:
        report.add(name, f"stats file: {exc}")
        return None


# ---------------------------------------------------------------- deep checks
def _check_member(data: bytes, member: str) -> str | None:
    """Why ``data`` is not a valid ``member``, or None."""
    try:
        if member.endswith(".jpg"):
            from PIL import Image

            with Image.open(io.BytesIO(data)) as img:
                if img.format != "JPEG":
                    return f"not a JPEG ({img.format})"
                img.load()
        elif member in (ATTN, FEATURES):
            array = np.load(io.BytesIO(data), allow_pickle=False)
            ndim = 2 if member == ATTN else 1
            if array.dtype != np.float16 or array.ndim != ndim:
                return f"expected a {ndim}-D float16 array, got {array.dtype} {array.shape}"
            if not np.isfinite(array).all():
                return "NaN or Inf values"
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the finding
        return f"does not decode ({type(exc).__name__}: {exc})"
    return None


def _check_json(data: bytes, key: str) -> str | None:
    try:
        meta = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"does not decode ({exc})"
    if not isinstance(meta, dict) or not isinstance(meta.get("id"), str):
        return "has no 'id' string"
    if not isinstance(meta.get("votes"), list):
        return "has no 'votes' list"
    if safe_key(meta["id"]) != key:
        return f"id {meta['id']!r} does not give key {key!r} (expected {safe_key(meta['id'])!r})"
    return None


def baseline_members(manifest: Manifest | None) -> tuple[str, ...]:
    """The optional members the manifest says every sample stores (``warp.jpg``, ``orig.jpg``)."""
    if manifest is None:
        return ()
    return tuple(m for m, stored in ((WARP, manifest.run.warped), (ORIG, manifest.run.original)) if stored)


def _check_tar_members(path: Location, name: str, report: Report,
                       expected: tuple[str, ...] = ()) -> list[str] | None:
    """Decode every member; the sample keys in order, None when the tar cannot be read.
    ``expected``: members every sample must hold besides the required ones."""
    import tarfile

    keys: list[str] = []
    members: dict[str, set[str]] = {}
    try:
        with path.stream() as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            for info in tar:
                if not info.isfile():
                    report.add(name, f"unexpected non-file tar entry ({info.type!r})", info.name)
                    continue
                key, member = split_member_name(info.name)
                if not keys or keys[-1] != key:
                    if key in members:
                        report.add(name, "key occurs twice (members not consecutive "
                                         "or duplicate sample)", key)
                    keys.append(key)
                    members.setdefault(key, set())
                    if not is_safe_key(key):
                        report.add(name, "not a safe key", key)
                if not is_contract_member(member):
                    report.add(name, "member outside the shard contract", info.name)
                    continue
                if member in members[key]:
                    report.add(name, "member occurs twice", info.name)
                members[key].add(member)
                data = tar.extractfile(info).read()
                why = _check_json(data, key) if member == JSON else _check_member(data, member)
                if why:
                    report.add(name, why, f"{key}.{member}")
    except StorageError:
        raise               # the store failed, not the shard
    except (tarfile.TarError, EOFError, OSError) as exc:
        report.add(name, f"tar cannot be read to the end ({exc}): truncated or corrupt")
        return None
    for key in keys:
        missing = [m for m in (*REQUIRED_MEMBERS, *expected) if m not in members[key]]
        if missing:
            report.add(name, f"missing member(s) {', '.join(missing)}", key)
    return keys


def _check_parquet(folder: Location, name: str, stats: dict | None, keys: list[str] | None,
                   report: Report, disk: _Disk) -> None:
    """Rows of the shard's Parquet against the tar's keys and the stats counts."""
    path = folder.join(META_DIR, f"{name}{PARQUET_SUFFIX}")
    if f"{META_DIR}/{path.name}" not in disk.sizes:
        return
    try:
        table = read_parquet(path)
    except StorageError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds
        report.add(name, f"Parquet {META_DIR}/{path.name} unreadable ({exc})")
        return
    missing = [c for c in PARQUET_COLUMNS if c not in table.column_names]
    if missing:
        report.add(name, f"Parquet {META_DIR}/{path.name} lacks column(s) {', '.join(missing)}")
        return
    rows = table.select(["id", "shard", "key", "status"]).to_pylist()
    for row in rows:
        if row["shard"] != name:
            report.add(name, f"Parquet row says shard {row['shard']!r}", f"row id {row['id']!r}")
    ok_keys = Counter(r["key"] for r in rows if r["status"] == STATUS_OK)
    for key in sorted(k for k, n in ok_keys.items() if n > 1):
        report.add(name, "more than one 'ok' Parquet row", key)
    if stats is not None:
        if len(rows) != stats.get("rows", len(rows)):
            report.add(name, f"Parquet has {len(rows)} rows, stats say {stats['rows']}")
        if sum(ok_keys.values()) != stats["count"]:
            report.add(name, f"Parquet has {sum(ok_keys.values())} 'ok' rows, stats count "
                             f"{stats['count']} samples")
    if keys is None:
        return
    tar_keys = set(keys)
    for key in sorted(tar_keys - set(ok_keys)):
        report.add(name, "sample in the tar has no 'ok' Parquet row", key)
    for key in sorted(set(ok_keys) - tar_keys):
        report.add(name, "'ok' Parquet row has no sample in the tar", key)


# ---------------------------------------------------------------- manifest
def _check_manifest_entries(manifest: Manifest, disk: _Disk, report: Report) -> dict[str, ShardEntry]:
    listed: dict[str, ShardEntry] = {}
    for entry in manifest.shards:
        if parse_shard_name(entry.name) is None:
            report.add(MANIFEST_NAME, f"malformed shard entry {entry.name!r}")
            continue
        if entry.name in listed:
            report.add(MANIFEST_NAME, "shard listed twice", entry.name)
        listed[entry.name] = entry
    for name in sorted(disk.tars - set(listed)):
        report.add(name, f"tar on disk is not in {MANIFEST_NAME} (stray or unfinished shard); "
                         "delete it, or rebuild the manifest with --write-manifest")
    for name in sorted(set(listed) - disk.tars):
        report.add(name, f"listed in {MANIFEST_NAME} but the tar is missing")
    if not manifest.complete:
        report.add(MANIFEST_NAME, "marks the run incomplete: preprocessing has not finished; rerun the same "
                                  "`gpf preprocess` command to finish (a run that wrote no sample at all: fix "
                                  "the inputs, then rerun it with --overwrite)")
    return listed


def _compare_with_manifest(name: str, entry: ShardEntry, stats: dict, report: Report) -> None:
    for key in _MANIFEST_FIELDS:
        if getattr(entry, key) != stats.get(key):
            report.add(name, f"{MANIFEST_NAME} says {key} {getattr(entry, key)!r}, the stats file "
                             f"{stats.get(key)!r}")


def _rebuild_manifest(folder: Location, disk: _Disk, report: Report, sha: _Checksums) -> None:
    """Write the manifest from the stats files when every tar matches its stats."""
    check = Report(folder)
    for name in sorted(disk.tars - disk.stats):
        check.add(name, "tar has no stats file (unfinished shard); delete it or rerun preprocessing")
    for name in sorted(disk.stats):
        stats = _stats_or_problem(folder, name, check)
        if stats is not None:
            _check_files_against_stats(folder, name, stats, check, sha)
    if not check.ok:
        report.notes.append(f"{MANIFEST_NAME} not written: {len(check.problems)} shard "
                            "problem(s) below; fix them first")
        return
    try:
        previous = read_manifest(folder)
        run, complete = previous.run, previous.complete
    except ManifestError as exc:
        if _written_by_newer_gpf(folder):
            report.notes.append(f"{MANIFEST_NAME} not rewritten: {exc}")
            return
        run, complete = RunFields(), True
        report.notes.append("no readable old manifest: config, environment and run fields "
                            "are unknown (null) in the rebuilt one")
    write_manifest(folder, run, complete=complete)
    report.manifest_written = True
    report.notes.append(f"wrote {MANIFEST_NAME} from {len(disk.stats)} stats file(s)")


def _written_by_newer_gpf(folder: Location) -> bool:
    """Whether ``manifest.json`` declares a format newer than this gpf writes (never rewrite it: that loses data)."""
    try:
        version = json.loads(folder.join(MANIFEST_NAME).read_bytes().decode("utf-8")).get("format")
    except (OSError, ValueError, AttributeError):
        return False
    return type(version) is int and version > MANIFEST_FORMAT


def _check_run_fields(manifest: Manifest, report: Report) -> None:
    """Shards whose manifest lacks the score scale or view size cannot be trained or evaluated on."""
    missing = [name for name in ("scores", "threshold", "view_size") if getattr(manifest.run, name) is None]
    if missing:
        report.add(MANIFEST_NAME, f"lacks {', '.join(missing)} (a manifest rebuilt without its run fields?): "
                                  "nothing can be trained or evaluated on these shards; re-run `gpf preprocess` "
                                  "into a new --out folder")


# ---------------------------------------------------------------- entry point
def verify_shards(folder: str | os.PathLike | Location, deep: bool = True,
                  write_manifest: bool = False) -> Report:
    """Check every shard of ``folder`` (a folder or a URL prefix); see the module doc.

    ``deep=False`` checks existence, sizes, sha256 sums and counts only.
    ``write_manifest=True`` (re)writes ``manifest.json`` from the stats files
    first, when every tar has a stats file whose size and sha256 it matches
    (the run fields of a readable old manifest are kept).
    """
    location = as_location(folder)
    disk = _scan(location)
    if location.local is not None and not location.local.is_dir() or location.remote and not disk.sizes:
        raise StorageNotFoundError(f"{location}: no such shard folder")
    report = Report(location.local if location.local is not None else location, deep=deep)
    folder = location
    _refuse_other_folder(folder, disk)
    sha = _Checksums()
    for leftover in disk.leftovers:
        report.notes.append(f"leftover temp file {leftover} from an interrupted run "
                            "(harmless; overwritten on rerun)")
    if write_manifest:
        _rebuild_manifest(folder, disk, report, sha)
    try:
        manifest = read_manifest(folder)
    except ManifestError as exc:
        report.add(MANIFEST_NAME, str(exc))
        manifest = None
    listed = _check_manifest_entries(manifest, disk, report) if manifest else {}
    if manifest is not None:
        _check_run_fields(manifest, report)
    written, statuses, all_stats = 0, Counter(), True
    for name in sorted(set(listed) | disk.tars | disk.stats, key=_shard_sort_key):
        report.shards += 1
        stats = _stats_or_problem(folder, name, report)
        if stats is None:
            all_stats = False
            continue
        written += stats["count"]
        statuses.update(stats.get("status_counts") or {})
        if name in listed:
            _compare_with_manifest(name, listed[name], stats, report)
        intact = _check_files_against_stats(folder, name, stats, report, sha,
                                            missing_reported=name in listed)
        keys = None
        if deep and f"{name}{TAR_SUFFIX}" in disk.sizes:
            keys = _check_tar_members(folder.join(f"{name}{TAR_SUFFIX}"), name, report,
                                      baseline_members(manifest))
            if keys is not None and len(keys) != stats["count"]:
                report.add(name, f"tar holds {len(keys)} samples, stats count {stats['count']}")
        _check_parquet(folder, name, stats, keys, report, disk)
        report.samples += len(keys) if keys is not None else (stats["count"] if intact else 0)
    for name in sorted(disk.parquets - set(listed) - disk.tars - disk.stats):
        report.add(name, f"{META_DIR}/{name}{PARQUET_SUFFIX} belongs to no shard")
    if all_stats and written == 0:
        _nothing_written(folder, report, statuses)
    return report


def _refuse_other_folder(folder: Location, disk: _Disk) -> None:
    """A folder with none of a shard folder's files is not one: say so, not "preprocessing has not finished"."""
    if MANIFEST_NAME in disk.sizes or disk.tars or disk.stats or disk.parquets or disk.leftovers:
        return
    raise ManifestError(f"{folder} is not a shard folder: it holds no {MANIFEST_NAME}, no shard stats files "
                        f"and no shard tars. Shard folders are made by `gpf preprocess KIND ROOT --out DIR`")


def _nothing_written(folder: Location, report: Report, statuses: Counter) -> None:
    """A shard set with no sample at all (every image failed) is not usable, whatever else holds."""
    failed = sum(n for status, n in statuses.items() if status != STATUS_OK)
    why = ", ".join(f"{status} {n}" for status, n in sorted(statuses.items()))
    what = f"all {failed} image(s) failed: {why}" if failed else "there were no images"
    report.add(META_DIR, f"no sample was written ({what}); the status and error columns of the Parquet "
                         f"files in {folder.join(META_DIR)} say why for each image")


def _shard_sort_key(name: str):
    split, index = parse_shard_name(name)
    return (split, index)


# ---------------------------------------------------------------- info
def info(folder: str | os.PathLike) -> dict:
    """Counts per split and status, box statistics and run fields of a shard folder.

    ``boxes[split]``: mean box area as a fraction of the image and mean attention
    fraction inside the box, over 'ok' rows with a box.
    """
    folder = as_location(folder)
    if folder.remote or folder.local.is_dir():
        disk = _scan(folder)
        if disk.sizes or folder.local is not None:
            _refuse_other_folder(folder, disk)
    manifest = read_manifest(folder)
    boxes = {}
    for split in manifest.splits:
        areas, fractions = [], []
        for entry in manifest.entries(split):
            path = folder.join(entry.parquet)
            try:
                table = read_parquet(path, columns=["status", "width", "height", "x0", "y0",
                                                    "x1", "y1", "attn_fraction"])
            except StorageError:
                raise
            except Exception as exc:  # noqa: BLE001
                raise ShardReadError(f"{path}: unreadable Parquet ({exc}); run `gpf shards verify`") \
                    from None
            _box_stats(table.to_pydict(), areas, fractions)
        boxes[split] = {"rows": len(areas),
                        "mean_box_fraction": float(np.mean(areas)) if areas else None,
                        "mean_attn_fraction": float(np.mean(fractions)) if fractions else None}
    plain = manifest.to_dict()
    keys = ("complete", "dataset", "gpf_version", "scores", "threshold", "view_size", "tau",
            "eb_layer", "stage1_digest", "random_crops", "features", "config", "environment")
    return {"folder": str(folder), **{k: plain[k] for k in keys},
            "shards": len(manifest.shards), "splits": manifest.splits, "boxes": boxes}


def _box_stats(columns: dict, areas: list, fractions: list) -> None:
    for i, status in enumerate(columns["status"]):
        values = [columns[c][i] for c in ("width", "height", "x0", "y0", "x1", "y1")]
        if status != STATUS_OK or any(v is None for v in values) or not values[0] * values[1]:
            continue
        width, height, x0, y0, x1, y1 = values
        areas.append((x1 - x0) * (y1 - y0) / (width * height))
        if columns["attn_fraction"][i] is not None:
            fractions.append(columns["attn_fraction"][i])


def format_info(summary: dict) -> list[str]:
    """Human lines for :func:`info`'s dict."""
    lines = [f"{summary['folder']}: {summary['shards']} shard(s), dataset {summary['dataset']}, "
             f"gpf {summary['gpf_version']}" + ("" if summary["complete"] else " (INCOMPLETE)")]
    lines.append(f"view size {summary['view_size']}, tau {summary['tau']}, EB layer "
                 f"{summary['eb_layer']}, threshold {summary['threshold']}, scores "
                 f"{summary['scores']}")
    lines.append(f"random crops per image {summary['random_crops']}, peripheral features "
                 f"{'yes' if summary['features'] else 'no'}, stage-1 digest "
                 f"{summary['stage1_digest']}")
    for split, totals in summary["splits"].items():
        statuses = ", ".join(f"{k} {v}" for k, v in totals["status_counts"].items())
        box = summary["boxes"].get(split, {})
        area, frac = box.get("mean_box_fraction"), box.get("mean_attn_fraction")
        lines.append(f"  {split}: {totals['shards']} shard(s), {totals['samples']} sample(s), "
                     f"{totals['rows']} row(s) [{statuses}]; mean box area "
                     f"{'-' if area is None else f'{area:.3f}'}, mean attention in box "
                     f"{'-' if frac is None else f'{frac:.3f}'}")
    config = summary.get("config")
    if config:
        lines.append("config:")
        lines += _config_lines(config, "  ")
    return lines


def _config_lines(config: dict, indent: str) -> list[str]:
    """One ``key: value`` line per config key (nested dicts indented below their key); strings as they
    are, other values as JSON."""
    out = []
    for key in sorted(config):
        value = config[key]
        if isinstance(value, dict) and value:
            out.append(f"{indent}{key}:")
            out += _config_lines(value, indent + "  ")
        else:
            text = value if isinstance(value, str) and value.strip() == value and value else \
                json.dumps(value, default=str)
            out.append(f"{indent}{key}: {text}")
    return out


# ---------------------------------------------------------------- quick integrity gate for readers
CHECKSUM_CACHE = ".gpf-checksums.json"


def check_checksums(folder: str | os.PathLike | Location, manifest: Manifest | None = None,
                    splits: tuple[str, ...] | None = None, workers: int | None = None,
                    cache_dir: str | os.PathLike | None = None) -> list[str]:
    """Problems (one line each) where a listed tar's size or sha256 differs from the manifest.

    What training and evaluation run before they read a shard folder, so they
    never learn from rotten bytes. A tar's sha256 is remembered in
    ``CHECKSUM_CACHE`` keyed by (size, mtime), so only new or touched tars are
    hashed again; the cache is skipped where the folder is read-only.

    At a URL nothing is downloaded and nothing written to the store: every listed tar must exist with
    the size of its stats (one listing), and an object whose ETag changed since the shard cache in
    ``cache_dir`` verified it (same stats) is refused; the reader hashes each tar as it streams.
    """
    from concurrent.futures import ThreadPoolExecutor

    location = as_location(folder)
    manifest = manifest if manifest is not None else read_manifest(location)
    entries = [e for e in manifest.shards if splits is None or e.split in splits]
    if location.remote:
        return _check_remote_sizes(location, entries, cache_dir)
    folder = location.local
    cache = _read_checksum_cache(folder)
    problems: list[str] = []
    to_hash: list[tuple[ShardEntry, Path, list]] = []
    for entry in entries:
        tar = folder / f"{entry.name}{TAR_SUFFIX}"
        try:
            st = tar.stat()
        except OSError:
            problems.append(f"{tar}: missing (listed in {MANIFEST_NAME})")
            continue
        if st.st_size != entry.bytes:
            problems.append(f"{tar}: {st.st_size} bytes, the manifest says {entry.bytes} (truncated or "
                            "overwritten)")
            continue
        key = [st.st_size, st.st_mtime_ns]
        cached = cache.get(entry.name)
        if cached and cached[:2] == key:
            if cached[2] != entry.sha256:
                problems.append(f"{tar}: sha256 differs from the manifest (content changed on disk)")
            continue
        to_hash.append((entry, tar, key))
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        digests = list(pool.map(lambda item: file_sha256(item[1]), to_hash))
    for (entry, tar, key), digest in zip(to_hash, digests):
        cache[entry.name] = [*key, digest]
        if digest != entry.sha256:
            problems.append(f"{tar}: sha256 differs from the manifest (content changed on disk)")
    if to_hash:
        _write_checksum_cache(folder, cache)
    return problems


def _check_remote_sizes(folder: Location, entries: list[ShardEntry], cache_dir) -> list[str]:
    """:func:`check_checksums` at a URL: existence and size from one listing, ETags against the shard cache."""
    from .cache import ShardCache

    listing = folder.list()
    verified = ShardCache(cache_dir).etags() if cache_dir is not None else {}
    problems = []
    for entry in entries:
        tar = folder.join(f"{entry.name}{TAR_SUFFIX}")
        found = listing.get(tar.name)
        if found is None:
            problems.append(f"{tar}: missing (listed in {MANIFEST_NAME})")
        elif found.size != entry.bytes:
            problems.append(f"{tar}: {found.size} bytes, the manifest says {entry.bytes} (truncated or overwritten)")
        else:
            seen = verified.get(str(tar)) or {}
            if seen.get("sha256") == entry.sha256 and found.etag and seen.get("etag") not in (None, found.etag):
                problems.append(f"{tar}: its ETag changed since its bytes were verified against the manifest "
                                "(content changed in the store)")
    return problems


def _read_checksum_cache(folder: Path) -> dict:
    try:
        data = json.loads((folder / CHECKSUM_CACHE).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_checksum_cache(folder: Path, cache: dict) -> None:
    try:
        atomic_write_bytes(folder / CHECKSUM_CACHE, json.dumps(cache, sort_keys=True).encode())
    except OSError:
        pass  # a read-only shard folder: hash again next time
