"""Config resolution, schedule, early stopping, logs and resume plumbing (no training)."""
from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
import yaml

from gpf.train.config import (ConfigError, Stage1Config, Stage2Config, build_config, check_resume_compatible,
                              load_yaml, to_dict)
from gpf.train.distributed import DistContext, DistributedError, gather_rows, per_rank_batch_size
from gpf.train.logging import DataWaitTimer, MetricsCSV
from gpf.train.loop import plain
from gpf.train.schedule import EarlyStopping, make_optimizer, make_scheduler
from gpf.train.state import rng_state, seed_epoch, set_rng_state


def test_paper_schedule_is_the_default():
    cfg = Stage2Config()
    assert (cfg.lr, cfg.momentum, cfg.batch_size, cfg.lr_step, cfg.lr_gamma, cfg.patience) == \
        (0.01, 0.9, 64, 10, 0.1, 10)
    assert (cfg.variant, cfg.emd_r) == ("gpf", 2)


def test_unknown_yaml_key_is_an_error_listing_the_allowed_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\nlearnig_rate: 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_yaml(path, Stage2Config)
    text = str(info.value)
    assert "unknown key 'learnig_rate'" in text and str(path) in text
    for key in ("lr", "batch_size", "patience", "variant", "shards"):
        assert key in text.split("Allowed keys:")[1]


def test_yaml_keys_accept_dashes_and_precedence_is_defaults_saved_yaml_options(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"batch-size": 32, "lr": 0.5, "epochs": 7}))
    saved = {"lr": 0.2, "epochs": 4, "patience": 3, "seed": 9}
    cfg = build_config(Stage2Config, yaml_path=path, overrides={"lr": 0.05}, saved=saved)
    assert (cfg.batch_size, cfg.lr, cfg.epochs, cfg.patience, cfg.seed, cfg.momentum) == (32, 0.05, 7, 3, 9, 0.9)


def test_yaml_that_is_not_a_mapping_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_yaml(path, Stage1Config)


@pytest.mark.parametrize("key,value,message", [
    ("batch_size", 0, "batch_size must be a positive integer"),
    ("lr", -1.0, "lr must be a number >= 0"),
    ("variant", "gated", "variant must be one of single, random, pf, gpf; got 'gated'"),
    ("use_features", "maybe", "use_features must be one of auto, yes, no"),
    ("epochs", True, "epochs must be a positive integer"),
])
def test_bad_values_are_named(key, value, message):
    with pytest.raises(ConfigError, match=message):
        build_config(Stage2Config, overrides={key: value})


def test_resume_refuses_a_config_that_changes_the_run_and_allows_epochs():
    saved = to_dict(Stage2Config(shards="s", lr=0.01, epochs=5))
    check_resume_compatible(saved, Stage2Config(shards="s", lr=0.01, epochs=9, device="cpu"), "RUN")
    with pytest.raises(ConfigError, match=r"lr: 0\.01 -> 0\.1; seed: 0 -> 1"):
        check_resume_compatible(saved, Stage2Config(shards="s", lr=0.1, seed=1), "RUN")


def test_global_batch_is_split_across_ranks():
    assert per_rank_batch_size(64, 4) == 16
    with pytest.raises(DistributedError, match="--batch-size 10 .* 3 processes"):
        per_rank_batch_size(10, 3)


def test_step_lr_divides_by_ten_every_ten_epochs():
    model = torch.nn.Linear(2, 1)
    optimizer = make_optimizer(model.parameters(), 0.01, 0.9, 0.0)
    scheduler = make_scheduler(optimizer, 10, 0.1)
    lrs = []
    for _ in range(25):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == lrs[9] == 0.01
    assert lrs[10] == pytest.approx(0.001) and lrs[19] == pytest.approx(0.001)
    assert lrs[20] == pytest.approx(0.0001)
    assert optimizer.param_groups[0]["momentum"] == 0.9


