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



def assert_same_checkpoint(a: Checkpoint, b: Checkpoint, *, skip=("format_version", "origin")) -> None:
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
    # the run fields format 3 added, as the format-1 shards were made
    assert run.view_round is None and run.view_min_side is None and run.view_fit is None   # legacy view rule
    assert run.features_from == "pixels" and (run.jpeg_quality, run.jpeg_subsampling) == (95, "4:2:0")
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


def test_format1_shards_evaluate_as_predict_scores_their_photos(shards, tmp_path):
    """The photos the format-1 shards were made from (tests/helpers/ava.py rebuilds them byte for byte, see the
    fixture's README) get from `predict` with the old checkpoint the boxes the old Parquet rows hold and the
    scores `evaluate` computes from the old shards: the old view rule and JPEG settings are read as made."""
    import pandas as pd

    from gpf.env_info import environment_summary
    from gpf.pipeline.evaluation import evaluate_checkpoint
    from gpf.pipeline.scoring import Scorer
    from helpers.ava import make_ava

    make_ava(tmp_path / "ava", n=12, seed=3)
    rows = pd.read_parquet(shards / "meta").set_index("id")
    # The stored views came out of the resizer of the PIL recorded in the manifest (Pillow 13); predict resizes
    # with this one. Exact under the same PIL; pillow-simd's resize moves the scores by ~1e-5.
    same_pil = read_manifest(shards).run.environment.get("pil") == environment_summary()["pil"]
    tolerance = 1e-5 if same_pil else 1e-3
    scorer = Scorer.from_checkpoint(DATA / "stage2.pt", device="cpu", workers=1)
    assert (scorer.geometry.round_to, scorer.geometry.min_side) == (8, 8)      # tiny: stride 8, minimum input 8
    assert scorer.jpeg == (95, "4:2:0")
    for split in ("test", "train", "val"):
        evaluation = evaluate_checkpoint(DATA / "stage2.pt", shards, split=split, workers=0, device="cpu")
        photos = [tmp_path / "ava" / "images" / f"{i}.jpg" for i in evaluation.ids]
        results = {r.id: r for r in scorer.score_many(photos)}
        for image_id, mean in zip(evaluation.ids, evaluation.pred_mean):
            row = rows.loc[image_id]
            if same_pil:
                assert results[image_id].box == (row.x0, row.y0, row.x1, row.y1), image_id
            assert abs(results[image_id].mean - mean) <= tolerance, image_id


# ----------------------------------------------------------------------------- newer formats are refused

def test_newer_formats_are_refused_naming_both_versions_and_round_trips(shards, tmp_path):
    readable = ", ".join(map(str, READABLE_FORMATS))
    assert readable == "1, 2, 3" and MANIFEST_FORMAT == 3
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

    assert ", ".join(map(str, READABLE_VERSIONS)) == "1, 2, 3" and FORMAT_VERSION == 3
    payload = torch.load(DATA / "stage2.pt", map_location="cpu", weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "future.pt")
    message = str(err.value)
    assert "future.pt" in message and "format_version 99" in message and "reads format_version 1, 2, 3" in message
    assert "upgrade gpf" in message
    refused = invoke(["evaluate", "--checkpoint", tmp_path / "future.pt", "--shards", shards, "--workers", 0,
                      "--device", "cpu", "--quiet"])
    assert refused.exit_code == 1 and "format_version 99" in refused.output and "1, 2, 3" in refused.output

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

    # `gpf shards verify --write-manifest` rewrites a format-1 manifest in the current format, run fields kept
    # (those of later formats as the old shards were made: views by the legacy rule, features from pixels)
    rewritten = invoke(["shards", "verify", shards, "--write-manifest"])
    assert rewritten.exit_code == 0, rewritten.output
    new = read_manifest(shards)
    assert new.format == MANIFEST_FORMAT and new.run == old.run and new.shards == old.shards and new.complete
    on_disk = json.loads((shards / "manifest.json").read_text())
    assert on_disk["format"] == 3 and on_disk["contrastive"] is False
    assert on_disk["view_round"] is None and on_disk["features_from"] == "pixels"
    assert (on_disk["jpeg_quality"], on_disk["jpeg_subsampling"]) == (95, "4:2:0")
    assert on_disk["attention_model"] == old.run.attention_model and on_disk["attention_model"]["kind"] == "stage1"
    assert on_disk["split_spec"] == old.run.split_spec and on_disk["features_digest"] == old.run.features_digest
    stage2 = load_checkpoint(DATA / "stage2.pt", expect="stage2")
    assert check_fit(stage2, new.run, model="stage2.pt", data="the rewritten shards").warnings == []


# ----------------------------------------------------------------------------- damaged or edited files

