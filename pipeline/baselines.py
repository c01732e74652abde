"""The Table I baselines' views for ``gpf predict``, exactly as the shards give them to ``gpf evaluate``.

``single`` and ``random`` (section IV-C, as the paper ran them) see the whole
photo warped to a view-size square (``warp.jpg``), and ``random``'s second column
view-size patches of the original-resolution photo (``orig.jpg``). The shards
store both as JPEGs, so ``gpf predict`` makes the same pixels, encodes them at
the shards' quality and decodes them with the shards' decoder: the networks see
the same tensors in both, and a photo's score agrees to float precision.
"""
from __future__ import annotations


def jpeg_round_trip(image, quality: int):
    """``uint8 [3, H, W]`` of a PIL image after the shards' encode (:func:`encode_jpeg`) and decode."""
    from ..shards.reader import decode_jpegs_uint8
    from .images import encode_jpeg

    return decode_jpegs_uint8([encode_jpeg(image, quality)], ["<jpeg round trip>"])[0].contiguous()


def warped_input(image, view_size: int, quality: int):
    """What ``warp.jpg`` decodes to for this photo (``gpf preprocess --store-warped``)."""
    from .images import warped_view

    return jpeg_round_trip(warped_view(image, view_size), quality)


def test_patches(image, view_size: int, quality: int, seed: int, image_id: str, count: int) -> tuple[list, list]:
    """(patches, boxes): the ``count`` fixed test patches ``gpf evaluate`` cuts from this photo's
    ``orig.jpg`` (``gpf preprocess --store-original``), keyed by the photo's shard key."""
    from ..shards.layout import safe_key
    from ..shards.patches import cut, test_patch_boxes
    from .images import original_view

    photo = jpeg_round_trip(original_view(image, view_size), quality)
    size = (int(photo.shape[2]), int(photo.shape[1]))
    boxes = test_patch_boxes(size, view_size, seed, safe_key(image_id), count)
    return [cut(photo, box).contiguous() for box in boxes], boxes