def test_early_stopping_counts_epochs_without_a_strict_improvement():
    stopper = EarlyStopping(patience=2)
    decisions = []
    for epoch, loss in enumerate([1.0, 0.8, 0.8, 0.9, 0.7, 0.75, 0.71], start=1):
        improved = stopper.update(loss, epoch)
        decisions.append((improved, stopper.should_stop))
    assert decisions == [(True, False), (True, False), (False, False), (False, True),
                         (True, False), (False, False), (False, True)]
    assert (stopper.best, stopper.best_epoch) == (0.7, 5)
    restored = EarlyStopping(patience=2)
    restored.load_state_dict(stopper.state_dict())
    assert restored.state_dict() == stopper.state_dict()
    assert not EarlyStopping(patience=0).should_stop


def test_rng_states_survive_a_weights_only_checkpoint():
    seed_epoch(3, 1, 0)
    state = rng_state()
    buffer = io.BytesIO()
    torch.save(plain({"rng": state}), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)["rng"]
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(5), np.random.rand(5), random.random()
    set_rng_state(loaded)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]


def test_data_wait_fraction_with_a_fake_clock(monkeypatch):
    clock = iter([0.0,            # timer start
                  0.0, 3.0,       # first batch: waited 3 s
                  5.0, 6.0,       # second batch: waited 1 s (2 s of compute before)
                  9.0, 9.0,       # end of the loader: no wait
                  10.0])          # fraction asked at t = 10
    monkeypatch.setattr("gpf.train.logging.time.perf_counter", lambda: next(clock))
    timer = DataWaitTimer()
    assert list(timer.iterate(["a", "b"])) == ["a", "b"]
    assert timer.wait_s == pytest.approx(4.0)
    assert timer.fraction == pytest.approx(0.4)


def test_metrics_csv_drops_rows_after_the_resumed_epoch(tmp_path):
    metrics = MetricsCSV(tmp_path / "metrics.csv")
    for epoch in (1, 2, 3):
        metrics.append({"epoch": epoch, "train_loss": 0.5 / epoch, "val_loss": float("nan"), "mae": None})
    metrics.truncate_after(2)
    metrics.append({"epoch": 3, "train_loss": 0.1})
    lines = (tmp_path / "metrics.csv").read_text().strip().splitlines()
    assert lines[0].startswith("epoch,train_loss,val_loss,accuracy,srcc,lcc,mae,rmse,emd,lr,samples_per_s,data_wait")
    assert [line.split(",")[:3] for line in lines[1:]] == [["1", "0.5", "nan"], ["2", "0.25", "nan"],
                                                           ["3", "0.1", ""]]


def test_gather_rows_without_a_process_group_is_the_identity():
    rows = torch.arange(6.0).view(3, 2)
    assert torch.equal(gather_rows(DistContext(), rows), rows)


def test_tensorboard_scalars_when_importable_and_silent_otherwise(tmp_path, monkeypatch):
    import sys
    import types

    from gpf.train.logging import TensorBoard

    calls = []

    class FakeWriter:
        def __init__(self, log_dir):
            calls.append(("dir", log_dir))

        def add_scalar(self, tag, value, step):
            calls.append((tag, value, step))

        def close(self):
            calls.append(("closed",))

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    board = TensorBoard(tmp_path / "tb")
    board.scalars({"train_loss": 0.5, "mae": None, "srcc": float("nan"), "epoch": 3}, step=3)
    board.close()
    assert calls == [("dir", str(tmp_path / "tb")), ("train_loss", 0.5, 3), ("epoch", 3, 3), ("closed",)]

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)      # import fails
    silent = TensorBoard(tmp_path / "tb2")
    assert not silent.active
    silent.scalars({"train_loss": 0.5}, step=1)


def test_amp_defaults_off_on_cpu_and_bf16_when_asked():
    from gpf.train.loop import resolve_amp

    assert not resolve_amp(None, torch.device("cpu")).enabled
    amp = resolve_amp(True, torch.device("cpu"))
    assert amp.enabled and amp.dtype == torch.bfloat16 and amp.scaler is None
    with amp.autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
