"""Kills and numerics: SIGKILL `gpf train stage2` mid-epoch and mid-checkpoint-write, NaN losses,
all-zero attention maps.

The kills come from outside (``SIGKILL`` from this process) at a moment the
child announces: a hook blocks at a chosen step, or a patched ``torch.save``
blocks after writing half a checkpoint. After each kill every ``*.pt`` of the
run must load with ``torch.load(weights_only=True)``, and ``--resume`` must end
with exactly the weights of an uninterrupted run.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from helpers.cli import invoke
from helpers.training import stage1_checkpoint, write_ava, write_shards

EPOCHS = 3



@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill_shards")
    write_shards(root / "shards", stage1_checkpoint(root / "stage1.pt"), random_crops=0, features=False)
    return root / "shards"


def stage2_args(shards, out, *extra):
    return ["train", "stage2", "--shards", shards, "--backbone", "tiny", "--weights", "none", "--out", out,
            "--epochs", EPOCHS, "--batch-size", 4, "--lr", 0.05, "--workers", 0, "--seed", 3,
            "--no-tensorboard", "--quiet", *extra]


def loads_weights_only(path: Path):
    """The checkpoint at ``path`` read with ``torch.load(weights_only=True)``, as a typed ``Checkpoint``."""
    from gpf.model.checkpoint import Checkpoint

    return Checkpoint.from_dict(torch.load(path, map_location="cpu", weights_only=True), str(path))


# ----------------------------------------------------------------------------- kills

# Runs `gpf` in a child that blocks at a chosen moment (after writing MARKER) until it is killed.
_CHILD = textwrap.dedent("""
    import io, os, sys, time
    from pathlib import Path

    marker, moment, args = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]

    def block(note):
        marker.write_text(note)
        time.sleep(600)

    if moment == "mid-epoch":                       # epoch 2, after its 3rd optimiser step
        import gpf.train.stage2 as stage2
        from gpf.train.loop import TrainHooks

        real = stage2.train_stage2

        def blocking_hook(info):
            if (info.epoch, info.step) == (2, 3):
                block("epoch 2 step 3")

        stage2.train_stage2 = lambda cfg, hooks=None: real(cfg, hooks=TrainHooks(after_step=blocking_hook))
    elif moment == "mid-save":                      # half of epoch 2's last.pt written
        import torch

        real_save, calls = torch.save, []

        def half_save(obj, f, *a, **kw):
            calls.append(1)
            if len(calls) < 2 or not hasattr(f, "fileno"):
                return real_save(obj, f, *a, **kw)
            buffer = io.BytesIO()
            real_save(obj, buffer, *a, **kw)
            f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            f.flush()
            os.fsync(f.fileno())
            block("half of a checkpoint written")

        torch.save = half_save
    from gpf.cli.main import main
    main(args)
