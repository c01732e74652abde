"""Facts about the running environment: library versions, PIL flavour, device.

Used by ``gpf --version`` and recorded in shard manifests and checkpoints, so
that a resume in a different environment can be refused with the difference
named.

Also decides, for ``scripts/install_pillow_simd.sh``, whether a pillow-simd
build may replace Pillow: only when it reads every format the Pillow it
replaces reads (AVIF excepted, see :data:`OPTIONAL_FORMATS`)::

    python -m gpf.env_info pil-features > current.json
    PYTHONPATH=candidate-site python -m gpf.env_info pil-features > candidate.json
    python -m gpf.env_info pil-choice current.json candidate.json   # exit 0: install, 3: keep Pillow
"""
from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Callable

from ._version import __version__

# Written next to PIL by scripts/install_pillow_simd.sh: the compiler flags used.
PIL_BUILD_NOTE = "GPF_BUILD_INFO"


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def pil_flavour() -> dict:
    """Which PIL is active: ``{'flavour': 'Pillow'|'pillow-simd', 'version', 'avx2'}``.

    ``avx2`` is True/False when known (pillow-simd built by our setup records its
    flags), else None.
    """
    import PIL

    simd_version = _dist_version("Pillow-SIMD") or _dist_version("pillow-simd")
    flavour = "pillow-simd" if simd_version else "Pillow"
    avx2 = None
    note = Path(PIL.__file__).parent / PIL_BUILD_NOTE
    if note.exists():
        avx2 = "avx2" in note.read_text().lower()
    elif flavour == "Pillow":
        avx2 = False
    return {"flavour": flavour, "version": PIL.__version__, "avx2": avx2}


def environment_summary() -> dict:
    """Versions that decide whether two runs can produce byte-identical outputs."""
    import numpy
    import torch
    import torchvision

    return {
        "gpf": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.cuda.is_available(),
        "pil": pil_flavour(),
    }


# --------------------------------------------------------------------------- Pillow or pillow-simd

#: Formats whose loss does not keep Pillow: pillow-simd builds AVIF only against
#: libavif 1.x, and Debian 12 ships 0.11, so insisting on it would rule
#: pillow-simd out on most machines. Its loss is still named.
OPTIONAL_FORMATS = ("AVIF",)

#: What a PIL build needs to read a format: the Debian/Ubuntu package and the
#: header(s) its setup looks for (any one of them). Formats not listed need nothing.
FORMAT_NEEDS = {
    "JPEG": ("libjpeg62-turbo-dev", ("jpeglib.h",)),
    "PNG": ("zlib1g-dev", ("zlib.h",)),
    "WEBP": ("libwebp-dev", ("webp/encode.h",)),
    "TIFF_libtiff": ("libtiff-dev", ("tiff.h",)),
    "JPEG2000": ("libopenjp2-7-dev", ("openjpeg-2.5/openjpeg.h", "openjpeg-2.4/openjpeg.h",
                                      "openjpeg-2.3/openjpeg.h")),
    "AVIF": ("libavif-dev (1.x)", ("avif/avif.h",)),
}

#: How the formats' keys read in messages.
FORMAT_LABELS = {"TIFF_libtiff": "compressed TIFF", "JPEG2000": "JPEG 2000"}

#: Formats ``gpf.pipeline.images.load_image`` will open (those this PIL build can read). Vector and
#: document formats (EPS, PDF, WMF) are excluded: opening them would run
#: external interpreters on untrusted files.
IMAGE_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "TIFF", "BMP", "PPM", "JPEG2000", "AVIF")
_CODEC_MODULES = {"WEBP": "webp", "AVIF": "avif"}


@lru_cache(maxsize=1)
def readable_formats() -> tuple[str, ...]:
    """The :data:`IMAGE_FORMATS` this PIL build can actually decode."""
    from PIL import Image, features

    Image.init()

    def usable(name: str) -> bool:
        module = _CODEC_MODULES.get(name)
        if module is None:
            return True
        return module in features.modules and features.check_module(module)

    return tuple(f for f in IMAGE_FORMATS if f in Image.OPEN and usable(f))


def pil_features() -> dict:
    """What this PIL can do: :func:`pil_flavour` (flavour, version, avx2) plus the
    readable formats, the JPEG library and PIL's own pixel limit."""
    from PIL import Image, features

    from .vocabulary import DEFAULT_MAX_PIXELS

    def check(name: str) -> bool:
        known = (getattr(features, "modules", {}), getattr(features, "codecs", {}),
                 getattr(features, "features", {}))
        return any(name in table for table in known) and bool(features.check(name))

    readable = set(readable_formats())
    return {
        **pil_flavour(),
        "formats": {
            "JPEG": "JPEG" in readable and check("jpg"),
            "PNG": "PNG" in readable and check("zlib"),
            "WEBP": "WEBP" in readable and check("webp"),
            "TIFF": "TIFF" in readable,
            "TIFF_libtiff": check("libtiff"),
            "GIF": "GIF" in readable,
            "AVIF": "AVIF" in readable and check("avif"),
        },
        "libjpeg_turbo": check("libjpeg_turbo"),
        "jpeg_version": features.version("jpg") if check("jpg") else None,
        "pil_max_image_pixels": Image.MAX_IMAGE_PIXELS,
        "default_max_pixels": DEFAULT_MAX_PIXELS,
    }


