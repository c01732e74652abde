"""Benchmark stage-2 training on CPU: samples/s and data-wait, with and without stored features.

    .venv/bin/python benchmarks/bench_train.py                      # writes docs/bench/train.md
    .venv/bin/python benchmarks/bench_train.py --quick --no-write   # smoke run

The whole pipeline runs on a synthetic AVA folder (``gpf.workflows.synthetic``):
a seeded, randomly initialised stage-1 peripheral subnet (speed does not depend
on its weights) -> ``run_preprocess`` with ``store_features=True`` -> short
``train_stage2`` runs of the ``gpf`` variant, the peripheral frozen, once with
``use_features='no'`` (baseline: the loader decodes the peripheral view and the
peripheral runs forward each step) and once with ``use_features='yes'`` (the
loader reads ``pfeat.npy`` instead and the peripheral forward is skipped).
Figures come from the runs' own metrics (training phase of the epoch only):
samples/s and the data-wait fraction. Repeats alternate the two settings so
machine load hits both alike. One torch thread, one loader worker.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import fmt_range, machine_line  # noqa: E402

DOC = REPO / "docs" / "bench" / "train.md"


def make_shards(folder: Path, images: int, view: int, backbone: str) -> Path:
    from gpf.model.checkpoint import save_checkpoint, stage1_checkpoint
    from gpf.model.gpf import PeripheralNet
    from gpf.pipeline.preprocess import PreprocessConfig, run_preprocess
    from gpf.workflows.synthetic import make_ava_dataset

    make_ava_dataset(folder / "ava", images, seed=0, width=5 * view, height=15 * view // 4, view_size=view)
    torch.manual_seed(0)
    model = PeripheralNet(backbone, num_classes=2)
    payload = stage1_checkpoint(model, view_size=view, threshold=5.0, scores=[float(s) for s in range(1, 11)])
    save_checkpoint(folder / "stage1.pt", payload)
    cfg = PreprocessConfig(dataset="ava", root=str(folder / "ava"), out=str(folder / "shards"),
                           stage1=str(folder / "stage1.pt"), view_size=view, samples_per_shard=32,
                           store_features=True, workers=1, batch_size=16, progress=False,
                           dataset_options={"val_size": 0.1})
    run_preprocess(cfg)
    return folder / "shards"


def run_once(shards: Path, out: Path, use_features: str, args) -> dict:
    from gpf.train.config import Stage2Config
    from gpf.train.stage2 import train_stage2

    cfg = Stage2Config(out=str(out), shards=str(shards), backbone=args.backbone, weights="none", variant="gpf",
                       epochs=1, batch_size=args.batch, lr=0.01, workers=1, progress=False, tensorboard=False,
                       limit_train_batches=args.steps, use_features=use_features,
                       branch_width=args.head, fusion_width=args.head)
    result = train_stage2(cfg)
    row = result.history[-1]
    return {"samples_per_s": row["samples_per_s"], "data_wait": row["data_wait"]}


def stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--view", type=int, default=128)
    parser.add_argument("--backbone", default="small")
    parser.add_argument("--head", type=int, default=256, help="branch and fusion FC width (paper: 2048/4096)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    parser.add_argument("--no-write", action="store_true", help="print only, do not write the doc")
    parser.add_argument("--prepare", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.view, args.steps, args.repeat, args.batch = 80, 64, 3, 1, 8
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", DeprecationWarning)

    settings = {"live peripheral (baseline)": "no", "stored features (pfeat.npy)": "yes"}
    results: dict[str, list[dict]] = {name: [] for name in settings}
    if args.prepare:
        make_shards(args.prepare, args.images, args.view, args.backbone)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        # Preprocessing runs in its own process: its thread pools (torch, numba) would otherwise
        # keep competing with the training being measured.
        subprocess.run([sys.executable, __file__, "--prepare", str(folder), "--images", str(args.images),
                        "--view", str(args.view), "--backbone", args.backbone], check=True)
        shards = folder / "shards"
        run_once(shards, folder / "warmup", "no", args)            # imports, page cache
        for r in range(args.repeat):
            for name, flag in settings.items():
                results[name].append(run_once(shards, folder / f"run-{flag}-{r}", flag, args))

    base = statistics.median(x["samples_per_s"] for x in results["live peripheral (baseline)"])
    command = "python benchmarks/bench_train.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = ["# Benchmark: stage-2 training on CPU, with and without stored peripheral features", "",
             f"Command: `{command.strip()}`  ",
             f"Machine: {machine_line()}; torch {torch.__version__}, 1 torch thread, 1 loader worker  ",
             f"Synthetic AVA ({args.images} images, {5 * args.view}x{15 * args.view // 4}) -> preprocess "
             f"(view {args.view}, 32 samples/shard, --store-features) -> `gpf` variant, backbone "
             f"`{args.backbone}`, head widths {args.head}, batch {args.batch}, {args.steps} steps; "
             f"median (min–max) of {args.repeat} repeats, settings alternated.", "",
             "| peripheral input | samples/s | data-wait | speed-up |", "| --- | --- | --- | --- |"]
    for name, runs in results.items():
        rate = stats([x["samples_per_s"] for x in runs])
        wait = stats([x["data_wait"] for x in runs])
        lines.append(f"| {name} | {fmt_range(rate, digits=1)} | {fmt_range(wait, scale=100, digits=0)} % | "
                     f"{rate['median'] / base:.2f}× |")
    lines += ["", "Data-wait = share of the epoch's training wall time spent blocked on the loader "
              "(see docs/training.md). With stored features the loader skips decoding the peripheral "
              "JPEG and the step skips the peripheral forward."]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        DOC.parent.mkdir(parents=True, exist_ok=True)
        DOC.write_text(text)


if __name__ == "__main__":
    main()
