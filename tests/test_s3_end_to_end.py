"""Shards on object storage (issue 13): every command against a real S3 server on 127.0.0.1.

The server is moto's, started by the `s3_server` fixture (tests/helpers/s3server.py) with
authentication on: it knows one IAM user's key, refuses any other, and gpf's own calls are not
mocked. The reference is a local run of the same commands: its files, metrics and scores are what
the bucket's objects and the runs from the bucket must reproduce. One preprocessed run (tiny
stage-1 model, 20 photos) is shared by the module.
"""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from helpers.cli import invoke, refused
from helpers.evaluation import VIEW, save_stage1, write_ava

PREPROCESS = ["--val-size", "2", "--view-size", VIEW, "--samples-per-shard", "2", "--workers", "2",
              "--batch-size", "8", "--quiet"]
STAGE2 = ["--backbone", "tiny", "--weights", "none", "--batch-size", "2", "--workers", "1", "--device", "cpu",
          "--branch-width", "8", "--fusion-width", "8", "--no-tensorboard", "--quiet"]


def _options(server, **changes) -> list[str]:
    return ["--storage-options", json.dumps(dict(server.storage_options, **changes))]


def _files(folder: Path) -> dict[str, bytes]:
    """What preprocess wrote in a local folder (not the checksum cache a local evaluation adds)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".gpf-checksums.json"}


@pytest.fixture(scope="module")
def runs(s3_server, tmp_path_factory):
    """The same preprocess run into a local folder and into s3://BUCKET/shards."""
    base = tmp_path_factory.mktemp("s3_runs")
    write_ava(base / "ava")
    save_stage1(base / "stage1.pt")
    bucket = s3_server.make_bucket()
    url = f"{bucket}/shards"
    local = base / "local"
    command = ["preprocess", "ava", base / "ava", "--stage1", base / "stage1.pt", *PREPROCESS]
    assert invoke([*command, "--out", local]).exit_code == 0
    result = invoke([*command, "--out", url, *_options(s3_server)])
    assert result.exit_code == 0, result.output
    s3_server.client().put_object(Bucket=bucket[5:], Key="models/stage1.pt", Body=(base / "stage1.pt").read_bytes())
    s3_server.upload_folder(base / "ava" / "images", f"{bucket}/photos")
    return {"base": base, "local": local, "url": url, "bucket": bucket, "command": command,
            "outputs": [result.output]}


def test_preprocess_to_s3_writes_the_bytes_of_a_local_run(runs, s3_server):
    objects, files = s3_server.objects(runs["url"]), _files(runs["local"])
    assert sorted(objects) == sorted(files)
    assert {"manifest.json", "preprocess.json", "train-000000.tar", "meta/train-000000.parquet"} <= set(objects)
    assert all(objects[name] == files[name] for name in files)
    assert f"output: {runs['url']}" in runs["outputs"][0]


def test_a_rerun_into_the_bucket_resumes_and_a_different_run_is_refused(runs, s3_server):
    before = s3_server.objects(runs["url"])
    again = invoke([*runs["command"], "--out", runs["url"], *_options(s3_server)])
    assert "0 written, 10 already done" in again.output, again.output
    assert s3_server.objects(runs["url"]) == before
    message = refused([*runs["command"], "--tau", "0.5", "--out", runs["url"], *_options(s3_server)],
                      runs["url"], "made differently", "tau")
    assert "--overwrite" in message


def test_overwrite_on_a_prefix_deletes_only_the_keys_gpf_names(runs, s3_server):
    url = s3_server.make_bucket() + "/shards"
    s3_server.upload_folder(runs["local"], url)
    bucket, client = url[5:].partition("/")[0], s3_server.client()
    foreign = {"shards/notes.txt": b"mine", "shards/backup.tar": b"mine", "shards/meta/mine.parquet": b"mine",
               "shards-other/train-000000.tar": b"mine"}
    for key, body in foreign.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)
    result = invoke([*runs["command"], "--split", "test", "--overwrite", "--out", url, *_options(s3_server)])
    assert result.exit_code == 0, result.output
    objects = s3_server.objects(f"s3://{bucket}")
    assert all(objects[key] == body for key, body in foreign.items())
    assert not any(key.startswith("shards/train-") for key in objects)       # the old run's train shards went
    assert json.loads(objects["shards/preprocess.json"])["config"]["split"] == "test"


def test_verify_and_info_read_the_bucket(runs, s3_server):
    result = invoke(["shards", "verify", runs["url"], *_options(s3_server)])
    assert result.exit_code == 0 and "20 sample(s) checked (decoded every member): OK" in result.output
    remote = json.loads(invoke(["shards", "info", runs["url"], "--json", *_options(s3_server)]).output)
    local = json.loads(invoke(["shards", "info", runs["local"], "--json"]).output)
    assert remote.pop("folder") == runs["url"] and local.pop("folder") == str(runs["local"])
    assert remote == local