#: Exit status of ``pil-choice`` when Pillow is kept.
KEEP_PILLOW = 3


def pil_formats() -> dict[str, bool]:
    """The formats the active PIL reads: ``pil_features()["formats"]`` plus JPEG 2000.

    gpf opens JPEG 2000 (``IMAGE_FORMATS``; ``predict`` collects ``.jp2`` files),
    and PIL registers its opener even without OpenJPEG, so only the codec tells
    whether such a file decodes.
    """
    from PIL import features

    formats = dict(pil_features()["formats"])
    if "JPEG2000" in IMAGE_FORMATS and "JPEG2000" not in formats:
        formats["JPEG2000"] = bool(features.check_codec("jpg_2000"))
    return formats


def pil_features_report() -> dict:
    """``pil_features()`` with :func:`pil_formats` as its formats (what ``pil-features`` prints)."""
    return {**pil_features(), "formats": pil_formats()}


def _formats_of(features: dict) -> dict:
    return features.get("formats", features)


def missing_pil_formats(current: dict, candidate: dict) -> list[str]:
    """Formats ``current`` reads and ``candidate`` does not, in ``current``'s order,
    :data:`OPTIONAL_FORMATS` last.

    Each argument is a :func:`pil_features_report` dict or just its ``formats``.
    """
    have = _formats_of(candidate)
    missing = [name for name, ok in _formats_of(current).items() if ok and not have.get(name)]
    return sorted(missing, key=lambda name: name in OPTIONAL_FORMATS)


def header_found(include: str, compiler: str = "cc") -> bool:
    """Whether ``#include <include>`` preprocesses with the C compiler."""
    if shutil.which(compiler) is None:
        return False
    run = subprocess.run([compiler, "-E", "-"], input=f"#include <{include}>\n", text=True,
                         capture_output=True, timeout=60)
    return run.returncode == 0


@dataclass(frozen=True)
class PilChoice:
    """Whether to install pillow-simd, and the one line that says so and why."""
    install: bool
    message: str
    missing: tuple[str, ...] = ()


def _label(name: str) -> str:
    return FORMAT_LABELS.get(name, name)


def _why_missing(name: str, header_found: Callable[[str], bool]) -> str:
    """``'WEBP (no webp/encode.h)'``, or the build settings when the header is there."""
    if name in OPTIONAL_FORMATS:
        return f"{_label(name)} (exempt: pillow-simd builds it only against libavif 1.x)"
    if name not in FORMAT_NEEDS:
        return f"{_label(name)} (left out by the build)"
    _, headers = FORMAT_NEEDS[name]
    if any(header_found(h) for h in headers):
        return f"{_label(name)} ({headers[0]} is there but the build left it out)"
    return f"{_label(name)} (no {headers[0]})"


def _version(features: dict, flavour: str) -> str:
    version = features.get("version")
    return f"{flavour} {version}" if version else flavour


def pil_choice(current: dict, candidate: dict,
               header_found: Callable[[str], bool] = lambda include: False) -> PilChoice:
    """Install the candidate pillow-simd only if it reads every format ``current`` reads.

    A lost :data:`OPTIONAL_FORMATS` member is named but does not block it. When
    Pillow is kept, the message names each lost format, the header it lacks and
    the ``apt-get install`` that gets pillow-simd.
    """
    missing = missing_pil_formats(current, candidate)
    blocking = [name for name in missing if name not in OPTIONAL_FORMATS]
    simd, pillow = _version(candidate, "pillow-simd"), _version(current, "Pillow")
    lost = ", ".join(_why_missing(name, header_found) for name in missing)
    if not blocking:
        note = f" except {lost}, which gpf will no longer read" if missing else ""
        return PilChoice(True, f"gpf setup: installing {simd}: it reads every format {pillow} reads{note}",
                         tuple(missing))
    packages = " ".join(dict.fromkeys(FORMAT_NEEDS[name][0] for name in blocking if name in FORMAT_NEEDS))
    fix = (f"; for pillow-simd: apt-get install {packages}, then bash scripts/install_pillow_simd.sh"
           if packages else "")
    return PilChoice(False, f"gpf setup: keeping {pillow}: {simd} built here cannot read {lost}{fix}",
                     tuple(missing))


def _load_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def main(argv: list[str] | None = None) -> int:
    """``pil-features``: print :func:`pil_features_report` as JSON.
    ``pil-choice CURRENT.json CANDIDATE.json``: print :func:`pil_choice`'s line;
    exit 0 to install pillow-simd, :data:`KEEP_PILLOW` to keep Pillow."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["pil-features"]:
        print(json.dumps(pil_features_report()))
        return 0
    if len(args) == 3 and args[0] == "pil-choice":
        choice = pil_choice(_load_json(args[1]), _load_json(args[2]), header_found)
        print(choice.message)
        return 0 if choice.install else KEEP_PILLOW
    print("usage: python -m gpf.env_info pil-features | pil-choice CURRENT.json CANDIDATE.json",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
