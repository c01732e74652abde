"""``manifest.json``: every shard of a folder and what made them, as one typed record.

:class:`Manifest` is the only reader and writer of ``manifest.json``: it lists
each shard (from its stats file, :class:`ShardEntry`) with count and sha256,
plus the run fields that made them (:class:`RunFields`: dataset, score scale and
threshold, view size, tau, EB layer, contrastive flag, the attention model and
its digest, the split, the config and the environment). Preprocessing writes it
with ``complete=False`` when a run starts (so a resume can be compared with
:func:`compare_config` and refused when the config or environment differ) and
with ``complete=True`` when every shard is done. No timestamps: the same run
gives the same bytes.

Format history (``format``):

* 1 — gpf 0.1.0: contrastive flag, attention model, features digest and split
  spec only inside ``config``.
* 2 — gpf 0.2.0: those four are run fields of their own. Format-1 files are read (the four
  taken from ``config``); a newer format is refused naming both versions.
  The optional run field ``score_columns`` (folder CSV: column -> score bucket)
  came later within format 2: a manifest without it reads it as None.
  So did ``warped`` and ``original`` (whether the samples store ``warp.jpg`` and
  ``orig.jpg``, the Table I baselines' views): absent reads as None, "not stored".
* 3 — gpf 0.3.0: backbone-neutral views. New run fields: ``view_round`` and
  ``view_min_side`` (the peripheral view's short side is rounded to a multiple
  of ``view_round`` = 8 and is at least ``max(view_min_side, view_round)``),
  ``view_fit`` (how the attention network took views below its minimum input:
  ``pad`` | ``enlarge``), ``features_from`` (``jpeg``: ``pfeat.npy`` comes from
  the JPEG-decoded peripheral view, what the trainer decodes), ``jpeg_quality``
  and ``jpeg_subsampling`` of the stored views. Formats 1 and 2 are read as they
  were made: ``view_round``/``view_min_side``/``view_fit`` None (the views were
  rounded to the attention backbone's stride and at least its minimum input:
  :meth:`gpf.model.geometry.ViewGeometry.legacy`), ``features_from`` ``pixels``
  where features were stored (computed before the JPEG encode), ``jpeg_quality``
  from ``config`` and ``jpeg_subsampling`` 4:2:0 (the encoder's default then).
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any

from ..errors import GPFError
from ..plaintypes import is_kind, kinds_text
from ..vocabulary import VIEW_FITS
from .layout import (MANIFEST_NAME, STATS_SUFFIX, TAR_SUFFIX, TEMP_PREFIX, parse_shard_name,
                               parquet_relpath, tar_filename)
from .storage import Location, StorageError, as_location
from .writer import atomic_write_bytes, dump_json, read_stats

MANIFEST_FORMAT = 3
READABLE_FORMATS = (1, 2, 3)
#: What the stored peripheral descriptors (``pfeat.npy``) were computed from: the JPEG-decoded view (format 3)
#: or the pixels before the JPEG encode (formats 1 and 2).
FEATURES_FROM = ("jpeg", "pixels")
#: The chroma subsampling every view of a format-1/2 shard was encoded with (encode_jpeg's default).
LEGACY_JPEG_SUBSAMPLING = "4:2:0"


class ManifestError(GPFError, ValueError):
    """``manifest.json`` is missing, unreadable or not a gpf manifest."""


# ----------------------------------------------------------------------------- records

@dataclass(frozen=True)
class ShardEntry:
    """The manifest's record of one finished shard, copied from its stats file."""
    name: str
    split: str
    index: int
    tar: str
    parquet: str
    count: int
    bytes: int
    sha256: str
    parquet_sha256: str
    status_counts: dict
    rows: int | None = None
    parquet_bytes: int | None = None
    periph_shapes: list = field(default_factory=list)
    random_crops: int = 0
    features: bool = False

    @classmethod
    def from_stats(cls, stats: dict, split: str, index: int) -> "ShardEntry":
        return cls(name=f"{split}-{index:06d}", split=split, index=index, tar=tar_filename(split, index),
                   parquet=parquet_relpath(split, index), count=stats["count"], bytes=stats["bytes"],
                   sha256=stats["sha256"], parquet_sha256=stats["parquet_sha256"],
                   status_counts=stats["status_counts"], rows=stats.get("rows"),
                   parquet_bytes=stats.get("parquet_bytes"), periph_shapes=stats.get("periph_shapes", []),
                   random_crops=stats.get("random_crops", 0), features=stats.get("features", False))

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "ShardEntry":
        if not isinstance(data, dict):
            raise ManifestError(f"{where}: a shard entry is a {type(data).__name__}, not an object")
        missing = [name for name in _REQUIRED_ENTRY_KEYS if name not in data]
        if missing:
            raise ManifestError(f"{where}: the entry of shard {data.get('name', '?')} lacks "
                                f"{', '.join(missing)}; rewrite the manifest with "
                                "`gpf shards verify DIR --write-manifest`")
        known = {f.name for f in fields(cls)}
        try:
            for name, kinds in _ENTRY_FIELD_TYPES.items():
                _check_type(f"the entry of shard {data.get('name', '?')}: {name!r}", data.get(name), kinds)
        except TypeError as exc:
            raise ManifestError(f"{where}: {exc}; rewrite the manifest with `gpf shards verify DIR "
                                "--write-manifest`") from None
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)


