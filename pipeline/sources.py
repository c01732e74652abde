"""Dataset sources: AVA, Photo.net and a folder of images with a CSV of vote counts.

Every reader turns a label file into a :class:`Dataset` of :class:`Record` s, one per
usable image, each holding the image's vote counts ``q = [q_s1 .. q_sN]`` per score
bucket (paper, section III: AVA N = 10 with s = 1..10, Photo.net N = 7 with s = 1..7)
and the split it belongs to (section IV-A). Rows that cannot be used become
:class:`Problem` s (lenient mode, what ``gpf preprocess`` uses) or raise
:class:`LabelError` naming file, line and what is wrong (``strict=True``).

Splits are deterministic and never depend on the order of lines in a file:

* AVA: test = ids of ``generic_test.jpgl`` that have a row in ``AVA.txt`` (the
  standard partition the paper uses, "the same partition ... as the previous work");
  val = a seeded-hash sample of the other rows; train = the rest.
* Photo.net: a seeded-hash ranking of the usable ids gives 1,000 val / 15,000 train /
  the rest test (section IV-A).
* Folder CSV: the CSV's split column, or a seeded-hash sample for val and test.

``Dataset.split_spec`` holds plain values (sizes, seed, sha256 of the ids of each
split) so later stages can refuse to mix splits made differently.
docs/datasets.md describes the formats, defaults and the figures on the real files.
"""
from __future__ import annotations

import contextlib
import csv
import difflib
import gc
import hashlib
import inspect
import logging
import numbers
import os
import re
import string
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple, Sequence
from ..errors import GPFError, OptionError

__all__ = [
    "Record", "Problem", "Dataset", "LabelError", "open_dataset",
    "load_ava", "load_photonet", "load_folder",
    "SPLITS", "AVA_SCORES", "AVA_THRESHOLD", "AVA_CATEGORIES",
    "PHOTONET_SCORES", "PHOTONET_THRESHOLD", "DEFAULT_VAL_SIZE", "DEFAULT_TEST_SIZE",
    "DEFAULT_IMAGE_PATTERN", "COUNT_COLUMN_FORMS", "MIN_VAL_IMAGES", "CSV_DELIMITERS",
    "check_images_resolve", "problem_lines",
]

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
_SPLIT_CHOICES = SPLITS + ("all",)

AVA_SCORES = tuple(float(s) for s in range(1, 11))
AVA_THRESHOLD = 5.0  # section IV-B: "we threshold the mean score using the threshold 5"
AVA_CATEGORIES = ("animal", "architecture", "cityscape", "floral",
                  "fooddrink", "landscape", "portrait", "stilllife")
AVA_LABEL_FILE = "AVA.txt"
AVA_SUBFOLDER = "AVA_dataset"
AVA_LIST_DIR = "aesthetics_image_lists"
AVA_TEST_LIST = "generic_test.jpgl"
_AVA_COLUMNS = 15
_AVA_HEADER = "index, image id, 10 vote counts (scores 1..10), 2 tag ids, challenge id"

PHOTONET_SCORES = tuple(float(s) for s in range(1, 8))
# The paper states threshold 5 once for its evaluation (section IV-B), citing [27]
# which is also its Photo.net baseline; the scale midpoint 4 would call 97.5 % of the
# public file "high". See docs/datasets.md.
PHOTONET_THRESHOLD = 5.0
PHOTONET_LABEL_FILE = "photonet_dataset.txt"
_PHOTONET_COLUMNS = 12
_PHOTONET_HEADER = "index, photo id, n_ratings, mean, variance, 7 vote counts (scores 1..7)"
PHOTONET_TRAIN_SIZE = 15_000   # section IV-A
PHOTONET_VAL_SIZE = 1_000      # section IV-A
PHOTONET_PAPER_USABLE = 17_200  # section IV-A: images with a distribution in the paper

DEFAULT_VAL_SIZE = 0.05        # fraction of the non-test rows held out for validation
DEFAULT_TEST_SIZE = 0.10       # fraction of CSV rows for test when the CSV has no split column
DEFAULT_IMAGE_PATTERN = "images/{id}.jpg"
#: Below this many validation images, loss, accuracy and SRCC on the split are noise: a note says so.
MIN_VAL_IMAGES = 30
#: Field separators a label CSV may use; the header line decides which (csv.Sniffer).
CSV_DELIMITERS = ",;\t|"

_STATUS_BAD = "bad_label"
_STATUS_DUPLICATE = "duplicate"
_STATUS_NO_DISTRIBUTION = "no_distribution"
_STATUS_MISSING = "missing"
_FIX_ROW = "fix or delete this row"


# --------------------------------------------------------------------------- types

class LabelError(GPFError, ValueError):
    """A label row (or a whole label file) that cannot be used.

    ``str(err)`` names the file, the 1-based line and what is wrong; the same text
    becomes ``Problem.error`` in lenient mode. ``param`` is the loader parameter the
    message advises (``count_columns``, ``path_column``), if any.
    """

    def __init__(self, message: str, *, source: str | None = None, line: int | None = None,
                 image_id: str | None = None, status: str = _STATUS_BAD, param: str | None = None):
        super().__init__(message)
        self.source = source
        self.line = line
        self.image_id = image_id
        self.status = status
        self.param = param


class OptionTypeError(OptionError, TypeError):
    """A parameter value of the wrong type (a split size that is neither a count nor a fraction)."""


@dataclass(frozen=True)
class Record:
    """One usable image: its vote counts per score bucket and its split."""
    image_id: str                 # as in the label file (AVA: '953619')
    path: Path                    # image file (may not exist unless check_images=True)
    votes: tuple[int, ...]        # counts per score bucket, len N
    split: str                    # 'train' | 'val' | 'test'
    tags: tuple[str, ...] = ()    # semantic tag names (AVA: from tags.txt, 0 = none)
    category: str | None = None   # AVA category test list the id belongs to, else None
    challenge: int | None = None  # AVA challenge id
    line: int | None = None       # 1-based line in the label file


@dataclass(frozen=True)
class Problem:
    """A row or image that cannot be used, with a human explanation and the fix."""
    image_id: str | None
    source: str                   # file path
    line: int | None
    status: str                   # 'bad_label' | 'no_distribution' | 'duplicate' | 'missing'
    error: str                    # human text naming the problem and the fix
    split: str | None = None
    path: str | None = None       # the image file the row names, where known

    @property
    def reason(self) -> str:
        """``error`` without the file and line it starts with."""
        for prefix in (f"{self.source} line {self.line}: ", f"{self.source}: "):
            if self.error.startswith(prefix):
                return self.error[len(prefix):]
        return self.error

    def located(self) -> str:
        """``file:line: problem`` (the location once, as compilers write it)."""
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        return f"{where}: {self.reason}"


@dataclass
class Dataset:
    """Records of one dataset with its score scale, threshold and split definition.

    ``report`` holds counts about the label files (rows read, problems by status,
    AVA test-list ids without a row, Photo.net count mismatches, ...) and ``notes``
    human sentences about optional files that were missing or defaults that were
    adapted; both are plain data, see docs/datasets.md.
    """
    name: str                     # 'ava' | 'photonet' | 'folder'
    root: Path
    scores: tuple[float, ...]     # score value of each bucket (AVA 1..10, Photo.net 1..7)
    threshold: float              # high/low cut on the mean score
    records: list[Record] = field(repr=False)
    problems: list[Problem] = field(repr=False)
    split_spec: dict = field(repr=False)
    categories: dict[str, frozenset[str]] = field(default_factory=dict, repr=False)
    report: dict = field(default_factory=dict, repr=False)
    notes: list[str] = field(default_factory=list, repr=False)
    # folder CSV: which column holds the votes of which bucket, in bucket order:
    # [{"column": "c1", "bucket": 1, "score": 1.0}, ...]; None for AVA and Photo.net (fixed formats)
    score_columns: list[dict] | None = field(default=None, repr=False)

    def split(self, name: str) -> list[Record]:
        """Records of split ``name``: 'train', 'val', 'test' or 'all' (file order)."""
        if name == "all":
            return list(self.records)
        if name not in SPLITS:
            raise OptionError(f"unknown split {name!r}; allowed: "
                              + ", ".join(repr(s) for s in _SPLIT_CHOICES), param="split")
        return [r for r in self.records if r.split == name]

    def __repr__(self) -> str:
        sizes = {s: 0 for s in SPLITS}
        for r in self.records:
            sizes[r.split] = sizes.get(r.split, 0) + 1
        counts = ", ".join(f"{k}={v}" for k, v in sizes.items())
        return (f"Dataset(name={self.name!r}, root={str(self.root)!r}, N={len(self.scores)}, "
                f"threshold={self.threshold}, {counts}, problems={len(self.problems)})")


# ------------------------------------------------------------------ shared helpers

