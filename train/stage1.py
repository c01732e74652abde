"""``gpf train stage1``: fine-tune the peripheral subnet as a high/low classifier.

Paper, section IV-B: "we initialize convolutional layers in the peripheral
subnet by the pre-trained VGG16 from ImageNet. We first train the peripheral
subnet with softmax loss to classify the images into high or low category."
An image is *high* when its mean score is above the dataset's threshold (AVA: 5).

Input is the raw photos, seen as preprocessing sees them: the peripheral view
(aspect kept, longest side = view size, short side rounded to 8;
:class:`gpf.model.geometry.ViewGeometry`, ``gpf.pipeline.images.peripheral_view``)
fitted to the backbone where it is below its minimum input
(:func:`gpf.model.geometry.fit_to_backbone`), decoded reduced where the file
allows (JPEG draft mode). A run started before gpf 0.3.0 resumes with the rule
it started with (rounded to the backbone's stride, at least its minimum input).
Before training, every image's header is read once (in threads) to know its
view shape; batches are then formed per shape (no padding, no distortion) in an
order that depends only on (seed, epoch).
Missing or unreadable images are counted, listed in ``skipped_images.csv`` and
left out; they never stop the run, unless not one image file of the training and
validation splits exists (then the error names an example path as resolved and
the rule that resolved it). Unusable label rows are listed in
``label_problems.csv``, the first few printed as ``file:line: problem``.

The checkpoint is the one ``gpf preprocess --stage1`` takes: format
``gpf-stage1`` with the view rule (``view_size``, ``view_round``,
``view_min_side``, ``view_fit``: preprocess takes them from it), threshold,
score scale and the dataset's ``split_spec`` (so preprocessing can refuse a
different split).
"""
from __future__ import annotations

import concurrent.futures as cf
import csv
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .. import vocabulary
from ..errors import GPFError
from ..model.checkpoint import Checkpoint
from .config import Stage1Config
from .distributed import DistContext, gather_objects, per_rank_batch_size
from .loop import RunResult, Task, images_to_device
from ..fsutil import atomic_write_text
from .state import derived_seed, seed_init

SKIPPED = "skipped_images.csv"
LABEL_PROBLEMS = "label_problems.csv"
LABEL_PROBLEMS_SHOWN = 5       # label problems printed as 'file:line: problem'; the rest are in LABEL_PROBLEMS
_ORIENTATION_TAG = 0x0112


class Stage1Error(GPFError):
    """Stage 1 cannot start; the message says what to do."""


@dataclass(frozen=True)
class ImageItem:
    """A usable training or validation image and the shape of its peripheral view."""
    image_id: str
    path: str
    label: int              # 1 = high (mean score above the threshold), 0 = low
    mean: float             # mean score
    shape: tuple[int, int]  # (height, width) of the peripheral view


@dataclass(frozen=True)
class Skipped:
    image_id: str
    split: str
    path: str
    status: str
    error: str


# ----------------------------------------------------------------------------- dataset

def open_stage1_dataset(cfg: Stage1Config):
    """The dataset with the configured split options and threshold."""
    from ..pipeline.sources import open_dataset

    return open_dataset(cfg.dataset, cfg.root, strict=False, check_images=False, **cfg.dataset_options)


def mean_scores(votes: np.ndarray, scores: Sequence[float]) -> np.ndarray:
    """Mean score of each vote histogram: sum_i v_i s_i / sum_i v_i (paper, section IV-B)."""
    votes = np.asarray(votes, dtype=np.float64)
    return votes @ np.asarray(scores, dtype=np.float64) / votes.sum(axis=1)


def upright_size(path: str, max_pixels: int | None) -> tuple[int, int]:
    """(width, height) of the upright image from its header (EXIF orientation applied), no decode."""
    from PIL import Image

    from ..pipeline.images import ImageError

    with Image.open(path) as im:
        width, height = im.size
        try:
            orientation = int(im.getexif().get(_ORIENTATION_TAG, 1))
        except Exception:       # a broken EXIF block counts as upright, as load_image does
            orientation = 1
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(path, "too_large", f"{width}x{height} = {width * height} pixels is over the "
                                            f"limit of {max_pixels} (possible decompression bomb)")
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _classify_failure(path: str, max_pixels: int | None, exc: Exception) -> tuple[str, str]:
    """(status, message) of an image whose header could not be read."""
    from ..pipeline.images import ImageError, decode_image

    if isinstance(exc, ImageError):
        return exc.status, str(exc)
    try:
        decode_image(path, max_pixels)   # the decoder names the problem precisely
    except ImageError as err:
        return err.status, str(err)
    except Exception as err:
        return "decode_error", f"{path}: {type(err).__name__}: {err}"
    return "decode_error", f"{path}: unreadable header ({type(exc).__name__}: {exc})"


