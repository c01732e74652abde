"""The stage-1 pass: decode once, attention, optimal crop, shards (docs/preprocess.md).

Per image: full-resolution decode (EXIF applied, RGB, pixel limit) -> peripheral
view (longest side = view size, short side rounded to 8: :class:`gpf.model.geometry.ViewGeometry`,
backbone-neutral) -> Excitation Backprop map on the peripheral view, fitted to
the attention network where it is below its minimum input (paper Eq. 2-3) ->
``best_box`` on the map laid onto the view (Eq. 4, tau = 0.7) -> box mapped to
original pixels (rounded outward) -> foveal view = that region of the original
resized to view size x view size. ``--store-features`` computes the pooled
peripheral descriptor from the JPEG-decoded peripheral view, what the trainer
and ``gpf evaluate`` decode. The view size (and the view fit) come from the
stage-1 checkpoint; another ``--view-size`` is refused.

Throughput design: decoding, resizing and JPEG encoding run in a thread pool
(PIL releases the GIL in its C loops, so threads scale and the full-resolution
image never has to be pickled between processes); the stage-1 network runs in
the main thread on the device, one batch of equal peripheral shape at a time;
the crop search runs batched in numba; finished shards are written by a writer
thread while the next shard is computed.

Determinism: images are assigned to shards by a seeded hash of their id,
batches are formed in a fixed order and never span shards, and the tar writer
fixes mtimes, so the same input, config and environment give byte-identical
shards. A shard is done once its stats file exists; a rerun skips done shards.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import json
import os
import shutil
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import vocabulary
from ..errors import GPFError
from ..fsutil import atomic_write_bytes
from ..model.checkpoint import resolve_checkpoint_path
from ..model.device import resolve_device
from .attend import AttentionModel, attend_views
from .progress import Progress

# Config keys that decide the bytes of the shards: a rerun with a different
# value for any of them must not mix outputs in one folder.
IDENTITY_KEYS = (
    "dataset", "root", "dataset_options", "stage1", "stage1_digest", "attention_digest", "backbone", "weights",
    "tau", "view_size", "eb_layer", "contrastive", "samples_per_shard", "split", "limit",
    "batch_size", "jpeg_quality", "random_crops", "store_features", "seed", "max_pixels",
    "view_round", "view_fit", "jpeg_subsampling",
)
#: The view settings a stage-1 checkpoint records and preprocess takes from it (another value is refused).
STAGE1_VIEW_KEYS = ("view_size", "view_round", "view_fit")


#: Label problems the summary shows as ``file:line: problem``; the rest are in meta/.
LABEL_PROBLEMS_SHOWN = 5
#: Parquet key-value metadata key: JSON list of {"column", "bucket", "score"} (folder CSV datasets).
SCORE_COLUMNS_KEY = "gpf_score_columns"


class PreprocessError(GPFError):
    """A preprocess run cannot start or go on; the message says what to do."""


class TooManyFailuresError(PreprocessError):
    """The run finished but lost more images than ``max_failure_rate`` allows (or all of them).

    Its shards are written and kept; ``summary`` is the run's :class:`Summary`.
    """

    def __init__(self, message: str, summary: "Summary"):
        super().__init__(message)
        self.summary = summary


@dataclass
class PreprocessConfig:
    dataset: str                      # ava | photonet | folder
    root: str                         # dataset root (folder: the CSV file)
    out: str
    stage1: str | None = None         # stage-1 checkpoint file or run folder
    backbone: str | None = None       # ImageNet attention path (no stage-1 model)
    weights: str = "imagenet"
    tau: float = vocabulary.TAU
    view_size: int | None = None      # None: the stage-1 checkpoint's, else vocabulary.VIEW_SIZE
    eb_layer: str | None = None
    contrastive: bool = False
    samples_per_shard: int = vocabulary.SAMPLES_PER_SHARD
    split: str = "all"
    limit: int | None = None
    workers: int = 0                  # decode/encode threads; 0 = one per core
    batch_size: int = vocabulary.PREPROCESS_BATCH_SIZE
    device: str = vocabulary.DEVICE
    jpeg_quality: int = vocabulary.JPEG_QUALITY
    random_crops: int = 0
    store_features: bool = False
    seed: int = vocabulary.SEED
    max_pixels: int = vocabulary.DEFAULT_MAX_PIXELS
    max_failure_rate: float = vocabulary.MAX_FAILURE_RATE
    overwrite: bool = False
    num_nodes: int | None = None      # None = from torchrun's WORLD_SIZE/RANK, else 1
    node_rank: int | None = None
    dataset_options: dict = field(default_factory=dict)
    stage1_digest: str | None = None  # filled in from the checkpoint
    attention_digest: str | None = None  # digest of the attention model's weights, filled in
    progress: bool = True
    # internal (no CLI option): the view rule and encoding, recorded in the manifest
    view_round: int | None = None     # None: the stage-1 checkpoint's, else vocabulary.VIEW_ROUND
    view_fit: str | None = None       # None: the stage-1 checkpoint's, else vocabulary.VIEW_FIT
    jpeg_subsampling: str = vocabulary.JPEG_CHROMA_SUBSAMPLING

    def identity(self) -> dict:
        data = dataclasses.asdict(self)
        return {k: data[k] for k in IDENTITY_KEYS}

    def geometry(self):
        """The stored peripheral view's rule (:class:`gpf.model.geometry.ViewGeometry`)."""
        from ..model.geometry import ViewGeometry

        return ViewGeometry(int(self.view_size), int(self.view_round), 1)


