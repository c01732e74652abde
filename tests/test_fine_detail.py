"""benchmarks/fine_detail.py: the summary it reports, and its quick mode on a reduced dataset.

A tiny run (60 photos, one epoch) covers every row, the timm foveal and the
contrastive-EB ones included. The slow test runs the benchmark's own entry point in
quick mode, reduced to one seed, the detail task and single vs gpf (about 1.5 min
on 2 cores) and checks the
paper's claim where the answer is known: GPF-CNN beats the single low-resolution
column, and its crop boxes find the planted detail far more often than chance.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import fine_detail as fd  # noqa: E402


@pytest.fixture
def torch_threads():
    """The benchmark pins torch to one thread; give the rest of the session its setting back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_mean_std_is_the_mean_and_sample_std():
    mean, std = fd.mean_std([0.6, 0.7, 0.8])
    assert mean == pytest.approx(0.7) and std == pytest.approx(0.1)          # sqrt((0.01 + 0 + 0.01) / 2)
    assert fd.mean_std([0.5]) == (0.5, 0.0)
    mean, std = fd.mean_std([float("nan"), 1.0, 3.0, None])                   # undefined values are left out
    assert mean == 2.0 and std == pytest.approx(math.sqrt(2))
    assert all(math.isnan(v) for v in fd.mean_std([None]))


def _metrics(accuracy: float) -> dict:
    return {"accuracy": accuracy, "srcc": accuracy / 2, "lcc": accuracy / 2, "mae": 1 - accuracy,
            "rmse": 1.5 - accuracy, "emd": 0.1}


def _fake_run(accuracy: dict, hit: float, chance: float, n: int = 200, contrastive=None):
    """What summarise reads from a SeedResult: per-row metrics and n, the hit rates per EB form."""
    rates = SimpleNamespace(hit=hit, random=chance)
    eb = {"plain": rates}
    if contrastive is not None:
        eb["contrastive"] = SimpleNamespace(hit=contrastive[0], random=contrastive[1])
    return fd.SeedResult(variants={v: SimpleNamespace(metrics=_metrics(a), n=n) for v, a in accuracy.items()},
                         hit_rates=rates, eb_hits=eb)


def test_summary_and_markdown_report_every_task_variant_and_the_hit_rates():
    results = {("detail", 0): _fake_run({"gpf": 0.8, "single": 0.6}, 0.5, 0.05),
               ("detail", 1): _fake_run({"gpf": 0.9, "single": 0.7}, 0.7, 0.03),
               ("control", 0): _fake_run({"gpf": 0.6, "single": 0.6}, 0.4, 0.04)}
    summary = fd.summarise(results)
    assert list(summary) == ["detail", "control"] and summary["detail"]["seeds"] == [0, 1]
    assert list(summary["detail"]["variants"]) == ["single", "gpf"]               # paper order
    assert summary["detail"]["variants"]["gpf"]["accuracy"] == pytest.approx((0.85, math.sqrt(0.005)))
    assert summary["detail"]["hit"] == pytest.approx((0.6, math.sqrt(0.02)))
    text = fd.markdown(summary, fd.QUICK, "python benchmarks/fine_detail.py --quick", 120.0, "cpu",
                       ["single", "gpf"])
    assert "`python benchmarks/fine_detail.py --quick`" in text
    assert "| gpf | 85.00 ± 7.07 | 0.4250 ± 0.0354 |" in text
    assert "| single | 60.00 ± 0.00 |" in text.split("## Task `control`")[1]
    assert "**60.0 ± 14.1 %**" in text and "**4.0 ± 1.4 %**" in text
    assert "| 1 | 70.0 / 0.350 | 90.0 / 0.450 | 70.0 | 3.0 |" in text                # per seed: single, gpf
    plain = json.loads(json.dumps(fd.to_json(summary)))
    assert plain["control"]["variants"]["gpf"]["emd"] == [0.1, 0.0]
    assert plain["detail"]["per_seed"][0] == {"seed": 0, "hit": 0.5, "random": 0.05,
                                              "variants": {"gpf": {"accuracy": 0.8, "srcc": 0.4},
                                                           "single": {"accuracy": 0.6, "srcc": 0.3}}}