def probe_images(records, dataset, view_size: int, stride: int, min_side: int, max_pixels: int | None,
                 ctx: DistContext, threads: int | None = None, *, fit_spec=None,
                 fit: str = vocabulary.VIEW_FIT) -> tuple[list[ImageItem], list[Skipped]]:
    """Header pass over ``records``: view shapes of the usable ones, the rest as :class:`Skipped`.

    The shape is that of the peripheral view (``stride``: its rounding unit)
    fitted to ``fit_spec``'s minimum input (None: not fitted). Under DDP each
    rank reads a share and the results are gathered, so every rank ends with
    the same lists in record order.
    """
    from ..model.geometry import fitted_size, peripheral_size

    means = mean_scores(np.array([r.votes for r in records], dtype=np.float64), dataset.scores) \
        if records else np.zeros(0)

    def probe(position: int):
        record = records[position]
        path = str(record.path)
        try:
            width, height = upright_size(path, max_pixels)
            pw, ph = peripheral_size(width, height, view_size, stride, min_side)
            if fit_spec is not None:
                pw, ph = fitted_size(pw, ph, fit_spec.min_input, fit)
        except Exception as exc:
            status, message = _classify_failure(path, max_pixels, exc)
            return position, Skipped(record.image_id, record.split, path, status, message)
        mean = float(means[position])
        return position, ImageItem(record.image_id, path, int(mean > dataset.threshold), mean, (ph, pw))

    mine = range(ctx.rank, len(records), ctx.world_size)
    workers = threads or min(32, 4 * (os.cpu_count() or 1))
    with cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gpf-probe") as pool:
        results = list(pool.map(probe, mine))
    gathered = sorted(r for part in gather_objects(ctx, results) for r in part) \
        if ctx.distributed else results
    items = [r for _, r in gathered if isinstance(r, ImageItem)]
    skipped = [r for _, r in gathered if isinstance(r, Skipped)]
    return items, skipped


# ----------------------------------------------------------------------------- batches

def bucket_batches(items: Sequence[ImageItem], batch_size: int, rng: np.random.Generator | None) -> list[list[int]]:
    """Indices of ``items`` in batches of one view shape each (shuffled when ``rng`` is given).

    Every item is in exactly one batch; the last batch of each shape may be smaller.
    """
    by_shape: dict[tuple[int, int], list[int]] = {}
    for index, item in enumerate(items):
        by_shape.setdefault(item.shape, []).append(index)
    batches: list[list[int]] = []
    for shape in sorted(by_shape):
        indices = np.asarray(by_shape[shape])
        if rng is not None:
            indices = rng.permutation(indices)
        batches += [indices[i:i + batch_size].tolist() for i in range(0, len(indices), batch_size)]
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def train_epoch_batches(items: Sequence[ImageItem], global_batch: int, seed: int, epoch: int,
                        rank: int, world_size: int) -> list[list[int]]:
    """This rank's batches of one training epoch, a function of (seed, epoch) only.

    Global batches of ``global_batch`` images of one shape are formed in a seeded
    order and each is split across the ranks, so every rank takes the same number
    of steps; a shape's last batch with fewer images than ranks is left out of
    the epoch (it is drawn in again by later epochs' shuffles).
    """
    rng = np.random.default_rng(derived_seed("gpf-stage1-batches", seed, epoch))
    batches = [b for b in bucket_batches(items, global_batch, rng) if len(b) >= world_size]
    return [np.array_split(np.asarray(b), world_size)[rank].tolist() for b in batches]


def val_batches_for_rank(items: Sequence[ImageItem], batch_size: int, rank: int, world_size: int) -> list[list[int]]:
    """Validation batches dealt round-robin to ranks: every image exactly once over all ranks."""
    return bucket_batches(items, batch_size, None)[rank::world_size]


