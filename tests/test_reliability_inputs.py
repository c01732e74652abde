"""Unsafe or wrong inputs to every command: pickled checkpoints, the wrong stage, the wrong number of
score buckets or view size, and resumes whose config, shards or environment changed.

A pickled object in a checkpoint would run code when unpickled: the trap used
here creates a folder when unpickled, so "refused" is checked by the folder
never appearing, not only by the message.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from helpers.ava import make_ava, photo_like
from helpers.cli import invoke, refused
from helpers.evaluation import make_stage2, save_stage1

VIEW = 64
EB_LAYER = "features.pool2"




class _Trap:
    """Unpickling this creates a folder."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _with_trap(payload: dict, marker) -> dict:
    return {**payload, "meta": {**payload.get("meta", {}), "note": _Trap(marker)}}


def _preprocess(kind, root, out, stage1, *extra):
    result = invoke(["preprocess", kind, root, "--out", out, "--stage1", stage1, "--samples-per-shard", 6,
                     "--quiet", *extra])
    assert result.exit_code == 0, result.output
    return out


def _write_photonet(root, n: int = 16) -> None:
    """A Photo.net folder: photonet_dataset.txt (12 columns, 7 buckets) and images/{id}.jpg."""
    rng = np.random.default_rng(4)
    (root / "images").mkdir(parents=True)
    lines = []
    for i in range(n):
        photo_id = str(5000 + i)
        Image.fromarray(photo_like(64, 48, rng)).save(root / "images" / f"{photo_id}.jpg", quality=90)
        votes = rng.integers(0, 6, 7) + (np.arange(7) == i % 7) * 5
        mean = float(np.dot(votes, np.arange(1, 8)) / votes.sum())
        lines.append(f"{i + 1} {photo_id} {votes.sum()} {mean:.3f} 1.0 {' '.join(map(str, votes))}")
    (root / "photonet_dataset.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Datasets, checkpoints (good and trapped), shards and a finished stage-2 run."""
    from gpf.model.checkpoint import load_checkpoint

    base = tmp_path_factory.mktemp("inputs")
    make_ava(base / "ava", n=16)
    _write_photonet(base / "photonet")
    stage1 = save_stage1(base / "stage1.pt")
    stage2 = make_stage2(base / "stage2.pt", stage1, eb_layer=EB_LAYER)
    marker = base / "unpickled"
    evil1, evil2, evil_weights = base / "evil1.pt", base / "evil2.pt", base / "evil_weights.pt"
    torch.save(_with_trap(load_checkpoint(stage1).to_dict(), marker), evil1)
    torch.save(_with_trap(load_checkpoint(stage2).to_dict(), marker), evil2)
    torch.save({"conv.weight": torch.zeros(1), "trap": _Trap(marker)}, evil_weights)
    shards = _preprocess("ava", base / "ava", base / "shards", stage1, "--view-size", VIEW)
    run = base / "run"
    result = invoke(["train", "stage2", "--shards", shards, "--backbone", "tiny", "--weights", "none", "--out", run,
                     "--epochs", 1, "--batch-size", 4, "--workers", 0, "--no-tensorboard", "--quiet",
                     "--config", _small_head(base)])
    assert result.exit_code == 0, result.output
    return {"base": base, "ava": base / "ava", "stage1": stage1, "stage2": stage2, "marker": marker,
            "evil1": evil1, "evil2": evil2, "evil_weights": evil_weights, "shards": shards, "run": run,
            "photo": base / "ava" / "images" / "1001.jpg"}


def _small_head(base):
    path = base / "head.yaml"
    path.write_text("branch_width: 16\nfusion_width: 16\n")
    return path


def _run_folder_with(tmp_path, world, checkpoint, with_config: bool = True):
    """A copy of the stage-2 run whose last.pt is ``checkpoint``.

    The copy's config.yaml is pointed at the copy: a moved run folder cannot be
    resumed otherwise (test_a_moved_run_folder_can_be_resumed, xfail).
    """
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["config"]["out"] = str(run)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    if not with_config:
        (run / "config.yaml").unlink()
    shutil.copy(checkpoint, run / "last.pt")
    return run


# ----------------------------------------------------------------------------- pickled checkpoints

PICKLED = {
    "preprocess --stage1": lambda w, t: ["preprocess", "ava", w["ava"], "--out", t / "o", "--stage1", w["evil1"]],
    "preprocess --weights": lambda w, t: ["preprocess", "ava", w["ava"], "--out", t / "o", "--backbone", "tiny",
                                          "--weights", w["evil_weights"]],
    "train stage1 --weights": lambda w, t: ["train", "stage1", "ava", w["ava"], "--out", t / "r", "--backbone",
                                            "tiny", "--weights", w["evil_weights"], "--workers", 0],
    "train stage1 --resume": lambda w, t: ["train", "stage1", "ava", w["ava"], "--resume",
                                           _run_folder_with(t, w, w["evil1"], with_config=False)],
    "train stage2 --stage1": lambda w, t: ["train", "stage2", "--shards", w["shards"], "--backbone", "tiny",
                                           "--weights", "none", "--stage1", w["evil1"], "--out", t / "r"],
    "train stage2 --resume": lambda w, t: ["train", "stage2", "--resume", _run_folder_with(t, w, w["evil2"])],
    "evaluate": lambda w, t: ["evaluate", "--checkpoint", w["evil2"], "--shards", w["shards"], "--device", "cpu"],
    "predict": lambda w, t: ["predict", w["photo"], "--checkpoint", w["evil2"], "--device", "cpu"],
    "attention": lambda w, t: ["attention", w["photo"], "--checkpoint", w["evil2"], "--out", t / "x.png",
                               "--device", "cpu"],
}


@pytest.mark.parametrize("command", list(PICKLED))
def test_a_checkpoint_holding_pickled_objects_is_refused_unexecuted(world, tmp_path, command):
    message = refused(PICKLED[command](world, tmp_path))
    assert not world["marker"].exists()
    evil = {"evil1", "evil2", "evil_weights"}
    assert any(str(world[name]) in message for name in evil) or "run/last.pt" in message, message


class Plain:
    """Any class instance: weights-only loading refuses its GLOBAL."""


def test_a_pickled_class_instance_is_named_in_the_refusal(world, tmp_path):
    from gpf.model.checkpoint import load_checkpoint

    path = tmp_path / "plain.pt"
    torch.save({**load_checkpoint(world["stage1"]).to_dict(), "extra": Plain()}, path)
    refused(["preprocess", "ava", world["ava"], "--out", tmp_path / "o", "--stage1", path],
            str(path), "pickled Python objects", "Plain")


def test_a_code_running_pickle_is_reported_as_such_without_advice_to_unpickle(world, tmp_path):
    message = refused(PICKLED["preprocess --stage1"](world, tmp_path), "pickled Python objects", "posix.mkdir")
    assert "weights_only" not in message and "truncated" not in message


# ----------------------------------------------------------------------------- the wrong stage

def test_a_stage2_checkpoint_where_a_stage1_one_is_needed_is_refused(world, tmp_path):
    for args in (["preprocess", "ava", world["ava"], "--out", tmp_path / "o", "--stage1", world["stage2"]],
                 ["train", "stage2", "--shards", world["shards"], "--backbone", "tiny", "--weights", "none",
                  "--stage1", world["stage2"], "--out", tmp_path / "r"]):
        refused(args, str(world["stage2"]), "is a stage-2 checkpoint", "stage-1 checkpoint")


def test_a_stage1_checkpoint_where_a_stage2_one_is_needed_is_refused(world, tmp_path):
    refused(["evaluate", "--checkpoint", world["stage1"], "--shards", world["shards"], "--device", "cpu"],
            str(world["stage1"]), "stage-1", "gpf train stage2")
    run = _run_folder_with(tmp_path, world, world["stage1"])
    refused(["train", "stage2", "--resume", run], "is a stage-1 checkpoint", "stage-2 checkpoint")


def test_resuming_a_stage2_run_as_stage1_is_refused(world, tmp_path):
    run = _run_folder_with(tmp_path, world, world["run"] / "last.pt")
    refused(["train", "stage1", "ava", world["ava"], "--resume", run], "is a stage-2 checkpoint")


# ----------------------------------------------------------------------------- buckets and view size

@pytest.fixture(scope="module")
def photonet_shards(world):
    # Seven-bucket shards: the ten-bucket stage-1 model cannot make them (preprocess refuses another score
    # scale than the one it learned), so an untrained attention network does.
    out = world["base"] / "photonet_shards"
    result = invoke(["preprocess", "photonet", world["base"] / "photonet", "--out", out, "--backbone", "tiny",
                     "--weights", "none", "--samples-per-shard", 6, "--quiet", "--view-size", VIEW])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def shards32(world):
    """Shards of 32 px views, made by the same attention weights recorded as trained at 32 px (preprocess
    refuses a view size other than the stage-1 model's)."""
    from gpf.model.checkpoint import load_checkpoint, save_checkpoint

    stage1 = load_checkpoint(world["stage1"])
    stage1.model_config["view_size"] = 32
    stage1_32 = save_checkpoint(world["base"] / "stage1-32.pt", stage1)
    return _preprocess("ava", world["ava"], world["base"] / "shards32", stage1_32, "--view-size", 32)


def test_a_ten_bucket_checkpoint_on_seven_bucket_photonet_shards_is_refused(world, photonet_shards):
    from gpf.shards.manifest import read_manifest

    assert len(read_manifest(photonet_shards).run.scores) == 7
    refused(["evaluate", "--checkpoint", world["stage2"], "--shards", photonet_shards, "--device", "cpu"],
            "N = 10", "N = 7")

def test_resume_of_a_ten_bucket_run_on_seven_bucket_shards_is_refused(world, photonet_shards, tmp_path):
    run = _run_folder_with(tmp_path, world, world["run"] / "last.pt")
    refused(["train", "stage2", "--resume", run, "--shards", photonet_shards], "predicts N = 10 score buckets", "N = 7")


def test_shards_made_with_another_view_size_are_refused(world, shards32):
    refused(["evaluate", "--checkpoint", world["stage2"], "--shards", shards32, "--device", "cpu"], "64", "32")


def test_resume_on_shards_of_another_view_size_is_refused(world, shards32, tmp_path):
    run = _run_folder_with(tmp_path, world, world["run"] / "last.pt")
    refused(["train", "stage2", "--resume", run, "--shards", shards32], "views of 64 px", "--view-size 32")


def test_a_refused_resume_leaves_the_run_folder_resumable(world, shards32, tmp_path):
    run = _run_folder_with(tmp_path, world, world["run"] / "last.pt")
    refused(["train", "stage2", "--resume", run, "--shards", shards32], "views of 64 px")
    saved = yaml.safe_load((run / "config.yaml").read_text())["config"]
    assert saved["shards"] == str(world["shards"]), saved["shards"]
    result = invoke(["train", "stage2", "--resume", run, "--epochs", 2, "--quiet"])
    assert result.exit_code == 0, result.output


def test_a_moved_run_folder_can_be_resumed(world, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(world["run"], moved)
    result = invoke(["train", "stage2", "--resume", moved, "--epochs", 2, "--quiet"])
    assert result.exit_code == 0, result.output
    assert "2 epoch(s) done" in result.output


# ----------------------------------------------------------------------------- changed config or environment

def test_resume_after_the_manifest_config_changed_names_the_difference(world, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(world["shards"], shards)
    run = _run_folder_with(tmp_path, world, world["run"] / "last.pt")
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["config"]["jpeg_quality"] = 50
    (shards / "manifest.json").write_text(json.dumps(manifest))
    refused(["train", "stage2", "--resume", run, "--shards", shards, "--epochs", 2],
            f"cannot resume {run}", f"the shards in {shards} differ", "manifest config.jpeg_quality: 95 -> 50")
    # tau decides the crops, so the embedded attention model no longer fits them: the fit check names it
    manifest["tau"] = 0.5
    (shards / "manifest.json").write_text(json.dumps(manifest))
    message = refused(["train", "stage2", "--resume", run, "--shards", shards, "--epochs", 2],
                      "did not make the crops", "tau 0.7 vs 0.5")
    assert "--allow-attention-mismatch" not in message   # an option of `gpf evaluate`, not of training


def test_resume_on_shards_remade_in_another_environment_names_the_environment(world, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(world["shards"], shards)
    run = _run_folder_with(tmp_path, world, world["run"] / "last.pt")
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["environment"]["torch"] = "1.13.0"
    manifest["shards"][0]["sha256"] = "0" * 64          # as rewritten by that other torch
    (shards / "manifest.json").write_text(json.dumps(manifest))
    refused(["train", "stage2", "--resume", run, "--shards", shards, "--epochs", 2],
            "rewritten", manifest["shards"][0]["name"], "environment torch: ", "-> '1.13.0'")


def test_preprocess_resume_in_another_environment_names_the_difference(world, tmp_path):
    out = _preprocess("ava", world["ava"], tmp_path / "shards", world["stage1"], "--view-size", VIEW, "--limit", 2)
    run_file = out / "preprocess.json"
    recorded = json.loads(run_file.read_text())
    recorded["environment"]["pil"]["flavour"] = "pillow"
    run_file.write_text(json.dumps(recorded))
    refused(["preprocess", "ava", world["ava"], "--out", out, "--stage1", world["stage1"], "--samples-per-shard", 6,
             "--view-size", VIEW, "--limit", 2, "--quiet"],
            "environment pil", "'pillow'", "--overwrite")


# ----------------------------------------------------------------------------- bad option values

@pytest.mark.parametrize("options, words", [
    (["--max-pixels", 0], ["--max-pixels must be positive"]),
    (["--workers", -1], ["--workers must be >= 0"]),
    (["--max-failure-rate", 2], ["--max-failure-rate must be in [0, 1]"]),
    (["--tau", 0], ["--tau must be in (0, 1]"]),
    (["--view-size", 4], ["--view-size must be at least 8"]),
    (["--eb-layer", "features.nope"], ["EB read-out layer", "'features.nope'", "features.pool2"]),
    (["--backbone", "tiny2"], ["unknown backbone 'tiny2'", "tiny"]),
])
def test_bad_preprocess_option_values_are_one_line_naming_the_option(world, tmp_path, options, words):
    base = ["--backbone", "tiny"] if "--backbone" not in options else []
    refused(["preprocess", "ava", world["ava"], "--out", tmp_path / "o", *base, "--weights", "none", "--quiet",
             *options], *words)
    assert not list((tmp_path / "o").glob("*.tar"))


def test_an_output_folder_that_cannot_be_created_is_one_line(world, tmp_path):
    (tmp_path / "a_file").write_text("in the way")
    refused(["preprocess", "ava", world["ava"], "--out", tmp_path / "a_file" / "shards", "--backbone", "tiny",
             "--weights", "none", "--quiet"], "cannot create the output folder", "Not a directory")
