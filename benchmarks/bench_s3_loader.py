"""Stage-2 shard loader from a loopback S3 server vs the same shards on local disk, in one run.

Builds the photo-like shard folder of ``bench_loader.py``, copies it into a moto S3
server on 127.0.0.1 (``tests/helpers/s3server.py``, authentication on) and measures
one loader process (``ShardDataset`` iterated directly, what one DataLoader worker
does), rounds interleaved so machine load hits all paths alike:

* local disk (the baseline);
* ``s3://`` streamed: ranged reads with read-ahead, sha256 checked at each tar's end;
* ``s3://`` with a warm ``--cache-dir`` (later epochs: local reads of verified copies).

The server shares the machine's cores with the decoding, so the figure is gpf's
overhead plus moto's, not a cloud store's; the server's CPU time during the S3
rounds is reported beside it (as a share of one core). No target: a record.

Usage: python benchmarks/bench_s3_loader.py [--samples 512] [--repeat 5] [--out docs/bench/s3_loader.md]
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests"))
from _util import fmt_range, load_average, machine_line, rate_stats  # noqa: E402
from bench_loader import build_folder, emit, loader_arguments  # noqa: E402

from gpf.shards.reader import ShardDataset  # noqa: E402
from gpf.shards.storage import Location  # noqa: E402


def measure(paths: dict, repeat: int, server) -> tuple[dict, dict]:
    """samples/s of each path, and the server's CPU share (of one core) while each path ran."""
    times = {name: [] for name in paths}
    cpu = {name: [] for name in paths}
    for fn, _ in paths.values():
        fn()                                      # warm-up: imports, connections, the cache filled
    for _ in range(repeat):
        for name, (fn, _) in paths.items():
            cpu0, t0 = server.cpu_seconds(), time.perf_counter()
            fn()
            wall = time.perf_counter() - t0
            times[name].append(wall)
            cpu[name].append((server.cpu_seconds() - cpu0) / wall)
    rates = {name: rate_stats({"median": statistics.median(t), "min": min(t), "max": max(t), "n": repeat},
                              paths[name][1]) for name, t in times.items()}
    shares = {name: {"median": statistics.median(c), "min": min(c), "max": max(c)} for name, c in cpu.items()}
    return rates, shares


def main(argv=None) -> None:
    args = loader_arguments(__doc__, argv)
    from helpers.s3server import S3Server

    load_before = load_average()
    with tempfile.TemporaryDirectory() as tmp, S3Server() as server:
        folder, cache = Path(tmp) / "shards", Path(tmp) / "cache"
        samples = build_folder(folder, args.samples, args.per_shard)
        url = server.make_bucket("gpf-bench") + "/shards"
        server.upload_folder(folder, url)
        remote = Location(url, server.storage_options)
        n, shards = len(samples), len(list(folder.glob("*.tar")))
        size_mb = sum(p.stat().st_size for p in folder.glob("*.tar")) / 1e6

        def run(dataset):
            def go():
                for _ in dataset:
                    pass
            return go

        train = dict(shuffle=True, drop_last=False)
        local = ShardDataset(folder, "train", args.batch, **train)
        streamed = ShardDataset(remote, "train", args.batch, **train)
        cached = ShardDataset(remote, "train", args.batch, cache_dir=cache, **train)
        items = len(local) * args.batch
        paths = {"local disk (baseline)": (run(local), items),
                 "s3:// streamed (sha256 checked)": (run(streamed), items),
                 "s3:// with a warm --cache-dir": (run(cached), items)}
        rates, shares = measure(paths, args.repeat, server)

    base = rates["local disk (baseline)"]["median"]
    command = "python benchmarks/bench_s3_loader.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = ["## Shard loader from a loopback S3 server, one loader process", "",
             f"`{command.strip()}`", "",
             f"Machine: {machine_line()}; torch {torch.__version__}, 1 thread; load average {load_before}. "
             f"{n} samples in {shards} shards ({size_mb:.1f} MB of tars), training mode, batch {args.batch}, "
             f"median (min–max) of {args.repeat} rounds run round-robin. The S3 server is moto "
             "(`python -m moto.server` on 127.0.0.1, authentication on) on the same cores: its CPU time is "
             "the price of the loopback server, not of a cloud store.", "",
             "| path | samples/s | vs local disk | S3 server CPU (share of one core) |",
             "| --- | --- | --- | --- |"]
    for name, stats in rates.items():
        share = shares[name]
        lines.append(f"| {name} | {fmt_range(stats, digits=0)} | {stats['median'] / base:.2f}× | "
                     f"{fmt_range(share, scale=100, unit='%', digits=0)} |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
