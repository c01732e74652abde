"""Every bad or awkward image kind, written into a folder by tests (real file formats, tiny sizes).

``write_bad_images(folder)`` writes one file per kind, each named ``{stem}.jpg``
whatever its real format (scraped photo folders name everything ``.jpg``), and
returns ``{stem: BadImage}`` saying what a correct reader must make of it: the
status (``'ok'`` or an :data:`gpf.pipeline.images.STATUSES` value) and, for the
usable ones, the upright RGB pixels a viewer shows (the independent reference
for the views). Stems are safe AVA ids, so the folder can be an AVA
``images/`` folder (``add_ava_rows``).

Files of a format the active PIL cannot write (WebP under a pillow-simd built
without libwebp) are left out of the set: :data:`OPTIONAL_FORMATS` names them,
and tests that need them skip with :func:`unwritable_reason`.

The expectations are written from the formats' specifications, not from gpf:
EXIF orientations (CIPA DC-008 tag 0x0112) are produced with numpy flips and
rotations of the upright pixels; transparency is composited on white as a
browser shows it; 16-bit samples scale by 255/65535.
"""
from __future__ import annotations

import builtins
import contextlib
import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

#: ``--max-pixels`` the tests pass: every usable file is under it, ``over_limit`` is over it.
MAX_PIXELS_OPTION = 250_000
#: What the header of ``bomb_header`` claims (over every default limit, PIL's included).
BOMB_SIZE = (20_000, 20_000)
QUADRANT_SIZE = (96, 64)          # (width, height) of the upright orientation test image
ORIENTATIONS = (2, 3, 4, 5, 6, 7, 8)
#: Formats of the set a PIL build may lack -> the stem of their file.
OPTIONAL_FORMATS = {"WEBP": "webp_named_jpg"}


@dataclass(frozen=True)
class BadImage:
    """One file of the set and what reading it must give."""
    stem: str
    kind: str                         # human description (docs/reliability.md)
    status: str                       # 'ok' or the expected ImageError status
    upright: np.ndarray | None = None  # uint8 [H, W, 3] a viewer shows, for status 'ok'
    written: bool = True              # False: the path is deliberately absent
    tolerance: float = 8.0            # mean |difference| allowed against ``upright`` (JPEG, resampling)
    deny_read: bool = False           # a valid file that must be opened under ``permission_denied``

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def size(self) -> tuple[int, int] | None:
        """(width, height) of the upright image."""
        return None if self.upright is None else (self.upright.shape[1], self.upright.shape[0])

    def path(self, folder: Path) -> Path:
        return Path(folder) / f"{self.stem}.jpg"


# ----------------------------------------------------------------------------- pixels

def quadrants(width: int = QUADRANT_SIZE[0], height: int = QUADRANT_SIZE[1]) -> np.ndarray:
    """Four flat colours (red, green / blue, white): any flip or rotation moves them."""
    image = np.zeros((height, width, 3), np.uint8)
    h, w = height // 2, width // 2
    image[:h, :w] = (220, 30, 30)
    image[:h, w:] = (30, 200, 30)
    image[h:, :w] = (30, 30, 220)
    image[h:, w:] = (240, 240, 240)
    return image