@dataclass
class Summary:
    counts: Counter
    written_shards: int
    skipped_shards: int
    total_shards: int
    zero_attention: int
    out: Path
    notes: list[str] = field(default_factory=list)   # the dataset's notes (absent test-list ids, ...)
    label_problems: list[str] = field(default_factory=list)  # the first few as 'file:line: problem'
    label_problem_count: int = 0                     # unusable label rows recorded in meta/

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def failures(self) -> int:
        return self.total - self.counts.get("ok", 0)

    def lines(self) -> list[str]:
        per_status = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
        return [
            f"images: {self.total} ({per_status})",
            f"shards: {self.written_shards} written, {self.skipped_shards} already done, "
            f"{self.total_shards} in this run's share",
            f"all-zero attention maps (whole image used): {self.zero_attention}",
            f"output: {self.out}",
        ] + self._problem_lines() + [f"note: {note}" for note in self.notes]

    def _problem_lines(self) -> list[str]:
        if not self.label_problem_count:
            return []
        shown = len(self.label_problems)
        where = f"the status and error columns of {self.out / 'meta'}"
        lines = [f"label rows unusable: {self.label_problem_count}"
                 + (f"; the first {shown}:" if shown < self.label_problem_count else ":")]
        lines += [f"  {line}" for line in self.label_problems]
        if shown < self.label_problem_count:
            lines.append(f"  ... and {self.label_problem_count - shown} more: all are in {where}")
        else:
            lines.append(f"  (also in {where})")
        return lines


@dataclass
class _Item:
    """One input image on its way through the pass."""
    image_id: str
    split: str
    record: Any | None = None         # sources.Record (None for label problems)
    status: str = "ok"
    error: str | None = None
    image: Any = None                 # full-resolution PIL image (released after finish)
    periph: Any = None                # peripheral view (PIL), before the JPEG encode: EB and the box use it
    periph_jpg: bytes | None = None   # its JPEG bytes, as stored
    periph_decoded: Any = None        # those bytes decoded (uint8 [3, H, W]), for --store-features
    box: tuple[int, int, int, int] | None = None   # x0, y0, x1, y1 in original pixels
    attn: np.ndarray | None = None    # float16 map at EB resolution
    attn_fraction: float | None = None
    feature: np.ndarray | None = None
    sample: dict | None = None
    source: str | None = None
    width: int | None = None
    height: int | None = None


# ----------------------------------------------------------------------------- setup

def resolve_world(cfg: PreprocessConfig) -> tuple[int, int]:
    """(rank, world size): explicit --num-nodes/--node-rank, else torchrun's env, else (0, 1)."""
    if cfg.num_nodes is not None:
        world, rank = int(cfg.num_nodes), int(cfg.node_rank or 0)
    else:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
    if world < 1 or not 0 <= rank < world:
        raise PreprocessError(f"node rank {rank} is outside 0..{world - 1} (--num-nodes {world})")
    return rank, world