@pytest.fixture(scope="module")
def trained(runs, s3_server):
    """Stage 2 trained from the bucket (stage-1 model read from it too), two epochs with a shard cache."""
    run, cache = runs["base"] / "run", runs["base"] / "cache"
    result = invoke(["train", "stage2", "--shards", runs["url"], "--stage1", f"{runs['bucket']}/models/stage1.pt",
                     "--epochs", "2", "--out", run, "--cache-dir", cache, *STAGE2, *_options(s3_server)])
    runs["outputs"].append(result.output)
    assert result.exit_code == 0, result.output
    s3_server.upload_folder(run, f"{runs['bucket']}/run")
    return {"run": run, "cache": cache}


def test_stage2_trains_from_s3_and_caches_verified_tars(runs, trained):
    import hashlib

    lines = (trained["run"] / "metrics.csv").read_text().splitlines()
    assert len(lines) == 3                                   # a header and two epochs
    manifest = json.loads((runs["local"] / "manifest.json").read_text())
    cached = {p.name for p in trained["cache"].glob("*.tar")}
    read = {f"{e['sha256']}.tar" for e in manifest["shards"] if e["split"] in ("train", "val")}
    assert cached == read
    for path in trained["cache"].glob("*.tar"):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.stem
    config = (trained["run"] / "config.yaml").read_text()
    assert f"shards: {runs['url']}" in config


def test_evaluate_from_s3_matches_the_local_evaluation(runs, trained, s3_server):
    remote, local = runs["base"] / "remote.json", runs["base"] / "local.json"
    result = invoke(["evaluate", "--checkpoint", f"{runs['bucket']}/run", "--shards", runs["url"], "--json", remote,
                     "--device", "cpu", "--workers", "1", "--quiet", *_options(s3_server)])
    assert result.exit_code == 0, result.output
    invoke(["evaluate", "--checkpoint", trained["run"], "--shards", runs["local"], "--json", local,
            "--device", "cpu", "--workers", "1", "--quiet"])
    remote_metrics, local_metrics = json.loads(remote.read_text()), json.loads(local.read_text())
    assert remote_metrics.pop("shards") == runs["url"] and remote_metrics.pop("checkpoint") == f"{runs['bucket']}/run"
    for key in ("shards", "checkpoint"):
        local_metrics.pop(key)
    assert remote_metrics == local_metrics


def test_predict_reads_photos_from_s3_and_writes_scores_to_s3(runs, trained, s3_server):
    out = f"{runs['bucket']}/scores/photos.parquet"
    result = invoke(["predict", f"{runs['bucket']}/photos", "--checkpoint", f"{runs['bucket']}/run/best.pt",
                     "--parquet", out, "--device", "cpu", "--quiet", *_options(s3_server)])
    assert result.exit_code == 0 and f"scores written to {out}" in result.output, result.output
    local = runs["base"] / "photos.parquet"
    invoke(["predict", runs["base"] / "ava" / "images", "--checkpoint", trained["run"] / "best.pt", "--parquet", local,
            "--device", "cpu", "--quiet"])
    remote_rows = pq.read_table(io.BytesIO(s3_server.objects(out.rpartition("/")[0])["photos.parquet"]))
    local_rows = pq.read_table(local)
    columns = ["id", "mean", "std", "distribution", "high", "x0", "y0", "x1", "y1", "status"]
    assert remote_rows.num_rows == 20
    assert remote_rows.select(columns).to_pylist() == local_rows.select(columns).to_pylist()
    assert remote_rows.column("path").to_pylist()[0].startswith(f"{runs['bucket']}/photos/")


# ----------------------------------------------------------------------------- damage and failures

def _copy_of_local_run(runs, s3_server) -> str:
    url = s3_server.make_bucket() + "/shards"
    s3_server.upload_folder(runs["local"], url)
    return url


def test_a_deleted_shard_is_named_by_verify_and_refused_by_stage2(runs, s3_server):
    url = _copy_of_local_run(runs, s3_server)
    s3_server.client().delete_object(Bucket=url[5:].partition("/")[0], Key="shards/train-000001.tar")
    result = invoke(["shards", "verify", url, "--quick", *_options(s3_server)])
    assert result.exit_code == 1 and "train-000001: listed in manifest.json but the tar is missing" in result.output
    refused(["train", "stage2", "--shards", url, "--out", runs["base"] / "refused1", *STAGE2, *_options(s3_server)],
            f"{url}/train-000001.tar: missing")


