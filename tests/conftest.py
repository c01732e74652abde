import os

import pytest

# Keep test processes from oversubscribing the (small) CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


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


@pytest.fixture(scope="session")
def local_ray_session():
    """One local Ray for the whole session (tests/helpers/ray_cluster.py), started on first use."""
    from helpers.ray_cluster import start_local_ray, stop_local_ray

    local = start_local_ray()
    yield local
    stop_local_ray(local)


@pytest.fixture
def local_ray(local_ray_session):
    """The session's local Ray, checked to listen on 127.0.0.1 only before the test runs."""
    from helpers.ray_cluster import assert_loopback_only

    assert_loopback_only()
    return local_ray_session
