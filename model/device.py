"""One rule for ``--device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, for every command."""
from __future__ import annotations

import torch

from ..errors import OptionError
from ..vocabulary import DEVICE_CHOICES


def resolve_device(name: str | torch.device, local_rank: int = 0) -> torch.device:
    """The ``torch.device`` for ``name``; ``auto`` is this rank's CUDA device when there is one, else the CPU.

    A bare ``cuda`` means this rank's GPU (``local_rank`` modulo the GPUs), so
    one command line serves every torchrun process. A device that does not
    exist here is refused with an :class:`~gpf.errors.OptionError` naming it.
    """
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise OptionError(f"device {name!r} is not a device; use one of {DEVICE_CHOICES}", param="device") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(f"device {name!r} asks for CUDA but none is available here; use cpu",
                              param="device")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
        elif device.index >= torch.cuda.device_count():
            raise OptionError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)",
                              param="device")
    elif device.type != "cpu":
        raise OptionError(f"device {name!r}: only cpu and cuda are supported ({DEVICE_CHOICES})", param="device")
    return device
