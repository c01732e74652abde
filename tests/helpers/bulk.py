"""A photo collection for bulk scoring (``gpf predict LIST --out DIR``): a folder of the evaluation
fixture's photos in sub-folders, two broken files, and a CSV list naming them plus a missing
file and a duplicate row."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pyarrow.parquet as pq

from .evaluation import TEST_IDS

#: Files of the collection that cannot be scored, and the status each must get.
BROKEN = {"b/cut.jpg": "truncated", "b/notes.jpg": "not_an_image"}
MISSING = "c/gone.jpg"


def photo_collection(data: dict, root: Path, count: int = 10) -> Path:
    """``root/a/*.jpg``, ``root/b/*.jpg`` (the first ``count`` test photos) and :data:`BROKEN`."""
    for k, image_id in enumerate(TEST_IDS[:count]):
        folder = root / ("a" if k % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(data["ava"] / "images" / f"{image_id}.jpg", folder / f"{image_id}.jpg")
    good = (data["ava"] / "images" / f"{TEST_IDS[0]}.jpg").read_bytes()
    (root / "b" / "cut.jpg").write_bytes(good[: len(good) // 3])
    (root / "b" / "notes.jpg").write_text("not a photo\n")
    return root


def photo_list(root: Path, name: str = "photos.csv") -> Path:
    """A CSV (column ``path``) beside ``root``'s photos: every file, relative, plus a missing
    file and one file listed twice (the second row gets the id ``...#2``)."""
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))
    rows = files + [MISSING, files[0]]
    path = root / name
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "note"])
        writer.writerows([row, "x"] for row in rows)
    return path


def chunk_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("scores-*.parquet"))}


def chunk_rows(out: Path) -> list[dict]:
    """Every row of the chunks, in chunk order."""
    rows: list[dict] = []
    for path in sorted(out.glob("scores-*.parquet")):
        rows += pq.read_table(path).to_pylist()
    return rows
