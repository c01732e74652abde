"""Options and error handling shared by the gpf sub-commands."""
from __future__ import annotations

import dataclasses
import functools
import os
import sys

import click

DATASET_KINDS = ("ava", "photonet", "folder")


#: Options of the folder (CSV) source only; commands that know their dataset kind leave them out of the others.
FOLDER_ONLY_OPTIONS = ("--image-root", "--path-column", "--id-column", "--count-columns", "--test-size")


def dataset_options(fn=None, *, folder: bool = True):
    """Options that say how a dataset's splits are made; stage 1 and preprocess must agree on them.

    ``folder=False`` (a command for AVA or Photo.net) leaves out :data:`FOLDER_ONLY_OPTIONS`.
    """
    if fn is None:
        return lambda f: dataset_options(f, folder=folder)
    from ..pipeline.sources import DEFAULT_TEST_SIZE

    options = [
        click.option("--val-size", type=float, default=None,
                     help="Validation split carved from train: a count (>= 1) or a fraction (< 1). "
                          "Default: the dataset's (see docs/datasets.md)."),
        click.option("--split-seed", type=int, default=None,
                     help="Seed of the deterministic train/val split [default: 0]."),
        click.option("--image-root", type=click.Path(file_okay=False), default=None,
                     help="folder datasets: where relative image paths in the CSV point (default: the CSV's folder)."),
        click.option("--threshold", type=float, default=None,
                     help="High/low cut on the mean score (default: AVA 5, Photo.net see docs, CSV the scale midpoint)."),
        click.option("--path-column", default=None,
                     help="folder datasets: the CSV column holding image paths (default: path, file, image, ...)."),
        click.option("--id-column", default=None,
                     help="folder datasets: the CSV column holding image ids (default: image_id, id, photo_id)."),
        click.option("--count-columns", default=None,
                     help="folder datasets: the vote-count columns in score order, comma-separated, e.g. "
                          "c1,c2,c3 (default: found by name, see docs/datasets.md)."),
        click.option("--test-size", type=float, default=None,
                     help="folder datasets without a split column: the test split, a count (>= 1) or a "
                          f"fraction (< 1) [default: {DEFAULT_TEST_SIZE:g}]."),
    ]
    if not folder:
        options = [o for o in options if _option_name(o) not in FOLDER_ONLY_OPTIONS]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _option_name(decorator) -> str:
    """The long name of the option a ``click.option(...)`` decorator adds."""
    probe = decorator(lambda **kw: None)
    return probe.__click_params__[-1].opts[0]


def collect_dataset_options(kind: str, val_size, split_seed, image_root, threshold, *, path_column=None,
                            id_column=None, count_columns=None, test_size=None) -> dict:
    """Keyword arguments for ``gpf.pipeline.sources.open_dataset`` from the CLI values given."""
    opts: dict = {}
    if val_size is not None:
        opts["val_size"] = int(val_size) if val_size >= 1 else float(val_size)
    if split_seed is not None:
        opts["seed"] = split_seed
    if threshold is not None:
        opts["threshold"] = threshold
    folder_only = {"--image-root": ("image_root", image_root),
                   "--path-column": ("path_column", path_column),
                   "--id-column": ("id_column", id_column),
                   "--count-columns": ("count_columns", count_columns),
                   "--test-size": ("test_size", test_size)}
    for option, (name, value) in folder_only.items():
        if value is None:
            continue
        if kind != "folder":
            raise click.UsageError(f"{option} applies to folder (CSV) datasets only")
        if name == "count_columns":
            value = [part.strip() for part in value.split(",")]
            if len(value) < 2 or not all(value):
                raise click.BadParameter("give the vote-count columns' names in score order, separated by "
                                         "commas, e.g. c1,c2,c3 (at least two)", param_hint="--count-columns")
        elif name == "test_size":
            value = int(value) if value >= 1 else float(value)
        opts[name] = value
    return opts


class Location(click.ParamType):
    """A local path (checked like ``click.Path``) or a URL fsspec opens (``s3://``, ``gs://`` ...), passed on as a
    string; a URL is checked when it is opened (one line naming it)."""

    name = "path|url"

    def __init__(self, exists: bool = False, file_okay: bool = True, dir_okay: bool = True):
        self._path = click.Path(exists=exists, file_okay=file_okay, dir_okay=dir_okay)

    def convert(self, value, param, ctx):
        from ..shards.storage import is_url

        if is_url(value):
            return value
        return self._path.convert(value, param, ctx)


def storage_options(fn):
    """``--storage-options JSON`` for a command that takes locations: fsspec options (e.g. an S3 ``endpoint_url``)
    for every URL of the command, kept in memory only (see docs/shards.md, Storage)."""
    @click.option("--storage-options", "storage_options_json", default=None, metavar="JSON",
                  help="fsspec storage options for the command's URLs as a JSON object, e.g. "
                       "'{\"endpoint_url\": \"http://minio:9000\"}' (credentials also come from the environment "
                       "and the provider's config files); never written to disk.")
    @functools.wraps(fn)
    def wrapper(*args, storage_options_json=None, **kwargs):
        from ..errors import GPFError
        from ..shards.storage import parse_options, using_options

        try:
            options = parse_options(storage_options_json)
        except GPFError as exc:
            raise click.BadParameter(str(exc), param_hint="--storage-options") from None
        with using_options(options):
            return fn(*args, **kwargs)
    return wrapper


