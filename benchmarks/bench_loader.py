"""Shard loader throughput per worker process vs decoding the two JPEG members alone.

Builds a temporary shard folder of photo-like JPEGs (a smooth random field plus
grain, 224 px, quality 95: about 35 kB each, like real photos, unlike flat
synthetic images that decode several times faster), then measures in one run:

* baseline: ``torchvision.io.decode_jpeg`` of each sample's periph + fovea bytes
  held in memory (the unavoidable cost);
* tar read only: :func:`gpf.shards.reader.iter_samples` without decoding, and
  Python's ``tarfile`` reading the same members (the alternative not taken);
* decode + stack to contiguous NCHW: what the loader would pay without
  channels_last batches (the alternative not taken);
* the loader in one process (``ShardDataset`` iterated directly, i.e. what one
  DataLoader worker does), training mode (shuffle buffer, shape buckets) and
  evaluation mode.

Usage: python benchmarks/bench_loader.py [--samples 512] [--batch 64] [--repeat 5]
       [--out docs/bench/loader.md]
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import tarfile
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import fmt_range, machine_line, rate_stats, time_repeats  # noqa: E402

from gpf.shards.layout import safe_key  # noqa: E402
from gpf.shards.manifest import RunFields, write_manifest  # noqa: E402
from gpf.shards.reader import ShardDataset, decode_jpegs_uint8, iter_samples  # noqa: E402
from gpf.shards.writer import write_shard  # noqa: E402

PERIPH_SHAPES = [(160, 224), (224, 160), (224, 224)]  # (H, W)
VIEW = 224


def photo_jpeg(rng, height, width, quality=95) -> bytes:
    """Photo-like entropy: bicubic-upsampled random field + luminance and colour grain."""
    small = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC), np.float32)
    grain = rng.normal(0, 14, (height, width, 1)) + rng.normal(0, 6, (height, width, 3))
    out = io.BytesIO()
    Image.fromarray(np.clip(base + grain, 0, 255).astype(np.uint8)).save(out, "JPEG",
                                                                         quality=quality)
    return out.getvalue()


def build_folder(folder: Path, samples: int, per_shard: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    made = []
    for index in range(-(-samples // per_shard)):
        batch, rows = [], []
        for i in range(index * per_shard, min(samples, (index + 1) * per_shard)):
            image_id = str(100000 + i)
            h, w = PERIPH_SHAPES[int(rng.integers(0, len(PERIPH_SHAPES)))]
            batch.append({"key": safe_key(image_id), "periph.jpg": photo_jpeg(rng, h, w),
                          "fovea.jpg": photo_jpeg(rng, VIEW, VIEW),
                          "attn.npy": rng.random((h // 16, w // 16)).astype(np.float16),
                          "json": {"id": image_id, "votes": rng.integers(0, 30, 10).tolist()}})
            rows.append({"id": image_id, "votes": batch[-1]["json"]["votes"], "status": "ok"})
        write_shard(folder, "train", index, batch, rows)
        made.extend(batch)
    write_manifest(folder, RunFields(dataset="bench", scores=tuple(range(1, 11)), threshold=5.0,
                                     view_size=VIEW, tau=0.7))
    return made


def interleaved_rates(paths: dict, repeat: int) -> dict:
    """items/s of each path; repeats run round-robin so machine load hits all alike."""
    times = {name: [] for name in paths}
    for fn, _ in paths.values():
        fn()                                    # warm-up: imports, page cache
    for _ in range(repeat):
        for name, (fn, _) in paths.items():
            times[name].append(time_repeats(fn, repeat=1, warmup=0)["median"])
    return {name: rate_stats({"median": statistics.median(t), "min": min(t), "max": max(t),
                              "n": repeat}, paths[name][1])
            for name, t in times.items()}


def loader_arguments(doc: str, argv) -> argparse.Namespace:
    """The options of the loader benchmarks (this one and bench_s3_loader.py); pins torch to one thread."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--per-shard", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown section here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", DeprecationWarning)
    return args


def main(argv=None) -> None:
    args = loader_arguments(__doc__, argv)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        samples = build_folder(folder, args.samples, args.per_shard)
        n = len(samples)
        jpeg_kb = np.mean([len(s["periph.jpg"]) + len(s["fovea.jpg"]) for s in samples]) / 2048
        blobs = [b for s in samples for b in (s["periph.jpg"], s["fovea.jpg"])]
        names = ["bench"] * len(blobs)
        tars = sorted(folder.glob("train-*.tar"))

        def decode_only():
            decode_jpegs_uint8(blobs, names)

        def decode_stack_nchw():
            by_shape: dict = {}
            for image in decode_jpegs_uint8(blobs, names):
                by_shape.setdefault(tuple(image.shape), []).append(image)
            for images in by_shape.values():
                for i in range(0, len(images), args.batch):
                    torch.stack(images[i:i + args.batch])

        def read_tarfile():
            for tar in tars:
                with tarfile.open(tar) as archive:
                    for member in archive:
                        archive.extractfile(member).read()

        def read_only():
            for tar in tars:
                for _ in iter_samples(tar, lambda key, member: True):
                    pass

        train = ShardDataset(folder, "train", args.batch, shuffle=True, drop_last=False)
        evaluation = ShardDataset(folder, "train", args.batch, shuffle=False)
        train_items = len(train) * args.batch

        def run(dataset):
            for _ in dataset:
                pass

        paths = {
            "decode periph + fovea only (baseline)": (decode_only, n),
            "decode + stack to contiguous NCHW (not used)": (decode_stack_nchw, n),
            "tar read only, gpf reader": (read_only, n),
            "tar read only, Python tarfile (not used)": (read_tarfile, n),
            "loader, training mode": (lambda: run(train), train_items),
            "loader, evaluation mode": (lambda: run(evaluation), n),
        }
        results = interleaved_rates(paths, args.repeat)

    base = results["decode periph + fovea only (baseline)"]["median"]
    command = "python benchmarks/bench_loader.py " + " ".join(argv if argv is not None
                                                                else sys.argv[1:])
    lines = ["## Shard loader, one worker process", "",
             f"`{command.strip()}`", "",
             f"Machine: {machine_line()}; torch {torch.__version__}, 1 thread. "
             f"{n} samples in {len(tars)} shards, periph {', '.join(f'{h}x{w}' for h, w in PERIPH_SHAPES)}"
             f" + fovea {VIEW}x{VIEW}, mean JPEG {jpeg_kb:.1f} kB (quality 95), batch {args.batch}, "
             f"median (min–max) of {args.repeat} repeats run round-robin.", "",
             "| path | samples/s | vs baseline |", "| --- | --- | --- |"]
    for name, stats in results.items():
        lines.append(f"| {name} | {fmt_range(stats, digits=0)} | {stats['median'] / base:.2f}× |")
    emit(lines, args.out)


def emit(lines: list[str], out: Path | None) -> None:
    """Print a Markdown section and write it to ``out`` (when given)."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)


if __name__ == "__main__":
    main()
