"""Stream shards into training and evaluation batches.

One :class:`ShardDataset` per rank yields whole batches (the DataLoader runs with
``batch_size=None``). Each worker reads its own shards sequentially with
``tarfile``, keeps the raw bytes of a sample until the sample is put into a batch,
groups samples by image shape (so batches never need padding) and decodes the
JPEG members of a finished batch to ``uint8`` CHW tensors with
``torchvision.io.decode_jpeg``. Normalisation happens later, on the device.
Nothing is ever unpickled; members outside the contract are skipped.

Training (``shuffle=True``): an epoch is a fixed number of full batches per rank,
``floor(samples / (world_size * batch_size))`` (``ceil`` with ``drop_last=False``),
the same on every rank, so DDP never waits on a rank that ran dry. The epoch's
shards are permuted by ``(seed, epoch)`` and dealt to ranks (``perm[rank::world]``)
then workers; the rank's batches are divided among its workers in proportion to
their samples. A worker that runs out before its quota starts over its shards in a
new order, so a sample can occur twice in an epoch or not at all (at most about
``shapes * (batch_size - 1)`` samples per worker per epoch, left over in partly
filled shape buckets, plus the rank's imbalance); over epochs every sample is
drawn alike. Needs ``world_size * num_workers`` non-empty shards.

Evaluation (``shuffle=False``): shards in index order, dealt ``[rank::world]`` then
``[worker::workers]``; each sample exactly once across ranks, full batches as their
shape bucket fills and the partly filled buckets at the end, so batch sizes vary
and ranks may see different numbers of batches (gather results after the loop).

The order of an epoch is a function of (seed, epoch, rank, world_size, num_workers).

Shards at a URL (:mod:`gpf.shards.storage`) stream: each tar is read front to
back in ranged reads with bounded read-ahead and retries, by the worker's own
filesystem instance, hashed as it streams and refused at its end when the hash
differs from its stats; ``cache_dir`` keeps verified tars for later epochs
(:mod:`gpf.shards.cache`).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import random
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

from ..errors import OptionError
from .cache import DEFAULT_MAX_BYTES, ShardCache
from .layout import (ShardReadError, ATTN, FEATURES, FOVEA, JSON, ORIG, PERIPH, WARP, jpeg_size, rand_index,
                               split_member_name)
from .manifest import read_manifest
from .storage import Location, StorageError, as_location

IMAGE_MEMBERS = {"periph": PERIPH, "fovea": FOVEA, "warp": WARP}
ALLOWED_MEMBERS = ("periph", "fovea", "attn", "warp")
#: The preprocess option that stores each optional image member (named when shards lack it).
MEMBER_OPTIONS = {WARP: "--store-warped", ORIG: "--store-original"}
DEFAULT_SHUFFLE_BUFFER = 1000
_READ_BUFFER = 1 << 20


@dataclass(frozen=True)
class ShardSpec:
    """One shard as the manifest describes it."""
    name: str
    path: Path | Location     # a local Path, or the Location of a tar at a URL
    split: str
    index: int
    count: int
    periph_shapes: tuple[tuple[int, int, int], ...] = ()  # (height, width, samples)
    random_crops: int = 0                                  # K stored in every sample
    bytes: int | None = None                               # size and sha256 from the stats
    sha256: str | None = None


def list_shards(shard_dir: str | os.PathLike | Location, split: str) -> list[ShardSpec]:
    """Shards of ``split`` listed in ``shard_dir/manifest.json``, by index."""
    shard_dir = as_location(shard_dir)
    manifest = read_manifest(shard_dir)
    if not manifest.complete:
        raise ShardReadError(f"{shard_dir}: preprocessing has not finished (manifest.json says "
                             "complete: false); rerun `gpf preprocess` to finish it")

    def where(tar: str) -> Path | Location:
        location = shard_dir.join(tar)
        return location.local if location.local is not None else location
    specs = [ShardSpec(name=e.name, path=where(e.tar), split=e.split, index=int(e.index), count=int(e.count),
                       periph_shapes=tuple(tuple(s) for s in e.periph_shapes), random_crops=int(e.random_crops),
                       bytes=e.bytes, sha256=e.sha256)
             for e in manifest.entries(split)]
    if not specs:
        splits = sorted({e.split for e in manifest.shards})
        raise ShardReadError(f"{shard_dir}: no shards of split {split!r}; the manifest has "
                             f"{', '.join(map(repr, splits)) or 'no shards'}")
    return sorted(specs, key=lambda s: s.index)


# ---------------------------------------------------------------- determinism helpers
def _rng(*parts) -> random.Random:
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def choose_random_crop(seed: int, epoch: int, key: str, crops: int) -> int:
    """Which of a sample's ``crops`` stored random crops it shows in ``epoch``."""
    digest = hashlib.blake2b(f"{seed}\x00{epoch}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % crops


def _largest_remainder(total: int, weights: Sequence[int]) -> list[int]:
    """Split ``total`` into integers proportional to ``weights`` (ties to the lowest index)."""
    weight_sum = sum(weights)
    if weight_sum == 0:
        return [0] * len(weights)
    exact = [total * w / weight_sum for w in weights]
    shares = [math.floor(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - shares[i]), i))
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    return shares