def test_extra_rows_follow_the_variants_and_eb_forms_report_the_gpf_minus_single_gap():
    timm, eb = fd.timm_row("timm:resnet10t"), fd.CONTRASTIVE_ROW
    results = {("detail", 0): _fake_run({"gpf": 0.8, "single": 0.6, timm: 0.7, eb: 0.75, "random": 0.62},
                                        0.5, 0.05, contrastive=(0.6, 0.04)),
               ("detail", 1): _fake_run({"gpf": 0.9, "single": 0.7, timm: 0.72, eb: 0.8, "random": 0.64},
                                        0.7, 0.03, contrastive=(0.4, 0.06))}
    entry = fd.summarise(results)["detail"]
    assert list(entry["variants"]) == ["single", "random", "gpf", timm, eb]
    plain, contrastive = entry["eb"]["plain"], entry["eb"]["contrastive"]
    assert plain["gap_acc"] == pytest.approx((0.2, 0.0))                       # 0.8 - 0.6, 0.9 - 0.7
    assert contrastive["gap_acc"] == pytest.approx((0.125, math.sqrt(2 * 0.025 ** 2)))   # 0.15, 0.10
    assert contrastive["gap_srcc"][0] == pytest.approx(0.0625)                 # srcc = accuracy / 2
    assert contrastive["hit"] == pytest.approx((0.5, math.sqrt(0.02)))
    assert plain["per_seed"][1] == pytest.approx({"seed": 1, "hit": 0.7, "random": 0.03, "gpf_acc": 0.9,
                                                  "gpf_srcc": 0.45, "gap_acc": 0.2, "gap_srcc": 0.1})
    text = fd.markdown({"detail": entry}, fd.QUICK, "cmd", 60.0, "cpu", ["single", "random", "gpf"],
                       "timm:resnet10t")
    assert "| contrastive | gpf (contrastive EB) | 50.00 ± 14.14 | 5.00 ± 1.41 | 77.50 ± 3.54 |" in text
    assert "| 12.50 ± 3.54 | 0.0625 ± 0.0177 |" in text
    assert "| plain | 0 | 50.0 | 5.0 | 80.0 | 0.400 | 20.0 | 0.100 |" in text
    assert f"| {timm} | 71.00 ± 1.41 |" in text and "random init" in text
    plain_json = json.loads(json.dumps(fd.to_json({"detail": entry})))["detail"]["eb"]
    assert plain_json["contrastive"]["hit"] == pytest.approx([0.5, math.sqrt(0.02)])


def test_default_rows_are_the_papers_baselines_a_timm_foveal_and_contrastive_eb():
    args = fd.parse_args(["--quick"])
    assert args.variants == ["single", "random", "pf", "gpf"] and args.contrastive
    assert [e.name for e in fd.extra_runs(args.timm_foveal, args.contrastive)] == \
        [fd.timm_row(fd.DEFAULT_TIMM_FOVEAL), fd.CONTRASTIVE_ROW]
    args = fd.parse_args(["--timm-foveal", "none", "--no-contrastive", "--variants", "single-frozen,gpf"])
    assert fd.extra_runs(args.timm_foveal, args.contrastive) == [] and args.variants == ["single-frozen", "gpf"]


def test_tiny_run_reports_every_row_and_both_eb_forms(tmp_path, torch_threads):
    """The whole benchmark on 60 photos and one epoch: the extra rows are trained, the gap is gpf - single."""
    out, summary_file = tmp_path / "fine_detail.md", tmp_path / "summary.json"
    assert fd.main(["--quick", "--images", "60", "--epochs", "1", "--seeds", "0", "--tasks", "detail",
                    "--variants", "single,gpf", "--work", str(tmp_path / "work"), "--out", str(out),
                    "--json", str(summary_file)]) == 0
    detail = json.loads(summary_file.read_text())["detail"]
    timm = fd.timm_row(fd.DEFAULT_TIMM_FOVEAL)
    assert list(detail["variants"]) == ["single", "gpf", timm, fd.CONTRASTIVE_ROW]
    rows = detail["per_seed"][0]["variants"]
    for form, row in (("plain", "gpf"), ("contrastive", fd.CONTRASTIVE_ROW)):
        assert detail["eb"][form]["per_seed"][0]["gap_acc"] == pytest.approx(
            rows[row]["accuracy"] - rows["single"]["accuracy"])
        assert 0 <= detail["eb"][form]["hit"][0] <= 1
    assert (tmp_path / "work/detail-seed0/extra/gpf-contrastive-EB/shards/manifest.json").is_file()
    assert "### EB: plain vs contrastive" in out.read_text()


