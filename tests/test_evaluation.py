"""`gpf evaluate` / `evaluate_checkpoint` against an independent reference.

The fixture writes a tiny AVA folder (real formats: AVA.txt with 15 columns,
tags.txt, generic and category test lists, JPEGs including one with an EXIF
rotation), a stage-1 checkpoint, shards made by `run_preprocess`, and stage-2
checkpoints with random weights. The reference reads the shard tars with
`tarfile` and PIL, runs the model one image at a time and scores with
`gpf.model.metrics.evaluate`. The data is built once per session and shared
with test_scoring.py and test_attention_cli.py (`eval_data`, from tests/helpers/evaluation.py).
"""
from __future__ import annotations

import functools
import io
import json
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from helpers.evaluation import CATEGORIES, SCORES, TEST_IDS, build_eval_data, make_stage2, save_stage1


@pytest.fixture(scope="session")
def eval_data(tmp_path_factory):
    return build_eval_data(tmp_path_factory)


@pytest.fixture(scope="module")
def gpf_result(eval_data):
    from gpf.pipeline.evaluation import evaluate_checkpoint

    return evaluate_checkpoint(eval_data["gpf"], eval_data["shards"], "test", batch_size=5, workers=0,
                               device="cpu", by_category=True)


# ----------------------------------------------------------------------------- the reference

def _uint8(data: bytes) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB"))).permute(2, 0, 1)


@functools.lru_cache(maxsize=None)
def reference_predictions(shard_dir: Path, checkpoint: Path, split: str = "test") -> dict:
    """id -> (predicted distribution, true distribution), one image at a time from the raw tars."""
    from gpf.model.checkpoint import load_checkpoint, model_from_checkpoint

    model = model_from_checkpoint(load_checkpoint(checkpoint))
    out = {}
    for tar in sorted(shard_dir.glob(f"{split}-*.tar")):
        samples: dict = defaultdict(dict)
        with tarfile.open(tar) as archive:
            for member in archive.getmembers():
                key, _, name = member.name.partition(".")
                samples[key][name] = archive.extractfile(member).read()
        for sample in samples.values():
            meta = json.loads(sample["json"])
            with torch.no_grad():
                periph = model.normalize(_uint8(sample["periph.jpg"])[None])
                if model.variant == "single-frozen":
                    probs = torch.softmax(model(periph), 1)
                elif model.variant == "random-frozen":
                    crops = sorted(k for k in sample if k.startswith("rand"))
                    assert len(crops) == 2
                    probs = sum(torch.softmax(model(periph, model.normalize(_uint8(sample[k])[None])), 1)
                                for k in crops) / len(crops)
                else:
                    probs = torch.softmax(model(periph, model.normalize(_uint8(sample["fovea.jpg"])[None])), 1)
            votes = np.asarray(meta["votes"], float)
            out[meta["id"]] = (probs[0].double().numpy(), votes / votes.sum())
    return out


def _reference_metrics(reference: dict, ids) -> dict:
    from gpf.model.metrics import evaluate

    pred = np.stack([reference[i][0] for i in ids])
    true = np.stack([reference[i][1] for i in ids])
    return evaluate(pred, true, 5.0, SCORES)


# ----------------------------------------------------------------------------- tests

@pytest.mark.parametrize("variant", ["gpf", "random", "single"])
def test_metrics_equal_the_reference_computed_image_by_image(eval_data, gpf_result, variant):
    from gpf.pipeline.evaluation import evaluate_checkpoint

    result = gpf_result if variant == "gpf" else evaluate_checkpoint(
        eval_data[variant], eval_data["shards"], "test", batch_size=3, workers=0, device="cpu")
    reference = reference_predictions(eval_data["shards"], eval_data[variant])
    assert sorted(result.ids) == sorted(TEST_IDS)            # every test image exactly once
    expected = _reference_metrics(reference, sorted(reference))
    for key in ("accuracy", "srcc", "lcc", "mae", "rmse", "emd"):
        assert result.metrics[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), key
    for row, image_id in enumerate(result.ids):
        np.testing.assert_allclose(result.pred_dist[row], reference[image_id][0], atol=1e-5)
        np.testing.assert_allclose(result.true_dist[row], reference[image_id][1], atol=1e-12)
    # the model is input-dependent, so matching the reference is not a coincidence of constants
    assert np.ptp(result.pred_mean) > 0.2


