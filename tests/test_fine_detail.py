"""benchmarks/fine_detail.py: the summary it reports, and its quick mode on a reduced dataset.

The slow test runs the benchmark's own entry point in quick mode, reduced to one
seed, the detail task and single vs gpf (about 1.5 min on 2 cores) and checks the
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


def _fake_run(accuracy: dict, hit: float, chance: float, n: int = 200):
    """What summarise reads from an ExperimentResult: per-variant metrics and n, the hit rates."""
    return SimpleNamespace(variants={v: SimpleNamespace(metrics=_metrics(a), n=n) for v, a in accuracy.items()},
                           hit_rates=SimpleNamespace(hit=hit, random=chance))


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