_REQUIRED_ENTRY_KEYS = tuple(f.name for f in fields(ShardEntry)
                             if f.default is MISSING and f.default_factory is MISSING)
_MOVED_INTO_RUN_IN_FORMAT_2 = ("contrastive", "attention_model", "features_digest", "split_spec")


def _check_type(what: str, value, kinds: tuple) -> None:
    """``TypeError`` naming ``what`` unless ``value`` is None or of ``kinds`` (:func:`gpf.plaintypes.is_kind`)."""
    if value is not None and not is_kind(value, kinds):
        raise TypeError(f"{what} must be {kinds_text(kinds, ', ')} or null, got {value!r}")


_RUN_FIELD_TYPES = {"dataset": (str,), "scores": (list, tuple), "threshold": ("number",), "view_size": (int,),
                    "tau": ("number",), "eb_layer": (str,), "contrastive": (bool,), "stage1_digest": (str,),
                    "attention_model": (dict,), "features_digest": (str,), "split_spec": (dict,),
                    "config": (dict,), "environment": (dict,), "score_columns": (list,), "view_round": (int,),
                    "view_min_side": (int,), "view_fit": (str,), "features_from": (str,), "jpeg_quality": (int,),
                    "jpeg_subsampling": (str,),
                    "warped": (bool,), "original": (bool,)}
_ENTRY_FIELD_TYPES = {"name": (str,), "split": (str,), "index": (int,), "tar": (str,), "parquet": (str,),
                      "count": (int,), "bytes": (int,), "sha256": (str,), "parquet_sha256": (str,),
                      "status_counts": (dict,), "rows": (int,), "parquet_bytes": (int,),
                      "periph_shapes": (list, tuple), "random_crops": (int,), "features": (bool,)}


