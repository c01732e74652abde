"""Pad or enlarge? How a view below a backbone's minimum input is best fitted to it (issue 15, item 4).

    .venv/bin/python benchmarks/view_fit.py                          # both modes, seeds 0,1,2 (~25 min, 2 cores)
    .venv/bin/python benchmarks/view_fit.py --from-json pad=a.json,b.json enlarge=c.json,d.json

Stored peripheral views are backbone-neutral; a network whose minimum input
side exceeds a view's short side gets the view fitted by
``gpf.model.geometry.fit_to_backbone``: padded with its mean colour (``pad``) or
enlarged with the aspect kept (``enlarge``). This runs the fine-detail task
(benchmarks/fine_detail.py, quick mode) where every peripheral view needs it:
3:1 photos (480x160, so 96x32 peripheral views) and the ``tiny`` backbone
declared with minimum input 48 (``--min-input``), fitted the same way in stage
1, the attention pass, stage 2 and evaluation; variants ``single`` (the
peripheral column alone, where the fit matters most) and ``gpf``, task
``detail``. ``--from-json`` assembles the section from ``fine_detail.py --json``
runs made with ``--size 480x160 --min-input 48 --view-fit MODE`` (several files
per mode merge their seeds).

Reported per mode: accuracy and SRCC of both variants and the pointing-game
hit rate (mean ± sample std over seeds), and the cost: peripheral pixels per
view and the time of a stage-1 training step (the tiny peripheral network,
batch 64, CPU) on views fitted each way, the two modes interleaved in every round.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fine_detail as fd  # noqa: E402
from _util import load_average, machine_line  # noqa: E402

from gpf.vocabulary import VIEW_FITS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "bench" / "view_fit.md"
VARIANTS = ("single", "gpf")
TASK = "detail"


# ----------------------------------------------------------------------------- quality (the fine-detail task)

def per_seed_rows(summary_json: dict) -> list[dict]:
    """The ``detail`` task's per-seed rows of a ``fine_detail.to_json`` summary."""
    return list(summary_json.get(TASK, {}).get("per_seed", []))


def aggregate(rows: list[dict]) -> dict:
    """Mean and sample std over seeds: ``{variant: {"accuracy", "srcc"}}`` and ``hit``, plus the seeds."""
    out = {"seeds": [r["seed"] for r in rows], "hit": fd.mean_std([r["hit"] for r in rows])}
    for variant in VARIANTS:
        out[variant] = {m: fd.mean_std([r["variants"][variant][m] for r in rows if variant in r["variants"]])
                        for m in ("accuracy", "srcc")}
    return out


def run_mode(mode: fd.Mode, seeds, work: Path, device: str, threads) -> tuple[list[dict], float]:
    started = time.perf_counter()
    results = fd.run_benchmark(mode, seeds, [TASK], list(VARIANTS), work / mode.view_fit, device, threads,
                               echo=lambda line: print(line, file=sys.stderr, flush=True))
    return per_seed_rows(fd.to_json(fd.summarise(results))), time.perf_counter() - started


def paired_difference(pad_rows: list[dict], enlarge_rows: list[dict], variant: str) -> str:
    """enlarge - pad test accuracy, paired by seed (the same photos): mean, standard error, seeds where higher."""
    pad = {r["seed"]: r["variants"][variant]["accuracy"] for r in pad_rows}
    big = {r["seed"]: r["variants"][variant]["accuracy"] for r in enlarge_rows}
    seeds = sorted(set(pad) & set(big))
    gaps = [big[s] - pad[s] for s in seeds]
    if not gaps:
        return f"{variant}: no seed run in both modes"
    error = statistics.stdev(gaps) / len(gaps) ** 0.5 if len(gaps) > 1 else float("nan")
    higher = sum(g > 0 for g in gaps)
    return (f"{variant} {100 * statistics.fmean(gaps):+.1f} points (paired over {len(gaps)} seeds: standard "
            f"error {100 * error:.1f}; enlarge higher on {higher}, lower on {sum(g < 0 for g in gaps)})")


# ----------------------------------------------------------------------------- cost

def peripheral_pixels(width: int, height: int, view: int, min_input: int, mode: str) -> tuple[int, int]:
    """(width, height) of the fitted peripheral view of a ``width`` x ``height`` photo."""
    from gpf.model.geometry import ViewGeometry, fitted_size

    return fitted_size(*ViewGeometry(view).size(width, height), min_input, mode)


def step_seconds(sizes: dict[str, tuple[int, int]], rounds: int, batch: int = 64) -> dict:
    """Median (min, max) seconds of a stage-1 training step (the tiny peripheral net, high/low, CPU) on views
    fitted each way, the modes interleaved in every round: the network whose input the fit decides."""
    import torch
    import torch.nn.functional as F

    from gpf.model.gpf import PeripheralNet

    torch.manual_seed(0)
    model = PeripheralNet("tiny", num_classes=2).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    labels = torch.randint(0, 2, (batch,))
    inputs = {mode: torch.rand(batch, 3, h, w) for mode, (w, h) in sizes.items()}

    def step(periph):
        optimizer.zero_grad()
        F.cross_entropy(model(periph), labels).backward()
        optimizer.step()

    for periph in inputs.values():            # warm-up
        step(periph)
    times: dict[str, list[float]] = {mode: [] for mode in inputs}
    for _ in range(rounds):
        for mode, periph in inputs.items():
            started = time.perf_counter()
            step(periph)
            times[mode].append(time.perf_counter() - started)
    return {mode: (statistics.median(t), min(t), max(t)) for mode, t in times.items()}


# ----------------------------------------------------------------------------- the section

def cell(stats, percent: bool = False) -> str:
    mean, std = stats
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if percent else f"{mean:.3f} ± {std:.3f}"


