"""The epoch loop both stages share (gpf.train.loop), on a task small enough to check by hand.

``LineTask`` fits y = 2x + 1 with one ``nn.Linear``: its validation loss is
recomputed here from the saved weights (the independent reference), and its
batch order depends on the epoch only, as the stages' loaders do.
"""
from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gpf.errors import GPFError
from gpf.model.checkpoint import Checkpoint, cpu_state_dict, load_checkpoint
from gpf.train.config import TrainConfig
from gpf.train.distributed import DistContext
from gpf.train.loop import (BEST, LAST, METRICS, NonFiniteLossError, Task, Trainer, TrainHooks, images_to_device,
                            nonfinite_weights, plain, to_cpu)

N_SAMPLES, BATCH = 32, 8


class LineTask(Task):
    """y = 2x + 1 on 32 points in [-1, 1]; ``val_loss``: a fixed validation loss instead of the MSE."""

    name = "line"

    def __init__(self, val_loss: float | None = None, val_size: int = N_SAMPLES, init_seed: int = 0):
        torch.manual_seed(init_seed)
        self.model = nn.Linear(1, 1)
        self.x, self.y = line_data()
        self.fixed_val_loss = val_loss
        self.val_size = val_size

    def train_batches(self, epoch):
        order = torch.randperm(N_SAMPLES, generator=torch.Generator().manual_seed(epoch))
        for start in range(0, N_SAMPLES, BATCH):
            index = order[start:start + BATCH]
            yield self.x[index], self.y[index]

    def steps_per_epoch(self):
        return N_SAMPLES // BATCH

    def val_batches(self):
        if self.val_size:
            yield self.x[:self.val_size], self.y[:self.val_size]

    def train_loss(self, forward, batch):
        x, y = batch
        return F.mse_loss(forward(x), y), len(x)

    def eval_outputs(self, forward, batch):
        x, y = batch
        return forward(x), y

    def val_metrics(self, predictions, targets):
        loss = F.mse_loss(predictions, targets).item() if self.fixed_val_loss is None else self.fixed_val_loss
        return {"val_loss": loss}

    def checkpoint(self):
        return Checkpoint(format="gpf-stage1", model_config={"model": "line"}, state_dict=cpu_state_dict(self.model))


def line_data():
    x = torch.linspace(-1, 1, N_SAMPLES).unsqueeze(1)
    return x, 2 * x + 1


def mse_of(state: dict) -> float:
    """The validation loss of saved weights, by hand."""
    x, y = line_data()
    w, b = state["weight"].item(), state["bias"].item()
    return float(((w * x + b - y) ** 2).mean())


def config(out, **kw) -> TrainConfig:
    values = dict(out=str(out), epochs=4, lr=0.1, momentum=0.9, batch_size=BATCH, lr_step=10, patience=10,
                  device="cpu", tensorboard=False, progress=False)
    values.update(kw)
    return TrainConfig(**values)


def fit(task, cfg, run_dir, **kw):
    return Trainer(task, cfg, DistContext(), run_dir, **kw).fit()


def metrics_rows(run_dir) -> list[dict]:
    with open(run_dir / METRICS, newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- fit

def test_fit_learns_and_writes_last_best_and_one_metrics_row_per_epoch(tmp_path):
    result = fit(LineTask(), config(tmp_path), tmp_path)
    assert (result.epochs_completed, result.stopped) == (4, "max_epochs")
    assert result.last_checkpoint == tmp_path / LAST and result.best_checkpoint == tmp_path / BEST
    last = load_checkpoint(tmp_path / LAST)
    assert last.train["epoch"] == 4 and last.train["step"] == 4 * N_SAMPLES // BATCH
    assert last.config["lr"] == 0.1 and last.train["world_size"] == 1
    # the logged validation loss is the MSE of the weights saved after that epoch
    losses = [row["val_loss"] for row in result.history]
    assert losses[-1] == pytest.approx(mse_of(last.state_dict), rel=1e-5)
    assert losses[-1] < 0.5 * losses[0]
    best = load_checkpoint(tmp_path / BEST)
    assert best.train["epoch"] == result.best_epoch == 1 + int(np.argmin(losses))
    assert mse_of(best.state_dict) == pytest.approx(result.best_val_loss, rel=1e-5)
    rows = metrics_rows(tmp_path)
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]
    assert [float(r["val_loss"]) for r in rows] == pytest.approx(losses, rel=1e-5)
    assert {r["lr"] for r in rows} == {"0.1"}


def test_early_stopping_after_patience_epochs_without_improvement(tmp_path):
    result = fit(LineTask(val_loss=1.0), config(tmp_path, epochs=10, patience=2), tmp_path)
    assert (result.stopped, result.epochs_completed, result.best_epoch) == ("early_stopping", 3, 1)
    assert load_checkpoint(tmp_path / BEST).train["epoch"] == 1
    assert load_checkpoint(tmp_path / LAST).train["epoch"] == 3


def test_lr_steps_by_gamma_every_lr_step_epochs(tmp_path):
    result = fit(LineTask(), config(tmp_path, epochs=5, lr=0.01, lr_step=2, lr_gamma=0.5), tmp_path)
    assert [row["lr"] for row in result.history] == pytest.approx([0.01, 0.01, 0.005, 0.005, 0.0025])


