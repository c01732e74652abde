"""Image decoding and the two views of GPF-CNN.

Decoding (:func:`decode_image`, :func:`load_image`) turns any photo file into an
upright 8-bit RGB ``PIL.Image`` or raises :class:`ImageError` with a status from
:data:`STATUSES`; the rules (EXIF orientation, modes, 16-bit, transparency, the
pixel limit) are in ``docs/images.md``.

The views follow the paper (section IV-B and IV-C):

* the *peripheral* view keeps the aspect ratio, longest side = view size
  (:func:`peripheral_view`, geometry in :mod:`gpf.model.geometry`);
* the *foveal* view crops the attended box of the full-resolution original and
  zooms it to view size x view size (:func:`foveal_view`);
* the *random* baseline (Random-VGG16, after RAPID/DMA-Net [17], [18]) takes
  view-size patches at seeded random positions (:func:`random_crops`).

Only PIL, numpy and :mod:`gpf.model.geometry` are imported here, so the module
runs without torch (the CPU benchmark uses it in a Pillow-only environment);
:func:`to_uint8_tensor` imports torch when called.
"""
from __future__ import annotations

import hashlib
import io
import operator
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..env_info import IMAGE_FORMATS, pil_features, readable_formats as _readable_formats  # noqa: F401 (re-exported)
from ..errors import GPFError, OptionError
from ..model.geometry import peripheral_size
from ..vocabulary import DEFAULT_MAX_PIXELS  # noqa: F401 (re-exported: one pixel limit for every command)

#: Why an image could not be used, with what to do about it.
STATUS_ADVICE = {
    "missing": "check the path and the image root; re-download the image or drop it from the labels",
    "not_a_file": "point to an image file, not a directory or special file",
    "unreadable": "check the file's permissions and the disk it is on",
    "empty": "re-download or remove it",
    "not_an_image": f"re-download or remove it (formats gpf reads: {', '.join(IMAGE_FORMATS)})",
    "truncated": "the file is cut short, e.g. by an interrupted download or copy: re-download it",
    "too_large": "raise max_pixels if you trust the file",
    "too_small": "lower min_size, or drop the image",
    "decode_error": "the image data is damaged or uses an unsupported feature: "
                    "re-encode it, e.g. to JPEG, or remove it",
}
STATUSES = tuple(STATUS_ADVICE)
# The load_image parameter a status's advice names (the CLI words it as its option).
STATUS_PARAM = {"too_large": "max_pixels", "too_small": "min_size"}

# Downscales first shrink by an integer factor while the image stays at least
# this many times the target, then finish with Lanczos. PIL documents 3.0 as
# indistinguishable from a full Lanczos; it only acts on images over 3x the view
# (a 640 px photo going to 224 px is resized in one Lanczos pass).
REDUCING_GAP = 3.0
# JPEG draft decoding keeps at least this many times the view size, like
# Image.thumbnail, so the final Lanczos still has detail to filter.
DRAFT_GAP = 2.0

JPEG_SUBSAMPLING = ("4:4:4", "4:2:2", "4:2:0")

_ORIENTATION_TAG = 0x0112
# EXIF orientation -> the transpose that makes the stored pixels upright.
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
# First bytes of formats, to explain a file PIL cannot identify.
_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"BM", "BMP"),
)


class ImageError(GPFError):
    """An image file that cannot be used: ``.path``, ``.status`` (one of
    :data:`STATUSES`) and ``.reason``; ``str()`` is ``"PATH: reason; what to do"``.
    ``.param`` is the parameter the advice names (``max_pixels``, ``min_size``) or None."""

    def __init__(self, path: str | os.PathLike, status: str, reason: str):
        if status not in STATUS_ADVICE:
            raise ValueError(f"unknown image status {status!r}; allowed: {', '.join(STATUSES)}")
        self.path = str(path)
        self.status = status
        self.reason = reason
        self.param = STATUS_PARAM.get(status)
        super().__init__(self.path, status, reason)

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}; {STATUS_ADVICE[self.status]}"

    def __reduce__(self):  # picklable across worker processes
        return (type(self), (self.path, self.status, self.reason))


