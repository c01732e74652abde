"""Bulk scoring: a list of photos -> one Parquet of scores per chunk, resumable (``gpf predict LIST --out DIR``).

The list is a CSV or Parquet file with a path column (``--path-column``, else the
first of :data:`PATH_COLUMNS`), or a folder (its image files, recursively). Each
photo gets a unique id (:func:`read_photo_list`): its path relative to the input
root (the list file's folder, or the folder given), an absolute path outside it
as given, a URL as given. The photos are cut into chunks of ``chunk_size`` in
list order; chunk ``k`` is written to ``scores-{k:06d}.parquet`` atomically, so a
chunk is done when its file exists and a rerun of the same command scores only
the missing chunks. A photo that cannot be scored is a row with its status and
error. Columns: those of :meth:`gpf.pipeline.scoring.ScoreResult.as_dict` (id,
path, width, height, mean, std, distribution, high, x0 y0 x1 y1, attn_fraction,
status, error).

Every engine scores a chunk with :func:`score_chunk`: the local engine with the
networks in this process, the Ray engine (``gpf.pipeline.ray_scoring``) in a task
with the networks in actors; batches are formed per chunk the same way, so both
write the same bytes.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..errors import GPFError
from ..fsutil import atomic_write_bytes
from .progress import Progress
from .scoring import NamedImage, ParquetResultWriter, Scorer, named_image_files, unique_ids

#: Columns looked for, in this order, when no ``--path-column`` is given.
PATH_COLUMNS = ("path", "url", "file", "filepath", "file_path", "image", "image_path", "filename")
DEFAULT_CHUNK_SIZE = 10_000
RUN_FILE = "predict.json"
LIST_SUFFIXES = (".csv", ".parquet", ".pq")


class BulkScoringError(GPFError):
    """A photo list or output folder that bulk scoring cannot use; the message says what to do."""


# ----------------------------------------------------------------------------- the list

def is_url(text: str) -> bool:
    return "://" in text


def read_photo_list(source: str | os.PathLike, path_column: str | None = None) -> list[NamedImage]:
    """The photos of a CSV/Parquet list or a folder, each with its unique id, in list order."""
    source = Path(source)
    if source.is_dir():
        if path_column:
            raise BulkScoringError(f"--path-column applies to a CSV or Parquet list, not to the folder {source}")
        return named_image_files([source])
    if source.suffix.lower() not in LIST_SUFFIXES:
        raise BulkScoringError(f"{source}: give a folder, or a list file ending in "
                               f"{', '.join(LIST_SUFFIXES)} with a column of paths or URLs")
    paths = _path_column(source, path_column)
    root = source.resolve().parent
    ids, files = [], []
    for n, given in enumerate(paths, start=2 if source.suffix.lower() == ".csv" else 1):
        if given is None or not str(given).strip():
            raise BulkScoringError(f"{source}: row {n} has no path; fill it in or drop the row")
        given = str(given).strip()
        ids.append(_photo_id(given, root))
        files.append(given if is_url(given) or os.path.isabs(given) else str(root / given))
    return [NamedImage(image_id, file) for image_id, file in zip(unique_ids(ids), files)]


def _photo_id(given: str, root: Path) -> str:
    """The path relative to the list's folder (``/`` separators), an outside absolute path or a URL as given."""
    if is_url(given):
        return given
    path = Path(given)
    if not path.is_absolute():
        return path.as_posix()
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _path_column(source: Path, path_column: str | None) -> list:
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    try:
        if source.suffix.lower() == ".csv":
            table = pcsv.read_csv(source, convert_options=pcsv.ConvertOptions(strings_can_be_null=True))
        else:
            table = pq.read_table(source)
    except Exception as exc:  # noqa: BLE001 - pyarrow's parse errors name no common base
        raise BulkScoringError(f"{source}: cannot read the list ({type(exc).__name__}: {exc})") from None
    names = table.column_names
    if path_column is None:
        found = [name for name in PATH_COLUMNS if name in names]
        if not found:
            raise BulkScoringError(f"{source}: no path column (looked for {', '.join(PATH_COLUMNS)}; the list "
                                   f"has {', '.join(names) or 'no columns'}); name it with --path-column")
        path_column = found[0]
    elif path_column not in names:
        import difflib

        close = difflib.get_close_matches(path_column, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; the list has {', '.join(names)}"
        raise BulkScoringError(f"{source}: no column {path_column!r}{hint}")
    return table.column(path_column).to_pylist()


# ----------------------------------------------------------------------------- chunks

@dataclass(frozen=True)
class Chunk:
    """``photos`` of the list, number ``index``: written to :attr:`name` in the output folder."""
    index: int
    photos: tuple[NamedImage, ...]

    @property
    def name(self) -> str:
        return f"scores-{self.index:06d}.parquet"


def plan_chunks(photos: Sequence[NamedImage], chunk_size: int) -> list[Chunk]:
    if chunk_size < 1:
        raise BulkScoringError(f"--chunk-size must be positive, got {chunk_size}")
    return [Chunk(k, tuple(photos[i:i + chunk_size])) for k, i in enumerate(range(0, len(photos), chunk_size))]


def is_chunk_done(out: str | os.PathLike, chunk: Chunk) -> bool:
    return (Path(out) / chunk.name).is_file()


def read_chunk_counts(out: str | os.PathLike, chunk: Chunk) -> Counter:
    """Photos per status of a written chunk."""
    import pyarrow.parquet as pq

    return Counter(pq.read_table(Path(out) / chunk.name, columns=["status"]).column("status").to_pylist())


def score_chunk(chunk: Chunk, scorer: Scorer, out: str | os.PathLike, batch_size: int,
                progress: Progress | None = None) -> Counter:
    """Score one chunk and write its Parquet (atomically: the file appears complete or not at all).

    Both engines call this per chunk; ``scorer`` holds the networks or is detached from them
    (:meth:`gpf.pipeline.scoring.Scorer.detached`). Returns the photos per status.
    """
    counts: Counter = Counter()
    with ParquetResultWriter(Path(out) / chunk.name, metadata=scorer.describe()) as writer:
        for result in scorer.score_many(chunk.photos, batch_size, progress=progress):
            writer.write(result)
            counts[result.status] += 1
    return counts


# ----------------------------------------------------------------------------- a run

@dataclass
class BulkSummary:
    counts: Counter
    written_chunks: int
    skipped_chunks: int
    total_chunks: int
    out: Path
    failed_chunks: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def lines(self) -> list[str]:
        per_status = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
        lines = [f"photos: {self.total} ({per_status})",
                 f"chunks: {self.written_chunks} written, {self.skipped_chunks} already done, "
                 f"{self.total_chunks} in all",
                 f"scores: {self.out}/scores-*.parquet"]
        if self.failed_chunks:
            lines.append(f"chunks failed after their retries: {len(self.failed_chunks)} "
                         f"({', '.join(self.failed_chunks)}); rerun the same command to redo them")
        return lines


def run_identity(source, path_column, chunk_size: int, batch_size: int, scorer: Scorer, photos: int) -> dict:
    """What decides the chunks' bytes: a rerun must match it to resume in the same folder."""
    return {"list": str(Path(source).resolve()), "path_column": path_column, "photos": photos,
            "chunk_size": chunk_size, "batch_size": batch_size, "max_pixels": scorer.max_pixels,
            "scorer": scorer.describe()}


def prepare_out(out: str | os.PathLike, identity: dict) -> Path:
    """Create ``out`` (or check it holds chunks of this very run) and drop temp files a killed run left."""
    from ..shards.manifest import recorded_differences

    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BulkScoringError(f"cannot create the output folder --out {out}: {exc.strerror or exc}; "
                               "choose another --out") from None
    differences = recorded_differences(out / RUN_FILE, identity)
    if differences:
        raise BulkScoringError(f"{out} holds scores of another run ({'; '.join(differences[:6])}); rerun "
                               "the same command to resume, or choose another --out")
    if differences is None:
        atomic_write_bytes(out / RUN_FILE, json.dumps(identity, sort_keys=True, indent=1).encode())
    for stale in out.glob(".scores-*.tmp"):
        stale.unlink(missing_ok=True)
    return out


def done_chunks(out: Path, chunks: Sequence[Chunk]) -> tuple[list[Chunk], Counter]:
    """(chunks still to score, photos per status of the chunks already written)."""
    todo, counts = [], Counter()
    for chunk in chunks:
        if is_chunk_done(out, chunk):
            counts.update(read_chunk_counts(out, chunk))
        else:
            todo.append(chunk)
    return todo, counts


def run_bulk_local(source, out, scorer: Scorer, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                   batch_size: int = 32, path_column: str | None = None, progress: bool = True) -> BulkSummary:
    """Score every photo of ``source`` (list file or folder) into ``out``, chunk by chunk, in this process."""
    photos = read_photo_list(source, path_column)
    chunks = plan_chunks(photos, chunk_size)
    out = prepare_out(out, run_identity(source, path_column, chunk_size, batch_size, scorer, len(photos)))
    todo, counts = done_chunks(out, chunks)
    bar = Progress(len(photos), "predict", enabled=progress)
    bar.skip(len(photos) - sum(len(c.photos) for c in todo))
    for chunk in todo:
        counts.update(score_chunk(chunk, scorer, out, batch_size, progress=bar))
    bar.close()
    return BulkSummary(counts, len(todo), len(chunks) - len(todo), len(chunks), out)
