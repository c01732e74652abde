"""A new user's first hour (issue 14), run through the CLI as the user ran it.

Items 3, 4, 5, 7, 9, 10, 11 (the "Error:" and bracket parts) and 15: every
message names the CLI's option (never the Python parameter), a too-large stage-2
batch names a ``--batch-size`` that works, ``--resume`` of a stage-1 run in stage
2 says so first, ``gpf shards verify`` tells a folder that is not a shard folder
and an empty shard set apart from a good one, Ctrl-C says what is kept and how to
go on (exit 130), a resumed preprocess' rate counts this run's images only, and
the help and docs say what the code does.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
import yaml

from gpf.cli.main import cli
from helpers.cli import invoke, refused
from helpers.training import stage1_checkpoint, write_ava, write_shards

REPO = Path(__file__).resolve().parents[1]
TINY = ["--backbone", "tiny", "--weights", "none"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """An AVA folder, a stage-1 checkpoint, shards made with it (24 train, 9 val) and a real stage-1 run."""
    base = tmp_path_factory.mktemp("first_hour")
    write_ava(base / "ava", n=28, n_test=4)
    stage1 = stage1_checkpoint(base / "stage1.pt")
    write_shards(base / "shards", stage1, random_crops=2, features=True)
    run1 = base / "stage1-run"
    result = invoke(["train", "stage1", "ava", base / "ava", *TINY, "--out", run1, "--view-size", 32, "--epochs", 1,
                     "--batch-size", 4, "--val-size", 6, "--workers", 0, "--no-tensorboard", "--quiet"])
    assert result.exit_code == 0, result.output
    return {"base": base, "ava": base / "ava", "stage1": stage1, "shards": base / "shards", "run1": run1}


def _depth(text: str) -> int:
    """How deep the parentheses of ``text`` nest."""
    depth = deepest = 0
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        deepest = max(deepest, depth)
    return deepest


# ----------------------------------------------------------------------------- 3. the CLI's own words

def _csv_folder(tmp_path, header: str, world) -> Path:
    folder = tmp_path / "own"
    folder.mkdir()
    for name in ("700000.jpg", "700001.jpg"):
        shutil.copy(world["ava"] / "images" / name, folder / name)
    (folder / "labels.csv").write_text(header + "\n700000.jpg,1,2,3,1\n700001.jpg,3,2,1,1\n")
    return folder / "labels.csv"


def test_a_csv_without_an_image_column_names_the_path_and_id_options(world, tmp_path):
    csv_file = _csv_folder(tmp_path, "name,c1,c2,c3,c4", world)
    message = refused(["preprocess", "folder", csv_file, "--out", tmp_path / "o", *TINY, "--quiet"],
                      "no image column", "--path-column", "--id-column")
    advice = message.split("line 1:", 1)[1]             # the path holds the test's name
    assert "path_column" not in advice and "id_column" not in advice
    # the API keeps the Python names
    from gpf.pipeline.sources import LabelError, open_dataset

    with pytest.raises(LabelError, match="path_column"):
        open_dataset("folder", csv_file)


def test_ambiguous_count_columns_name_the_count_columns_option(world, tmp_path):
    csv_file = _csv_folder(tmp_path, "path,c1,c2,score_1,score_2", world)
    message = refused(["train", "stage1", "folder", csv_file, *TINY, "--out", tmp_path / "r", "--quiet"],
                      "ambiguous count columns", "--count-columns")
    advice = message.split("line 1:", 1)[1]
    assert "count_columns" not in advice and "=[...]" not in advice


@pytest.mark.parametrize("command", ["preprocess", "stage1"])
def test_imagenet_weights_on_a_backbone_without_them_name_the_weights_option(world, tmp_path, command):
    args = (["preprocess", "ava", world["ava"], "--out", tmp_path / "o"] if command == "preprocess" else
            ["train", "stage1", "ava", world["ava"], "--out", tmp_path / "r"])
    message = refused([*args, "--backbone", "tiny", "--weights", "imagenet", "--quiet"],
                      "no ImageNet weights", "--weights none", "--weights PATH")
    assert "weights=" not in message and "'none'" not in message


def test_an_image_over_the_pixel_limit_advises_the_max_pixels_option():
    from gpf.cli.common import error_text
    from gpf.pipeline.images import ImageError

    error = ImageError("big.jpg", "too_large", "8000x6000 = 48000000 pixels is over the limit of 1000")
    assert "max_pixels" in str(error) and "load_image" not in str(error)      # the API's words
    assert error_text(error).endswith("raise --max-pixels if you trust the file")


def test_messages_advise_no_python_keyword_the_cli_does_not_have():
    """The advice forms the issue found ("pass X=", "use weights='none'") are gone from the library."""
    pattern = re.compile(r"pass drop_last=False|use weights='none' or a |a larger max_pixels to load_image|"
                         r"smaller min_size to load_image")
    offenders = []
    for path in REPO.rglob("*.py"):
        if any(part in (".venv", "tests", "benchmarks") for part in path.relative_to(REPO).parts):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line) and not line.lstrip().startswith("#"):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def _doc_config_keys() -> set[str]:
    """Config keys of docs/training.md's table (both stages)."""
    text = (REPO / "docs" / "training.md").read_text()
    table = text.split("## Schedule and config keys", 1)[1].split("\n\n`--config", 1)[0]
    keys = set()
    for row in table.splitlines():
        if row.startswith("| `") or row.startswith("| stage"):
            keys |= set(re.findall(r"`([a-z_0-9]+)`", row.split("|")[1]))
    return keys


