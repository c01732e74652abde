import os

# Keep test processes from oversubscribing the (small) CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1 with authentication on, shared by the session (tests/helpers/s3server.py).

    ``s3_server.make_bucket()`` gives each test its own bucket; ``s3_server.storage_options`` are
    gpf's ``--storage-options`` for it. Skipped only where ``moto[server]`` is not installed
    (``pip install -e '.[test]'`` installs it).
    """
    pytest.importorskip("moto.server", reason="moto[server] is in the test extra: pip install -e '.[test]'")
    pytest.importorskip("s3fs", reason="s3fs is in the test extra: pip install -e '.[test]'")
    from helpers.s3server import S3Server

    server = S3Server().start()
    try:
        yield server
    finally:
        server.stop()