class _ProblemLog:
    """Collects the problems of one label file; raises instead when strict."""

    def __init__(self, source: Path, strict: bool):
        self.source = str(source)
        self.strict = strict
        self.problems: list[Problem] = []

    def text(self, line: int | None, reason: str) -> str:
        where = self.source if line is None else f"{self.source} line {line}"
        return f"{where}: {reason}"

    def bad_row(self, line: int | None, reason: str, image_id: str | None = None,
                status: str = _STATUS_BAD, path: str | None = None) -> None:
        """A malformed row: LabelError when strict, else a Problem (``path``: the image
        path cell as written, when the row has one)."""
        message = self.text(line, reason)
        if self.strict:
            raise LabelError(message, source=self.source, line=line, image_id=image_id,
                             status=status)
        self.problems.append(Problem(image_id, self.source, line, status, message, path=path))

    def unusable_row(self, line: int, reason: str, image_id: str, status: str) -> None:
        """A well-formed row the dataset itself marks unusable: always a Problem."""
        self.problems.append(Problem(image_id, self.source, line, status,
                                     self.text(line, reason)))

    def file_error(self, reason: str, line: int | None = None, param: str | None = None) -> LabelError:
        return LabelError(self.text(line, reason), source=self.source, line=line, param=param)


def _unsafe_id_reason(image_id: str) -> str | None:
    """Why an id cannot name an image file (it would escape the image folder)."""
    if "/" in image_id or "\\" in image_id or image_id in (".", ".."):
        return (f"image id {image_id!r} contains a path separator or is '.'/'..'; "
                "ids name image files, use a plain id")
    return None


def _describe_bad_counts(tokens: Sequence[str]) -> str:
    """Explain which vote count (bucket 1..N) is not a non-negative integer (slow path)."""
    for bucket, token in enumerate(tokens, 1):
        try:
            value = int(token)
        except ValueError:
            return (f"vote count for score {bucket} is {token!r}, not a whole number; "
                    f"{_FIX_ROW}")
        if value < 0:
            return (f"vote count for score {bucket} is {value}; counts must be >= 0; "
                    f"{_FIX_ROW}")
    return f"vote counts {' '.join(tokens)} are not valid; {_FIX_ROW}"


def _no_votes_reason(n_buckets: int) -> str:
    return (f"all {n_buckets} vote counts are 0: no score distribution to learn from; "
            f"{_FIX_ROW}")


def _duplicate_reason(image_id: str, first_line: int, line: int) -> str:
    return (f"image id {image_id} already appeared on line {first_line}; keeping line "
            f"{first_line} and ignoring line {line}; delete one of the two rows")


def _seeded_rank(ids: Iterable[str], seed: int) -> list[str]:
    """``ids`` ordered by the 64-bit BLAKE2b hash of ``f"{seed}:{id}"`` (ties by that
    string): a seeded shuffle that depends only on the set of ids, never on their
    order in a file."""
    def key(image_id: str) -> bytes:
        text = f"{seed}:{image_id}".encode()
        return hashlib.blake2b(text, digest_size=8).digest() + text
    return sorted(ids, key=key)


_RANK_RULE = "ids ranked by blake2b(f'{seed}:{id}', digest_size=8)"


