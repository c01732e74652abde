"""`gpf preprocess --engine ray` (pipeline/ray_preprocess.py) against the local engine, on the session's
local Ray (2 CPUs, 127.0.0.1 only; tests/helpers/ray_cluster.py).

The reference is the local engine's output for the same config: every tar, Parquet, stats file,
preprocess.json and the manifest must be the same bytes, whatever happens to the Ray run (a worker
killed mid-run, the driver killed and the command run again, a shard failing and redone).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers.ava import make_ava
from helpers.cli import invoke
from helpers.ray_cluster import (NETWORK_ACTOR_TITLE, SHARD_TASK_TITLE, cli_env, extra_node, gpf_copy_with_version,
                                 processes_titled)
from gpf.pipeline.preprocess import IncompleteRunError, PreprocessConfig, run_preprocess
from gpf.pipeline.raycluster import RayOptions, WorkerEnvironmentError

VIEW = 64
N_IMAGES = 30
BROKEN = "1007"           # an image file cut short: a failure row in both engines
OPTIONS = dict(backbone="tiny", weights="none", view_size=VIEW, samples_per_shard=4, batch_size=3,
               random_crops=1, store_features=True, progress=False)


@pytest.fixture(scope="module")
def ava_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ava")
    make_ava(root, n=N_IMAGES)
    path = root / "images" / f"{BROKEN}.jpg"
    path.write_bytes(path.read_bytes()[:200])
    return root


def _config(root: Path, out: Path, **kw) -> PreprocessConfig:
    return PreprocessConfig(dataset="ava", root=str(root), out=str(out), **dict(OPTIONS, **kw))


def _cli_args(root: Path, out: Path) -> list[str]:
    return ["preprocess", "ava", str(root), "--out", str(out), "--backbone", "tiny", "--weights", "none",
            "--view-size", str(VIEW), "--samples-per-shard", "4", "--batch-size", "3", "--random-crops", "1",
            "--store-features", "--quiet", "--max-failure-rate", "0.1"]


def output_files(out: Path) -> dict[str, bytes]:
    """Every file a run leaves (tars, meta/ Parquet, stats, preprocess.json, manifest.json)."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def assert_same_files(out: Path, reference: dict[str, bytes]) -> None:
    files = output_files(out)
    assert sorted(files) == sorted(reference)
    different = [name for name in reference if files[name] != reference[name]]
    assert not different, f"files differing from the local engine's: {different}"


@pytest.fixture(scope="module")
def local_files(tmp_path_factory, ava_root) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("local")
    summary = run_preprocess(_config(ava_root, out, max_failure_rate=0.1))
    assert summary.counts["ok"] == N_IMAGES - 1 and summary.total == N_IMAGES
    files = output_files(out)
    assert "manifest.json" in files and sum(name.endswith(".tar") for name in files) >= 8
    return files


# ----------------------------------------------------------------------------- determinism

@pytest.mark.parametrize("engine", ["ray", "node-ranks"])
def test_every_engine_writes_the_local_engines_bytes(engine, local_ray, ava_root, local_files, tmp_path):
    out = tmp_path / "out"
    if engine == "ray":
        run = invoke(_cli_args(ava_root, out) + ["--engine", "ray"])
        assert run.exit_code == 0, run.output
        assert f"images: {N_IMAGES} (" in run.output and f"ok {N_IMAGES - 1}" in run.output
    else:                            # two independent jobs, --num-nodes 2 --node-rank 0|1
        for rank in (0, 1):
            run_preprocess(_config(ava_root, out, num_nodes=2, node_rank=rank, max_failure_rate=0.1))
    assert_same_files(out, local_files)


@pytest.mark.slow
@pytest.mark.parametrize("victim", [SHARD_TASK_TITLE, NETWORK_ACTOR_TITLE])
def test_a_ray_worker_killed_mid_run_is_retried_and_the_bytes_stay(victim, local_ray, ava_root, local_files,
                                                                   tmp_path):
    """A shard task's worker killed: Ray retries the task. The network actor killed: Ray restarts it
    and retries the calls in flight. Either way every shard is written, with the local engine's bytes."""
    out = tmp_path / "out"
    result: dict = {}

    def run_it():
        try:
            result["summary"] = _run_ray(_config(ava_root, out, max_failure_rate=0.1))
        except BaseException as exc:  # noqa: BLE001 - reported below
            result["error"] = exc

    run = threading.Thread(target=run_it)
    run.start()
    killed = None
    while run.is_alive() and killed is None:
        if victim == SHARD_TASK_TITLE or list(out.glob("*.stats.json")):   # the actor: once a shard is done
            for pid in processes_titled(victim):
                os.kill(pid, signal.SIGKILL)
                killed = pid
                break
        time.sleep(0.005)
    run.join(timeout=300)
    assert killed is not None, f"no {victim} process was seen running; nothing was killed"
    assert not Path(f"/proc/{killed}").exists() or "zombie" in Path(f"/proc/{killed}/status").read_text()
    assert "error" not in result, result.get("error")
    assert result["summary"].written_shards == len([n for n in local_files if n.endswith(".tar")])
    assert_same_files(out, local_files)


