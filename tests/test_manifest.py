"""Files of an older gpf: read when the format is readable, refused naming both versions otherwise.

tests/data/format1/ holds what gpf 0.1.0 wrote (manifest ``format`` 1,
checkpoints ``format_version`` 1; see its README). The shards are copied to
``tmp_path`` before use: commands may write next to them (checksum cache,
rewritten manifest), and tests/data must stay as committed.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.cli import invoke
from gpf.model.checkpoint import (FORMAT_VERSION, READABLE_VERSIONS, AttentionBlock, Checkpoint, CheckpointError,
                                  load_checkpoint, model_from_checkpoint)
from gpf.pipeline.compat import check_fit
from gpf.shards.manifest import MANIFEST_FORMAT, READABLE_FORMATS, Manifest, ManifestError, read_manifest

DATA = Path(__file__).parent / "data" / "format1"
SCORES = tuple(float(s) for s in range(1, 11))


@pytest.fixture
def shards(tmp_path) -> Path:
    copy = tmp_path / "shards"
    shutil.copytree(DATA / "shards", copy)
    return copy



def assert_same_checkpoint(a: Checkpoint, b: Checkpoint, *, skip=("format_version",)) -> None:
    """Field by field (tensors compared with torch.equal, which dataclass == cannot do)."""
    for field in dataclasses.fields(Checkpoint):
        if field.name in skip:
            continue
        left, right = getattr(a, field.name), getattr(b, field.name)
        if field.name == "state_dict":
            assert left.keys() == right.keys()
            assert all(torch.equal(left[k], right[k]) for k in left), field.name
        elif field.name == "attention" and left is not None:
            assert right is not None
            for sub in dataclasses.fields(AttentionBlock):
                x, y = getattr(left, sub.name), getattr(right, sub.name)
                if sub.name == "stage1_state_dict":
                    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
                else:
                    assert x == y, sub.name
        else:
            assert left == right, field.name


# ----------------------------------------------------------------------------- format 1 is read

def test_format1_files_are_read_and_used(shards, tmp_path):
    stored = json.loads((DATA / "shards" / "manifest.json").read_text())
    assert stored["format"] == 1 and "contrastive" not in stored      # really the old layout

    manifest = read_manifest(shards)
    assert manifest.format == 1 and manifest.gpf_version == "0.1.0" and manifest.complete
    run = manifest.run
    assert run.dataset == "ava" and run.scores == SCORES and run.threshold == 5.0 and run.view_size == 32
    assert run.tau == 0.7 and run.eb_layer == "features.pool2"
    # the four run fields format 2 added are taken from the format-1 config
    assert run.contrastive is False
    assert run.attention_model["kind"] == "stage1" and run.attention_model["backbone"] == "tiny"
    assert run.split_spec and run.split_spec == stored["config"]["split_spec"]
    assert run.features_digest == stored["config"]["features_digest"]
    assert [e.name for e in manifest.shards] == ["test-000000", "train-000000", "train-000001", "val-000000"]
    assert manifest.samples("train") == 7 and manifest.samples("val") == 2 and manifest.samples("test") == 3
    assert manifest.random_crops == 1 and manifest.features

    stage1 = load_checkpoint(DATA / "stage1.pt", expect="stage1")
    assert stage1.format_version == 1 and stage1.kind == "stage1"
    assert stage1.split_spec and stage1.split_spec == run.split_spec
    assert run.attention_digest == stage1.digest == run.stage1_digest

    stage2 = load_checkpoint(DATA / "stage2.pt", expect="stage2")
    assert stage2.format_version == 1 and stage2.kind == "stage2"
    assert isinstance(stage2.attention, AttentionBlock)
    assert stage2.attention.stage1_digest == stage1.digest
    assert (stage2.attention.tau, stage2.attention.eb_layer, stage2.attention.contrastive) == \
        (0.7, "features.pool2", False)
    assert stage2.scores == SCORES and stage2.view_size == 32 and stage2.num_classes == 10
    assert type(model_from_checkpoint(stage2)).__name__ == "GPFNet"
    assert check_fit(stage2, run, model=str(DATA / "stage2.pt"), data=f"the shards in {shards}").warnings == []

    verified = invoke(["shards", "verify", shards])
    assert verified.exit_code == 0, verified.output
    assert "4 shard(s), 12 sample(s) checked" in verified.output

    out = tmp_path / "metrics.json"
    evaluated = invoke(["evaluate", "--checkpoint", DATA / "stage2.pt", "--shards", shards, "--split", "test",
                        "--workers", 0, "--device", "cpu", "--quiet", "--json", out])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(out.read_text())
    assert report["n"] == 3 and report["split"] == "test" and 0 <= report["accuracy"] <= 1

    rng = np.random.default_rng(0)
    photo = tmp_path / "photo.jpg"
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(photo, quality=90)
    predicted = invoke(["predict", "--checkpoint", DATA / "stage2.pt", photo, "--json", "--device", "cpu",
                        "--quiet"])
    assert predicted.exit_code == 0, predicted.output
    (line,) = [json.loads(text) for text in predicted.stdout.splitlines()]
    assert line["id"] == "photo.jpg" and line["status"] == "ok"
    assert len(line["distribution"]) == 10 and sum(line["distribution"]) == pytest.approx(1.0, abs=1e-5)
    assert 1.0 <= line["mean"] <= 10.0
    assert 0 <= line["x0"] < line["x1"] <= 56 and 0 <= line["y0"] < line["y1"] <= 40


# ----------------------------------------------------------------------------- newer formats are refused

def test_newer_formats_are_refused_naming_both_versions_and_round_trips(shards, tmp_path):
    readable = ", ".join(map(str, READABLE_FORMATS))
    assert readable == "1, 2" and MANIFEST_FORMAT == 2
    future = tmp_path / "future"
    shutil.copytree(shards, future)
    stored = json.loads((future / "manifest.json").read_text())
    stored["format"] = 99
    (future / "manifest.json").write_text(json.dumps(stored))
    with pytest.raises(ManifestError) as err:
        read_manifest(future)
    message = str(err.value)
    assert "manifest.json" in message and "format 99" in message and f"reads formats {readable}" in message
    assert "upgrade gpf" in message

    assert ", ".join(map(str, READABLE_VERSIONS)) == "1, 2" and FORMAT_VERSION == 2
    payload = torch.load(DATA / "stage2.pt", map_location="cpu", weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "future.pt")
    message = str(err.value)
    assert "future.pt" in message and "format_version 99" in message and "reads format_version 1, 2" in message
    assert "upgrade gpf" in message
    refused = invoke(["evaluate", "--checkpoint", tmp_path / "future.pt", "--shards", shards, "--workers", 0,
                      "--device", "cpu", "--quiet"])
    assert refused.exit_code == 1 and "format_version 99" in refused.output and "1, 2" in refused.output

    # round trips through the one plain form (written in the current format)
    for name in ("stage1.pt", "stage2.pt"):
        ckpt = load_checkpoint(DATA / name)
        back = Checkpoint.from_dict(ckpt.to_dict(), name)
        assert back.format_version == FORMAT_VERSION
        assert_same_checkpoint(back, ckpt)
        again = Checkpoint.from_dict(back.to_dict(), name)
        assert_same_checkpoint(again, back, skip=())
    old = read_manifest(shards)
    back = Manifest.from_dict(old.to_dict(), "round trip")
    assert back.format == MANIFEST_FORMAT and dataclasses.replace(back, format=1) == old
    assert Manifest.from_dict(back.to_dict(), "round trip") == back

    # `gpf shards verify --write-manifest` rewrites a format-1 manifest as format 2, run fields kept
    rewritten = invoke(["shards", "verify", shards, "--write-manifest"])
    assert rewritten.exit_code == 0, rewritten.output
    new = read_manifest(shards)
    assert new.format == MANIFEST_FORMAT and new.run == old.run and new.shards == old.shards and new.complete
    on_disk = json.loads((shards / "manifest.json").read_text())
    assert on_disk["format"] == 2 and on_disk["contrastive"] is False
    assert on_disk["attention_model"] == old.run.attention_model and on_disk["attention_model"]["kind"] == "stage1"
    assert on_disk["split_spec"] == old.run.split_spec and on_disk["features_digest"] == old.run.features_digest
    stage2 = load_checkpoint(DATA / "stage2.pt", expect="stage2")
    assert check_fit(stage2, new.run, model="stage2.pt", data="the rewritten shards").warnings == []
