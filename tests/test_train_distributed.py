"""DDP plumbing (gpf.train.distributed): torchrun's environment, batch split, gathers.

The end-to-end test runs two processes on CPU (gloo), started the way torchrun
starts them: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in the
environment, then the library entry point.
"""
from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gpf.model.checkpoint import load_checkpoint, state_dict_digest
from gpf.train.distributed import (DistContext, DistributedError, env_world, gather_objects, gather_rows,
                                   init_distributed, per_rank_batch_size)

from helpers.training import SMALL_HEAD, TRAIN_COUNTS, stage1_checkpoint, write_shards

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, shards: str, out: str, report_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from gpf.train.config import Stage2Config
    from gpf.train.loop import TrainHooks
    from gpf.train.stage2 import train_stage2

    keys: dict[int, list[str]] = {}
    steps: dict[int, int] = {}
    final = {}

    def after_step(info):
        keys.setdefault(info.epoch, []).extend(info.batch["key"])
        steps[info.epoch] = info.step
        final["model"] = info.model

    # workers=0: children of mp.spawn would start DataLoader workers with 'spawn' (slow re-imports);
    # torchrun's processes fork them. The code path under test is the same.
    cfg = Stage2Config(out=out, shards=shards, backbone="tiny", weights="none", epochs=2, batch_size=4,
                       lr=0.05, workers=0, progress=False, tensorboard=False, device="cpu",
                       use_features="no", **SMALL_HEAD)
    result = train_stage2(cfg, hooks=TrainHooks(after_step=after_step))
    with open(os.path.join(report_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"keys": keys, "steps": steps, "digest": state_dict_digest(final["model"].state_dict()),
                   "val_loss": result.history[-1]["val_loss"]}, f)


@pytest.mark.slow
def test_two_gloo_processes_see_disjoint_samples_take_equal_steps_and_end_identical(tmp_path):
    assert len(TRAIN_COUNTS) % 2 == 1            # an odd number of shards over two ranks
    ckpt = stage1_checkpoint(tmp_path / "stage1.pt")
    write_shards(tmp_path / "shards", ckpt)
    reports = tmp_path / "reports"
    reports.mkdir()
    mp.spawn(_worker, args=(_free_port(), str(tmp_path / "shards"), str(tmp_path / "run"), str(reports)),
             nprocs=WORLD, join=True)
    ranks = [json.loads((reports / f"rank{r}.json").read_text()) for r in range(WORLD)]

    # per-rank batch = 4 / 2; steps per epoch = floor(24 samples / (2 ranks x 2)) = 6 on both ranks
    assert ranks[0]["steps"] == ranks[1]["steps"] == {"1": 6, "2": 6}
    for epoch in ("1", "2"):
        a, b = set(ranks[0]["keys"][epoch]), set(ranks[1]["keys"][epoch])
        assert not a & b, f"epoch {epoch}: both ranks trained on {sorted(a & b)}"
    assert ranks[0]["digest"] == ranks[1]["digest"]          # weights and BN buffers identical
    assert ranks[0]["val_loss"] == ranks[1]["val_loss"]      # metrics gathered over all ranks

    ckpt = load_checkpoint(tmp_path / "run" / "last.pt", expect="stage2")   # written by rank 0 only
    assert state_dict_digest(ckpt.state_dict) == ckpt.digest == ranks[0]["digest"]
    assert ckpt.train["world_size"] == WORLD and len(ckpt.train["rng"]["ranks"]) == WORLD


def test_global_batch_is_split_across_ranks():
    assert per_rank_batch_size(64, 4) == 16
    with pytest.raises(DistributedError, match="--batch-size 10 .* 3 processes"):
        per_rank_batch_size(10, 3)


def test_gather_rows_without_a_process_group_is_the_identity():
    rows = torch.arange(6.0).view(3, 2)
    assert torch.equal(gather_rows(DistContext(), rows), rows)


# ----------------------------------------------------------------------------- torchrun's environment

TORCHRUN_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def torchrun_env(monkeypatch):
    """A clean slate of torchrun's variables; returns a setter (None deletes a variable)."""
    for key in TORCHRUN_KEYS:
        monkeypatch.delenv(key, raising=False)

    def set_env(**values):
        for key, value in values.items():
            if value is None:
                monkeypatch.delenv(key, raising=False)
            else:
                monkeypatch.setenv(key, str(value))
    return set_env


def test_plain_run_is_rank_0_of_1_without_a_process_group(torchrun_env):
    assert env_world() is None
    ctx = init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.is_main, ctx.distributed) == (0, 1, 0, True, False)
    assert ctx.device == torch.device("cpu") and not ctx.initialised_here
    assert not dist.is_initialized()
    assert gather_objects(ctx, {"a": 1}) == [{"a": 1}]


def test_torchrun_variables_are_read_and_local_rank_defaults_to_rank(torchrun_env):
    torchrun_env(RANK=3, WORLD_SIZE=4, LOCAL_RANK=1)
    assert env_world() == (3, 4, 1)
    torchrun_env(RANK=2, LOCAL_RANK=None)
    assert env_world() == (2, 4, 2)
    torchrun_env(RANK=None, WORLD_SIZE=1)            # a one-process torchrun: no process group
    ctx = init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.distributed) == (0, 1, False) and not dist.is_initialized()


@pytest.mark.parametrize("env, message", [
    ({"RANK": "one", "WORLD_SIZE": "2"}, r"not integers .*RANK='one'"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, r"RANK=2 is outside 0\.\.1 \(WORLD_SIZE=2\)"),
    ({"RANK": "0", "WORLD_SIZE": "0"}, r"outside"),
])
def test_bad_torchrun_variables_are_named(torchrun_env, env, message):
    torchrun_env(**env)
    with pytest.raises(DistributedError, match=message):
        env_world()


def test_several_processes_without_a_master_address_say_how_to_launch(torchrun_env):
    torchrun_env(RANK=0, WORLD_SIZE=2, LOCAL_RANK=0, MASTER_PORT=29500)
    with pytest.raises(DistributedError, match=r"WORLD_SIZE=2 but MASTER_ADDR not set; launch with `torchrun"):
        init_distributed("cpu")
    assert not dist.is_initialized()


@pytest.mark.parametrize("global_batch, world", [(64, 1), (64, 2), (96, 3), (8, 8)])
def test_per_rank_batches_add_up_to_the_global_batch(global_batch, world):
    assert per_rank_batch_size(global_batch, world) * world == global_batch


def test_uneven_batch_suggests_the_next_multiple():
    with pytest.raises(DistributedError, match=r"use a multiple of 4 \(e\.g\. 68\)"):
        per_rank_batch_size(65, 4)


def test_gather_rows_of_one_process_keeps_shape_dtype_and_moves_to_cpu():
    rows = torch.zeros((0, 10), dtype=torch.float16)
    gathered = gather_rows(DistContext(), rows)
    assert gathered.shape == (0, 10) and gathered.dtype == torch.float16 and gathered.device.type == "cpu"
