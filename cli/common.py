"""Options and error handling shared by the gpf sub-commands."""
from __future__ import annotations

import dataclasses
import functools
import sys

import click

DATASET_KINDS = ("ava", "photonet", "folder")


def dataset_options(fn):
    """Options that say how a dataset's splits are made; stage 1 and preprocess must agree on them."""
    options = [
        click.option("--val-size", type=float, default=None,
                     help="Validation split carved from train: a count (>= 1) or a fraction (< 1). "
                          "Default: the dataset's (see docs/datasets.md)."),
        click.option("--split-seed", type=int, default=None,
                     help="Seed of the deterministic train/val split (default 0)."),
        click.option("--image-root", type=click.Path(file_okay=False), default=None,
                     help="folder datasets: where relative image paths in the CSV point (default: the CSV's folder)."),
        click.option("--threshold", type=float, default=None,
                     help="High/low cut on the mean score (default: AVA 5, Photo.net see docs, CSV the scale midpoint)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def collect_dataset_options(kind: str, val_size, split_seed, image_root, threshold) -> dict:
    """Keyword arguments for ``gpf.pipeline.sources.open_dataset`` from the CLI values given."""
    opts: dict = {}
    if val_size is not None:
        opts["val_size"] = int(val_size) if val_size >= 1 else float(val_size)
    if split_seed is not None:
        opts["seed"] = split_seed
    if threshold is not None:
        opts["threshold"] = threshold
    if image_root is not None:
        if kind != "folder":
            raise click.UsageError("--image-root applies to folder (CSV) datasets only")
        opts["image_root"] = image_root
    return opts


def config_default(cls: type, name: str):
    """The default of field ``name`` of the library config dataclass ``cls``: the CLI never repeats one."""
    for item in dataclasses.fields(cls):
        if item.name == name:
            if item.default is not dataclasses.MISSING:
                return item.default
            if item.default_factory is not dataclasses.MISSING:
                return item.default_factory()
            raise ValueError(f"{cls.__name__}.{name} has no default")   # a bug in gpf, not user input
    raise ValueError(f"{cls.__name__} has no field {name!r}")


def default_help(text: str, cls: type, name: str) -> str:
    """``text`` followed by ``[default: VALUE]`` from the config dataclass, for options whose value is None
    when not given (so a config file or a resumed run can set it)."""
    return f"{text} [default: {config_default(cls, name)}]."


def is_user_os_error(exc: BaseException) -> bool:
    """An OS error about a path the user gave (missing, not readable, not a folder ...), not a bug."""
    return isinstance(exc, OSError) and (exc.filename is not None or isinstance(
        exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)))


def friendly_errors(fn):
    """Turn the library's expected errors (:class:`~gpf.errors.GPFError`, and the OS errors of bad paths)
    into one clear line and a non-zero exit, no traceback. Anything else is a bug and keeps its traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ..errors import GPFError

        try:
            return fn(*args, **kwargs)
        except GPFError as exc:
            raise click.ClickException(error_text(exc)) from None
        except OSError as exc:
            if not is_user_os_error(exc):
                raise
            raise click.ClickException(error_text(exc)) from None
    return wrapper


def error_text(exc: BaseException) -> str:
    """The message of an expected error, unwrapped from torch's DataLoader worker re-raise.

    An error raised in a loader worker comes back with the worker's whole
    traceback in its message; the user needs its last line only.
    """
    text = str(exc)
    if "Original Traceback" not in text:
        return text
    last = [line for line in text.strip().splitlines() if line.strip()][-1]
    name, sep, message = last.partition(": ")
    return message if sep and name.replace(".", "").replace("_", "").isalnum() else last


def echo_err(message: str) -> None:
    click.echo(message, err=True)


def is_tty() -> bool:
    return sys.stderr.isatty()
