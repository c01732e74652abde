"""GPU benchmark: stage-2 step throughput, loader, data-wait and the stage-1 pass on one GPU.

    bash benchmarks/gpu.sh [OUT_DIR]                        # on the GPU machine: install, then this
    python benchmarks/gpu_bench.py --out OUT_DIR            # the same, gpf already importable
    python benchmarks/gpu_bench.py --device cpu --tiny --out /tmp/gpu-dry   # CPU dry run, every path

Sized to finish in under 5 minutes on one GPU with 16 cores (``--budget-s``
stops starting new stages once it is spent). It makes its own data: photo-like
640 x 480 JPEGs (quality 90, the generator of ``bench_preprocess_cpu.py``) and
a ``folder`` label CSV. Stages, in order, each written to ``OUT/results.json``
and ``OUT/results.md`` as soon as it ends (a crash or a kill keeps what was
done; a failed stage is recorded with its error and the others go on):

1. ``env``: versions, GPU, cores.
2. ``step``: stage-2 training steps of ``GPFNet(vgg16, 'gpf')`` (peripheral
   frozen, paper IV-B; EMD loss r = 2; SGD) on synthetic uint8 batches already
   on the GPU: the pure model-step throughput, with AMP (bf16) and
   channels_last as the trainer runs on CUDA, against fp32 NCHW in the same run
   (and bf16 NCHW, and bf16 channels_last with ``cudnn.benchmark``).
3. ``data``: the JPEGs and labels.
4. ``preprocess``: ``run_preprocess`` with a randomly initialised stage-1
   ``PeripheralNet(vgg16)`` checkpoint on the GPU and one decode thread per
   core: images/s, against in the same stage the attention step alone (EB +
   crop search on decoded views), the CPU part alone and the bare decode, both
   with as many threads. Its shards feed the next stages.
5. ``fed``: the same training step fed by ``make_loader`` from those shards
   (workers = cores - 2, pinned memory): samples/s after the first batches of
   each epoch and the data-wait fraction (share of wall time blocked on the
   loader), against the ``step`` figure.
6. ``loader``: ``make_loader`` alone with 1, 2, 4, ... up to the machine's
   cores worker processes: samples/s and per worker.
7. ``trainer``: ``train_stage2`` itself (the real loop, 2 epochs) when
   PyYAML is importable (it writes ``config.yaml``): samples/s and data-wait
   of its last epoch.

Uses nothing newer than torch 2.4 (the machine has 2.11).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import fmt_range, machine_line, stats_of  # noqa: E402
from bench_preprocess import make_photo_dataset, preprocess_config, timed_preprocess  # noqa: E402

NUM_CLASSES = 10
PHOTO = (640, 480)


@dataclass(frozen=True)
class Sizes:
    backbone: str = "vgg16"
    view: int = 224
    photo: tuple[int, int] = PHOTO
    images: int = 4096          # originals (train: 90 %)
    unique: int = 256           # distinct renders; the rest are byte copies
    batch: int = 64
    per_shard: int = 64
    warmup_steps: int = 10
    steps: int = 30             # timed steps per repeat
    repeat: int = 3
    baseline_steps: int = 10    # fp32 and other comparison settings
    baseline_repeat: int = 2
    fed_epochs: int = 2
    skip_batches: int = 5       # per epoch, before the steady-state timer starts
    loader_batches: int = 40
    baseline_images: int = 1024  # decode / CPU-part / attention baselines
    head: int | None = None     # branch and fusion FC widths (None: the paper's 2048 / 4096)


TINY = Sizes(backbone="tiny", view=64, photo=(160, 120), images=48, unique=6, batch=4, per_shard=8,
             warmup_steps=1, steps=2, repeat=2, baseline_steps=1, baseline_repeat=1, fed_epochs=1,
             skip_batches=1, loader_batches=3, baseline_images=8, head=64)


# ----------------------------------------------------------------------------- results

class Results:
    """Stage results, saved to ``results.json`` and ``results.md`` after every stage."""

    def __init__(self, out: Path, header: dict):
        self.out = out
        self.data = {"header": header, "stages": {}}
        out.mkdir(parents=True, exist_ok=True)
        self.save()

    def record(self, name: str, payload: dict) -> None:
        self.data["stages"][name] = {"status": "ok", **payload}
        self.save()

    def fail(self, name: str, error: str, status: str = "failed") -> None:
        self.data["stages"][name] = {"status": status, "error": error}
        self.save()

    def save(self) -> None:
        for name, text in (("results.json", json.dumps(self.data, indent=1, default=str)),
                           ("results.md", render(self.data))):
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(text)
            os.replace(tmp, self.out / name)


def render(data: dict) -> str:
    """Markdown of the results so far: one table per stage."""
    header = data["header"]
    lines = ["# GPU benchmark", "", f"Command: `{header['command']}`  ",
             f"Machine: {header['machine']}  ", f"Sizes: {header['sizes']}", ""]
    for name, stage in data["stages"].items():
        lines += [f"## {name}", ""]
        if stage["status"] != "ok":
            lines += [f"**{stage['status']}**: {stage['error']}", ""]
            continue
        table = stage.get("table")
        if table:
            lines.append("| " + " | ".join(table[0]) + " |")
            lines.append("| " + " | ".join("---" for _ in table[0]) + " |")
            lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in table[1:]]
            lines.append("")
        lines += [str(note) for note in stage.get("notes", [])] + ([""] if stage.get("notes") else [])
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- helpers

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def elapsed(device: torch.device, fn) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


class StepRunner:
    """One stage-2 training step as ``Stage2Task.train_loss`` + ``Trainer._train_epoch`` do it."""

    def __init__(self, backbone: str, device: torch.device, amp: bool, channels_last: bool,
                 head: int | None = None):
        from gpf.model.gpf import GPFNet
        from gpf.train.loop import resolve_amp
        from gpf.train.schedule import make_optimizer

        torch.manual_seed(0)
        widths = {"branch_width": head, "fusion_width": head} if head else {}
        self.model = GPFNet(backbone, "gpf", NUM_CLASSES, weights="none", **widths)
        self.model.freeze_peripheral().to(device)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.model.train()
        self.device, self.channels_last = device, channels_last
        self.amp = resolve_amp(amp, device)
        self.optimizer = make_optimizer(self.model.parameters(), 0.01, 0.9, 0.0)

    def __call__(self, periph: torch.Tensor, fovea: torch.Tensor, votes: torch.Tensor) -> torch.Tensor:
        from gpf.model.losses import emd_loss
        from gpf.train.loop import images_to_device

        model, device = self.model, self.device
        with self.amp.autocast():
            p = images_to_device(periph, device, model.normalize, self.channels_last)
            f = images_to_device(fovea, device, model.normalize, self.channels_last)
            logits = model(periph=p, fovea=f)
            votes = votes.to(device, non_blocking=True)
            target = votes / votes.sum(dim=1, keepdim=True)
            loss = emd_loss(torch.softmax(logits.float(), dim=1), target, r=2, validate=False)
        self.optimizer.zero_grad(set_to_none=True)
        self.amp.backward_step(loss, self.optimizer)
        return loss.detach()


def periph_shape(sizes: Sizes) -> tuple[int, int]:
    """(H, W) of the peripheral view of a ``sizes.photo`` original."""
    from gpf.model.backbones import get_spec
    from gpf.model.geometry import ViewGeometry, fitted_size

    width, height = ViewGeometry(sizes.view).size(*sizes.photo)       # stored view, then fitted to the backbone
    width, height = fitted_size(width, height, get_spec(sizes.backbone).min_input)
    return height, width


def rate_cell(stats: dict, digits: int = 0) -> str:
    return fmt_range(stats, digits=digits)


# ----------------------------------------------------------------------------- stages

class Bench:
    """Shared state of one benchmark run: sizes, device, scratch folder, results."""

    def __init__(self, args, sizes: Sizes, device: torch.device, results: Results, scratch: Path):
        self.args, self.sizes, self.device, self.results = args, sizes, device, results
        self.scratch = scratch
        self.cores = os.cpu_count() or 1
        self.amp = args.amp if args.amp is not None else device.type == "cuda"
        self.pinned = "pinned memory, " if device.type == "cuda" else ""
        self.dataset = None                      # set by the data stage
        self.shards: Path | None = None          # set by the preprocess stage
        self.step_rate: float | None = None      # set by the step stage

    @property
    def amp_label(self) -> str:
        """'bfloat16' / 'float16' / 'off', as the trainer's ``resolve_amp`` decides."""
        from gpf.train.loop import resolve_amp

        return resolve_amp(self.amp, self.device).label

    # 1
    def env(self) -> dict:
        import numpy
        import torchvision

        from gpf._version import __version__
        from gpf.env_info import pil_flavour

        facts = {"gpf": __version__, "python": platform.python_version(), "torch": torch.__version__,
                 "torchvision": torchvision.__version__, "numpy": numpy.__version__,
                 "pil": pil_flavour(), "cores": self.cores, "device": str(self.device),
                 "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
        try:
            import numba
            facts["numba"] = numba.__version__
        except ImportError:
            facts["numba"] = None
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(self.device)
            facts.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
                         capability=f"{props.major}.{props.minor}", bf16=torch.cuda.is_bf16_supported())
        table = [["fact", "value"]] + [[k, v] for k, v in facts.items()]
        return {"facts": facts, "table": table}

    # 2
    def step(self) -> dict:
        s, device = self.sizes, self.device
        height, width = periph_shape(s)
        g = torch.Generator(device=device).manual_seed(0)
        periph = torch.randint(0, 256, (s.batch, 3, height, width), dtype=torch.uint8, device=device, generator=g)
        fovea = torch.randint(0, 256, (s.batch, 3, s.view, s.view), dtype=torch.uint8, device=device, generator=g)
        votes = torch.rand(s.batch, NUM_CLASSES, device=device, generator=g) + 0.01
        amp_label = f"AMP {self.amp_label}"
        settings = [(f"{amp_label}, channels_last (as the trainer on CUDA)", self.amp, True, False, s.steps,
                     s.repeat),
                    ("fp32, NCHW (baseline)", False, False, False, s.baseline_steps, s.baseline_repeat)]
        if self.amp:
            settings.append((f"{amp_label}, NCHW", True, False, False, s.baseline_steps, s.baseline_repeat))
        if device.type == "cuda":
            settings.append((f"{amp_label}, channels_last, cudnn.benchmark", self.amp, True, True,
                             s.baseline_steps, s.baseline_repeat))
        rates = {}
        for label, amp, channels_last, cudnn_benchmark, steps, repeat in settings:
            previous, runner = torch.backends.cudnn.benchmark, None
            torch.backends.cudnn.benchmark = cudnn_benchmark
            try:
                runner = StepRunner(s.backbone, device, amp, channels_last, s.head)

                def run(n):
                    for _ in range(n):
                        runner(periph, fovea, votes)
                run(s.warmup_steps)
                rates[label] = stats_of(s.batch * steps / elapsed(device, lambda: run(steps))
                                        for _ in range(repeat))
            finally:
                torch.backends.cudnn.benchmark = previous
                runner = None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        labels = list(rates)
        main, base = rates[labels[0]], rates[labels[1]]["median"]
        self.step_rate = main["median"]
        table = [["setting", "samples/s", "vs fp32 NCHW"]]
        table += [[label, rate_cell(r), f"{r['median'] / base:.2f}×"] for label, r in rates.items()]
        notes = [f"`GPFNet({s.backbone!r}, 'gpf')`, head widths {s.head or '2048/4096 (paper)'}, peripheral "
                 f"frozen, batch {s.batch}, periph {height}x{width} + fovea {s.view}x{s.view} uint8 already on "
                 f"the device, normalised in the step; {s.warmup_steps} warm-up steps, then median (min–max) "
                 "of blocks of timed steps."]
        return {"rates": rates, "table": table, "notes": notes}

    # 3
    def data(self) -> dict:
        s = self.sizes
        start = time.perf_counter()
        self.dataset = make_photo_dataset(self.scratch / "photos", s.images, unique=s.unique,
                                          processes=min(self.cores, s.unique), size=s.photo)
        seconds = time.perf_counter() - start
        return {"seconds": seconds, "table": [["images", "distinct", "mean KB", "seconds"],
                                              [s.images, s.unique, f"{self.dataset.mean_kb:.0f}",
                                               f"{seconds:.1f}"]]}

    def _stage1_checkpoint(self) -> Path:
        from gpf.model.checkpoint import save_checkpoint, stage1_checkpoint
        from gpf.model.gpf import PeripheralNet

        torch.manual_seed(0)
        model = PeripheralNet(self.sizes.backbone, num_classes=2, weights="none")
        payload = stage1_checkpoint(model, view_size=self.sizes.view, threshold=5.5,
                                 scores=[float(k) for k in range(1, NUM_CLASSES + 1)])
        path = self.scratch / "stage1.pt"
        save_checkpoint(path, payload)
        return path

    # 4
    def preprocess(self) -> dict:
        s, device = self.sizes, self.device
        stage1 = str(self._stage1_checkpoint())

        def config(out: Path, limit=None):
            cfg = preprocess_config(self.dataset, out, None, 0, s.batch, samples_per_shard=s.per_shard,
                                    device=device.type, view_size=s.view, stage1=stage1)
            cfg.limit = limit
            return cfg
        timed_preprocess(config(self.scratch / "warmup", limit=2 * s.batch))   # CUDA, cuDNN, numba
        seconds = [timed_preprocess(config(self.scratch / "shards"))]
        if not self.args.tiny:
            seconds.append(timed_preprocess(config(self.scratch / "shards-again")))
        self.shards = self.scratch / "shards"
        n = s.images
        whole = stats_of(n / t for t in seconds)
        base = self._preprocess_baselines(config(self.scratch / "unused"))
        table = [["path", "images/s", "vs whole preprocess"],
                 [f"whole `run_preprocess` ({self.cores} threads + {device.type})", rate_cell(whole), "1.00×"]]
        table += [[label, rate_cell(r), f"{r['median'] / whole['median']:.2f}×"] for label, r in base.items()]
        notes = [f"{n} images {s.photo[0]}x{s.photo[1]} (stage-1 `PeripheralNet({s.backbone!r})`, random "
                 f"weights), view {s.view}, batch {s.batch}, {s.per_shard} samples/shard, workers = one "
                 f"thread per core ({self.cores}); median (min–max) of {len(seconds)} run(s) after a warm-up run on "
                 f"{2 * s.batch} images per split."]
        return {"whole": whole, "baselines": base, "table": table, "notes": notes}

    def _preprocess_baselines(self, cfg) -> dict:
        """Attention alone (device), CPU part alone and bare decode (all cores), images/s."""
        from PIL import Image

        from bench_preprocess_cpu import fovea_box
        from gpf.pipeline.attend import attend_views
        from gpf.pipeline.images import encode_jpeg, foveal_view, load_image, peripheral_view
        from gpf.model.device import resolve_device
        from gpf.pipeline.preprocess import load_attention_model
        from gpf.vocabulary import VIEW_ROUND

        s, device = self.sizes, self.device
        paths = list(self.dataset.paths[:s.baseline_images])
        att = load_attention_model(cfg, resolve_device(cfg.device))

        def decode(path):
            with Image.open(path) as im:
                im.load()

        def cpu_part(path):
            img = load_image(path)
            periph = peripheral_view(img, s.view, stride=VIEW_ROUND)
            fovea = foveal_view(img, fovea_box(img.size, 0), s.view)
            return periph, encode_jpeg(periph, 95), encode_jpeg(fovea, 95)

        with ThreadPoolExecutor(self.cores) as pool:
            list(pool.map(decode, paths))                               # page cache
            decode_s = [elapsed(device, lambda: list(pool.map(decode, paths))) for _ in range(2)]
            cpu_s = [elapsed(device, lambda: list(pool.map(cpu_part, paths))) for _ in range(2)]
            views = [r[0] for r in pool.map(cpu_part, paths[:4 * s.batch])]
        sizes = [s.photo] * len(views)

        def attention():
            for start in range(0, len(views), s.batch):
                attend_views(att, views[start:start + s.batch], sizes[start:start + s.batch])
        attention()                                                    # warm-up
        att_s = [elapsed(device, attention) for _ in range(2)]
        return {f"attention step alone (EB + crop search, {device.type})": stats_of(len(views) / t for t in att_s),
                f"CPU part alone ({self.cores} threads)": stats_of(len(paths) / t for t in cpu_s),
                f"bare decode ({self.cores} threads)": stats_of(len(paths) / t for t in decode_s)}

    def _loader(self, workers: int, batch: int):
        from gpf.shards.reader import make_loader

        return make_loader(self.shards, "train", batch, num_workers=workers, shuffle=True,
                           pin_memory=self.device.type == "cuda", members=("periph", "fovea"))

    def _train_shards(self) -> int:
        from gpf.shards.reader import list_shards

        return sum(1 for spec in list_shards(self.shards, "train") if spec.count > 0)

    # 5
    def fed(self) -> dict:
        from gpf.train.runlog import DataWaitTimer

        s, device = self.sizes, self.device
        workers = max(1, min(self.cores - 2, self._train_shards()))
        runner = StepRunner(s.backbone, device, self.amp, channels_last=True, head=s.head)
        loader = self._loader(workers, s.batch)
        steady, waits, whole = [], [], []
        for epoch in range(s.fed_epochs + 1):         # epoch 0 warms up (cuDNN, allocator)
            loader.set_epoch(epoch)
            timer = DataWaitTimer()
            started, samples, total = time.perf_counter(), 0, 0
            for index, batch in enumerate(timer.iterate(loader)):
                if index == s.skip_batches:
                    synchronize(device)
                    timer.reset()
                    samples = 0
                runner(batch["periph"], batch["fovea"], batch["votes"])
                samples += len(batch["votes"])
                total += len(batch["votes"])
            synchronize(device)
            if epoch:
                steady.append(samples / timer.elapsed_s)
                waits.append(timer.fraction)
                whole.append(total / (time.perf_counter() - started))
        rate, wait, epoch_rate = stats_of(steady), stats_of(waits), stats_of(whole)
        vs = f"{rate['median'] / self.step_rate:.2f}×" if self.step_rate else "n/a"
        table = [["figure", "value"],
                 ["samples/s, steady state", rate_cell(rate)],
                 ["data-wait (share of wall time)", f"{fmt_range(wait, 100, digits=0)} %"],
                 ["samples/s, whole epoch incl. worker start-up", rate_cell(epoch_rate)],
                 ["vs synthetic step (`step` stage)", vs]]
        notes = [f"{workers} loader worker processes, {self.pinned}batch {s.batch}, AMP "
                 f"{self.amp_label}, channels_last; {s.fed_epochs} timed epoch(s) after a "
                 f"warm-up epoch; steady state = after the first {s.skip_batches} batches of each epoch."]
        return {"workers": workers, "steady": rate, "data_wait": wait, "epoch": epoch_rate, "table": table,
                "notes": notes}

    # 6
    def loader(self) -> dict:
        s = self.sizes
        shards = self._train_shards()
        counts = sorted({w for w in (1, 2, 4, 8, 12, self.cores) if w <= min(self.cores, shards)})
        table = [["workers", "samples/s", "per worker"]]
        rates = {}
        for workers in counts:
            loader = self._loader(workers, s.batch)
            iterator = iter(loader)
            next(iterator)                              # workers started, first batch out
            start, samples = time.perf_counter(), 0
            for index, batch in enumerate(iterator):
                samples += len(batch["votes"])
                if index + 2 >= s.loader_batches:
                    break
            seconds = time.perf_counter() - start
            del iterator
            rates[workers] = samples / seconds
            table.append([workers, f"{rates[workers]:.0f}", f"{rates[workers] / workers:.0f}"])
        notes = [f"`make_loader` training mode, periph + fovea, batch {s.batch}, "
                 f"{self.pinned}up to {s.loader_batches} "
                 "batches after the first one; one pass each."]
        return {"rates": rates, "table": table, "notes": notes}

    # 7
    def trainer(self) -> dict:
        try:
            import yaml  # noqa: F401
        except ImportError:
            raise Skipped("PyYAML is not importable (train_stage2 writes config.yaml); "
                          "carry a PyYAML wheel in .whl/ to run this stage") from None
        from gpf.train.config import Stage2Config
        from gpf.train.stage2 import train_stage2

        s = self.sizes
        workers = max(1, min(self.cores - 2, self._train_shards()))
        cfg = Stage2Config(out=str(self.scratch / "stage2"), shards=str(self.shards), backbone=s.backbone,
                           weights="none", variant="gpf", epochs=2, batch_size=s.batch, workers=workers,
                           device=self.device.type, amp=self.amp, progress=False, tensorboard=False,
                           **({"branch_width": s.head, "fusion_width": s.head} if s.head else {}))
        result = train_stage2(cfg)
        rows = result.history
        table = [["epoch", "samples/s", "data-wait", "epoch seconds (incl. validation, checkpoint)"]]
        table += [[r["epoch"], f"{r['samples_per_s']:.0f}", f"{100 * r['data_wait']:.0f} %",
                   f"{r['epoch_s']:.1f}"] for r in rows]
        notes = [f"`train_stage2` gpf variant, {workers} workers, batch {s.batch}, AMP "
                 f"{self.amp_label}, head widths {s.head or '2048/4096 (paper)'}."]
        return {"history": rows, "table": table, "notes": notes}