@pytest.mark.slow
def test_shards_whose_network_is_gone_for_good_fail_by_name_not_as_failure_rows(local_ray, ava_root, local_files,
                                                                                 tmp_path):
    import json

    out = tmp_path / "out"
    result: dict = {}

    def run_it():
        try:
            _run_ray(_config(ava_root, out, max_failure_rate=0.1), retries=0, actor_restarts=0)
        except BaseException as exc:  # noqa: BLE001 - checked below
            result["error"] = exc

    run = threading.Thread(target=run_it)
    run.start()
    while run.is_alive() and not list(out.glob("*.stats.json")):
        time.sleep(0.005)
    for pid in processes_titled(NETWORK_ACTOR_TITLE):
        os.kill(pid, signal.SIGKILL)
    run.join(timeout=300)
    error = result.get("error")
    assert isinstance(error, IncompleteRunError), error
    failed = error.summary.failed_shards
    assert failed and all("NetworkLost: every network actor is gone" in line for line in failed)
    written = [json.loads(p.read_text())["status_counts"] for p in out.glob("*.stats.json")]
    assert all("attention_error" not in counts for counts in written)     # nothing written as a failure row
    assert len(written) + len(failed) == len([n for n in local_files if n.endswith(".tar")])


def _run_ray(cfg: PreprocessConfig, **options):
    from gpf.pipeline.ray_preprocess import run_preprocess_ray

    return run_preprocess_ray(cfg, RayOptions(**options))


@pytest.mark.slow
def test_a_rerun_after_the_driver_is_killed_resumes_and_matches(local_ray, ava_root, local_files, tmp_path):
    out = tmp_path / "out"
    args = _cli_args(ava_root, out) + ["--engine", "ray", "--ray-address", local_ray.address]
    driver = subprocess.Popen([sys.executable, "-m", "gpf.cli", *args], env=cli_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("*.stats.json")) and driver.poll() is None:
            assert time.monotonic() < deadline, "the driver wrote no shard in 240 s"
            time.sleep(0.01)
        driver.kill()                  # SIGKILL: no clean-up of any kind
        output = driver.communicate(timeout=60)[0].decode()
    finally:
        if driver.poll() is None:
            driver.kill()
    done_before = len(list(out.glob("*.stats.json")))
    assert done_before >= 1, output
    summary = _run_ray(_config(ava_root, out, max_failure_rate=0.1))
    assert summary.skipped_shards >= done_before - 1     # a shard finishing as the kill landed may count too
    assert summary.written_shards + summary.skipped_shards == summary.total_shards
    assert_same_files(out, local_files)


@pytest.mark.slow
def test_a_shard_failing_after_its_retries_is_named_the_rest_written_then_redone(
        local_ray, ava_root, local_files, tmp_path):
    out = tmp_path / "out"
    blocker = out / "train-000001.tar"
    (blocker / "in-the-way").mkdir(parents=True)       # the shard's tar cannot be renamed into place
    with pytest.raises(IncompleteRunError, match="train-000001") as caught:
        _run_ray(_config(ava_root, out, max_failure_rate=0.1), retries=1)
    summary = caught.value.summary
    assert [name.split(":")[0] for name in summary.failed_shards] == ["train-000001"]
    assert any("shards failed after their retries: 1" in line for line in summary.lines())
    tars = sorted(n for n in local_files if n.endswith(".tar"))
    assert sorted(p.name for p in out.glob("*.stats.json")) == sorted(
        n.replace(".tar", ".stats.json") for n in tars if n != "train-000001.tar")
    assert not (out / "manifest.json").exists()
    (blocker / "in-the-way").rmdir()
    blocker.rmdir()
    again = _run_ray(_config(ava_root, out, max_failure_rate=0.1))
    assert (again.written_shards, again.skipped_shards) == (1, len(tars) - 1)
    assert_same_files(out, local_files)


# ----------------------------------------------------------------------------- refusals

@pytest.mark.slow
def test_a_worker_in_another_environment_is_refused(local_ray, ava_root, tmp_path):
    other = gpf_copy_with_version(tmp_path / "other-site", "0.0.0+other")
    out = tmp_path / "out"
    with extra_node(local_ray, {"PYTHONPATH": str(other)}):
        with pytest.raises(WorkerEnvironmentError) as caught:
            _run_ray(_config(ava_root, out))
    message = str(caught.value)
    assert "environments differ" in message and '"0.0.0+other"' in message and "gpf=" in message
    assert "install the same versions on every node" in message
    assert not out.exists() or not any(out.iterdir()), "nothing may be written for a refused run"


def test_without_ray_the_engine_says_what_to_install(monkeypatch, ava_root, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)            # `import ray` fails as if not installed
    run = invoke(_cli_args(ava_root, tmp_path / "out") + ["--engine", "ray"])
    assert run.exit_code != 0
    assert "Error: --engine ray needs Ray, which is not installed here: install gpf[ray]" in run.output
    assert "Traceback" not in run.output


def test_actors_load_the_checkpoint_by_its_absolute_path(tmp_path, monkeypatch):
    from gpf.pipeline.ray_preprocess import BuildAttention

    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "w.pt").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    build = BuildAttention.of(_config(tmp_path, tmp_path / "out", backbone=None, stage1="runs/s1"))
    assert build.cfg.stage1 == str(tmp_path / "runs" / "s1")
    assert BuildAttention.of(_config(tmp_path, "o", weights="runs/w.pt")).cfg.weights == str(tmp_path / "runs/w.pt")
    assert BuildAttention.of(_config(tmp_path, "o")).cfg.weights == "none"


def test_node_ranks_are_refused_with_the_ray_engine(ava_root, tmp_path):
    run = invoke(_cli_args(ava_root, tmp_path / "out") + ["--engine", "ray", "--num-nodes", "2", "--node-rank", "1"])
    assert run.exit_code != 0 and "drop them" in run.output


def test_ray_options_need_the_ray_engine(ava_root, tmp_path):
    run = invoke(_cli_args(ava_root, tmp_path / "out") + ["--ray-actors", "2"])
    assert run.exit_code == 2 and "--ray-actors apply to --engine ray only" in run.output
