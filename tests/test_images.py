"""gpf.pipeline.images: strict decoding, the views and the byte helpers.

Every fixture is a real file written into tmp_path; references are numpy
formulas (EXIF transforms, CMYK, 16-bit scaling, alpha compositing) or plain
numpy slicing, never the code under test.
"""
from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, JpegImagePlugin, features

from gpf.model.geometry import peripheral_size
from gpf.pipeline import images
from gpf.pipeline.images import (
    ImageError, decode_image, decode_jpeg_to_uint8, encode_jpeg, foveal_view, load_image,
    peripheral_view, random_crop_boxes, random_crops, to_uint8_tensor,
)

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- fixtures

def noise_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Asymmetric content: every transpose/flip of it is different."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def smooth_rgb(h: int, w: int) -> np.ndarray:
    """Gradients JPEG keeps within a few levels, so lossy round trips compare tightly."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([40 + 170 * x / max(w - 1, 1), 30 + 180 * y / max(h - 1, 1),
                     200 - 120 * (x + y) / max(w + h - 2, 1)], -1).round().astype(np.uint8)


def save(array_or_image, path: Path, fmt: str, **options) -> Path:
    im = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    im.save(path, format=fmt, **options)
    return path


def jpeg_bytes(array: np.ndarray, quality: int = 90) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that declares width x height RGB but holds almost no data: cheap to
    write, and decoding it would fail as truncated, so too_large proves the
    size was refused from the header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
                     + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b""))
    return path


def status_of(path, **options) -> str:
    with pytest.raises(ImageError) as info:
        load_image(path, **options)
    return info.value.status


def assert_close(actual: Image.Image, expected: np.ndarray, mean_tol: float, max_tol: int = 255):
    got = np.asarray(actual).astype(int)
    assert got.shape == expected.shape
    diff = np.abs(got - expected.astype(int))
    assert diff.mean() <= mean_tol and diff.max() <= max_tol, (diff.mean(), diff.max())


# --------------------------------------------------------------------------- errors

def test_zero_byte_file_is_empty(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert status_of(path) == "empty"


def test_jpeg_cut_in_half_is_truncated(tmp_path):
    data = jpeg_bytes(noise_rgb(64, 80))
    path = tmp_path / "half.jpg"
    path.write_bytes(data[: len(data) // 2])
    assert status_of(path) == "truncated"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # decided per call, never globally


def test_png_cut_in_half_is_truncated(tmp_path):
    full = save(noise_rgb(64, 80), tmp_path / "full.png", "PNG").read_bytes()
    path = tmp_path / "half.png"
    path.write_bytes(full[: len(full) // 2])
    assert status_of(path) == "truncated"


def test_png_with_damaged_header_is_a_decode_error_naming_png(tmp_path):
    full = save(noise_rgb(8, 8), tmp_path / "full.png", "PNG").read_bytes()
    path = tmp_path / "head.png"
    path.write_bytes(full[:40])
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert info.value.status == "decode_error" and "PNG" in info.value.reason


def test_random_bytes_named_jpg_are_not_an_image(tmp_path):
    path = tmp_path / "noise.jpg"
    path.write_bytes(np.random.default_rng(1).bytes(4096))
    assert status_of(path) == "not_an_image"


def test_missing_file(tmp_path):
    assert status_of(tmp_path / "nope.jpg") == "missing"
    assert status_of(tmp_path / "no_dir" / "nope.jpg") == "missing"


def test_directory_named_like_an_image(tmp_path):
    (tmp_path / "photo.jpg").mkdir()
    assert status_of(tmp_path / "photo.jpg") == "not_a_file"


def test_unreadable_file_chmod_000(tmp_path):
    path = save(noise_rgb(4, 4), tmp_path / "locked.png", "PNG")
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root (or with CAP_DAC_OVERRIDE): permissions cannot block reads")
        assert status_of(path) == "unreadable"
    finally:
        path.chmod(0o644)


@pytest.mark.parametrize("error", [PermissionError(13, "Permission denied"),
                                   OSError(5, "Input/output error")])
def test_operating_system_errors_while_opening_are_unreadable(tmp_path, monkeypatch, error):
    # Runs even as root: the operating system's refusal is simulated at open().
    import builtins

    path = save(noise_rgb(4, 4), tmp_path / "locked.png", "PNG")
    real_open = builtins.open

    def refusing_open(file, *args, **kwargs):
        if os.fspath(file) == os.fspath(path):
            raise error
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing_open)
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert info.value.status == "unreadable" and error.strerror in info.value.reason


def test_too_small_against_min_size(tmp_path):
    path = save(noise_rgb(1, 3), tmp_path / "tiny.png", "PNG")
    assert status_of(path, min_size=2) == "too_small"
    assert load_image(path).size == (3, 1)


def test_decompression_bomb_refused_from_the_header(tmp_path, monkeypatch):
    path = png_header_only(tmp_path / "bomb.jpg", 9500, 9500)  # 90.25 MP: PIL would only warn

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("pixels were decoded before the size check")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    limit_before = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning must not escape
        with pytest.raises(ImageError) as info:
            load_image(path, max_pixels=50_000_000)
    assert info.value.status == "too_large" and "9500x9500" in info.value.reason
    assert Image.MAX_IMAGE_PIXELS == limit_before


def test_bomb_over_pils_own_limit_is_too_large(tmp_path):
    path = png_header_only(tmp_path / "bomb.png", 20000, 20000)  # 400 MP
    assert status_of(path) == "too_large"
    assert status_of(path, max_pixels=None) == "too_large"


def test_real_compressible_png_over_a_small_limit(tmp_path):
    path = save(np.zeros((1200, 1500), np.uint8), tmp_path / "flat.png", "PNG")
    assert path.stat().st_size < 20_000
    assert status_of(path, max_pixels=1_000_000) == "too_large"
    assert load_image(path, max_pixels=1_800_000).size == (1500, 1200)


def test_image_error_text_and_pickle():
    error = ImageError("/data/a.jpg", "truncated", "the image data ends early")
    assert str(error) == f"/data/a.jpg: the image data ends early; {images.STATUS_ADVICE['truncated']}"
    clone = pickle.loads(pickle.dumps(error))
    assert (clone.path, clone.status, clone.reason) == (error.path, error.status, error.reason)
    with pytest.raises(ValueError, match="allowed: missing, not_a_file"):
        ImageError("x", "broken", "?")


@pytest.mark.parametrize("bad", [0, -5, 1.5, True])
def test_bad_max_pixels_is_rejected(tmp_path, bad):
    path = save(noise_rgb(2, 2), tmp_path / "a.png", "PNG")
    with pytest.raises(ValueError, match="max_pixels"):
        load_image(path, max_pixels=bad)


# --------------------------------------------------------------------------- formats and modes

def test_png_named_jpg_decodes_by_content(tmp_path):
    source = noise_rgb(20, 30)
    path = save(source, tmp_path / "really_png.jpg", "PNG")
    np.testing.assert_array_equal(np.asarray(load_image(path)), source)


def test_gif_named_jpg_gives_its_first_frame(tmp_path):
    first = Image.new("P", (12, 8))
    first.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    first.paste(1, (0, 0, 6, 8))  # left half colour 1 (blue), right half colour 0 (red)
    second = Image.new("P", (12, 8), 1)
    second.putpalette([0, 255, 0, 0, 0, 0] + [0] * 762)
    path = tmp_path / "anim.jpg"
    first.save(path, format="GIF", save_all=True, append_images=[second], duration=100)
    expected = np.zeros((8, 12, 3), np.uint8)
    expected[:, :6] = (0, 0, 255)
    expected[:, 6:] = (255, 0, 0)
    np.testing.assert_array_equal(np.asarray(load_image(path)), expected)


@pytest.mark.skipif(not features.check("webp"),
                    reason="this PIL build has no WebP support (pillow-simd built without libwebp)")
def test_webp_named_jpg_decodes_by_content(tmp_path):
    source = noise_rgb(20, 30)
    path = save(source, tmp_path / "really_webp.jpg", "WEBP", lossless=True)
    np.testing.assert_array_equal(np.asarray(load_image(path)), source)


def test_cmyk_jpeg_colours_match_the_rgb_source(tmp_path):
    # PIL writes CMYK JPEGs Adobe-style (inverted, APP14), the case Photoshop makes.
    source = smooth_rgb(48, 64)
    path = save(Image.fromarray(source).convert("CMYK"), tmp_path / "cmyk.jpg", "JPEG", quality=95)
    assert Image.open(path).mode == "CMYK"
    assert_close(load_image(path), source, mean_tol=2.0, max_tol=12)


def test_cmyk_with_black_follows_the_standard_formula(tmp_path):
    cmyk = np.random.default_rng(2).integers(0, 256, (6, 7, 4), dtype=np.uint8)
    path = save(Image.frombytes("CMYK", (7, 6), cmyk.tobytes()), tmp_path / "cmyk.tif", "TIFF")
    c = cmyk.astype(float)
    expected = (255 - c[..., :3]) * (255 - c[..., 3:]) / 255
    assert_close(load_image(path), expected.round(), mean_tol=0.6, max_tol=1)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    grey = np.random.default_rng(3).integers(0, 256, (9, 11), dtype=np.uint8)
    path = save(grey, tmp_path / "grey.png", "PNG")
    image = load_image(path)
    assert image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(image), np.repeat(grey[..., None], 3, axis=2))


def test_palette_with_transparency_shows_white_where_transparent(tmp_path):
    index = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    palette = Image.new("P", (3, 2))
    palette.putdata(index.ravel().tolist())
    palette.putpalette([200, 10, 10, 10, 200, 10, 10, 10, 200] + [0] * 759)
    path = tmp_path / "palette.png"
    palette.save(path, format="PNG", transparency=1)
    colours = {0: (200, 10, 10), 1: (255, 255, 255), 2: (10, 10, 200)}
    expected = np.array([[colours[i] for i in row] for row in index], np.uint8)
    np.testing.assert_array_equal(np.asarray(load_image(path)), expected)


def test_rgb_colour_key_transparency_becomes_white(tmp_path):
    rgb = noise_rgb(5, 6)
    rgb[2, 3] = (10, 20, 30)
    rgb[rgb.sum(-1) == 60] = (10, 20, 30)
    path = save(rgb, tmp_path / "key.png", "PNG", transparency=(10, 20, 30))
    expected = rgb.copy()
    expected[(rgb == (10, 20, 30)).all(-1)] = 255
    np.testing.assert_array_equal(np.asarray(load_image(path)), expected)


def test_sixteen_bit_ramp_maps_to_the_full_eight_bit_ramp(tmp_path):
    ramp16 = (np.arange(256, dtype=np.uint16) * 257).reshape(1, 256).repeat(3, axis=0)
    path = tmp_path / "ramp16.png"
    Image.frombytes("I;16", (256, 3), ramp16.tobytes()).save(path, format="PNG")
    assert Image.open(path).mode.startswith("I")
    got = np.asarray(load_image(path))
    np.testing.assert_array_equal(got[..., 0], np.arange(256, dtype=np.uint8)[None].repeat(3, 0))
    assert (got == got[..., :1]).all()


def test_sixteen_bit_values_round_to_nearest(tmp_path):
    values = np.array([[0, 128, 129, 1000, 32767, 65407, 65535]], np.uint16)
    path = tmp_path / "odd16.png"
    Image.frombytes("I;16", (7, 1), values.tobytes()).save(path, format="PNG")
    expected = np.floor(values / 257.0 + 0.5).astype(np.uint8)  # v * 255 / 65535, rounded
    np.testing.assert_array_equal(np.asarray(load_image(path))[..., 1], expected)


def test_big_endian_and_32_bit_integer_tiffs(tmp_path):
    values = (np.arange(12, dtype=np.int64) * 5000).reshape(3, 4)
    expected = np.floor(values / 257.0 + 0.5).astype(np.uint8)
    path_i = tmp_path / "int32.tif"
    Image.frombytes("I", (4, 3), values.astype(np.int32).tobytes()).save(path_i, format="TIFF")
    path_b = tmp_path / "be16.tif"
    Image.frombytes("I;16B", (4, 3), values.astype(">u2").tobytes()).save(path_b, format="TIFF")
    for path in (path_i, path_b):
        np.testing.assert_array_equal(np.asarray(load_image(path))[..., 2], expected)


def test_float_tiff_in_unit_range_is_scaled(tmp_path):
    values = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    path = tmp_path / "float.tif"
    Image.frombytes("F", (4, 3), values.tobytes()).save(path, format="TIFF")
    np.testing.assert_array_equal(np.asarray(load_image(path))[..., 0], np.rint(values * 255).astype(np.uint8))


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_on_white(tmp_path, mode):
    rng = np.random.default_rng(4)
    colour = rng.integers(0, 256, (10, 12, 3 if mode == "RGBA" else 1), dtype=np.uint8)
    alpha = rng.integers(0, 256, (10, 12, 1), dtype=np.uint8)
    alpha[0, :3, 0] = (0, 255, 128)  # fully transparent, opaque, half
    raw = np.concatenate([colour, alpha], axis=-1)
    path = tmp_path / f"alpha_{mode}.png"
    Image.frombytes(mode, (12, 10), raw.tobytes()).save(path, format="PNG")
    a = alpha.astype(float) / 255
    expected = colour.astype(float) * a + 255 * (1 - a)
    expected = np.broadcast_to(expected, (10, 12, 3))
    assert_close(load_image(path), expected.round(), mean_tol=0.6, max_tol=1)


# EXIF orientation o: how a viewer turns the stored pixels upright (EXIF 2.3,
# tag 0x0112), written with numpy alone.
UPRIGHT_FROM_STORED = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1, :],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, k=-1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, k=1),
}
STORED_FROM_UPRIGHT = {
    2: UPRIGHT_FROM_STORED[2], 3: UPRIGHT_FROM_STORED[3], 4: UPRIGHT_FROM_STORED[4],
    5: UPRIGHT_FROM_STORED[5], 6: UPRIGHT_FROM_STORED[8], 7: UPRIGHT_FROM_STORED[7],
    8: UPRIGHT_FROM_STORED[6],
}


def exif_with_orientation(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


@pytest.mark.parametrize("orientation", range(2, 9))
def test_exif_orientation_png_is_upright_pixel_for_pixel(tmp_path, orientation):
    upright = noise_rgb(5, 8, seed=orientation)  # 8 wide, 5 high
    stored = np.ascontiguousarray(STORED_FROM_UPRIGHT[orientation](upright))
    np.testing.assert_array_equal(UPRIGHT_FROM_STORED[orientation](stored), upright)  # reference sanity
    path = save(stored, tmp_path / f"o{orientation}.png", "PNG", exif=exif_with_orientation(orientation))
    decoded = decode_image(path)
    np.testing.assert_array_equal(np.asarray(decoded.image), upright)
    assert decoded.original_size == (8, 5)
    assert 0x0112 not in decoded.image.getexif()  # never rotated twice downstream


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_jpeg_is_upright(tmp_path, orientation):
    upright = smooth_rgb(48, 80)
    upright[:8, :8] = 0  # a dark top-left corner pins the orientation down
    stored = np.ascontiguousarray(STORED_FROM_UPRIGHT[orientation](upright))
    path = save(stored, tmp_path / f"o{orientation}.jpg", "JPEG", quality=95,
                exif=exif_with_orientation(orientation))
    assert_close(load_image(path), upright, mean_tol=2.0, max_tol=80)  # 4:2:0 chroma at the corner


def test_damaged_exif_keeps_the_photo(tmp_path):
    source = noise_rgb(6, 9)
    path = save(source, tmp_path / "bad_exif.jpg", "JPEG", quality=95, exif=b"Exif\x00\x00garbage")
    assert load_image(path).size == (9, 6)


def test_pil_globals_untouched(tmp_path):
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    load_image(save(noise_rgb(4, 4), tmp_path / "a.png", "PNG"))
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == before


# --------------------------------------------------------------------------- reduced decode

def test_reduced_jpeg_decode_keeps_original_size_and_view_geometry(tmp_path):
    source = smooth_rgb(900, 1200)
    path = tmp_path / "big.jpg"
    path.write_bytes(jpeg_bytes(source, quality=92))
    full = decode_image(path)
    reduced = decode_image(path, reduce_to=224)
    # DCT scaling is by 1/2, 1/4 or 1/8 and keeps >= 2x the 224x168 view: 1/2 here.
    assert reduced.image.size == (600, 450) and reduced.reduced and not full.reduced
    assert reduced.original_size == full.original_size == (1200, 900)
    assert reduced.image.info["original_size"] == (1200, 900)
    fast = peripheral_view(reduced.image, 224, stride=32, original_size=reduced.original_size)
    slow = peripheral_view(full.image, 224, stride=32)
    assert fast.size == slow.size == peripheral_size(1200, 900, 224, 32)
    assert_close(fast, np.asarray(slow), mean_tol=1.5, max_tol=12)


def test_reduced_decode_of_rotated_jpeg_reports_upright_size(tmp_path):
    stored = smooth_rgb(800, 1200)
    path = save(stored, tmp_path / "r.jpg", "JPEG", quality=90, exif=exif_with_orientation(6))
    decoded = decode_image(path, reduce_to=100)
    assert decoded.original_size == (800, 1200)
    assert decoded.image.size == (200, 300)  # 1/4 scale keeps >= 2 x (100 x 67)


def test_reduce_to_is_ignored_for_non_jpeg(tmp_path):
    path = save(smooth_rgb(400, 600), tmp_path / "p.png", "PNG")
    assert decode_image(path, reduce_to=64).image.size == (600, 400)


# --------------------------------------------------------------------------- views

@pytest.mark.parametrize("size, view, stride, min_side, expected", [
    ((640, 480), 224, 1, 1, (224, 168)),       # 224 * 480 / 640 = 168
    ((640, 480), 224, 32, 1, (224, 160)),      # 168 / 32 = 5.25 -> 5 * 32
    ((480, 640), 224, 32, 1, (160, 224)),
    ((300, 300), 224, 1, 1, (224, 224)),
    ((1000, 333), 224, 1, 1, (224, 75)),       # 74.59 -> 75
])
def test_peripheral_view_sizes_hand_computed(size, view, stride, min_side, expected):
    img = Image.fromarray(noise_rgb(size[1], size[0]))
    view_img = peripheral_view(img, view, stride, min_side)
    assert view_img.size == expected == peripheral_size(*size, view, stride, min_side)


def test_extreme_aspect_short_side_clamped_to_min_side():
    img = Image.fromarray(noise_rgb(50, 4000))
    assert peripheral_view(img, 224, stride=1, min_side=32).size == (224, 32)
    assert peripheral_view(img, 224).size == peripheral_size(4000, 50, 224) == (224, 3)


def test_peripheral_view_samples_pixel_centres():
    # A linear ramp resampled without shift or flip stays the ramp at the
    # output pixel centres: value(x_out) = slope * ((x_out + 0.5) * scale - 0.5).
    width, height, view = 896, 448, 224
    ramp = (np.arange(width) * 255 / (width - 1)).astype(np.float64)
    img = Image.fromarray(np.repeat(ramp.round().astype(np.uint8)[None, :, None], height, 0).repeat(3, 2))
    out = np.asarray(peripheral_view(img, view))[..., 0].astype(float)
    scale = width / view
    centres = (np.arange(view) + 0.5) * scale - 0.5
    expected = centres * 255 / (width - 1)
    inner = slice(3, view - 3)  # away from the edge clamping
    assert np.abs(out[:, inner] - expected[inner]).max() <= 1.0
    assert out.shape == (112, 224)


def test_small_image_is_upscaled_bicubic_to_view():
    img = Image.fromarray(noise_rgb(30, 40))
    view_img = peripheral_view(img, 224)
    assert view_img.size == (224, 168)
    reference = img.resize((224, 168), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(np.asarray(view_img), np.asarray(reference))


def test_one_pixel_image_still_makes_every_view(tmp_path):
    path = save(np.array([[[10, 120, 240]]], np.uint8), tmp_path / "dot.png", "PNG")
    img = load_image(path)
    assert peripheral_view(img, 224).size == (224, 224)
    fovea = foveal_view(img, (0, 0, 1, 1), 224)
    assert fovea.size == (224, 224)
    assert (np.asarray(fovea) == (10, 120, 240)).all()
    crops = random_crops(img, 2, 224, seed=0, image_id="dot")
    assert [c.size for c in crops] == [(224, 224)] * 2


def test_foveal_view_matches_numpy_slice_then_resize():
    source = noise_rgb(300, 400, seed=5)
    img = Image.fromarray(source)
    box = (37, 21, 337, 251)  # x0, y0, x1, y1: 300 wide, 230 high -> warped to 224 x 224
    reference = Image.fromarray(source[21:251, 37:337]).resize((224, 224), Image.Resampling.LANCZOS)
    np.testing.assert_array_equal(np.asarray(foveal_view(img, box, 224)), np.asarray(reference))


def test_foveal_view_of_a_view_sized_box_is_the_exact_slice():
    source = noise_rgb(300, 400, seed=6)
    box = (np.int64(100), 50, 324, 274)  # numpy integers accepted
    np.testing.assert_array_equal(np.asarray(foveal_view(Image.fromarray(source), box, 224)),
                                  source[50:274, 100:324])


def test_foveal_view_of_a_small_box_is_zoomed_bicubic():
    source = noise_rgb(60, 80, seed=7)
    reference = Image.fromarray(source[10:40, 5:55]).resize((64, 64), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(np.asarray(foveal_view(Image.fromarray(source), (5, 10, 55, 40), 64)),
                                  np.asarray(reference))


@pytest.mark.parametrize("box", [(0, 0, 81, 10), (-1, 0, 10, 10), (10, 10, 10, 20), (5, 30, 9, 20),
                                 (0, 0, 10.5, 10), (0, 0, 10), "0,0,1,1"])
def test_foveal_view_rejects_bad_boxes(box):
    with pytest.raises(ValueError, match="box"):
        foveal_view(Image.fromarray(noise_rgb(60, 80)), box, 32)


def test_random_crops_are_seeded_and_inside_the_image():
    source = noise_rgb(300, 500, seed=8)
    img = Image.fromarray(source)
    boxes = random_crop_boxes(img.size, 4, 224, seed=3, image_id="953619")
    assert boxes == random_crop_boxes(img.size, 4, 224, seed=3, image_id="953619")
    assert boxes != random_crop_boxes(img.size, 4, 224, seed=4, image_id="953619")
    assert boxes != random_crop_boxes(img.size, 4, 224, seed=3, image_id="953620")
    assert len(set(boxes)) > 1
    crops = random_crops(img, 4, 224, seed=3, image_id="953619")
    for (x0, y0, x1, y1), crop in zip(boxes, crops):
        assert 0 <= x0 and 0 <= y0 and x1 <= 500 and y1 <= 300 and (x1 - x0, y1 - y0) == (224, 224)
        np.testing.assert_array_equal(np.asarray(crop), source[y0:y1, x0:x1])


def test_random_crop_positions_cover_the_range():
    boxes = random_crop_boxes((260, 230), 400, 224, seed=0, image_id="x")
    xs = {b[0] for b in boxes}
    ys = {b[1] for b in boxes}
    assert xs == set(range(37)) and ys == set(range(7))


def test_random_crops_identical_in_another_process():
    code = ("from gpf.pipeline.images import random_crop_boxes;"
            "print(random_crop_boxes((640, 480), 3, 224, 11, 'img/7'))")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True, timeout=120).stdout.strip()
    assert out == str(random_crop_boxes((640, 480), 3, 224, 11, "img/7"))


def test_random_crop_of_a_small_image_is_its_largest_square_resized():
    source = noise_rgb(100, 150, seed=9)
    (box,) = random_crop_boxes((150, 100), 1, 224, seed=1, image_id="s")
    x0, y0, x1, y1 = box
    assert (y0, y1, x1 - x0) == (0, 100, 100)
    (crop,) = random_crops(Image.fromarray(source), 1, 224, seed=1, image_id="s")
    reference = Image.fromarray(source[:, x0:x1]).resize((224, 224), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(np.asarray(crop), np.asarray(reference))


# --------------------------------------------------------------------------- bytes and tensors

def test_encode_jpeg_is_deterministic_and_explicit():
    img = Image.fromarray(smooth_rgb(64, 96))
    data = encode_jpeg(img)
    assert data == encode_jpeg(img.copy()) == encode_jpeg(Image.fromarray(np.asarray(img).copy()))
    decoded = Image.open(io.BytesIO(data))
    assert JpegImagePlugin.get_sampling(decoded) == 2  # 4:2:0
    assert "progressive" not in decoded.info
    assert JpegImagePlugin.get_sampling(Image.open(io.BytesIO(encode_jpeg(img, subsampling="4:4:4")))) == 0
    assert len(encode_jpeg(img, quality=50)) < len(data)
    assert_close(Image.fromarray(decode_jpeg_to_uint8(data)), np.asarray(img), mean_tol=1.5, max_tol=10)


@pytest.mark.parametrize("kwargs", [{"quality": 0}, {"quality": 101}, {"quality": 9.5}, {"subsampling": "4:1:1"}])
def test_encode_jpeg_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        encode_jpeg(Image.new("RGB", (4, 4)), **kwargs)


def test_decode_jpeg_to_uint8_is_strict():
    data = jpeg_bytes(noise_rgb(32, 32))
    assert decode_jpeg_to_uint8(data).shape == (32, 32, 3)
    with pytest.raises(ImageError) as info:
        decode_jpeg_to_uint8(data[: len(data) // 2])
    assert info.value.status == "truncated"
    with pytest.raises(ImageError) as info:
        decode_jpeg_to_uint8(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)
    assert info.value.status == "not_an_image"


def test_to_uint8_tensor_is_chw_uint8():
    torch = pytest.importorskip("torch")
    source = noise_rgb(5, 7)
    tensor = to_uint8_tensor(Image.fromarray(source))
    assert tensor.dtype == torch.uint8 and tuple(tensor.shape) == (3, 5, 7)
    np.testing.assert_array_equal(tensor.permute(1, 2, 0).numpy(), source)


def test_pil_features_reuses_env_info():
    from gpf.env_info import pil_flavour

    info = images.pil_features()
    assert {k: info[k] for k in ("flavour", "version", "avx2")} == pil_flavour()
    assert info["formats"]["JPEG"] is True and info["formats"]["PNG"] is True
    assert info["formats"]["WEBP"] == bool(features.check("webp"))


def test_module_imports_without_torch():
    code = "import sys, gpf.pipeline.images; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120, cwd=REPO).stdout.strip()
    assert out == "False"


def test_views_never_return_the_source_object():
    img = Image.fromarray(noise_rgb(224, 224))
    assert peripheral_view(img, 224) is not img
    assert foveal_view(img, (0, 0, 224, 224), 224) is not img
    assert random_crops(img, 1, 224, seed=0, image_id="a")[0] is not img


def test_webp_without_webp_support_is_named(tmp_path):
    path = tmp_path / "fake.jpg"
    payload = b"VP8 " + struct.pack("<I", 10) + b"\x00" * 10
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(payload)) + b"WEBP" + payload)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageError) as info:
            load_image(path)
    assert info.value.status in ("decode_error", "truncated")
    if not features.check("webp"):
        assert "cannot read WEBP" in info.value.reason


def test_fifo_is_not_a_file(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes on this platform")
    path = tmp_path / "pipe.jpg"
    os.mkfifo(path)
    assert status_of(path) == "not_a_file"  # and returns at once: never opened for reading
