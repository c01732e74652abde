"""Benchmark the whole stage-1 pass (``run_preprocess``) on CPU against the bare decode of its inputs.

    .venv/bin/python benchmarks/bench_preprocess.py                 # writes docs/bench/preprocess.md
    .venv/bin/python benchmarks/bench_preprocess.py --quick --no-write   # smoke run

Inputs: N JPEGs of 640 x 480 at quality 90 with the entropy of real photos
(80-150 KB each; the generator of ``bench_preprocess_cpu.py``) and a label CSV
in the ``folder`` format. Each timed run is a complete ``run_preprocess`` into
a fresh output folder: label parsing, decode, peripheral view, Excitation
Backprop (paper Eq. 2-3) on the attention network, the Eq. 4 crop search,
foveal view, two JPEG encodes, tar + Parquet + manifest. The attention
networks are ``create_backbone`` classifiers with ``weights='none'`` (seeded
random weights: speed does not depend on them) at view 224; ``--workers``
decode/encode threads, one torch thread, CPU.

Baselines measured in the same rounds: PIL's bare decode of the same files
(``Image.open(path).load()``, one thread) and the attention step alone
(``attend_views``: EB + crop search on the already decoded peripheral views,
batches of ``--batch-size``), which shows where the time goes. Rounds
interleave every setting, so machine load hits them alike; ratios are taken
within a round.
"""
from __future__ import annotations

import argparse
import csv
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import fmt_range, load_average, machine_line, rate_stats, stats_of  # noqa: E402

DOC = REPO / "docs" / "bench" / "preprocess.md"
VIEW = 224
PHOTO_SIZE = (640, 480)      # (width, height) of the originals, like AVA photos
BUCKETS = 10                 # AVA-like vote buckets (scores 1..10)
VAL_EVERY = 10               # every 10th image goes to the validation split
DEFAULT_BACKBONES = ("tiny", "resnet18")


# ----------------------------------------------------------------------------- inputs

@dataclass(frozen=True)
class PhotoDataset:
    """A ``folder`` dataset of photo-like JPEGs: its label CSV and image files."""
    csv: Path
    paths: tuple[Path, ...]

    @property
    def mean_kb(self) -> float:
        return sum(p.stat().st_size for p in self.paths) / len(self.paths) / 1024


def _write_photo(args: tuple[int, str, tuple[int, int]]) -> None:
    """One photo-like JPEG at quality 90; at 640 x 480 checked to weigh like a real photo."""
    from PIL import Image

    from bench_preprocess_cpu import SIZE_KB, photo_like

    seed, path, (width, height) = args
    Image.fromarray(photo_like(seed, width, height)).save(path, format="JPEG", quality=90)
    kb = Path(path).stat().st_size / 1024
    if (width, height) == PHOTO_SIZE and not SIZE_KB[0] <= kb <= SIZE_KB[1]:
        raise RuntimeError(f"{path}: {kb:.0f} KB is outside {SIZE_KB} KB; the generator needs tuning")