class PeripheralViews(torch.utils.data.Dataset):
    """Decodes one image to its uint8 peripheral view; failures come back as values, not exceptions."""

    def __init__(self, items: Sequence[ImageItem], view_size: int, stride: int, min_side: int,
                 max_pixels: int | None, *, fit_spec=None, fit: str = vocabulary.VIEW_FIT):
        self.items = list(items)
        self.view_size, self.stride, self.min_side, self.max_pixels = view_size, stride, min_side, max_pixels
        self.fit_spec, self.fit = fit_spec, fit      # the view is fitted to fit_spec's minimum input (None: not)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        from ..pipeline.images import ImageError, decode_image, peripheral_view, to_uint8_tensor

        item = self.items[index]
        try:
            decoded = decode_image(item.path, self.max_pixels, reduce_to=self.view_size,
                                   view_min_side=self.min_side)
            view = peripheral_view(decoded.image, self.view_size, self.stride, self.min_side,
                                   original_size=decoded.original_size)
            tensor = to_uint8_tensor(view)
            if self.fit_spec is not None:
                from ..model.geometry import fit_to_backbone

                tensor = fit_to_backbone(tensor, self.fit_spec, self.fit)
            if tuple(tensor.shape[1:]) != item.shape:
                raise ImageError(item.path, "decode_error",
                                 f"the decoded view is {tuple(tensor.shape[1:])}, the header promised "
                                 f"{item.shape} (the file changed during training?)")
            return index, tensor, None
        except ImageError as exc:
            return index, None, (exc.status, str(exc))
        except Exception as exc:  # an unforeseen file: record it, keep training
            return index, None, ("decode_error", f"{item.path}: {type(exc).__name__}: {exc}")


class CollateViews:
    """Stacks the decoded views of one bucket; failed images are dropped and reported."""

    def __init__(self, items: Sequence[ImageItem]):
        self.items = items

    def __call__(self, samples):
        ok = [(i, t) for i, t, err in samples if err is None]
        failed = [(i, err[0], err[1]) for i, _, err in samples if err is not None]
        shape = self.items[samples[0][0]].shape
        indices = [i for i, _ in ok]
        periph = torch.stack([t for _, t in ok]) if ok else torch.zeros((0, 3) + shape, dtype=torch.uint8)
        return {"index": torch.tensor(indices, dtype=torch.long), "periph": periph,
                "label": torch.tensor([self.items[i].label for i in indices], dtype=torch.long),
                "mean": torch.tensor([self.items[i].mean for i in indices], dtype=torch.float32),
                "failed": failed}


# ----------------------------------------------------------------------------- metrics

def rankdata(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as scipy.stats.rankdata)."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    start = 0
    while start < len(values):
        stop = start
        while stop + 1 < len(values) and sorted_values[stop + 1] == sorted_values[start]:
            stop += 1
        ranks[order[start:stop + 1]] = (start + stop) / 2 + 1
        start = stop + 1
    return ranks


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


def stage1_metrics(logits: torch.Tensor, targets: torch.Tensor) -> dict:
    """Validation metrics of the high/low classifier.

    ``targets`` columns: label (0/1), mean score. ``accuracy`` is the share of
    correct high/low decisions; ``srcc``/``lcc`` correlate P(high) with the
    mean score (a ranking the classifier implies). The distribution metrics
    (mae, rmse, emd) do not apply to a 2-way classifier and are left empty.
    """
    labels = targets[:, 0].long()
    loss = float(F.cross_entropy(logits.float(), labels))
    p_high = torch.softmax(logits.float(), dim=1)[:, 1].numpy()
    means = targets[:, 1].numpy()
    accuracy = float((logits.argmax(dim=1) == labels).float().mean())
    return {"val_loss": loss, "accuracy": accuracy, "srcc": pearson(rankdata(p_high), rankdata(means)),
            "lcc": pearson(p_high, means), "mae": None, "rmse": None, "emd": None}


# ----------------------------------------------------------------------------- the task