ENGINES = ("local", "ray")


def engine_options(fn):
    """``--engine local|ray`` and how the Ray engine uses its cluster (docs/preprocess.md)."""
    from ..pipeline.raycluster import RayOptions

    options = [
        click.option("--engine", type=click.Choice(ENGINES), default="local", show_default=True,
                     help="local: this process (and --num-nodes ranks); ray: a Ray cluster (pip install 'gpf[ray]')."),
        click.option("--ray-address", default=None,
                     help="--engine ray: the cluster's head (host:port) [default: $RAY_ADDRESS, else a local "
                          "Ray on 127.0.0.1]."),
        click.option("--ray-actors", type=int, default=None,
                     help="--engine ray: network actors [default: one per GPU, else one per node]."),
        click.option("--ray-actor-cpus", type=float, default=config_default(RayOptions, "actor_cpus"),
                     show_default=True, help="--engine ray: CPUs each network actor reserves (its torch threads)."),
        click.option("--ray-task-cpus", type=float, default=config_default(RayOptions, "task_cpus"),
                     show_default=True, help="--engine ray: CPUs (= decode/encode threads) of each CPU task."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def pop_engine_options(kw: dict):
    """``(engine, RayOptions)`` from a command's keyword arguments (removing them); the Ray options
    given with ``--engine local`` are refused."""
    from ..pipeline.raycluster import RayOptions

    engine = kw.pop("engine")
    options = RayOptions(address=kw.pop("ray_address"), actors=kw.pop("ray_actors"),
                         actor_cpus=kw.pop("ray_actor_cpus"), task_cpus=kw.pop("ray_task_cpus"))
    given = [name for name, value, default in (
        ("--ray-address", options.address, None), ("--ray-actors", options.actors, None),
        ("--ray-actor-cpus", options.actor_cpus, config_default(RayOptions, "actor_cpus")),
        ("--ray-task-cpus", options.task_cpus, config_default(RayOptions, "task_cpus"))) if value != default]
    if engine != "ray" and given:
        raise click.UsageError(f"{', '.join(given)} apply to --engine ray only")
    if engine == "ray":       # before anything is written: ray.init would retry an unreachable head for minutes
        from ..pipeline.raycluster import check_reachable

        check_reachable(options.address or os.environ.get("RAY_ADDRESS"))
    return engine, options


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
    """The message of an expected error as a CLI user reads it.

    * Unwrapped from torch's DataLoader worker re-raise: an error raised in a
      loader worker comes back with the worker's whole traceback in its message;
      the user needs its last line only.
    * In the CLI's words: an error whose advice names library parameters carries
      ``param`` (``OptionError``, ``LabelError``, ``ImageError``, ...); its text is
      reworded so the user reads the option that sets each (``path_column=`` ->
      ``--path-column``, :func:`gpf.vocabulary.cli_text`). Errors without ``param``
      pass unchanged (a config file's unknown key lists config keys, not options).
    """
    from ..vocabulary import cli_text

    text = str(exc)
    if "Original Traceback" in text:
        last = [line for line in text.strip().splitlines() if line.strip()][-1]
        name, sep, message = last.partition(": ")
        text = message if sep and name.replace(".", "").replace("_", "").isalnum() else last
    param = getattr(exc, "param", None)
    return cli_text(text, param) if isinstance(param, str) and param else text


#: Exit status of a command stopped by Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED_EXIT = 130


def on_interrupt(advice):
    """Ctrl-C in a long command: say what is kept and how to go on, exit 130 (no "Aborted!", no traceback).

    ``advice(kwargs)`` gives the lines to print from the command's keyword arguments.
    Raising ``SystemExit`` here, inside the command, keeps click's standalone mode
    from printing its bare "Aborted!" first.
    """
    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except KeyboardInterrupt:
                try:
                    lines = advice(kwargs)
                except Exception:  # noqa: BLE001 - the advice must never hide the interrupt
                    lines = ["interrupted"]
                for line in ["", *lines] if lines else []:      # "" ends the line of a "^C" or a bar
                    echo_err(line)
                raise SystemExit(INTERRUPTED_EXIT) from None
        return wrapper
    return decorate


def command_line() -> str:
    """The running command as the user typed it (``gpf preprocess folder ...``), quoted for a shell."""
    import shlex

    ctx = click.get_current_context(silent=True)
    words = ctx.command_path.split()[1:] if ctx is not None else []
    argv = sys.argv[1:]
    if words and argv[:len(words)] == words:
        return shlex.join(["gpf", *argv])
    return " ".join(["gpf", *words, "..."])


def echo_err(message: str) -> None:
    click.echo(message, err=True)


def is_tty() -> bool:
    return sys.stderr.isatty()
