"""Fine-detail benchmark: does the attention crop find, and use, what the peripheral view cannot see?

    .venv/bin/python benchmarks/fine_detail.py --quick             # CPU, writes docs/bench/fine_detail.md
    .venv/bin/python benchmarks/fine_detail.py --device cuda       # full mode, for a GPU

GPF-CNN's claim (paper, sections III-IV, Table I) is that a foveal crop chosen by
top-down attention beats a single low-resolution column. On AVA nobody knows
where the deciding detail is; here it is planted (``gpf.workflows.synthetic``):
the score of each photo depends on a fine plaid on one framed panel (gone in
the peripheral view, visible in a crop of the panel's size) and, less, on the
panel's colour (visible at any scale: what teaches stage 1 where to look).

For each task and seed: generate the dataset -> train stage 1 -> preprocess
(attention crops, the warped photo and the original-resolution photo for the
baselines) -> train stage 2 for the paper's variants as the paper ran them
(section IV-C, Table I): ``single`` (the backbone fine-tuned on the whole photo
warped to a square), ``random`` (warped photo + a fresh original-resolution patch
at a random place each time a sample is seen), ``pf`` and ``gpf``
(``gpf.workflows.experiment``); ``--variants`` picks others too, e.g. the frozen ones
(``single-frozen``, ``random-frozen``) or ``single-periph``. Two rows are added
on each seed's stage-1 model (``gpf.workflows.experiment.run_extra``):

* ``gpf + NAME foveal``: gpf with the timm backbone ``--timm-foveal`` (random
  init; ImageNet weights are not downloaded) as the foveal subnet, the stage-1
  network as the peripheral, on the same shards;
* ``gpf (contrastive EB)``: the same stage-1 model's attention made again with
  contrastive EB into new shards, gpf trained on them (``single`` does not read
  the crop, so its run is shared; ``--no-contrastive`` leaves this out).

Reported per row: the paper's six metrics, mean ± sample std over seeds; per
task: the pointing-game hit rate of the attention boxes (a box covering >= 50 %
of the panel and small enough for the fovea to resolve the plaid) next to the
rate of random boxes of the same sizes, and per EB form (plain, contrastive)
that hit rate with the gpf - single gap.

* ``detail`` task: the plaid carries the score; ``pf``/``gpf`` should beat
  ``single`` (and ``random``), and the hit rate should be far above chance.
* ``control`` task: the same images, but the score follows a hidden bit instead
  of the plaid; the variants should tie (a gain there would be a leak).

Quick mode: 448x336 photos, 96 px views, the ``tiny`` backbone, 3 seeds.
Full mode: 640x480 photos, 224 px views (the paper's view size, plaid period
2 px), the ``small`` backbone (``tiny`` sees only parts of the carrier at this
scale: pointing game 35 %), 4,000 photos, 30 epochs per stage; meant for a GPU
(``--device cuda``). Not yet measured at full size; a CPU check with
``--images 1000 --epochs 25 --seeds 0 --tasks detail --variants single,gpf``
(4 min, with ``single`` then a head over the frozen stage-1 descriptor, today's
``single-frozen``) gave gpf 68.0 % / SRCC 0.622 vs single 63.0 % / 0.497,
pointing game 45.5 % vs 2.1 % for random boxes.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import load_average, machine_line  # noqa: E402

from gpf.vocabulary import VARIANT_NAMES, VIEW_FIT, VIEW_FITS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "bench" / "fine_detail.md"
TASKS = ("detail", "control")
VARIANTS = VARIANT_NAMES
METRICS = ("accuracy", "srcc", "lcc", "mae", "rmse", "emd")
CONTRASTIVE_ROW = "gpf (contrastive EB)"
#: The row whose gap to ``single`` is reported per EB form.
EB_ROWS = {"plain": "gpf", "contrastive": CONTRASTIVE_ROW}
EB_KEYS = ("hit", "random", "gpf_acc", "gpf_srcc", "gap_acc", "gap_srcc")
DEFAULT_VARIANTS = ("single", "random", "pf", "gpf")
DEFAULT_TIMM_FOVEAL = "timm:resnet10t"
TITLES = {"accuracy": "accuracy %", "srcc": "SRCC", "lcc": "LCC", "mae": "MAE", "rmse": "RMSE", "emd": "EMD"}


@dataclass(frozen=True)
class Mode:
    """Sizes of one benchmark mode."""
    name: str
    n_images: int
    width: int
    height: int
    view_size: int
    backbone: str
    stage1: dict = field(default_factory=dict)
    stage2: dict = field(default_factory=dict)
    random_crops: int = 2
    data_workers: int = 1                      # processes rendering the synthetic photos
    view_fit: str = VIEW_FIT                   # views below the backbone's minimum input: pad | enlarge
    min_input: int | None = None               # declare the backbone with this minimum input side (see below)


QUICK = Mode("quick", n_images=1000, width=448, height=336, view_size=96, backbone="tiny",
             stage2={"epochs": 15, "lr_step": 10})
FULL = Mode("full", n_images=4000, width=640, height=480, view_size=224, backbone="small",
            stage1={"epochs": 30, "lr_step": 20, "workers": None},      # None: the trainers pick
            stage2={"epochs": 30, "lr_step": 20, "workers": None},
            data_workers=8)


# ----------------------------------------------------------------------------- running

@dataclass
class SeedResult:
    """One task and seed: every row's VariantResult (the variants, then the extra rows) and the
    pointing game per EB form (``plain``; ``contrastive`` when it was run)."""
    variants: dict
    hit_rates: object
    eb_hits: dict = field(default_factory=dict)


def extra_runs(timm_foveal: str | None, contrastive: bool) -> list:
    """The rows added on each seed's stage-1 model: gpf with a timm foveal subnet, gpf on contrastive-EB shards."""
    from gpf.workflows.experiment import ExtraRun

    runs = []
    if timm_foveal:
        runs.append(ExtraRun(timm_row(timm_foveal), "gpf", backbone=timm_foveal))
    if contrastive:
        runs.append(ExtraRun(CONTRASTIVE_ROW, "gpf", preprocess={"contrastive": True}))
    return runs


