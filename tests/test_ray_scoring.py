"""`gpf predict --engine ray LIST --out DIR` (pipeline/ray_scoring.py) against the local engine on the
same list, on the session's local Ray (2 CPUs, 127.0.0.1 only; tests/helpers/ray_cluster.py)."""
from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from helpers.bulk import BROKEN, MISSING, chunk_files, chunk_rows, photo_collection, photo_list
from helpers.cli import invoke
from helpers.evaluation import build_eval_data

BULK = ["--device", "cpu", "--quiet", "--batch-size", "2", "--chunk-size", "4"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build_eval_data(tmp_path_factory)


def test_ray_bulk_scores_are_the_local_engines_bad_rows_included(local_ray, data, tmp_path, monkeypatch):
    listing = photo_list(photo_collection(data, tmp_path / "photos"))
    local, ray = tmp_path / "local", tmp_path / "ray"
    monkeypatch.chdir(data["gpf"].parent)          # the checkpoint by a relative path: the actors live elsewhere
    checkpoint = data["gpf"].name
    run = invoke(["predict", listing, "--checkpoint", checkpoint, "--out", local, *BULK])
    assert run.exit_code == 0, run.output
    run = invoke(["predict", listing, "--checkpoint", checkpoint, "--out", ray, "--engine", "ray", *BULK])
    assert run.exit_code == 0, run.output
    assert "chunks: 4 written, 0 already done, 4 in all" in run.output
    assert chunk_files(ray) == chunk_files(local)             # the same bytes, chunk by chunk
    assert pq.read_schema(ray / "scores-000000.parquet").metadata[b"gpf"].decode().count('"gpf.pt"') == 1
    rows = chunk_rows(ray)
    statuses = {r["id"]: r["status"] for r in rows}
    assert {k: statuses[k] for k in BROKEN} == BROKEN and statuses[MISSING] == "missing"
    assert len(rows) == len(statuses) == 14 and list(statuses.values()).count("ok") == 11
    (ray / "scores-000001.parquet").unlink()                   # resume: only the missing chunk again
    again = invoke(["predict", listing, "--checkpoint", checkpoint, "--out", ray, "--engine", "ray", *BULK])
    assert "chunks: 1 written, 3 already done, 4 in all" in again.output
    assert chunk_files(ray) == chunk_files(local)