def smooth(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth colour gradient (survives JPEG and resampling almost unchanged)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = np.random.default_rng(seed).uniform(0, 1, 3)
    image = np.stack([xs / max(width, 1), ys / max(height, 1),
                      0.5 + 0.0 * xs], axis=-1) * 180 + 40 * phase
    return np.clip(image, 0, 255).astype(np.uint8)


def stored_for_orientation(upright: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels a camera stores so that EXIF ``orientation`` displays ``upright``.

    From the EXIF definition of the tag: 2 mirrors left-right, 3 turns 180
    degrees, 4 mirrors top-bottom, 5 transposes, 6 is shown turned 90 degrees
    clockwise, 7 transverses, 8 is shown turned 90 degrees counter-clockwise;
    the stored array is the inverse operation applied to the upright one.
    """
    transposed = upright.transpose(1, 0, 2)
    stored = {2: np.fliplr(upright), 3: np.rot90(upright, 2), 4: np.flipud(upright), 5: transposed,
              6: np.rot90(upright, 1), 7: np.rot90(transposed, 2), 8: np.rot90(upright, -1)}[orientation]
    return np.ascontiguousarray(stored)


def jpeg(array: np.ndarray, quality: int = 95, **save) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, "JPEG", quality=quality, **save)
    return out.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width`` x ``height`` RGB pixels, with almost no data:
    a decompression bomb is refused by its header, before any pixel is decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


# ----------------------------------------------------------------------------- formats

def can_write(fmt: str) -> bool:
    """Whether the active PIL can save ``fmt`` (pillow-simd without libwebp raises ``KeyError: 'WEBP'``)."""
    try:
        Image.new("RGB", (4, 4)).save(io.BytesIO(), fmt)
    except (KeyError, OSError):
        return False
    return True


def unwritable_reason(fmt: str) -> str | None:
    """Why the set lacks the file of ``fmt`` (a ``pytest.skip`` reason), or None when it has it."""
    from PIL import __version__

    if can_write(fmt):
        return None
    return (f"this PIL ({__version__}) cannot write {fmt}: {OPTIONAL_FORMATS.get(fmt, fmt)} is left "
            "out of the bad-file set (pillow-simd built without the codec)")


# ----------------------------------------------------------------------------- the set

def _on_white(rgba: np.ndarray) -> np.ndarray:
    alpha = rgba[..., 3:4].astype(np.float64) / 255.0
    return np.rint(rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)


def write_bad_images(folder: str | os.PathLike) -> dict[str, BadImage]:
    """Write every kind into ``folder``; returns ``{stem: BadImage}`` in a fixed order.

    The files of :data:`OPTIONAL_FORMATS` this PIL cannot write are left out.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    made: dict[str, BadImage] = {}

    def add(stem: str, kind: str, status: str, data: bytes | None = None, upright=None,
            tolerance: float = 8.0, deny_read: bool = False) -> None:
        if data is not None:
            (folder / f"{stem}.jpg").write_bytes(data)
        made[stem] = BadImage(stem, kind, status, upright, written=data is not None or status == "not_a_file",
                              tolerance=tolerance, deny_read=deny_read)

    base = smooth(80, 60)
    good_jpeg = jpeg(base)
    # unusable files
    add("zero_byte", "zero-byte file", "empty", b"")
    add("truncated", "JPEG cut in half", "truncated", good_jpeg[: len(good_jpeg) // 2])
    add("random_bytes", "random bytes named .jpg", "not_an_image",
        np.random.default_rng(7).bytes(3000).replace(b"\xff\xd8", b"\x00\x00"))
    add("bomb_header", f"PNG header claiming {BOMB_SIZE[0]}x{BOMB_SIZE[1]} pixels", "too_large",
        png_claiming(*BOMB_SIZE))
    over = smooth(600, 450, seed=3)
    add("over_limit", f"real 600x450 JPEG over --max-pixels {MAX_PIXELS_OPTION}", "too_large", jpeg(over))
    add("unreadable", "file without read permission (EACCES on open)", "unreadable", good_jpeg,
        deny_read=True)
    add("missing", "file named in the labels but absent", "missing")
    (folder / "directory.jpg").mkdir(exist_ok=True)
    add("directory", "a directory named like an image", "not_a_file")
    # usable files in other formats or modes, all named .jpg
    for fmt, stem in (("PNG", "png_named_jpg"), ("WEBP", OPTIONAL_FORMATS["WEBP"])):
        if fmt in OPTIONAL_FORMATS and not can_write(fmt):
            continue
        out = io.BytesIO()
        Image.fromarray(base).save(out, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
        add(stem, f"{fmt} file named .jpg", "ok", out.getvalue(), base)
    palette = Image.fromarray(base).quantize(64)
    for fmt, stem in (("GIF", "gif_named_jpg"), ("PNG", "palette_png")):
        out = io.BytesIO()
        palette.save(out, fmt)
        add(stem, f"palette (mode P) {fmt} named .jpg", "ok", out.getvalue(), np.asarray(palette.convert("RGB")))
    cmyk = io.BytesIO()
    Image.fromarray(base).convert("CMYK").save(cmyk, "JPEG", quality=95)
    add("cmyk", "CMYK JPEG", "ok", cmyk.getvalue(), base)
    gray = base[..., 1]
    add("grayscale", "grayscale (mode L) JPEG", "ok", jpeg(gray), np.repeat(gray[..., None], 3, axis=2))
    ramp = (np.arange(60 * 80, dtype=np.uint32).reshape(60, 80) * 13 % 65536).astype(np.uint16)
    sixteen = io.BytesIO()
    Image.fromarray(ramp).save(sixteen, "PNG")
    eight = np.rint(ramp.astype(np.float64) * 255 / 65535).astype(np.uint8)
    add("sixteen_bit", "16-bit grayscale PNG", "ok", sixteen.getvalue(), np.repeat(eight[..., None], 3, axis=2))
    rgba = np.concatenate([base, np.tile(np.linspace(0, 255, 80, dtype=np.uint8), (60, 1))[..., None]], axis=2)
    png = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(png, "PNG")
    add("rgba", "RGBA PNG (alpha ramp)", "ok", png.getvalue(), _on_white(rgba))
    upright = quadrants()
    for orientation in ORIENTATIONS:
        exif = Image.Exif()
        exif[0x0112] = orientation
        add(f"exif{orientation}", f"JPEG with EXIF orientation {orientation}", "ok",
            jpeg(stored_for_orientation(upright, orientation), exif=exif.tobytes()), upright)
    add("one_pixel", "1x1 pixel JPEG", "ok", jpeg(np.full((1, 1, 3), 200, np.uint8)),
        np.full((1, 1, 3), 200, np.uint8), tolerance=3.0)
    wide = smooth(4000, 50, seed=5)
    add("wide", "4000x50 JPEG (extreme aspect ratio)", "ok", jpeg(wide), wide)
    return made


def usable(images: dict[str, BadImage]) -> dict[str, BadImage]:
    return {k: v for k, v in images.items() if v.ok}


def unusable(images: dict[str, BadImage]) -> dict[str, BadImage]:
    return {k: v for k, v in images.items() if not v.ok}


# ----------------------------------------------------------------------------- labels

def add_ava_rows(root: Path, stems, votes=(1, 2, 3, 4, 5, 6, 7, 8, 9, 10)) -> None:
    """Append one AVA.txt row per stem (files in ``root/images/{stem}.jpg``)."""
    label = Path(root) / "AVA.txt"
    lines = label.read_text().splitlines() if label.exists() else []
    for stem in stems:
        lines.append(" ".join(map(str, [len(lines) + 1, stem, *votes, 0, 0, 1])))
    label.write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- permissions

@contextlib.contextmanager
def permission_denied(*paths: str | os.PathLike) -> Iterator[None]:
    """Make opening ``paths`` fail with EACCES in this process.

    ``chmod 000`` does not stop root (the test container runs as root), so the
    denial is simulated at ``open()``, which is where the operating system
    reports it; ``stat()`` still succeeds, exactly as for a real unreadable file.
    Works for code in this process and its threads only (not subprocesses).
    """
    denied = {os.path.abspath(p) for p in paths}
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.path.abspath(file) in denied:
            raise PermissionError(13, "Permission denied", os.fspath(file))
        return real_open(file, *args, **kwargs)

    builtins.open = guarded_open
    try:
        yield
    finally:
        builtins.open = real_open