def test_every_config_key_of_the_training_doc_is_an_option_of_gpf_train():
    keys = _doc_config_keys()
    assert {"branch_width", "fusion_width", "dropout", "emd_r", "log_interval", "batch_size"} <= keys
    ctx = click.Context(cli)
    train = cli.get_command(ctx, "train")
    options = {}
    for stage in ("stage1", "stage2"):
        command = train.get_command(ctx, stage)
        options[stage] = {name for p in command.params if isinstance(p, click.Option)
                          for name in (*p.opts, *p.secondary_opts)}
        options[stage] |= {p.name for p in command.params if isinstance(p, click.Argument)}
    everywhere = options["stage1"] | options["stage2"]
    not_options = {"dataset": "kind", "root": "root", "dataset_options": "--val-size", "progress": "--quiet"}
    missing = sorted(k for k in keys if not_options.get(k, "--" + k.replace("_", "-")) not in everywhere)
    assert not missing, f"config keys of docs/training.md without a `gpf train` option: {missing}"


def test_the_new_training_options_show_their_defaults_from_the_config():
    from gpf.train.config import Stage2Config, TrainConfig

    import re

    text = invoke(["train", "stage2", "--help"], terminal_width=200).output
    for option, cls, key in (("--branch-width", Stage2Config, "branch_width"),
                             ("--fusion-width", Stage2Config, "fusion_width"),
                             ("--dropout", Stage2Config, "dropout"), ("--emd-r", Stage2Config, "emd_r"),
                             ("--log-interval", TrainConfig, "log_interval")):
        match = re.search(rf"^\s+{re.escape(option)} [A-Z]+(.*?)(?=^\s+--|\Z)", text, re.M | re.S)
        assert match, (option, text)
        assert f"[default: {getattr(cls(), key)}]" in " ".join(match.group(1).split()), (option, match.group(1))


# ----------------------------------------------------------------------------- 4. a batch larger than the split

def test_stage2_default_batch_on_a_small_split_names_a_batch_size_that_works(world, tmp_path):
    run = tmp_path / "run"
    message = refused(["train", "stage2", "--shards", world["shards"], *TINY, "--out", run, "--workers", 0,
                       "--quiet"], "24 training sample(s)", "--batch-size 64", "pass --batch-size 8")
    assert "world_size" not in message and "drop_last" not in message
    assert not (run / "last.pt").exists()                  # refused before any training
    # the value it names works, with the options that used to be --config only
    result = invoke(["train", "stage2", "--shards", world["shards"], *TINY, "--out", run, "--workers", 0,
                     "--batch-size", 8, "--epochs", 1, "--branch-width", 16, "--fusion-width", 16, "--dropout", 0,
                     "--emd-r", 1, "--log-interval", 5, "--no-tensorboard", "--quiet"])
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((run / "config.yaml").read_text())["config"]
    assert (saved["batch_size"], saved["branch_width"], saved["fusion_width"], saved["dropout"], saved["emd_r"],
            saved["log_interval"]) == (8, 16, 16, 0.0, 1, 5)
    assert "--batch-size" in (REPO / "docs" / "training.md").read_text().split("## Schedule", 1)[1]


