"""A real S3-compatible server on 127.0.0.1 for tests: moto's server mode, with authentication on.

Reuse it from any test through the ``s3_server`` fixture of tests/conftest.py (session scope), or
start one yourself::

    from helpers.s3server import S3Server
    with S3Server() as server:            # a subprocess on a free loopback port
        server.url                        # http://127.0.0.1:PORT
        server.storage_options            # for gpf: {"endpoint_url", "key", "secret", ...}
        server.make_bucket()              # a new empty bucket -> "s3://gpf-test-1"
        server.env()                      # AWS_* variables for a child process (boto3/s3fs read them)

moto accepts any key by default; this server counts the first
``INITIAL_NO_AUTH_ACTION_COUNT`` requests unauthenticated, which :meth:`S3Server.start` spends on
creating an IAM user with an S3 policy and an access key. Every later request must be signed with
that key, so a wrong key is refused as on AWS. The server is a separate process (``python -m
moto.server``): a test can stop it (:meth:`S3Server.stop`) to see what gpf does when the store
goes away, and a benchmark can measure its CPU time (:meth:`S3Server.cpu_seconds`).
It binds 127.0.0.1 only (asserted) and never reaches the network.
"""
from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

#: Requests moto serves without authentication: create_user, put_user_policy, create_access_key.
NO_AUTH_REQUESTS = 3
REGION = "us-east-1"
_POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class S3Server:
    """moto's S3 server in a subprocess on a free 127.0.0.1 port, authentication on (see the module doc)."""

    def __init__(self, log: str | os.PathLike | None = None):
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self.key = self.secret = None
        self._buckets = itertools.count(1)
        self._log = log

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def storage_options(self) -> dict:
        """gpf's ``--storage-options`` for this server (the key is the IAM user's)."""
        return {"endpoint_url": self.url, "key": self.key, "secret": self.secret,
                "client_kwargs": {"region_name": REGION}}

    def env(self) -> dict:
        """Variables through which a child process (``gpf ...``) finds this server and its key."""
        return {"AWS_ACCESS_KEY_ID": self.key, "AWS_SECRET_ACCESS_KEY": self.secret,
                "AWS_DEFAULT_REGION": REGION, "AWS_ENDPOINT_URL": self.url, "AWS_ENDPOINT_URL_S3": self.url}

    def client(self, key: str | None = None, secret: str | None = None):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name=REGION,
                            aws_access_key_id=key or self.key, aws_secret_access_key=secret or self.secret)

    # -- life cycle
    def start(self, timeout_s: float = 30.0) -> "S3Server":
        self.port = free_port()
        env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT=str(NO_AUTH_REQUESTS))
        for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "HTTP_PROXY", "HTTPS_PROXY"):
            env.pop(name, None)
        out = open(self._log, "ab") if self._log else subprocess.DEVNULL
        self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                         "-p", str(self.port)], env=env, stdout=out, stderr=out)
        self._wait_until_up(timeout_s)
        self._assert_loopback_only()
        self._create_user()
        return self

    def _wait_until_up(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.process.returncode} (is moto[server] installed?)")
            try:
                urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1).close()   # not counted by auth
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto server did not answer on {self.url} within {timeout_s:.0f} s")
                time.sleep(0.1)

    def _assert_loopback_only(self) -> None:
        """The server listens on 127.0.0.1, not on every interface."""
        assert self.url.startswith("http://127.0.0.1:")
        hostname = socket.gethostname()
        try:
            outside = {a[4][0] for a in socket.getaddrinfo(hostname, None, socket.AF_INET)} - {"127.0.0.1"}
        except OSError:
            outside = set()
        for address in outside:
            if address.startswith("127."):
                continue
            with socket.socket() as sock:
                sock.settimeout(0.5)
                assert sock.connect_ex((address, self.port)) != 0, f"moto server reachable on {address}"

    def _create_user(self) -> None:
        import boto3

        iam = boto3.client("iam", endpoint_url=self.url, region_name=REGION, aws_access_key_id="setup",
                           aws_secret_access_key="setup")
        iam.create_user(UserName="gpf-test")
        iam.put_user_policy(UserName="gpf-test", PolicyName="s3", PolicyDocument=json.dumps(_POLICY))
        key = iam.create_access_key(UserName="gpf-test")["AccessKey"]
        self.key, self.secret = key["AccessKeyId"], key["SecretAccessKey"]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> "S3Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- helpers for tests and benchmarks
    def make_bucket(self, name: str | None = None) -> str:
        """A new, empty bucket; returns its ``s3://`` URL."""
        name = name or f"gpf-test-{next(self._buckets)}"
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def objects(self, url: str) -> dict[str, bytes]:
        """Every object below ``s3://bucket/prefix``, by key relative to the prefix."""
        bucket, _, prefix = url[len("s3://"):].partition("/")
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        client, out = self.client(), {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                out[item["Key"][len(prefix):]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        return out

    def upload_folder(self, folder: str | os.PathLike, url: str) -> None:
        """Copy every file below a local folder to ``url`` (keys = relative paths)."""
        bucket, _, prefix = url[len("s3://"):].partition("/")
        client = self.client()
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                key = "/".join(p for p in (prefix.rstrip("/"), path.relative_to(folder).as_posix()) if p)
                client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used so far (Linux /proc)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
