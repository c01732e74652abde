"""Crash-safe file writes shared by checkpoints, shards and run records.

A file is written to a temp name in its own folder, flushed and fsynced, then
renamed over the target, and the folder is fsynced: a crash or a kill leaves
either the old file or the new one, never a partial file.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import BinaryIO, Callable


def fsync_dir(folder: str | os.PathLike) -> None:
    """Persist a rename inside ``folder`` (no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_path(path: str | os.PathLike) -> Path:
    """A hidden, unique temp name next to ``path`` (same folder, so the final rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def commit(tmp: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Fsync the finished temp file ``tmp``, rename it over ``path`` and fsync the folder."""
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)
    return Path(path)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object],
                 tmp_name: str | None = None) -> Path:
    """Call ``write(file)`` on a temp file next to ``path``, then rename it over ``path``."""
    path = Path(path)
    tmp = path.with_name(tmp_name) if tmp_name else temp_path(path)
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes, tmp_name: str | None = None) -> Path:
    return atomic_write(path, lambda handle: handle.write(data), tmp_name)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))