@dataclass(frozen=True)
class RunFields:
    """What made a shard folder: every field a resume, stage 2, evaluate and predict compare.

    ``attention_model`` describes the network whose EB maps chose the crops
    (``kind`` stage1|imagenet, ``backbone``, ``weights``, ``path``, ``digest``);
    ``stage1_digest`` is its digest when it is a stage-1 checkpoint (None for an
    ImageNet classifier); ``features_digest`` the digest of the network whose
    pooled descriptors are stored as ``pfeat.npy`` (None without them).
    ``score_columns`` says which label-file column held the votes of which score
    bucket (``[{"column": "c1", "bucket": 1, "score": 1.0}, ...]``) for a folder CSV;
    None for AVA and Photo.net (fixed formats) and in manifests written before it.
    ``view_round``, ``view_min_side``, ``view_fit``, ``features_from``,
    ``jpeg_quality`` and ``jpeg_subsampling``: how the stored views were made
    (format 3; see the module doc for what older formats read as).
    ``warped`` / ``original``: every sample stores ``warp.jpg`` / ``orig.jpg``
    (``--store-warped`` / ``--store-original``); None (older manifests) means not stored.
    """
    dataset: str | None = None
    scores: tuple[float, ...] | None = None
    threshold: float | None = None
    view_size: int | None = None
    tau: float | None = None
    eb_layer: str | None = None
    contrastive: bool | None = None
    stage1_digest: str | None = None
    attention_model: dict | None = None
    features_digest: str | None = None
    split_spec: dict | None = None
    config: dict | None = None
    environment: dict | None = None
    score_columns: list | None = None
    view_round: int | None = None
    view_min_side: int | None = None
    view_fit: str | None = None
    features_from: str | None = None
    jpeg_quality: int | None = None
    jpeg_subsampling: str | None = None
    warped: bool | None = None
    original: bool | None = None

    def __post_init__(self):
        for name, kinds in _RUN_FIELD_TYPES.items():
            _check_type(f"run field {name!r}", getattr(self, name), kinds)
        if self.scores is not None:
            if not all(is_kind(s, ("number",)) for s in self.scores):
                raise TypeError(f"run field 'scores' must be a list of numbers, got {self.scores!r}")
            object.__setattr__(self, "scores", tuple(float(s) for s in self.scores))
        if self.threshold is not None:
            object.__setattr__(self, "threshold", float(self.threshold))
        if self.tau is not None:
            object.__setattr__(self, "tau", float(self.tau))
        for name, allowed in (("features_from", FEATURES_FROM), ("view_fit", VIEW_FITS)):
            if getattr(self, name) is not None and getattr(self, name) not in allowed:
                raise ValueError(f"run field {name!r} must be one of {', '.join(allowed)} or null, "
                                 f"got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, data: Any, where: str, version: int = MANIFEST_FORMAT) -> "RunFields":
        """The run fields of a manifest dict (or of the copy a stage-2 checkpoint keeps) of ``version``."""
        data = data if isinstance(data, dict) else {}
        run = {k: data.get(k) for k in _RUN_KEYS}
        config = data.get("config") if isinstance(data.get("config"), dict) else {}
        if version == 1:
            for key in _MOVED_INTO_RUN_IN_FORMAT_2:
                run[key] = data.get(key, config.get(key))
        if version < 3:   # as they were made: see the module doc
            run.update(view_round=None, view_min_side=None, view_fit=None,
                       features_from="pixels" if run.get("features_digest") else None,
                       jpeg_quality=config.get("jpeg_quality"), jpeg_subsampling=LEGACY_JPEG_SUBSAMPLING)
        try:
            return cls(**run)
        except (TypeError, ValueError) as exc:
            raise ManifestError(f"{where}: {exc}; the file is damaged: re-run `gpf preprocess` into a new "
                                "--out folder") from None

    @property
    def attention_unrecorded(self) -> list[str]:
        """The attention settings this record lacks (a manifest rebuilt without its run fields)."""
        missing = [name for name in ("tau", "eb_layer", "contrastive") if getattr(self, name) is None]
        return (["attention digest"] if not self.attention_digest else []) + missing

    @property
    def attention_digest(self) -> str | None:
        """Digest of the attention model's state dict (a stage-1 model or an ImageNet classifier)."""
        return self.stage1_digest or (self.attention_model or {}).get("digest")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["scores"] = None if self.scores is None else list(self.scores)
        return out


_RUN_KEYS = tuple(f.name for f in fields(RunFields))


@dataclass(frozen=True)
class Manifest:
    """``manifest.json`` of a shard folder (see the module doc)."""
    run: RunFields
    shards: tuple[ShardEntry, ...]
    complete: bool = True
    gpf_version: str | None = None
    format: int = MANIFEST_FORMAT

    # -- derived from the shards
    @property
    def random_crops(self) -> int:
        """K random crops stored for every sample (0 when a shard with samples has none)."""
        return min((s.random_crops for s in self.shards if s.count), default=0)

    @property
    def features(self) -> bool:
        """Whether every shard with samples stores the peripheral descriptors (``pfeat.npy``)."""
        with_samples = [s for s in self.shards if s.count]
        return bool(with_samples) and all(s.features for s in with_samples)

    @property
    def splits(self) -> dict:
        """``{split: {'shards', 'samples', 'rows', 'status_counts'}}``, sorted."""
        totals: dict[str, dict] = {}
        for entry in self.shards:
            split = totals.setdefault(entry.split, {"shards": 0, "samples": 0, "rows": 0,
                                                    "status_counts": Counter()})
            split["shards"] += 1
            split["samples"] += entry.count
            split["rows"] += entry.rows or 0
            split["status_counts"].update(entry.status_counts)
        return {name: {**t, "status_counts": dict(sorted(t["status_counts"].items()))}
                for name, t in sorted(totals.items())}

    def entries(self, split: str | None = None) -> list[ShardEntry]:
        """The shards of ``split`` (all when None), in manifest order."""
        return [e for e in self.shards if split is None or e.split == split]

    def samples(self, split: str) -> int:
        return sum(e.count for e in self.entries(split))

    def splits_with_samples(self) -> list[str]:
        return sorted({e.split for e in self.shards if e.count})

    # -- plain form
    def to_dict(self) -> dict:
        return {"format": MANIFEST_FORMAT, "gpf_version": self.gpf_version, "complete": bool(self.complete),
                **self.run.to_dict(), "random_crops": self.random_crops, "features": self.features,
                "splits": self.splits, "shards": [e.to_dict() for e in self.shards]}

    @classmethod
    def from_dict(cls, data: Any, where: str = MANIFEST_NAME) -> "Manifest":
        """Read a manifest of any readable format; :class:`ManifestError` naming ``where`` otherwise."""
        if not isinstance(data, dict) or not isinstance(data.get("shards"), list):
            raise ManifestError(f"{where}: not a gpf shard manifest (no 'shards' list)")
        version = data.get("format")
        if type(version) is not int or version not in READABLE_FORMATS:
            from .._version import __version__

            newer = isinstance(version, int) and version > MANIFEST_FORMAT
            advice = "upgrade gpf to read it" if newer else "re-run `gpf preprocess` into a new --out folder"
            raise ManifestError(f"{where}: manifest format {version!r} (written by gpf "
                                f"{data.get('gpf_version', '?')}); this gpf {__version__} reads formats "
                                f"{', '.join(map(str, READABLE_FORMATS))}: {advice}")
        shards = tuple(ShardEntry.from_dict(e, where) for e in data["shards"])
        if not isinstance(data.get("complete", True), bool):
            raise ManifestError(f"{where}: 'complete' must be true or false, got {data.get('complete')!r}")
        return cls(run=RunFields.from_dict(data, where, version), shards=shards, complete=data.get("complete", True) is not False,
                   gpf_version=data.get("gpf_version"), format=version)


# ----------------------------------------------------------------------------- files

def find_stats_files(out_dir: str | os.PathLike | Location,
                     listing: dict | None = None) -> list[tuple[str, int]]:
    """``(split, index)`` of every ``{split}-{index}.stats.json`` in ``out_dir`` (one listing), sorted."""
    names = listing if listing is not None else as_location(out_dir).list()
    found = []
    for name in names:
        if name.startswith(TEMP_PREFIX) or not name.endswith(STATS_SUFFIX):
            continue
        parsed = parse_shard_name(name[: -len(STATS_SUFFIX)])
        if parsed is not None:
            found.append(parsed)
    return sorted(found)


def build_manifest(out_dir: str | os.PathLike | Location, run: RunFields, *, complete: bool = True,
                   gpf_version: str | None = None) -> Manifest:
    """The manifest of ``out_dir``: the shards from the stats files found there, and ``run``."""
    if gpf_version is None:
        from .._version import __version__ as gpf_version
    shards = tuple(ShardEntry.from_stats(read_stats(out_dir, split, index), split, index)
                   for split, index in find_stats_files(out_dir))
    return Manifest(run=run, shards=shards, complete=bool(complete), gpf_version=gpf_version)


def write_manifest(out_dir: str | os.PathLike | Location, run: RunFields, *, complete: bool = True,
                   gpf_version: str | None = None) -> Manifest:
    """Write ``out_dir/manifest.json`` atomically (from the stats files and ``run``) and return it."""
    manifest = build_manifest(out_dir, run, complete=complete, gpf_version=gpf_version)
    atomic_write_bytes(as_location(out_dir).join(MANIFEST_NAME), dump_json(manifest.to_dict(), what="manifest") + b"\n")
    return manifest


def read_manifest(out_dir: str | os.PathLike | Location) -> Manifest:
    """The manifest of ``out_dir`` (a folder or a URL prefix); :class:`ManifestError` saying what to do otherwise."""
    out_dir = as_location(out_dir)
    path = out_dir.join(MANIFEST_NAME)
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        listing = out_dir.list()
        if not listing and not out_dir.is_dir():
            raise ManifestError(f"{out_dir}: no such shard folder") from None
        if not find_stats_files(out_dir, listing) and not any(n.endswith(TAR_SUFFIX) for n in listing):
            raise ManifestError(f"{out_dir} is not a shard folder: it holds no {MANIFEST_NAME}, no shard stats "
                                "files and no shard tars. Shard folders are made by `gpf preprocess KIND ROOT "
                                "--out DIR`") from None
        raise ManifestError(f"{path}: missing — preprocessing has not finished here. Rerun "
                            "`gpf preprocess` to finish, or, if every shard is done, "
                            f"`gpf shards verify {out_dir} --write-manifest`") from None
    except StorageError as exc:
        if out_dir.remote:
            raise
        raise ManifestError(f"{path}: unreadable ({exc}); rewrite it with "
                            f"`gpf shards verify {out_dir} --write-manifest`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: unreadable ({exc}); rewrite it with "
                            f"`gpf shards verify {out_dir} --write-manifest`") from None
    return Manifest.from_dict(data, str(path))


def read_run_fields(out_dir: str | os.PathLike | Location) -> RunFields | None:
    """The run fields of a readable manifest in ``out_dir`` (any complete state); None otherwise."""
    try:
        return read_manifest(out_dir).run
    except ManifestError:
        return None


def run_fields(manifest: Manifest) -> dict:
    """The parts of a manifest that must agree before a run may resume into it (plain, comparable)."""
    return manifest.run.to_dict()


def with_run(manifest: Manifest, **changes) -> Manifest:
    """A copy of ``manifest`` with some run fields replaced."""
    return replace(manifest, run=replace(manifest.run, **changes))


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


def recorded_differences(path: str | os.PathLike, current: dict) -> list[str] | None:
    """How the config recorded in the JSON file ``path`` differs from ``current`` (:func:`compare_config`
    lines; one line saying so when the file is unreadable); None when there is no such file."""
    where = as_location(path)
    try:
        previous = json.loads(where.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, StorageError, ValueError):
        return [f"{where} is unreadable"]
    return compare_config(previous, current)


def _plain(value):
    """Round-trip through JSON so tuples, numpy scalars and paths compare like stored values."""
    return json.loads(dump_json(value, what="config")) if value is not None else None