def test_non_finite_loss_stops_naming_epoch_and_step_and_keeps_the_last_good_checkpoint(tmp_path):
    def poison(info):
        if (info.epoch, info.step) == (2, 2):
            with torch.no_grad():
                info.model.weight.fill_(float("nan"))

    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 3 of the epoch \(global step 7\)"):
        fit(LineTask(), config(tmp_path), tmp_path, hooks=TrainHooks(after_step=poison))
    last = load_checkpoint(tmp_path / LAST)
    assert last.train["epoch"] == 1 and not nonfinite_weights(_linear(last.state_dict))
    assert [r["epoch"] for r in metrics_rows(tmp_path)] == ["1"]


def test_empty_validation_split_is_refused(tmp_path):
    with pytest.raises(GPFError, match="the validation split is empty"):
        fit(LineTask(val_size=0), config(tmp_path), tmp_path)


# ----------------------------------------------------------------------------- resume

class _Kill(Exception):
    pass


def test_resume_after_a_kill_gives_the_uninterrupted_weights_and_log(tmp_path):
    straight = fit(LineTask(), config(tmp_path / "straight"), tmp_path / "straight")

    def kill(info):
        if (info.epoch, info.step) == (3, 2):
            raise _Kill

    killed = tmp_path / "killed"
    with pytest.raises(_Kill):
        fit(LineTask(), config(killed), killed, hooks=TrainHooks(after_step=kill))
    state = load_checkpoint(killed / LAST)
    assert state.train["epoch"] == 2
    # a fresh model with other initial weights: everything comes from last.pt
    resumed = fit(LineTask(init_seed=7), config(killed), killed, resume_state=state)
    assert resumed.epochs_completed == 4 and resumed.best_epoch == straight.best_epoch
    a, b = load_checkpoint(tmp_path / "straight" / LAST).state_dict, load_checkpoint(killed / LAST).state_dict
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-6, atol=1e-7, msg=key)
    assert [r["epoch"] for r in metrics_rows(killed)] == ["1", "2", "3", "4"]
    assert [row["val_loss"] for row in resumed.history] == pytest.approx(
        [row["val_loss"] for row in straight.history], rel=1e-5)


def test_resuming_a_finished_run_has_nothing_to_do(tmp_path):
    fit(LineTask(), config(tmp_path, epochs=2), tmp_path)
    before = (tmp_path / METRICS).read_text()
    again = fit(LineTask(), config(tmp_path, epochs=2), tmp_path, resume_state=load_checkpoint(tmp_path / LAST))
    assert again.stopped == "nothing_to_do" and again.epochs_completed == 2
    assert (tmp_path / METRICS).read_text() == before


# ----------------------------------------------------------------------------- helpers

def _linear(state: dict) -> nn.Linear:
    model = nn.Linear(1, 1)
    model.load_state_dict(state)
    return model


def test_amp_defaults_off_on_cpu_and_bf16_when_asked():
    from gpf.train.loop import resolve_amp

    assert not resolve_amp(None, torch.device("cpu")).enabled
    amp = resolve_amp(True, torch.device("cpu"))
    assert amp.enabled and amp.dtype == torch.bfloat16 and amp.scaler is None
    with amp.autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_plain_makes_what_weights_only_load_refuses_loadable():
    raw = {"version": torch.__version__, "mean": np.float64(0.5), "count": np.int64(3), "shape": torch.Size([2, 3]),
           "pair": (1, "a"), "tensor": torch.ones(2)}
    buffer = io.BytesIO()
    torch.save(raw, buffer)
    with pytest.raises(Exception):                   # the reference: torch's own weights_only unpickler
        torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    buffer = io.BytesIO()
    torch.save(plain(raw), buffer)
    loaded = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    assert loaded["version"] == str(torch.__version__) and type(loaded["version"]) is str
    assert (loaded["mean"], loaded["count"], loaded["shape"], loaded["pair"]) == (0.5, 3, [2, 3], (1, "a"))
    assert torch.equal(loaded["tensor"], torch.ones(2))


def test_to_cpu_detaches_every_tensor_and_keeps_the_structure():
    weight = torch.ones(2, requires_grad=True)
    out = to_cpu({"a": [weight * 2, (weight, 3)], "b": "x"})
    assert out["b"] == "x" and out["a"][1][1] == 3
    assert all(not t.requires_grad and t.device.type == "cpu" for t in (out["a"][0], out["a"][1][0]))


def test_nonfinite_weights_names_parameters_and_buffers_only_when_floating():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    assert nonfinite_weights(model) == []
    with torch.no_grad():
        model[0].bias[1] = float("inf")
        model[1].running_mean[0] = float("nan")
    model[1].num_batches_tracked.fill_(-1)           # an integer buffer: never non-finite
    assert nonfinite_weights(model) == ["0.bias", "1.running_mean"]


def test_images_to_device_normalises_and_can_go_channels_last():
    images = torch.randint(0, 256, (2, 3, 5, 4), dtype=torch.uint8)
    x = images_to_device(images, torch.device("cpu"), lambda t: t.float() / 255, channels_last=True)
    assert torch.equal(x, images.float() / 255) and x.is_contiguous(memory_format=torch.channels_last)
    assert images_to_device(images, torch.device("cpu"), lambda t: t.float(), False).is_contiguous()
