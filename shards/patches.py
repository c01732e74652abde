"""Random-VGG16's second view: view-size patches of the original-resolution photo.

Paper, section IV-C: Random-VGG16's second column "uses random cropping method to
extract the local fine-grained information. The cropped patch size is fixed to be
224 x 224", at the photo's own resolution. The shards store that photo as
``orig.jpg`` (``gpf preprocess --store-original``); the reader cuts a fresh patch
each time a training sample is seen, and evaluation and ``gpf predict`` score a
fixed set of patches.

Positions come from SHA-256 of a label, the seed, the sample key and the draw:

* training: draw ``train/{epoch}``, seeded by the training seed, so the same photo
  gets a different patch every epoch, and the same one on a rerun;
* test: draws ``test/0 .. test/T-1``, seeded by the preprocess seed, the same in
  ``gpf evaluate`` and ``gpf predict`` (which keys a photo by ``safe_key(file stem)``).

The same in every process, Python and numpy version. Pure: no I/O, no decoding.
"""
from __future__ import annotations

import hashlib

Box = tuple[int, int, int, int]


def patch_box(size: tuple[int, int], side: int, seed: int, key: str, draw: str) -> Box:
    """Box ``(x0, y0, x1, y1)`` of a ``side`` square inside an image of ``size`` (width, height).

    The image must be at least ``side`` on both sides (``orig.jpg`` is stored so).
    """
    width, height = size
    if min(width, height) < side:
        raise ValueError(f"a {width}x{height} photo is smaller than the {side}-px patch; orig.jpg is stored "
                         "with its short side at least the view size (rewrite the shard with this gpf)")
    digest = hashlib.sha256(f"gpf.patch\0{seed}\0{key}\0{draw}".encode("utf-8", "surrogatepass")).digest()
    x0 = int.from_bytes(digest[:8], "big") % (width - side + 1)
    y0 = int.from_bytes(digest[8:16], "big") % (height - side + 1)
    return x0, y0, x0 + side, y0 + side


def train_patch_box(size: tuple[int, int], side: int, seed: int, epoch: int, key: str) -> Box:
    """The patch a training sample shows in ``epoch`` (a new one each epoch)."""
    return patch_box(size, side, seed, key, f"train/{epoch}")


def test_patch_boxes(size: tuple[int, int], side: int, seed: int, key: str, count: int) -> list[Box]:
    """The ``count`` fixed patches a photo is scored with (their scores averaged)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count (test patches per photo) must be a positive int, got {count!r}")
    return [patch_box(size, side, seed, key, f"test/{t}") for t in range(count)]


def cut(image, box: Box):
    """The pixels of ``box`` of a ``[3, H, W]`` tensor (a view; ``.contiguous()`` copies)."""
    x0, y0, x1, y1 = box
    return image[:, y0:y1, x0:x1]