""")


def sigkill_at(moment: str, args, tmp_path) -> subprocess.CompletedProcess:
    """Start `gpf ARGS` in a child, SIGKILL it once it reports ``moment``; returns the dead process."""
    marker = tmp_path / f"{moment}.marker"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(marker), moment, *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the child ended before {moment}: {proc.stdout.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the child never reached {moment}")
        time.sleep(0.05)
    proc.kill()                                      # SIGKILL: no handler, no cleanup, no flush
    output, _ = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, output)


@pytest.fixture(scope="module")
def straight(shards, tmp_path_factory):
    """The uninterrupted run the resumed ones must equal."""
    out = tmp_path_factory.mktemp("straight") / "run"
    result = invoke(stage2_args(shards, out))
    assert result.exit_code == 0, result.output
    return loads_weights_only(out / "last.pt")


def _check_resume_gives_the_straight_weights(run: Path, straight: dict) -> None:
    result = invoke(["train", "stage2", "--resume", run, "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"{EPOCHS} epoch(s) done" in result.output
    resumed = loads_weights_only(run / "last.pt")
    assert resumed.train["epoch"] == EPOCHS
    assert resumed.state_dict.keys() == straight.state_dict.keys()
    for key, value in straight.state_dict.items():
        torch.testing.assert_close(resumed.state_dict[key], value, rtol=1e-6, atol=1e-7, msg=key)
    assert list(pd.read_csv(run / "metrics.csv")["epoch"]) == list(range(1, EPOCHS + 1))


@pytest.mark.slow
def test_sigkill_mid_epoch_leaves_loadable_checkpoints_and_resume_continues(shards, straight, tmp_path):
    run = tmp_path / "run"
    dead = sigkill_at("mid-epoch", stage2_args(shards, run), tmp_path)
    assert dead.returncode == -9, dead.stdout
    checkpoints = sorted(run.glob("*.pt"))
    assert {p.name for p in checkpoints} == {"last.pt", "best.pt"}
    for path in checkpoints:
        payload = loads_weights_only(path)                 # raises on a partial or pickled file
        assert payload.train["epoch"] == 1                 # the last complete epoch
    assert list(pd.read_csv(run / "metrics.csv")["epoch"]) == [1]
    _check_resume_gives_the_straight_weights(run, straight)


@pytest.mark.slow
def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one(shards, straight, tmp_path):
    run = tmp_path / "run"
    dead = sigkill_at("mid-save", stage2_args(shards, run), tmp_path)
    assert dead.returncode == -9, dead.stdout
    partial = [p for p in run.iterdir() if p.name.startswith(".last.pt")]
    assert len(partial) == 1                               # the kill really hit a write in progress ...
    with pytest.raises(Exception):
        loads_weights_only(partial[0])
    for path in run.glob("*.pt"):                          # ... yet every checkpoint is whole
        assert loads_weights_only(path).train["epoch"] == 1
    _check_resume_gives_the_straight_weights(run, straight)


# ----------------------------------------------------------------------------- numerics

def _all_finite(state: dict) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


def test_stage2_divergence_stops_naming_the_step_and_keeps_the_last_good_checkpoint(shards, tmp_path):
    """lr x 1e30 from epoch 2 on (StepLR with gamma 1e30): the loss turns NaN in epoch 2."""
    run = tmp_path / "run"
    result = invoke(stage2_args(shards, run, "--lr-step", 1, "--lr-gamma", 1e30))
    assert result.exit_code == 1
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and "non-finite" in message
    assert "epoch 2, step" in message and "Lower --lr" in message
    for name in ("last.pt", "best.pt"):
        payload = loads_weights_only(run / name)
        assert payload.train["epoch"] == 1 and _all_finite(payload.state_dict)
    assert list(pd.read_csv(run / "metrics.csv")["epoch"]) == [1]


def test_stage1_divergence_stops_naming_the_step(tmp_path):
    write_ava(tmp_path / "ava", n=16, n_test=2)
    run = tmp_path / "run"
    result = invoke(["train", "stage1", "ava", tmp_path / "ava", "--out", run, "--backbone", "tiny",
                     "--weights", "none", "--view-size", 32, "--epochs", 3, "--batch-size", 4, "--workers", 0,
                     "--val-size", 4, "--lr", 0.05, "--lr-step", 1, "--lr-gamma", 1e30, "--no-tensorboard",
                     "--quiet"])
    assert result.exit_code == 1, result.output
    assert "non-finite" in result.output and "epoch 2, step" in result.output
    payload = loads_weights_only(run / "last.pt")
    assert payload.train["epoch"] == 1 and _all_finite(payload.state_dict)


# ----------------------------------------------------------------------------- all-zero attention

@pytest.fixture(scope="module")
def blind_stage1(tmp_path_factory):
    """A stage-1 model whose classifier weights are all zero: Excitation Backprop has no positive
    top-down signal, so every map is all zero."""
    from gpf.model.checkpoint import save_checkpoint, stage1_checkpoint
    from gpf.model.gpf import PeripheralNet

    torch.manual_seed(0)
    model = PeripheralNet("tiny", num_classes=2)
    with torch.no_grad():
        model.head.fc.weight.zero_()
        model.head.fc.bias.zero_()
    path = tmp_path_factory.mktemp("blind") / "stage1.pt"
    save_checkpoint(path, stage1_checkpoint(model, view_size=64, threshold=5.0, scores=list(range(1, 11))))
    return path


def test_all_zero_attention_uses_the_whole_image_and_is_counted(blind_stage1, tmp_path):
    from helpers.ava import make_ava

    make_ava(tmp_path / "ava", n=10)
    out = tmp_path / "shards"
    result = invoke(["preprocess", "ava", tmp_path / "ava", "--out", out, "--stage1", blind_stage1,
                     "--view-size", 64, "--quiet"])
    assert result.exit_code == 0, result.output
    assert "all-zero attention maps (whole image used): 10" in result.output
    rows = pd.read_parquet(out / "meta")
    assert (rows["status"] == "ok").all()
    assert (rows["x0"] == 0).all() and (rows["y0"] == 0).all()
    assert (rows["x1"] == rows["width"]).all() and (rows["y1"] == rows["height"]).all()
    assert rows["attn_fraction"].isna().all()              # no attention to hold: no fraction claimed
    assert not any(math.isnan(v) for v in rows["mean"])


def test_attention_command_with_all_zero_maps_draws_the_whole_image(blind_stage1, tmp_path):
    from PIL import Image

    Image.new("RGB", (90, 50), (120, 60, 30)).save(tmp_path / "photo.jpg")
    result = invoke(["attention", tmp_path / "photo.jpg", "--checkpoint", blind_stage1, "--out",
                     tmp_path / "fig.png", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "box 0,0,90,50" in result.output
