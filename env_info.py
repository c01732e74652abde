"""Facts about the running environment: library versions, PIL flavour, device.

Used by ``gpf --version`` and recorded in shard manifests and checkpoints, so
that a resume in a different environment can be refused with the difference
named.
"""
from __future__ import annotations

import platform
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from gpf._version import __version__

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