def test_bad_tasks_and_variants_are_refused(capsys):
    with pytest.raises(SystemExit):
        fd.parse_args(["--tasks", "detial"])
    assert "detail, control" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        fd.parse_args(["--variants", "gpf,vgg"])


def test_quick_mode_sizes_the_detail_for_the_views():
    from gpf.workflows.synthetic import detail_geometry

    for mode in (fd.QUICK, fd.FULL):
        geometry = detail_geometry(mode.width, mode.height, mode.view_size)
        assert geometry.peripheral_cycles <= 0.9 and geometry.max_resolved_side >= geometry.box_max
    reduced = fd.chosen_mode(fd.parse_args(["--quick", "--images", "300", "--epochs", "12"]))
    assert (reduced.n_images, reduced.stage1["epochs"], reduced.stage2["lr_step"]) == (300, 12, 8)


@pytest.mark.slow
def test_quick_mode_gpf_beats_single_where_the_detail_decides(tmp_path, torch_threads):
    out, summary_file = tmp_path / "fine_detail.md", tmp_path / "summary.json"
    code = fd.main(["--quick", "--seeds", "0", "--tasks", "detail", "--variants", "single,gpf",
                    "--timm-foveal", "none", "--no-contrastive",
                    "--work", str(tmp_path / "work"), "--out", str(out), "--json", str(summary_file)])
    assert code == 0 and "## Task `detail`" in out.read_text()
    detail = json.loads(summary_file.read_text())["detail"]
    gpf, single = detail["variants"]["gpf"], detail["variants"]["single"]
    assert gpf["accuracy"][0] > single["accuracy"][0]
    assert gpf["srcc"][0] > single["srcc"][0] + 0.1
    assert gpf["emd"][0] < single["emd"][0]
    hit, chance = detail["hit"][0], detail["random"][0]
    assert hit > 0.25 and hit > 4 * chance


def test_view_fit_section_from_fine_detail_summaries(tmp_path, torch_threads):
    """benchmarks/view_fit.py assembles both fits from `fine_detail.py --json` summaries: per-seed rows merged
    over files, mean ± sample std by hand, the fitted peripheral sizes (96x32 views, minimum 48) and the cost."""
    import view_fit

    def summary(seeds, single, gpf, hit):
        return {"detail": {"per_seed": [{"seed": s, "hit": h, "random": 0.1,
                                         "variants": {"single": {"accuracy": a, "srcc": 0.5},
                                                      "gpf": {"accuracy": b, "srcc": 0.8}}}
                                        for s, a, b, h in zip(seeds, single, gpf, hit)]}}

    files = {}
    for name, data in (("pad1", summary([0, 1], [0.6, 0.62], [0.8, 0.84], [0.9, 0.8])),
                       ("pad2", summary([2], [0.64], [0.82], [0.85])),
                       ("big", summary([0, 1, 2], [0.61, 0.63, 0.65], [0.7, 0.9, 0.8], [0.5, 0.9, 0.7]))):
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(data))
    out = tmp_path / "view_fit.md"
    assert view_fit.main(["--from-json", f"pad={files['pad1']},{files['pad2']}", f"enlarge={files['big']}",
                          "--step-rounds", "1", "--step-batch", "2", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| `pad` | 0, 1, 2 | 62.0 ± 2.0 | 0.500 ± 0.000 | 82.0 ± 2.0 | 0.800 ± 0.000 | 85.0 ± 5.0 | 96×48 = 4608 px" in text
    assert "| `enlarge` | 0, 1, 2 | 63.0 ± 2.0 |" in text and "| 144×48 = 6912 px |" in text
    assert "96×32 before fitting" in text and "Enlarging costs 1.50× the peripheral pixels" in text
    # paired by seed: single 0.01, 0.01, 0.01; gpf -0.10, +0.06, -0.02
    assert "single +1.0 points (paired over 3 seeds: standard error 0.0; enlarge higher on 3, lower on 0)" in text
    assert "gpf -2.0 points (paired over 3 seeds: standard error 4.6; enlarge higher on 1, lower on 2)" in text
    assert text.count("| `pad` |") == 4 and text.count("| `enlarge` |") == 4     # summary row + 3 seeds each
