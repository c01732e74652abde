"""``gpf demo`` and its library (gpf.workflows.experiment) on a tiny generated dataset.

The demo's own sizes take minutes; here the same code path runs with 40 images
and one or two epochs, and the outputs are checked against the files they
describe: the AVA test list, the synthetic ground truth (pointing game by brute
force), the checkpoints on disk.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from gpf.workflows import experiment as ex
from gpf.workflows.experiment import (ExperimentConfig, ExperimentError, SyntheticSpec, check_config,
                                  ensure_synthetic_dataset, prepare_out, run_experiment)

TINY_SPEC = dict(n_images=40, width=448, height=336, view_size=96)
TINY_TRAIN = {"epochs": 2, "lr_step": 2, "batch_size": 8}


def tiny_plan(out, *, quick=False, seed=0, device="auto", threads=1):
    """The demo's plan at test sizes (same steps, same outputs)."""
    out = Path(out)
    spec = SyntheticSpec(seed=seed, **TINY_SPEC)
    cfg = ExperimentConfig(root=str(out / ex.DEMO_DATA_DIR), out=str(out), view_size=96, seed=seed,
                           device="cpu", threads=threads, dataset_options={"val_size": 6},
                           stage1=dict(TINY_TRAIN), stage2=dict(TINY_TRAIN, epochs=1, lr_step=1),
                           preprocess={"samples_per_shard": 16, "batch_size": 8}, progress=False)
    return spec, cfg


