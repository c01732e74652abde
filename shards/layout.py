"""Names and schemas of the on-disk shard contract.

A shard folder holds, per split and shard index::

    train-000000.tar               samples (WebDataset layout: ``{key}.{member}``)
    meta/train-000000.parquet      one row per input image, failures included
    train-000000.stats.json        count, bytes, sha256 ...; written last = done
    manifest.json                  every shard + the config that made them

Everything here is pure naming and hashing: no I/O.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

import pyarrow as pa

from ..errors import GPFError, OptionError

class ShardReadError(GPFError, ValueError):
    """A shard, its members or its metadata cannot be read; the message names the file (and key) and the fix."""


class JpegHeaderError(ShardReadError):
    """Bytes that are not a JPEG, or whose header is cut short (see :func:`jpeg_size`)."""


class DuplicateIdError(GPFError, ValueError):
    """An image id that appears more than once in one split (fix the label file or the split)."""


# ---------------------------------------------------------------- file names
SHARD_PATTERN = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-(?P<index>\d{6})$")
TAR_SUFFIX = ".tar"
STATS_SUFFIX = ".stats.json"
PARQUET_SUFFIX = ".parquet"
META_DIR = "meta"
MANIFEST_NAME = "manifest.json"
# Temp files are hidden (leading dot) so that ``pandas.read_parquet(DIR/meta)``
# (pyarrow ignores names starting with '.' or '_') and shard globbing skip them.
TEMP_PREFIX = "."
TEMP_SUFFIX = ".tmp"
MAX_SHARD_INDEX = 999_999


def shard_name(split: str, index: int) -> str:
    """``'train-000000'``: the stem shared by a shard's tar, Parquet and stats file."""
    if not isinstance(split, str) or not re.fullmatch(r"[A-Za-z0-9_]+", split):
        raise ValueError(f"split must be a non-empty name of letters, digits or '_' "
                         f"(e.g. 'train', 'val', 'test'), got {split!r}")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= MAX_SHARD_INDEX:
        raise ValueError(f"shard index must be an int in [0, {MAX_SHARD_INDEX}], got {index!r}")
    return f"{split}-{index:06d}"


def parse_shard_name(name: str) -> tuple[str, int] | None:
    """``'train-000012'`` -> ``('train', 12)``; None when ``name`` is not a shard stem."""
    match = SHARD_PATTERN.match(name)
    if match is None:
        return None
    return match["split"], int(match["index"])


def tar_filename(split: str, index: int) -> str:
    return shard_name(split, index) + TAR_SUFFIX


def stats_filename(split: str, index: int) -> str:
    return shard_name(split, index) + STATS_SUFFIX


def parquet_relpath(split: str, index: int) -> str:
    """Parquet path relative to the shard folder: ``meta/train-000000.parquet``."""
    return f"{META_DIR}/{shard_name(split, index)}{PARQUET_SUFFIX}"


def temp_name(final_name: str) -> str:
    """Hidden temp name in the same folder, fixed so a rerun overwrites leftovers."""
    return f"{TEMP_PREFIX}{final_name}{TEMP_SUFFIX}"


# ---------------------------------------------------------------- members
PERIPH = "periph.jpg"
FOVEA = "fovea.jpg"
ATTN = "attn.npy"
JSON = "json"
FEATURES = "pfeat.npy"
WARP = "warp.jpg"      # the whole photo warped to view_size x view_size (``--store-warped``; Table I baselines)
ORIG = "orig.jpg"      # the photo at original resolution (``--store-original``; Random-VGG16's patches)
BASELINE_MEMBERS = (WARP, ORIG)
REQUIRED_MEMBERS = (PERIPH, FOVEA, ATTN, JSON)
_RAND = re.compile(r"^rand(0|[1-9]\d{0,2})\.jpg$")
MAX_RANDOM_CROPS = 1000