def timm_row(name: str) -> str:
    return f"gpf + {name} foveal"


def run_one(mode: Mode, task: str, seed: int, variants, work: Path, device: str, threads: int | None,
            echo, extras=()) -> SeedResult:
    """Dataset, stage 1, preprocess, stage 2 for ``variants`` and ``extras``, evaluation."""
    from gpf.workflows.experiment import ExperimentConfig, SyntheticSpec, run_extra, run_synthetic_experiment

    folder = work / f"{task}-seed{seed}"
    spec = SyntheticSpec(n_images=mode.n_images, seed=seed, width=mode.width, height=mode.height,
                         view_size=mode.view_size, task=task)
    backbone = mode.backbone if mode.min_input is None else declared_backbone(mode.backbone, mode.min_input)
    fit = {"view_fit": mode.view_fit}
    cfg = ExperimentConfig(root=str(folder / "data"), out=str(folder), backbone=backbone, weights="none",
                           view_size=mode.view_size, variants=tuple(variants), seed=seed, device=device,
                           threads=threads, random_crops=mode.random_crops, stage1={**mode.stage1, **fit},
                           stage2={**mode.stage2, **fit}, plots=False, attention_picture=False, progress=False)
    experiment = run_synthetic_experiment(spec, cfg, echo=echo, data_workers=mode.data_workers)
    seed_result = SeedResult(dict(experiment.variants), experiment.hit_rates, {"plain": experiment.hit_rates})
    for extra in extras:
        done = run_extra(cfg, experiment, extra, echo=echo)
        seed_result.variants[extra.name] = done.result
        if extra.preprocess.get("contrastive"):
            seed_result.eb_hits["contrastive"] = done.hit_rates
    return seed_result