def test_an_altered_shard_is_named_by_verify_and_refused_by_stage2(runs, s3_server):
    url = _copy_of_local_run(runs, s3_server)
    data = bytearray((runs["local"] / "train-000000.tar").read_bytes())
    data[data.index(b"\xff\xd8") + 300] ^= 0xFF                # inside a JPEG: same size, the tar still parses
    s3_server.client().put_object(Bucket=url[5:].partition("/")[0], Key="shards/train-000000.tar", Body=bytes(data))
    result = invoke(["shards", "verify", url, "--quick", *_options(s3_server)])
    assert result.exit_code == 1 and "train-000000: tar sha256 differs from its stats file" in result.output
    refused(["train", "stage2", "--shards", url, "--out", runs["base"] / "refused2", "--stage1",
             runs["base"] / "stage1.pt", *STAGE2, *_options(s3_server)],
            f"{url}/train-000000.tar: the sha256 of the bytes read differs")


def test_a_wrong_key_is_one_line_naming_the_url(runs, s3_server):
    wrong = _options(s3_server, secret="not-the-secret")
    refused(["shards", "verify", runs["url"], *wrong], runs["url"], "access denied")
    refused(["train", "stage2", "--shards", runs["url"], "--out", runs["base"] / "refused3", *STAGE2, *wrong],
            runs["url"], "access denied")


@pytest.mark.slow
def test_sigkill_during_upload_then_rerun_gives_the_same_objects(runs, s3_server):
    url = s3_server.make_bucket() + "/shards"
    bucket, client = url[5:].partition("/")[0], s3_server.client()
    command = [sys.executable, "-m", "gpf.cli", *map(str, runs["command"]), "--out", url, *_options(s3_server)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
        if any(k.endswith(".stats.json") for k in keys):          # the first shard is done, others under way
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    assert proc.wait(60) == -signal.SIGKILL, "the run ended before the kill; the test proved nothing"
    killed = s3_server.objects(url)
    assert "manifest.json" not in killed or not json.loads(killed["manifest.json"])["complete"]
    assert len([k for k in killed if k.endswith(".stats.json")]) < 10
    result = invoke([*runs["command"], "--out", url, *_options(s3_server)])
    assert result.exit_code == 0, result.output
    assert s3_server.objects(url) == _files(runs["local"])
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")


@pytest.mark.slow
def test_stopping_the_server_during_an_epoch_gives_one_error_in_bounded_time(runs, tmp_path):
    """A second server holds a copy; it stops after the first batch. The reader retries, then ends
    with one line naming the object (the child process is given 240 s: no hang)."""
    from helpers.s3server import S3Server

    script = tmp_path / "read.py"
    script.write_text(textwrap.dedent("""
        import json, sys, time
        from pathlib import Path
        from gpf.shards.reader import make_loader
        from gpf.shards.storage import Location
        marks = Path(sys.argv[2])
        loader = make_loader(Location(sys.argv[1], json.loads(sys.argv[3])), "test", 2, shuffle=False, num_workers=0)
        for n, batch in enumerate(loader):
            if n == 0:
                (marks / "first").write_text("ok")
                while not (marks / "stopped").exists():
                    time.sleep(0.05)
        print("finished without an error")
    """))
    with S3Server() as server:
        url = server.make_bucket() + "/shards"
        server.upload_folder(runs["local"], url)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        proc = subprocess.Popen([sys.executable, str(script), url, str(tmp_path), json.dumps(server.storage_options)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not (tmp_path / "first").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        server.stop()
        (tmp_path / "stopped").write_text("ok")
        out, err = proc.communicate(timeout=240)
    assert proc.returncode != 0, out
    last = err.strip().splitlines()[-1]
    assert "StorageError" in last and f"{url}/test-" in last and "failed 4 times" in last, err[-2000:]


def test_no_secret_in_any_file_gpf_wrote(runs, trained, s3_server):
    """Run last in the module: every local file and object written above, and every command's output."""
    secrets = [s3_server.secret.encode(), s3_server.key.encode()]
    written = {str(p): p.read_bytes() for p in runs["base"].rglob("*") if p.is_file()}
    for page in s3_server.client().list_buckets()["Buckets"]:
        written.update({f"s3://{page['Name']}/{k}": v for k, v in s3_server.objects(f"s3://{page['Name']}").items()})
    written.update({f"output {i}": text.encode() for i, text in enumerate(runs["outputs"])})
    assert len(written) > 50
    leaks = [name for name, data in written.items() if any(secret in data for secret in secrets)]
    assert not leaks