def load_attention_model(cfg: PreprocessConfig, device) -> AttentionModel:
    """The network whose EB maps choose the crops: a stage-1 checkpoint or an ImageNet classifier."""
    from ..model import checkpoint as ckpt_mod

    if cfg.stage1 and cfg.backbone:
        raise PreprocessError("give either --stage1 (a trained peripheral subnet) or --backbone/--weights, not both")
    if cfg.stage1:
        path = resolve_checkpoint_path(cfg.stage1)
        ckpt = ckpt_mod.load_checkpoint(path, expect="stage1")
        take_view_settings(cfg, ckpt.view_geometry, path)
        model = ckpt_mod.model_from_checkpoint(ckpt)
        digest = ckpt.digest
        split_spec = ckpt.split_spec
        description = {"kind": "stage1", "path": str(path), "digest": digest, "backbone": model.spec.name}
        trained_scale = {"scores": list(ckpt.scores), "threshold": ckpt.threshold,
                         "score_columns": (ckpt.dataset or {}).get("score_columns")}
    elif cfg.backbone:
        from ..model.gpf import imagenet_classifier

        import torch

        take_view_settings(cfg, {}, None)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)  # --weights none: the same random network in every process
            model = imagenet_classifier(cfg.backbone, weights=cfg.weights)
        digest = ckpt_mod.state_dict_digest(model.state_dict())
        split_spec = trained_scale = None
        description = {"kind": "imagenet", "backbone": model.spec.name, "weights": cfg.weights,
                       "digest": digest}
    else:
        raise PreprocessError(
            "no attention model: pass --stage1 CKPT (from `gpf train stage1`) or "
            "--backbone NAME --weights imagenet|PATH")
    return AttentionModel.from_model(model, device=device, tau=cfg.tau, eb_layer=cfg.eb_layer,
                                     contrastive=cfg.contrastive, digest=digest,
                                     split_spec=split_spec, description=description,
                                     trained_scale=trained_scale, fit=cfg.view_fit)


def take_view_settings(cfg: PreprocessConfig, recorded: dict, stage1_path) -> None:
    """Fill ``cfg``'s unset view settings from what the stage-1 checkpoint at ``stage1_path`` recorded
    (:data:`STAGE1_VIEW_KEYS`; the defaults for an ImageNet classifier or a value not recorded), and refuse a
    given value that differs: the attention model would see views it was not trained on."""
    defaults = {"view_size": vocabulary.VIEW_SIZE, "view_round": vocabulary.VIEW_ROUND,
                "view_fit": vocabulary.VIEW_FIT}
    for key in STAGE1_VIEW_KEYS:
        given, trained = getattr(cfg, key), recorded.get(key)
        if given is None:
            setattr(cfg, key, trained if trained is not None else defaults[key])
        elif trained is not None and given != trained:
            option = vocabulary.cli_option(key) or key
            how = f"{option} {given}" if option.startswith("--") else f"{key}={given!r}"
            raise PreprocessError(
                f"{how} differs from the {key.replace('_', ' ')} {trained!r} the stage-1 model {stage1_path} was "
                f"trained with: its attention would look at views it never saw. Drop {option.split()[0]} "
                f"(preprocess takes {trained!r} from the checkpoint), or retrain stage 1 with {how}")


def load_inputs(cfg: PreprocessConfig, att: AttentionModel | None):
    """The dataset, with the split chosen; refuses a split spec the stage-1 model was not trained with,
    and a dataset of which not one image file of the chosen split exists (nothing is written then)."""
    from .sources import check_images_resolve, open_dataset

    dataset = open_dataset(cfg.dataset, cfg.root, strict=False, check_images=False, **cfg.dataset_options)
    if att is not None and att.split_spec is not None and att.split_spec != dataset.split_spec:
        diff = _dict_diff(att.split_spec, dataset.split_spec)
        raise PreprocessError(
            "the dataset's split differs from the one the stage-1 checkpoint was trained with "
            f"({diff}); a validation or test image may have trained the attention model. "
            "Use the same dataset options (e.g. --val-size/--split-seed) as `gpf train stage1`, or retrain stage 1.")
    if att is not None and att.trained_scale is not None:
        _refuse_other_scale(att.trained_scale, dataset)
    check_images_resolve(dataset, dataset.split(cfg.split))
    return dataset


