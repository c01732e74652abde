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
import functools
import hashlib
import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .. import vocabulary
from ..errors import GPFError
from ..model.device import resolve_device
from ..shards.storage import Location, as_location, public_location_text
from .attend import AttentionModel, NetworkLost, attend_and_describe
from .progress import Progress

# Config keys that decide the bytes of the shards: a rerun with a different
# value for any of them must not mix outputs in one folder.
IDENTITY_KEYS = (
    "dataset", "root", "dataset_options", "stage1", "stage1_digest", "attention_digest", "backbone", "weights",
    "tau", "view_size", "eb_layer", "contrastive", "samples_per_shard", "split", "limit",
    "batch_size", "jpeg_quality", "random_crops", "store_features", "seed", "max_pixels",
    "view_round", "view_fit", "jpeg_subsampling",
    "store_warped", "store_original",
)
#: The view settings a stage-1 checkpoint records and preprocess takes from it (another value is refused).
STAGE1_VIEW_KEYS = ("view_size", "view_round", "view_fit")


#: Identity keys that may hold a URL: written without credentials or a signed URL's query.
_LOCATION_KEYS = ("root", "stage1", "weights")

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


class IncompleteRunError(TooManyFailuresError):
    """Shards failed after their retries (Ray engine); the others are written, a rerun redoes the failed ones.

    ``summary.failed_shards`` names them.
    """


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
    store_warped: bool = False        # warp.jpg: the whole photo warped to view_size^2 (Table I baselines)
    store_original: bool = False      # orig.jpg: the photo at original resolution (Random-VGG16's patches)
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
        """The keys that decide the shards' bytes, as written to preprocess.json and the manifest: a URL
        without its credentials or signed-URL query (:func:`gpf.shards.storage.public_url`)."""
        data = dataclasses.asdict(self)
        return {k: public_location_text(data[k]) if k in _LOCATION_KEYS else data[k] for k in IDENTITY_KEYS}

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
    out: Path | Location
    notes: list[str] = field(default_factory=list)   # the dataset's notes (absent test-list ids, ...)
    label_problems: list[str] = field(default_factory=list)  # the first few as 'file:line: problem'
    label_problem_count: int = 0                     # unusable label rows recorded in meta/
    failed_shards: list[str] = field(default_factory=list)  # shards that failed after their retries

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
        ] + self._failed_lines() + self._problem_lines() + [f"note: {note}" for note in self.notes]

    def _failed_lines(self) -> list[str]:
        if not self.failed_shards:
            return []
        return [f"shards failed after their retries: {len(self.failed_shards)} "
                f"({', '.join(self.failed_shards)}); rerun the same command to redo them"]

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
        from ..shards.storage import is_url, public_url
        from .compat import checkpoint_location

        path = checkpoint_location(cfg.stage1)
        ckpt = ckpt_mod.load_checkpoint(path, expect="stage1")
        path = public_url(cfg.stage1) if is_url(cfg.stage1) else path
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
            from ..shards.storage import localize

            model = imagenet_classifier(cfg.backbone, weights=localize(cfg.weights))
        digest = ckpt_mod.state_dict_digest(model.state_dict())
        split_spec = trained_scale = None
        description = {"kind": "imagenet", "backbone": model.spec.name, "weights": public_location_text(cfg.weights),
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

    def __init__(self, ctx: "ShardContext"):
        self.cfg = ctx.cfg
        self.geometry = ctx.cfg.geometry()

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
            sample.update(baseline_members(item.image, cfg))
            item.sample = sample
        except Exception as exc:
            item.status, item.error = "crop_error", f"{item.record.path}: {type(exc).__name__}: {exc}"
        finally:
            item.image = None  # free the full-resolution pixels as soon as possible
            item.periph = item.periph_jpg = item.periph_decoded = None
        return item


def baseline_members(image, cfg: PreprocessConfig) -> dict[str, bytes]:
    """``warp.jpg`` and ``orig.jpg`` of a full-resolution photo, as ``cfg`` asks (Table I baselines)."""
    from .images import encode_jpeg, original_view, warped_view

    members = {}
    if cfg.store_warped:
        members["warp.jpg"] = encode_jpeg(warped_view(image, cfg.view_size), cfg.jpeg_quality)
    if cfg.store_original:
        members["orig.jpg"] = encode_jpeg(original_view(image, cfg.view_size), cfg.jpeg_quality)
    return members


#: The stage-1 network's step: ``attend_fn(views, original_sizes, feature_views) -> (list[Attended], features)``
#: (:func:`gpf.pipeline.attend.attend_and_describe` bound to a model, here or in a Ray actor).
AttendFn = Callable[..., list]


def attend(items: Sequence[_Item], attend_fn: AttendFn, cfg: PreprocessConfig) -> int:
    """EB maps and optimal boxes for the decoded items (on the un-encoded views), and with
    ``store_features`` the pooled descriptors of the JPEG-decoded views; returns how many maps were all zero."""
    ok = [it for it in items if it.status == "ok"]
    if not ok:
        return 0
    decoded = [it.periph_decoded for it in ok] if cfg.store_features else None
    results, features = attend_fn([it.periph for it in ok], [(it.width, it.height) for it in ok], decoded)
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


def _prepare_out_dir(cfg: PreprocessConfig, environment: dict, out: Location) -> None:
    """Refuse to mix runs: a folder (or URL prefix) made with another config or environment needs --overwrite."""
    from ..shards.storage import StorageError

    try:
        out.makedirs()
    except OSError as exc:  # a file in the way, no permission, read-only disk ...
        raise PreprocessError(f"cannot create the output folder --out {out}: {exc.strerror or exc}; "
                              "choose another --out") from None
    run_file = out / "preprocess.json"
    current = {"config": cfg.identity(), "environment": environment}
    try:
        text = run_file.read_bytes()
    except FileNotFoundError:
        text = None
    except StorageError:
        if out.remote:
            raise
        text = b""
    if text is not None:
        try:
            previous = json.loads(text)
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
    run_file.write_bytes(json.dumps(current, sort_keys=True, indent=1).encode())


def _diff_lines(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def _remove_outputs(out: Location) -> None:
    """Delete the files (or keys) gpf names in ``out`` — shard tars, stats, meta/ Parquets, temp files,
    manifest.json, preprocess.json — and no other; abort unfinished uploads below it."""
    from ..shards.layout import MANIFEST_NAME, META_DIR, PARQUET_SUFFIX, STATS_SUFFIX, TAR_SUFFIX, TEMP_SUFFIX, \
        TEMP_PREFIX, parse_shard_name

    def named_by_gpf(name: str, suffixes: tuple[str, ...]) -> bool:
        if name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX):
            name = name[len(TEMP_PREFIX):-len(TEMP_SUFFIX)]
        return any(name.endswith(s) and parse_shard_name(name[:-len(s)]) is not None for s in suffixes)

    for name in out.list():
        if name in (MANIFEST_NAME, "preprocess.json") or named_by_gpf(name, (TAR_SUFFIX, STATS_SUFFIX)) or \
                name.startswith(f"{TEMP_PREFIX}{MANIFEST_NAME}"):
            (out / name).delete()
    meta = out / META_DIR
    for name in meta.list():
        if named_by_gpf(name, (PARQUET_SUFFIX,)):
            (meta / name).delete()
    out.abort_unfinished_uploads(lambda key: named_by_gpf(key.rpartition("/")[2], (TAR_SUFFIX, STATS_SUFFIX,
                                                                                PARQUET_SUFFIX)))


@dataclass(frozen=True)
class ShardContext:
    """What every shard of a run needs besides its images; plain and picklable, so an engine can
    send it to the processes or machines that do the work."""
    cfg: PreprocessConfig
    out: str
    scores: tuple[float, ...]
    parquet_metadata: dict[str, str] | None


@dataclass
class ShardOutcome:
    """What one shard's processing gave: its name, the images per status, how many maps were all zero."""
    name: str
    counts: Counter
    zero: int = 0

    @property
    def images(self) -> int:
        return sum(self.counts.values())


@dataclass
class PreparedRun:
    """A run ready to go: the output folder claimed for this config and environment, every shard planned."""
    cfg: PreprocessConfig
    att: AttentionModel
    dataset: Any
    environment: dict
    out: Location
    jobs: list[_ShardJob]
    context: ShardContext


def local_environment(device) -> dict:
    """The environment a run records (preprocess.json, the manifest): library versions, PIL, device type."""
    from ..env_info import environment_summary

    return dict(environment_summary(), device=device.type, cuda=None)


def open_run(cfg: PreprocessConfig, device) -> tuple[AttentionModel, Any]:
    """Check the config, load the attention model onto ``device`` and open the dataset; nothing is written."""
    _validate(cfg)
    cfg.root = str(Path(cfg.root).resolve())
    att = load_attention_model(cfg, device)
    cfg.stage1_digest = att.digest if cfg.stage1 else None
    cfg.attention_digest = att.digest
    return att, load_inputs(cfg, att)


def plan_run(cfg: PreprocessConfig, att: AttentionModel, dataset, environment: dict) -> PreparedRun:
    """Claim the output folder for this config and ``environment`` and plan every shard of the job."""
    out = as_location(cfg.out)
    _prepare_out_dir(cfg, environment, out)
    jobs = plan_shards(select_items(cfg, dataset), cfg)
    if not jobs:
        raise PreprocessError(f"no images to preprocess in split {cfg.split!r} of {cfg.root}")
    context = ShardContext(cfg=cfg, out=out.url,
                           scores=tuple(dataset.scores), parquet_metadata=shard_metadata(dataset))
    return PreparedRun(cfg, att, dataset, environment, out, jobs, context)


def done_shard(done: Mapping[tuple[str, int], dict], job: _ShardJob) -> ShardOutcome | None:
    """The outcome recorded by an earlier run when ``job``'s shard is done, else None; ``done`` is
    :func:`gpf.shards.writer.done_shards` of the output (one listing, not a request per shard)."""
    stats = done.get((job.split, job.index))
    if stats is None:
        return None
    return ShardOutcome(job.name, Counter(stats.get("status_counts", {})))


def process_shard(job: _ShardJob, ctx: ShardContext, attend_fn: AttendFn, pool: cf.Executor,
                  progress: Progress | None = None, write: Callable | None = None) -> ShardOutcome:
    """Shard ``job`` of the plan, start to finish: decode, attention, views, encodes, then its files.

    Every engine calls this one function per shard, so their outputs are the same bytes: the
    local engine with the network in this process, the Ray engine in a task with the network
    in an actor (``attend_fn``). ``write`` (default :func:`gpf.shards.writer.write_shard`)
    writes the tar, the Parquet rows and the stats file; the local engine passes one that
    writes in a background thread while the next shard is computed.
    """
    from ..shards.writer import write_shard

    items, zero = _compute_shard(job, _Worker(ctx), attend_fn, ctx.cfg, pool, progress)
    rows = [metadata_row(it, job.name, ctx.scores) for it in items]
    samples = [it.sample for it in items if it.status == "ok"]
    (write or write_shard)(ctx.out, job.split, job.index, samples, rows, metadata=ctx.parquet_metadata)
    return ShardOutcome(job.name, Counter(it.status for it in items), zero)


def finish_run(run: PreparedRun, outcomes: Sequence[ShardOutcome], written: int, total_shards: int,
               failed_shards: Sequence[str] = ()) -> Summary:
    """Write the manifest once every shard of the job exists; the run's summary (raises on too many failures)."""
    from .sources import problem_lines

    _maybe_write_manifest(run.out, run.jobs, run.cfg, run.environment, run.att, run.dataset)
    cfg, dataset = run.cfg, run.dataset
    counts: Counter = Counter()
    for outcome in outcomes:
        counts.update(outcome.counts)
    recorded = [p for p in dataset.problems if cfg.split == "all" or p.split == cfg.split]
    summary = Summary(counts=counts, written_shards=written, skipped_shards=len(outcomes) - written,
                      total_shards=total_shards, zero_attention=sum(o.zero for o in outcomes), out=run.out.local or run.out,
                      notes=list(dataset.notes), label_problems=problem_lines(recorded, LABEL_PROBLEMS_SHOWN),
                      label_problem_count=len(recorded), failed_shards=list(failed_shards))
    if failed_shards:
        raise IncompleteRunError(
            f"{len(failed_shards)} shard(s) failed after their retries: {', '.join(failed_shards[:10])}"
            + (" ..." if len(failed_shards) > 10 else "")
            + "; the other shards are written. Rerun the same command to redo the failed ones", summary)
    check_failure_rate(summary, cfg.max_failure_rate)
    return summary


def run_preprocess(cfg: PreprocessConfig) -> Summary:
    """Run (or resume) the stage-1 pass described by ``cfg`` in this process; returns the summary of this rank.

    The local engine: this rank's shards (every ``world``-th of the plan, :func:`resolve_world`)
    one after the other, decode/encode in a thread pool, the network in this thread.
    ``gpf.pipeline.ray_preprocess.run_preprocess_ray`` runs the same shards on a Ray cluster.
    """
    from ..shards.writer import done_shards

    _validate(cfg)
    rank, world = resolve_world(cfg)
    device = resolve_device(cfg.device)
    att, dataset = open_run(cfg, device)
    run = plan_run(cfg, att, dataset, local_environment(device))
    mine = [job for n, job in enumerate(run.jobs) if n % world == rank]

    attend_fn = functools.partial(attend_and_describe, att)
    progress = Progress(sum(len(j.items) for j in mine), f"preprocess[rank {rank}/{world}]"
                        if world > 1 else "preprocess", enabled=cfg.progress)
    outcomes: list[ShardOutcome] = []
    written = 0
    done_before = done_shards(run.out)
    with cf.ThreadPoolExecutor(max_workers=cfg.workers or os.cpu_count() or 1,
                               thread_name_prefix="gpf-decode") as pool, \
            _BackgroundWriter() as write:
        for job in mine:
            done = done_shard(done_before, job)
            if done is not None:
                outcomes.append(done)
                progress.skip(len(job.items))
                continue
            outcomes.append(process_shard(job, run.context, attend_fn, pool, progress, write=write))
            written += 1
    progress.close()
    return finish_run(run, outcomes, written, len(mine))


class _BackgroundWriter:
    """``write_shard`` in one background thread: a shard is written while the next is computed
    (at most one write waits); leaving the ``with`` block waits for the last write."""

    def __enter__(self) -> "_BackgroundWriter":
        self._pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpf-write")
        self._pending: cf.Future | None = None
        return self

    def __call__(self, *args, **kwargs) -> None:
        from ..shards.writer import write_shard

        self._wait()
        self._pending = self._pool.submit(write_shard, *args, **kwargs)

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._wait()
        finally:
            self._pool.shutdown(wait=True)


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


def _compute_shard(job: _ShardJob, worker: _Worker, attend_fn: AttendFn, cfg: PreprocessConfig,
                   pool: cf.Executor, progress: Progress | None) -> tuple[list[_Item], int]:
    """Decode (prefetching the next batch), attend, finish: the items of one shard, in order.

    Batches are ``cfg.batch_size`` consecutive items of the shard, whichever engine runs it.
    """
    batches = [job.items[i:i + cfg.batch_size] for i in range(0, len(job.items), cfg.batch_size)]
    finished: list[cf.Future] = []
    zero = 0
    decoding = [pool.submit(worker.decode, it) for it in batches[0]] if batches else []
    for b in range(len(batches)):
        decoded = [f.result() for f in decoding]
        if b + 1 < len(batches):
            decoding = [pool.submit(worker.decode, it) for it in batches[b + 1]]
        try:
            zero += attend(decoded, attend_fn, cfg)
        except NetworkLost:
            raise
        except Exception as exc:  # the model failed on this batch: record, don't lose the shard
            for it in decoded:
                if it.status == "ok":
                    it.status, it.error = "attention_error", f"{type(exc).__name__}: {exc}"
                    it.image = it.periph = it.periph_jpg = it.periph_decoded = None
        finished += [pool.submit(worker.finish, it) for it in decoded]
        if progress is not None:
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


def _maybe_write_manifest(out: Location, jobs: Sequence[_ShardJob], cfg: PreprocessConfig,
                          environment: dict, att: AttentionModel, dataset) -> bool:
    """Write manifest.json once every shard of the job (all ranks) is done: complete when the
    shards hold at least one sample, else incomplete (a run that wrote nothing is not usable)."""
    from ..shards.manifest import RunFields, write_manifest
    from ..shards.writer import done_shards

    done = done_shards(out)
    if not all((j.split, j.index) in done for j in jobs):
        return False
    wrote = sum(int(done[(j.split, j.index)].get("count", 0)) for j in jobs) > 0
    geometry = cfg.geometry()
    run = RunFields(dataset=dataset.name, scores=tuple(dataset.scores), threshold=dataset.threshold,
                    view_size=cfg.view_size, tau=cfg.tau, eb_layer=att.eb_layer, contrastive=cfg.contrastive,
                    stage1_digest=cfg.stage1_digest, attention_model=att.description,
                    features_digest=att.digest if cfg.store_features else None, split_spec=dataset.split_spec,
                    config=dict(cfg.identity(), num_classes=len(dataset.scores)), environment=environment,
                    score_columns=getattr(dataset, "score_columns", None), view_round=geometry.round_to,
                    view_min_side=geometry.min_side, view_fit=att.fit,
                    features_from="jpeg" if cfg.store_features else None, jpeg_quality=cfg.jpeg_quality,
                    jpeg_subsampling=cfg.jpeg_subsampling,
                    warped=bool(cfg.store_warped), original=bool(cfg.store_original))
    write_manifest(out, run, complete=wrote)
    return wrote