class Stage1Task(Task):
    name = "stage1"

    def __init__(self, cfg: Stage1Config, ctx: DistContext, dataset, model, train_items: list[ImageItem],
                 val_items: list[ImageItem], skipped: list[Skipped], run_dir: Path, log, geometry=None):
        self.cfg, self.ctx, self.dataset, self.model = cfg, ctx, dataset, model
        self.train_items, self.val_items = train_items, val_items
        self.skipped = {(s.split, s.image_id): s for s in skipped}
        self.new_failures: list[Skipped] = []
        self.run_dir, self.log = run_dir, log
        self.rank_batch = per_rank_batch_size(cfg.batch_size, ctx.world_size)
        self.normalize = model.normalize          # uint8 -> the backbone's normalised float, on the device
        self.geometry = geometry or stage1_geometry(cfg, model.spec, None)   # the rule probe_images used
        self.channels_last = ctx.device.type == "cuda"
        self.workers = cfg.workers if cfg.workers is not None else min(4, max(1, (os.cpu_count() or 1) - 1))
        self.train_samples = len(train_items)
        self._steps = len(train_epoch_batches(train_items, cfg.batch_size, cfg.seed, 0, ctx.rank, ctx.world_size))
        if self._steps == 0:
            raise Stage1Error(f"no training batch: {len(train_items)} usable training images for "
                              f"{ctx.world_size} process(es)")

    # -- data
    def _loader(self, items: list[ImageItem], batches: list[list[int]]):
        geometry = self.geometry
        dataset = PeripheralViews(items, geometry.view_size, geometry.round_to, geometry.min_side, self.cfg.max_pixels,
                                  fit_spec=self.model.spec, fit=self.cfg.view_fit)
        return torch.utils.data.DataLoader(
            dataset, batch_sampler=batches, num_workers=self.workers, collate_fn=CollateViews(items),
            pin_memory=self.ctx.device.type == "cuda",
            prefetch_factor=2 if self.workers else None)

    def _batches(self, loader, split: str):
        for batch in loader:
            for index, status, message in batch["failed"]:
                item = (self.train_items if split == "train" else self.val_items)[index]
                key = (split, item.image_id)
                if key not in self.skipped:
                    skipped = Skipped(item.image_id, split, item.path, status, message)
                    self.skipped[key] = skipped
                    self.new_failures.append(skipped)
            yield batch

    def train_batches(self, epoch: int):
        batches = train_epoch_batches(self.train_items, self.cfg.batch_size, self.cfg.seed, epoch,
                                      self.ctx.rank, self.ctx.world_size)
        return self._batches(self._loader(self.train_items, batches), "train")

    def steps_per_epoch(self) -> int:
        return self._steps

    def val_batches(self):
        batches = val_batches_for_rank(self.val_items, self.rank_batch, self.ctx.rank, self.ctx.world_size)
        return self._batches(self._loader(self.val_items, batches), "val")

    # -- model
    def _input(self, batch) -> torch.Tensor:
        return images_to_device(batch["periph"], self.ctx.device, self.normalize, self.channels_last)

    def train_loss(self, forward, batch):
        labels = batch["label"].to(self.ctx.device, non_blocking=True)
        logits = forward(self._input(batch)).float()
        n = int(labels.shape[0])
        # an all-failed batch still takes a (zero-gradient) step so DDP ranks stay in step
        loss = F.cross_entropy(logits, labels, reduction="sum") / max(n, 1)
        return loss, n

    def eval_outputs(self, forward, batch):
        logits = forward(self._input(batch)).float()
        targets = torch.stack([batch["label"].float(), batch["mean"]], dim=1)
        return logits.cpu(), targets

    def val_metrics(self, predictions, targets) -> dict:
        return stage1_metrics(predictions, targets)

    def on_epoch_end(self, epoch: int) -> None:
        """Collect images that failed to decode on any rank; rank 0 rewrites the report."""
        new = [s for part in gather_objects(self.ctx, self.new_failures) for s in part]
        self.new_failures = []
        for s in new:
            self.skipped.setdefault((s.split, s.image_id), s)
        if new:
            self.log(f"{len(new)} more image(s) failed to decode and were skipped (see {SKIPPED})")
        if self.ctx.is_main:
            write_skipped(self.run_dir / SKIPPED, list(self.skipped.values()))

    def checkpoint(self) -> Checkpoint:
        from ..model.checkpoint import stage1_checkpoint

        ds = self.dataset
        view_rule = {"view_round": self.geometry.round_to, "view_min_side": self.geometry.min_side,
                     "view_fit": self.cfg.view_fit}
        checkpoint = stage1_checkpoint(self.model, view_size=self.cfg.view_size, threshold=float(ds.threshold),
                                       scores=[float(s) for s in ds.scores],
                                       extra_config={"dataset": ds.name, **view_rule})
        checkpoint.dataset = {"name": ds.name, "root": str(ds.root), "scores": [float(s) for s in ds.scores],
                              "threshold": float(ds.threshold), "split_spec": ds.split_spec,
                              "options": dict(self.cfg.dataset_options),
                              "score_columns": getattr(ds, "score_columns", None),
                              "train_images": len(self.train_items), "val_images": len(self.val_items),
                              "skipped_images": len(self.skipped)}
        return checkpoint


