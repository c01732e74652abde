"""Config resolution (gpf.train.config): defaults, YAML files, precedence, value checks, resume checks."""
from __future__ import annotations

import pytest
import yaml

from gpf.train.config import (ConfigError, Stage1Config, Stage2Config, build_config, check_resume_compatible,
                              load_yaml, to_dict)


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
    ("variant", "gated", "variant must be one of single, single-periph, single-frozen, random, random-frozen, pf, gpf; got 'gated'"),
    ("use_features", "maybe", "use_features must be one of auto, yes, no"),
    ("epochs", True, "epochs must be a positive integer"),
    ("out", "s3://bkt/runs/x", r"out s3://bkt/runs/x is a URL, but the run folder and the cache are local"),
    ("cache_dir", "gs://bkt/cache", r"cache_dir gs://bkt/cache is a URL"),
])
def test_bad_values_are_named(key, value, message):
    with pytest.raises(ConfigError, match=message):
        build_config(Stage2Config, overrides={key: value})


def test_resume_refuses_a_config_that_changes_the_run_and_allows_epochs():
    saved = to_dict(Stage2Config(shards="s", lr=0.01, epochs=5))
    check_resume_compatible(saved, Stage2Config(shards="s", lr=0.01, epochs=9, device="cpu"), "RUN")
    with pytest.raises(ConfigError, match=r"lr: 0\.01 -> 0\.1; seed: 0 -> 1"):
        check_resume_compatible(saved, Stage2Config(shards="s", lr=0.1, seed=1), "RUN")