def test_by_category_is_table_iv_on_the_category_lists(eval_data, gpf_result):
    reference = reference_predictions(eval_data["shards"], eval_data["gpf"])
    assert gpf_result.group_kind == "category"
    assert [g.name for g in gpf_result.groups] == sorted(CATEGORIES)
    for group in gpf_result.groups:
        ids = CATEGORIES[group.name]
        assert group.n == len(ids)
        expected = _reference_metrics(reference, ids)
        for key in ("mae", "rmse", "emd", "accuracy", "lcc"):
            assert group.metrics[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6)
    assert gpf_result.ungrouped == len(TEST_IDS) - sum(map(len, CATEGORIES.values()))


def test_groups_fall_back_to_semantic_tags_when_no_category_is_recorded():
    from gpf.model.metrics import evaluate
    from gpf.pipeline.evaluation import group_results

    rng = np.random.default_rng(3)
    pred = rng.dirichlet(np.ones(10), size=6)
    true = rng.dirichlet(np.ones(10), size=6)
    ids = [f"i{k}" for k in range(6)]
    labels = {"i0": (None, ("Nature",)), "i1": (None, ("Nature", "Abstract")), "i2": (None, ("Abstract",)),
              "i3": (None, ()), "i4": (None, ("Nature",)), "i5": (None, ("Abstract", "Abstract"))}
    kind, groups, ungrouped = group_results(ids, pred, true, labels, 5.0, SCORES)
    assert kind == "tag" and ungrouped == 1
    by_name = {g.name: g for g in groups}
    assert {k: g.n for k, g in by_name.items()} == {"Abstract": 3, "Nature": 3}
    assert by_name["Nature"].metrics["emd"] == pytest.approx(evaluate(pred[[0, 1, 4]], true[[0, 1, 4]], 5.0)["emd"])


def test_cli_json_table_and_plots(eval_data, tmp_path):
    from gpf.cli.evaluate import evaluate

    out, plots = tmp_path / "metrics.json", tmp_path / "plots"
    run = CliRunner().invoke(evaluate, ["--checkpoint", str(eval_data["gpf"]), "--shards", str(eval_data["shards"]),
                                        "--by-category", "--json", str(out), "--plots", str(plots),
                                        "--workers", "0", "--device", "cpu", "--quiet", "--batch-size", "4"])
    assert run.exit_code == 0, run.output
    assert "accuracy %" in run.stdout and "SRCC" in run.stdout and "animal" in run.stdout
    report = json.loads(out.read_text())
    assert {"accuracy", "srcc", "lcc", "mae", "rmse", "emd", "n", "split", "checkpoint"} <= set(report)
    assert report["n"] == len(TEST_IDS) and report["split"] == "test"
    reference = reference_predictions(eval_data["shards"], eval_data["gpf"])
    assert report["srcc"] == pytest.approx(_reference_metrics(reference, sorted(reference))["srcc"], rel=1e-5)
    groups = report["by_category"]["groups"]
    assert report["by_category"]["kind"] == "category" and groups["animal"]["n"] == 5
    # the accuracy column of the table is a percentage of the JSON's fraction
    assert f"{100 * report['accuracy']:.2f}" in run.stdout
    pngs = sorted(plots.glob("*.png"))
    assert [p.name for p in pngs] == ["distributions.png", "emd_hist.png", "mean_scatter.png"]
    for png in pngs:
        with Image.open(png) as im:
            im.verify()
        with Image.open(png) as im:
            assert im.format == "PNG" and im.width > 100 and im.height > 100