def markdown(results: dict, sizes: dict, steps: dict, args, command: str, walls: dict, load: tuple) -> str:
    lines = ["# Benchmark: fitting views below a backbone's minimum input (pad vs enlarge)", "",
             f"Command (from the repository root): `{command}`", "",
             *([f"Summaries made by: {'; '.join(f'`{run}`' for run in args.run)}.", ""] if args.run else []),
             f"Machine: {machine_line()}; load average before/after: {load[0]} / {load[1]}.", "",
             f"Fine-detail task `{TASK}` (benchmarks/fine_detail.py, quick mode: {args.images} synthetic "
             f"{args.width}x{args.height} photos per seed, {args.view} px views, backbone `tiny` declared with minimum "
             f"input {args.min_input}, 20 % test): every peripheral view ({'×'.join(map(str, sizes['stored']))} "
             "before fitting) is fitted, in stage 1, the attention pass, stage 2 and evaluation. Cells: mean ± "
             "sample std over the seeds.", "",
             "| fit | seeds | single acc % | single SRCC | gpf acc % | gpf SRCC | pointing game % "
             f"| peripheral input | stage-1 step ms (batch {args.step_batch}) | wall time |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    for mode, agg in results.items():
        width, height = sizes[mode]
        median, low, high = steps[mode]
        wall = f"{walls[mode] / 60:.1f} min" if mode in walls else "—"
        lines.append(f"| `{mode}` | {', '.join(map(str, agg['seeds']))} | {cell(agg['single']['accuracy'], True)} "
                     f"| {cell(agg['single']['srcc'])} | {cell(agg['gpf']['accuracy'], True)} "
                     f"| {cell(agg['gpf']['srcc'])} | {cell(agg['hit'], True)} | {width}×{height} = {width * height} px "
                     f"| {1000 * median:.1f} ({1000 * low:.1f}–{1000 * high:.1f}) | {wall} |")
    if set(results) == set(VIEW_FITS):
        diffs = [paired_difference(args.rows["pad"], args.rows["enlarge"], variant) for variant in VARIANTS]
        cost = (sizes["enlarge"][0] * sizes["enlarge"][1]) / (sizes["pad"][0] * sizes["pad"][1])
        lines += ["", f"enlarge − pad, test accuracy: {'; '.join(diffs)}. Enlarging costs {cost:.2f}× the "
                  f"peripheral pixels of padding and {steps['enlarge'][0] / steps['pad'][0]:.2f}× its step time."]
    lines += ["", "Per seed (accuracy % / SRCC, hit %):", "",
              "| fit | seed | single | gpf | hit % |", "| --- | ---: | ---: | ---: | ---: |"]
    for mode, rows in args.rows.items():
        for r in rows:
            v = r["variants"]
            lines.append(f"| `{mode}` | {r['seed']} | {100 * v['single']['accuracy']:.1f} / {v['single']['srcc']:.3f} "
                         f"| {100 * v['gpf']['accuracy']:.1f} / {v['gpf']['srcc']:.3f} | {100 * r['hit']:.1f} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- command line

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2", help="Comma-separated seeds (default 0,1,2).")
    parser.add_argument("--images", type=int, default=fd.QUICK.n_images, help="Photos per seed.")
    parser.add_argument("--size", default="480x160", help="Photo size WxH (default 480x160: 96x32 views).")
    parser.add_argument("--min-input", type=int, default=48, help="Declared minimum input of the backbone.")
    parser.add_argument("--from-json", nargs="+", default=None, metavar="MODE=FILE[,FILE]",
                        help="Assemble from fine_detail.py --json summaries instead of running.")
    parser.add_argument("--run", action="append", default=[], metavar="COMMAND",
                        help="With --from-json: a command that made the summaries, listed in the section.")
    parser.add_argument("--step-rounds", type=int, default=15, help="Timed training steps per mode.")
    parser.add_argument("--step-batch", type=int, default=64, help="Batch of the timed training steps.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Markdown section to write.")
    args = parser.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.width, args.height = (int(v) for v in args.size.lower().split("x"))
    args.view = fd.QUICK.view_size
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    command = " ".join(["python benchmarks/view_fit.py", *argv])
    load_before = load_average()
    walls: dict[str, float] = {}
    args.rows = {}
    if args.from_json:
        for item in args.from_json:
            mode, _, files = item.partition("=")
            if mode not in VIEW_FITS or not files:
                raise SystemExit(f"--from-json takes MODE=FILE[,FILE] with MODE one of {', '.join(VIEW_FITS)}; "
                                 f"got {item!r}")
            args.rows[mode] = [row for f in files.split(",") for row in per_seed_rows(json.loads(Path(f).read_text()))]
    else:
        declared = replace(fd.QUICK, n_images=args.images, width=args.width, height=args.height,
                           min_input=args.min_input)
        with tempfile.TemporaryDirectory(prefix="gpf-view-fit-") as work:
            for mode in VIEW_FITS:
                args.rows[mode], walls[mode] = run_mode(replace(declared, view_fit=mode), args.seeds, Path(work),
                                                        args.device, args.threads)
    results = {mode: aggregate(rows) for mode, rows in args.rows.items()}
    sizes = {mode: peripheral_pixels(args.width, args.height, args.view, args.min_input, mode) for mode in VIEW_FITS}
    import torch

    torch.set_num_threads(args.threads)
    steps = step_seconds(sizes, args.step_rounds, batch=args.step_batch)
    sizes["stored"] = peripheral_pixels(args.width, args.height, args.view, 1, "pad")
    text = markdown(results, sizes, steps, args, command, walls, (load_before, load_average()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    print(f"[view_fit] section written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
