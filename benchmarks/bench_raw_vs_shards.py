"""Benchmark the shard loader against the raw-JPEG path a user would write without shards.

    .venv/bin/python benchmarks/bench_raw_vs_shards.py                 # writes docs/bench/raw_vs_shards.md
    .venv/bin/python benchmarks/bench_raw_vs_shards.py --quick --no-write   # smoke run

Originals: photo-like JPEGs, 640 x 480, quality 90, 80-150 KB (the generator
of ``bench_preprocess_cpu.py``). Shards: made from them by ``run_preprocess``
at view 224 (attention network ``tiny``, weights none; the attention network
does not change what the loader reads). Then, in one process (what one
DataLoader worker does), batches of ``--batch`` samples with the peripheral
and the foveal view as uint8 tensors and the votes, per path:

* *from shards*: ``make_loader(..., num_workers=0)``, training mode (shuffle
  buffer, shape buckets, decode of ``periph.jpg`` + ``fovea.jpg``);
* *decode the two members alone* (baseline of the first target):
  ``decode_jpegs_uint8`` of every sample's two JPEG members held in memory;
* *raw path* (baseline of the second target): a map-style ``torch`` Dataset
  that opens the original JPEG with PIL, converts it to RGB, resizes it to the
  stored peripheral size and cuts the stored foveal box and resizes it to the
  view, in a ``DataLoader`` (``num_workers=0``, shuffled). Once with Lanczos
  (the views the shards hold) and once with bilinear (the cheapest filter
  commonly used);
* *decode the original alone*: PIL's bare decode of the originals, for scale.

Targets: from shards >= 70 % of the rate of decoding the two members alone,
and >= 3x the raw path. Rounds interleave the paths; ratios are taken within a
round.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import fmt_range, load_average, machine_line, stats_of  # noqa: E402
from bench_preprocess import VIEW, make_photo_dataset, preprocess_config, timed_preprocess  # noqa: E402

DOC = REPO / "docs" / "bench" / "raw_vs_shards.md"
TARGET_VS_MEMBERS = 0.70
TARGET_VS_RAW = 3.0
SHARDS = "from shards (`make_loader`)"
MEMBERS = "decode the two members alone"
RAW_LANCZOS = "raw path, Lanczos (same views as the shards)"
RAW_BILINEAR = "raw path, bilinear"
ORIGINAL = "decode the original JPEG alone"


class RawPhotoDataset(torch.utils.data.Dataset):
    """The path without shards: decode the original, cut the stored box, resize both views."""

    def __init__(self, items: list[dict], view_size: int, resample):
        self.items, self.view_size, self.resample = items, view_size, resample

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        from PIL import Image
        from torchvision.transforms.functional import pil_to_tensor

        item = self.items[index]
        with Image.open(item["path"]) as im:
            rgb = im.convert("RGB")
        periph = rgb.resize(item["periph_size"], self.resample)
        fovea = rgb.crop(item["box"]).resize((self.view_size, self.view_size), self.resample)
        return {"periph": pil_to_tensor(periph), "fovea": pil_to_tensor(fovea),
                "votes": torch.tensor(item["votes"], dtype=torch.float32)}


def shard_items(shard_dir: Path) -> tuple[list[dict], list[bytes]]:
    """Per training sample: original path, stored box, peripheral size and votes (from the
    shards and their Parquet rows); and the JPEG bytes of every periph and fovea member."""
    import pyarrow.parquet as pq

    from gpf.shards.layout import jpeg_size
    from gpf.shards.reader import iter_samples

    rows = pq.read_table(shard_dir / "meta").to_pylist()
    by_key = {row["key"]: row for row in rows if row["status"] == "ok" and row["split"] == "train"}
    items, blobs = [], []
    for tar in sorted(shard_dir.glob("train-*.tar")):
        for sample in iter_samples(tar, lambda key, member: member in ("periph.jpg", "fovea.jpg")):
            row = by_key[sample["__key__"]]
            items.append({"path": row["path"], "box": (row["x0"], row["y0"], row["x1"], row["y1"]),
                          "periph_size": jpeg_size(sample["periph.jpg"]), "votes": row["votes"]})
            blobs += [sample["periph.jpg"], sample["fovea.jpg"]]
    return items, blobs


def iterate(loader) -> int:
    """Samples in one pass over ``loader``."""
    return sum(len(batch["votes"]) for batch in loader)


def make_paths(shard_dir: Path, batch: int) -> dict:
    """name -> callable returning the samples it produced."""
    from PIL import Image

    from gpf.shards.reader import decode_jpegs_uint8, make_loader

    items, blobs = shard_items(shard_dir)
    names = ["bench"] * len(blobs)
    loader = make_loader(shard_dir, "train", batch, num_workers=0, shuffle=True, drop_last=False)

    def raw(resample):
        dataset = RawPhotoDataset(items, VIEW, resample)
        return lambda: iterate(torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True))

    def members():
        decode_jpegs_uint8(blobs, names)
        return len(items)

    def original():
        for item in items:
            with Image.open(item["path"]) as im:
                im.load()
        return len(items)

    return {SHARDS: lambda: iterate(loader), MEMBERS: members,
            RAW_LANCZOS: raw(Image.Resampling.LANCZOS), RAW_BILINEAR: raw(Image.Resampling.BILINEAR),
            ORIGINAL: original}


def measure(paths: dict, repeat: int) -> dict:
    """Samples/s per round of every path; one warm-up round first."""
    rates = {name: [] for name in paths}
    for round_ in range(repeat + 1):
        for name, run in paths.items():
            start = time.perf_counter()
            samples = run()
            if round_:
                rates[name].append(samples / (time.perf_counter() - start))
    return rates


def target_rows(rates: dict) -> list[tuple[str, dict, bool | None]]:
    """(target, per-round ratio stats, met?) ; None = informative only."""
    shards = rates[SHARDS]
    vs_members = stats_of(s / m for s, m in zip(shards, rates[MEMBERS]))
    vs_lanczos = stats_of(s / r for s, r in zip(shards, rates[RAW_LANCZOS]))
    vs_bilinear = stats_of(s / r for s, r in zip(shards, rates[RAW_BILINEAR]))
    return [(f"from shards ≥ {TARGET_VS_MEMBERS:.0%} of decoding the two members alone", vs_members,
             vs_members["median"] >= TARGET_VS_MEMBERS),
            (f"from shards ≥ {TARGET_VS_RAW:.0f}× the raw path (Lanczos)", vs_lanczos,
             vs_lanczos["median"] >= TARGET_VS_RAW),
            (f"from shards ≥ {TARGET_VS_RAW:.0f}× the raw path (bilinear)", vs_bilinear,
             vs_bilinear["median"] >= TARGET_VS_RAW)]


def section(rates: dict, facts: dict, command: str) -> str:
    members = rates[MEMBERS]
    lines = [
        "## Shard loader vs the raw-JPEG path, one process",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine_line()}; torch {torch.__version__}, 1 torch thread; load average "
        f"{load_average()} at the end (shared machine).",
        "",
        f"Originals: {facts['images']} photo-like JPEGs 640x480, quality 90, mean {facts['mean_kb']:.0f} KB. "
        f"Shards: `run_preprocess` at view {VIEW}, {facts['samples']} training samples in "
        f"{facts['shards']} shards, periph {facts['periph']} (HxW) + fovea {VIEW}x{VIEW}, mean member "
        f"{facts['member_kb']:.1f} KB (quality 95). Batches of {facts['batch']} with both views as uint8 "
        f"tensors and the votes; one process (`num_workers=0`: the work of one loader worker). "
        f"Median (min–max) over {len(members)} interleaved rounds after a warm-up round.",
        "",
        "| path | samples/s | vs decoding the two members alone |",
        "| --- | ---: | ---: |",
    ]
    for name, values in rates.items():
        ratio = stats_of(v / m for v, m in zip(values, members))
        lines.append(f"| {name} | {fmt_range(stats_of(values), digits=0)} | {fmt_range(ratio)}× |")
    lines += ["", "| target | measured (per-round ratio) | met |", "| --- | ---: | --- |"]
    for target, ratio, met in target_rows(rates):
        value = fmt_range(ratio, 100, digits=0) + " %" if "%" in target else fmt_range(ratio) + "×"
        lines.append(f"| {target} | {value} | {'yes' if met else 'no'} |")
    return "\n".join(lines) + "\n"


def build_shards(folder: Path, images: int, per_shard: int) -> tuple[Path, object]:
    dataset = make_photo_dataset(folder / "photos", images, unique=min(images, 64))
    shard_dir = folder / "shards"
    timed_preprocess(preprocess_config(dataset, shard_dir, "tiny", 2, 16, samples_per_shard=per_shard))
    return shard_dir, dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=320, help="originals (default %(default)s)")
    parser.add_argument("--per-shard", type=int, default=64, help="samples per shard (default %(default)s)")
    parser.add_argument("--batch", type=int, default=64, help="batch size (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="48 images, batch 16, 1 round")
    parser.add_argument("--out", type=Path, default=DOC, help="Markdown file to write (default: %(default)s)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.per_shard, args.batch, args.repeat = 48, 16, 16, 1
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", DeprecationWarning)
    with tempfile.TemporaryDirectory(prefix="gpf-bench-raw-") as tmp:
        shard_dir, dataset = build_shards(Path(tmp), args.images, args.per_shard)
        paths = make_paths(shard_dir, args.batch)
        rates = measure(paths, args.repeat)
        items, blobs = shard_items(shard_dir)
        from gpf.shards.layout import jpeg_size

        shapes = sorted({"{1}x{0}".format(*jpeg_size(blob)) for blob in blobs[0::2]})  # H x W
        facts = {"images": args.images, "mean_kb": dataset.mean_kb, "samples": len(items),
                 "shards": len(list(shard_dir.glob("train-*.tar"))), "periph": ", ".join(shapes),
                 "member_kb": float(np.mean([len(b) for b in blobs])) / 1024, "batch": args.batch}
    command = "python benchmarks/bench_raw_vs_shards.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = section(rates, facts, command.strip())
    print(text)
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("# Benchmark: shard loader vs raw JPEGs\n\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