def rand_member(k: int) -> str:
    """Name of the ``k``-th stored random crop: ``rand0.jpg``, ``rand1.jpg`` ..."""
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < MAX_RANDOM_CROPS:
        raise ValueError(f"random crop index must be an int in [0, {MAX_RANDOM_CROPS}), got {k!r}")
    return f"rand{k}.jpg"


def rand_index(member: str) -> int | None:
    """``'rand3.jpg'`` -> 3; None for any other member name."""
    match = _RAND.match(member)
    return int(match[1]) if match else None


def is_contract_member(member: str) -> bool:
    return (member in REQUIRED_MEMBERS or member == FEATURES or member in BASELINE_MEMBERS
            or rand_index(member) is not None)


def member_order(member: str) -> tuple[int, int]:
    """Sort key giving the fixed order of members inside a sample.

    json, periph.jpg, fovea.jpg, attn.npy, rand0.jpg, rand1.jpg, ..., pfeat.npy, warp.jpg, orig.jpg.
    """
    fixed = {JSON: 0, PERIPH: 1, FOVEA: 2, ATTN: 3, WARP: 6, ORIG: 7}
    if member in fixed:
        return (fixed[member], 0)
    k = rand_index(member)
    if k is not None:
        return (4, k)
    if member == FEATURES:
        return (5, 0)
    raise ValueError(f"{member!r} is not a shard member; allowed: {', '.join(REQUIRED_MEMBERS)}, "
                     f"rand{{k}}.jpg, {FEATURES}, {', '.join(BASELINE_MEMBERS)}")


def split_member_name(name: str) -> tuple[str, str]:
    """Tar member name ``'{key}.{member}'`` -> ``(key, member)`` (split at the first dot
    of the base name, as WebDataset does)."""
    head, _, base = name.rpartition("/")
    key, dot, member = base.partition(".")
    if not dot or not key:
        return (name, "")
    return (f"{head}/{key}" if head else key, member)


