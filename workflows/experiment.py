"""One whole GPF-CNN comparison on a dataset folder: stage 1 -> preprocess -> stage 2 variants -> evaluate.

The paper's pipeline (sections III-IV) end to end, as ``gpf demo`` and
``benchmarks/fine_detail.py`` run it::

    from .experiment import ExperimentConfig, run_experiment

    result = run_experiment(ExperimentConfig(root="data/synth", out="runs/exp",
                                             variants=("single", "gpf")))
    print("\\n".join(result.table_lines()))

Steps and the folders they write under ``out``:

1. ``stage1/``: the peripheral subnet trained as a high/low classifier
   (:func:`gpf.train.train_stage1`);
2. ``shards/``: EB attention, tau box and foveal crop of every image
   (:func:`gpf.pipeline.preprocess.run_preprocess`), with random crops when
   the ``random`` variant is asked for and the pooled peripheral descriptors;
3. ``stage2/{variant}/``: each variant trained on the same shards
   (:func:`gpf.train.train_stage2`);
   :func:`run_extra` adds runs on the same stage-1 model under ``extra/{name}/``
   (another foveal backbone, or shards made again with other attention
   settings such as contrastive EB);
4. the evaluation split scored with :func:`gpf.pipeline.evaluation.evaluate_checkpoint`
   (the paper's Table I metrics); ``plots/{variant}/`` (best/worst
   distributions, mean-score scatter, EMD histogram), ``attention.png`` (paper
   Fig. 4 for one test image) and ``results.json``.

When the dataset is a synthetic fine-detail set (``synthetic_truth.csv`` in its
root, :mod:`gpf.workflows.synthetic`) the crop boxes are also scored with the
pointing game: the share of boxes that cover the planted carrier, next to the
share for boxes of the same sizes placed at random.

Rerunning with the same configuration **resumes**: a finished step is kept, an
interrupted training run continues from its ``last.pt``, preprocessing skips
its finished shards, and evaluation (cheap) is redone. A step that had to
compute anything makes the later steps start afresh (new attention means new
shards; new shards mean new stage-2 runs). A different configuration in the
same ``out`` is refused unless ``fresh=True``, which deletes the folders this
module wrote there (and nothing else).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping

from ..errors import GPFError
from ..vocabulary import TAU, VARIANT_NAMES

EXPERIMENT_FILE = "experiment.json"
RESULTS_FILE = "results.json"
STAGE1_DIR = "stage1"
SHARDS_DIR = "shards"
STAGE2_DIR = "stage2"
PLOTS_DIR = "plots"
EXTRA_DIR = "extra"
ATTENTION_FILE = "attention.png"
OWNED = (STAGE1_DIR, SHARDS_DIR, STAGE2_DIR, PLOTS_DIR, EXTRA_DIR, ATTENTION_FILE, RESULTS_FILE, EXPERIMENT_FILE)
VARIANT_ORDER = VARIANT_NAMES
#: The variant whose checkpoint draws the attention picture, in order of preference.
ATTENTION_PREFERENCE = ("gpf", "pf", "random", "single")

# Training settings for small backbones trained from scratch on a few hundred images
# (CPU minutes). They differ from the paper's (lr 0.01 / 10 epochs, batch 64, early
# stopping after a 10-epoch plateau; section IV-B) where small data needs it: a larger lr
# stepped down once at 2/3 of a short fixed run (best.pt still follows the validation
# loss), weight decay in stage 1 (it sharpens the EB maps).
DEFAULT_STAGE1 = {"epochs": 25, "lr": 0.05, "lr_step": 17, "weight_decay": 5e-3, "batch_size": 32,
                  "patience": 0}
DEFAULT_STAGE2 = {"epochs": 30, "lr": 0.1, "lr_step": 20, "batch_size": 32, "patience": 0,
                  "branch_width": 64, "fusion_width": 64, "dropout": 0.0}
# The paper's attention: EB of the predicted class, tau = TAU (Eq. 4), the backbone's EB layer.
DEFAULT_PREPROCESS = {"tau": TAU, "eb_layer": None, "contrastive": False, "samples_per_shard": 200,
                      "batch_size": 32, "jpeg_quality": 95}
STAGE1_CHECKPOINTS = ("last", "best")
# Keys of the sub-configs that the experiment sets itself.
_FIXED_STAGE_KEYS = {"out", "resume", "root", "dataset", "dataset_options", "backbone", "weights",
                     "view_size", "seed", "device", "progress", "shards", "variant", "stage1"}
_FIXED_PREPROCESS_KEYS = {"dataset", "root", "out", "stage1", "backbone", "weights", "view_size", "seed",
                          "device", "progress", "dataset_options", "overwrite", "store_features", "split"}


class ExperimentError(GPFError):
    """An experiment that cannot run as configured; the message says what to do."""


@dataclass
class ExperimentConfig:
    """What to run. ``stage1`` / ``stage2`` / ``preprocess`` override the module defaults.

    ``stage1`` and ``stage2`` take :class:`gpf.train.Stage1Config` /
    :class:`gpf.train.Stage2Config` keys (e.g. ``{"epochs": 10, "lr": 0.02}``),
    ``preprocess`` takes :class:`gpf.pipeline.preprocess.PreprocessConfig` keys
    (``tau``, ``eb_layer``, ``contrastive``, ``random_crops``, ...). Keys the
    experiment sets itself (paths, backbone, view size, seed, device) are refused
    there.

    ``stage1_checkpoint='last'`` makes the attention model the stage-1 network at
    the end of its (fixed, stepped-down) schedule; ``'best'`` takes the epoch of
    lowest validation loss, the usual choice for a classifier. On a few hundred
    photos that epoch is often a noisy high-lr one whose EB map spreads over the
    background, so the tau box covers most of the photo (pointing game measured
    in docs/demo.md).
    """
    root: str                                   # dataset folder (AVA layout, or see ``dataset``)
    out: str                                    # experiment folder
    dataset: str = "ava"                        # ava | photonet | folder (gpf.pipeline.sources)
    dataset_options: dict = field(default_factory=lambda: {"val_size": 0.15})
    backbone: str = "tiny"
    weights: str = "none"                       # initial weights of both stages: none | imagenet | PATH
    view_size: int = 96
    variants: tuple[str, ...] = ("single", "gpf")
    seed: int = 0                               # training seeds and random-crop positions
    device: str = "auto"
    eval_split: str = "test"
    random_crops: int = 2                       # stored per image when 'random' is a variant
    stage1_checkpoint: str = "last"             # attention model: end of the schedule | best val loss
    stage1: dict = field(default_factory=dict)
    stage2: dict = field(default_factory=dict)
    preprocess: dict = field(default_factory=dict)
    plots: bool = True                          # evaluation figures per variant
    attention_picture: bool = True              # attention.png of one evaluation image
    threads: int | None = None                  # torch CPU threads while running (None: leave as is)
    progress: bool = True                       # progress lines of the steps (stderr)

    def identity(self) -> dict:
        """The settings that decide the results (not where or how fast they are computed)."""
        data = dataclasses.asdict(self)
        for key in ("out", "device", "threads", "progress", "plots", "attention_picture"):
            data.pop(key)
        data["root"] = str(Path(self.root).resolve())
        data["variants"] = list(self.variants)
        return data


@dataclass
class VariantResult:
    """One stage-2 variant: its run and its metrics on the evaluation split."""
    variant: str
    run_dir: Path
    checkpoint: Path
    n: int
    metrics: dict                               # accuracy (fraction) srcc lcc mae rmse emd
    epochs: int
    best_epoch: int | None
    plots: list[Path] = field(default_factory=list)


@dataclass
class HitRates:
    """Pointing game on the crop boxes of the evaluation split (synthetic datasets only)."""
    hit: float                                  # share of boxes covering >= min_cover of the carrier
    random: float                               # the same for boxes of those sizes placed at random
    n: int
    min_cover: float
    max_side: float | None                      # larger boxes count as misses (fovea cannot resolve)
    median_side: float                          # median longer side of the boxes, original pixels


@dataclass
class ExperimentResult:
    out: Path
    split: str
    variants: dict[str, VariantResult]
    hit_rates: HitRates | None
    stage1_checkpoint: Path
    shards: Path
    attention_png: Path | None
    seconds: dict[str, float]
    notes: list[str] = field(default_factory=list)

    def table_lines(self) -> list[str]:
        """The comparison: the paper's Table I columns per variant, then the pointing game."""
        from ..pipeline.evaluation import format_table

        rows = [(name, r.n, r.metrics) for name, r in self.variants.items()]
        lines = format_table(rows, first="variant")
        if self.hit_rates is not None:
            lines.append("")
            lines += hit_rate_lines(self.hit_rates)
        return lines

    def to_json(self) -> dict:
        def number(v):
            return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v

        return {
            "out": str(self.out), "split": self.split,
            "variants": {name: {"n": r.n, "metrics": {k: number(v) for k, v in r.metrics.items()},
                                "run_dir": str(r.run_dir), "checkpoint": str(r.checkpoint),
                                "epochs": r.epochs, "best_epoch": r.best_epoch,
                                "plots": [str(p) for p in r.plots]}
                         for name, r in self.variants.items()},
            "hit_rates": None if self.hit_rates is None else dataclasses.asdict(self.hit_rates),
            "stage1_checkpoint": str(self.stage1_checkpoint), "shards": str(self.shards),
            "attention_png": None if self.attention_png is None else str(self.attention_png),
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
            "notes": list(self.notes),
        }