@pytest.mark.parametrize("samples, world_size, fits", [(47, 1, 16), (24, 1, 8), (3, 1, 1), (1, 1, 1), (47, 4, 16),
                                                       (40, 3, 15), (5, 4, 4)])
def test_the_batch_size_named_is_a_power_of_two_with_two_steps(samples, world_size, fits):
    from gpf.train.stage2 import batch_size_that_fits

    assert batch_size_that_fits(samples, world_size) == fits


# ----------------------------------------------------------------------------- 5. resuming a stage-1 run in stage 2

def test_resuming_a_stage1_run_in_stage2_says_so_first(world, tmp_path):
    message = refused(["train", "stage2", "--resume", world["run1"]], "is a stage-1 run",
                      f"gpf train stage1 KIND ROOT --resume {world['run1']}", f"--stage1 {world['run1']}")
    assert "no shards" not in message
    bare = tmp_path / "bare"                               # no config.yaml: the checkpoint says which stage
    bare.mkdir()
    shutil.copy(world["run1"] / "last.pt", bare / "last.pt")
    refused(["train", "stage2", "--resume", bare, "--shards", world["shards"]], "is a stage-1 run",
            "stage-1 checkpoint")


def test_resuming_a_stage2_run_in_stage1_says_so_first(world, tmp_path):
    run = tmp_path / "run2"
    result = invoke(["train", "stage2", "--shards", world["shards"], *TINY, "--out", run, "--workers", 0,
                     "--batch-size", 8, "--epochs", 1, "--branch-width", 8, "--fusion-width", 8, "--quiet"])
    assert result.exit_code == 0, result.output
    refused(["train", "stage1", "ava", world["ava"], "--resume", run], "is a stage-2 run",
            f"gpf train stage2 --resume {run}")


# ----------------------------------------------------------------------------- 7. shards verify / info

@pytest.mark.parametrize("command", ["verify", "info"])
def test_a_folder_that_is_not_a_shard_folder_is_named_as_such(world, tmp_path, command):
    for folder in (world["ava"], tmp_path):
        message = refused(["shards", command, folder], f"{folder} is not a shard folder", "no manifest.json",
                          "gpf preprocess")
        assert "has not finished" not in message


def test_a_shard_set_without_a_single_sample_is_not_ok(tmp_path):
    from gpf.shards.manifest import RunFields, write_manifest
    from gpf.shards.writer import write_shard

    out = tmp_path / "empty"
    for split, index in (("train", 0), ("train", 1), ("val", 0)):
        rows = [{"id": f"{split}{index}-{i}", "status": "missing", "error": "a.jpg: no such file"} for i in range(3)]
        write_shard(out, split, index, [], rows)
    write_manifest(out, RunFields(dataset="folder", scores=(1.0, 2.0, 3.0), threshold=2.0, view_size=32))
    result = invoke(["shards", "verify", out])
    assert result.exit_code == 1, result.output
    assert "no sample was written (all 9 image(s) failed: missing 9)" in result.output
    assert "status and error columns" in result.output and str(out / "meta") in result.output
    assert result.output.strip().splitlines()[-1].endswith("1 problem(s)")
    assert invoke(["shards", "verify", out, "--quick"]).exit_code == 1


def test_shards_info_prints_the_config_one_key_per_line(world):
    result = invoke(["shards", "info", world["shards"]])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    config = lines[lines.index("config:") + 1:]
    assert len(config) > 5 and all(line.startswith("  ") and ": " in line for line in config)
    assert "  tau: 0.7" in config and "  eb_layer: features.pool2" in config


# ----------------------------------------------------------------------------- 9. Ctrl-C

