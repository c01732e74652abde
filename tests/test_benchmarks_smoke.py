"""Smoke tests of the benchmark scripts: their quick paths run on tiny sizes and their
reports say what the inputs imply. No timing is asserted (speed lives in docs/bench/)."""
from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import run_all  # noqa: E402


@pytest.fixture
def torch_threads():
    """The benchmarks pin torch to one thread; give the rest of the session its setting back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- run_all: parsing

def test_markdown_tables_read_cells_by_header():
    text = "intro\n\n| path | samples/s |\n| --- | ---: |\n| a | 545 (433–594) |\n| b | 12 |\n\nafter | x\n"
    (table,) = run_all.markdown_tables(text)
    assert table == [{"path": "a", "samples/s": "545 (433–594)"}, {"path": "b", "samples/s": "12"}]


@pytest.mark.parametrize("cell, value", [("545 (433–594)", 545.0), ("0.94×", 0.94),
                                         ("53 (27–113) %", 53.0), ("1,234.5 img/s", 1234.5)])
def test_first_number(cell, value):
    assert run_all.first_number(cell) == value


def test_first_number_refuses_a_cell_without_one():
    with pytest.raises(ValueError, match="no number"):
        run_all.first_number("n/a")


def test_demote_drops_the_title_and_leaves_code_alone():
    title, body = run_all.demote("# Benchmark: x\n\n## Part\n\n```\n# not a heading\n```\n### Sub\n")
    assert title == "Benchmark: x"
    assert body.splitlines() == ["### Part", "", "```", "# not a heading", "```", "#### Sub"]


# ----------------------------------------------------------------------------- run_all: assembly

RAW_SECTION = textwrap.dedent("""\
    # Benchmark: shard loader vs raw JPEGs

    ## Shard loader vs the raw-JPEG path, one process

    | target | measured (per-round ratio) | met |
    | --- | ---: | --- |
    | from shards ≥ 70% of decoding the two members alone | 94 (90–97) % | yes |
    | from shards ≥ 3× the raw path (Lanczos) | 2.50 (2.4–2.6)× | no |
    """)
EB_SECTION = textwrap.dedent("""\
    # Benchmark: Excitation Backprop

    | network | read-out (map) | EB walk / backward |
    | --- | --- | --- |
    | vgg16 | pool3 (28×28) | 0.32 (0.16–0.98) |
    | vgg16 | pool4 (14×14) | 0.91 (0.80–1.00) |
    | resnet18 | layer2 (28×28) | 0.99 (0.30–0.50) |
    """)


def fake_assembly(tmp_path, outcomes):
    sections = tmp_path / "bench"
    sections.mkdir()
    (sections / "raw_vs_shards.md").write_text(RAW_SECTION)
    (sections / "eb.md").write_text(EB_SECTION)
    (sections / "crop.md").write_text("# Benchmark: crop search\n\nno table here\n")
    return run_all.assemble(sections, outcomes, quick=True, pillow_note="plain Pillow from /x",
                            loads=("1.0, 1.0, 1.0", "2.0, 2.0, 2.0"), command="python benchmarks/run_all.py --quick")


def summary_lines(doc: str, name: str) -> list[str]:
    return [line for line in doc.splitlines() if line.startswith(f"| [{name}](#{name})")]


def test_assemble_states_the_machine_and_checks_each_target(tmp_path):
    doc = fake_assembly(tmp_path, {})
    assert "| PIL | " in doc and "| torch | " in doc and "1.0, 1.0, 1.0 at the start, 2.0, 2.0, 2.0 at the end" in doc
    raw = summary_lines(doc, "raw_vs_shards")
    assert len(raw) == 2
    assert raw[0].endswith("| ≥ 70% | 94 (90–97) % | yes |") and raw[1].endswith("| **no** |")
    eb = summary_lines(doc, "eb")                     # vgg16 rows only, against <= 0.7
    assert [line.rsplit("|", 2)[-2].strip() for line in eb] == ["yes", "**no**"]
    assert "figures not found" in summary_lines(doc, "crop")[0]
    assert "no section" in summary_lines(doc, "preprocess")[0]
    # sections are concatenated with their own titles dropped and headings one level down
    assert "### Shard loader vs the raw-JPEG path, one process" in doc
    assert "# Benchmark: shard loader vs raw JPEGs" not in doc
    assert "**Not run in this session**" in doc


def test_assemble_reports_a_failed_benchmark_and_keeps_the_others(tmp_path):
    eb = next(b for b in run_all.BENCHMARKS if b.name == "eb")
    failed = run_all.Outcome(eb, "failed", command="python benchmarks/bench_eb.py --quick", returncode=1,
                             detail="RuntimeError: boom")
    doc = fake_assembly(tmp_path, {"eb": failed})
    assert "failed: see its section" in summary_lines(doc, "eb")[0]
    assert "**This run: failed.**" in doc and "RuntimeError: boom" in doc
    assert "The section below is from an earlier run" in doc     # the stale eb.md is labelled as such
    assert summary_lines(doc, "raw_vs_shards")[0].endswith("| yes |")


# ----------------------------------------------------------------------------- run_all: running

def fake_benchmark(tmp_path, name, body, takes_out=True):
    script = tmp_path / f"{name}.py"
    declared = 'parser.add_argument("--out")' if takes_out else "no out option"  # run_all reads the source
    script.write_text(textwrap.dedent(f"""\
        import sys, time
        from pathlib import Path
        DECLARED = {declared!r}
        FLAG = "-" + "-out"
        args = sys.argv[1:]
        out = Path(args[args.index(FLAG) + 1]) if FLAG in args else Path(sys.argv[0]).parent / "fixed" / "{name}.md"
        """) + textwrap.dedent(body))
    return run_all.Benchmark(name, name.title(), str(script), quick=("--quick",))


@pytest.mark.parametrize("body, status, detail", [
    ("out.write_text('# T\\n\\nfigure 1\\n')\n", "ok", ""),
    ("sys.stderr.write('bad input: photo_3.jpg\\n'); sys.exit(3)\n", "failed", "bad input: photo_3.jpg"),
    ("pass\n", "no_section", "was not written"),
    ("time.sleep(30)\n", "timeout", "stopped after 1 s"),
])
def test_run_one_classifies_the_outcome(tmp_path, body, status, detail):
    bench = fake_benchmark(tmp_path, "fake", body)
    (tmp_path / "logs").mkdir()
    outcome = run_all.run_one(bench, quick=True, sections=tmp_path / "sections", logs=tmp_path / "logs",
                              pillow=None, timeout_s=1 if status == "timeout" else 60)
    assert outcome.status == status and detail in outcome.detail
    assert "--quick" in outcome.command and "--out" in outcome.command


def test_run_one_moves_a_fixed_doc_and_restores_the_recorded_one(tmp_path, monkeypatch):
    fixed = tmp_path / "fixed"
    fixed.mkdir()
    (fixed / "pinned.md").write_text("recorded full run\n")
    monkeypatch.setattr(run_all, "SECTIONS", fixed)
    bench = fake_benchmark(tmp_path, "pinned", "out.write_text('quick figures\\n')\n", takes_out=False)
    (tmp_path / "logs").mkdir()
    outcome = run_all.run_one(bench, quick=True, sections=tmp_path / "quick", logs=tmp_path / "logs",
                              pillow=None, timeout_s=60)
    assert outcome.status == "ok" and "--out" not in outcome.command
    assert (tmp_path / "quick" / "pinned.md").read_text() == "quick figures\n"
    assert (fixed / "pinned.md").read_text() == "recorded full run\n"


def test_main_survives_one_failing_benchmark(tmp_path, monkeypatch):
    good = fake_benchmark(tmp_path, "good", "out.write_text('# Good\\n\\n| a | b |\\n| --- | --- |\\n| 1 | 2 |\\n')\n")
    bad = fake_benchmark(tmp_path, "bad", "raise SystemExit('cannot read shards in /x: run gpf shards verify')\n")
    monkeypatch.setattr(run_all, "BENCHMARKS", (bad, good))
    monkeypatch.setattr(run_all, "NAMES", ("bad", "good"))
    doc = tmp_path / "benchmarks.md"
    code = run_all.main(["--quick", "--sections", str(tmp_path / "s"), "--doc", str(doc)])
    text = doc.read_text()
    assert code == 1
    assert "cannot read shards in /x" in text and "| 1 | 2 |" in text
    assert text.index("## Bad") < text.index("## Good")


# ----------------------------------------------------------------------------- the benchmarks

def test_photo_dataset_is_a_folder_dataset_of_photo_weight(tmp_path):
    from bench_preprocess import make_photo_dataset

    from gpf.pipeline.sources import load_folder

    data = make_photo_dataset(tmp_path, 12, unique=2)
    records = load_folder(data.csv).records
    assert [r.path for r in records] == list(data.paths)
    assert [r.split for r in records].count("val") == 1 and records[9].split == "val"
    assert all(sum(r.votes) > 0 and len(r.votes) == 10 for r in records)
    assert all(80 <= p.stat().st_size / 1024 <= 150 for p in data.paths)
    assert data.paths[2].read_bytes() == data.paths[0].read_bytes() != data.paths[1].read_bytes()


def test_bench_preprocess_tiny_run_writes_its_section(tmp_path, torch_threads):
    import bench_preprocess

    out = tmp_path / "preprocess.md"
    assert bench_preprocess.main(["--images", "2", "--backbones", "tiny", "--workers", "1", "--repeat", "1",
                                  "--batch-size", "2", "--out", str(out)]) == 0
    rows = run_all.table_with(out.read_text(), "whole preprocess (img/s)")
    assert [(r["attention network"], r["workers (threads)"]) for r in rows] == [("tiny", "1")]
    assert rows[0]["vs 1 worker(s)"].startswith("1.00")
    assert run_all.summarise_preprocess(out.read_text())[0].met is None


@pytest.mark.slow
def test_bench_ray_quick_run_compares_both_engines_on_the_same_bytes(tmp_path, torch_threads, local_ray):
    import bench_ray

    out = tmp_path / "ray.md"
    assert bench_ray.main(["--images", "8", "--samples-per-shard", "4", "--batch-size", "4", "--repeat", "1",
                           "--ray-address", local_ray.address, "--out", str(out)]) == 0
    text = out.read_text()
    rows = run_all.table_with(text, "processing time vs local")
    assert [r["engine"] for r in rows] == ["local", *bench_ray.CONFIGS]
    assert all(r["same bytes as local"] == "yes" for r in rows[1:])
    assert f"(connected to {local_ray.address})" in text and "8 photo-like JPEGs" in text
    assert [s.target for s in run_all.summarise_ray(text)] == ["≤ 1.15×"] * len(bench_ray.CONFIGS)


def test_raw_path_reproduces_the_stored_views(tmp_path, torch_threads):
    """The raw-path Dataset must make the very views the shards hold, or the comparison is unfair:
    re-encoded the way the pipeline encodes, they give the stored JPEG bytes."""
    from PIL import Image

    import bench_raw_vs_shards as raw

    from gpf.pipeline.images import encode_jpeg

    shard_dir, _ = raw.build_shards(tmp_path, 6, 3)
    items, blobs = raw.shard_items(shard_dir)
    assert len(items) == 6 and len(blobs) == 12                # the 10th-image rule puts none in val
    views = raw.RawPhotoDataset(items, raw.VIEW, Image.Resampling.LANCZOS)
    for index in range(len(items)):
        made = views[index]
        for name, stored in (("periph", blobs[2 * index]), ("fovea", blobs[2 * index + 1])):
            image = Image.fromarray(made[name].permute(1, 2, 0).numpy())
            assert encode_jpeg(image, 95) == stored, f"{name} of sample {index} is not the stored view"


def test_bench_raw_vs_shards_tiny_run_checks_both_targets(tmp_path, torch_threads):
    import bench_raw_vs_shards as raw

    out = tmp_path / "raw.md"
    assert raw.main(["--images", "8", "--per-shard", "4", "--batch", "4", "--repeat", "1", "--out", str(out)]) == 0
    text = out.read_text()
    paths = {r["path"]: r for r in run_all.table_with(text, "samples/s")}
    assert set(paths) == {raw.SHARDS, raw.MEMBERS, raw.RAW_LANCZOS, raw.RAW_BILINEAR, raw.ORIGINAL}
    assert paths[raw.MEMBERS]["vs decoding the two members alone"].startswith("1.00")
    targets = run_all.summarise_raw_vs_shards(text)
    assert len(targets) == 3 and all(t.met is not None for t in targets)
    # 'met' follows the measured ratio and the threshold in the target (the printed value is
    # rounded, so a ratio within rounding of the threshold is not checked)
    for row in targets:
        threshold = run_all.first_number(row.target) / (100 if "%" in row.target else 1)
        value = run_all.first_number(row.measured) / (100 if "%" in row.measured else 1)
        if abs(value - threshold) > 0.01 * threshold:
            assert row.met == (value >= threshold)


def test_gpu_bench_cpu_dry_run_covers_every_stage(tmp_path, torch_threads):
    import gpu_bench

    out = tmp_path / "gpu"
    code = gpu_bench.main(["--device", "cpu", "--tiny", "--out", str(out), "--scratch", str(tmp_path)])
    results = json.loads((out / "results.json").read_text())
    stages = results["stages"]
    assert code == 0 and list(stages) == list(gpu_bench.STAGES)
    assert all(s["status"] == "ok" for n, s in stages.items() if n != "trainer")
    assert stages["trainer"]["status"] in ("ok", "skipped")   # skipped only without PyYAML
    step = stages["step"]["rates"]
    assert "fp32, NCHW (baseline)" in step and all(r["min"] <= r["median"] <= r["max"] for r in step.values())
    assert 0.0 <= stages["fed"]["data_wait"]["median"] <= 1.0
    assert set(stages["loader"]["rates"]) <= {"1", "2"}          # capped by the 2 cores / shards
    assert "## preprocess" in (out / "results.md").read_text()


def test_gpu_bench_records_a_failing_stage_and_goes_on(tmp_path, torch_threads, monkeypatch):
    import gpu_bench

    def broken(self):
        raise RuntimeError("CUDA error: out of memory")
    monkeypatch.setattr(gpu_bench.Bench, "step", broken)
    out = tmp_path / "gpu"
    code = gpu_bench.main(["--device", "cpu", "--tiny", "--out", str(out), "--stages", "env", "step", "fed"])
    stages = json.loads((out / "results.json").read_text())["stages"]
    assert code == 1
    assert stages["env"]["status"] == "ok" and stages["step"]["status"] == "failed"
    assert "out of memory" in stages["step"]["error"]
    assert stages["fed"]["status"] == "skipped" and "preprocess" in stages["fed"]["error"]
    assert "**failed**: RuntimeError: CUDA error: out of memory" in (out / "results.md").read_text()


def test_gpu_bench_refuses_cuda_without_a_gpu(tmp_path):
    import gpu_bench

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit, match="--device cpu"):
        gpu_bench.main(["--device", "cuda", "--out", str(tmp_path)])


def test_gpu_bench_feeds_from_shards_without_the_step_stage(tmp_path, torch_threads, monkeypatch):
    import gpu_bench

    def broken(self):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    monkeypatch.setattr(gpu_bench.Bench, "step", broken)
    out = tmp_path / "gpu"
    code = gpu_bench.main(["--device", "cpu", "--tiny", "--out", str(out), "--scratch", str(tmp_path),
                           "--stages", "step", "data", "preprocess", "fed"])
    stages = json.loads((out / "results.json").read_text())["stages"]
    assert code == 1 and stages["step"]["status"] == "failed"
    assert [stages[n]["status"] for n in ("data", "preprocess", "fed")] == ["ok", "ok", "ok"]
    assert ["vs synthetic step (`step` stage)", "n/a"] in stages["fed"]["table"]


def test_bench_s3_loader_tiny_run_writes_its_section(tmp_path, torch_threads, s3_server):
    """A tiny pass of the loopback-S3 loader benchmark: all three paths and the server's CPU share."""
    import bench_s3_loader

    out = tmp_path / "s3_loader.md"
    bench_s3_loader.main(["--samples", "8", "--per-shard", "4", "--batch", "2", "--repeat", "1", "--out", str(out)])
    text = out.read_text()
    rows = run_all.table_with(text, "vs local disk")
    assert [r["path"] for r in rows] == ["local disk (baseline)", "s3:// streamed (sha256 checked)",
                                         "s3:// with a warm --cache-dir"]
    assert rows[0]["vs local disk"] == "1.00×" and all(r["S3 server CPU (share of one core)"].endswith("%")
                                                       for r in rows)
    assert [r.figure for r in run_all.summarise_s3_loader(text)][0].endswith("s3:// streamed (sha256 checked)")
