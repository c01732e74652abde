"""Two-process DDP on CPU (gloo), started the way torchrun starts it: RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT in the environment, then the library entry point."""
from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from gpf.model.checkpoint import load_checkpoint, state_dict_digest

from test_train_helpers import SMALL_HEAD, TRAIN_COUNTS, stage1_checkpoint, write_shards

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