def table_rows(output: str) -> dict[str, list[str]]:
    """The comparison table printed by `gpf demo`: variant -> its cells."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("variant "))
    rows = {}
    for line in lines[start + 1:]:
        if not line.strip():
            break
        cells = line.split()
        rows[cells[0]] = cells[1:]
    return rows


def _brute_force_hits(meta_rows, truth_csv: Path, max_side: float) -> float:
    """Share of boxes covering >= half the carrier and no longer than max_side (by hand)."""
    import csv

    carriers = {r["id"]: tuple(int(r[k]) for k in ("x0", "y0", "x1", "y1"))
                for r in csv.DictReader(truth_csv.open())}
    hits = 0
    for row in meta_rows:
        bx0, by0, bx1, by1 = row["x0"], row["y0"], row["x1"], row["y1"]
        cx0, cy0, cx1, cy1 = carriers[row["id"]]
        inside = max(0, min(bx1, cx1) - max(bx0, cx0)) * max(0, min(by1, cy1) - max(by0, cy0))
        hits += inside >= 0.5 * (cx1 - cx0) * (cy1 - cy0) and max(bx1 - bx0, by1 - by0) <= max_side
    return hits / len(meta_rows)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """`gpf demo` through the CLI with the tiny plan: (out folder, CLI output)."""
    out = tmp_path_factory.mktemp("demo") / "demo_out"
    patch = pytest.MonkeyPatch()
    patch.setattr(ex, "demo_plan", tiny_plan)
    try:
        from gpf.cli.demo import demo

        result = CliRunner().invoke(demo, ["--out", str(out)], catch_exceptions=False)
    finally:
        patch.undo()
    assert result.exit_code == 0, result.output
    return out, result.output


def test_demo_writes_checkpoints_plots_attention_and_the_table(demo_run):
    out, output = demo_run
    for path in ("stage1/best.pt", "stage2/single/best.pt", "stage2/gpf/best.pt", "shards/manifest.json",
                 "results.json", "experiment.json", "data/AVA.txt"):
        assert (out / path).is_file(), path
    for variant in ("single", "gpf"):
        for name in ("distributions.png", "mean_scatter.png", "emd_hist.png"):
            with Image.open(out / "plots" / variant / name) as im:
                assert im.format == "PNG" and im.width > 100
    with Image.open(out / "attention.png") as im:
        assert im.format == "PNG" and im.width > im.height > 100
    header = next(line for line in output.splitlines() if line.startswith("variant"))
    assert header.split() == ["variant", "n", "accuracy", "%", "SRCC", "LCC", "MAE", "RMSE", "EMD"]
    rows = table_rows(output)
    assert list(rows) == ["single", "gpf"] and all(len(cells) == 7 for cells in rows.values())
    assert "attention boxes" in output and str(out / "attention.png") in output


def test_results_describe_the_test_split_and_the_boxes(demo_run):
    import pyarrow.parquet as pq

    out, output = demo_run
    results = json.loads((out / "results.json").read_text())
    test_ids = (out / "data/aesthetics_image_lists/generic_test.jpgl").read_text().split()
    assert len(test_ids) == 8                                    # 20 % of 40
    for variant in ("single", "gpf"):
        entry = results["variants"][variant]
        assert entry["n"] == len(test_ids)
        m = entry["metrics"]
        assert 0 <= m["accuracy"] <= 1 and 0 <= m["emd"] <= 1 and m["mae"] <= m["rmse"]
        assert m["accuracy"] * len(test_ids) == pytest.approx(round(m["accuracy"] * len(test_ids)))
        assert Path(entry["checkpoint"]).is_file()
    # the printed accuracy is the stored one, in %
    for variant, cells in table_rows(output).items():
        m = results["variants"][variant]["metrics"]
        assert int(cells[0]) == len(test_ids)
        assert float(cells[1]) == pytest.approx(100 * m["accuracy"], abs=0.006)
        if m["srcc"] is None:                                    # constant predictions: no rank correlation
            assert cells[2] == "n/a"
        else:
            assert float(cells[2]) == pytest.approx(m["srcc"], abs=6e-5)

    rows = [r for r in pq.read_table(out / "shards" / "meta").to_pylist() if r["split"] == "test"]
    info = json.loads((out / "data" / "synthetic_info.json").read_text())
    max_side = info["geometry"]["period"] * 96 / 2
    hits = results["hit_rates"]
    assert hits["n"] == len(test_ids) and hits["max_side"] == max_side
    assert hits["hit"] == pytest.approx(_brute_force_hits(rows, out / "data/synthetic_truth.csv", max_side))
    assert 0 <= hits["random"] <= 1


def test_rerun_resumes_without_retraining(demo_run):
    out, _ = demo_run
    before = {p: (out / p).read_bytes() for p in ("stage1/best.pt", "stage2/gpf/best.pt", "shards/manifest.json")}
    metrics = json.loads((out / "results.json").read_text())["variants"]["gpf"]["metrics"]
    _, cfg = tiny_plan(out)
    cfg.attention_picture = cfg.plots = False
    result = run_experiment(cfg, echo=lambda line: None)
    for path, data in before.items():
        assert (out / path).read_bytes() == data, f"{path} was rewritten"
    assert result.variants["gpf"].metrics == pytest.approx(metrics)


def test_extra_runs_reuse_the_stage1_model_for_contrastive_shards_and_a_timm_foveal(demo_run):
    """run_extra: contrastive EB makes new shards from the same stage-1 model (pointing game by brute force
    on their boxes); a timm foveal subnet trains on the experiment's own shards with the stage-1 peripheral."""
    import pyarrow.parquet as pq

    from gpf.model.checkpoint import load_checkpoint
    from gpf.shards.manifest import read_manifest
    from gpf.workflows.experiment import ExtraRun, run_extra

    out, _ = demo_run
    _, cfg = tiny_plan(out)
    cfg.attention_picture = cfg.plots = False
    experiment = run_experiment(cfg, echo=lambda line: None)
    contrastive = run_extra(cfg, experiment, ExtraRun("gpf (contrastive EB)", preprocess={"contrastive": True}),
                            echo=lambda line: None)
    assert contrastive.shards == out / "extra" / "gpf-contrastive-EB" / "shards"
    assert read_manifest(contrastive.shards).run.contrastive is True
    assert read_manifest(out / "shards").run.contrastive is False
    assert load_checkpoint(contrastive.result.checkpoint).shards["run"]["contrastive"] is True
    rows = [r for r in pq.read_table(contrastive.shards / "meta").to_pylist() if r["split"] == "test"]
    info = json.loads((out / "data" / "synthetic_info.json").read_text())
    max_side = info["geometry"]["period"] * 96 / 2
    assert contrastive.hit_rates.hit == pytest.approx(
        _brute_force_hits(rows, out / "data/synthetic_truth.csv", max_side))
    assert contrastive.result.n == len(rows)

    foveal = run_extra(cfg, experiment, ExtraRun("timm", backbone="timm:resnet10t"), echo=lambda line: None)
    assert foveal.shards == out / "shards" and foveal.hit_rates == experiment.hit_rates
    config = load_checkpoint(foveal.result.checkpoint).model_config
    assert (config["backbone"], config["peripheral_backbone"]) == ("timm:resnet10t", "tiny")
    before = foveal.result.checkpoint.read_bytes()
    again = run_extra(cfg, experiment, ExtraRun("timm", backbone="timm:resnet10t"), echo=lambda line: None)
    assert again.result.checkpoint.read_bytes() == before                       # resumed, not retrained
    assert again.result.metrics == pytest.approx(foveal.result.metrics)