@dataclass(frozen=True)
class WorkerPlan:
    shards: tuple[ShardSpec, ...]
    batches: int | None  # None: read the shards once (evaluation)


def train_batches_per_rank(total: int, batch_size: int, world_size: int, drop_last: bool) -> int:
    """Full batches each rank yields per training epoch (the same on every rank)."""
    per_epoch = world_size * batch_size
    return total // per_epoch if drop_last else -(-total // per_epoch)


def plan_train_epoch(shards: Sequence[ShardSpec], *, batch_size: int, seed: int, epoch: int,
                     rank: int, world_size: int, workers: int, drop_last: bool) -> list[WorkerPlan]:
    """Shards and batch quota of each worker of ``rank`` for one training epoch."""
    shards = [s for s in sorted(shards, key=lambda s: s.index) if s.count > 0]
    needed = world_size * workers
    if len(shards) < needed:
        raise OptionError(
            f"training needs at least world_size x num_workers = {world_size} x {workers} = "
            f"{needed} non-empty shards, the split has {len(shards)}; write more, smaller shards "
            f"(lower samples_per_shard when preprocessing) or lower num_workers", param="num_workers")
    total = sum(s.count for s in shards)
    batches = train_batches_per_rank(total, batch_size, world_size, drop_last)
    if batches == 0:
        raise OptionError(f"the split has {total} samples, fewer than world_size x batch_size = "
                          f"{world_size} x {batch_size} = {world_size * batch_size}: not one full batch per "
                          f"rank; lower batch_size to at most {max(1, total // world_size)}",
                          param="batch_size")
    order = list(shards)
    _rng(seed, epoch, "shards").shuffle(order)
    mine = order[rank::world_size]
    per_worker = [tuple(mine[w::workers]) for w in range(workers)]
    quotas = _largest_remainder(batches, [sum(s.count for s in ws) for ws in per_worker])
    return [WorkerPlan(ws, q) for ws, q in zip(per_worker, quotas)]


def plan_eval(shards: Sequence[ShardSpec], *, rank: int, world_size: int,
              workers: int) -> list[WorkerPlan]:
    """Shards of each worker of ``rank`` for one pass reading every sample once."""
    mine = sorted(shards, key=lambda s: s.index)[rank::world_size]
    return [WorkerPlan(tuple(mine[w::workers]), None) for w in range(workers)]


def eval_batch_count(plan: WorkerPlan, batch_size: int, by_periph: bool) -> int:
    """Batches a worker yields in evaluation: one per ``batch_size`` samples of a shape."""
    if not by_periph:
        return math.ceil(sum(s.count for s in plan.shards) / batch_size)
    per_shape: dict[tuple[int, int], int] = {}
    for spec in plan.shards:
        if sum(n for _, _, n in spec.periph_shapes) != spec.count:
            raise ShardReadError(f"{spec.path}: its stats lack peripheral shapes; rewrite the shard "
                             "with this gpf version")
        for height, width, n in spec.periph_shapes:
            per_shape[(height, width)] = per_shape.get((height, width), 0) + n
    return sum(math.ceil(n / batch_size) for n in per_shape.values())


# ---------------------------------------------------------------- reading tars
class TarFormatError(ShardReadError):
    """A tar header is corrupt or the file ends inside a member."""