def make_photo_dataset(folder: Path, count: int, *, unique: int | None = None, processes: int = 1,
                       size: tuple[int, int] = PHOTO_SIZE) -> PhotoDataset:
    """``count`` photo-like JPEGs plus ``labels.csv`` (``image_id, c1..c10, split``) in ``folder``.

    ``size`` (width, height) other than 640 x 480 is for smoke runs: only that
    size is checked against the weight of real photos.

    Only ``unique`` distinct images are rendered (default: all); the others are
    byte copies, which decode exactly as fast and save the rendering time on
    large sets. Every 10th image is in the ``val`` split, the rest in ``train``.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    unique = count if unique is None else max(1, min(unique, count))
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"photo_{index:06d}.jpg" for index in range(count)]
    jobs = [(index, str(paths[index]), tuple(size)) for index in range(unique)]
    if processes > 1:
        with ProcessPoolExecutor(processes) as pool:
            list(pool.map(_write_photo, jobs, chunksize=max(1, unique // (4 * processes))))
    else:
        for job in jobs:
            _write_photo(job)
    for index in range(unique, count):
        shutil.copyfile(paths[index % unique], paths[index])
    csv_path = folder / "labels.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_id", *(f"c{k}" for k in range(1, BUCKETS + 1)), "split"])
        rng = np.random.default_rng(0)
        for index, path in enumerate(paths):
            votes = rng.integers(0, 30, BUCKETS)
            votes[BUCKETS // 2] += 1                       # never an all-zero distribution
            split = "val" if index % VAL_EVERY == VAL_EVERY - 1 else "train"
            writer.writerow([path.stem, *votes.tolist(), split])
    return PhotoDataset(csv_path, tuple(paths))


# ----------------------------------------------------------------------------- measuring

def preprocess_config(dataset: PhotoDataset, out: Path, backbone: str | None, workers: int, batch_size: int,
                      samples_per_shard: int = 1000, device: str = "cpu", view_size: int = VIEW,
                      stage1: str | None = None):
    """The run's config: attention from ``stage1`` (a checkpoint) when given, else from
    ``backbone`` with weights ``none`` (seeded random: the same network in every run)."""
    from gpf.pipeline.preprocess import PreprocessConfig

    return PreprocessConfig(dataset="folder", root=str(dataset.csv), out=str(out),
                            backbone=None if stage1 else backbone, stage1=stage1, weights="none",
                            view_size=view_size, samples_per_shard=samples_per_shard, workers=workers,
                            batch_size=batch_size, device=device, progress=False)


def timed_preprocess(cfg) -> float:
    """Seconds for one complete ``run_preprocess``; refuses a run that lost images."""
    from gpf.pipeline.preprocess import run_preprocess

    start = time.perf_counter()
    summary = run_preprocess(cfg)
    seconds = time.perf_counter() - start
    if summary.failures:
        raise RuntimeError(f"preprocess into {cfg.out} failed on {summary.failures} image(s): "
                           f"{dict(summary.counts)}")
    return seconds


def bare_decode(paths) -> None:
    from PIL import Image

    for path in paths:
        with Image.open(path) as im:
            im.load()


def attention_step(dataset: PhotoDataset, backbone: str, batch_size: int):
    """A callable running EB + crop search on the dataset's peripheral views (decoded once, here)."""
    from gpf.pipeline.attend import attend_views
    from gpf.pipeline.images import load_image, peripheral_view
    from gpf.vocabulary import VIEW_ROUND
    from gpf.model.device import resolve_device
    from gpf.pipeline.preprocess import load_attention_model

    cfg = preprocess_config(dataset, Path("unused"), backbone, 1, batch_size)
    att = load_attention_model(cfg, resolve_device("cpu"))
    images = [load_image(p) for p in dataset.paths]
    views = [peripheral_view(im, VIEW, stride=VIEW_ROUND) for im in images]     # preprocess's rule
    sizes = [im.size for im in images]

    def run():
        for start in range(0, len(views), batch_size):
            attend_views(att, views[start:start + batch_size], sizes[start:start + batch_size])
    return run


def measure(dataset: PhotoDataset, backbones, workers, batch_size: int, repeat: int, scratch: Path) -> dict:
    """Seconds per pass of every setting, ``repeat`` interleaved rounds after one warm-up round
    (numba compilation, model set-up, page cache)."""
    steps = {"decode": lambda: bare_decode(dataset.paths)}
    for backbone in backbones:
        steps[f"attention:{backbone}"] = attention_step(dataset, backbone, batch_size)
        for w in workers:
            def run(backbone=backbone, w=w):
                out = scratch / f"out-{backbone}-{w}"
                try:
                    return timed_preprocess(preprocess_config(dataset, out, backbone, w, batch_size))
                finally:
                    shutil.rmtree(out, ignore_errors=True)
            steps[f"preprocess:{backbone}:{w}"] = run
    times = {name: [] for name in steps}
    for round_ in range(repeat + 1):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if round_:
                times[name].append(time.perf_counter() - start)
    return times