@dataclass(frozen=True)
class Decoded:
    """An upright RGB image and the size of the original it came from.

    ``image`` is smaller than ``original_size`` only when a reduced JPEG decode
    was asked for (``reduce_to``); boxes and view geometry always refer to
    ``original_size``, the upright full-resolution (width, height).
    """

    image: Image.Image
    original_size: tuple[int, int]
    source_format: str

    @property
    def reduced(self) -> bool:
        return self.image.size != self.original_size


# --------------------------------------------------------------------------- decoding

def load_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS, *,
               reduce_to: int | None = None, view_min_side: int = 1,
               min_size: int = 1) -> Image.Image:
    """Decode ``path`` to an upright RGB image; see :func:`decode_image`.

    The original upright (width, height) is kept in ``image.info["original_size"]``
    (it differs from ``image.size`` only with ``reduce_to``).
    """
    return decode_image(path, max_pixels, reduce_to=reduce_to, view_min_side=view_min_side,
                        min_size=min_size).image


def decode_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS, *,
                 reduce_to: int | None = None, view_min_side: int = 1,
                 min_size: int = 1) -> Decoded:
    """Decode an image file to upright 8-bit RGB, fully and strictly.

    * ``max_pixels``: width x height limit read from the header, before decoding
      (``None``: no limit of ours; PIL's own ``Image.MAX_IMAGE_PIXELS`` x 2 still
      applies and is reported as ``too_large``).
    * ``reduce_to``: the longest side of the view the caller will make (with
      ``view_min_side`` its shortest side, as in :func:`peripheral_view`). JPEGs
      are then decoded at 1/2, 1/4 or 1/8 scale in the DCT domain while staying
      at least ``DRAFT_GAP`` times that view; other formats decode in full. Use
      it when only the peripheral view is needed; foveal and random crops need
      the full resolution (the default).
    * ``min_size``: smallest accepted width and height (1: any image).

    Raises :class:`ImageError`; never changes PIL's global settings.
    """
    path = Path(path)
    _check_positive("max_pixels", max_pixels, allow_none=True)
    _check_positive("reduce_to", reduce_to, allow_none=True)
    _check_positive("view_min_side", view_min_side)
    _check_positive("min_size", min_size)
    _check_regular_file(path)
    im = _open(path)
    with im:
        raw_size = im.size
        _check_size(path, raw_size, max_pixels, min_size)
        if reduce_to is not None and im.format in ("JPEG", "MPO"):
            im.draft("RGB", _draft_request(raw_size, reduce_to, view_min_side))
        _load_pixels(path, im)
        orientation = _exif_orientation(im)
        rgb = _to_rgb(path, im)
    if orientation in _UPRIGHT:
        rgb = rgb.transpose(_UPRIGHT[orientation])
    width, height = raw_size
    original_size = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
    # A clean info dict: the orientation is applied, so stale EXIF must not be
    # applied again by a later exif_transpose.
    rgb.info = {"original_size": original_size, "source_format": im.format}
    return Decoded(rgb, original_size, im.format)


def upright_rgb(image, label: str = "<PIL image>", max_pixels: int | None = None):
    """A PIL image as ``load_image`` would have decoded it: EXIF orientation applied, 8-bit RGB.

    Raises :class:`~gpf.pipeline.ImageError` for an image over ``max_pixels``
    or one whose (lazily loaded) pixel data does not decode.
    """
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(label, "too_large", f"{width}x{height} = {width * height} pixels is over "
                                                    f"the limit of {max_pixels} (possible decompression bomb)")
    try:
        image.load()
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError ... for damaged data
        raise _decode_failure(label, exc) from exc
    orientation = _exif_orientation(image)
    rgb = _to_rgb(label, image)
    if orientation in _UPRIGHT:
        rgb = rgb.transpose(_UPRIGHT[orientation])
    return rgb