_BLOCK = 512
_REGULAR = (b"0", b"\x00", b"7")


def _octal(field: bytes, what: str) -> int:
    if field[:1] and field[0] & 0x80:           # GNU base-256 for sizes >= 8 GiB
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\x00", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise TarFormatError(f"bad {what} field {field!r} in a tar header") from None


def _pax_records(data: bytes) -> dict[str, str]:
    records, pos = {}, 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1: pos + length - 1].partition(b"=")
        records[key.decode("utf-8")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


@contextlib.contextmanager
def _opened(source):
    """``(file, size)`` of a local tar path, or of an already open stream with a ``size``."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb", buffering=_READ_BUFFER) as f:
            yield f, os.fstat(f.fileno()).st_size
    else:
        yield source, source.size


def iter_tar_members(path, keep) -> Iterator[tuple[str, bytes | None]]:
    """``(name, data)`` of each regular file in a tar, ``data`` None unless ``keep(name)``.

    A small reader for the USTAR files :class:`gpf.shards.writer.ShardWriter` writes
    (also PAX and GNU long names), about 5x faster than :mod:`tarfile` for many
    small members; members that are not kept are skipped with a seek. ``path`` is a
    local file or a stream (:class:`gpf.shards.storage.ObjectStream`, which skips by reading).
    """
    with _opened(path) as (f, file_size):
        long_name: str | None = None
        pax: dict[str, str] = {}
        while True:
            header = f.read(_BLOCK)
            if header == bytes(_BLOCK):       # end-of-archive block
                return
            if not header:
                raise TarFormatError("file ends without the end-of-archive block (truncated)")
            if len(header) < _BLOCK:
                raise TarFormatError("file ends inside a tar header (truncated)")
            checksum = _octal(header[148:156], "checksum")
            if checksum != sum(header) - sum(header[148:156]) + 8 * 32:
                raise TarFormatError(f"tar header checksum mismatch at byte {f.tell() - _BLOCK}")
            size = _octal(header[124:136], "size")
            kind = header[156:157]
            if "size" in pax:
                size = int(pax["size"])
            padded = size + (-size % _BLOCK)
            if kind in (b"x", b"L", b"g"):
                data = f.read(padded)[:size]
                if len(data) < size:
                    raise TarFormatError("file ends inside a tar member (truncated)")
                if kind == b"x":
                    pax = _pax_records(data)
                elif kind == b"L":
                    long_name = data.rstrip(b"\x00").decode("utf-8", "surrogateescape")
                continue
            name = pax.get("path") or long_name
            if name is None:
                name = header[0:100].split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")
                if header[257:262] == b"ustar" and header[345] != 0:
                    prefix = header[345:500].split(b"\x00", 1)[0].decode("utf-8",
                                                                           "surrogateescape")
                    name = f"{prefix}/{name}"
            long_name, pax = None, {}
            if kind in _REGULAR and keep(name):
                data = f.read(size)
                if len(data) < size:
                    raise TarFormatError(f"file ends inside member {name} (truncated)")
                f.seek(padded - size, 1)
                yield name, data
            else:
                if f.tell() + size > file_size:
                    raise TarFormatError(f"file ends inside member {name} (truncated)")
                f.seek(padded, 1)
                if kind in _REGULAR:
                    yield name, None


@contextlib.contextmanager
def _shard_source(path, size: int | None, sha256: str | None, cache: ShardCache | None):
    """What :func:`iter_tar_members` reads for one shard: a local file as it is; a tar at a URL (or a
    cached copy) as a stream hashed to its end and refused when the hash differs from ``sha256``."""
    location = path if isinstance(path, Location) else None
    if location is None:
        yield path
        return
    cached = cache.get(sha256, size) if cache is not None else None
    etag = None
    if cached is not None:
        stream = Location(cached).stream(size)
        sink = None
    else:
        if cache is not None and sha256:
            etag = location.info().etag
        sink = cache.writer(sha256) if cache is not None and sha256 else None
        stream = location.stream(size, sink=sink.write if sink else None)
    try:
        yield stream
        stream.drain()
        if sha256 and stream.hexdigest() != sha256:
            if cached is not None:
                cached.unlink(missing_ok=True)
            raise ShardReadError(f"{cached or location}: the sha256 of the bytes read differs from the shard's "
                                 "stats file (the object changed after it was written); not using it: run "
                                 "`gpf shards verify` on the folder and rewrite the shard")
        if sink is not None:
            sink.commit()
            cache.remember_etag(str(location), etag, sha256)
    finally:
        stream.close()
        if sink is not None:
            sink.abort()


def iter_samples(path, keep, *, size: int | None = None, sha256: str | None = None,
                 cache: ShardCache | None = None) -> Iterator[dict]:
    """Raw samples of a tar: ``{'__key__', '__shard__', member: bytes}`` for members
    where ``keep(key, member)`` holds; consecutive members sharing a key form a sample.

    ``path``: a local file, or the :class:`~gpf.shards.storage.Location` of a tar at a URL, which is
    streamed and checked against ``sha256`` at its end (``cache``: keep a verified copy)."""
    shard = path.name
    sample: dict | None = None

    def keep_name(name: str) -> bool:
        return keep(*split_member_name(name))

    try:
        with _shard_source(path, size, sha256, cache) as source:
            for name, data in iter_tar_members(source, keep_name):
                key, member = split_member_name(name)
                if sample is None or sample["__key__"] != key:
                    if sample is not None:
                        yield sample
                    sample = {"__key__": key, "__shard__": shard}
                if data is not None:
                    sample[member] = data
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: shard listed in the manifest is missing; "
                                "run `gpf shards verify` on the folder") from None
    except (TarFormatError, OSError, ValueError) as exc:
        if isinstance(exc, (StorageError, ShardReadError)) and not isinstance(exc, TarFormatError):
            raise
        raise ShardReadError(f"{path}: corrupt or truncated tar ({exc}); run `gpf shards verify` "
                         "on the folder and rewrite the shard") from None
    if sample is not None:
        yield sample


def iter_shard(spec: ShardSpec, keep, cache: ShardCache | None = None) -> Iterator[dict]:
    """:func:`iter_samples` of one listed shard, checked against its stats when it streams from a URL."""
    return iter_samples(spec.path, keep, size=spec.bytes, sha256=spec.sha256, cache=cache)


def _missing(sample: dict, member: str, hint: str = "") -> ShardReadError:
    return ShardReadError(f"{sample['__shard__']}, key {sample['__key__']!r}: no {member} member"
                      f"{hint}; run `gpf shards verify` on the folder")


def _npy(data: bytes, where: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ShardReadError(f"{where}: unreadable .npy ({exc})") from None


def _npy_shape(data: bytes, where: str) -> tuple[int, ...]:
    try:
        buffer = io.BytesIO(data)
        version = np.lib.format.read_magic(buffer)
        if version == (1, 0):
            shape = np.lib.format.read_array_header_1_0(buffer)[0]
        elif version == (2, 0):
            shape = np.lib.format.read_array_header_2_0(buffer)[0]
        else:
            shape = _npy(data, where).shape
    except (ValueError, OSError, EOFError) as exc:
        raise ShardReadError(f"{where}: unreadable .npy header ({exc})") from None
    return tuple(shape)


def _pil_decode(data: bytes) -> torch.Tensor:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        if img.format != "JPEG":
            raise RuntimeError(f"not a JPEG ({img.format})")
        array = np.array(img.convert("RGB"))
    return torch.from_numpy(array).permute(2, 0, 1)


def _torchvision_decoder():
    """``torchvision.io.decode_jpeg`` as bytes -> uint8 [3, H, W], or None without it.

    torchvision 0.29 deprecates its decoders in favour of TorchCodec; the
    DeprecationWarning is silenced per batch and PIL takes over where they are gone.
    """
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return None
    return lambda data: decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                                    mode=ImageReadMode.RGB)


def decode_jpegs_uint8(blobs: Sequence[bytes], names: Sequence[str]) -> list[torch.Tensor]:
    """``uint8`` tensors [3, H, W] of JPEG bytes (grey and CMYK converted to RGB), laid
    out HWC in memory as the decoder writes them; a JPEG that does not decode raises
    ValueError with its name."""
    decode = _torchvision_decoder() or _pil_decode
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for data, name in zip(blobs, names):
            try:
                out.append(decode(data))
            except (RuntimeError, OSError, ValueError) as exc:
                raise ShardReadError(f"{name}: JPEG does not decode ({exc})") from None
    return out


# ---------------------------------------------------------------- the dataset
class ShardDataset(IterableDataset):
    """Batches of one split for one rank (see the module doc for the sampling rules).

    Each batch: ``key``, ``id`` (lists of str), ``votes`` float32 [B, N], and as
    asked ``periph`` uint8 [B, 3, H, W], ``fovea`` uint8 [B, 3, S, S], ``attn``
    float32 [B, h, w], ``rand`` uint8 [B, 3, S, S] (one stored random crop per
    image, chosen by (seed, epoch, key)), ``pfeat`` float32 [B, C], ``warp`` uint8
    [B, 3, S, S] (the warped whole photo), and with ``patches=T`` ``patch`` uint8
    [B, T, 3, S, S] with ``patch_box`` int64 [B, T, 4] (view-size patches cut from
    ``orig.jpg``; :mod:`gpf.shards.patches`: training, T = 1, a fresh patch per
    epoch; evaluation, T fixed patches). All images of
    a batch share their shapes. Image tensors are in ``torch.channels_last`` memory
    format (the decoder's layout; ``.to(device)`` keeps it, convolutions accept
    it, and cuDNN is often faster with it); ``.contiguous()`` gives NCHW memory.
    """

    def __init__(self, shard_dir: str | os.PathLike, split: str, batch_size: int, *,
                 shuffle: bool = True, seed: int = 0, epoch: int = 0, num_workers: int = 0,
                 rank: int = 0, world_size: int = 1,
                 members: Sequence[str] = ("periph", "fovea"), random_crop_member: bool = False,
                 with_features: bool = False, drop_last: bool | None = None,
                 shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER, patches: int = 0,
                 cache_dir: str | os.PathLike | None = None, cache_bytes: int = DEFAULT_MAX_BYTES):
        super().__init__()
        _check_int("batch_size", batch_size, 1)
        _check_int("num_workers", num_workers, 0)
        _check_int("world_size", world_size, 1)
        _check_int("shuffle_buffer", shuffle_buffer, 1)
        _check_int("seed", seed, None)
        _check_int("epoch", epoch, 0)
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise OptionError(f"rank must be in [0, world_size={world_size}), got {rank!r}", param="rank")
        if isinstance(members, str):
            members = (members,)
        bad = [m for m in members if m not in ALLOWED_MEMBERS]
        if bad or len(set(members)) != len(members):
            raise OptionError(f"members {tuple(members)!r}: each must be one of "
                              f"{', '.join(ALLOWED_MEMBERS)}, without repeats", param="members")
        if not shuffle and drop_last:
            raise OptionError("evaluation (shuffle=False) reads every sample exactly once; "
                              "drop_last must be False or None", param="drop_last")
        self.shard_dir, self.split = as_location(shard_dir), split
        self.cache_dir, self.cache_bytes = cache_dir, cache_bytes
        self.batch_size, self.shuffle = batch_size, shuffle
        self.seed, self.epoch = seed, epoch
        self.num_workers, self.rank, self.world_size = num_workers, rank, world_size
        self.members = tuple(members)
        self.random_crop_member, self.with_features = random_crop_member, with_features
        self.drop_last = True if drop_last is None else bool(drop_last)
        self.shuffle_buffer = shuffle_buffer
        self.shards = list_shards(self.shard_dir, split)
        self.samples = sum(s.count for s in self.shards)
        if random_crop_member:
            without = [s.name for s in self.shards if s.count and not s.random_crops]
            if without:
                raise ShardReadError(f"random_crop_member=True but shard(s) {', '.join(without[:5])} "
                                 "store no random crops; preprocess with random crops for the "
                                 "'random' variant")
        self.patches, self.patch_side = patches, self._check_baseline_members(patches)
        self._plans(max(1, num_workers))  # fail now, not inside a worker

    def _check_baseline_members(self, patches: int) -> int:
        """Refuse members the shards do not store, naming the preprocess option; the patch side."""
        _check_int("patches", patches, 0)
        if self.shuffle and patches > 1:
            raise OptionError(f"training shows one fresh patch per sample and epoch; patches must be 0 or 1, "
                              f"got {patches}", param="patches")
        run = read_manifest(self.shard_dir).run
        needed = ([WARP] if "warp" in self.members else []) + ([ORIG] if patches else [])
        stored = {WARP: run.warped, ORIG: run.original}
        for member in needed:
            if not stored[member]:
                raise ShardReadError(f"the shards in {self.shard_dir} store no {member} (preprocessed without "
                                     f"{MEMBER_OPTIONS[member]}); re-run `gpf preprocess ... "
                                     f"{MEMBER_OPTIONS[member]}` into a new --out folder")
        return int(run.view_size or 0)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration produces."""
        _check_int("epoch", epoch, 0)
        self.epoch = epoch

    def _plans(self, workers: int) -> list[WorkerPlan]:
        if self.shuffle:
            return plan_train_epoch(self.shards, batch_size=self.batch_size, seed=self.seed,
                                    epoch=self.epoch, rank=self.rank, world_size=self.world_size,
                                    workers=workers, drop_last=self.drop_last)
        return plan_eval(self.shards, rank=self.rank, world_size=self.world_size, workers=workers)

    def __len__(self) -> int:
        """Batches this rank yields per epoch."""
        if self.shuffle:
            return train_batches_per_rank(self.samples, self.batch_size, self.world_size,
                                          self.drop_last)
        by_periph = bool({"periph", "attn"} & set(self.members))  # attn shape follows periph
        return sum(eval_batch_count(p, self.batch_size, by_periph)
                   for p in self._plans(max(1, self.num_workers)))

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        if not self.shuffle and workers != max(1, self.num_workers):
            raise OptionError(f"ShardDataset was built for num_workers={self.num_workers} but "
                              f"runs with {workers}; give the DataLoader the same num_workers", param="num_workers")
        plan = self._plans(workers)[worker]
        if plan.batches == 0 or not plan.shards:
            return
        if self.shuffle:
            samples = self._train_samples(plan.shards, worker)
        else:
            samples = (s for spec in plan.shards
                       for s in iter_shard(spec, self._keeper(spec), self._cache()))
        produced = 0
        for raw_batch in self._bucketed(samples, flush=not self.shuffle):
            yield self._collate(raw_batch)
            produced += 1
            if plan.batches is not None and produced == plan.batches:
                return

    # -- sample stream
    def _cache(self) -> ShardCache | None:
        """The local cache of streamed shards (only for shards at a URL and a ``cache_dir``)."""
        if self.cache_dir is None or self.shard_dir.local is not None:
            return None
        return ShardCache(self.cache_dir, self.cache_bytes)

    def _keeper(self, spec: ShardSpec):
        """Which members of ``spec`` to read: the asked ones, and of the random crops
        only the one this epoch shows (the others are skipped unread)."""
        wanted = {JSON} | {IMAGE_MEMBERS[m] for m in self.members if m in IMAGE_MEMBERS}
        if "attn" in self.members:
            wanted.add(ATTN)
        if self.with_features:
            wanted.add(FEATURES)
        if self.patches:
            wanted.add(ORIG)
        crops = spec.random_crops if self.random_crop_member else 0

        def keep(key: str, member: str) -> bool:
            if member in wanted:
                return True
            k = rand_index(member) if crops else None
            return k is not None and k == choose_random_crop(self.seed, self.epoch, key, crops)
        return keep

    def _train_samples(self, shards: Sequence[ShardSpec], worker: int) -> Iterator[dict]:
        """The worker's shards pass after pass, each pass through its own shuffle buffer
        (flushed at the end of the pass, so the first pass shows every sample once) and
        each pass after the first over the shards in a new order."""
        order, passes = list(shards), 0
        while True:
            cache = self._cache()
            stream = (s for spec in order for s in iter_shard(spec, self._keeper(spec), cache))
            rng = _rng(self.seed, self.epoch, self.rank, worker, "buffer", passes)
            produced = 0
            for sample in self._shuffled(stream, rng):
                produced += 1
                yield sample
            if produced == 0:
                raise ShardReadError(f"shards {[s.name for s in shards]} hold no samples although "
                                 "the manifest counts some; run `gpf shards verify`")
            passes += 1
            order = list(shards)
            _rng(self.seed, self.epoch, self.rank, worker, "pass", passes).shuffle(order)

    def _shuffled(self, samples: Iterator[dict], rng: random.Random) -> Iterator[dict]:
        buffer: list[dict] = []
        for sample in samples:
            buffer.append(sample)
            if len(buffer) >= self.shuffle_buffer:
                pick = rng.randrange(len(buffer))
                buffer[pick], buffer[-1] = buffer[-1], buffer[pick]
                yield buffer.pop()
        rng.shuffle(buffer)
        yield from buffer

    def _bucketed(self, samples: Iterator[dict], flush: bool) -> Iterator[list[dict]]:
        buckets: dict[tuple, list[dict]] = {}
        for sample in samples:
            self._select_random_crop(sample)
            self._cut_patches(sample)
            shape = self._shape_key(sample)
            bucket = buckets.setdefault(shape, [])
            bucket.append(sample)
            if len(bucket) == self.batch_size:
                yield bucket
                buckets[shape] = []
        if flush:
            yield from (b for b in buckets.values() if b)

    def _select_random_crop(self, sample: dict) -> None:
        if not self.random_crop_member:
            return
        crops = [m for m in sample if rand_index(m) is not None]
        if not crops:
            raise _missing(sample, "rand{k}.jpg", " (preprocess with random crops for the "
                                                  "'random' variant)")
        sample["__rand__"] = sample.pop(crops[0])

    def _cut_patches(self, sample: dict) -> None:
        """Decode ``orig.jpg`` and keep only the view-size patches this pass shows (see the class doc)."""
        if not self.patches:
            return
        from .patches import cut, test_patch_boxes, train_patch_box

        if ORIG not in sample:
            raise _missing(sample, ORIG, " (preprocess with --store-original)")
        name = f"{sample['__shard__']}, key {sample['__key__']!r}, {ORIG}"
        photo = decode_jpegs_uint8([sample.pop(ORIG)], [name])[0]
        size, key, side = (int(photo.shape[2]), int(photo.shape[1])), sample["__key__"], self.patch_side
        boxes = ([train_patch_box(size, side, self.seed, self.epoch, key)] if self.shuffle
                 else test_patch_boxes(size, side, self.seed, key, self.patches))
        sample["__patch__"] = torch.stack([cut(photo, box) for box in boxes])
        sample["__patch_box__"] = boxes

    def _shape_key(self, sample: dict) -> tuple:
        where = f"{sample['__shard__']}, key {sample['__key__']!r}"
        key = []
        members = [IMAGE_MEMBERS.get(name, ATTN) for name in self.members]
        if "__rand__" in sample:
            members.append("__rand__")
        for member in members:
            if member not in sample:
                raise _missing(sample, member)
            if member == ATTN:
                key.append(_npy_shape(sample[member], f"{where}, {member}"))
                continue
            try:
                key.append(jpeg_size(sample[member]))
            except ValueError as exc:
                raise ShardReadError(f"{where}, {member.strip('_')}: {exc}") from None
        return tuple(key)

    # -- decoding
    def _collate(self, samples: list[dict]) -> dict:
        metas = [self._meta(s) for s in samples]
        votes = [m["votes"] for m in metas]
        if len({len(v) for v in votes}) != 1:
            raise ShardReadError(f"{samples[0]['__shard__']}: vote lists of different lengths in one "
                             f"batch (keys {[s['__key__'] for s in samples[:5]]}...)")
        batch = {"key": [s["__key__"] for s in samples], "id": [m["id"] for m in metas],
                 "votes": torch.tensor(votes, dtype=torch.float32)}
        for name in self.members:
            if name == "attn":
                maps = [_npy(s[ATTN], f"{s['__shard__']}, key {s['__key__']!r}, {ATTN}")
                        for s in samples]
                batch["attn"] = torch.from_numpy(np.stack(maps).astype(np.float32))
            else:
                batch[name] = self._stack_jpegs(samples, IMAGE_MEMBERS[name])
        if self.random_crop_member:
            batch["rand"] = self._stack_jpegs(samples, "__rand__")
        if self.patches:
            batch["patch"] = torch.stack([s["__patch__"] for s in samples])
            batch["patch_box"] = torch.tensor([s["__patch_box__"] for s in samples], dtype=torch.int64)
        if self.with_features:
            for s in samples:
                if FEATURES not in s:
                    raise _missing(s, FEATURES, " (preprocess with peripheral features)")
            feats = [_npy(s[FEATURES], f"{s['__shard__']}, key {s['__key__']!r}, {FEATURES}")
                     for s in samples]
            batch["pfeat"] = torch.from_numpy(np.stack(feats).astype(np.float32))
        return batch

    @staticmethod
    def _meta(sample: dict) -> dict:
        where = f"{sample['__shard__']}, key {sample['__key__']!r}"
        if JSON not in sample:
            raise _missing(sample, JSON)
        try:
            meta = json.loads(sample[JSON])
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ShardReadError(f"{where}: json member unreadable ({exc})") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("votes"), list):
            raise ShardReadError(f"{where}: json member has no 'votes' list")
        meta.setdefault("id", sample["__key__"])
        return meta

    @staticmethod
    def _stack_jpegs(samples: list[dict], member: str) -> torch.Tensor:
        names = [f"{s['__shard__']}, key {s['__key__']!r}, {member.strip('_')}" for s in samples]
        return stack_decoded(decode_jpegs_uint8([s[member] for s in samples], names))


