"""Run folders: where a run writes, how ``--resume`` finds its state, what rank 0 logs.

A run folder holds ``config.yaml`` (the resolved config), ``last.pt``,
``best.pt``, ``metrics.csv``, ``train.log`` and, when tensorboard is installed,
``tensorboard/``. A new run refuses a folder that already holds a checkpoint
(resume it or choose another ``--out``).
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..model.checkpoint import Checkpoint
from .config import ConfigError, TrainConfig, check_resume_compatible, write_config
from .distributed import DistContext, barrier, init_distributed, shutdown
from .runlog import RunLog
from .loop import LAST, LOG


@dataclass
class RunSetup:
    ctx: DistContext
    run_dir: Path
    resume_state: Checkpoint | None
    log: RunLog


def resume_checkpoint_path(resume: str | Path) -> Path:
    """``RUN`` (a run folder) -> ``RUN/last.pt``; a file is taken as is."""
    path = Path(resume)
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        raise ConfigError(f"--resume {resume}: no checkpoint at {path}; pass a run folder holding {LAST} "
                          "(or a checkpoint file)")
    return path


def saved_config(resume: str | Path) -> dict:
    """The config a run was started with, from its ``config.yaml`` (for CLI defaults on resume)."""
    import yaml

    path = resume_checkpoint_path(resume)
    config_file = path.parent / "config.yaml"
    if config_file.is_file():
        data = yaml.safe_load(config_file.read_text()) or {}
        if isinstance(data.get("config"), dict):
            return _portable(data["config"])
    from ..model.checkpoint import load_checkpoint

    return _portable(dict(load_checkpoint(path).config or {}))


def resumed_stage(resume: str | Path) -> str | None:
    """``'stage1'`` or ``'stage2'``: which trainer made the run ``resume`` names (its ``config.yaml``, else
    its checkpoint); None when neither says (what is wrong with it is reported where it is read)."""
    import yaml

    from ..errors import GPFError

    path = resume_checkpoint_path(resume)
    config_file = path.parent / "config.yaml"
    if config_file.is_file():
        try:
            data = yaml.safe_load(config_file.read_text()) or {}
        except (yaml.YAMLError, OSError):
            data = {}
        data = data if isinstance(data, dict) else {}
        config = data.get("config") if isinstance(data.get("config"), dict) else {}
        if data.get("stage") in ("stage1", "stage2"):
            return data["stage"]
        if "shards" in config or "variant" in config:
            return "stage2"
        if "dataset" in config:
            return "stage1"
    from ..model.checkpoint import load_checkpoint

    try:
        kind = load_checkpoint(path).kind
    except GPFError:
        return None
    return kind if kind in ("stage1", "stage2") else None


def check_resume_stage(resume: str | Path, stage: str) -> None:
    """Refuse, first of all, to resume a run of the other stage (``--resume`` of a stage-1 run in stage 2)."""
    found = resumed_stage(resume)
    if found is None or found == stage:
        return
    path = resume_checkpoint_path(resume)
    run = path.parent
    if found == "stage1":
        raise ConfigError(f"--resume {resume}: {run} is a stage-1 run ({path} is a stage-1 checkpoint), but stage 2 "
                          f"resumes a stage-2 checkpoint. Continue it with `gpf train stage1 KIND ROOT --resume "
                          f"{run}`; to train stage 2 on it, make shards with `gpf preprocess KIND ROOT --stage1 "
                          f"{run} --out SHARDS`, then `gpf train stage2 --shards SHARDS --out RUN`")
    raise ConfigError(f"--resume {resume}: {run} is a stage-2 run ({path} is a stage-2 checkpoint), but stage 1 "
                      f"resumes a stage-1 checkpoint. Continue it with `gpf train stage2 --resume {run}`")


def _portable(config: dict) -> dict:
    """A saved config without the keys that name where the run lived: a moved run resumes in place."""
    return {k: v for k, v in config.items() if k not in ("out", "resume")}


def _echo(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def run_context(cfg: TrainConfig, stage: str, echo=_echo, check_resume=None) -> Iterator[RunSetup]:
    """Join the process group, settle the run folder, load the resume state; clean up after.

    ``check_resume(state, run_dir)`` runs before anything is written to the run
    folder, so a refused resume leaves the folder as it was.
    """
    ctx = init_distributed(cfg.device)
    try:
        yield _prepare(cfg, stage, ctx, echo, check_resume)
    except BaseException:
        shutdown(ctx)
        raise
    shutdown(ctx, wait_for_peers=True)


def _prepare(cfg: TrainConfig, stage: str, ctx: DistContext, echo, check_resume=None) -> RunSetup:
    from ..model.checkpoint import load_checkpoint

    resume_state = None
    if cfg.resume:
        path = resume_checkpoint_path(cfg.resume)
        run_dir = path.parent
        if cfg.out and Path(cfg.out).resolve() != run_dir.resolve():
            raise ConfigError(f"--out {cfg.out} differs from the run being resumed ({run_dir}); "
                              "a resumed run continues in its own folder: drop --out")
        resume_state = load_checkpoint(path, expect=stage)
        if resume_state.train is None or resume_state.config is None:
            raise ConfigError(f"{path} holds no training state (optimizer, epoch); it cannot be resumed. "
                              "Start a new run, e.g. with --weights or --stage1 pointing at it")
        check_resume_compatible(resume_state.config, cfg, run_dir)
        if check_resume is not None:
            check_resume(resume_state, run_dir)
    else:
        if not cfg.out:
            raise ConfigError("no run folder: pass --out RUN (or --resume RUN to continue a run)")
        run_dir = Path(cfg.out)
        if (run_dir / LAST).exists():
            raise ConfigError(f"{run_dir} already holds a run ({run_dir / LAST}); continue it with "
                              f"--resume {run_dir}, or choose another --out")
    cfg.out = str(run_dir)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_config(cfg, run_dir, {"stage": stage, "world_size": ctx.world_size})
    barrier(ctx)
    log = RunLog(run_dir / LOG, enabled=ctx.is_main, echo=echo if cfg.progress else None)
    return RunSetup(ctx=ctx, run_dir=run_dir, resume_state=resume_state, log=log)