def declared_backbone(name: str, min_input: int) -> str:
    """Register ``{name}_min{min_input}``: backbone ``name`` declared with the minimum input side ``min_input``,
    so gpf fits every view whose short side is below it (``--view-fit``), as it does for a real backbone
    with that minimum (VGG16, ResNet-18: 32; AlexNet: 63) at a fraction of the compute."""
    from gpf.model.backbones import create_backbone, get_spec, register_backbone

    spec = get_spec(name)
    declared = f"{name}_min{min_input}"
    register_backbone(declared, lambda: create_backbone(name).features, channels=spec.channels, stride=spec.stride,
                      min_input=max(min_input, spec.stride), default_eb_layer=spec.default_eb_layer,
                      gif_hidden=spec.gif_hidden, mean=spec.mean, std=spec.std, replace=True,
                      description=f"{name} declared with minimum input {min_input} (benchmarks/fine_detail.py)")
    return declared


def run_benchmark(mode: Mode, seeds, tasks, variants, work: Path, device: str = "auto",
                  threads: int | None = 1, echo=print, extras=()) -> dict:
    """``{(task, seed): SeedResult}`` for every task and seed, in that order."""
    results = {}
    for task in tasks:
        for seed in seeds:
            started = time.perf_counter()
            echo(f"[fine_detail] task {task}, seed {seed}")
            results[(task, seed)] = run_one(mode, task, seed, variants, work, device, threads, echo, extras)
            echo(f"[fine_detail] task {task}, seed {seed}: {time.perf_counter() - started:.0f} s")
    return results


# ----------------------------------------------------------------------------- summary