def _columns_text(columns) -> str:
    return ",".join(str(c.get("column")) for c in columns) if columns else "none recorded"


def _refuse_other_scale(trained: dict, dataset) -> None:
    """The stage-1 model learned high/low on one score scale: preprocessing with another (other count columns,
    another threshold) would choose crops by an attention that means something else."""
    diffs = []
    if trained.get("scores") and len(trained["scores"]) != len(dataset.scores):
        diffs.append(f"score buckets: {len(trained['scores'])} -> {len(dataset.scores)}")
    elif trained.get("scores") and any(abs(a - float(b)) > 1e-9 for a, b in zip(trained["scores"], dataset.scores)):
        diffs.append(f"bucket scores: {trained['scores']} -> {[float(s) for s in dataset.scores]}")
    if trained.get("threshold") is not None and dataset.threshold is not None \
            and abs(float(trained["threshold"]) - float(dataset.threshold)) > 1e-9:
        diffs.append(f"threshold: {float(trained['threshold']):g} -> {float(dataset.threshold):g}")
    mine = getattr(dataset, "score_columns", None)
    if trained.get("score_columns") and mine and trained["score_columns"] != mine:
        diffs.append(f"score columns: {_columns_text(trained['score_columns'])} -> {_columns_text(mine)}")
    if diffs:
        raise PreprocessError(
            f"the dataset's score scale differs from the one the stage-1 checkpoint was trained with "
            f"({'; '.join(diffs)}): its attention learned another high/low. Use the same dataset options "
            "(e.g. --count-columns, --threshold) as `gpf train stage1`, or retrain stage 1.")