# Runs ``gpf ARGS`` with one step slowed down (a shard after the first, the second epoch), so the
# interrupt lands mid-run; SIGINT is made to raise KeyboardInterrupt even where the parent ignores it.
_DRIVER = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
which, args = sys.argv[1], sys.argv[2:]
if which == "preprocess":
    import gpf.pipeline.preprocess as module
    original, calls = module._compute_shard, []
    def slowed(*a, **k):
        calls.append(1)
        if len(calls) > 1:
            time.sleep(120)
        return original(*a, **k)
    module._compute_shard = slowed
else:
    import gpf.train.stage2 as module
    original = module.Stage2Task.train_batches
    def slowed(self, epoch):
        if epoch >= 1:
            time.sleep(120)
        return original(self, epoch)
    module.Stage2Task.train_batches = slowed
sys.argv = ["gpf", *args]
from gpf.cli.main import main
main(args)
"""


def _interrupt(tmp_path, which: str, args: list, ready) -> subprocess.CompletedProcess:
    """Start the driver, wait until ``ready()`` (work was kept), send SIGINT; bounded in time."""
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO.parent), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, str(driver), which, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 180
        while not ready():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run never got going"
            time.sleep(0.1)
        time.sleep(1.0)                                   # now inside the slowed step
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.slow
def test_ctrl_c_in_preprocess_keeps_the_shards_and_names_the_same_command(world, tmp_path, monkeypatch):
    out = tmp_path / "shards"
    args = ["preprocess", "ava", world["ava"], "--stage1", world["run1"], "--out", out, "--samples-per-shard", 6,
            "--workers", 1, "--val-size", 6, "--quiet"]
    run = _interrupt(tmp_path, "preprocess", args, lambda: any(out.glob("*.stats.json")))
    assert run.returncode == 130, (run.stdout, run.stderr)
    assert "Aborted!" not in run.stderr and "Traceback" not in run.stderr
    assert f"interrupted: the 1 finished shard(s) in {out} are kept" in run.stderr
    assert f"resume with the same command: gpf preprocess ava {world['ava']} --stage1 {world['run1']}" in run.stderr

    # 10. the same command resumes: the finished shard is skipped, not counted in the rate
    from gpf.pipeline.progress import Progress

    kept = sum(json.loads(path.read_text())["rows"] for path in out.glob("*.stats.json"))

    calls = {"skip": 0, "update": 0}
    skip, update = Progress.skip, Progress.update
    monkeypatch.setattr(Progress, "skip", lambda self, n: (calls.__setitem__("skip", calls["skip"] + n),
                                                           skip(self, n))[1])
    monkeypatch.setattr(Progress, "update", lambda self, n=1, failed=0, **extra: (
        calls.__setitem__("update", calls["update"] + n), update(self, n, failed, **extra))[1])
    result = invoke(args)
    assert result.exit_code == 0, result.output
    assert "1 already done" in result.output
    images = int(re.search(r"images: (\d+)", result.output).group(1))
    assert kept > 0 and calls == {"skip": kept, "update": images - kept}


@pytest.mark.slow
def test_ctrl_c_in_training_keeps_the_last_epoch_and_names_the_resume_command(world, tmp_path):
    run_dir = tmp_path / "run"
    args = ["train", "stage2", "--shards", world["shards"], *TINY, "--out", run_dir, "--workers", 0,
            "--batch-size", 8, "--epochs", 3, "--branch-width", 8, "--fusion-width", 8, "--no-tensorboard",
            "--quiet"]
    run = _interrupt(tmp_path, "stage2", args, lambda: (run_dir / "last.pt").exists())
    assert run.returncode == 130, (run.stdout, run.stderr)
    assert "Aborted!" not in run.stderr and "Traceback" not in run.stderr
    assert f"interrupted: {run_dir} keeps the checkpoint of the last finished epoch" in run.stderr
    assert f"resume with: gpf train stage2 --resume {run_dir}" in run.stderr
    result = invoke(["train", "stage2", "--resume", run_dir, "--workers", 0, "--quiet"])
    assert result.exit_code == 0, result.output
    assert "3 epoch(s) done" in result.output


def test_ctrl_c_before_the_first_checkpoint_says_to_start_again(tmp_path):
    from gpf.cli.train import _interrupted

    lines = _interrupted("stage2")({"out": str(tmp_path / "run"), "resume": None})
    assert lines[0].startswith("interrupted before the first epoch ended")
    assert lines[1].startswith("start again with the same command: gpf")


def test_ctrl_c_in_any_other_command_is_one_line_and_exit_130(monkeypatch):
    import gpf.cli.models as models

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(models.models, "callback", interrupted)
    result = invoke(["models"])
    assert result.exit_code == 130 and "interrupted" in result.output and "Aborted!" not in result.output


# ----------------------------------------------------------------------------- 10. the rate of a resumed run

def test_skipped_items_move_the_count_but_not_the_rate():
    import io

    from gpf.pipeline.progress import Progress

    log = io.StringIO()
    progress = Progress(100_000, "preprocess", stream=log, interval=0)
    progress.skip(90_000)
    time.sleep(0.2)
    progress.update(20)
    progress.close()
    assert progress.done == 90_020 and progress.skipped == 90_000
    assert progress.rate < 200                                   # 20 images in >= 0.2 s, not 90,020
    assert "90020/100000 img" in log.getvalue().splitlines()[-1]


# ----------------------------------------------------------------------------- 11. "Error:" and brackets

def test_every_cli_error_line_is_capitalised_as_clicks():
    for path in (REPO / "cli").glob("*.py"):
        text = path.read_text()
        assert not re.search(r"""["'](?:f["'])?error: """, text) and 'f"error:' not in text, path


def test_too_many_failures_ends_with_an_error_line(world, tmp_path):
    ava = tmp_path / "ava"
    shutil.copytree(world["ava"], ava)
    (ava / "images" / "700000.jpg").write_bytes(b"not a photo")
    result = invoke(["preprocess", "ava", ava, "--stage1", world["stage1"], "--out", tmp_path / "o",
                     "--samples-per-shard", 8, "--max-failure-rate", 0, "--quiet"])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[-1].startswith("Error: ") and "--max-failure-rate" in lines[-1], result.output
    assert not [line for line in lines if line.startswith("error:")]


def test_image_errors_nest_no_brackets():
    from gpf.pipeline.images import STATUSES, ImageError

    for status in STATUSES:
        text = str(ImageError("a (1).jpg", status, "not an image in a supported format (first bytes b'PK')"))
        assert _depth(text) <= 1 and "))" not in text, text


def test_a_photo_that_is_not_an_image_is_one_line_without_nested_brackets(world, tmp_path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"hello, not a photo")
    message = refused(["attention", photo, "--checkpoint", world["stage1"], "--out", tmp_path / "a.png",
                       "--device", "cpu"], "not an image", "re-download or remove it")
    assert _depth(message) <= 1 and "))" not in message


# ----------------------------------------------------------------------------- 15. help and docs

def test_every_preprocess_option_has_help_and_the_kinds_read_well():
    ctx = click.Context(cli)
    group = cli.get_command(ctx, "preprocess")
    titles = {"ava": "Preprocess an AVA dataset.", "photonet": "Preprocess a Photo.net dataset.",
              "folder": "Preprocess a folder (CSV) dataset."}
    for kind, title in titles.items():
        command = group.get_command(ctx, kind)
        assert command.help.startswith(title)
        bare = [p.opts[0] for p in command.params if isinstance(p, click.Option) and not p.help]
        assert not bare, f"preprocess {kind}: options without help: {bare}"


def test_a_split_that_differs_from_stage1s_names_the_split_seed_option(world, tmp_path):
    message = refused(["preprocess", "ava", world["ava"], "--stage1", world["run1"], "--out", tmp_path / "o",
                       "--val-size", 5, "--quiet"], "split differs", "--val-size/--split-seed")
    assert "--seed)" not in message and "--seed " not in message


def test_the_docs_say_what_the_code_does():
    reliability = (REPO / "docs" / "reliability.md").read_text()
    row = next(line for line in reliability.splitlines()
               if line.startswith("| flipped byte inside a JPEG member | train stage2"))
    assert "wrong pixels" not in row and "xfail" not in row and "damaged shard" in row
    shards = (REPO / "docs" / "shards.md").read_text()
    json_row = next(line for line in shards.splitlines() if line.startswith("| `json` |"))
    assert '"source"' in json_row and '"path"' not in json_row