# ----------------------------------------------------------------------------- report

def section(times: dict, n: int, mean_kb: float, backbones, workers, batch_size: int, command: str) -> str:
    import torch

    from gpf.env_info import pil_flavour

    pil = pil_flavour()
    decode = times["decode"]
    rounds = len(decode)
    lines = [
        "## Whole preprocess (`run_preprocess`) on CPU",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine_line()}; torch {torch.__version__}, 1 torch thread; {pil['flavour']} "
        f"{pil['version']}; load average {load_average()} at the end (shared machine).",
        "",
        f"Inputs: {n} photo-like JPEGs 640x480, quality 90, mean {mean_kb:.0f} KB, `folder` CSV. "
        f"Each run: a complete `run_preprocess` into a fresh folder (view {VIEW}, batch {batch_size}, "
        "quality-95 views, weights `none`, CPU). Median (min–max) over "
        f"{rounds} interleaved rounds after a warm-up round; ratios are taken within each round.",
        "",
        "| attention network | workers (threads) | whole preprocess (img/s) | vs bare decode "
        f"| vs {workers[0]} worker(s) | attention step alone (img/s) | whole vs attention alone |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for backbone in backbones:
        att = times[f"attention:{backbone}"]
        one = times[f"preprocess:{backbone}:{workers[0]}"]
        for w in workers:
            t = times[f"preprocess:{backbone}:{w}"]
            vs_decode = stats_of(d / p for d, p in zip(decode, t))
            vs_one = stats_of(o / p for o, p in zip(one, t))
            vs_att = stats_of(a / p for a, p in zip(att, t))
            lines.append(f"| {backbone} | {w} | {fmt_range(rate_stats(stats_of(t), n), digits=1)} "
                         f"| {fmt_range(vs_decode, 100, digits=1)} % | {fmt_range(vs_one)}× "
                         f"| {fmt_range(rate_stats(stats_of(att), n), digits=1)} "
                         f"| {fmt_range(vs_att, 100, digits=0)} % |")
    lines += ["", f"Baseline: PIL bare decode of the same files, one thread: "
                  f"{fmt_range(rate_stats(stats_of(decode), n), digits=0)} img/s.", "",
              "*Attention step alone* = `attend_views` (EB on the peripheral view + upsampling + "
              "crop search) over the already decoded views, in the main thread as in the pass. When the "
              "whole pass runs near that rate, the network is the bound: the decode/encode threads "
              "overlap with it and more of them cannot help (here they also share the machine's cores "
              "with it). On a GPU the bound moves to the CPU part (`bench_preprocess_cpu.py`, "
              "`gpu_bench.py`)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32, help="number of 640x480 inputs (default %(default)s)")
    parser.add_argument("--backbones", nargs="+", default=list(DEFAULT_BACKBONES),
                        help="attention networks, weights none (default: %(default)s)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="decode/encode thread counts; the first is the 'vs' baseline (default: 1 2)")
    parser.add_argument("--batch-size", type=int, default=16, help="network batch (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="8 images, tiny only, 1 round")
    parser.add_argument("--out", type=Path, default=DOC, help="Markdown file to write (default: %(default)s)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.backbones, args.repeat, args.batch_size = 8, ["tiny"], 1, 8
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="gpf-bench-preprocess-") as tmp:
        scratch = Path(tmp)
        dataset = make_photo_dataset(scratch / "photos", args.images)
        times = measure(dataset, args.backbones, args.workers, args.batch_size, args.repeat, scratch)
        mean_kb = dataset.mean_kb
    command = "python benchmarks/bench_preprocess.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = section(times, args.images, mean_kb, args.backbones, args.workers, args.batch_size, command.strip())
    print(text)
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("# Benchmark: whole preprocess\n\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