@pytest.mark.parametrize("change, words", [
    ({"num_classes": 7}, ["N = 7", "N = 10"]),
    ({"view_size": 96}, ["96", "--view-size 64"]),
])
def test_checkpoint_that_does_not_fit_the_shards_is_refused(eval_data, tmp_path, change, words):
    from gpf.pipeline.compat import FitError
    from gpf.pipeline.evaluation import evaluate_checkpoint
    from gpf.shards.manifest import read_manifest

    run = read_manifest(eval_data["shards"]).run
    ckpt = make_stage2(tmp_path / "other.pt", eval_data["stage1"], eb_layer=run.eb_layer, **change)
    with pytest.raises(FitError) as info:
        evaluate_checkpoint(ckpt, eval_data["shards"], workers=0, device="cpu")
    message = str(info.value)
    assert all(w in message for w in words), message
    assert "other.pt" in message and str(eval_data["shards"]) in message, message


def test_other_attention_model_is_refused_unless_allowed(eval_data, tmp_path):
    from gpf.cli.evaluate import evaluate
    from gpf.pipeline.evaluation import evaluate_checkpoint
    from gpf.shards.manifest import read_manifest

    other_stage1 = save_stage1(tmp_path / "other-stage1.pt", seed=5)
    eb_layer = read_manifest(eval_data["shards"]).run.eb_layer
    ckpt = make_stage2(tmp_path / "other.pt", other_stage1, eb_layer=eb_layer)
    args = ["--checkpoint", str(ckpt), "--shards", str(eval_data["shards"]), "--workers", "0",
            "--device", "cpu", "--quiet"]
    refused = CliRunner().invoke(evaluate, args)
    assert refused.exit_code == 1
    assert "did not make the crops" in refused.output and "--allow-attention-mismatch" in refused.output
    assert "Traceback" not in refused.output and len(refused.output.strip().splitlines()) == 1

    result = evaluate_checkpoint(ckpt, eval_data["shards"], workers=0, device="cpu",
                                 allow_attention_mismatch=True)
    assert result.n == len(TEST_IDS) and any("attention model digest" in w for w in result.warnings)


def test_stage1_checkpoint_and_missing_split_are_one_line_errors(eval_data):
    from gpf.cli.evaluate import evaluate

    base = ["--shards", str(eval_data["shards"]), "--workers", "0", "--device", "cpu", "--quiet"]
    stage1 = CliRunner().invoke(evaluate, ["--checkpoint", str(eval_data["stage1"]), *base])
    assert stage1.exit_code == 1 and "stage-1" in stage1.output and "Traceback" not in stage1.output
    no_val = CliRunner().invoke(evaluate, ["--checkpoint", str(eval_data["gpf"]), "--split", "val", *base])
    assert no_val.exit_code == 1 and "'val'" in no_val.output and "Traceback" not in no_val.output


def test_json_is_strict_when_a_group_of_one_image_has_no_correlation():
    from gpf.model.metrics import evaluate
    from gpf.pipeline.evaluation import EvaluationResult, group_results

    pred = np.array([[0.1] * 10, [0.0] * 9 + [1.0]])
    true = np.array([[0.0] * 9 + [1.0], [0.1] * 10])
    labels = {"a": ("animal", ()), "b": ("floral", ())}
    kind, groups, _ = group_results(["a", "b"], pred, true, labels, 5.0, SCORES)
    result = EvaluationResult("ckpt.pt", "shards", "test", "gpf", "tiny", tuple(SCORES), 5.0,
                              evaluate(pred, true, 5.0), ["a", "b"], pred, true, kind, groups)
    report = json.loads(json.dumps(result.to_json(), allow_nan=False))
    assert report["by_category"]["groups"]["animal"]["srcc"] is None            # one image: undefined
    assert report["by_category"]["groups"]["animal"]["mae"] == pytest.approx(4.5)   # |5.5 - 10|
    assert report["accuracy"] == 1.0                  # means 5.5 and 10 are both high
    assert any("n/a" in line for line in result.table_lines())


def test_a_split_of_fewer_than_thirty_images_is_evaluated_with_a_warning(eval_data, gpf_result):
    from gpf.pipeline.evaluation import FEW_IMAGES

    assert len(gpf_result.ids) < FEW_IMAGES
    assert any(f"only {len(gpf_result.ids)} 'test' image(s)" in w and "noise" in w for w in gpf_result.warnings)
