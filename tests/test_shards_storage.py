"""`gpf.shards.storage`: local paths and fsspec URLs behind one interface, tested on disk and on a real
S3 server (moto on 127.0.0.1, authentication on: the `s3_server` fixture of conftest.py)."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from gpf.shards.storage import (Location, MissingFilesystemError, ObjectStream, StorageError, StorageNotFoundError,
                                StoragePermissionError, is_url, local_file, parse_options, public_url, retrying,
                                using_options)


# ----------------------------------------------------------------------------- names

@pytest.mark.parametrize("text, url", [("s3://b/x", True), ("gs://b", True), ("https://h/p?q", True),
                                       ("hf://datasets/x", True), ("file:///tmp/x", False), ("/tmp/x", False),
                                       ("rel/x", False), ("C:/x", False)])
def test_is_url(text, url):
    assert is_url(text) is url


@pytest.mark.parametrize("given, public", [
    ("s3://bucket/shards", "s3://bucket/shards"),
    ("s3://AKIAX:s3cr3t@bucket/shards", "s3://bucket/shards"),
    ("https://host/a/b.tar?X-Amz-Signature=abc&X-Amz-Credential=k#frag", "https://host/a/b.tar"),
    ("/local/path?not-a-query", "/local/path?not-a-query"),
])
def test_public_url_drops_credentials_and_signed_queries(given, public):
    assert public_url(given) == public
    assert str(Location(given)) == public


def test_file_urls_are_local_paths(tmp_path):
    location = Location(f"file://{tmp_path}/x")
    assert location.local == tmp_path / "x" and not location.remote


def test_join_and_name():
    location = Location("s3://bucket/run")
    assert location.join("meta", "a.parquet").url == "s3://bucket/run/meta/a.parquet"
    assert (location / "b.tar").name == "b.tar"


def test_parse_options():
    assert parse_options('{"endpoint_url": "http://x"}') == {"endpoint_url": "http://x"}
    assert parse_options(None) == {}
    for bad in ("[1]", "{not json"):
        with pytest.raises(Exception, match="JSON object"):
            parse_options(bad)


def test_options_never_print_or_repr():
    location = Location("s3://bucket/x", {"secret": "s3cr3t-value"})
    assert "s3cr3t" not in f"{location} {location!r}"


def test_using_options_gives_defaults_and_restores():
    with using_options({"anon": True}):
        assert Location("s3://b/x").options == {"anon": True}
        assert Location("s3://b/x", {"key": "k"}).options == {"key": "k"}
    assert Location("s3://b/x").options == {}


def test_missing_filesystem_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gcsfs", None)     # as if gcsfs were not installed
    with pytest.raises(MissingFilesystemError, match=r"gs://bucket/x: .*pip install 'gpf\[gcs\]'"):
        Location("gs://bucket/x").exists()


def test_unknown_protocol_is_one_clear_error():
    with pytest.raises(StorageError, match="nosuch://b/x: .*Protocol not known"):
        Location("nosuch://b/x").exists()


def test_retrying_retries_transient_errors_then_names_the_location():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("reset")
        return "ok"
    assert retrying(flaky, "s3://b/x", "reading it", backoff_s=0) == "ok" and len(calls) == 3

    def down():
        raise ConnectionError("refused")
    with pytest.raises(StorageError, match=r"s3://b/x: reading it failed 4 times.*ConnectionError"):
        retrying(down, "s3://b/x", "reading it", backoff_s=0)


def test_permission_and_missing_errors_are_not_retried():
    calls = []

    def denied():
        calls.append(1)
        raise PermissionError("Forbidden")
    with pytest.raises(StoragePermissionError, match="s3://b/x: access denied"):
        retrying(denied, "s3://b/x", "reading it", backoff_s=0)
    assert len(calls) == 1


# ----------------------------------------------------------------------------- local and remote alike

@pytest.fixture(params=["local", "s3"])
def place(request, tmp_path):
    """The same tests on a local folder and on an S3 prefix."""
    if request.param == "local":
        return Location(tmp_path / "place")
    server = request.getfixturevalue("s3_server")
    return Location(server.make_bucket() + "/place", server.storage_options)


def test_write_list_read_delete(place):
    (place / "a.bin").write_bytes(b"hello")
    place.join("meta").makedirs()
    (place / "meta" / "b.bin").write_bytes(b"x" * 10)
    assert {n: i.size for n, i in place.list().items()} == {"a.bin": 5}
    assert (place / "a.bin").read_bytes() == b"hello" and (place / "a.bin").info().size == 5
    assert (place / "a.bin").info().etag
    assert place.is_dir() and (place / "a.bin").exists() and not (place / "zz").exists()
    (place / "a.bin").delete()
    (place / "a.bin").delete()                       # deleting what is gone is no error
    assert "a.bin" not in place.list()
    with pytest.raises(StorageNotFoundError, match="zz"):
        (place / "zz").read_bytes()


def test_upload_appears_only_on_commit_and_abort_leaves_nothing(place):
    place.makedirs()
    data = os.urandom(6 << 20)                       # more than one 5 MiB part: a multipart upload on S3
    upload = (place / "big.tar").upload(".big.tar.tmp")
    upload.write(data[:3 << 20])
    upload.write(data[3 << 20:])
    assert "big.tar" not in place.list()
    upload.commit()
    assert (place / "big.tar").read_bytes() == data
    aborted = (place / "gone.tar").upload(".gone.tar.tmp")
    aborted.write(data)
    aborted.abort()
    assert set(place.list()) == {"big.tar"}


def test_stream_reads_ranges_hashes_and_skips(place):
    data = os.urandom(300_000)
    (place / "x").write_bytes(data)
    with (place / "x").stream(chunk=7_000, readahead=2) as stream:
        assert stream.read(10) == data[:10]
        stream.seek(100_000, os.SEEK_CUR)            # skips by reading: the digest still covers it
        assert stream.read(5) == data[100_010:100_015]
        stream.drain()
        assert stream.hexdigest() == hashlib.sha256(data).hexdigest()
        assert stream.read(1) == b""


def test_stream_of_an_object_shorter_than_expected_is_refused(place):
    (place / "x").write_bytes(b"abc")
    with pytest.raises(StorageError, match="expected"):
        ObjectStream(place / "x", size=10, chunk=4, readahead=0).read()


def test_local_file_fetches_a_url_once_and_finds_run_checkpoints(s3_server):
    url = s3_server.make_bucket()
    options = s3_server.storage_options
    Location(url + "/run/last.pt", options).write_bytes(b"last")
    Location(url + "/model.pt", options).write_bytes(b"model")
    first = local_file(Location(url + "/model.pt", options))
    assert first.read_bytes() == b"model" and local_file(Location(url + "/model.pt", options)) == first
    assert local_file(Location(url + "/run", options), within=("best.pt", "last.pt")).read_bytes() == b"last"
    with pytest.raises(StorageNotFoundError, match="holds no best.pt or last.pt"):
        local_file(Location(url, options), within=("best.pt", "last.pt"))


def test_wrong_key_is_one_line_naming_the_url(s3_server):
    url = s3_server.make_bucket() + "/x.bin"
    Location(url, s3_server.storage_options).write_bytes(b"x")
    wrong = dict(s3_server.storage_options, secret="not-the-secret")
    with pytest.raises(StoragePermissionError) as caught:
        Location(url, wrong).read_bytes()
    assert str(caught.value).startswith(f"{url}: access denied") and "\n" not in str(caught.value)


def test_killed_upload_leaves_no_object_and_the_next_writer_aborts_it(s3_server, tmp_path):
    """A writer SIGKILLed inside a multipart upload: the key does not exist, the upload stays
    unfinished on the server until the next writer of that key aborts it."""
    url = s3_server.make_bucket()
    script = tmp_path / "writer.py"
    script.write_text(textwrap.dedent(f"""
        import json, os, signal, sys
        from gpf.shards.storage import Location
        upload = Location({url!r} + "/p/x.tar", json.loads(sys.argv[1])).upload()
        upload.write(os.urandom(6 << 20))            # one part is sent
        upload.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    """))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, str(script), json.dumps(s3_server.storage_options)], env=env,
                          timeout=120, capture_output=True)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    client, bucket = s3_server.client(), url[len("s3://"):]
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    place = Location(url + "/p", s3_server.storage_options)
    assert "x.tar" not in place.list()
    upload = (place / "x.tar").upload()
    upload.write(b"new")
    upload.commit()
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert (place / "x.tar").read_bytes() == b"new"


def test_cli_names_the_extra_of_a_missing_filesystem_in_one_line(monkeypatch):
    from helpers.cli import refused

    monkeypatch.setitem(sys.modules, "gcsfs", None)
    refused(["shards", "info", "gs://bucket/shards"], "gs://bucket/shards", "pip install 'gpf[gcs]'")