def write_skipped(path: Path, skipped: list[Skipped]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "split", "path", "status", "error"])
    for s in sorted(skipped, key=lambda s: (s.split, s.image_id)):
        writer.writerow([s.image_id, s.split, s.path, s.status, s.error])
    atomic_write_text(path, buffer.getvalue())


# ----------------------------------------------------------------------------- entry point

def build_stage1_model(cfg: Stage1Config, resuming: bool):
    """``PeripheralNet`` with 2 classes; ImageNet (or ``--weights``) init unless a resume overwrites it."""
    from ..model.gpf import PeripheralNet

    if not cfg.backbone:
        raise Stage1Error("no backbone: pass --backbone NAME (see `gpf models`)")
    from ..shards.storage import localize

    return PeripheralNet(cfg.backbone, num_classes=2, weights="none" if resuming else localize(cfg.weights))


def check_stage1_backbone(name: str) -> None:
    """Stage 1 trains the network Excitation Backprop reads the attention from: refuse, before the
    run folder is made, a backbone EB cannot walk (the message names the module and why)."""
    from ..model.attention import EBUnsupportedError
    from ..model.gpf import check_peripheral_backbone

    try:
        check_peripheral_backbone(name)
    except EBUnsupportedError as err:
        raise Stage1Error(f"--backbone {name} cannot be a stage-1 network, which preprocessing reads "
                          f"Excitation Backprop attention maps from: {err}") from None


def train_stage1(cfg: Stage1Config, hooks=None) -> RunResult:
    """Fine-tune the peripheral subnet on raw images (high/low softmax); see the module doc."""
    from .config import validate
    from .loop import Trainer
    from .run import run_context

    validate(cfg)
    if not cfg.root:
        raise Stage1Error("no dataset root given")
    if not cfg.backbone:
        raise Stage1Error("no backbone: pass --backbone NAME (see `gpf models`)")
    from ..model.backbones import get_spec

    get_spec(cfg.backbone)      # an unknown name fails before the run folder is made
    check_stage1_backbone(cfg.backbone)
    dataset = open_stage1_dataset(cfg)
    from ..pipeline.sources import check_images_resolve

    check_images_resolve(dataset, dataset.split("train") + dataset.split("val"))   # before the run folder
    with run_context(cfg, "stage1", check_resume=lambda state, _run_dir: _check_same_split(state, dataset)) as run:
        ctx, log = run.ctx, run.log
        seed_init(cfg.seed)
        model = build_stage1_model(cfg, resuming=run.resume_state is not None)
        spec = model.spec
        if cfg.view_size < spec.min_input:
            raise Stage1Error(f"--view-size {cfg.view_size} is below {spec.name}'s minimum input side "
                              f"{spec.min_input}; use at least {spec.min_input}")
        model.to(ctx.device)
        if ctx.device.type == "cuda":
            model.to(memory_format=torch.channels_last)
        geometry = stage1_geometry(cfg, spec, run.resume_state)
        views = dict(fit_spec=spec, fit=cfg.view_fit)
        train_items, skipped = probe_images(dataset.split("train"), dataset, geometry.view_size, geometry.round_to,
                                            geometry.min_side, cfg.max_pixels, ctx, **views)
        val_items, val_skipped = probe_images(dataset.split("val"), dataset, geometry.view_size, geometry.round_to,
                                              geometry.min_side, cfg.max_pixels, ctx, **views)
        skipped += val_skipped
        _report_inputs(log, dataset, train_items, val_items, skipped, run.run_dir)
        if ctx.is_main:
            write_skipped(run.run_dir / SKIPPED, skipped)           # before any error that names it
            write_label_problems(run.run_dir / LABEL_PROBLEMS, dataset.problems)
        if not train_items:
            raise Stage1Error(f"no usable training image in {cfg.root} (see {run.run_dir / SKIPPED})")
        if not val_items:
            raise Stage1Error(f"no usable validation image in {cfg.root}: early stopping needs a validation "
                              "split (raise --val-size)")
        task = Stage1Task(cfg, ctx, dataset, model, train_items, val_items, skipped, run.run_dir, log, geometry)
        result = Trainer(task, cfg, ctx, run.run_dir, hooks=hooks, log=log,
                         resume_state=run.resume_state).fit()
        result.notes.append(f"skipped images: {len(task.skipped)} (listed in {run.run_dir / SKIPPED})")
        return result