def decode_jpeg_to_uint8(data: bytes) -> np.ndarray:
    """Decode JPEG bytes (e.g. a shard member) to an ``[H, W, 3]`` uint8 RGB array.

    Strict like :func:`load_image` (truncated data raises :class:`ImageError`
    with path ``"<jpeg bytes>"``); no orientation or size limit is applied.
    """
    label = "<jpeg bytes>"
    if not data:
        raise ImageError(label, "empty", "no bytes to decode")
    try:
        im = Image.open(io.BytesIO(data), formats=("JPEG",))
    except UnidentifiedImageError as e:
        raise ImageError(label, "not_an_image", "the bytes are not a JPEG") from e
    except Exception as e:
        raise ImageError(label, "decode_error", f"cannot read the JPEG header ({e})") from e
    with im:
        _load_pixels(label, im)
        if im.mode not in ("RGB", "L", "CMYK"):
            raise ImageError(label, "decode_error", f"unexpected JPEG mode {im.mode}")
        return np.array(im.convert("RGB") if im.mode != "RGB" else im)  # writable copy


def _check_positive(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise OptionError(f"{name} must be a positive integer{' or None' if allow_none else ''}, "
                          f"got {value!r}", param=name)


def _check_regular_file(path: Path) -> None:
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError) as e:
        raise ImageError(path, "missing", "no such file") from e
    except PermissionError as e:
        raise ImageError(path, "unreadable", f"permission denied ({e.strerror})") from e
    except OSError as e:
        raise ImageError(path, "unreadable", f"cannot stat the file ({e.strerror or e})") from e
    if stat.S_ISDIR(info.st_mode):
        raise ImageError(path, "not_a_file", "is a directory")
    if not stat.S_ISREG(info.st_mode):
        raise ImageError(path, "not_a_file", "is not a regular file")
    if info.st_size == 0:
        raise ImageError(path, "empty", "the file is empty (0 bytes)")


# Formats whose plugin registers even when PIL was built without the codec.
def _open(path: Path) -> Image.Image:
    """Identify the file and read its header (no pixel data)."""
    try:
        # PIL warns from inside open() for sizes over its own limit; our check
        # on the header follows, so the warning is silenced here only.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path, formats=_readable_formats())
    except FileNotFoundError as e:
        raise ImageError(path, "missing", "no such file") from e
    except PermissionError as e:
        raise ImageError(path, "unreadable", f"permission denied ({e.strerror})") from e
    except IsADirectoryError as e:
        raise ImageError(path, "not_a_file", "is a directory") from e
    except Image.DecompressionBombError as e:
        raise ImageError(path, "too_large",
                         f"over PIL's own limit of {2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels "
                         f"(raise PIL.Image.MAX_IMAGE_PIXELS in your program to go further): {e}"
                         ) from e
    except UnidentifiedImageError as e:
        raise _unidentified(path) from e
    except OSError as e:
        if e.errno is not None:  # the operating system's error, not PIL's
            raise ImageError(path, "unreadable", f"cannot read the file ({e.strerror or e})") from e
        raise _decode_failure(path, e) from e
    except Exception as e:  # PIL plugins raise SyntaxError, ValueError, struct.error...
        raise _decode_failure(path, e) from e


