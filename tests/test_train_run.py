"""Run folders (gpf.train.run): where a run writes, how ``--resume`` finds its state, what is refused.

Checkpoints here are written with gpf.model.checkpoint directly (a one-tensor
model), so each case costs no training; what ends up on disk is read back with
yaml and the file system.
"""
from __future__ import annotations

import dataclasses
import re

import pytest
import torch
import yaml

from gpf.model.checkpoint import Checkpoint, CheckpointError, save_checkpoint
from gpf.train.config import ConfigError, TrainConfig, to_dict, write_config
from gpf.train.run import resume_checkpoint_path, run_context, saved_config


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    """No torchrun variables: run_context joins no process group."""
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)


def config(**kw) -> TrainConfig:
    return TrainConfig(**{"device": "cpu", "progress": False, "tensorboard": False, "lr": 0.05, **kw})


def finished_run(run_dir, cfg: TrainConfig, *, train=True, fmt="gpf-stage1", config_yaml=True):
    """A run folder as a stage leaves it: ``last.pt`` (with or without training state) and ``config.yaml``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(run_dir / "last.pt", Checkpoint(
        format=fmt, model_config={"model": "toy"}, state_dict={"w": torch.zeros(2)},
        config=to_dict(cfg) if train else None, train={"epoch": 1, "step": 4} if train else None))
    if config_yaml:
        write_config(cfg, run_dir, {"stage": "stage1", "world_size": 1})
    return run_dir


# ----------------------------------------------------------------------------- finding a run

def test_resume_takes_a_run_folder_or_a_checkpoint_file(tmp_path):
    run = finished_run(tmp_path / "run", config(out=str(tmp_path / "run")))
    assert resume_checkpoint_path(run) == run / "last.pt"
    assert resume_checkpoint_path(run / "last.pt") == run / "last.pt"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"--resume .*empty: no checkpoint at .*empty/last\.pt"):
        resume_checkpoint_path(tmp_path / "empty")
    with pytest.raises(ConfigError, match="no checkpoint at"):
        resume_checkpoint_path(tmp_path / "nope.pt")


def test_saved_config_comes_from_config_yaml_without_where_the_run_lived(tmp_path):
    cfg = config(out=str(tmp_path / "run"), lr=0.3, epochs=7)
    run = finished_run(tmp_path / "run", cfg)
    saved = saved_config(run)
    expected = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("out", "resume")}
    assert saved == expected and saved["lr"] == 0.3


def test_saved_config_falls_back_to_the_checkpoint_when_config_yaml_is_gone(tmp_path):
    cfg = config(out=str(tmp_path / "run"), epochs=3)
    run = finished_run(tmp_path / "run", cfg, config_yaml=False)
    assert saved_config(run / "last.pt")["epochs"] == 3 and "out" not in saved_config(run)


# ----------------------------------------------------------------------------- a new run

def test_new_run_writes_config_yaml_and_logs_to_train_log(tmp_path):
    echoed = []
    cfg = config(out=str(tmp_path / "run"), progress=True)
    with run_context(cfg, "stage1", echo=echoed.append) as setup:
        assert setup.run_dir == tmp_path / "run" and setup.resume_state is None
        assert setup.ctx.is_main and not setup.ctx.distributed
        setup.log("hello")
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert written["stage"] == "stage1" and written["world_size"] == 1
    assert written["config"] == to_dict(cfg)
    assert (tmp_path / "run" / "train.log").read_text().rstrip().endswith(" hello") and echoed == ["hello"]


def test_new_run_needs_a_folder_and_refuses_one_holding_a_run(tmp_path):
    with pytest.raises(ConfigError, match=r"no run folder: pass --out RUN \(or --resume RUN"):
        with run_context(config(), "stage1"):
            pass
    run = finished_run(tmp_path / "run", config(out=str(tmp_path / "run")))
    before = (run / "config.yaml").read_text()
    where = re.escape(str(run))
    with pytest.raises(ConfigError, match=rf"{where} already holds a run .*--resume {where}, or choose another --out"):
        with run_context(config(out=str(run), lr=0.9), "stage1"):
            pass
    assert (run / "config.yaml").read_text() == before


# ----------------------------------------------------------------------------- resume

def test_resume_continues_in_its_own_folder_with_its_state(tmp_path):
    cfg = config(out=str(tmp_path / "run"))
    run = finished_run(tmp_path / "run", cfg)
    seen = []
    with run_context(config(resume=str(run), epochs=80), "stage1",
                     check_resume=lambda state, where: seen.append((state.train["epoch"], where))) as setup:
        assert setup.run_dir == run and setup.resume_state.train["step"] == 4
    assert seen == [(1, run)]
    assert yaml.safe_load((run / "config.yaml").read_text())["config"]["epochs"] == 80   # epochs may change


def test_resume_elsewhere_or_with_another_config_is_refused_before_anything_is_written(tmp_path):
    run = finished_run(tmp_path / "run", config(out=str(tmp_path / "run")))
    before = (run / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"--out .*other differs from the run being resumed .*drop --out"):
        with run_context(config(resume=str(run), out=str(tmp_path / "other")), "stage1"):
            pass
    with pytest.raises(ConfigError, match=r"cannot resume .*lr: 0\.05 -> 0\.2"):
        with run_context(config(resume=str(run), lr=0.2), "stage1"):
            pass

    def refuse(state, where):
        raise ConfigError(f"{where}: the shards changed")

    with pytest.raises(ConfigError, match="the shards changed"):
        with run_context(config(resume=str(run)), "stage1", check_resume=refuse):
            pass
    assert (run / "config.yaml").read_text() == before and not (tmp_path / "other").exists()


def test_resume_of_a_checkpoint_without_training_state_or_of_the_other_stage_is_refused(tmp_path):
    bare = finished_run(tmp_path / "bare", config(out=str(tmp_path / "bare")), train=False)
    with pytest.raises(ConfigError, match="holds no training state .* cannot be resumed"):
        with run_context(config(resume=str(bare)), "stage1"):
            pass
    run = finished_run(tmp_path / "run", config(out=str(tmp_path / "run")))
    with pytest.raises(CheckpointError, match="is a stage-1 checkpoint .* a stage-2 checkpoint"):
        with run_context(config(resume=str(run)), "stage2"):
            pass