# Start-of-frame markers (baseline, progressive, lossless ...) carry the image size.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) read from a JPEG's start-of-frame header, without decoding.

    Raises :class:`JpegHeaderError` (a ``ValueError``) when ``data`` is not a JPEG or
    its header is cut short.
    """
    view = memoryview(data)
    if len(view) < 4 or view[0] != 0xFF or view[1] != 0xD8:
        raise JpegHeaderError("not a JPEG (does not start with the FFD8 marker)")
    pos, end = 2, len(view)
    while pos + 4 <= end:
        if view[pos] != 0xFF:
            raise JpegHeaderError(f"corrupt JPEG header: expected a marker at byte {pos}")
        marker = view[pos + 1]
        if marker == 0xFF:          # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        length = (view[pos + 2] << 8) | view[pos + 3]
        if marker in _SOF_MARKERS:
            if pos + 9 > end:
                break
            height = (view[pos + 5] << 8) | view[pos + 6]
            width = (view[pos + 7] << 8) | view[pos + 8]
            return width, height
        if marker == 0xDA or length < 2:  # start of scan before any frame header
            break
        pos += 2 + length
    raise JpegHeaderError("JPEG header has no frame size (truncated or corrupt)")


# ---------------------------------------------------------------- keys
MAX_KEY_LENGTH = 64
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,%d}" % (MAX_KEY_LENGTH - 1))
HASHED_KEY_PREFIX = "_"
HASHED_KEY_HEX = 24


def safe_key(image_id: str) -> str:
    """Tar key of an image id.

    An id made only of ASCII letters, digits, ``_`` and ``-``, starting with a letter
    or digit and at most 64 characters (AVA's ``'953619'``) is its own key. Any
    other id (dots, slashes, spaces, non-ASCII, too long) becomes ``'_'`` + the first
    24 hex digits of SHA-1 of its UTF-8 bytes. Kept ids never start with ``'_'``,
    so the two kinds cannot collide; two hashed ids collide with probability
    about n^2 / 2^97 (1e-17 for a million ids). The original id is kept in the
    ``json`` member and the Parquet row.
    """
    if not isinstance(image_id, str):
        raise TypeError(f"image id must be a str, got {type(image_id).__name__}: {image_id!r}")
    if _SAFE_ID.fullmatch(image_id):
        return image_id
    digest = hashlib.sha1(image_id.encode("utf-8", "surrogatepass")).hexdigest()
    return HASHED_KEY_PREFIX + digest[:HASHED_KEY_HEX]


def is_safe_key(key: str) -> bool:
    """True for keys :func:`safe_key` can return."""
    if not isinstance(key, str):
        return False
    if _SAFE_ID.fullmatch(key):
        return True
    return (len(key) == 1 + HASHED_KEY_HEX and key.startswith(HASHED_KEY_PREFIX)
            and all(c in "0123456789abcdef" for c in key[1:]))


# ---------------------------------------------------------------- shard assignment
def _id_rank(image_id: str, seed: int) -> bytes:
    return hashlib.sha1(f"{seed}\x00{image_id}".encode("utf-8", "surrogatepass")).digest()


def assign_shards(ids: Iterable[str], samples_per_shard: int, seed: int = 0) -> dict[str, int]:
    """Shard index of every id of one split.

    Ids are sorted by SHA-1 of ``(seed, id)`` and cut into consecutive groups of
    ``samples_per_shard``: every shard but the last holds exactly that many ids,
    each shard is a uniform random sample of the split (neighbouring AVA ids
    share challenges and scores), and the result does not depend on input order.
    Failed images are assigned too (their row goes into the shard's Parquet).
    """
    if isinstance(samples_per_shard, bool) or not isinstance(samples_per_shard, int) \
            or samples_per_shard < 1:
        raise OptionError(f"samples_per_shard must be a positive int, got {samples_per_shard!r}",
                          param="samples_per_shard")
    ids = list(ids)
    seen: set[str] = set()
    duplicates = sorted({i for i in ids if i in seen or seen.add(i)})
    if duplicates:
        shown = ", ".join(repr(d) for d in duplicates[:5])
        raise DuplicateIdError(f"duplicate image ids in one split ({len(duplicates)}: {shown}); "
                               "each id must appear once — fix the label file or the split")
    ordered = sorted(ids, key=lambda i: (_id_rank(i, seed), i))
    n_shards = -(-len(ordered) // samples_per_shard)
    if n_shards - 1 > MAX_SHARD_INDEX:
        raise OptionError(f"{len(ids)} ids at {samples_per_shard} per shard need {n_shards} shards, "
                          f"more than {MAX_SHARD_INDEX + 1}; raise samples_per_shard", param="samples_per_shard")
    return {image_id: position // samples_per_shard for position, image_id in enumerate(ordered)}


# ---------------------------------------------------------------- Parquet schema
STATUS_OK = "ok"

PARQUET_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("shard", pa.string(), nullable=False),
    pa.field("key", pa.string(), nullable=False),
    pa.field("path", pa.string()),           # source image file
    pa.field("width", pa.int32()),           # upright original, pixels
    pa.field("height", pa.int32()),
    pa.field("votes", pa.list_(pa.int64())),
    pa.field("n_votes", pa.int64()),
    pa.field("mean", pa.float64()),          # mean score over the dataset's score scale
    pa.field("std", pa.float64()),
    pa.field("tags", pa.list_(pa.string())),
    pa.field("category", pa.string()),
    pa.field("challenge", pa.int64()),
    pa.field("x0", pa.int32()),              # foveal box, half-open, upright original pixels
    pa.field("y0", pa.int32()),
    pa.field("x1", pa.int32()),
    pa.field("y1", pa.int32()),
    pa.field("attn_fraction", pa.float64()),  # attention mass inside the box
    pa.field("status", pa.string(), nullable=False),  # 'ok' or a failure kind
    pa.field("error", pa.string()),          # null when ok
])
PARQUET_COLUMNS = tuple(PARQUET_SCHEMA.names)
REQUIRED_COLUMNS = ("id", "status")