def _unidentified(path: Path) -> ImageError:
    """Explain a file PIL cannot identify by its first bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        head = b""
    kind = next((name for magic, name in _SIGNATURES if head.startswith(magic)), None)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        kind = "WEBP"
    if kind and kind not in _readable_formats():
        return ImageError(path, "decode_error",
                          f"is a {kind} file but this PIL build cannot read {kind} "
                          "(see gpf.pipeline.images.pil_features())")
    if kind:
        return ImageError(path, "decode_error",
                          f"starts like a {kind} file but its header cannot be parsed "
                          "(damaged or truncated)")
    return ImageError(path, "not_an_image",
                      f"not an image in a supported format (first bytes {head[:8]!r})")


def _decode_failure(path, error: BaseException) -> ImageError:
    text = str(error) or type(error).__name__
    if isinstance(error, EOFError) or "truncated" in text.lower():
        return ImageError(path, "truncated", f"the image data ends early ({text})")
    return ImageError(path, "decode_error", f"cannot decode the image ({type(error).__name__}: {text})")


def _check_size(path: Path, size: tuple[int, int], max_pixels: int | None, min_size: int) -> None:
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(path, "too_large",
                         f"{width}x{height} = {width * height} pixels is over the limit of "
                         f"{max_pixels} (possible decompression bomb)")
    if min(width, height) < min_size:
        raise ImageError(path, "too_small",
                         f"{width}x{height} is smaller than the minimum side of {min_size} pixels")


def _draft_request(size: tuple[int, int], view_size: int, view_min_side: int) -> tuple[int, int]:
    """Smallest decode size that keeps ``DRAFT_GAP`` x the peripheral view on both axes."""
    view_w, view_h = peripheral_size(size[0], size[1], view_size, 1, view_min_side)
    return (int(view_w * DRAFT_GAP), int(view_h * DRAFT_GAP))


def _load_pixels(path, im: Image.Image) -> None:
    """Decode every pixel now; PIL raises on truncation because we never set
    ``ImageFile.LOAD_TRUNCATED_IMAGES``."""
    try:
        im.load()
    except MemoryError as e:
        raise ImageError(path, "too_large",
                         f"ran out of memory decoding {im.size[0]}x{im.size[1]} pixels") from e
    except Exception as e:
        raise _decode_failure(path, e) from e


def _exif_orientation(im: Image.Image) -> int:
    """EXIF orientation 1-8; a missing, damaged or odd tag counts as 1 (upright),
    as browsers do, so a broken EXIF block never loses the photo."""
    try:
        value = im.getexif().get(_ORIENTATION_TAG, 1)
        return int(value) if int(value) in range(1, 9) else 1
    except Exception:
        return 1


def _to_rgb(path, im: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (rules in docs/images.md)."""
    try:
        if im.mode == "RGB" and "transparency" not in im.info:
            return im
        if im.mode in _SIXTEEN_BIT_MODES:
            return Image.fromarray(_sixteen_to_eight(np.asarray(im))).convert("RGB")
        if im.mode == "F":
            return Image.fromarray(_float_to_eight(np.asarray(im, dtype=np.float32))).convert("RGB")
        if im.mode in _ALPHA_MODES or "transparency" in im.info:
            return _composite_on_white(im.convert("RGBA"))
        return im.convert("RGB")
    except Exception as e:
        raise ImageError(path, "decode_error",
                         f"cannot convert colour mode {im.mode} to RGB ({e})") from e


def _sixteen_to_eight(values: np.ndarray) -> np.ndarray:
    """0..65535 -> 0..255 rounded (v * 255 / 65535); PIL's own convert clips instead."""
    wide = np.clip(values.astype(np.int64), 0, 65535)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def _float_to_eight(values: np.ndarray) -> np.ndarray:
    """Float images: 0..1 when every finite value is <= 1, else 0..255; NaN -> 0."""
    values = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
    if values.size and values.max() <= 1.0:
        values = values * 255.0
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _composite_on_white(rgba: Image.Image) -> Image.Image:
    """Photos have no transparency: show transparent parts as a white page would."""
    background = Image.new("RGB", rgba.size, (255, 255, 255))
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


# --------------------------------------------------------------------------- views