def _dict_diff(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return "; ".join(diffs) or "no difference"


def select_items(cfg: PreprocessConfig, dataset) -> dict[str, list[_Item]]:
    """Items per split: usable records plus label problems (recorded as failure rows)."""
    splits = ["train", "val", "test"] if cfg.split == "all" else [cfg.split]
    items: dict[str, list[_Item]] = {s: [] for s in splits}
    for record in dataset.split(cfg.split):
        items[record.split].append(_Item(image_id=record.image_id, split=record.split, record=record,
                                         source=str(record.path)))
    seen = {it.image_id for group in items.values() for it in group}
    for problem in dataset.problems:
        split = problem.split if problem.split in items else None
        if split is None:
            if cfg.split != "all":
                continue
            split = "train"  # a label row outside any split is reported with the training rows
        image_id = problem.image_id or f"{Path(problem.source).name}:{problem.line}"
        if image_id in seen:
            image_id = f"{image_id}@line{problem.line}"  # a duplicate row: keep both rows visible
        seen.add(image_id)
        # problem.error names the file and line once; path: the image the row names, where known
        items[split].append(_Item(image_id=image_id, split=split, status=problem.status,
                                  error=problem.error, source=problem.path))
    if cfg.limit is not None:
        for split, group in items.items():
            group.sort(key=lambda it: _hash_rank(it.image_id, cfg.seed))
            del group[cfg.limit:]
    return items


def _hash_rank(image_id: str, seed: int) -> bytes:
    return hashlib.sha1(f"{seed}:{image_id}".encode()).digest()


# ----------------------------------------------------------------------------- per-image work

class _Worker:
    """The CPU work on one image, run in the thread pool."""

    def __init__(self, cfg: PreprocessConfig, att: AttentionModel):
        self.cfg = cfg
        self.geometry = cfg.geometry()

    def encode(self, view) -> bytes:
        """JPEG bytes of a view at the run's quality and chroma subsampling."""
        from .images import encode_jpeg

        return encode_jpeg(view, self.cfg.jpeg_quality, self.cfg.jpeg_subsampling)

    def decode(self, item: _Item) -> _Item:
        from .images import ImageError, load_image, peripheral_view

        if item.status != "ok":
            return item
        try:
            image = load_image(item.record.path, max_pixels=self.cfg.max_pixels)
            item.width, item.height = image.size
            item.periph = peripheral_view(image, self.geometry.view_size, stride=self.geometry.round_to,
                                          min_side=self.geometry.min_side)
            item.periph_jpg = self.encode(item.periph)
            if self.cfg.store_features:
                from ..shards.reader import decode_jpegs_uint8

                name = f"{item.record.path} (peripheral view)"
                item.periph_decoded = decode_jpegs_uint8([item.periph_jpg], [name])[0]
            item.image = image
        except ImageError as exc:
            item.status, item.error = exc.status, str(exc)
        except Exception as exc:  # a bug or an unforeseen file: record it, keep going
            item.status, item.error = "decode_error", f"{item.record.path}: {type(exc).__name__}: {exc}"
        return item

    def finish(self, item: _Item) -> _Item:
        """Foveal view, JPEG encodes and the tar sample of a decoded item."""
        from .images import foveal_view, random_crops
        from ..shards.layout import safe_key

        if item.status != "ok":
            return item
        try:
            cfg = self.cfg
            fovea = foveal_view(item.image, item.box, cfg.view_size)
            record = item.record
            sample = {
                "key": safe_key(item.image_id),
                "periph.jpg": item.periph_jpg,
                "fovea.jpg": self.encode(fovea),
                "attn.npy": item.attn,
                "json": {
                    "id": item.image_id,
                    "votes": [int(v) for v in record.votes],
                    "box": list(item.box),
                    "size": [item.width, item.height],
                    "attn_fraction": item.attn_fraction,
                    "tags": list(record.tags),
                    "category": record.category,
                    "challenge": record.challenge,
                    "source": str(record.path),
                    "split": item.split,
                },
            }
            if cfg.random_crops:
                for k, crop in enumerate(random_crops(item.image, cfg.random_crops, cfg.view_size,
                                                      cfg.seed, item.image_id)):
                    sample[f"rand{k}.jpg"] = self.encode(crop)
            if item.feature is not None:
                sample["pfeat.npy"] = item.feature
            item.sample = sample
        except Exception as exc:
            item.status, item.error = "crop_error", f"{item.record.path}: {type(exc).__name__}: {exc}"
        finally:
            item.image = None  # free the full-resolution pixels as soon as possible
            item.periph = item.periph_jpg = item.periph_decoded = None
        return item


def attend(items: Sequence[_Item], att: AttentionModel, cfg: PreprocessConfig) -> int:
    """EB maps and optimal boxes for the decoded items (on the un-encoded views), and with
    ``store_features`` the pooled descriptors of the JPEG-decoded views; returns how many maps were all zero."""
    from .attend import peripheral_features

    ok = [it for it in items if it.status == "ok"]
    results = attend_views(att, [it.periph for it in ok], [(it.width, it.height) for it in ok])
    features = peripheral_features(att, [it.periph_decoded for it in ok]) if cfg.store_features else [None] * len(ok)
    for item, res, feature in zip(ok, results, features):
        item.attn, item.box, item.attn_fraction, item.feature = res.attn, res.box, res.attn_fraction, feature
    return sum(res.zero for res in results)


def metadata_row(item: _Item, shard: str, scores: Sequence[float] | None = None) -> dict:
    """One Parquet row (docs/shards.md, the Parquet metadata) for an item, failed or not."""
    from ..model.metrics import mean_score, std_score
    from ..shards.layout import safe_key

    record = item.record
    votes = [int(v) for v in record.votes] if record is not None else None
    n_votes = int(sum(votes)) if votes else None
    mean = std = None
    if votes and n_votes:
        dist = np.asarray(votes, dtype=np.float64)
        mean, std = float(mean_score(dist, scores)), float(std_score(dist, scores))
    box = item.box if item.status == "ok" else None
    return {
        "id": item.image_id,
        "split": item.split,
        "shard": shard,
        "key": safe_key(item.image_id),
        "path": item.source,
        "width": item.width,
        "height": item.height,
        "votes": votes,
        "n_votes": n_votes,
        "mean": mean,
        "std": std,
        "tags": list(record.tags) if record is not None else None,
        "category": record.category if record is not None else None,
        "challenge": record.challenge if record is not None else None,
        "x0": box[0] if box else None,
        "y0": box[1] if box else None,
        "x1": box[2] if box else None,
        "y1": box[3] if box else None,
        "attn_fraction": item.attn_fraction if item.status == "ok" else None,
        "status": item.status,
        "error": item.error,
    }


# ----------------------------------------------------------------------------- orchestration

@dataclass
class _ShardJob:
    split: str
    index: int
    items: list[_Item]

    @property
    def name(self) -> str:
        from ..shards.layout import shard_name

        return shard_name(self.split, self.index)


def plan_shards(items_by_split: dict[str, list[_Item]], cfg: PreprocessConfig) -> list[_ShardJob]:
    """Every shard of the whole job (all ranks), in a fixed order."""
    from ..shards.layout import assign_shards

    jobs: list[_ShardJob] = []
    for split in sorted(items_by_split):
        group = items_by_split[split]
        if not group:
            continue
        by_id = {it.image_id: it for it in group}
        assignment = assign_shards(list(by_id), cfg.samples_per_shard, cfg.seed)
        shards: dict[int, list[_Item]] = defaultdict(list)
        for image_id in sorted(by_id, key=lambda i: _hash_rank(i, cfg.seed)):
            shards[assignment[image_id]].append(by_id[image_id])
        jobs += [_ShardJob(split, index, shards[index]) for index in sorted(shards)]
    return jobs


def _prepare_out_dir(cfg: PreprocessConfig, environment: dict, out: Path) -> None:
    """Refuse to mix runs: a folder made with another config or environment needs --overwrite."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way, no permission, read-only disk ...
        raise PreprocessError(f"cannot create the output folder --out {out}: {exc.strerror or exc}; "
                              "choose another --out") from None
    run_file = out / "preprocess.json"
    current = {"config": cfg.identity(), "environment": environment}
    if run_file.exists():
        try:
            previous = json.loads(run_file.read_text())
        except ValueError:
            previous = None
        if previous != current and not cfg.overwrite:
            if previous is None:
                detail = f"{run_file} is unreadable"
            else:
                detail = "; ".join(
                    [f"config {d}" for d in _diff_lines(previous.get("config", {}), current["config"])]
                    + [f"environment {d}" for d in
                       _diff_lines(previous.get("environment", {}), current["environment"])])
            raise PreprocessError(
                f"{out} holds shards made differently ({detail}). Rerun with the same command and "
                "environment to resume, choose another --out, or pass --overwrite to start afresh.")
        if previous == current:
            return
    if cfg.overwrite:
        _remove_outputs(out)
    atomic_write_bytes(run_file, json.dumps(current, sort_keys=True, indent=1).encode())


def _diff_lines(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def _remove_outputs(out: Path) -> None:
    for pattern in ("*.tar", "*.stats.json", "manifest.json", "*.tmp*", "preprocess.json"):
        for path in out.glob(pattern):
            path.unlink()
    if (out / "meta").exists():
        shutil.rmtree(out / "meta")


def run_preprocess(cfg: PreprocessConfig) -> Summary:
    """Run (or resume) the stage-1 pass described by ``cfg``; returns the summary of this rank."""
    from ..env_info import environment_summary
    from ..shards.writer import is_shard_done, read_stats, write_shard

    _validate(cfg)
    cfg.root = str(Path(cfg.root).resolve())
    rank, world = resolve_world(cfg)
    device = resolve_device(cfg.device)
    att = load_attention_model(cfg, device)
    cfg.stage1_digest = att.digest if cfg.stage1 else None
    cfg.attention_digest = att.digest
    dataset = load_inputs(cfg, att)
    environment = dict(environment_summary(), device=device.type, cuda=None)
    out = Path(cfg.out)
    _prepare_out_dir(cfg, environment, out)

    items = select_items(cfg, dataset)
    jobs = plan_shards(items, cfg)
    if not jobs:
        raise PreprocessError(f"no images to preprocess in split {cfg.split!r} of {cfg.root}")
    mine = [job for n, job in enumerate(jobs) if n % world == rank]
    scores = tuple(dataset.scores)
    parquet_metadata = shard_metadata(dataset)

    workers = cfg.workers or os.cpu_count() or 1
    worker = _Worker(cfg, att)
    progress = Progress(sum(len(j.items) for j in mine), f"preprocess[rank {rank}/{world}]"
                        if world > 1 else "preprocess", enabled=cfg.progress)
    counts: Counter = Counter()
    zero = written = skipped = 0
    with cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gpf-decode") as pool, \
            cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpf-write") as writer:
        pending_write: cf.Future | None = None
        for job in mine:
            if is_shard_done(out, job.split, job.index):
                skipped += 1
                counts.update(read_stats(out, job.split, job.index).get("status_counts", {}))
                progress.skip(len(job.items))
                continue
            done_items, z = _process_shard(job, worker, att, cfg, pool, progress)
            zero += z
            rows = [metadata_row(it, job.name, scores) for it in done_items]
            samples = [it.sample for it in done_items if it.status == "ok"]
            counts.update(it.status for it in done_items)
            if pending_write is not None:
                pending_write.result()
            pending_write = writer.submit(write_shard, out, job.split, job.index, samples, rows,
                                          metadata=parquet_metadata)
            written += 1
        if pending_write is not None:
            pending_write.result()
    progress.close()

    _maybe_write_manifest(out, jobs, cfg, environment, att, dataset)
    from .sources import problem_lines

    recorded = [p for p in dataset.problems if cfg.split == "all" or p.split == cfg.split]
    summary = Summary(counts=counts, written_shards=written, skipped_shards=skipped,
                      total_shards=len(mine), zero_attention=zero, out=out, notes=list(dataset.notes),
                      label_problems=problem_lines(recorded, LABEL_PROBLEMS_SHOWN),
                      label_problem_count=len(recorded))
    check_failure_rate(summary, cfg.max_failure_rate)
    return summary


def check_failure_rate(summary: Summary, max_failure_rate: float) -> None:
    """Raise :class:`TooManyFailuresError` when no image was written or too large a share failed."""
    if summary.total and summary.counts.get("ok", 0) == 0:
        raise TooManyFailuresError(f"no image could be written (the manifest is left incomplete); see the "
                                   f"status and error columns in {summary.out}/meta, fix the inputs and "
                                   f"rerun with {vocabulary.cli_option('overwrite')}", summary)
    rate = summary.failures / max(1, summary.total)
    if rate > max_failure_rate:
        raise TooManyFailuresError(
            f"{rate:.1%} of the images failed (more than {vocabulary.cli_option('max_failure_rate')} "
            f"{max_failure_rate:.1%}); see the status and error columns in {summary.out}/meta. The shards "
            "written are kept", summary)


def _process_shard(job: _ShardJob, worker: _Worker, att: AttentionModel, cfg: PreprocessConfig,
                   pool: cf.Executor, progress: Progress) -> tuple[list[_Item], int]:
    """Decode (prefetching the next batch), attend, finish: the items of one shard, in order."""
    batches = [job.items[i:i + cfg.batch_size] for i in range(0, len(job.items), cfg.batch_size)]
    finished: list[cf.Future] = []
    zero = 0
    decoding = [pool.submit(worker.decode, it) for it in batches[0]] if batches else []
    for b in range(len(batches)):
        decoded = [f.result() for f in decoding]
        if b + 1 < len(batches):
            decoding = [pool.submit(worker.decode, it) for it in batches[b + 1]]
        try:
            zero += attend(decoded, att, cfg)
        except Exception as exc:  # the model failed on this batch: record, don't lose the shard
            for it in decoded:
                if it.status == "ok":
                    it.status, it.error = "attention_error", f"{type(exc).__name__}: {exc}"
                    it.image = it.periph = it.periph_jpg = it.periph_decoded = None
        finished += [pool.submit(worker.finish, it) for it in decoded]
        progress.update(len(decoded), failed=sum(it.status != "ok" for it in decoded))
    return [f.result() for f in finished], zero


def _validate(cfg: PreprocessConfig) -> None:
    problems = []
    if not 0 < cfg.tau <= 1:
        problems.append(f"--tau must be in (0, 1], got {cfg.tau}")
    if cfg.view_size is not None and cfg.view_size < 8:
        problems.append(f"--view-size must be at least 8, got {cfg.view_size}")
    if cfg.view_round is not None and (isinstance(cfg.view_round, bool) or not isinstance(cfg.view_round, int)
                                       or cfg.view_round < 1):
        problems.append(f"view_round must be a positive integer, got {cfg.view_round!r}")
    from .images import JPEG_SUBSAMPLING

    if cfg.jpeg_subsampling not in JPEG_SUBSAMPLING:
        problems.append(f"jpeg_subsampling must be one of {', '.join(JPEG_SUBSAMPLING)}, got {cfg.jpeg_subsampling!r}")
    if cfg.view_fit is not None and cfg.view_fit not in vocabulary.VIEW_FITS:
        problems.append(f"view_fit must be one of {', '.join(vocabulary.VIEW_FITS)}, got {cfg.view_fit!r}")
    if cfg.samples_per_shard < 1:
        problems.append(f"--samples-per-shard must be positive, got {cfg.samples_per_shard}")
    if cfg.batch_size < 1:
        problems.append(f"--batch-size must be positive, got {cfg.batch_size}")
    if not 1 <= cfg.jpeg_quality <= 100:
        problems.append(f"--jpeg-quality must be in 1..100, got {cfg.jpeg_quality}")
    if cfg.random_crops < 0:
        problems.append(f"--random-crops must be >= 0, got {cfg.random_crops}")
    if cfg.split not in ("train", "val", "test", "all"):
        problems.append(f"--split must be one of train, val, test, all; got {cfg.split!r}")
    if cfg.limit is not None and cfg.limit < 1:
        problems.append(f"--limit must be positive, got {cfg.limit}")
    if cfg.workers < 0:
        problems.append(f"--workers must be >= 0 (0 = one per core), got {cfg.workers}")
    if cfg.max_pixels is not None and cfg.max_pixels < 1:
        problems.append(f"--max-pixels must be positive, got {cfg.max_pixels}")
    if not 0 <= cfg.max_failure_rate <= 1:
        problems.append(f"--max-failure-rate must be in [0, 1], got {cfg.max_failure_rate}")
    if problems:
        raise PreprocessError("; ".join(problems))


def shard_metadata(dataset) -> dict[str, str] | None:
    """Key-value metadata of every shard's Parquet: which label column holds which score bucket
    (``gpf_score_columns``, JSON), for a folder CSV; None for the fixed formats."""
    if not getattr(dataset, "score_columns", None):
        return None
    return {SCORE_COLUMNS_KEY: json.dumps(dataset.score_columns, sort_keys=True)}


def _maybe_write_manifest(out: Path, jobs: Sequence[_ShardJob], cfg: PreprocessConfig,
                          environment: dict, att: AttentionModel, dataset) -> bool:
    """Write manifest.json once every shard of the job (all ranks) is done: complete when the
    shards hold at least one sample, else incomplete (a run that wrote nothing is not usable)."""
    from ..shards.manifest import RunFields, write_manifest
    from ..shards.writer import is_shard_done, read_stats

    if not all(is_shard_done(out, j.split, j.index) for j in jobs):
        return False
    wrote = sum(int(read_stats(out, j.split, j.index).get("count", 0)) for j in jobs) > 0
    geometry = cfg.geometry()
    run = RunFields(dataset=dataset.name, scores=tuple(dataset.scores), threshold=dataset.threshold,
                    view_size=cfg.view_size, tau=cfg.tau, eb_layer=att.eb_layer, contrastive=cfg.contrastive,
                    stage1_digest=cfg.stage1_digest, attention_model=att.description,
                    features_digest=att.digest if cfg.store_features else None, split_spec=dataset.split_spec,
                    config=dict(cfg.identity(), num_classes=len(dataset.scores)), environment=environment,
                    score_columns=getattr(dataset, "score_columns", None), view_round=geometry.round_to,
                    view_min_side=geometry.min_side, view_fit=att.fit,
                    features_from="jpeg" if cfg.store_features else None, jpeg_quality=cfg.jpeg_quality,
                    jpeg_subsampling=cfg.jpeg_subsampling)
    write_manifest(out, run, complete=wrote)
    return wrote