def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for a single value) of the finite values."""
    values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def row_order(name: str) -> int:
    """Table I order for the variants; the extra rows after them (a stable sort keeps theirs)."""
    return VARIANTS.index(name) if name in VARIANTS else len(VARIANTS)


def eb_values(result, form: str) -> dict | None:
    """Pointing game and the gpf - single gap of one seed for the EB ``form`` (None if not run)."""
    hits = getattr(result, "eb_hits", None) or {"plain": result.hit_rates}
    rates, row = hits.get(form), EB_ROWS[form]
    if rates is None and row not in result.variants:
        return None
    values = {"hit": None if rates is None else rates.hit, "random": None if rates is None else rates.random}
    if row in result.variants and "single" in result.variants:
        gpf, single = result.variants[row].metrics, result.variants["single"].metrics
        values.update(gpf_acc=gpf["accuracy"], gpf_srcc=gpf["srcc"],
                      gap_acc=gpf["accuracy"] - single["accuracy"], gap_srcc=gpf["srcc"] - single["srcc"])
    return values


def summarise(results: dict) -> dict:
    """Per task: per row ``{metric: (mean, std)}``, the hit rates ``(mean, std)``, the seeds,
    ``per_seed`` rows ``(seed, {row: (accuracy, srcc)}, hit, random)`` and ``eb``: per EB form
    (plain, contrastive) the pointing game and the gpf - single gap, ``(mean, std)`` each, and per seed."""
    summary: dict = {}
    for (task, seed), result in results.items():
        entry = summary.setdefault(task, {"seeds": [], "variants": {}, "hit": [], "random": [], "n": set(),
                                          "per_seed": [], "eb": {}})
        entry["seeds"].append(seed)
        for name, variant in result.variants.items():
            per = entry["variants"].setdefault(name, {m: [] for m in METRICS})
            for metric in METRICS:
                per[metric].append(variant.metrics[metric])
            entry["n"].add(variant.n)
        rates = result.hit_rates
        if rates is not None:
            entry["hit"].append(rates.hit)
            entry["random"].append(rates.random)
        entry["per_seed"].append((seed, {name: (v.metrics["accuracy"], v.metrics["srcc"])
                                         for name, v in result.variants.items()},
                                  None if rates is None else rates.hit, None if rates is None else rates.random))
        for form in EB_ROWS:
            values = eb_values(result, form)
            if values is not None:
                entry["eb"].setdefault(form, []).append({"seed": seed, **values})
    for entry in summary.values():
        entry["variants"] = {name: {m: mean_std(values) for m, values in per.items()}
                             for name, per in sorted(entry["variants"].items(), key=lambda kv: row_order(kv[0]))}
        entry["hit"], entry["random"] = mean_std(entry["hit"]), mean_std(entry["random"])
        entry["n"] = sorted(entry["n"])
        entry["eb"] = {form: {"per_seed": rows, **{key: mean_std(r.get(key) for r in rows) for key in EB_KEYS}}
                       for form, rows in entry["eb"].items()}
    return summary


def per_seed_table(entry: dict) -> list[str]:
    """Accuracy % / SRCC of every variant and the hit rates, one row per seed."""
    names = list(entry["variants"])
    lines = ["| seed | " + " | ".join(f"{n} acc % / SRCC" for n in names) + " | hit % | random-box % |",
             "| ---: | " + " | ".join("---:" for _ in names) + " | ---: | ---: |"]
    for seed, values, hit, chance in entry["per_seed"]:
        cells = [f"{100 * values[n][0]:.1f} / {values[n][1]:.3f}" if n in values else "n/a" for n in names]
        rates = [f"{100 * r:.1f}" if r is not None else "n/a" for r in (hit, chance)]
        lines.append(f"| {seed} | " + " | ".join(cells + rates) + " |")
    return lines


def cell(metric: str, stats: tuple[float, float]) -> str:
    mean, std = stats
    if not math.isfinite(mean):
        return "n/a"
    if metric == "accuracy":
        return f"{100 * mean:.2f} ± {100 * std:.2f}"
    return f"{mean:.4f} ± {std:.4f}"


def task_table(entry: dict) -> list[str]:
    lines = ["| variant | " + " | ".join(TITLES[m] for m in METRICS) + " |",
             "| --- | " + " | ".join("---:" for _ in METRICS) + " |"]
    for name, stats in entry["variants"].items():
        lines.append(f"| {name} | " + " | ".join(cell(m, stats[m]) for m in METRICS) + " |")
    return lines


def hit_line(entry: dict) -> str:
    hit, chance = entry["hit"], entry["random"]
    if not math.isfinite(hit[0]):
        return "Hit rate: not measured."
    return (f"Pointing game (attention boxes covering >= 50 % of the carrier and resolving the plaid): "
            f"**{100 * hit[0]:.1f} ± {100 * hit[1]:.1f} %**; random boxes of the same sizes: "
            f"**{100 * chance[0]:.1f} ± {100 * chance[1]:.1f} %**.")


def eb_table(entry: dict) -> list[str]:
    """Plain vs contrastive EB: pointing game, the gpf row and its gap to ``single``; mean ± std, then per seed."""
    if not entry["eb"]:
        return []
    kinds = {"hit": "accuracy", "random": "accuracy", "gpf_acc": "accuracy", "gpf_srcc": "srcc",
             "gap_acc": "accuracy", "gap_srcc": "srcc"}
    lines = ["| EB | row | pointing game % | random boxes % | gpf accuracy % | gpf SRCC | gpf − single accuracy "
             "(points) | gpf − single SRCC |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for form, stats in entry["eb"].items():
        lines.append(f"| {form} | {EB_ROWS[form]} | " + " | ".join(cell(kinds[k], stats[k]) for k in EB_KEYS) + " |")
    lines += ["", "| EB | seed | " + " | ".join(["hit %", "random-box %", "gpf acc %", "gpf SRCC",
                                                "gap acc (points)", "gap SRCC"]) + " |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for form, stats in entry["eb"].items():
        for row in stats["per_seed"]:
            cells = [("n/a" if row.get(k) is None else
                      f"{100 * row[k]:.1f}" if kinds[k] == "accuracy" else f"{row[k]:.3f}") for k in EB_KEYS]
            lines.append(f"| {form} | {row['seed']} | " + " | ".join(cells) + " |")
    return lines


def stored_members(variants, random_crops: int) -> str:
    """What the shards hold besides the two views, for the variants run (", warped photo, ...")."""
    from gpf.vocabulary import get_variant

    chosen = [get_variant(v) for v in variants]
    parts = [text for needed, text in ((any(v.needs_warped for v in chosen), "warped photo"),
                                       (any(v.needs_original for v in chosen), "original-resolution photo"),
                                       (any(v.needs_random_crops for v in chosen), f"{random_crops} random crops"))
             if needed]
    return "".join(f", {p}" for p in parts)


def resolved_device(device: str) -> str:
    """``auto`` spelled out as the device it picks."""
    if device != "auto":
        return device
    import torch

    return f"auto = {'cuda' if torch.cuda.is_available() else 'cpu'}"


def markdown(summary: dict, mode: Mode, command: str, seconds: float, device: str, variants,
             timm_foveal: str | None = None) -> str:
    lines = ["# Benchmark: fine-detail evidence (attention crops vs a single low-resolution column)", "",
             f"Command (from the repository root): `{command}`", "",
             f"Machine: {machine_line()}; device {resolved_device(device)}; load average before/after below; "
             f"wall time {seconds / 60:.1f} min.", "",
             f"Mode **{mode.name}**: {mode.n_images} synthetic {mode.width}x{mode.height} photos per task and seed "
             f"(`gpf.workflows.synthetic`, 20 % test), {mode.view_size} px views, backbone `{mode.backbone}`"
             + (f" declared with minimum input {mode.min_input}" if mode.min_input else "")
             + f" from scratch, views below its minimum input fitted by `{mode.view_fit}`; stage 1 -> preprocess "
             f"(EB, tau = 0.7{stored_members(variants, mode.random_crops)}) -> stage 2 ({', '.join(variants)}) "
             "-> test split. "
             "Cells: mean ± sample std over the seeds."
             + (f" Row `{timm_row(timm_foveal)}`: gpf with `{timm_foveal}` (random init: ImageNet weights cannot "
                f"be downloaded here) as the foveal subnet and the `{mode.backbone}` stage-1 network as the "
                "peripheral, trained on the same shards." if timm_foveal else "")
             + (f" Row `{CONTRASTIVE_ROW}`: gpf on shards made again from the same stage-1 model with "
                "contrastive EB (only gpf is trained on them; `single` does not read the crop)."
                if any("contrastive" in e["eb"] for e in summary.values()) else ""), ""]
    for task, entry in summary.items():
        seeds = ", ".join(str(s) for s in entry["seeds"])
        lines += [f"## Task `{task}` (seeds {seeds}; {'/'.join(str(n) for n in entry['n'])} test images each)",
                  "", *task_table(entry), "", hit_line(entry), "", "Per seed:", "", *per_seed_table(entry), ""]
        if entry["eb"]:
            lines += [f"### EB: plain vs contrastive (task `{task}`)", "", *eb_table(entry), ""]
    lines += ["`detail`: the plaid (visible only in a foveal crop on the carrier) moves the score by 2 points, "
              "the carrier colour by up to 3; `control`: same images, the plaid replaced by a hidden bit "
              "nobody can see, so the variants should tie. `single` is the backbone fine-tuned on the photo "
              "warped to a view-size square (Table I's VGG16 as the paper ran it); `random` adds a column "
              "fine-tuned on a fresh view-size patch of the original-resolution photo at a random place "
              "each time a sample is seen (Table I's Random-VGG16; fixed seeded patches at test time): the "
              "plaid only when one lands on the carrier. See docs/synthetic.md and docs/demo.md.", ""]
    return "\n".join(lines)


def to_json(summary: dict) -> dict:
    def plain(stats):
        return [None if not math.isfinite(v) else v for v in stats]

    return {task: {"seeds": e["seeds"], "n": e["n"], "hit": plain(e["hit"]), "random": plain(e["random"]),
                   "variants": {name: {m: plain(s) for m, s in stats.items()} for name, stats in e["variants"].items()},
                   "per_seed": [{"seed": seed, "hit": hit, "random": chance,
                                 "variants": {n: {"accuracy": a, "srcc": r} for n, (a, r) in values.items()}}
                                for seed, values, hit, chance in e["per_seed"]],
                   "eb": {form: {**{k: plain(stats[k]) for k in EB_KEYS}, "per_seed": stats["per_seed"]}
                          for form, stats in e["eb"].items()}}
            for task, e in summary.items()}


# ----------------------------------------------------------------------------- command line

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CPU mode (448x336, 96 px views, tiny).")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--seeds", default="0,1,2", help="Comma-separated dataset/training seeds (default 0,1,2).")
    parser.add_argument("--tasks", default=",".join(TASKS), help="Comma-separated: detail, control.")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help=f"Comma-separated stage-2 variants among {', '.join(VARIANTS)} "
                             f"(default {','.join(DEFAULT_VARIANTS)}).")
    parser.add_argument("--timm-foveal", default=DEFAULT_TIMM_FOVEAL,
                        help="Extra row: gpf with this foveal backbone (random init) on the same shards; "
                             f"'none' leaves it out (default {DEFAULT_TIMM_FOVEAL}).")
    parser.add_argument("--no-contrastive", dest="contrastive", action="store_false",
                        help="Leave out the contrastive-EB comparison (shards made again with contrastive EB, "
                             "gpf trained on them).")
    parser.add_argument("--images", type=int, default=None, help="Images per dataset (default: the mode's).")
    parser.add_argument("--epochs", type=int, default=None,
                        help="Epochs of both stages (default: the mode's); lr steps at 2/3.")
    parser.add_argument("--threads", type=int, default=None,
                        help="Torch CPU threads (default: 1 in quick mode, torch's own otherwise).")
    parser.add_argument("--work", type=Path, default=None,
                        help="Keep datasets and runs here (default: a temporary folder, deleted at the end). "
                             "Rerunning with the same folder resumes.")
    parser.add_argument("--size", default=None, help="Photo size WxH (default: the mode's).")
    parser.add_argument("--backbone", default=None, help="Backbone of both stages (default: the mode's).")
    parser.add_argument("--min-input", type=int, default=None,
                        help="Declare the backbone with this minimum input side, so views below it are fitted.")
    parser.add_argument("--view-fit", choices=VIEW_FITS, default=VIEW_FIT,
                        help="How views below the backbone's minimum input are fitted to it.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Markdown section to write.")
    parser.add_argument("--json", type=Path, default=None, help="Also write the summary as JSON.")
    args = parser.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    args.timm_foveal = None if args.timm_foveal.strip().lower() in ("", "none") else args.timm_foveal.strip()
    bad = [t for t in args.tasks if t not in TASKS] + [v for v in args.variants if v not in VARIANTS]
    if bad or not args.seeds or not args.tasks or not args.variants:
        parser.error(f"tasks must be among {', '.join(TASKS)} and variants among {', '.join(VARIANTS)}, "
                     f"with at least one seed; got {bad or 'an empty list'}")
    return args


def chosen_mode(args) -> Mode:
    mode = QUICK if args.quick else FULL
    if args.images is not None:
        mode = replace(mode, n_images=args.images)
    if args.size is not None:
        width, height = (int(v) for v in args.size.lower().split("x"))
        mode = replace(mode, width=width, height=height)
    if args.backbone is not None:
        mode = replace(mode, backbone=args.backbone)
    mode = replace(mode, view_fit=args.view_fit, min_input=args.min_input)
    if args.epochs is not None:
        step = max(1, round(2 * args.epochs / 3))
        mode = replace(mode, stage1={**mode.stage1, "epochs": args.epochs, "lr_step": step},
                       stage2={**mode.stage2, "epochs": args.epochs, "lr_step": step})
    return mode


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    mode = chosen_mode(args)
    threads = args.threads if args.threads is not None else (1 if args.quick else None)
    command = " ".join(["python benchmarks/fine_detail.py", *(sys.argv[1:] if argv is None else argv)])
    work = args.work or Path(tempfile.mkdtemp(prefix="gpf-fine-detail-"))
    load_before = load_average()
    started = time.perf_counter()
    try:
        results = run_benchmark(mode, args.seeds, args.tasks, args.variants, work, args.device, threads,
                                echo=lambda line: print(line, file=sys.stderr, flush=True),
                                extras=extra_runs(args.timm_foveal, args.contrastive))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - started
    summary = summarise(results)
    text = markdown(summary, mode, command, seconds, args.device, args.variants, args.timm_foveal)
    text += f"Load average (1, 5, 15 min): before {load_before}; after {load_average()}.\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    if args.json is not None:
        args.json.write_text(json.dumps(to_json(summary), indent=2) + "\n")
    print(text)
    print(f"[fine_detail] section written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