def _ids_sha256(ids: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


def _resolve_size(size: int | float, n: int, name: str) -> int:
    """A split size given as a count (int) or a fraction in [0, 1) of ``n`` rows."""
    if isinstance(size, bool) or not isinstance(size, (numbers.Integral, numbers.Real)):
        raise OptionTypeError(f"{name} must be a count (int) or a fraction in [0, 1) (float), "
                              f"got {size!r}", param=name)
    if isinstance(size, numbers.Integral):
        count = int(size)
        if not 0 <= count <= n:
            raise OptionError(f"{name}={count} is not possible with {n:,} rows to split; "
                              f"use a count in 0..{n} or a fraction such as 0.05", param=name)
        return count
    fraction = float(size)
    if not 0.0 <= fraction < 1.0:
        raise OptionError(f"{name}={size!r}: a float is a fraction in [0, 1); "
                          "pass an int for a count", param=name)
    return int(round(fraction * n))


def _threshold(value: float | None, default: float, scores: Sequence[float]) -> float:
    """The high/low cut: ``value`` when given (a finite number inside the score range),
    else ``default``."""
    if value is None:
        return float(default)
    try:
        cut = float(value)
    except (TypeError, ValueError):
        cut = float("nan")
    if not scores[0] <= cut <= scores[-1]:   # also rejects NaN and non-numbers
        raise OptionError(f"threshold={value!r} is outside the score range "
                          f"{scores[0]:g}..{scores[-1]:g}; every image would fall on one side", param="threshold")
    return cut


def _plain_size(size: int | float | None) -> int | float | None:
    """A requested split size as a plain Python number for ``split_spec``."""
    if size is None or isinstance(size, bool):
        return size
    return int(size) if isinstance(size, numbers.Integral) else float(size)


def _split_digests(records: Sequence[Record]) -> dict:
    ids: dict[str, list[str]] = {s: [] for s in SPLITS}
    for r in records:
        ids[r.split].append(r.image_id)
    spec = {f"n_{s}": len(ids[s]) for s in SPLITS}
    spec.update({f"{s}_ids_sha256": _ids_sha256(ids[s]) for s in SPLITS})
    return spec


class _ImagePath:
    """Maps an image id to its file through a pattern such as ``images/{id}.jpg``.

    A relative pattern is resolved against ``base``. The pattern is compiled once
    into string pieces so that building 255k paths costs one join each.
    """
    FIELDS = ("id", "image_id")

    def __init__(self, pattern: str, base: Path):
        _check_pattern(pattern)
        marker = "\0"
        path = Path(pattern.format(id=marker, image_id=marker)).expanduser()
        if not path.is_absolute():
            path = base / path
        self.pattern = pattern
        # Ids never hold separators (see _unsafe_id_reason), so when only the file name
        # holds the id, ``folder / name`` is exact and cheaper than parsing a full path.
        self.folder = path.parent if marker not in str(path.parent) else None
        self.pieces = (path.name if self.folder is not None else str(path)).split(marker)

    def __call__(self, image_id: str) -> Path:
        if self.folder is not None:
            return self.folder / image_id.join(self.pieces)
        return Path(image_id.join(self.pieces))


def _check_pattern(pattern: str) -> None:
    try:
        parsed = list(string.Formatter().parse(pattern))
    except ValueError as exc:
        raise OptionError(f"image_pattern {pattern!r} is not a valid pattern ({exc}); "
                          "write it like 'images/{id}.jpg'", param="image_pattern") from None
    names = [(name, spec, conv) for _, name, spec, conv in parsed if name is not None]
    bad = [n for n, spec, conv in names if n not in _ImagePath.FIELDS or spec or conv]
    if not names or bad:
        raise OptionError(f"image_pattern {pattern!r} must contain the id as {{id}} (or "
                          f"{{image_id}}) and no other field, e.g. 'images/{{id}}.jpg'", param="image_pattern")


def _pattern_base(pattern: str, candidates: Sequence[Path]) -> Path:
    """First candidate folder holding the pattern's image folder ('images' in
    'images/{id}.jpg'), else the first candidate."""
    static = pattern.split("{", 1)[0]
    folder = Path(static) if static.endswith(("/", os.sep)) else Path(static).parent
    if folder.is_absolute() or folder == Path("."):
        return candidates[0]
    for base in candidates:
        if (base / folder).is_dir():
            return base
    return candidates[0]


def _separate_missing_images(records: list[Record], source: str
                             ) -> tuple[list[Record], list[Problem]]:
    """Records whose image file exists, and a 'missing' Problem for each other one.

    Each folder is listed once (faster than one stat per image on 255k files);
    names not in the listing of an existing folder get a real stat, for
    case-insensitive file systems.
    """
    listings: dict[str, frozenset[str] | None] = {}
    present, missing = [], []
    for record in records:
        folder, name = os.path.split(str(record.path))
        if folder not in listings:
            listings[folder] = _file_names(folder)
        names = listings[folder]
        if names is not None and (name in names or record.path.is_file()):
            present.append(record)
        else:
            where = "" if record.line is None else f" line {record.line}"
            missing.append(Problem(
                record.image_id, source, record.line, _STATUS_MISSING,
                f"image file {record.path} not found (id {record.image_id}, {source}{where}); "
                "add the file, fix image_pattern, or remove the row", record.split))
    return present, missing


def _file_names(folder: str) -> frozenset[str] | None:
    """Names of the files in ``folder``; None when it cannot be listed (absent)."""
    try:
        with os.scandir(folder or ".") as entries:
            return frozenset(e.name for e in entries if e.is_file())
    except OSError:
        return None


def _problem_counts(problems: Iterable[Problem]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in problems:
        counts[p.status] = counts.get(p.status, 0) + 1
    return dict(sorted(counts.items()))


def _nothing_usable(log: _ProblemLog, n_rows: int, what: str) -> LabelError:
    first = "; ".join(p.error for p in log.problems[:3])
    return log.file_error(f"none of its {n_rows:,} {what} is usable, nothing to load. "
                          f"First problems: {first}")


def _finish(dataset: Dataset, check_images: bool, source: Path) -> Dataset:
    """Check image files when asked, fill the report's final counts, log the notes."""
    if check_images:
        dataset.records, missing = _separate_missing_images(dataset.records, str(source))
        dataset.problems.extend(missing)
        if missing:
            dataset.notes.append(f"{len(missing):,} image files are missing (status "
                                 f"'missing' in problems), e.g. {missing[0].error}")
    dataset.report["records"] = len(dataset.records)
    dataset.report["splits"] = {s: 0 for s in SPLITS}
    for r in dataset.records:
        dataset.report["splits"][r.split] += 1
    dataset.report["problems"] = _problem_counts(dataset.problems)
    dataset.report["images_checked"] = bool(check_images)
    small_val = _small_val_note(dataset.report["splits"]["val"])
    if small_val:
        dataset.notes.append(small_val)
    for note in dataset.notes:
        logger.info("%s: %s", dataset.name, note)
    return dataset


def _small_val_note(n_val: int) -> str | None:
    """A warning when the validation split is too small to mean anything (None otherwise)."""
    if n_val >= MIN_VAL_IMAGES:
        return None
    how = ("raise it with --val-size: a count such as --val-size 30, or a fraction "
           "of the non-test rows such as --val-size 0.2")
    if n_val == 0:
        return (f"the validation split is empty: stage 1 and stage 2 need validation images to "
                f"stop early and to report their scores; {how}")
    return (f"the validation split has only {n_val} image(s), fewer than {MIN_VAL_IMAGES}: "
            f"validation loss, accuracy and SRCC on so few images are noise; {how}")


def _fill_problem_paths(problems: Iterable[Problem], path_of: Callable[[Problem], Path | None]
                        ) -> list[Problem]:
    """``problems`` with ``path`` set to the image file each row names, where that is known."""
    filled = []
    for problem in problems:
        path = path_of(problem)
        filled.append(replace(problem, path=str(path)) if path is not None else problem)
    return filled


def _id_path(image_path: "_ImagePath") -> Callable[[Problem], Path | None]:
    def path_of(problem: Problem) -> Path | None:
        if problem.path is not None or not problem.image_id or _unsafe_id_reason(problem.image_id):
            return None if problem.path is None else Path(problem.path)
        return image_path(problem.image_id)
    return path_of


def problem_lines(problems: Sequence[Problem], limit: int = 5) -> list[str]:
    """The first ``limit`` problems as ``file:line: problem`` lines, for a console."""
    return [p.located() for p in problems[:limit]]


def check_images_resolve(dataset: Dataset, records: Sequence[Record] | None = None) -> None:
    """Raise :class:`LabelError` when not one image file of ``records`` (default: all) exists.

    Stops at the first file found, so it costs one ``stat`` on a good dataset. The
    message names an example path as it was resolved and the rule that resolved it:
    the mistake behind it is nearly always a wrong base folder, not missing photos.
    """
    records = dataset.records if records is None else list(records)
    if not records:
        return
    folders: dict[str, bool] = {}
    for record in records:
        folder = os.path.dirname(str(record.path))
        if folder not in folders:
            folders[folder] = os.path.isdir(folder or ".")
        if folders[folder] and record.path.is_file():
            return
    first = records[0]
    label_file = dataset.report.get("label_file", str(dataset.root))
    images = dataset.report.get("images", {})
    where = f"line {first.line}" if first.line is not None else f"id {first.image_id}"
    head = (f"none of the {len(records):,} image files named by {label_file} exists: e.g. {where} "
            f"({first.image_id!r}) resolves to {first.path}, which is not there. ")
    if dataset.name != "folder":
        raise LabelError(head + f"Images are looked for as {images.get('pattern')!r} under "
                         f"{images.get('base')}; put the images there, as the dataset is "
                         "distributed", source=label_file, line=first.line,
                         image_id=first.image_id, status=_STATUS_MISSING)
    base, given = images.get("base"), images.get("image_root_given")
    if images.get("column") is not None and given:
        rule = f"Relative image paths in the CSV are relative to image_root ({base})"
        advice = ("check image_root: pass the folder the CSV's paths are relative to, or write "
                  "absolute paths in the CSV")
    elif images.get("column") is not None:
        rule = (f"Relative image paths in the CSV are relative to the CSV's folder ({base}), "
                "not to the working folder")
        advice = ("pass image_root with the folder the CSV's paths are relative to, or write "
                  "absolute paths in the CSV")
        written = (first.path.relative_to(base)
                   if base is not None and first.path.is_relative_to(base) else None)
        if written is not None and (Path.cwd() / written).is_file():
            advice = (f"{written} is there relative to the working folder: pass image_root "
                      f"{Path.cwd()}, or write the paths relative to the CSV's folder")
    else:
        rule = (f"Image files are image_pattern {images.get('pattern')!r} (the id in place of "
                f"{{id}}) in {base}" + (" (image_root)" if given else " (the CSV's folder)"))
        advice = "pass image_root with the folder that holds the images, or add a path column"
    raise LabelError(f"{head}{rule}; {advice}", source=label_file, line=first.line,
                     image_id=first.image_id, status=_STATUS_MISSING, param="image_root")


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a loader builds ~10^5 small objects.

    They hold no reference cycles, but each allocation burst triggers collection
    passes over everything alive: on the full AVA that doubles the load time.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _read_text_lines(path: Path) -> Iterable[tuple[int, str]]:
    """(1-based line number, line) for a text label file; bad bytes become U+FFFD so
    they surface as a malformed row with its line number instead of a decode crash."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        yield from enumerate(handle, 1)


# ----------------------------------------------------------------------------- AVA

class _AvaRow(NamedTuple):
    image_id: str
    votes: tuple[int, ...]
    tag_ids: tuple[int, ...]
    challenge: int
    line: int


def _find_ava_label_file(root: Path) -> Path:
    """AVA.txt in ``root`` or ``root/AVA_dataset``, or ``root`` itself when it is a file."""
    if root.is_file():
        return root
    candidates = [root, root / AVA_SUBFOLDER]
    for folder in candidates:
        if (folder / AVA_LABEL_FILE).is_file():
            return folder / AVA_LABEL_FILE
    looked = ", ".join(str(c / AVA_LABEL_FILE) for c in candidates)
    raise FileNotFoundError(
        f"AVA label file not found: looked for {looked}. Pass the folder that holds "
        f"{AVA_LABEL_FILE} (or its parent with an {AVA_SUBFOLDER}/ folder), as distributed "
        "with the AVA dataset, or the label file itself")


def _parse_ava_row(parts: list[str], line: int, log: _ProblemLog) -> _AvaRow | None:
    """One AVA.txt row (15 columns, README of the AVA release), or None if malformed."""
    image_id = parts[1] if len(parts) > 1 else None
    if len(parts) != _AVA_COLUMNS:
        log.bad_row(line, f"expected {_AVA_COLUMNS} space-separated columns ({_AVA_HEADER}), "
                          f"found {len(parts)}; {_FIX_ROW}", image_id)
        return None
    try:
        votes = tuple(map(int, parts[2:12]))
    except ValueError:
        log.bad_row(line, _describe_bad_counts(parts[2:12]), image_id)
        return None
    try:
        tag_ids = (int(parts[12]), int(parts[13]))
        challenge = int(parts[14])
    except ValueError:
        log.bad_row(line, f"tag ids and challenge id must be whole numbers, found "
                          f"{' '.join(parts[12:15])!r}; {_FIX_ROW}", image_id)
        return None
    if min(votes) < 0:
        log.bad_row(line, _describe_bad_counts(parts[2:12]), image_id)
        return None
    if not any(votes):
        log.bad_row(line, _no_votes_reason(len(votes)), image_id)
        return None
    unsafe = _unsafe_id_reason(image_id)
    if unsafe:
        log.bad_row(line, unsafe, image_id)
        return None
    return _AvaRow(image_id, votes, tag_ids, challenge, line)


def _read_ava_rows(path: Path, log: _ProblemLog) -> tuple[list[_AvaRow], int]:
    """Usable rows of AVA.txt in file order (first of duplicate ids) and the row count."""
    rows: list[_AvaRow] = []
    first_line: dict[str, int] = {}
    n_rows = 0
    for line, text in _read_text_lines(path):
        parts = text.split()
        if not parts:
            continue
        n_rows += 1
        row = _parse_ava_row(parts, line, log)
        if row is None:
            continue
        seen = first_line.setdefault(row.image_id, line)
        if seen != line:
            log.bad_row(line, _duplicate_reason(row.image_id, seen, line), row.image_id,
                        _STATUS_DUPLICATE)
            continue
        rows.append(row)
    if n_rows == 0:
        raise log.file_error(f"{AVA_LABEL_FILE} is empty: no rows to use. Expected one row per "
                             f"image with {_AVA_COLUMNS} columns ({_AVA_HEADER})")
    if not rows:
        raise _nothing_usable(log, n_rows, "rows")
    return rows, n_rows


def _read_id_list(path: Path) -> list[str]:
    """Ids of a ``.jpgl`` list, one per line, blank lines ignored, order kept."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        return [token for token in (line.strip() for line in handle) if token]


def _read_id_names(path: Path) -> dict[int, str]:
    """``<id> <name>`` lines (AVA tags.txt, challenges.txt); names may contain spaces."""
    names: dict[int, str] = {}
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line_no, line in enumerate(handle, 1):
            parts = line.strip().split(maxsplit=1)
            if not parts:
                continue
            try:
                names[int(parts[0])] = parts[1] if len(parts) > 1 else parts[0]
            except ValueError:
                raise LabelError(f"{path} line {line_no}: expected '<id> <name>' with a whole "
                                 f"number id, found {line.strip()!r}", source=str(path),
                                 line=line_no) from None
    return names


def _ava_tag_names(label_dir: Path, notes: list[str]) -> dict[int, str]:
    path = label_dir / "tags.txt"
    if path.is_file():
        return _read_id_names(path)
    notes.append(f"{path} not found: tags are given as their numeric ids")
    return {}


def _ava_test_ids(list_path: Path, explicit: bool, usable: set[str], notes: list[str],
                  report: dict) -> tuple[set[str], set[str]] | tuple[None, None]:
    """(ids on the test list, test ids = list ∩ usable AVA rows); (None, None) when
    there is no test list."""
    if not list_path.is_file():
        if explicit:
            raise FileNotFoundError(f"test list {list_path} not found; pass an existing "
                                    "'.jpgl' file (one image id per line) or leave test_list "
                                    f"unset for {AVA_LIST_DIR}/{AVA_TEST_LIST}")
        notes.append(f"test list {list_path} not found: no test split, every row is train "
                     "or val. Put the official aesthetics_image_lists/ next to AVA.txt for "
                     "the standard split")
        return None, None
    listed = set(_read_id_list(list_path))
    test = listed & usable
    report["test_list"] = str(list_path)
    report["test_list_ids"] = len(listed)
    report["test_list_absent"] = len(listed) - len(test)
    if len(listed) > len(test):
        notes.append(f"{len(listed) - len(test):,} of the {len(listed):,} ids in "
                     f"{list_path.name} have no usable row in AVA.txt and are not in the "
                     "test split")
    return listed, test


def _ava_categories(list_dir: Path, usable: set[str], notes: list[str], report: dict
                    ) -> dict[str, frozenset[str]]:
    """Category test sets (paper Table IV): ids of ``{category}_test.jpgl`` with a row."""
    categories: dict[str, frozenset[str]] = {}
    absent, missing_files = {}, []
    for name in AVA_CATEGORIES:
        path = list_dir / f"{name}_test.jpgl"
        if not path.is_file():
            missing_files.append(path.name)
            continue
        listed = set(_read_id_list(path))
        categories[name] = frozenset(listed & usable)
        absent[name] = len(listed) - len(categories[name])
    if missing_files:
        notes.append(f"category test lists not found in {list_dir}: "
                     f"{', '.join(missing_files)}; Record.category is None for those")
    report["category_ids"] = {k: len(v) for k, v in categories.items()}
    report["category_absent"] = absent
    return categories


def _category_of(categories: dict[str, frozenset[str]]) -> dict[str, str]:
    """id -> its category; an id on several lists gets the first in alphabetical order."""
    category_of: dict[str, str] = {}
    for name in sorted(categories):
        for image_id in categories[name]:
            category_of.setdefault(image_id, name)
    return category_of


def _ava_splits(rows: list[_AvaRow], test_ids: set[str] | None, val_size: int | float,
                seed: int) -> dict[str, str]:
    """id -> split: test from the list, val a seeded-hash sample of the rest, train."""
    test_ids = test_ids or set()
    train_ids = [r.image_id for r in rows if r.image_id not in test_ids]
    n_val = _resolve_size(val_size, len(train_ids), "val_size")
    split_of = dict.fromkeys(train_ids, "train")
    split_of.update(dict.fromkeys(_seeded_rank(train_ids, seed)[:n_val], "val"))
    split_of.update(dict.fromkeys(test_ids, "test"))
    return split_of


class _AvaTagNames:
    """Tag id pair -> tuple of names (0 = no tag); one shared tuple per distinct pair."""

    def __init__(self, names: dict[int, str]):
        self.names = names
        self.unknown: set[int] = set()
        self._cache: dict[tuple[int, ...], tuple[str, ...]] = {}

    def __call__(self, tag_ids: tuple[int, ...]) -> tuple[str, ...]:
        tags = self._cache.get(tag_ids)
        if tags is None:
            self.unknown.update(t for t in tag_ids if t and t not in self.names)
            tags = self._cache[tag_ids] = tuple(self.names.get(t, str(t)) for t in tag_ids if t)
        return tags


def _ava_records(rows: list[_AvaRow], split_of: dict[str, str],
                 categories: dict[str, frozenset[str]], image_path: _ImagePath,
                 tag_names: dict[int, str], notes: list[str], report: dict) -> list[Record]:
    """Records in file order; notes unknown tag ids and category ids outside test."""
    category_of = _category_of(categories)
    tags_of = _AvaTagNames(tag_names)
    records = [Record(r.image_id, image_path(r.image_id), r.votes, split_of[r.image_id],
                      tags_of(r.tag_ids), category_of.get(r.image_id), r.challenge, r.line)
               for r in rows]
    report["unknown_tag_ids"] = sorted(tags_of.unknown) if tag_names else []
    if report["unknown_tag_ids"]:
        notes.append(f"tag ids not in tags.txt, kept as numbers: {report['unknown_tag_ids']}")
    outside_test = sum(1 for i in category_of if split_of[i] != "test")
    report["category_ids_outside_test"] = outside_test
    if outside_test:
        notes.append(f"{outside_test:,} ids of the category test lists are not in the test "
                     "split: a category evaluation would include training images")
    return records


@_gc_paused()
def load_ava(root: str | os.PathLike, *, val_size: int | float = DEFAULT_VAL_SIZE,
             seed: int = 0, strict: bool = False, check_images: bool = False,
             test_list: str | os.PathLike | None = None,
             image_pattern: str = DEFAULT_IMAGE_PATTERN,
             threshold: float | None = None) -> Dataset:
    """Read the AVA dataset as distributed (``AVA.txt``, ``tags.txt``, image lists).

    ``root`` holds ``AVA.txt`` or an ``AVA_dataset/`` folder that does, or is the label
    file itself (any name; lists and images are looked for beside it). Test = ids of
    ``generic_test.jpgl`` (or ``test_list``) with a row in AVA.txt; val = ``val_size``
    (count, or fraction of the remaining rows) chosen by a hash of ``seed`` and the id;
    train = the rest. Scores 1..10, threshold 5 (paper, sections III and IV) unless
    ``threshold`` is given.
    ``image_pattern`` is relative to the folder holding AVA.txt, or to ``root`` when
    only that one has the image folder. See the module docstring for strict/lenient.
    """
    root = Path(root).expanduser().absolute()
    label_path = _find_ava_label_file(root)
    label_dir = label_path.parent
    root = root.parent if root == label_path else root
    log = _ProblemLog(label_path, strict)
    notes: list[str] = []
    rows, n_rows = _read_ava_rows(label_path, log)
    usable = {r.image_id for r in rows}
    report: dict = {"label_file": str(label_path), "rows": n_rows, "usable_rows": len(rows)}

    list_dir = label_dir / AVA_LIST_DIR
    list_path = (Path(test_list).expanduser().absolute() if test_list is not None
                 else list_dir / AVA_TEST_LIST)
    listed_test, test_ids = _ava_test_ids(list_path, test_list is not None, usable, notes,
                                          report)
    categories = _ava_categories(list_dir, usable, notes, report)
    split_of = _ava_splits(rows, test_ids, val_size, seed)
    image_base = _pattern_base(image_pattern, [label_dir, root])
    image_path = _ImagePath(image_pattern, image_base)
    report["images"] = {"base": str(image_base), "pattern": image_pattern}
    records = _ava_records(rows, split_of, categories, image_path,
                           _ava_tag_names(label_dir, notes), notes, report)

    problems = [replace(p, split="test") if listed_test and p.image_id in listed_test else p
                for p in _fill_problem_paths(log.problems, _id_path(image_path))]
    has_list = test_ids is not None
    spec = {"source": "ava", "kind": "ava-test-list" if has_list else "ava-no-test-list",
            "test_list": list_path.name if has_list else None,
            "val_size": _plain_size(val_size), "seed": int(seed),
            "rank_rule": _RANK_RULE + ": the first val_size non-test ids are val",
            **_split_digests(records)}
    dataset = Dataset("ava", root, AVA_SCORES, _threshold(threshold, AVA_THRESHOLD, AVA_SCORES),
                      records, problems, spec, categories, report, notes)
    return _finish(dataset, check_images, label_path)


# ----------------------------------------------------------------------- Photo.net

def _find_photonet_file(root_or_file: Path) -> Path:
    if root_or_file.is_file():
        return root_or_file
    path = root_or_file / PHOTONET_LABEL_FILE
    if path.is_file():
        return path
    raise FileNotFoundError(
        f"Photo.net label file not found: looked for {path} "
        f"({'folder exists' if root_or_file.is_dir() else 'no such folder'}). Pass the "
        f"label file itself or the folder that holds {PHOTONET_LABEL_FILE}")


def _parse_photonet_row(parts: list[str], line: int, log: _ProblemLog
                        ) -> tuple[str, tuple[int, ...], int] | None:
    """(photo id, 7 counts, n_ratings) of a row, or None when it is malformed or has no
    distribution."""
    image_id = parts[1] if len(parts) > 1 else None
    if len(parts) != _PHOTONET_COLUMNS:
        log.bad_row(line, f"expected {_PHOTONET_COLUMNS} space-separated columns "
                          f"({_PHOTONET_HEADER}), found {len(parts)}; {_FIX_ROW}", image_id)
        return None
    count_tokens = parts[5:12]
    if all(t == "-1" for t in count_tokens):
        log.unusable_row(line, f"photo {image_id} has no rating distribution (counts are -1); "
                               "it cannot be used for distribution training", image_id,
                         _STATUS_NO_DISTRIBUTION)
        return None
    try:
        votes = tuple(map(int, count_tokens))
    except ValueError:
        log.bad_row(line, _describe_bad_counts(count_tokens), image_id)
        return None
    try:
        n_ratings = int(parts[2])
    except ValueError:
        log.bad_row(line, f"n_ratings is {parts[2]!r}, not a whole number; {_FIX_ROW}", image_id)
        return None
    if min(votes) < 0:
        log.bad_row(line, _describe_bad_counts(count_tokens), image_id)
        return None
    if not any(votes):
        log.bad_row(line, _no_votes_reason(len(votes)), image_id)
        return None
    unsafe = _unsafe_id_reason(image_id)
    if unsafe:
        log.bad_row(line, unsafe, image_id)
        return None
    return image_id, votes, n_ratings


def _count_mismatch(report: dict, line: int, image_id: str, total: int, n_ratings: int
                    ) -> None:
    report["count_mismatch"] += 1
    if len(report["count_mismatch_examples"]) < 5:
        report["count_mismatch_examples"].append(
            f"line {line}: photo {image_id} counts sum to {total}, n_ratings says {n_ratings}")


def _read_photonet_rows(path: Path, log: _ProblemLog, report: dict
                        ) -> list[tuple[str, tuple[int, ...], int]]:
    """Usable (id, votes, line) in file order (first of duplicate ids); counts the usable
    rows whose counts do not sum to n_ratings into ``report``."""
    rows = []
    first_line: dict[str, int] = {}
    n_rows = 0
    for line, text in _read_text_lines(path):
        parts = text.split()
        if not parts:
            continue
        n_rows += 1
        parsed = _parse_photonet_row(parts, line, log)
        if parsed is None:
            continue
        image_id, votes, n_ratings = parsed
        seen = first_line.setdefault(image_id, line)
        if seen != line:
            log.bad_row(line, _duplicate_reason(image_id, seen, line), image_id,
                        _STATUS_DUPLICATE)
            continue
        if sum(votes) != n_ratings:
            _count_mismatch(report, line, image_id, sum(votes), n_ratings)
        rows.append((image_id, votes, line))
    report["rows"] = n_rows
    if n_rows == 0:
        raise log.file_error(f"the file is empty: no rows to use. Expected one row per photo "
                             f"with {_PHOTONET_COLUMNS} columns ({_PHOTONET_HEADER})")
    if not rows:
        raise _nothing_usable(log, n_rows, "rows")
    return rows


def _photonet_sizes(n: int, train_size: int | float | None, val_size: int | float | None,
                    notes: list[str]) -> tuple[int, int]:
    """(n_train, n_val). Defaults are the paper's 15,000 / 1,000 of 17,200 usable images;
    with fewer usable rows they keep the paper's proportions."""
    scaled = n < PHOTONET_PAPER_USABLE

    def default(paper: int) -> int:
        return int(round(n * paper / PHOTONET_PAPER_USABLE)) if scaled else paper

    n_train = default(PHOTONET_TRAIN_SIZE) if train_size is None else _resolve_size(
        train_size, n, "train_size")
    n_val = default(PHOTONET_VAL_SIZE) if val_size is None else _resolve_size(
        val_size, n, "val_size")
    if scaled and (train_size is None or val_size is None):
        notes.append(f"only {n:,} usable rows (the paper had {PHOTONET_PAPER_USABLE:,}): "
                     "default split sizes scaled to the paper's 15,000 : 1,000 : 1,200")
    if n_train + n_val > n:
        raise OptionError(f"the train and validation splits ({n_train:,} + {n_val:,} rows) need more than "
                          f"the {n:,} usable rows; lower val_size"
                          + (" or train_size" if train_size is not None else ""), param="val_size")
    return n_train, n_val


@_gc_paused()
def load_photonet(root_or_file: str | os.PathLike, *, train_size: int | float | None = None,
                  val_size: int | float | None = None, seed: int = 0, strict: bool = False,
                  check_images: bool = False, image_pattern: str = DEFAULT_IMAGE_PATTERN,
                  threshold: float | None = None) -> Dataset:
    """Read the Photo.net dataset (``photonet_dataset.txt``, scores 1..7).

    Rows whose counts are -1 have no distribution: reported as 'no_distribution'
    problems (never an error). Counts are the distribution even when they do not sum
    to ``n_ratings``; ``report['count_mismatch']`` says how many rows disagree.
    Split (section IV-A): a seeded-hash ranking of the usable ids, val = the first
    ``val_size`` (default 1,000), train = the next ``train_size`` (default 15,000),
    test = the rest; sizes are counts or fractions, defaults scale down for files with
    fewer than 17,200 usable rows. ``image_pattern`` is relative to the label file's folder.
    Threshold 5 (docs/datasets.md) unless ``threshold`` is given.
    """
    label_path = _find_photonet_file(Path(root_or_file).expanduser().absolute())
    root = label_path.parent
    log = _ProblemLog(label_path, strict)
    notes: list[str] = []
    report: dict = {"label_file": str(label_path), "count_mismatch": 0,
                    "count_mismatch_examples": []}
    rows = _read_photonet_rows(label_path, log, report)
    report["usable_rows"] = len(rows)
    report["no_distribution"] = sum(p.status == _STATUS_NO_DISTRIBUTION for p in log.problems)
    if report["count_mismatch"]:
        notes.append(f"{report['count_mismatch']:,} of {len(rows):,} usable rows have counts "
                     "that do not sum to n_ratings; the counts are used")

    n_train, n_val = _photonet_sizes(len(rows), train_size, val_size, notes)
    ranked = _seeded_rank([r[0] for r in rows], seed)
    split_of = dict.fromkeys(ranked[n_val + n_train:], "test")
    split_of.update(dict.fromkeys(ranked[n_val:n_val + n_train], "train"))
    split_of.update(dict.fromkeys(ranked[:n_val], "val"))

    image_path = _ImagePath(image_pattern, root)
    report["images"] = {"base": str(root), "pattern": image_pattern}
    records = [Record(image_id, image_path(image_id), votes, split_of[image_id], line=line)
               for image_id, votes, line in rows]
    problems = _fill_problem_paths(log.problems, _id_path(image_path))
    spec = {"source": "photonet", "kind": "photonet-seeded-hash",
            "train_size": _plain_size(train_size), "val_size": _plain_size(val_size),
            "seed": int(seed),
            "rank_rule": _RANK_RULE + ": val, then train, then test",
            **_split_digests(records)}
    cut = _threshold(threshold, PHOTONET_THRESHOLD, PHOTONET_SCORES)
    dataset = Dataset("photonet", root, PHOTONET_SCORES, cut, records, problems, spec, {},
                      report, notes)
    return _finish(dataset, check_images, label_path)


# -------------------------------------------------------------------- folder + CSV

_PATH_COLUMNS = ("path", "image_path", "file", "filename", "file_name", "image", "img")
_ID_COLUMNS = ("image_id", "id", "photo_id")
_SPLIT_COLUMNS = ("split", "subset", "set", "partition")
_TAGS_COLUMNS = ("tags", "tag")
_CATEGORY_COLUMNS = ("category",)
_SPLIT_SYNONYMS = {"train": "train", "training": "train", "val": "val", "valid": "val",
                   "validation": "val", "dev": "val", "test": "test", "testing": "test"}
_NUMBERED_COUNT = re.compile(r"^(c|count|counts|votes|n)([_\- ]?)(\d+)$", re.IGNORECASE)
_SCORE_NAMED_COUNT = re.compile(r"^(?:score[_\- ]?)?(\d+(?:\.\d+)?)$", re.IGNORECASE)
_TAG_SEPARATORS = re.compile(r"[|;]")
_TYPO_LETTERS = "OoIl"
_TYPO_DIGITS = str.maketrans(_TYPO_LETTERS, "0011")
_TYPO_NUMBER = re.compile(r"^(?P<prefix>.*?)(?P<number>[0-9][0-9OoIl.]*)$")
_DELIMITER_NAMES = {",": "commas", ";": "semicolons", "\t": "tabs", "|": "'|'"}
COUNT_COLUMN_FORMS = (
    "numbered buckets c1..cN, count_1..count_N, count1..countN, votes_1..votes_N, n1..nN "
    "(scores default to 1..N)",
    "score names 1..N, score_1..score_N or any increasing numbers such as 0.5, 1, 1.5 "
    "(the names are the scores)")


@dataclass(frozen=True)
class _CsvLayout:
    """Which column holds what in a label CSV (indices into ``header``)."""
    header: tuple[str, ...]
    counts: tuple[int, ...]
    named_scores: tuple[float, ...] | None   # scores implied by score-named columns
    path: int | None
    image_id: int | None
    split: int | None
    tags: int | None
    category: int | None
    delimiter: str = ","

    @property
    def key(self) -> int:
        """The column giving Record.image_id: the id column, else the path column."""
        return self.image_id if self.image_id is not None else self.path

    def names(self, indices: Iterable[int]) -> list[str]:
        return [self.header[i] for i in indices]

    def ignored(self) -> list[str]:
        """Header columns gpf reads as nothing (not counts, image, split, tags or category)."""
        used = set(self.counts) | {i for i in (self.path, self.image_id, self.split, self.tags,
                                               self.category) if i is not None}
        return [h for i, h in enumerate(self.header) if i not in used]


def _find_column(header: Sequence[str], explicit: str | None, candidates: Sequence[str],
                 what: str, log: _ProblemLog, param: str | None = None) -> int | None:
    """Index of the column named ``explicit`` (must exist) or of the first candidate
    (case-insensitive); None when neither is there."""
    lowered = [h.lower() for h in header]
    if explicit is not None:
        if explicit.strip().lower() not in lowered:
            close = difflib.get_close_matches(explicit.strip(), header, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise log.file_error(f"{what} column {explicit!r} not in the header{hint}; columns: "
                                 f"{', '.join(header)}", line=1, param=param)
        return lowered.index(explicit.strip().lower())
    for name in candidates:
        if name in lowered:
            return lowered.index(name)
    return None


def _misspelt_count(name: str) -> str | None:
    """The count column ``name`` was probably meant to be ('c1O' -> 'c10', 'votes_1l' ->
    'votes_11'): a letter O, o, I or l among the digits of a count-column name; else None."""
    if _NUMBERED_COUNT.match(name) or _SCORE_NAMED_COUNT.match(name):
        return None
    match = _TYPO_NUMBER.match(name)
    if not match or not any(ch in match.group("number") for ch in _TYPO_LETTERS):
        return None
    fixed = match.group("prefix") + match.group("number").translate(_TYPO_DIGITS)
    return fixed if _NUMBERED_COUNT.match(fixed) or _SCORE_NAMED_COUNT.match(fixed) else None


def _looks_like_count(name: str) -> bool:
    return bool(_NUMBERED_COUNT.match(name) or _SCORE_NAMED_COUNT.match(name)
                or _misspelt_count(name))


def _span(names: Sequence[str]) -> str:
    """'c1..c9' for a run of three or more names, else the names joined."""
    return f"{names[0]}..{names[-1]}" if len(names) >= 3 else ", ".join(names)


def _header_as_read(header: Sequence[str], delimiter: str) -> str:
    return (f"the header was read as {len(header)} column(s) separated by "
            f"{_DELIMITER_NAMES.get(delimiter, repr(delimiter))}: "
            f"{', '.join(repr(h) for h in header)}")


def _refuse_misspelt(header: Sequence[str], counts: Sequence[int], log: _ProblemLog) -> None:
    """Refuse a column that looks like a count column with a typo next to the real ones:
    reading on would silently drop a bucket of the scale."""
    for index, name in enumerate(header):
        fixed = _misspelt_count(name) if index not in counts else None
        if fixed is None:
            continue
        found = _span([header[i] for i in counts]) if counts else "none"
        raise log.file_error(
            f"column {name!r} looks like a misspelt vote count column ({fixed!r}?); the count "
            f"columns read are {found}, so the scale would silently lose a bucket. Rename it to "
            f"{fixed!r} if it holds votes (count columns must form one scale without gaps, "
            "c1..cN), or pass count_columns to name the count columns yourself",
            line=1, param="count_columns")


def _infer_count_columns(header: Sequence[str], log: _ProblemLog, delimiter: str = ","
                         ) -> tuple[tuple[int, ...], tuple[float, ...] | None]:
    """Count columns in bucket order, found by name (``COUNT_COLUMN_FORMS``), and the
    scores their names imply (score-named columns) or None (numbered buckets). A header
    whose count columns do not form one scale (a gap, a misspelt name, two namings,
    uneven score steps) is refused naming the column."""
    numbered = {i: m for i, h in enumerate(header) if (m := _NUMBERED_COUNT.match(h))}
    named = {i: float(m.group(1)) for i, h in enumerate(header)
             if (m := _SCORE_NAMED_COUNT.match(h))}
    if numbered and named:
        raise log.file_error(f"ambiguous count columns: both {[header[i] for i in numbered]} "
                             f"and {[header[i] for i in named]}; pass count_columns=[...]",
                             line=1, param="count_columns")
    if named:
        if len(set(named.values())) < len(named):
            raise log.file_error(f"count columns {[header[i] for i in named]} name the same "
                                 "score twice; pass count_columns=[...] and scores=[...]",
                                 line=1, param="count_columns")
        order = sorted(named, key=named.get)
        _refuse_misspelt(header, order, log)
        _check_even_scale([header[i] for i in order], [named[i] for i in order], log)
        return tuple(order), tuple(named[i] for i in order)
    if numbered:
        _refuse_misspelt(header, list(numbered), log)
        return _numbered_columns(numbered, header, log), None
    _refuse_misspelt(header, [], log)
    raise log.file_error(f"no vote count columns: {_header_as_read(header, delimiter)}. Name the "
                         f"count columns as {' or as '.join(COUNT_COLUMN_FORMS)}, or pass "
                         f"count_columns=[...]; fields may be separated by commas, semicolons, "
                         "tabs or '|'", line=1, param="count_columns")


def _check_even_scale(names: Sequence[str], scores: Sequence[float], log: _ProblemLog) -> None:
    """Score-named columns must step evenly (1, 2, 3 or 0.5, 1, 1.5): a gap is a missing column."""
    steps = [b - a for a, b in zip(scores, scores[1:])]
    usual = max(steps, key=lambda step: sum(abs(other - step) <= 1e-9 * max(1.0, step) for other in steps),
                default=0.0)
    uneven = [k for k, step in enumerate(steps) if abs(step - usual) > 1e-9 * max(1.0, usual)]
    if uneven:
        at = uneven[0]
        raise log.file_error(f"score-named count columns {', '.join(names)} do not step evenly "
                             f"(from {names[at]} to {names[at + 1]}): is a column missing? Name "
                             "every score of the scale, or name the count columns yourself with "
                             "count_columns (the scores are then 1..N)",
                             line=1, param="count_columns")


def _numbered_columns(matches: dict[int, re.Match], header: Sequence[str], log: _ProblemLog
                      ) -> tuple[int, ...]:
    """Columns c1..cN in bucket order; a gap, a duplicate, a c0 or two namings is an error."""
    by_number: dict[int, int] = {}
    for index, match in matches.items():
        number = int(match.group(3))
        if number in by_number:
            raise log.file_error(f"count columns {header[by_number[number]]!r} and "
                                 f"{header[index]!r} both name bucket {number}", line=1)
        by_number[number] = index
    forms = {m.group(1).lower() + m.group(2) for m in matches.values()}
    found = ", ".join(header[i] for i in sorted(by_number.values()))
    if len(forms) > 1:
        raise log.file_error(f"count columns {found} are named in {len(forms)} ways "
                             f"({', '.join(sorted(f + 'N' for f in forms))}): one scale is named one "
                             "way, e.g. c1..cN; rename them alike or pass count_columns",
                             line=1, param="count_columns")
    prefix = "".join(next(iter(matches.values())).group(1, 2))
    if min(by_number) != 1:
        raise log.file_error(f"count columns must be numbered from 1 ({prefix}1..{prefix}N), "
                             f"found {found}; rename them or pass count_columns and scores",
                             line=1, param="count_columns")
    missing = [f"{prefix}{n}" for n in range(1, max(by_number)) if n not in by_number]
    if missing:
        after = header[by_number[min(n for n in by_number if n > int(missing[0][len(prefix):]))]]
        raise log.file_error(f"count column(s) {', '.join(missing)} missing: buckets must run "
                             f"{prefix}1..{prefix}N without gaps, found {found}. Rename {after!r} "
                             f"if it is bucket {missing[0][len(prefix):]}, add the missing "
                             "column(s), or pass count_columns", line=1, param="count_columns")
    return tuple(by_number[n] for n in sorted(by_number))


def _explicit_count_columns(header: Sequence[str], names: Sequence[str], log: _ProblemLog
                            ) -> tuple[int, ...]:
    names = [str(n).strip() for n in names]
    if not all(names):
        raise OptionError(f"count_columns {list(names)!r} has an empty name; give the count "
                          "columns' names separated by commas, e.g. c1,c2,c3", param="count_columns")
    lowered = [h.lower() for h in header]
    seen: dict[str, str] = {}
    for name in names:
        if name.lower() in seen:
            raise OptionError(f"count_columns names {name!r} twice; each column is one bucket",
                              param="count_columns")
        seen[name.lower()] = name
    absent = [n for n in names if n.lower() not in lowered]
    if absent:
        misspelt = {(_misspelt_count(h) or "").lower(): h for h in header}
        close = ([misspelt[absent[0].lower()]] if absent[0].lower() in misspelt
                 else difflib.get_close_matches(absent[0], header, n=1))
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise log.file_error(f"count column(s) {', '.join(map(repr, absent))} not in the "
                             f"header{hint}; {_header_as_read(header, ',')}", line=1,
                             param="count_columns")
    return tuple(lowered.index(n.lower()) for n in names)


def _refuse_unlisted_counts(layout: "_CsvLayout", given: Sequence[str], log: _ProblemLog) -> None:
    """With count_columns given, a header column that looks like a count but is not listed
    is refused: the header and count_columns disagree about the scale."""
    used = set(layout.counts) | {i for i in (layout.path, layout.image_id, layout.split,
                                             layout.tags, layout.category) if i is not None}
    for index, name in enumerate(layout.header):
        if index not in used and _looks_like_count(name):
            raise log.file_error(
                f"column {name!r} looks like a vote count column but is not in count_columns "
                f"({', '.join(given)}): the header and count_columns disagree about the scale. "
                f"Add {name!r} to count_columns, or rename it if it holds something else",
                line=1, param="count_columns")


def _csv_layout(header: Sequence[str], log: _ProblemLog, *, path_column: str | None,
                id_column: str | None, count_columns: Sequence[str] | None,
                n_buckets: int | None, split_column: str | None, tags_column: str | None,
                category_column: str | None, delimiter: str = ",") -> _CsvLayout:
    if count_columns is not None:
        counts, named_scores = _explicit_count_columns(header, count_columns, log), None
    else:
        counts, named_scores = _infer_count_columns(header, log, delimiter)
    if len(counts) < 2:
        raise log.file_error(f"only one count column ({header[counts[0]] if counts else '-'}); "
                             "a score distribution needs at least 2 buckets", line=1)
    if n_buckets is not None and len(counts) != n_buckets:
        raise log.file_error(f"n_buckets={n_buckets} but {len(counts)} count columns were "
                             f"found: {', '.join(header[i] for i in counts)}", line=1)
    layout = _CsvLayout(
        tuple(header), counts, named_scores,
        path=_find_column(header, path_column, _PATH_COLUMNS, "image path", log, "path_column"),
        image_id=_find_column(header, id_column, _ID_COLUMNS, "image id", log, "id_column"),
        split=_find_column(header, split_column, _SPLIT_COLUMNS, "split", log, "split_column"),
        tags=_find_column(header, tags_column, _TAGS_COLUMNS, "tags", log, "tags_column"),
        category=_find_column(header, category_column, _CATEGORY_COLUMNS, "category", log,
                              "category_column"),
        delimiter=delimiter)
    if layout.key is None:
        raise log.file_error(f"no image column: name one of {', '.join(_PATH_COLUMNS)} (a path) "
                             f"or {', '.join(_ID_COLUMNS)} (an id put into image_pattern), or "
                             f"pass path_column= / id_column=; {_header_as_read(header, delimiter)}",
                             line=1, param="path_column")
    if count_columns is not None:
        _refuse_unlisted_counts(layout, count_columns, log)
    return layout


def _sniff_delimiter(line: str) -> str:
    """The field separator of a CSV from its header line: one of :data:`CSV_DELIMITERS`
    (csv.Sniffer, else the most frequent of them), ',' when the line holds none."""
    try:
        found = csv.Sniffer().sniff(line, delimiters=CSV_DELIMITERS).delimiter
    except csv.Error:
        found = None
    if found and found in line:
        return found
    counts = {d: line.count(d) for d in CSV_DELIMITERS}
    best = max(CSV_DELIMITERS, key=lambda d: counts[d])   # ties: the first in CSV_DELIMITERS
    return best if counts[best] else ","


def _columns_note(csv_file: Path, layout: "_CsvLayout", scores: Sequence[float], cut: float) -> str:
    """Which columns the folder source reads as what: the score buckets, the image column,
    the ignored columns (printed by stage 1 and preprocess, so a typo cannot pass unseen)."""
    pairs = [f"{layout.header[i]} -> {s:g}" for i, s in zip(layout.counts, scores)]
    if len(pairs) > 12:
        pairs = pairs[:4] + ["..."] + pairs[-2:]
    separated = ("" if layout.delimiter == "," else
                 f" (fields separated by {_DELIMITER_NAMES.get(layout.delimiter)})")
    image = (f"image paths from column {layout.header[layout.path]!r}" if layout.image_id is None
             else f"image ids from column {layout.header[layout.image_id]!r}")
    ignored = layout.ignored()
    return (f"{csv_file.name}{separated}: votes per score bucket from columns {', '.join(pairs)} "
            f"({len(layout.counts)} buckets, high/low threshold {cut:g}); {image}; ignored "
            f"columns: {', '.join(ignored) if ignored else 'none'}")


def _whole_number(text: str) -> int | None:
    """``text`` as an int when it is a whole number ('12' or '12.0'), else None."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() else None


def _parse_csv_counts(cells: Sequence[str], names: Sequence[str]) -> tuple[int, ...] | str:
    """Counts of a CSV row (whole numbers; '12.0' as pandas writes it is accepted),
    or the reason they cannot be used."""
    votes = []
    for cell, name in zip(cells, names):
        value = _whole_number(cell.strip())
        if value is None:
            return f"count column {name!r} is {cell!r}, not a whole number; {_FIX_ROW}"
        if value < 0:
            return f"count column {name!r} is {value}; counts must be >= 0; {_FIX_ROW}"
        votes.append(value)
    if not any(votes):
        return _no_votes_reason(len(votes))
    return tuple(votes)


@dataclass(frozen=True)
class _CsvRow:
    image_id: str
    path_cell: str | None
    votes: tuple[int, ...]
    split: str | None
    tags: tuple[str, ...]
    category: str | None
    line: int


def _parse_csv_row(cells: list[str], line: int, layout: _CsvLayout, log: _ProblemLog
                   ) -> _CsvRow | None:
    header = layout.header
    image_id = cells[layout.key].strip() if layout.key < len(cells) else None
    path_cell = (cells[layout.path].strip() or None
                 if layout.path is not None and layout.path < len(cells) else None)
    if len(cells) != len(header):
        log.bad_row(line, f"row has {len(cells)} fields but the header has {len(header)}; "
                          f"{_FIX_ROW}", image_id or None, path=path_cell)
        return None
    if not image_id:
        log.bad_row(line, f"the {header[layout.key]!r} cell is empty; {_FIX_ROW}", path=path_cell)
        return None
    unsafe = _unsafe_id_reason(image_id) if layout.path is None else None
    if unsafe:
        log.bad_row(line, unsafe, image_id)
        return None
    votes = _parse_csv_counts([cells[i] for i in layout.counts], layout.names(layout.counts))
    if isinstance(votes, str):
        log.bad_row(line, votes, image_id, path=path_cell)
        return None
    split = None
    if layout.split is not None:
        split = _SPLIT_SYNONYMS.get(cells[layout.split].strip().lower())
        if split is None:
            log.bad_row(line, f"split {cells[layout.split]!r} is not train, val or test "
                              f"(accepted spellings: {', '.join(sorted(_SPLIT_SYNONYMS))}); "
                              f"{_FIX_ROW}", image_id, path=path_cell)
            return None
    tags: tuple[str, ...] = ()
    if layout.tags is not None:
        tags = tuple(t.strip() for t in _TAG_SEPARATORS.split(cells[layout.tags]) if t.strip())
    category = None
    if layout.category is not None:
        category = cells[layout.category].strip() or None
    return _CsvRow(image_id, path_cell, votes, split, tags, category, line)


def _read_csv_rows(csv_path: Path, log: _ProblemLog, options: dict
                   ) -> tuple[_CsvLayout, list[_CsvRow], int]:
    """Column layout, usable rows (first of duplicate ids) and the number of data rows."""
    with open(csv_path, newline="", encoding="utf-8-sig", errors="replace") as handle:
        delimiter = _sniff_delimiter(handle.readline())
        handle.seek(0)
        reader = csv.reader(handle, delimiter=delimiter)
        header = [h.strip() for h in next(reader, [])]
        if not any(header):
            raise log.file_error("the CSV is empty: expected a header row naming an image "
                                 "column and the vote count columns")
        layout = _csv_layout(header, log, delimiter=delimiter, **options)
        rows: list[_CsvRow] = []
        first_line: dict[str, int] = {}
        n_rows = 0
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue
            n_rows += 1
            row = _parse_csv_row(cells, reader.line_num, layout, log)
            if row is None:
                continue
            seen = first_line.setdefault(row.image_id, row.line)
            if seen != row.line:
                log.bad_row(row.line, _duplicate_reason(row.image_id, seen, row.line),
                            row.image_id, _STATUS_DUPLICATE, path=row.path_cell)
                continue
            rows.append(row)
    if n_rows == 0:
        raise log.file_error("the CSV has a header but no rows: nothing to use")
    if not rows:
        raise _nothing_usable(log, n_rows, "rows")
    return layout, rows, n_rows


def _csv_scores(layout: _CsvLayout, scores: Sequence[float] | None) -> tuple[float, ...]:
    """Bucket scores: ``scores`` if given, else those in the column names, else 1..N."""
    n = len(layout.counts)
    if scores is None:
        if layout.named_scores is not None:
            return layout.named_scores
        return tuple(float(s) for s in range(1, n + 1))
    try:
        result = tuple(float(s) for s in scores)
    except (TypeError, ValueError):
        raise OptionError(f"scores must be a list of numbers, one per count column, got {scores!r}",
                          param="scores") from None
    if len(result) != n:
        raise OptionError(f"scores has {len(result)} values but there are {n} count columns "
                          f"({', '.join(layout.names(layout.counts))})", param="scores")
    if any(b <= a for a, b in zip(result, result[1:])):
        raise OptionError(f"scores must increase strictly (one per ordered bucket), got {result}", param="scores")
    return result


def _find_csv(path: Path) -> Path:
    if path.is_file():
        return path
    if path.is_dir():
        found = sorted(path.glob("*.csv"))
        if len(found) == 1:
            return found[0]
        if found:
            names = ", ".join(f.name for f in found)
            raise OptionError(f"{path} holds several CSV files ({names}); pass the label CSV "
                              "itself", param="root")
    raise FileNotFoundError(f"label CSV not found: {path} is neither a file nor a folder "
                            "holding exactly one .csv file")


def _csv_splits(layout: _CsvLayout, rows: list[_CsvRow], val_size: int | float,
                test_size: int | float, seed: int) -> tuple[dict[str, str], dict]:
    """id -> split from the split column, else from the seeded hash; and the spec."""
    if layout.split is not None:
        return ({row.image_id: row.split for row in rows},
                {"kind": "csv-column", "split_column": layout.header[layout.split]})
    split_of = _hash_split([row.image_id for row in rows], val_size, test_size, seed)
    return split_of, {"kind": "seeded-hash", "val_size": _plain_size(val_size),
                      "test_size": _plain_size(test_size), "seed": int(seed),
                      "rank_rule": _RANK_RULE + ": test, then val, then train"}


def _hash_split(ids: list[str], val_size: int | float, test_size: int | float, seed: int
                ) -> dict[str, str]:
    """Seeded-hash split: the first ``test_size`` ranked ids are test, the next
    ``val_size`` (of the non-test rows) val, the rest train; changing val_size never
    moves a test id."""
    n_test = _resolve_size(test_size, len(ids), "test_size")
    n_val = _resolve_size(val_size, len(ids) - n_test, "val_size")
    ranked = _seeded_rank(ids, seed)
    split_of = dict.fromkeys(ranked[n_test + n_val:], "train")
    split_of.update(dict.fromkeys(ranked[n_test:n_test + n_val], "val"))
    split_of.update(dict.fromkeys(ranked[:n_test], "test"))
    return split_of


def _csv_image_path(row: _CsvRow, base: Path, from_id: _ImagePath | None) -> Path:
    if row.path_cell is None:
        return from_id(row.image_id)
    path = Path(row.path_cell).expanduser()
    return path if path.is_absolute() else base / path


@_gc_paused()
def load_folder(csv_path: str | os.PathLike, *, image_root: str | os.PathLike | None = None,
                image_pattern: str = "{id}.jpg", path_column: str | None = None,
                id_column: str | None = None, count_columns: Sequence[str] | None = None,
                n_buckets: int | None = None, scores: Sequence[float] | None = None,
                threshold: float | None = None, split_column: str | None = None,
                tags_column: str | None = None, category_column: str | None = None,
                val_size: int | float = DEFAULT_VAL_SIZE,
                test_size: int | float = DEFAULT_TEST_SIZE, seed: int = 0,
                strict: bool = False, check_images: bool = False) -> Dataset:
    """Read users' own data: a folder of images and a CSV with one row of vote counts each.

    ``csv_path`` is the CSV, or a folder holding exactly one. Its image column is a
    path (relative to ``image_root``, default the CSV's folder) or an id put into
    ``image_pattern``. Fields are separated by commas, semicolons, tabs or '|' (the
    header line decides). The N count columns are found by name (``COUNT_COLUMN_FORMS``)
    or given as ``count_columns``; any rating scale works, but the count columns must
    form one scale: a gap, a misspelt count column ('c1O'), two namings or a count-like
    column missing from ``count_columns`` is a ``LabelError`` naming it. The notes say
    which columns were read as which bucket and which were ignored, and
    ``Dataset.score_columns`` records the mapping. Scores are ``scores``, else
    the numbers in score-named columns, else 1..N; the threshold is ``threshold`` or
    the scale midpoint (s1 + sN) / 2. A split column (train/val/test) is used when
    present; otherwise ``test_size`` then ``val_size`` (counts or fractions) are drawn
    by a seeded hash of the id and the rest is train. Optional columns: tags
    (separated by '|' or ';') and category.
    """
    csv_file = _find_csv(Path(csv_path).expanduser().absolute())
    base = Path(image_root).expanduser().absolute() if image_root is not None else csv_file.parent
    log = _ProblemLog(csv_file, strict)
    layout, rows, n_rows = _read_csv_rows(csv_file, log, dict(
        path_column=path_column, id_column=id_column, count_columns=count_columns,
        n_buckets=n_buckets, split_column=split_column, tags_column=tags_column,
        category_column=category_column))
    bucket_scores = _csv_scores(layout, scores)
    cut = _threshold(threshold, (bucket_scores[0] + bucket_scores[-1]) / 2, bucket_scores)

    split_of, spec = _csv_splits(layout, rows, val_size, test_size, seed)
    from_id = _ImagePath(image_pattern, base) if layout.path is None else None
    records = [Record(row.image_id, _csv_image_path(row, base, from_id), row.votes,
                      split_of[row.image_id], row.tags, row.category, None, row.line)
               for row in rows]

    def problem_path(problem: Problem) -> Path | None:
        if problem.path is not None:
            cell = Path(problem.path).expanduser()
            return cell if cell.is_absolute() else base / cell
        if from_id is not None and problem.image_id and not _unsafe_id_reason(problem.image_id):
            return from_id(problem.image_id)
        return None
    categories: dict[str, set[str]] = {}
    for record in records:
        if record.category is not None:
            categories.setdefault(record.category, set()).add(record.image_id)
    score_columns = [{"column": layout.header[i], "bucket": bucket, "score": score}
                     for bucket, (i, score) in enumerate(zip(layout.counts, bucket_scores), 1)]
    report = {"label_file": str(csv_file), "rows": n_rows, "usable_rows": len(rows),
              "count_columns": layout.names(layout.counts), "ignored_columns": layout.ignored(),
              "delimiter": layout.delimiter,
              "images": {"base": str(base), "image_root_given": image_root is not None,
                         "column": None if layout.path is None else layout.header[layout.path],
                         "pattern": image_pattern if layout.path is None else None}}
    spec = {"source": "folder", **spec, **_split_digests(records)}
    notes = [_columns_note(csv_file, layout, bucket_scores, cut)]
    dataset = Dataset("folder", base, bucket_scores, cut, records,
                      _fill_problem_paths(log.problems, problem_path), spec,
                      {k: frozenset(v) for k, v in categories.items()}, report, notes,
                      score_columns)
    return _finish(dataset, check_images, csv_file)


# ---------------------------------------------------------------------------- entry

_LOADERS: dict[str, Callable[..., Dataset]] = {
    "ava": load_ava, "photonet": load_photonet, "folder": load_folder}


def open_dataset(kind: str, root: str | os.PathLike, **options) -> Dataset:
    """Open a dataset of ``kind`` ('ava', 'photonet' or 'folder') with its loader's options."""
    loader = _LOADERS.get(str(kind).strip().lower())
    if loader is None:
        raise OptionError(f"unknown dataset kind {kind!r}; allowed: {', '.join(_LOADERS)}", param="dataset")
    accepted = [name for name, p in inspect.signature(loader).parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise OptionError(f"{kind} datasets take no option {', '.join(map(repr, unknown))} "
                          f"(e.g. in dataset_options); their options: {', '.join(accepted)}",
                          param="dataset_options")
    return loader(root, **options)