def hit_rate_lines(rates: HitRates) -> list[str]:
    limit = "" if rates.max_side is None else f", boxes over {rates.max_side:g} px count as misses"
    return [f"crop boxes on the detail carrier (pointing game, {rates.n} images, cover >= "
            f"{rates.min_cover:.0%}{limit}):",
            f"  attention boxes {100 * rates.hit:5.1f} %   random boxes of the same sizes "
            f"{100 * rates.random:5.1f} %   (median box side {rates.median_side:g} px)"]


# ----------------------------------------------------------------------------- helpers

def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` torch CPU threads, restoring the previous count afterwards."""
    import torch

    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _merged(defaults: Mapping, overrides: Mapping, fixed: set[str], what: str) -> dict:
    given = sorted(set(overrides) & fixed)
    if given:
        raise ExperimentError(f"{what} settings {', '.join(given)} are set by the experiment itself "
                              f"(use the ExperimentConfig fields instead); remove them from {what}")
    return {**defaults, **overrides}


def check_config(cfg: ExperimentConfig) -> None:
    """Refuse unknown variants and sub-config keys before anything is written."""
    from ..train.config import VARIANTS, Stage1Config, Stage2Config, check_keys

    unknown = [v for v in cfg.variants if v not in VARIANTS]
    if unknown or not cfg.variants:
        raise ExperimentError(f"variants must be a non-empty selection of {', '.join(VARIANT_ORDER)}; "
                              f"got {list(cfg.variants)}")
    if len(set(cfg.variants)) != len(cfg.variants):
        raise ExperimentError(f"variants repeat a name: {list(cfg.variants)}")
    if cfg.stage1_checkpoint not in STAGE1_CHECKPOINTS:
        raise ExperimentError(f"stage1_checkpoint must be one of {', '.join(STAGE1_CHECKPOINTS)}; "
                              f"got {cfg.stage1_checkpoint!r}")
    if cfg.eval_split not in ("train", "val", "test"):
        raise ExperimentError(f"eval_split must be one of train, val, test; got {cfg.eval_split!r}")
    if "random-frozen" in cfg.variants and (not isinstance(cfg.random_crops, int) or cfg.random_crops < 1):
        raise ExperimentError(f"the 'random-frozen' variant needs random_crops >= 1, got {cfg.random_crops!r}")
    try:
        check_keys(cfg.stage1, Stage1Config, "stage1 settings")
        check_keys(cfg.stage2, Stage2Config, "stage2 settings")
    except GPFError as exc:
        raise ExperimentError(str(exc)) from None
    _merged(DEFAULT_STAGE1, cfg.stage1, _FIXED_STAGE_KEYS, "stage1")
    _merged(DEFAULT_STAGE2, cfg.stage2, _FIXED_STAGE_KEYS, "stage2")
    from ..pipeline.preprocess import PreprocessConfig

    allowed = {f.name for f in dataclasses.fields(PreprocessConfig)} - _FIXED_PREPROCESS_KEYS
    bad = sorted(set(cfg.preprocess) - allowed)
    if bad:
        raise ExperimentError(f"preprocess settings: unknown or fixed key(s) {', '.join(bad)}; allowed: "
                              f"{', '.join(sorted(allowed))}")
    _merged(DEFAULT_PREPROCESS, cfg.preprocess, _FIXED_PREPROCESS_KEYS, "preprocess")


def prepare_out(cfg: ExperimentConfig, fresh: bool = False) -> Path:
    """Create ``out`` (or check it holds this experiment); ``fresh`` deletes what an earlier one wrote."""
    from ..shards.manifest import recorded_differences

    out = Path(cfg.out)
    marker = out / EXPERIMENT_FILE
    current = cfg.identity()
    differences = recorded_differences(marker, current)
    if differences is not None:
        if fresh:
            remove_experiment_outputs(out)
        elif differences:
            diff = "; ".join(differences[:6])
            raise ExperimentError(f"{out} holds another experiment ({diff}). Choose another output folder, "
                                  "or start afresh there (gpf demo --fresh / fresh=True deletes what the "
                                  "earlier run wrote)")
    elif out.exists() and any(out.iterdir()):
        clashes = [name for name in OWNED if (out / name).exists()]
        if clashes:
            raise ExperimentError(f"{out} is not empty and was not made by an experiment (it has "
                                  f"{', '.join(clashes)} but no {EXPERIMENT_FILE}); choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")
    return out


def remove_experiment_outputs(out: Path) -> None:
    """Delete the folders and files :func:`run_experiment` writes in ``out`` (only those)."""
    for name in OWNED:
        path = Path(out) / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


# ----------------------------------------------------------------------------- the steps

def _train(stage: str, config_cls, values: dict, run_dir: Path, restart: bool, echo, prefer: str = "best"):
    """Train (or resume, or find finished) the run in ``run_dir``.

    Returns (RunResult, the ``prefer``red checkpoint file, whether anything was trained).
    """
    from ..train import build_config, train_stage1, train_stage2
    from ..train.loop import LAST

    if restart and run_dir.exists():
        shutil.rmtree(run_dir)
    if (run_dir / LAST).exists():
        values = dict(values, resume=str(run_dir), out=None)
        echo(f"  {run_dir} holds a run: continuing it from its last.pt")
    else:
        values = dict(values, out=str(run_dir))
    cfg = build_config(config_cls, overrides=values)
    result = (train_stage1 if stage == "stage1" else train_stage2)(cfg)
    order = (result.last_checkpoint, result.best_checkpoint) if prefer == "last" else \
        (result.best_checkpoint, result.last_checkpoint)
    checkpoint = order[0] or order[1]
    if checkpoint is None:
        raise ExperimentError(f"{stage} in {run_dir} ended without a checkpoint ({result.stopped})")
    return result, checkpoint, result.stopped != "nothing_to_do"


def _stage1_values(cfg: ExperimentConfig) -> dict:
    values = _merged(DEFAULT_STAGE1, cfg.stage1, _FIXED_STAGE_KEYS, "stage1")
    values.setdefault("workers", 0)
    values.setdefault("tensorboard", False)
    return dict(values, dataset=cfg.dataset, root=str(cfg.root), dataset_options=dict(cfg.dataset_options),
                backbone=cfg.backbone, weights=cfg.weights, view_size=cfg.view_size, seed=cfg.seed,
                device=cfg.device, progress=cfg.progress)


def _stage2_values(cfg: ExperimentConfig, variant: str, shards: Path, stage1: Path) -> dict:
    values = _merged(DEFAULT_STAGE2, cfg.stage2, _FIXED_STAGE_KEYS, "stage2")
    values.setdefault("workers", 0)
    values.setdefault("tensorboard", False)
    return dict(values, shards=str(shards), stage1=str(stage1), variant=variant, backbone=cfg.backbone,
                weights=cfg.weights, seed=cfg.seed, device=cfg.device, progress=cfg.progress)


def _preprocess(cfg: ExperimentConfig, stage1: Path, shards: Path, overwrite: bool):
    from ..pipeline.preprocess import PreprocessConfig, run_preprocess

    values = _merged(DEFAULT_PREPROCESS, cfg.preprocess, _FIXED_PREPROCESS_KEYS, "preprocess")
    from ..vocabulary import get_variant

    variants = [get_variant(v) for v in cfg.variants]
    values.setdefault("random_crops", cfg.random_crops if any(v.needs_random_crops for v in variants) else 0)
    values.setdefault("store_warped", any(v.needs_warped for v in variants))
    values.setdefault("store_original", any(v.needs_original for v in variants))
    values.setdefault("workers", 0)             # decode threads: one per core
    pcfg = PreprocessConfig(dataset=cfg.dataset, root=str(cfg.root), out=str(shards), stage1=str(stage1),
                            view_size=cfg.view_size, seed=cfg.seed, device=cfg.device, progress=cfg.progress,
                            dataset_options=dict(cfg.dataset_options), overwrite=overwrite,
                            store_features=True, split="all", **values)
    return run_preprocess(pcfg)


def crop_hit_rates(shards: str | Path, dataset_root: str | Path, split: str = "test", *,
                   view_size: int | None = None, min_cover: float = 0.5, seed: int = 0) -> HitRates | None:
    """Pointing game of the shards' crop boxes against a synthetic dataset's carriers.

    Boxes come from the shards' Parquet metadata (``x0 y0 x1 y1``, original
    pixels) of ``split``. A box whose longer side exceeds ``period * view_size / 2``
    (the largest crop whose foveal view still resolves the plaid; ``view_size``
    defaults to the dataset's fovea size) is a miss. Returns None when
    ``dataset_root`` holds no ``synthetic_truth.csv``.
    """
    import pyarrow.parquet as pq

    from .synthetic import INFO_FILE, TRUTH_FILE, hit_rate, random_box_hit_rate, read_truth

    root = Path(dataset_root)
    if not (root / TRUTH_FILE).exists():
        return None
    truth = read_truth(root)
    table = pq.read_table(Path(shards) / "meta", columns=["id", "split", "status", "x0", "y0", "x1", "y1"])
    rows = [r for r in table.to_pylist() if r["split"] == split and r["status"] == "ok" and r["id"] in truth]
    if not rows:
        raise ExperimentError(f"the shards in {shards} hold no usable {split!r} image of the synthetic "
                              f"dataset in {root}; preprocess that dataset")
    boxes = {r["id"]: (r["x0"], r["y0"], r["x1"], r["y1"]) for r in rows}
    sizes = {i: (b[2] - b[0], b[3] - b[1]) for i, b in boxes.items()}
    max_side = None
    info_path = root / INFO_FILE
    if info_path.exists():
        geometry = json.loads(info_path.read_text()).get("geometry", {})
        if "period" in geometry:
            fovea = view_size or geometry.get("fovea_size")
            max_side = geometry["period"] * fovea / 2 if fovea else None
    sides = [max(w, h) for w, h in sizes.values()]
    return HitRates(hit=hit_rate(boxes, truth, min_cover=min_cover, max_side=max_side),
                    random=random_box_hit_rate(sizes, truth, seed, min_cover=min_cover, max_side=max_side),
                    n=len(boxes), min_cover=min_cover, max_side=max_side,
                    median_side=float(statistics.median(sides)))


def attention_example(shards: str | Path, split: str, dataset_root: str | Path | None = None) -> tuple[str, str] | None:
    """(id, image path) of the image ``gpf demo`` draws: the smallest usable id of ``split``.

    On a synthetic fine-detail dataset the first image whose carrier holds the
    plaid is taken (chosen from the ground truth, not from the result), so the
    picture shows what the foveal crop is for. None when no image file exists.
    """
    import pyarrow.parquet as pq

    table = pq.read_table(Path(shards) / "meta", columns=["id", "split", "path", "status"])
    paths = {r["id"]: r["path"] for r in table.to_pylist()
             if r["split"] == split and r["status"] == "ok" and r["path"] and Path(r["path"]).is_file()}
    ids = sorted(paths, key=lambda i: (len(i), i))
    if dataset_root is not None:
        from .synthetic import TRUTH_FILE, read_truth

        if (Path(dataset_root) / TRUTH_FILE).exists():
            truth = read_truth(dataset_root)
            ids = sorted(ids, key=lambda i: not (i in truth and truth[i].detail))
    return (ids[0], paths[ids[0]]) if ids else None


def _attention_picture(checkpoint: Path, image: str, path: Path, device: str) -> Path:
    from ..pipeline.plots import save_attention_figure
    from ..pipeline.scoring import explain_photo

    explanation = explain_photo(checkpoint, image, device)
    return save_attention_figure(explanation.view, path, explanation.title(Path(image).stem), explanation.tau,
                                 variant=explanation.variant, crop_boxes=explanation.crop_boxes)


# ----------------------------------------------------------------------------- extra runs

@dataclass(frozen=True)
class ExtraRun:
    """One more stage-2 run on a finished experiment's stage-1 model (:func:`run_extra`).

    ``backbone``: the foveal subnet (None: the experiment's; the peripheral stays
    the stage-1 network). ``preprocess``: settings over the experiment's
    ``preprocess`` (e.g. ``{"contrastive": True}``); when given, the same stage-1
    model's attention is computed again into ``extra/{name}/shards``, otherwise
    the run reads the experiment's shards.
    """
    name: str
    variant: str = "gpf"
    backbone: str | None = None
    preprocess: dict = field(default_factory=dict)

    @property
    def folder(self) -> str:
        """``name`` as a folder name: runs of other characters become ``-``."""
        return re.sub(r"[^A-Za-z0-9_.]+", "-", self.name).strip("-") or "extra"


@dataclass
class ExtraResult:
    run: ExtraRun
    result: VariantResult
    shards: Path
    hit_rates: HitRates | None                  # pointing game of ``shards`` (synthetic datasets only)


def _older(path: Path, than: Path) -> bool:
    return not path.exists() or path.stat().st_mtime < than.stat().st_mtime


def run_extra(cfg: ExperimentConfig, experiment: ExperimentResult, extra: ExtraRun, *,
              echo: Callable[[str], None] = _stderr) -> ExtraResult:
    """Train and evaluate ``extra`` after :func:`run_experiment` ``cfg`` returned ``experiment``.

    Resumes like the experiment: shards older than the stage-1 checkpoint are made
    again, a stage-2 run older than its shards starts afresh.
    """
    from ..pipeline.evaluation import evaluate_checkpoint
    from ..shards.layout import MANIFEST_NAME
    from ..train import Stage2Config
    from ..train.loop import LAST

    variant_cfg = dataclasses.replace(cfg, variants=(extra.variant,),
                                      preprocess={**cfg.preprocess, **extra.preprocess})
    check_config(variant_cfg)
    folder = Path(experiment.out) / EXTRA_DIR / extra.folder
    shards, hit_rates = experiment.shards, experiment.hit_rates
    with torch_threads(cfg.threads):
        if extra.preprocess:
            shards = folder / SHARDS_DIR
            echo(f"\n== [extra {extra.name}] preprocess with {extra.preprocess} -> {shards}")
            stale = _older(shards / MANIFEST_NAME, experiment.stage1_checkpoint)
            for line in _preprocess(variant_cfg, experiment.stage1_checkpoint, shards, overwrite=stale).lines():
                echo(f"  {line}")
            hit_rates = crop_hit_rates(shards, cfg.root, cfg.eval_split, view_size=cfg.view_size, seed=cfg.seed)
            if hit_rates is not None:
                for line in hit_rate_lines(hit_rates):
                    echo(f"  {line.strip()}")
        run_dir = folder / STAGE2_DIR
        echo(f"\n== [extra {extra.name}] stage 2: variant {extra.variant!r} ({extra.backbone or cfg.backbone})")
        values = _stage2_values(cfg, extra.variant, shards, experiment.stage1_checkpoint)
        if extra.backbone is not None:
            values.update(backbone=extra.backbone, peripheral_backbone=cfg.backbone)
        restart = _older(run_dir / LAST, shards / MANIFEST_NAME)
        run, checkpoint, _ = _train("stage2", Stage2Config, values, run_dir, restart=restart, echo=echo)
        evaluation = evaluate_checkpoint(checkpoint, shards, cfg.eval_split, workers=0, device=cfg.device,
                                         progress=cfg.progress)
    result = VariantResult(extra.variant, run.run_dir, checkpoint, evaluation.n, dict(evaluation.metrics),
                           run.epochs_completed, run.best_epoch)
    m = result.metrics
    echo(f"  {extra.name}: {cfg.eval_split} accuracy {100 * m['accuracy']:.2f} %, SRCC {m['srcc']:.4f}, "
         f"EMD {m['emd']:.4f} ({evaluation.n} images)")
    return ExtraResult(extra, result, shards, hit_rates)


# ----------------------------------------------------------------------------- synthetic data

@dataclass(frozen=True)
class SyntheticSpec:
    """A synthetic fine-detail dataset (:func:`gpf.workflows.synthetic.make_ava_dataset`).

    ``detail_weight``, ``coarse_weight``, ``layout_weight`` and ``noise_std`` are the
    :class:`~gpf.workflows.synthetic.ScoreModel` weights: how much the plaid (seen
    only by a foveal crop on the carrier), the carrier's colour (seen by the
    peripheral view: what teaches stage 1 to look at the carrier) and the light
    direction move the mean score.
    """
    n_images: int
    seed: int = 0
    width: int = 448
    height: int = 336
    view_size: int = 96
    task: str = "detail"
    detail_weight: float = 2.0
    coarse_weight: float = 3.0
    layout_weight: float = 0.0
    noise_std: float = 0.25
    centre: float = 5.0

    def score_model(self):
        from .synthetic import ScoreModel

        return ScoreModel(detail_weight=self.detail_weight, coarse_weight=self.coarse_weight,
                          layout_weight=self.layout_weight, noise_std=self.noise_std, centre=self.centre)

    def expected_params(self) -> dict:
        """The parts of ``synthetic_info.json`` this spec decides."""
        from .synthetic import detail_geometry

        geometry = detail_geometry(self.width, self.height, self.view_size)
        return {"seed": self.seed, "task": self.task, "n_images": self.n_images,
                "geometry": dataclasses.asdict(geometry), "score_model": dataclasses.asdict(self.score_model())}


def ensure_synthetic_dataset(spec: SyntheticSpec, root: str | Path, echo: Callable[[str], None] = _stderr,
                             workers: int = 1) -> bool:
    """Write ``spec``'s dataset into ``root`` unless it is already there; True when it was written.

    A complete dataset (``AVA.txt`` present) made with the same parameters is
    kept; an interrupted one or one made with other parameters is rewritten
    (``make_ava_dataset`` only touches folders and files it wrote itself).
    """
    from .synthetic import INFO_FILE, make_ava_dataset

    root = Path(root)
    info = root / INFO_FILE
    if (root / "AVA.txt").exists() and info.exists():
        try:
            saved = json.loads(info.read_text())
        except ValueError:
            saved = {}
        expected = spec.expected_params()
        if all(saved.get(k) == v for k, v in expected.items()):
            echo(f"  dataset {root} already made ({spec.n_images} images, task {spec.task}, seed {spec.seed})")
            return False
    echo(f"  generating {spec.n_images} {spec.width}x{spec.height} images (task {spec.task}, seed "
         f"{spec.seed}) in {root}")
    made = make_ava_dataset(root, spec.n_images, seed=spec.seed, width=spec.width, height=spec.height,
                            view_size=spec.view_size, task=spec.task, score_model=spec.score_model(),
                            workers=workers, overwrite=info.exists())
    g = made.geometry
    echo(f"  done in {made.seconds:.1f} s: plaid period {g.period} px, carrier {g.box_min}-{g.box_max} px, "
         f"{100 * made.detail_share:.0f} % with the plaid, {100 * made.share_above_threshold:.0f} % above 5")
    return True


def run_synthetic_experiment(spec: SyntheticSpec, cfg: ExperimentConfig, *, fresh: bool = False,
                             echo: Callable[[str], None] = _stderr, data_workers: int = 1) -> ExperimentResult:
    """Make (or keep) the synthetic dataset ``spec`` in ``cfg.root``, then :func:`run_experiment`.

    The output folder is checked first, so a refused configuration changes nothing.
    ``data_workers``: processes rendering the photos (the bytes do not depend on it).
    """
    if spec.view_size != cfg.view_size:
        raise ExperimentError(f"the synthetic dataset is made for {spec.view_size} px views but the experiment "
                              f"uses {cfg.view_size} px: the plaid would not be sized for that view; use the "
                              "same view size")
    check_config(cfg)
    prepare_out(cfg, fresh)
    echo(f"\n== [0] dataset: synthetic fine-detail photos in the AVA format ({cfg.root})")
    ensure_synthetic_dataset(spec, cfg.root, echo=echo, workers=data_workers)
    return run_experiment(cfg, echo=echo)


# ----------------------------------------------------------------------------- the demo

DEMO_DATA_DIR = "data"


def demo_plan(out: str | Path, *, quick: bool = False, seed: int = 0, device: str = "auto",
              threads: int | None = 1) -> tuple[SyntheticSpec, ExperimentConfig]:
    """What ``gpf demo`` runs: a synthetic fine-detail set in ``out/data`` and single vs gpf on it.

    1,500 photos of 448x336, 96 px views (plaid period 4 px: gone in the
    peripheral view, 4-6 foveal pixels per period in a crop of the carrier's
    size), the ``tiny`` backbone from scratch with the module's default
    training settings. ``quick``: 1,000 photos and 20 stage-2 epochs; fewer
    photos leave the stage-1 attention too often diffuse (docs/demo.md).
    ``threads=1``: on a busy small CPU one torch thread is the fastest for a
    network this small (on idle cores more threads are faster; docs/demo.md).
    """
    out = Path(out)
    spec = SyntheticSpec(n_images=1000 if quick else 1500, seed=seed)
    cfg = ExperimentConfig(root=str(out / DEMO_DATA_DIR), out=str(out), backbone="tiny", weights="none",
                           view_size=spec.view_size, variants=("single-frozen", "gpf"), seed=seed, device=device,
                           threads=threads, stage2={"epochs": 20, "lr_step": 14} if quick else {})
    return spec, cfg


# ----------------------------------------------------------------------------- entry point

def run_experiment(cfg: ExperimentConfig, *, fresh: bool = False,
                   echo: Callable[[str], None] = _stderr) -> ExperimentResult:
    """Run (or resume) the experiment ``cfg``; ``echo`` receives the step headers and notes."""
    check_config(cfg)
    if not Path(cfg.root).exists():
        raise ExperimentError(f"dataset folder {cfg.root} does not exist")
    with torch_threads(cfg.threads):
        return _run(cfg, prepare_out(cfg, fresh), echo)


def _run(cfg: ExperimentConfig, out: Path, echo) -> ExperimentResult:
    from ..pipeline.evaluation import evaluate_checkpoint
    from ..train import Stage1Config, Stage2Config

    variants = [v for v in VARIANT_ORDER if v in cfg.variants]
    steps = 3 + len(variants)
    seconds: dict[str, float] = {}
    notes: list[str] = []

    def header(number: int, text: str) -> float:
        echo(f"\n== [{number}/{steps}] {text}")
        return time.perf_counter()

    started = header(1, f"stage 1: peripheral subnet ({cfg.backbone}) as a high/low classifier on "
                        f"{cfg.view_size}px views of {cfg.root}")
    stage1_run, stage1_ckpt, retrained = _train("stage1", Stage1Config, _stage1_values(cfg), out / STAGE1_DIR,
                                                restart=False, echo=echo, prefer=cfg.stage1_checkpoint)
    seconds["stage1"] = time.perf_counter() - started

    started = header(2, f"preprocess: EB attention, tau box, foveal crops -> {out / SHARDS_DIR}")
    summary = _preprocess(cfg, stage1_ckpt, out / SHARDS_DIR, overwrite=retrained)
    for line in summary.lines():
        echo(f"  {line}")
    seconds["preprocess"] = time.perf_counter() - started
    new_shards = retrained or summary.written_shards > 0
    hit_rates = crop_hit_rates(out / SHARDS_DIR, cfg.root, cfg.eval_split, view_size=cfg.view_size,
                               seed=cfg.seed)
    if hit_rates is not None:
        for line in hit_rate_lines(hit_rates):
            echo(f"  {line.strip()}")

    results: dict[str, VariantResult] = {}
    for number, variant in enumerate(variants, start=3):
        started = header(number, f"stage 2: variant {variant!r} ({cfg.backbone}) on the shards")
        run, checkpoint, _ = _train("stage2", Stage2Config, _stage2_values(cfg, variant, out / SHARDS_DIR,
                                                                            stage1_ckpt),
                                    out / STAGE2_DIR / variant, restart=new_shards, echo=echo)
        evaluation = evaluate_checkpoint(checkpoint, out / SHARDS_DIR, cfg.eval_split, workers=0,
                                         device=cfg.device, progress=cfg.progress)
        notes += [f"{variant}: {w}" for w in evaluation.warnings]
        result = VariantResult(variant, run.run_dir, checkpoint, evaluation.n, dict(evaluation.metrics),
                               run.epochs_completed, run.best_epoch)
        if cfg.plots:
            result.plots = _plots(evaluation, out / PLOTS_DIR / variant, notes)
        results[variant] = result
        m = result.metrics
        echo(f"  {variant}: {cfg.eval_split} accuracy {100 * m['accuracy']:.2f} %, SRCC {m['srcc']:.4f}, "
             f"EMD {m['emd']:.4f} ({evaluation.n} images)")
        seconds[f"stage2_{variant}"] = time.perf_counter() - started

    started = header(steps, "outputs: attention picture and results")
    attention_png = None
    if cfg.attention_picture:
        attention_png = _draw_attention(out, cfg, results, notes, echo)
    seconds["outputs"] = time.perf_counter() - started
    experiment = ExperimentResult(out=out, split=cfg.eval_split, variants=results, hit_rates=hit_rates,
                                  stage1_checkpoint=stage1_ckpt, shards=out / SHARDS_DIR,
                                  attention_png=attention_png, seconds=seconds, notes=notes)
    (out / RESULTS_FILE).write_text(json.dumps(experiment.to_json(), indent=2) + "\n")
    return experiment


def _plots(evaluation, folder: Path, notes: list[str]) -> list[Path]:
    from ..pipeline.plots import PlotError, write_evaluation_plots

    try:
        return write_evaluation_plots(evaluation, folder)
    except PlotError as exc:
        notes.append(f"no plots: {exc}")
        return []


def _draw_attention(out: Path, cfg: ExperimentConfig, results: Mapping[str, VariantResult],
                    notes: list[str], echo) -> Path | None:
    chosen = next(v for v in ATTENTION_PREFERENCE if v in results)
    picked = attention_example(out / SHARDS_DIR, cfg.eval_split, cfg.root)
    if picked is None:
        notes.append("no attention picture: no image file of the evaluation split was found")
        return None
    image_id, image = picked
    from ..pipeline.plots import PlotError

    try:
        path = _attention_picture(results[chosen].checkpoint, image, out / ATTENTION_FILE, cfg.device)
    except PlotError as exc:
        notes.append(f"no attention picture: {exc}")
        return None
    echo(f"  attention of image {image_id} under the {chosen} model: {path}")
    return path