class Skipped(Exception):
    """A stage that cannot run here; the message says why."""


STAGES = ("env", "step", "data", "preprocess", "fed", "loader", "trainer")
NEEDS = {"preprocess": "data", "fed": "preprocess", "loader": "preprocess", "trainer": "preprocess"}


def run_stages(bench: Bench, stages, budget_s: float) -> None:
    started = time.perf_counter()
    results = bench.results
    for name in stages:
        need = NEEDS.get(name)
        if need and results.data["stages"].get(need, {}).get("status") != "ok":
            results.fail(name, f"needs stage {need!r}, which did not complete", "skipped")
            continue
        spent = time.perf_counter() - started
        if spent > budget_s:
            results.fail(name, f"time budget of {budget_s:.0f} s spent ({spent:.0f} s)", "skipped")
            continue
        print(f"[gpu_bench] {name} ...", flush=True)
        stage_start = time.perf_counter()
        try:
            payload = getattr(bench, name)()
            payload["seconds"] = round(time.perf_counter() - stage_start, 1)
            results.record(name, payload)
        except Skipped as exc:
            results.fail(name, str(exc), "skipped")
        except Exception as exc:  # a benchmark stage failing must not lose the others
            tail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-3:])
            results.fail(name, f"{type(exc).__name__}: {exc}\n\n```\n{tail}```")
        print(f"[gpu_bench] {name}: {results.data['stages'][name]['status']} "
              f"({time.perf_counter() - stage_start:.1f} s)", flush=True)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu_bench_out"),
                        help="folder for results.json / results.md (default: $OUT, else ./gpu_bench_out)")
    parser.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu (default %(default)s)")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny backbone and sizes: a quick dry run of every code path (e.g. on CPU)")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES),
                        help="stages to run, in this order (default: all)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="AMP (bf16 where supported) in the step stages (default: on for CUDA)")
    parser.add_argument("--images", type=int, help="originals to generate (default 4096; tiny 48)")
    parser.add_argument("--budget-s", type=float, default=270.0,
                        help="start no new stage after this many seconds (default %(default)s)")
    parser.add_argument("--scratch", type=Path, default=None, help="work folder (default: a temporary one)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available here; use --device cpu (with --tiny)")
    sizes = TINY if args.tiny else Sizes()
    if args.images:
        sizes = replace(sizes, images=args.images, unique=min(sizes.unique, args.images))
    if device.type == "cpu":
        torch.set_num_threads(1)
    command = "python benchmarks/gpu_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = {"command": command.strip(), "machine": machine_line(), "sizes": asdict(sizes)}
    results = Results(args.out, header)
    with tempfile.TemporaryDirectory(prefix="gpf-gpu-bench-", dir=args.scratch) as tmp:
        bench = Bench(args, sizes, device, results, Path(tmp))
        run_stages(bench, [s for s in STAGES if s in args.stages], args.budget_s)
    failed = [n for n, st in results.data["stages"].items() if st["status"] == "failed"]
    print(render(results.data))
    print(f"[gpu_bench] results in {args.out}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
