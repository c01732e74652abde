"""DDP plumbing: process group from torchrun's environment, device choice, gathers.

``torchrun --no-python --nproc-per-node G [--nnodes N] gpf train stage2 ...``
sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; a plain
``gpf train`` run has none of them and runs as rank 0 of 1 without a process
group. NCCL is used on CUDA, gloo on CPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import GPFError
from ..model.device import resolve_device

_ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(GPFError):
    """A multi-process launch that cannot work; the message says what to fix."""


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialised_here: bool = False    # we created the process group (and must destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_world() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) from torchrun's variables; None outside torchrun."""
    if "WORLD_SIZE" not in os.environ:
        return None
    try:
        world = int(os.environ["WORLD_SIZE"])
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        values = ", ".join(f"{k}={os.environ.get(k)!r}" for k in _ENV_KEYS)
        raise DistributedError(f"torchrun environment variables are not integers ({values})") from None
    if world < 1 or not 0 <= rank < world:
        raise DistributedError(f"RANK={rank} is outside 0..{world - 1} (WORLD_SIZE={world})")
    return rank, world, local


def init_distributed(device_name: str = "auto") -> DistContext:
    """Join the process group torchrun describes (if any) and pick this rank's device."""
    world = env_world()
    if world is None or world[1] == 1:
        rank, size, local = world or (0, 1, 0)
        return DistContext(rank=rank, world_size=1, local_rank=local,
                           device=resolve_device(device_name, local))
    rank, size, local = world
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise DistributedError(f"WORLD_SIZE={size} but {', '.join(missing)} not set; "
                               "launch with `torchrun --nproc-per-node G gpf train ...`")
    device = resolve_device(device_name, local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    created = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=size)
        created = True
    return DistContext(rank=rank, world_size=size, local_rank=local, device=device,
                       initialised_here=created)


def shutdown(ctx: DistContext, wait_for_peers: bool = False) -> None:
    """Leave the process group we created.

    After a clean run every rank meets at a barrier first: a rank that tears
    gloo down while a peer still talks to it makes that peer abort (SIGABRT).
    After an error there is no barrier, since the peers may never arrive.
    """
    if ctx.initialised_here and dist.is_initialized():
        if wait_for_peers:
            barrier(ctx)
        dist.destroy_process_group()


def per_rank_batch_size(global_batch: int, world_size: int) -> int:
    """The global ``--batch-size`` split evenly across ranks."""
    if global_batch % world_size:
        raise DistributedError(
            f"--batch-size {global_batch} is global and must divide evenly across {world_size} "
            f"processes; use a multiple of {world_size} (e.g. {(global_batch // world_size + 1) * world_size})")
    return global_batch // world_size


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def all_reduce_max(ctx: DistContext, values: torch.Tensor) -> torch.Tensor:
    if ctx.distributed:
        values = values.to(ctx.device)
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values


def all_reduce_sum(ctx: DistContext, values: torch.Tensor) -> torch.Tensor:
    if ctx.distributed:
        values = values.to(ctx.device)
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def gather_rows(ctx: DistContext, rows: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``rows`` ([n_r, ...], n_r may differ) in rank order, on CPU.

    Used for evaluation: each rank scores a disjoint part of the validation
    split and all ranks compute the metrics over the union.
    """
    if not ctx.distributed:
        return rows.cpu()
    # a rank without validation data has an empty, shapeless tensor: take the others' row shape
    shapes = gather_objects(ctx, (int(rows.shape[0]), tuple(rows.shape[1:]), str(rows.dtype)))
    filled = [s for s in shapes if s[0] > 0]
    if filled and rows.shape[0] == 0:
        dtype = getattr(torch, filled[0][2].replace("torch.", ""))
        rows = torch.zeros((0,) + filled[0][1], dtype=dtype)
    local = rows.to(ctx.device).contiguous()
    counts = [torch.zeros(1, dtype=torch.long, device=ctx.device) for _ in range(ctx.world_size)]
    dist.all_gather(counts, torch.tensor([local.shape[0]], device=ctx.device))
    counts = [int(c.item()) for c in counts]
    padded = torch.zeros((max(counts),) + tuple(local.shape[1:]), dtype=local.dtype, device=ctx.device)
    padded[: local.shape[0]] = local
    buffers = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(buffers, padded)
    return torch.cat([b[:n] for b, n in zip(buffers, counts)]).cpu()


def gather_objects(ctx: DistContext, obj):
    """A list of every rank's picklable ``obj`` (rank order)."""
    if not ctx.distributed:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(ctx: DistContext, obj, src: int = 0):
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