def peripheral_view(img: Image.Image, view_size: int, stride: int = 1, min_side: int = 1, *,
                    original_size: tuple[int, int] | None = None) -> Image.Image:
    """The peripheral (global) view: aspect kept, longest side ``view_size``.

    Paper, section IV-B: "we do not rescale the input into fixed size but use
    downsampling to keep its original aspect ratios. The longest dimension of
    the input image is kept to 224." The short side follows
    :func:`gpf.model.geometry.peripheral_size` (rounded to ``stride``, at least
    ``min_side``). Downscaling is Lanczos (after an integer reduce when the
    image is over ``REDUCING_GAP`` x the view); small images are upscaled bicubic.
    Pass ``original_size`` (``Decoded.original_size``) when ``img`` was decoded
    reduced, so the view has the same size as from the full decode.
    """
    _check_view_size(view_size)
    width, height = original_size if original_size is not None else img.size
    return _resize(img, peripheral_size(width, height, view_size, stride, min_side))


def foveal_view(img: Image.Image, box_xyxy, view_size: int) -> Image.Image:
    """The foveal (detail) view: the box ``(x0, y0, x1, y1)`` zoomed to ``view_size`` square.

    ``box_xyxy`` is half-open, in pixels of the upright full-resolution image
    (the order of ``crop.map_box_to_image``). Paper, section III-A: "we crop and
    zoom in the attended region to finer scale with higher resolution"; IV-C:
    "the attended regions of foveal subnet are resized to 224 x 224", so the
    region is warped to the square, not padded or cropped to its aspect ratio.
    """
    _check_view_size(view_size)
    box = _validated_box(box_xyxy, img.size)
    return _resize(img, (view_size, view_size), box)


def random_crop_boxes(size: tuple[int, int], k: int, view_size: int, seed: int,
                      image_id) -> list[tuple[int, int, int, int]]:
    """Boxes ``(x0, y0, x1, y1)`` of :func:`random_crops` for an image of ``size``.

    Each box is a ``view_size`` square, or the largest square that fits when the
    image is smaller. Positions come from SHA-256 of (seed, image_id, crop
    index): the same in every process, Python and numpy version.
    """
    _check_view_size(view_size)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise OptionError(f"k (number of random crops) must be an integer >= 0, got {k!r}", param="random_crops")
    width, height = size
    side = min(view_size, width, height)
    boxes = []
    for index in range(k):
        digest = hashlib.sha256(f"gpf.random_crop\0{seed}\0{image_id}\0{index}".encode()).digest()
        x0 = int.from_bytes(digest[:8], "big") % (width - side + 1)
        y0 = int.from_bytes(digest[8:16], "big") % (height - side + 1)
        boxes.append((x0, y0, x0 + side, y0 + side))
    return boxes


def random_crops(img: Image.Image, k: int, view_size: int, seed: int, image_id) -> list[Image.Image]:
    """``k`` seeded random ``view_size`` square crops for the ``random`` baseline.

    Paper, section IV-C: Random-VGG16's second column "uses random cropping
    method to extract the local fine-grained information. The cropped patch size
    is fixed to be 224 x 224" (RAPID's local view, [17]). Crops are taken from
    the full-resolution image; an image smaller than the view gives its largest
    square, upscaled to ``view_size``. Boxes: :func:`random_crop_boxes`.
    """
    boxes = random_crop_boxes(img.size, k, view_size, seed, image_id)
    return [_resize(img, (view_size, view_size), box) for box in boxes]


def warped_view(img: Image.Image, view_size: int) -> Image.Image:
    """The whole photo warped to a ``view_size`` square, aspect ignored (``warp.jpg``).

    Paper, section IV-C: for the VGG16 baseline and Random-VGG16's global column
    "we warp the original image to 224 x 224". Made from the full-resolution photo
    (Lanczos down, bicubic up), never from the <= view-size peripheral view.
    """
    _check_view_size(view_size)
    return _resize(img, (view_size, view_size))


