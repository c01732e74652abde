"""Run every benchmark of gpf and assemble ``docs/benchmarks.md``.

    .venv/bin/python benchmarks/run_all.py                  # all, full size (`make bench`)
    .venv/bin/python benchmarks/run_all.py --quick          # fast pass, written under $TMPDIR/gpf-bench-quick/
    .venv/bin/python benchmarks/run_all.py --only preprocess raw_vs_shards
    .venv/bin/python benchmarks/run_all.py --assemble-only  # rebuild the doc from docs/bench/*.md
    .venv/bin/python benchmarks/run_all.py --assemble-only --gpu-results OUT   # + gpu.sh results

Each benchmark is its own script, run here in a child process with this
interpreter; it writes its Markdown section (figures as median (min–max) of
repeats, ratios against a baseline measured in the same run, the command that
produced it) to ``docs/bench/<name>.md``. This script then concatenates the
sections under the machine's facts and a table of targets against measured
figures. A benchmark that fails, times out or writes no section is reported as
such in the doc and the others go on; the exit status is then 1.

The full run writes into ``docs/``; ``--quick`` writes elsewhere by default
(``--sections``/``--doc`` to choose) so that a smoke pass never replaces the
recorded figures. The plain-Pillow comparison of ``bench_preprocess_cpu`` needs
a second environment; it is made when missing with

    python -m venv /tmp/venv-pillow && /tmp/venv-pillow/bin/pip install pillow numpy

(``--pillow-python`` to point elsewhere, ``--no-pillow-venv`` to skip it) and
the comparison is left out, with a note, when it cannot be made.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))
from _util import load_average, machine_line  # noqa: E402

DOC = REPO / "docs" / "benchmarks.md"
SECTIONS = REPO / "docs" / "bench"
QUICK_ROOT = Path(tempfile.gettempdir()) / "gpf-bench-quick"
PILLOW_PYTHON = Path("/tmp/venv-pillow/bin/python")
FULL_TIMEOUT_S, QUICK_TIMEOUT_S = 3600, 900


# ----------------------------------------------------------------------------- summary extraction

@dataclass(frozen=True)
class SummaryRow:
    figure: str
    target: str          # '—' when the project sets none
    measured: str
    met: bool | None     # None: no target


def markdown_tables(text: str) -> list[list[dict[str, str]]]:
    """Every pipe table in ``text`` as a list of {header: cell} rows."""
    tables, lines = [], text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index].strip()
        following = lines[index + 1].strip() if index + 1 < len(lines) else ""
        if line.startswith("|") and re.fullmatch(r"\|(\s*:?-{3,}:?\s*\|)+", following):
            header = [cell.strip() for cell in line.strip("|").split("|")]
            rows, index = [], index + 2
            while index < len(lines) and lines[index].strip().startswith("|"):
                cells = [cell.strip() for cell in lines[index].strip().strip("|").split("|")]
                rows.append(dict(zip(header, cells)))
                index += 1
            tables.append(rows)
        else:
            index += 1
    return tables


def first_number(cell: str) -> float:
    """The first number in a cell such as '545 (433–594)', '0.94×' or '53 (27–113) %'."""
    match = re.search(r"-?\d+(?:\.\d+)?", cell.replace(",", ""))
    if match is None:
        raise ValueError(f"no number in {cell!r}")
    return float(match.group())


def table_with(text: str, column: str) -> list[dict[str, str]]:
    for table in markdown_tables(text):
        if table and column in table[0]:
            return table
    raise ValueError(f"no table with a {column!r} column")


def summarise_crop(text: str) -> list[SummaryRow]:
    rows = []
    for row in table_with(text, "speed-up (median)"):
        if row["map"].startswith("224"):
            rows.append(SummaryRow(f"best_box, 224×224 {row['kind']} map", "—",
                                   f"{row['numba best_box (ms/map)']} ms; {row['speed-up (median)']} "
                                   "vs NumPy", None))
    return rows


def summarise_eb(text: str) -> list[SummaryRow]:
    rows = []
    for row in table_with(text, "EB walk / backward"):
        if row["network"] == "vgg16":
            ratio = first_number(row["EB walk / backward"])
            rows.append(SummaryRow(f"VGG16 EB walk / autograd backward, read-out {row['read-out (map)']}",
                                   "≤ 0.7", row["EB walk / backward"], ratio <= 0.7))
    return rows


def summarise_preprocess_cpu(text: str) -> list[SummaryRow]:
    rows = []
    for row in table_with(text, "CPU part / decode"):
        if row["PIL"].lower().startswith("pillow-simd"):
            value = first_number(row["CPU part / decode"])
            rows.append(SummaryRow(f"CPU part / bare decode ({row['PIL']}), one core", "≥ 40 %",
                                   f"{row['CPU part / decode']} ({row['CPU part (img/s)']} img/s)",
                                   value >= 40))
    match = re.search(r"back to back: CPU part (\d+(?:\.\d+)?) \(([^)]*)\)x", text)
    if match:
        rows.append(SummaryRow("pillow-simd / Pillow speed, CPU part", "≥ 1.8×",
                               f"{match.group(1)} ({match.group(2)})×", float(match.group(1)) >= 1.8))
    else:
        rows.append(SummaryRow("pillow-simd / Pillow speed, CPU part", "≥ 1.8×",
                               "not measured (no plain-Pillow environment)", None))
    return rows


def summarise_preprocess(text: str) -> list[SummaryRow]:
    return [SummaryRow(f"whole preprocess, {row['attention network']}, {row['workers (threads)']} worker(s)",
                       "—", f"{row['whole preprocess (img/s)']} img/s = {row['vs bare decode']} of bare decode",
                       None)
            for row in table_with(text, "whole preprocess (img/s)")]


def summarise_loader(text: str) -> list[SummaryRow]:
    rows = []
    for row in table_with(text, "vs baseline"):
        if row["path"].startswith("loader, training"):
            ratio = first_number(row["vs baseline"])
            rows.append(SummaryRow("loader (training mode) / decoding the two members alone",
                                   "≥ 0.70× (as raw_vs_shards)", f"{row['vs baseline']} "
                                   f"({row['samples/s']} samples/s)", ratio >= 0.70))
    return rows


def summarise_raw_vs_shards(text: str) -> list[SummaryRow]:
    rows = []
    for row in table_with(text, "met"):
        match = re.match(r"(.*?)\s*(≥\s*\S+(?: of)?)\s*(.*)", row["target"])
        figure, target = (f"{match.group(1)} vs {match.group(3)}", match.group(2).removesuffix(" of")) \
            if match else (row["target"], "see section")
        rows.append(SummaryRow(figure, target, row["measured (per-round ratio)"], row["met"] == "yes"))
    return rows


def summarise_s3_loader(text: str) -> list[SummaryRow]:
    return [SummaryRow(f"loader from a loopback S3 server, {row['path']}", "— (a record)",
                       f"{row['vs local disk']} of local disk ({row['samples/s']} samples/s); server CPU "
                       f"{row['S3 server CPU (share of one core)']}", None)
            for row in table_with(text, "vs local disk") if row["path"].startswith("s3")]


def summarise_train(text: str) -> list[SummaryRow]:
    return [SummaryRow(f"stage-2 CPU step, {row['peripheral input']}", "—",
                       f"{row['samples/s']} samples/s, data-wait {row['data-wait']}, {row['speed-up']}", None)
            for row in table_with(text, "data-wait")]


def summarise_ray(text: str) -> list[SummaryRow]:
    rows = []
    for row in table_with(text, "processing time vs local"):
        if row["engine"].startswith("ray"):
            ratio = first_number(row["processing time vs local"])
            rows.append(SummaryRow(f"{row['engine']}: processing time / local engine's", "≤ 1.15×",
                                   f"{row['processing time vs local']} ({row['processing (img/s)']} img/s; "
                                   f"same bytes: {row['same bytes as local']})", ratio <= 1.15))
    return rows


# ----------------------------------------------------------------------------- the benchmarks

@dataclass(frozen=True)
class Benchmark:
    name: str                                  # its section is docs/bench/<name>.md
    title: str
    script: str                                # under benchmarks/ (or an absolute path)
    full: tuple[str, ...] = ()
    quick: tuple[str, ...] = ("--quick",)
    summarise: Callable[[str], list[SummaryRow]] | None = None
    pillow: bool = False                       # add --other-python <plain Pillow> when available

    @property
    def path(self) -> Path:
        return BENCH_DIR / self.script

    def source(self) -> str:
        return self.path.read_text() if self.path.exists() else ""

    @property
    def takes_out(self) -> bool:
        """Can it be told where to write (``--out``)? Otherwise it writes docs/bench/<name>.md."""
        return '"--out"' in self.source()


BENCHMARKS = (
    Benchmark("crop", "Crop search (paper Eq. 4)", "bench_crop.py", summarise=summarise_crop),
    Benchmark("eb", "Excitation Backprop cost", "bench_eb.py", quick=("--quick", "--threads", "1"),
              summarise=summarise_eb),
    Benchmark("preprocess_cpu", "Preprocess, CPU part (Pillow and pillow-simd)", "bench_preprocess_cpu.py",
              summarise=summarise_preprocess_cpu, pillow=True),
    Benchmark("preprocess", "Whole preprocess", "bench_preprocess.py", summarise=summarise_preprocess),
    Benchmark("loader", "Shard loader", "bench_loader.py", full=("--samples", "512", "--repeat", "7"),
              quick=("--samples", "128", "--repeat", "2"), summarise=summarise_loader),
    Benchmark("s3_loader", "Shard loader from object storage (loopback S3)", "bench_s3_loader.py",
              full=("--samples", "512", "--repeat", "5"), quick=("--samples", "128", "--repeat", "2"),
              summarise=summarise_s3_loader),
    Benchmark("raw_vs_shards", "Shard loader vs the raw-JPEG path", "bench_raw_vs_shards.py",
              summarise=summarise_raw_vs_shards),
    Benchmark("train", "Stage-2 training, data-wait", "bench_train.py", summarise=summarise_train),
    Benchmark("ray", "Ray engine vs local engine (preprocess)", "bench_ray.py", summarise=summarise_ray),
    # `make bench` runs the documented 3-seed quick mode of the detail task (5 variants, the timm foveal and
    # contrastive-EB rows: ~35 min on 2 busy cores); run_all --quick one seed of the paper's four variants.
    Benchmark("fine_detail", "Fine-detail experiment (quick)", "fine_detail.py",
              full=("--quick", "--tasks", "detail", "--variants", "single,single-frozen,random,pf,gpf"),
              quick=("--quick", "--seeds", "0", "--tasks", "detail", "--timm-foveal", "none", "--no-contrastive")),
    # both view fits on the fine-detail task (~25 min for 3 seeds on 2 cores); --quick: one seed, 300 photos
    Benchmark("view_fit", "Fitting views below a backbone's minimum input", "view_fit.py", full=(),
              quick=("--seeds", "0", "--images", "300")),
)
NAMES = tuple(b.name for b in BENCHMARKS)


# ----------------------------------------------------------------------------- running

@dataclass
class Outcome:
    bench: Benchmark
    status: str                       # ok | failed | timeout | missing | no_section | not_run
    command: str = ""
    seconds: float = 0.0
    returncode: int | None = None
    detail: str = ""                  # failure text (stderr tail)
    load_before: str = ""
    load_after: str = ""
    notes: list[str] = field(default_factory=list)


def shown(path: Path | str) -> str:
    """``path`` relative to the repository when inside it (for commands in the doc)."""
    path = Path(path)
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def file_state(path: Path) -> tuple | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size


def ensure_pillow_python(python: Path, create: bool, timeout_s: float = 600) -> tuple[Path | None, str]:
    """(interpreter with plain Pillow and numpy, or None; a note saying what happened)."""
    def usable() -> bool:
        if not python.exists():
            return False
        probe = subprocess.run([str(python), "-c", "import PIL, numpy"], capture_output=True)
        return probe.returncode == 0

    if usable():
        return python, f"plain Pillow from {python}"
    if not create:
        return None, f"plain-Pillow comparison skipped: {python} is not usable and --no-pillow-venv was given"
    venv = python.parent.parent
    steps = [[sys.executable, "-m", "venv", str(venv)],
             [str(venv / "bin" / "pip"), "install", "--quiet", "pillow", "numpy"]]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=timeout_s)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"plain-Pillow comparison skipped: `{' '.join(step)}` failed ({exc})"
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
            return None, f"plain-Pillow comparison skipped: `{' '.join(step)}` failed ({tail[0]})"
    if usable():
        return python, f"plain Pillow from {python} (created by this run)"
    return None, f"plain-Pillow comparison skipped: {python} still cannot import PIL and numpy"


def bench_args(bench: Benchmark, quick: bool, target: Path, pillow: Path | None) -> list[str]:
    args = list(bench.quick if quick else bench.full)
    if bench.pillow and pillow is not None:
        args += ["--other-python", str(pillow)]
    if bench.takes_out:
        args += ["--out", shown(target)]            # relative to the repository, where it runs
    return args


def run_child(argv: list[str], log: Path, timeout_s: float) -> int | None:
    """Exit status of ``argv`` run in the repository with its output in ``log``; None when it
    ran past ``timeout_s`` (then its whole process group, workers included, is killed)."""
    with open(log, "w") as sink:
        child = subprocess.Popen(argv, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            return None


def collect_pinned_section(fixed: Path, target: Path, saved: bytes | None, fresh: bool) -> None:
    """A script that always writes ``fixed`` wrote (or not) a new section there: copy it to
    ``target`` and put back what ``fixed`` held before (the recorded full-run section)."""
    if fresh:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fixed, target)
    if saved is not None:
        fixed.write_bytes(saved)
    elif fresh:
        fixed.unlink()


def run_one(bench: Benchmark, *, quick: bool, sections: Path, logs: Path, pillow: Path | None,
            timeout_s: float) -> Outcome:
    """Run one benchmark script in its own process group; its section ends up in ``sections``."""
    target = sections / f"{bench.name}.md"
    if not bench.path.exists():
        return Outcome(bench, "missing", detail=f"{shown(bench.path)} does not exist (yet)")
    sections.mkdir(parents=True, exist_ok=True)
    args = bench_args(bench, quick, target, pillow)
    command = " ".join([shown(sys.executable), shown(bench.path), *args])
    fixed = SECTIONS / f"{bench.name}.md"
    pinned = not bench.takes_out and fixed.resolve() != target.resolve()
    saved = fixed.read_bytes() if pinned and fixed.exists() else None
    written = fixed if pinned else target
    before = file_state(written)
    outcome = Outcome(bench, "ok", command=command, load_before=load_average())
    log = logs / f"{bench.name}.log"
    print(f"[run_all] {bench.name}: {command}", flush=True)
    start = time.perf_counter()
    outcome.returncode = run_child([sys.executable, str(bench.path), *args], log, timeout_s)
    outcome.seconds, outcome.load_after = time.perf_counter() - start, load_average()
    fresh = file_state(written) not in (None, before)
    if pinned:
        collect_pinned_section(fixed, target, saved, fresh)
    if outcome.returncode is None:
        outcome.status, outcome.detail = "timeout", f"stopped after {timeout_s:.0f} s"
    elif outcome.returncode != 0:
        outcome.status = "failed"
    elif not fresh:
        outcome.status, outcome.detail = "no_section", f"exit 0 but {shown(target)} was not written"
    if outcome.status != "ok":
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        outcome.detail = "\n".join(filter(None, [outcome.detail, *tail]))
    print(f"[run_all] {bench.name}: {outcome.status} ({outcome.seconds:.0f} s, log {log})", flush=True)
    return outcome


# ----------------------------------------------------------------------------- assembling

def library_versions() -> dict[str, str]:
    """Versions of the libraries the figures depend on ('absent' when not importable)."""
    from importlib import metadata

    versions = {"Python": platform.python_version()}
    for label, dist in (("torch", "torch"), ("torchvision", "torchvision"), ("numpy", "numpy"),
                        ("numba", "numba"), ("pyarrow", "pyarrow")):
        try:
            versions[label] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[label] = "absent"
    try:
        from gpf.env_info import pil_flavour

        pil = pil_flavour()
        avx = {True: ", AVX2", False: ", no AVX2", None: ""}[pil.get("avx2")]
        versions["PIL"] = f"{pil['flavour']} {pil['version']}{avx}"
    except Exception as exc:  # the doc must still be written
        versions["PIL"] = f"unknown ({exc})"
    return versions


def git_revision() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return f"{head}{' + uncommitted changes' if dirty else ''}" if head else "unknown"


def machine_facts(pillow_note: str, loads: tuple[str, str]) -> list[tuple[str, str]]:
    facts = [("CPU", machine_line().rsplit(", Python", 1)[0] + " (os.cpu_count)"),
             ("OS", f"{platform.system()} {platform.release()} {platform.machine()}")]
    facts += list(library_versions().items())
    facts += [("plain Pillow (comparison)", pillow_note),
              ("load average (1, 5, 15 min)", f"{loads[0]} at the start, {loads[1]} at the end"),
              ("git", git_revision())]
    return facts


def demote(text: str) -> tuple[str | None, str]:
    """(the section's own top-level title or None, its body with headings one level down)."""
    lines, fenced, title = text.strip().splitlines(), False, None
    if lines and re.match(r"#\s", lines[0]):
        title, lines = lines[0][2:].strip(), lines[1:]
    out = []
    for line in lines:
        if line.lstrip().startswith("```"):
            fenced = not fenced
        out.append("#" + line if not fenced and re.match(r"#{1,5}\s", line) else line)
    return title, "\n".join(out).strip()


def summary_rows(bench: Benchmark, outcome: Outcome | None, text: str | None) -> list[SummaryRow]:
    if outcome is not None and outcome.status == "missing":
        return [SummaryRow("not available: see its section", "—", "—", None)]
    if outcome is not None and outcome.status != "ok":
        return [SummaryRow(f"{outcome.status}: see its section", "—", "—", False)]
    if text is None:
        return [SummaryRow("no section", "—", "—", None)]
    if bench.summarise is None:
        return [SummaryRow("see its section", "—", "—", None)]
    try:
        rows = bench.summarise(text)
    except (ValueError, KeyError) as exc:
        return [SummaryRow(f"figures not found in the section ({exc})", "—", "—", None)]
    return rows or [SummaryRow("figures not found in the section", "—", "—", None)]


def gpu_part(gpu_results: Path | None) -> list[str]:
    lines = ["## GPU", "",
             "`bash benchmarks/gpu.sh [OUT_DIR]` installs gpf on a GPU machine "
             "(`pip install --no-deps --no-build-isolation --no-index .`, wheels from `.whl/` first, "
             "else an import shim) and runs `benchmarks/gpu_bench.py` in under 5 minutes: stage-2 "
             "step throughput of `GPFNet(vgg16, 'gpf')` at batch 64 with AMP bf16 and channels_last "
             "(synthetic uint8 batches on the GPU) against fp32 NCHW, the same step fed from shards made "
             "on the machine (samples/s, data-wait), the loader with 1..all cores, the stage-1 "
             "preprocess (VGG16 EB on the GPU, one decode thread per core) against the attention step, "
             "the CPU part and the bare decode alone, and `train_stage2` itself when PyYAML is "
             "importable. Results go to `OUT_DIR/results.md` and `results.json` after every stage. "
             "`python benchmarks/gpu_bench.py --device cpu --tiny --out DIR` is a CPU dry run of the "
             "same code paths (run by `tests/test_benchmarks_smoke.py`).", ""]
    results = gpu_results / "results.md" if gpu_results is not None and gpu_results.is_dir() else gpu_results
    if results is not None and results.exists():
        lines += [f"Results from `{results}`:", "", demote(results.read_text())[1], ""]
    else:
        lines += ["**Not run in this session** (no GPU was available): the figures above are all CPU. "
                  "Pass `--gpu-results OUT_DIR` to include a GPU run here.", ""]
    return lines


def assemble(sections: Path, outcomes: dict[str, Outcome], *, quick: bool, pillow_note: str,
             loads: tuple[str, str], command: str, gpu_results: Path | None = None,
             benchmarks: tuple[Benchmark, ...] | None = None, started: str | None = None) -> str:
    """The whole ``benchmarks.md`` from the section files in ``sections``; ``outcomes`` holds the
    benchmarks this invocation ran (none: the doc is only reassembled)."""
    benchmarks = BENCHMARKS if benchmarks is None else benchmarks
    run_kind = ("Quick run" if quick else "Full run") if outcomes else \
        "Assembled from the existing sections (no benchmark run by this invocation)"
    if outcomes and set(outcomes) != {b.name for b in benchmarks}:
        run_kind += (f" of {', '.join(outcomes)}; the other sections are from earlier runs (each states "
                     "the command that made it)")
    texts = {}
    for bench in benchmarks:
        path = sections / f"{bench.name}.md"
        texts[bench.name] = path.read_text() if path.exists() else None
    lines = ["# Benchmarks", "",
             f"Written by `benchmarks/run_all.py` from the sections in `{shown(sections)}/` (each "
             "benchmark writes its own; do not edit this file by hand). Reproduce with `make bench` "
             "(= `.venv/bin/python benchmarks/run_all.py`); `--quick` for a fast pass, `--only NAME` for "
             "some, `--assemble-only` to rebuild this file. Figures are medians (min–max) of repeated "
             "runs; every ratio is against a baseline measured in the same run, with the rounds "
             "interleaved so machine load hits both sides alike. The plain-Pillow comparison runs in a "
             "throw-away environment, made by `run_all.py` when missing: `python3 -m venv /tmp/venv-pillow "
             "&& /tmp/venv-pillow/bin/pip install pillow numpy` (`--no-pillow-venv` skips it).", "",
             f"{run_kind}: `{command}`, started {started or 'now'}.", "",
             "## Machine", "", "| | |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in machine_facts(pillow_note, loads)]
    lines += ["", "On a shared machine the absolute rates vary with the load (above); the ratios much less, "
                  "since each is taken within a round.", "",
              "## Summary: targets vs measured", "",
              "| benchmark | figure | target | measured | met |", "| --- | --- | --- | --- | --- |"]
    for bench in benchmarks:
        for row in summary_rows(bench, outcomes.get(bench.name), texts[bench.name]):
            met = {True: "yes", False: "**no**", None: "—"}[row.met]
            lines.append(f"| [{bench.name}](#{bench.name}) | {row.figure} | {row.target} | {row.measured} | {met} |")
    lines.append("")
    lines += gpu_part(gpu_results)
    for bench in benchmarks:
        lines += section_part(bench, outcomes.get(bench.name), texts[bench.name], sections)
    return "\n".join(lines).rstrip() + "\n"


def section_part(bench: Benchmark, outcome: Outcome | None, text: str | None, sections: Path) -> list[str]:
    lines = [f'<a id="{bench.name}"></a>', "", f"## {bench.title}", ""]
    if outcome is not None and outcome.status in ("ok", "failed", "timeout", "no_section"):
        lines.append(f"Produced by `{outcome.command}`: {outcome.status}, {outcome.seconds:.0f} s, "
                     f"load average {outcome.load_before} before, {outcome.load_after} after.")
        lines.append("")
    if outcome is not None and outcome.status != "ok":
        lines += [f"**This run: {outcome.status}.**", ""]
        if outcome.detail:
            lines += ["```", outcome.detail, "```", ""]
        if text is not None:
            stamp = _dt.datetime.fromtimestamp((sections / f"{bench.name}.md").stat().st_mtime)
            lines += [f"The section below is from an earlier run ({stamp:%Y-%m-%d %H:%M}).", ""]
    if text is None:
        lines += [f"No section (`{shown(sections / (bench.name + '.md'))}` does not exist).", ""]
        return lines
    lines += [demote(text)[1], ""]
    return lines


# ----------------------------------------------------------------------------- main

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every benchmark's fast mode")
    parser.add_argument("--only", nargs="+", choices=NAMES, metavar="NAME",
                        help=f"run only these ({', '.join(NAMES)}); the doc still lists all")
    parser.add_argument("--skip", nargs="+", choices=NAMES, default=[], metavar="NAME", help="do not run these")
    parser.add_argument("--assemble-only", action="store_true", help="run nothing; rebuild the doc")
    parser.add_argument("--sections", type=Path, help="where sections go (default docs/bench; "
                        f"with --quick {QUICK_ROOT / 'bench'})")
    parser.add_argument("--doc", type=Path, help=f"the assembled file (default docs/benchmarks.md; with "
                        f"--quick {QUICK_ROOT / 'benchmarks.md'})")
    parser.add_argument("--pillow-python", type=Path, default=PILLOW_PYTHON,
                        help="interpreter with plain Pillow for the comparison (default %(default)s)")
    parser.add_argument("--no-pillow-venv", action="store_true", help="do not create the Pillow venv")
    parser.add_argument("--gpu-results", type=Path, help="gpu.sh output folder (or its results.md) to include")
    parser.add_argument("--timeout", type=float, help=f"seconds per benchmark (default {FULL_TIMEOUT_S}; "
                        f"quick {QUICK_TIMEOUT_S})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sections = (args.sections or (QUICK_ROOT / "bench" if args.quick else SECTIONS)).resolve()
    doc = (args.doc or (QUICK_ROOT / "benchmarks.md" if args.quick else DOC)).resolve()
    sections.mkdir(parents=True, exist_ok=True)
    started = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    load_start = load_average()
    chosen = [b for b in BENCHMARKS if (not args.only or b.name in args.only) and b.name not in args.skip]
    outcomes: dict[str, Outcome] = {}
    pillow, pillow_note = None, "see the preprocess_cpu section (not run by this invocation)"
    if not args.assemble_only:
        if any(b.pillow for b in chosen):
            pillow, pillow_note = ensure_pillow_python(args.pillow_python, not args.no_pillow_venv)
            print(f"[run_all] {pillow_note}", flush=True)
        logs = Path(tempfile.mkdtemp(prefix="gpf-bench-logs-"))
        timeout = args.timeout or (QUICK_TIMEOUT_S if args.quick else FULL_TIMEOUT_S)
        for bench in chosen:
            outcomes[bench.name] = run_one(bench, quick=args.quick, sections=sections, logs=logs,
                                           pillow=pillow, timeout_s=timeout)
    command = "python benchmarks/run_all.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = assemble(sections, outcomes, quick=args.quick, pillow_note=pillow_note,
                    loads=(load_start, load_average()), command=command.strip(),
                    gpu_results=args.gpu_results, started=started)
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
    failed = [name for name, o in outcomes.items() if o.status not in ("ok", "missing")]
    missing = [name for name, o in outcomes.items() if o.status == "missing"]
    print(f"[run_all] wrote {doc}" + (f"; failed: {', '.join(failed)}" if failed else "")
          + (f"; not present: {', '.join(missing)}" if missing else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