def stack_decoded(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """A batch ``[B, 3, H, W]`` (channels_last memory) of decoded views of one shape, as every batch is stacked.

    The decoder writes HWC; stacking HWC is a plain copy, 10x cheaper than
    transposing to NCHW. default_collate stacks straight into shared memory
    inside a worker, saving the DataLoader's copy when it sends the batch.
    """
    return default_collate([image.permute(1, 2, 0) for image in images]).permute(0, 3, 1, 2)


def _check_int(name: str, value, minimum: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or \
            (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise OptionError(f"{name} must be an int{bound}, got {value!r}", param=name)


# ---------------------------------------------------------------- the loader
class ShardLoader(DataLoader):
    """A DataLoader over a :class:`ShardDataset`; ``len()`` is this rank's batches."""

    def set_epoch(self, epoch: int) -> None:
        """Order of the next ``iter()`` (workers are started afresh each epoch)."""
        self.dataset.set_epoch(epoch)


def default_num_workers(shards: int, world_size: int, shuffle: bool) -> int:
    """Up to 4 workers, no more than CPUs and (training) than shards per rank allow."""
    workers = min(4, max(1, (os.cpu_count() or 1) - 1))
    if shuffle:
        workers = min(workers, shards // world_size)
    return max(0, workers)


def make_loader(shard_dir: str | os.PathLike, split: str, batch_size: int, *,
                shuffle: bool = True, seed: int = 0, epoch: int = 0,
                num_workers: int | None = None, rank: int = 0, world_size: int = 1,
                members: Sequence[str] = ("periph", "fovea"), random_crop_member: bool = False,
                with_features: bool = False, drop_last: bool | None = None,
                shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER, pin_memory: bool = False,
                prefetch_factor: int = 2, patches: int = 0, cache_dir: str | os.PathLike | None = None,
                cache_bytes: int = DEFAULT_MAX_BYTES) -> ShardLoader:
    """Loader of ``split`` for ``rank`` of ``world_size``; call ``set_epoch`` each epoch.

    ``num_workers=None`` picks :func:`default_num_workers`. See :class:`ShardDataset`
    for the batch contents and the module doc for the sampling rules. ``shard_dir`` may be a
    URL (:class:`gpf.shards.storage.Location`); ``cache_dir`` then keeps up to ``cache_bytes`` of
    verified tars on local disk for later epochs.
    """
    if num_workers is None:
        shards = [s for s in list_shards(shard_dir, split) if s.count > 0]
        num_workers = default_num_workers(len(shards), world_size, shuffle)
    dataset = ShardDataset(shard_dir, split, batch_size, shuffle=shuffle, seed=seed, epoch=epoch,
                           num_workers=num_workers, rank=rank, world_size=world_size,
                           members=members, random_crop_member=random_crop_member,
                           with_features=with_features, drop_last=drop_last,
                           shuffle_buffer=shuffle_buffer, patches=patches, cache_dir=cache_dir,
                           cache_bytes=cache_bytes)
    return ShardLoader(dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                       prefetch_factor=prefetch_factor if num_workers else None)
