"""Whether pillow-simd may replace Pillow (gpf.env_info.pil_choice), on fake feature sets."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gpf import env_info
from gpf.env_info import KEEP_PILLOW, missing_pil_formats, pil_choice

ALL = {"JPEG": True, "PNG": True, "WEBP": True, "TIFF": True, "TIFF_libtiff": True, "GIF": True,
       "AVIF": True, "JPEG2000": True}


def pillow(**formats) -> dict:
    return {"flavour": "Pillow", "version": "13.0.0", "formats": {**ALL, **formats}}


def simd(**formats) -> dict:
    return {"flavour": "pillow-simd", "version": "12.1.1.post0", "formats": {**ALL, **formats}}


def test_nothing_missing_installs_pillow_simd():
    choice = pil_choice(pillow(), simd())
    assert choice.install and choice.missing == ()
    assert choice.message == ("gpf setup: installing pillow-simd 12.1.1.post0: "
                              "it reads every format Pillow 13.0.0 reads")


def test_missing_webp_keeps_pillow_naming_header_and_package():
    choice = pil_choice(pillow(), simd(WEBP=False))
    assert not choice.install and choice.missing == ("WEBP",)
    assert "\n" not in choice.message
    assert choice.message.startswith("gpf setup: keeping Pillow 13.0.0: pillow-simd 12.1.1.post0")
    assert "WEBP (no webp/encode.h)" in choice.message
    assert "apt-get install libwebp-dev," in choice.message


def test_only_avif_missing_installs_pillow_simd_and_says_avif_is_lost():
    choice = pil_choice(pillow(), simd(AVIF=False))
    assert choice.install and choice.missing == ("AVIF",)
    assert "except AVIF" in choice.message and "libavif 1.x" in choice.message
    assert "apt-get" not in choice.message


def test_jpeg2000_is_kept_like_any_other_format():
    choice = pil_choice(pillow(), simd(JPEG2000=False))
    assert not choice.install
    assert "JPEG 2000 (no openjpeg-2.5/openjpeg.h)" in choice.message
    assert "libopenjp2-7-dev" in choice.message


def test_every_missing_format_is_named_once_with_avif_last():
    choice = pil_choice(pillow(), simd(WEBP=False, AVIF=False, TIFF_libtiff=False, JPEG2000=False))
    assert choice.missing == ("WEBP", "TIFF_libtiff", "JPEG2000", "AVIF")
    assert "apt-get install libwebp-dev libtiff-dev libopenjp2-7-dev, then" in choice.message
    assert "libavif" in choice.message and "libavif-dev" not in choice.message


def test_a_header_that_is_there_points_at_the_build_settings():
    choice = pil_choice(pillow(), simd(WEBP=False), header_found=lambda include: include == "webp/encode.h")
    assert "WEBP (webp/encode.h is there but the build left it out)" in choice.message


def test_formats_pillow_lacks_do_not_count():
    assert missing_pil_formats(pillow(WEBP=False), simd(WEBP=False)) == []
    assert pil_choice(pillow(WEBP=False, AVIF=False), simd(WEBP=False, AVIF=False)).install


def test_a_format_the_candidate_does_not_list_is_missing():
    candidate = simd()
    del candidate["formats"]["JPEG2000"]
    assert missing_pil_formats(pillow(), candidate) == ["JPEG2000"]
    assert missing_pil_formats(pillow()["formats"], candidate["formats"]) == ["JPEG2000"]


def test_active_pil_lists_jpeg2000_from_its_codec():
    from PIL import features

    formats = env_info.pil_formats()
    assert formats["JPEG2000"] == bool(features.check_codec("jpg_2000"))
    assert {"JPEG", "PNG", "WEBP", "TIFF", "GIF", "AVIF"} <= set(formats)


def _module(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "gpf.env_info", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def test_command_line_prints_features_and_exits_by_the_choice(tmp_path):
    run = _module("pil-features")
    assert run.returncode == 0, run.stderr
    current = json.loads(run.stdout)
    assert current["formats"] == env_info.pil_formats()
    (tmp_path / "current.json").write_text(json.dumps(pillow()))
    for name, features, code in (("same", simd(), 0), ("nowebp", simd(WEBP=False), KEEP_PILLOW)):
        (tmp_path / f"{name}.json").write_text(json.dumps(features))
        run = _module("pil-choice", str(tmp_path / "current.json"), str(tmp_path / f"{name}.json"))
        assert run.returncode == code and len(run.stdout.splitlines()) == 1, run.stdout + run.stderr


@pytest.mark.parametrize("args", [[], ["pil-choice", "only-one.json"], ["nonsense"]])
def test_command_line_usage_error(args):
    run = _module(*args)
    assert run.returncode == 2 and "usage" in run.stderr
