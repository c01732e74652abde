import os

import pytest

# Keep test processes from oversubscribing the (small) CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


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