def stage1_geometry(cfg: Stage1Config, spec, resume_state: Checkpoint | None):
    """The view rule of a stage-1 run: the current one (:data:`~gpf.vocabulary.VIEW_ROUND`), or, resuming a run
    whose checkpoint records none (started before gpf 0.3.0), the rule it started with."""
    from ..model.geometry import ViewGeometry

    if resume_state is not None and resume_state.model_config.get("view_round") is None:
        return ViewGeometry.legacy(cfg.view_size, spec.stride, spec.min_input)
    if resume_state is not None:
        config = resume_state.model_config
        return ViewGeometry(cfg.view_size, int(config["view_round"]), int(config.get("view_min_side") or 1))
    return ViewGeometry(cfg.view_size, vocabulary.VIEW_ROUND, 1)


def _check_same_split(state: Checkpoint, dataset) -> None:
    saved = state.split_spec
    if saved is not None and saved != dataset.split_spec:
        from ..shards.manifest import compare_config

        diff = "; ".join(compare_config(saved, dataset.split_spec)[:5])
        raise Stage1Error(f"cannot resume: the dataset's split differs from the run's ({diff}); "
                          "use the same dataset and split options")


def _report_inputs(log, dataset, train_items, val_items, skipped, run_dir: Path) -> None:
    """What stage 1 reads, on stderr and in train.log: sizes, skipped images, the dataset's
    notes (which CSV column is which bucket, a small validation split ...) and the first
    unusable label rows as ``file:line: problem``."""
    from collections import Counter

    from ..pipeline.sources import problem_lines

    log(f"dataset {dataset.name} at {dataset.root}: {len(train_items)} train and {len(val_items)} val "
        f"images usable, threshold {dataset.threshold:g} "
        f"(high: {sum(i.label for i in train_items)} of the training images)")
    for note in getattr(dataset, "notes", []) or []:
        log(f"note: {note}")
    if skipped:
        by_status = ", ".join(f"{k} {v}" for k, v in sorted(Counter(s.status for s in skipped).items()))
        log(f"skipped {len(skipped)} image(s) that cannot be read ({by_status}); see {run_dir / SKIPPED}")
    problems = list(getattr(dataset, "problems", []) or [])
    if problems:
        by_status = ", ".join(f"{k} {v}" for k, v in sorted(Counter(p.status for p in problems).items()))
        shown = problem_lines(problems, LABEL_PROBLEMS_SHOWN)
        head = f"{len(problems)} label row(s) unusable ({by_status}), left out"
        log(head + (f"; the first {len(shown)}:" if len(shown) < len(problems) else ":"))
        for line in shown:
            log(f"  {line}")
        rest = f"  ... and {len(problems) - len(shown)} more: all" if len(shown) < len(problems) else "  all"
        log(f"{rest} are listed in {run_dir / LABEL_PROBLEMS}")


def write_label_problems(path: Path, problems) -> None:
    """The unusable label rows (file, line, id, status, problem, image path) as a CSV."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["file", "line", "id", "status", "problem", "path"])
    for p in problems:
        writer.writerow([p.source, "" if p.line is None else p.line, p.image_id or "", p.status,
                         p.reason, p.path or ""])
    atomic_write_text(path, buffer.getvalue())