def test_another_config_in_the_same_folder_is_refused_unless_fresh(demo_run, tmp_path):
    out, _ = demo_run
    _, cfg = tiny_plan(out)
    cfg.variants = ("single",)
    with pytest.raises(ExperimentError, match="another experiment.*variants"):
        prepare_out(cfg)
    # fresh: what the earlier run wrote goes (the dataset, not ours to delete, stays)
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(out, copy)
    cfg.out = str(copy)
    prepare_out(cfg, fresh=True)
    assert not (copy / "stage1").exists() and not (copy / "stage2").exists() and not (copy / "shards").exists()
    assert (copy / "data" / "AVA.txt").exists()


def test_a_folder_with_foreign_outputs_is_refused(tmp_path):
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "x").write_text("not ours")
    with pytest.raises(ExperimentError, match="not made by an experiment"):
        prepare_out(ExperimentConfig(root=str(tmp_path), out=str(tmp_path)))


@pytest.mark.parametrize("change, message", [
    ({"variants": ("single", "gpff")}, "single, single-periph, single-frozen, random, random-frozen, pf, gpf"),
    ({"variants": ()}, "non-empty"),
    ({"stage1": {"backbone": "vgg16"}}, "set by the experiment"),
    ({"stage2": {"epoch": 3}}, "did you mean 'epochs'"),
    ({"preprocess": {"view_size": 64}}, "unknown or fixed"),
    ({"variants": ("random-frozen",), "random_crops": 0}, "random_crops >= 1"),
    ({"eval_split": "dev"}, "train, val, test"),
])
def test_bad_settings_are_refused_before_anything_runs(tmp_path, change, message):
    cfg = ExperimentConfig(root=str(tmp_path), out=str(tmp_path / "out"), **change)
    with pytest.raises(ExperimentError, match=message):
        check_config(cfg)
    assert not (tmp_path / "out").exists()


def test_synthetic_dataset_is_kept_when_unchanged_and_rewritten_when_not(tmp_path):
    spec = SyntheticSpec(n_images=6, **{k: v for k, v in TINY_SPEC.items() if k != "n_images"})
    assert ensure_synthetic_dataset(spec, tmp_path, echo=lambda line: None) is True
    stamp = (tmp_path / "AVA.txt").stat().st_mtime_ns
    assert ensure_synthetic_dataset(spec, tmp_path, echo=lambda line: None) is False
    assert (tmp_path / "AVA.txt").stat().st_mtime_ns == stamp
    other = SyntheticSpec(n_images=6, seed=1, **{k: v for k, v in TINY_SPEC.items() if k != "n_images"})
    assert ensure_synthetic_dataset(other, tmp_path, echo=lambda line: None) is True
    info = json.loads((tmp_path / "synthetic_info.json").read_text())
    assert info["seed"] == 1 and info["score_model"]["coarse_weight"] == spec.coarse_weight


def test_demo_plan_uses_images_whose_detail_hides_from_the_peripheral_view(tmp_path):
    spec, cfg = ex.demo_plan(tmp_path)
    period = spec.expected_params()["geometry"]["period"]
    assert period * cfg.view_size / max(spec.width, spec.height) <= 0.9   # gone in the peripheral view
    assert cfg.variants == ("single-frozen", "gpf") and cfg.view_size == spec.view_size
    assert Path(cfg.root) == tmp_path / "data" and Path(cfg.out) == tmp_path
    # the carrier's colour must decide the high/low label often enough for stage 1 to learn where to look
    assert spec.coarse_weight > spec.detail_weight > 0