def _edit_manifest(folder: Path, change) -> None:
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _edited_checkpoint(tmp_path: Path, change, name: str = "edited.pt") -> Path:
    payload = torch.load(DATA / "stage2.pt", weights_only=True)
    change(payload)
    torch.save(payload, tmp_path / name)
    return tmp_path / name


def test_a_format1_stage2_run_resumes_on_the_shards_it_was_trained_on(shards, tmp_path):
    run = tmp_path / "old-run"
    run.mkdir()
    shutil.copy(DATA / "stage2.pt", run / "last.pt")
    result = invoke(["train", "stage2", "--resume", run, "--shards", shards, "--stage1", DATA / "stage1.pt",
                     "--epochs", 2, "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(run / "last.pt").train["epoch"] == 2


@pytest.mark.parametrize("field, value, words", [
    ("view_size", "x", "'view_size' must be int"),
    ("tau", "x", "'tau' must be number"),
    ("contrastive", "false", "'contrastive' must be bool"),
    ("format", True, "manifest format True"),
    ("format", 1.0, "manifest format 1.0"),
    ("complete", "false", "'complete' must be true or false"),
])
def test_a_damaged_manifest_value_is_one_line_naming_it(shards, field, value, words):
    _edit_manifest(shards, lambda data: data.__setitem__(field, value))
    with pytest.raises(ManifestError, match=words):
        read_manifest(shards)
    result = invoke(["evaluate", "--checkpoint", DATA / "stage2.pt", "--shards", shards, "--device", "cpu"])
    assert result.exit_code == 1 and words in result.output and len(result.output.splitlines()) == 1


def test_a_damaged_shard_entry_is_named(shards):
    _edit_manifest(shards, lambda data: data["shards"][0].__setitem__("count", "x"))
    with pytest.raises(ManifestError, match=r"'count' must be int"):
        read_manifest(shards)


@pytest.mark.parametrize("change, words", [
    (lambda p: p["attention"].__setitem__("tau", "x"), "'tau' is 'x', not a number"),
    (lambda p: p["attention"].__setitem__("stage1_state_dict", [1]), "'stage1_state_dict'"),
    (lambda p: p["model_config"].pop("num_classes"), "lacks 'num_classes'"),
    (lambda p: p["model_config"].__setitem__("view_size", "x"), "'view_size' is 'x'"),
    (lambda p: p.__setitem__("shards", "x"), "'shards' is a str"),
    (lambda p: p.__setitem__("format_version", True), "format_version True"),
])
def test_a_damaged_checkpoint_value_is_a_checkpoint_error(tmp_path, change, words):
    with pytest.raises(CheckpointError, match=words):
        load_checkpoint(_edited_checkpoint(tmp_path, change))


def test_predict_refuses_a_checkpoint_whose_embedded_attention_was_edited(tmp_path):
    edited = _edited_checkpoint(tmp_path, lambda p: p["attention"].__setitem__("tau", 0.5))
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.full((40, 56, 3), 120, np.uint8)).save(photo)
    result = invoke(["predict", "--checkpoint", edited, photo, "--device", "cpu", "--quiet"])
    assert result.exit_code == 1
    assert "tau 0.5 vs 0.7" in result.output and "damaged or was edited" in result.output
    assert "--allow-attention-mismatch" not in result.output     # an option of `gpf evaluate` only


def test_verify_does_not_call_shards_without_a_score_scale_ok(shards):
    _edit_manifest(shards, lambda data: data.__setitem__("scores", None))
    result = invoke(["shards", "verify", shards, "--quick"])
    assert result.exit_code == 1 and "lacks scores" in result.output


def test_write_manifest_never_rewrites_a_newer_format(shards):
    _edit_manifest(shards, lambda data: data.__setitem__("format", MANIFEST_FORMAT + 1))
    before = (shards / "manifest.json").read_bytes()
    result = invoke(["shards", "verify", shards, "--quick", "--write-manifest"])
    assert result.exit_code == 1 and "upgrade gpf" in result.output
    assert (shards / "manifest.json").read_bytes() == before


def test_a_stage1_checkpoint_reports_the_scale_it_was_trained_with():
    stage1 = load_checkpoint(DATA / "stage1.pt", expect="stage1")
    assert stage1.num_classes == 2 and stage1.scores == SCORES and stage1.threshold == 5.0


def test_a_rewritten_format1_checkpoint_keeps_reading_its_shards_record(tmp_path):
    from gpf.pipeline.compat import trained_on

    old = load_checkpoint(DATA / "stage2.pt")
    torch.save(old.to_dict(), tmp_path / "rewritten.pt")
    new = load_checkpoint(tmp_path / "rewritten.pt")
    assert new.format_version == FORMAT_VERSION
    assert trained_on(new) == trained_on(old)
    assert trained_on(new).contrastive is False and trained_on(new).attention_model["kind"] == "stage1"