def original_view(img: Image.Image, view_size: int) -> Image.Image:
    """The photo at its own resolution (``orig.jpg``, Random-VGG16's patches are cut from it).

    A photo whose short side is under ``view_size`` is enlarged (bicubic, aspect
    kept) until it is ``view_size``, so every photo holds a view-size patch;
    others are returned unchanged (a copy).
    """
    _check_view_size(view_size)
    return _resize(img, original_view_size(img.size, view_size))


def original_view_size(size: tuple[int, int], view_size: int) -> tuple[int, int]:
    """(width, height) of :func:`original_view` for a photo of ``size``."""
    width, height = size
    scale = max(1.0, view_size / min(width, height))
    if scale == 1.0:
        return width, height
    return max(view_size, round(width * scale)), max(view_size, round(height * scale))


def _check_view_size(view_size: int) -> None:
    if isinstance(view_size, bool) or not isinstance(view_size, (int, np.integer)) or view_size < 1:
        raise OptionError(f"view_size must be a positive integer, got {view_size!r}", param="view_size")


def _validated_box(box_xyxy, size: tuple[int, int]) -> tuple[int, int, int, int]:
    width, height = size
    try:
        x0, y0, x1, y1 = (operator.index(v) for v in box_xyxy)
    except (TypeError, ValueError) as e:
        raise ValueError(f"box must be 4 integers (x0, y0, x1, y1) in pixels, got {box_xyxy!r}") from e
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(f"box (x0, y0, x1, y1) = {(x0, y0, x1, y1)} must be non-empty and inside the "
                         f"{width}x{height} image: 0 <= x0 < x1 <= {width}, 0 <= y0 < y1 <= {height}")
    return x0, y0, x1, y1


def _resize(img: Image.Image, size: tuple[int, int], box=None) -> Image.Image:
    """Cut ``box`` out of ``img`` (default: all of it) and resample it to ``size``:
    unchanged when the sizes match, bicubic when both sides grow, Lanczos otherwise.

    The cut comes first, so pixels outside the box never leak into the view
    through the filter's support (``Image.resize(box=...)`` would read them).
    """
    cut = box is not None and tuple(box) != (0, 0, img.width, img.height)
    if cut:
        img = img.crop(tuple(box))
    size = tuple(size)
    if img.size == size:
        return img if cut else img.copy()  # callers may edit a view: never hand back the source
    if size[0] >= img.width and size[1] >= img.height:
        return img.resize(size, Image.Resampling.BICUBIC)
    return img.resize(size, Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)


# --------------------------------------------------------------------------- bytes and tensors

def encode_jpeg(img: Image.Image, quality: int = 95, subsampling: str = "4:2:0") -> bytes:
    """JPEG bytes at an explicit quality and chroma subsampling (baseline, not
    optimised, no metadata): the same pixels and library give the same bytes.

    Shards store views at gpf.vocabulary.JPEG_QUALITY (docs/shards.md: never the writer's default).
    """
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 1 <= quality <= 100:
        raise OptionError(f"JPEG quality must be an integer in 1..100, got {quality!r}", param="jpeg_quality")
    if subsampling not in JPEG_SUBSAMPLING:
        raise OptionError(f"subsampling must be one of {', '.join(JPEG_SUBSAMPLING)}, got {subsampling!r}",
                          param="subsampling")
    if img.mode not in ("RGB", "L"):
        raise ValueError(f"encode_jpeg takes RGB or L images, got mode {img.mode}; convert it first")
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=int(quality), subsampling=subsampling,
             optimize=False, progressive=False)
    return out.getvalue()


def to_uint8_tensor(img: Image.Image):
    """``torch.uint8`` tensor ``[3, H, W]`` of an RGB (or L, repeated) image."""
    import torch

    if img.mode == "L":
        img = img.convert("RGB")
    if img.mode != "RGB":
        raise ValueError(f"to_uint8_tensor takes RGB or L images, got mode {img.mode}")
    array = np.array(img, dtype=np.uint8)  # a writable copy torch can own
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
