"""A local Ray for the tests of the Ray engines: 2 CPUs, a small object store, no dashboard,
bound to 127.0.0.1 only, its files in a short temp dir, no authentication token under ~/.ray.

Ray replaces a loopback node address by the machine's interface address unless
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (``ray._private.services.resolve_ip_for_localhost``);
:func:`start_local_ray` sets it before Ray is imported and :func:`assert_loopback_only` checks
every node. Ray's temp dir is a ``tempfile.mkdtemp()``: pytest's ``tmp_path`` is too long for
Ray's AF_UNIX sockets (107 bytes).

:func:`extra_node` adds a second node (for the mixed-environment test) through Ray's own
``Node`` class, as ``ray.cluster_utils`` does (the ``ray start`` CLI refuses a second node
when clusters are confined to loopback), and removes it by its processes.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

RAY_TEST_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
                "RAY_USAGE_STATS_ENABLED": "0"}
LOOPBACK = "127.0.0.1"
NUM_CPUS = 2
OBJECT_STORE_BYTES = 150 * 1024 * 1024
#: Title Ray gives a worker process while it runs the preprocess shard task.
SHARD_TASK_TITLE = "ray::shard_task"
#: Title of a network actor's process (``ray::NetworkActor`` idle, ``ray::NetworkActor.run`` busy).
NETWORK_ACTOR_TITLE = "ray::NetworkActor"


@dataclass
class LocalRay:
    address: str          # the GCS address (host:port) other drivers connect to
    temp_dir: str


def start_local_ray() -> LocalRay:
    """``ray.init`` a one-node Ray in this process (see the module doc)."""
    os.environ.update(RAY_TEST_ENV)
    import ray

    temp_dir = tempfile.mkdtemp(prefix="gpfray")
    ray.init(num_cpus=NUM_CPUS, object_store_memory=OBJECT_STORE_BYTES, include_dashboard=False,
             _temp_dir=temp_dir, _node_ip_address=LOOPBACK, log_to_driver=False, configure_logging=False)
    assert_loopback_only()
    return LocalRay(address=ray.get_runtime_context().gcs_address, temp_dir=temp_dir)


def stop_local_ray(local: LocalRay) -> None:
    import ray

    ray.shutdown()
    shutil.rmtree(local.temp_dir, ignore_errors=True)


def assert_loopback_only() -> None:
    """Every node of the cluster (and the GCS) listens on 127.0.0.1."""
    import ray

    addresses = {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
    assert addresses == {LOOPBACK}, f"Ray nodes on {sorted(addresses)}, not {LOOPBACK} only"
    assert ray.get_runtime_context().gcs_address.startswith(LOOPBACK + ":")


def alive_node_count() -> int:
    import ray

    return sum(bool(n["Alive"]) for n in ray.nodes())


@contextmanager
def extra_node(local: LocalRay, env_vars: dict[str, str], num_cpus: int = 1) -> Iterator[None]:
    """A second Ray node on 127.0.0.1 whose workers see ``env_vars``; removed when the block ends."""
    from ray._private.node import Node
    from ray._private.parameter import RayParams

    before = alive_node_count()
    params = RayParams(gcs_address=local.address, node_ip_address=LOOPBACK, num_cpus=num_cpus, num_gpus=0,
                       object_store_memory=80 * 1024 * 1024, min_worker_port=0, max_worker_port=0,
                       include_log_monitor=False, node_manager_port=0, env_vars=env_vars,
                       temp_dir=local.temp_dir)
    params.dashboard_agent_listen_port = None
    node = Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)
    try:
        deadline = time.monotonic() + 120
        while alive_node_count() <= before:
            assert time.monotonic() < deadline, "the extra Ray node did not join within 120 s"
            time.sleep(0.2)
        assert_loopback_only()
        yield
    finally:
        node.kill_all_processes(check_alive=False, allow_graceful=True)
        deadline = time.monotonic() + 60
        while alive_node_count() > before and time.monotonic() < deadline:
            time.sleep(0.2)


def gpf_copy_with_version(folder: Path, version: str) -> Path:
    """A copy of the gpf package under ``folder/gpf`` that reports ``version``; returns ``folder``
    (a PYTHONPATH entry): a node where another gpf is installed."""
    source = Path(__file__).resolve().parents[2]
    shutil.copytree(source, folder / "gpf",
                    ignore=shutil.ignore_patterns(".git", "tests", "docs", "benchmarks", "__pycache__", ".venv"))
    (folder / "gpf" / "_version.py").write_text(f'__version__ = "{version}"\n')
    return folder


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def _descends_from_me(pid: int) -> bool:
    me = os.getpid()
    try:
        while pid > 1:
            pid = _parent(pid)
            if pid == me:
                return True
    except (OSError, ValueError, IndexError):
        return False
    return False


def processes_titled(title: str) -> list[int]:
    """Pids of the processes this test process started (Ray's workers, via its raylet) whose
    command line (Ray's process title) starts with ``title``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmdline.startswith(title) and _descends_from_me(int(entry.name)):
            pids.append(int(entry.name))
    return pids


def cli_env() -> dict[str, str]:
    """The environment for a ``python -m gpf.cli`` child process that connects to the test's Ray."""
    return dict(os.environ, **RAY_TEST_ENV, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
