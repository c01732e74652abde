"""What the Ray engines share (pipeline/raycluster.py): one environment for all workers, the actor plan,
the driver's loop over units of work, its progress fields, and gpf's own local Ray on 127.0.0.1 only."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections import Counter

import pytest

from helpers.ray_cluster import RAY_TEST_ENV, cli_env
from gpf.errors import GPFError
from gpf.pipeline.raycluster import (ActorPlan, ClusterProgress, RayEngineError, RayOptions, UnitResult,
                                     WorkerEnvironmentError, check_reachable, check_same_environment, check_same_weights,
                                     plan_actors, run_units, task_slots)

ENV = {"gpf": "0.2.0", "python": "3.11.7", "torch": "2.14.1", "torchvision": "0.29.1", "numpy": "2.4.6",
       "cuda": False, "pil": {"flavour": "Pillow", "version": "13.0.0", "avx2": False}}


def _report(node: str, device: str | None = None, **changes) -> dict:
    report = {"node": node, "environment": dict(ENV, **changes)}
    if device:
        report["device"] = device
    return report


# ----------------------------------------------------------------------------- environments

def test_one_environment_is_recorded_with_the_actors_device_and_no_cuda_flag():
    reports = [_report("10.0.0.1", "cpu"), _report("10.0.0.2", cuda=True), _report("10.0.0.3")]
    recorded = check_same_environment(reports)
    assert recorded == dict(ENV, cuda=None, device="cpu")       # what the local engine records on a CPU
    assert list(recorded) == list(ENV) + ["device"]             # same key order as the local engine's


def test_a_mix_of_pil_flavours_is_refused_naming_the_nodes():
    simd = {"flavour": "pillow-simd", "version": "9.5.0", "avx2": True}
    with pytest.raises(WorkerEnvironmentError) as caught:
        check_same_environment([_report("10.0.0.1", "cpu"), _report("10.0.0.2", pil=simd)])
    message = str(caught.value)
    assert '"flavour": "Pillow"' in message and '"flavour": "pillow-simd"' in message
    assert "on 10.0.0.1" in message and "on 10.0.0.2" in message and "torch" not in message


def test_a_mix_of_torch_versions_or_device_types_is_refused():
    with pytest.raises(WorkerEnvironmentError, match=r'torch="2.5.0"'):
        check_same_environment([_report("a"), _report("b", torch="2.5.0")])
    with pytest.raises(WorkerEnvironmentError, match="different device types \\(cpu, cuda\\)"):
        check_same_environment([_report("a", "cuda"), _report("b", "cpu")])


def test_actors_that_loaded_other_weights_are_refused():
    reports = [dict(_report("10.0.0.1", "cpu"), digest="abc"), dict(_report("10.0.0.2", "cpu"), digest="xyz")]
    check_same_weights(reports[:1], "abc")
    with pytest.raises(WorkerEnvironmentError, match=r"actors on 10.0.0.2 \(xyz\) loaded other weights .*abc"):
        check_same_weights(reports, "abc")


def test_options_are_checked():
    with pytest.raises(RayEngineError, match="--ray-actors must be at least 1.*--ray-task-cpus must be positive"):
        RayOptions(actors=0, task_cpus=0).check()
    assert RayOptions(task_cpus=2.4).task_threads == 2 and RayOptions(task_cpus=0.25).task_threads == 1


# ----------------------------------------------------------------------------- on the local Ray

def test_actor_plans_on_a_cpu_cluster(local_ray):
    import ray

    plan = plan_actors(ray, "auto", RayOptions())
    assert plan == ActorPlan(count=1, num_gpus=0, num_cpus=1.0, device="cpu")
    assert task_slots(ray, plan, RayOptions()) == 1              # 2 CPUs, one for the actor
    assert task_slots(ray, plan_actors(ray, "cpu", RayOptions(actor_cpus=0.5, task_cpus=0.5)),
                      RayOptions(task_cpus=0.5)) == 3
    with pytest.raises(RayEngineError, match="has no GPU"):
        plan_actors(ray, "cuda", RayOptions())
    with pytest.raises(RayEngineError, match="choose one of auto, cpu, cuda"):
        plan_actors(ray, "tpu", RayOptions())
    with pytest.raises(RayEngineError, match="need more than the cluster's 2 CPUs"):
        plan_actors(ray, "cpu", RayOptions(actors=2))


def test_failing_units_are_named_the_others_finish_and_a_gpf_error_stops_the_run(local_ray):
    import ray

    def work(n: int):
        if n == 2:
            raise ValueError("unit two is broken")
        return n * 10

    task = ray.remote(work).options(num_cpus=1, max_retries=0)
    done: dict = {}
    failed = run_units(ray, [1, 2, 3, 4], task.remote, lambda n: f"unit-{n}",
                       lambda n, result: done.__setitem__(n, result), window=2)
    assert done == {1: 10, 3: 30, 4: 40}
    assert failed == ["unit-2: ValueError: unit two is broken"]

    def refuse(n: int):
        raise RayEngineError(f"node of unit {n} is in another environment")

    with pytest.raises(RayEngineError, match="another environment"):
        run_units(ray, [1], ray.remote(refuse).options(num_cpus=1, max_retries=0).remote, str,
                  lambda n, result: None, window=1)
    assert issubclass(RayEngineError, GPFError)


def test_progress_fields_show_status_counts_and_per_node_rates():
    progress = ClusterProgress(10, "x", enabled=False)
    progress.add(UnitResult(None, "10.0.0.1", 4, {"ok": 3, "missing": 1}))
    progress.add(UnitResult(None, "10.0.0.2", 2, {"ok": 2}))
    fields = progress.fields()
    assert fields["status"] == "missing 1 ok 5"
    assert fields["nodes"].startswith("10.0.0.1 ") and " 10.0.0.2 " in fields["nodes"]
    assert progress.progress.failed == 1 and progress.counts == Counter(ok=5, missing=1)
    rates = [float(part[:-2]) for part in fields["nodes"].split() if part.endswith("/s")]
    assert len(rates) == 2 and rates[0] == pytest.approx(2 * rates[1], rel=1e-3)    # 4 vs 2 images, same time


@pytest.mark.slow
def test_gpfs_own_local_ray_listens_on_127_0_0_1_only_with_a_token_in_no_file(tmp_path):
    script = textwrap.dedent("""
        import os
        from gpf.pipeline.raycluster import ray_session
        with ray_session() as ray:
            print(sorted({n["NodeManagerAddress"] for n in ray.nodes()}))
            print(ray.get_runtime_context().gcs_address)
            print(os.environ["RAY_AUTH_MODE"], len(os.environ["RAY_AUTH_TOKEN"]))
            print(ray.get(ray.remote(lambda: 6 * 7).remote()))
        print(sorted(k for k in os.environ if k.startswith("RAY_AUTH") or k.startswith("RAY_ENABLE")))
    """)
    home = tmp_path / "home"
    home.mkdir()
    ray_tmp = tempfile.mkdtemp(prefix="gpfray")            # short: Ray's sockets live there
    env = dict(cli_env(), RAY_TMPDIR=ray_tmp, HOME=str(home))
    for name in (*RAY_TEST_ENV, "RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(name, None)                                  # gpf sets what it needs itself
    try:
        run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert run.returncode == 0, run.stderr[-3000:]
    nodes, gcs, auth, answer, after = run.stdout.strip().splitlines()[-5:]
    assert nodes == "['127.0.0.1']" and gcs.startswith("127.0.0.1:")
    assert auth == "token 64" and answer == "42"             # token authentication on, and it works
    assert after == "[]"                                     # the driver's environment is given back
    assert not (home / ".ray").exists(), "nothing may be written under ~/.ray"


def test_an_unreachable_cluster_address_is_one_line_in_bounded_time_before_anything_is_written(tmp_path):
    import socket

    from helpers.cli import refused

    with socket.socket() as probe:          # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(RayEngineError, match=f"cannot reach the Ray cluster at 127.0.0.1:{port}"):
        check_reachable(f"127.0.0.1:{port}", timeout_s=2)
    with pytest.raises(RayEngineError, match="is not host:port"):
        check_reachable("headnode")
    check_reachable(None)
    check_reachable("auto")
    photos = tmp_path / "photos"
    photos.mkdir()
    out = tmp_path / "scores"
    refused(["predict", photos, "--checkpoint", tmp_path, "--out", out, "--engine", "ray",
             "--ray-address", f"127.0.0.1:{port}"], f"127.0.0.1:{port}")
    assert not out.exists()
