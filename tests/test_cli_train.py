"""``gpf train stage1|stage2`` (gpf.cli.train): options, config files and resumed runs, in the order they win.

The training itself is tested in test_train_stage1.py / test_train_stage2.py;
here the commands run one short epoch on data written by tests/helpers/training.py.
"""
from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from gpf.model.checkpoint import load_checkpoint
from gpf.train.config import Stage2Config, write_config

from helpers.training import mean_of, stage1_checkpoint, write_ava, write_shards


@pytest.fixture(scope="module")
def ava(tmp_path_factory):
    root = tmp_path_factory.mktemp("ava")
    votes = write_ava(root, n=28, n_test=4)
    return root, votes


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage2")
    ckpt = stage1_checkpoint(root / "stage1.pt")
    write_shards(root / "shards", ckpt, random_crops=2, features=True)
    return {"root": root, "stage1": ckpt, "shards": root / "shards"}


# ----------------------------------------------------------------------------- the commands

def test_cli_stage1_and_threshold_option(ava, tmp_path):
    from gpf.cli.main import cli

    root, votes = ava
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", "stage1", "ava", str(root), "--backbone", "tiny", "--weights",
                                      "none", "--out", str(run), "--view-size", "32", "--epochs", "1",
                                      "--batch-size", "4", "--val-size", "6", "--workers", "0",
                                      "--threshold", "8", "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"--stage1 {run}" in result.output
    ckpt = load_checkpoint(run / "best.pt", expect="stage1")
    assert ckpt.model_config["threshold"] == 8.0 and ckpt.threshold == 8.0
    assert all(mean_of(v) < 8 for v in votes.values())      # so every image is 'low' at threshold 8

    result = CliRunner().invoke(cli, ["train", "stage1", "ava", str(root), "--backbone", "tiny",
                                      "--out", str(tmp_path / "r2"), "--batch-size", "0"])
    assert result.exit_code != 0 and "batch_size must be a positive integer" in result.output


def test_cli_stage2_with_yaml_config_and_unknown_key(data, tmp_path):
    from gpf.cli.main import cli

    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"branch_width": 16, "fusion_width": 16, "epochs": 1, "batch_size": 4,
                                    "workers": 0, "weights": "none"}))
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", "stage2", "--shards", str(data["shards"]), "--backbone", "tiny",
                                      "--config", str(good), "--out", str(run), "--quiet", "--lr", "0.02"])
    assert result.exit_code == 0, result.output
    assert "best checkpoint:" in result.output
    assert load_checkpoint(run / "last.pt").config["lr"] == 0.02        # the option beats the file

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"epochs": 1, "learning_rate": 0.1}))
    result = CliRunner().invoke(cli, ["train", "stage2", "--shards", str(data["shards"]), "--backbone", "tiny",
                                      "--config", str(bad), "--out", str(tmp_path / "r2")])
    assert result.exit_code != 0
    assert "unknown key 'learning_rate'" in result.output and "Allowed keys:" in result.output
    assert "batch_size" in result.output


# ----------------------------------------------------------------------------- precedence

def test_given_options_become_config_keys_and_the_rest_stay_unset():
    from gpf.cli.train import _overrides

    given = {"lr": 0.3, "epochs": None, "compile_model": True, "config_file": "c.yaml", "quiet": True,
             "amp": False, "resume": None}
    assert _overrides(given) == {"lr": 0.3, "compile": True, "amp": False, "progress": False}
    assert _overrides({"quiet": False, "lr": None}) == {}


def test_option_beats_config_file_beats_resumed_run_beats_default(tmp_path):
    from gpf.cli.train import _build

    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"")                 # found by --resume; config.yaml is what is read
    write_config(Stage2Config(out=str(run), shards="s", lr=0.2, epochs=4, momentum=0.5, patience=3), run)
    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump({"lr": 0.3, "epochs": 6}))
    kw = {"resume": str(run), "config_file": str(config_file), "lr": 0.4, "quiet": False}
    cfg = _build(Stage2Config, kw)
    assert (cfg.lr, cfg.epochs, cfg.momentum, cfg.patience) == (0.4, 6, 0.5, 3)
    assert cfg.batch_size == Stage2Config().batch_size == 64             # nobody set it: the paper's
    assert _build(Stage2Config, {**kw, "lr": None}).lr == 0.3
    assert _build(Stage2Config, {"resume": str(run), "lr": None}).lr == 0.2
    assert _build(Stage2Config, {"lr": None}).lr == Stage2Config().lr
