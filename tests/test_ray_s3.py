"""The Ray engines on object storage: ``gpf preprocess|predict --engine ray`` against the S3 test server.

One local Ray (the session's, 2 CPUs, 127.0.0.1 only; tests/helpers/ray_cluster.py) and one moto
server (the session's, authentication on; tests/helpers/s3server.py). The credentials reach gpf only
through ``--storage-options`` (this process, and so Ray's workers, has no AWS variables): the Ray
workers and actors can read and write the bucket only if the driver handed them its options. The
reference is the local engine on the same server: the same objects, byte for byte. Afterwards no
file under Ray's temp dir (its logs, spilled objects) holds the secret key.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from helpers.bulk import BROKEN, photo_collection
from helpers.cli import invoke
from helpers.evaluation import VIEW, build_eval_data

PREPROCESS = ["--val-size", "2", "--view-size", VIEW, "--samples-per-shard", "4", "--batch-size", "3", "--quiet"]
BULK = ["--device", "cpu", "--quiet", "--batch-size", "2", "--chunk-size", "4"]
MISSING = "photos/c/gone.jpg"
CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


@pytest.fixture(scope="module")
def bucket(s3_server, tmp_path_factory):
    """A bucket holding the evaluation fixture's stage-1 and stage-2 checkpoints and a photo collection."""
    assert not [name for name in CREDENTIAL_ENV if name in os.environ], "the credentials must come from the options"
    data = build_eval_data(tmp_path_factory)
    url = s3_server.make_bucket()
    client, name = s3_server.client(), url[len("s3://"):]
    for key, path in (("models/stage1.pt", data["stage1"]), ("models/gpf.pt", data["gpf"])):
        client.put_object(Bucket=name, Key=key, Body=path.read_bytes())
    s3_server.upload_folder(photo_collection(data, tmp_path_factory.mktemp("photos")), f"{url}/photos")
    return {"url": url, "data": data}


def _options(server) -> list[str]:
    return ["--storage-options", json.dumps(server.storage_options)]


def test_ray_preprocess_writes_the_local_engines_objects_and_they_verify(local_ray, bucket, s3_server):
    url = bucket["url"]
    command = ["preprocess", "ava", bucket["data"]["ava"], "--stage1", f"{url}/models/stage1.pt", *PREPROCESS,
               *_options(s3_server)]
    local = invoke([*command, "--out", f"{url}/local"])
    assert local.exit_code == 0, local.output
    ray = invoke([*command, "--out", f"{url}/ray", "--engine", "ray"])
    assert ray.exit_code == 0, ray.output
    reference, written = s3_server.objects(f"{url}/local"), s3_server.objects(f"{url}/ray")
    assert any(key.endswith(".tar") for key in reference) and "manifest.json" in reference
    assert sorted(written) == sorted(reference)
    assert [key for key in reference if written[key] != reference[key]] == []
    verified = invoke(["shards", "verify", f"{url}/ray", *_options(s3_server)])
    assert verified.exit_code == 0, verified.output
    assert_no_secret_under(local_ray.temp_dir, s3_server.secret)


def _photo_list(url: str) -> str:
    """A CSV in the bucket: the collection's photos by key relative to the list, one by its full URL, a
    missing object (all read through the storage layer)."""
    rows = ["photos/a/800007.jpg", "photos/b/800006.jpg", "photos/b/cut.jpg", "photos/b/notes.jpg",
            f"{url}/photos/a/800009.jpg", MISSING, "photos/b/800008.jpg"]
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerows([["path"], *([row] for row in rows)])
    return text.getvalue()


def test_ray_bulk_scoring_of_s3_photos_into_s3_is_the_local_engines(local_ray, bucket, s3_server):
    url = bucket["url"]
    s3_server.client().put_object(Bucket=url[len("s3://"):], Key="photos.csv", Body=_photo_list(url).encode())
    command = ["predict", f"{url}/photos.csv", "--checkpoint", f"{url}/models/gpf.pt", *BULK, *_options(s3_server)]
    local = invoke([*command, "--out", f"{url}/scores-local"])
    assert local.exit_code == 0, local.output
    ray = invoke([*command, "--out", f"{url}/scores-ray", "--engine", "ray"])
    assert ray.exit_code == 0, ray.output
    assert "chunks: 2 written, 0 already done, 2 in all" in ray.output
    reference, written = _chunks(s3_server, f"{url}/scores-local"), _chunks(s3_server, f"{url}/scores-ray")
    assert len(reference) == 2 and written == reference          # the same bytes, chunk by chunk
    rows = [row for data in written.values() for row in pq.read_table(io.BytesIO(data)).to_pylist()]
    statuses = {row["id"]: row["status"] for row in rows}
    assert {name: statuses[f"photos/{name}"] for name in BROKEN} == BROKEN and statuses[MISSING] == "missing"
    assert list(statuses.values()).count("ok") == 4 and statuses[f"{url}/photos/a/800009.jpg"] == "ok"
    s3_server.client().delete_object(Bucket=url[len("s3://"):], Key="scores-ray/scores-000001.parquet")
    again = invoke([*command, "--out", f"{url}/scores-ray", "--engine", "ray"])   # resume on the prefix
    assert "chunks: 1 written, 1 already done, 2 in all" in again.output, again.output
    assert _chunks(s3_server, f"{url}/scores-ray") == reference
    assert_no_secret_under(local_ray.temp_dir, s3_server.secret)


def _chunks(server, url: str) -> dict[str, bytes]:
    return {k: v for k, v in server.objects(url).items() if k.startswith("scores-")}


def assert_no_secret_under(folder: str, secret: str) -> None:
    """No regular file below ``folder`` (Ray's session logs, spilled objects) contains ``secret``."""
    scanned, leaks = 0, []
    for path in Path(folder).rglob("*"):
        if path.is_file() and not path.is_symlink():
            scanned += 1
            if secret.encode() in path.read_bytes():
                leaks.append(str(path))
    assert scanned > 10 and leaks == []
