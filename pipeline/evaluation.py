"""Evaluate a stage-2 checkpoint on preprocessed shards: the paper's Table I and Table IV.

Metrics (paper, section IV-B; :func:`gpf.model.metrics.evaluate`): accuracy of
the high/low call (mean score > threshold), SRCC, LCC, MAE and RMSE of the mean
score, and EMD (r = 1) of the distributions. ``by_category`` repeats them per
AVA category (Table IV: the ``{category}_test.jpgl`` lists, recorded per image in
the shards' Parquet metadata) or, when the shards record no category, per
semantic tag (an image with two tags counts in both groups).

Before any image is read the checkpoint is checked against the shards'
``manifest.json`` by :func:`gpf.pipeline.compat.check_fit` (the check stage 2
and predict use too); a mismatch is refused with one line saying what to do:

* number of score buckets N (refused: the distributions cannot be compared);
* view size (refused: the network would see views of another scale);
* for the attention variants (``gpf``, ``pf``): the attention model embedded in
  the checkpoint (stage-1 digest, tau, EB layer, contrastive flag) against the
  one that made the shards' crops. Refused by default, because the numbers
  would then describe crops that ``gpf predict`` never makes for this model;
  ``allow_attention_mismatch=True`` (``--allow-attention-mismatch``) evaluates
  anyway and records a warning;
* bucket scores or threshold that differ from the checkpoint's with the same N:
  a warning; the shards' (the dataset's) values are used.

The ``random-frozen`` variant is scored with every random crop the shards store
for an image and the predicted distributions averaged, the same estimator that
:class:`gpf.pipeline.scoring.Scorer` uses on new photos. The ``random`` variant
(Random-VGG16 as the paper ran it) is scored on the same fixed, seeded patches
of the original-resolution photo as ``gpf predict`` (``DEFAULT_RANDOM_CROPS``
of them, seeded by the shards' preprocess seed; :mod:`gpf.shards.patches`), its
first column on the warped photo (``warp.jpg``), as is ``single``'s.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from ..errors import GPFError
from ..model.metrics import METRIC_KEYS
from ..vocabulary import VIEW_FIT

if TYPE_CHECKING:
    from ..shards.manifest import Manifest

DEFAULT_BATCH_SIZE = 64
FEW_IMAGES = 30    # below this, correlation metrics say little (the same bound as the small-validation note)
#: Column titles of the paper's Table I, in :data:`METRIC_KEYS` order.
COLUMN_TITLES = {"accuracy": "accuracy %", "srcc": "SRCC", "lcc": "LCC", "mae": "MAE", "rmse": "RMSE",
                 "emd": "EMD"}
SPLITS = ("train", "val", "test")


class EvaluationError(GPFError):
    """A checkpoint and shards that cannot be evaluated together; the message says what to do."""


@dataclass
class GroupResult:
    """Metrics of the images of one category or tag (a row of Table IV)."""
    name: str
    n: int
    metrics: dict


@dataclass
class EvaluationResult:
    """Metrics of a checkpoint on one split of a shard folder, with every image's prediction.

    ``pred_dist`` and ``true_dist`` are ``[n, N]`` float64 rows that sum to 1, in
    the order of ``ids``. ``metrics`` holds :data:`gpf.model.metrics.METRIC_KEYS`
    (accuracy as a fraction in [0, 1]).
    """

    checkpoint: str
    shard_dir: str
    split: str
    variant: str
    backbone: str
    scores: tuple[float, ...]
    threshold: float
    metrics: dict
    ids: list[str]
    pred_dist: np.ndarray
    true_dist: np.ndarray
    group_kind: str | None = None              # 'category' | 'tag' | None (not asked)
    groups: list[GroupResult] = field(default_factory=list)
    ungrouped: int = 0                          # images without a category / tag
    warnings: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def pred_mean(self) -> np.ndarray:
        return self.pred_dist @ np.asarray(self.scores)

    @property
    def true_mean(self) -> np.ndarray:
        return self.true_dist @ np.asarray(self.scores)

    @property
    def emd_per_image(self) -> np.ndarray:
        """EMD (r = 1, paper Eq. 1) of each image; its mean is ``metrics['emd']``."""
        gap = np.abs(np.cumsum(self.pred_dist, axis=1) - np.cumsum(self.true_dist, axis=1))
        return gap.mean(axis=1)

    def to_json(self) -> dict:
        """Plain JSON: the six metric keys at the top level, plus n, split, checkpoint and the groups.

        NaN (a correlation of a constant vector, e.g. a group of one image) becomes null.
        """
        out = {key: _json_number(self.metrics[key]) for key in METRIC_KEYS}
        out.update({"n": self.n, "split": self.split, "checkpoint": self.checkpoint,
                    "shards": self.shard_dir, "variant": self.variant, "backbone": self.backbone,
                    "scores": list(self.scores), "threshold": self.threshold,
                    "warnings": list(self.warnings)})
        if self.group_kind is not None:
            out["by_category"] = {
                "kind": self.group_kind, "ungrouped": self.ungrouped,
                "groups": {g.name: {"n": g.n, **{k: _json_number(g.metrics[k]) for k in METRIC_KEYS}}
                           for g in self.groups}}
        return out

    def table_lines(self) -> list[str]:
        """The terminal report: Table I's columns, and Table IV's rows when groups were asked."""
        lines = [f"checkpoint {self.checkpoint} ({self.variant}, {self.backbone})",
                 f"shards     {self.shard_dir}, split {self.split}, {self.n} images, "
                 f"threshold {self.threshold:g}"]
        lines += format_table([("all", self.n, self.metrics)], first="")
        if self.group_kind is not None:
            lines.append("")
            if self.groups:
                lines += format_table([(g.name, g.n, g.metrics) for g in self.groups], first=self.group_kind)
                if self.ungrouped:
                    lines.append(f"({self.ungrouped} images have no {self.group_kind})")
            else:
                lines.append("no image of this split has a category or a semantic tag")
        return lines


def _json_number(value):
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else value


def _cell(key: str, value: float) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{100 * value:.2f}" if key == "accuracy" else f"{value:.4f}"


def format_table(rows: Sequence[tuple[str, int, dict]], first: str) -> list[str]:
    """Fixed-width rows ``name n accuracy% SRCC LCC MAE RMSE EMD`` (right-aligned numbers)."""
    header = [first, "n", *(COLUMN_TITLES[k] for k in METRIC_KEYS)]
    body = [[name, str(n), *(_cell(k, metrics[k]) for k in METRIC_KEYS)] for name, n, metrics in rows]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    out = []
    for row in [header, *body]:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        out.append("  ".join(cells).rstrip())
    return out


# ----------------------------------------------------------------------------- streaming

def _loader_batches(shard_dir, split: str, batch_size: int, workers: int | None, members: tuple,
                    pin_memory: bool, patches: int = 0, seed: int = 0) -> Iterator[dict]:
    """Batches of ``make_loader`` in evaluation mode: every sample exactly once.

    ``periph`` is what the first column sees (the peripheral view, or ``warp``
    when asked for); ``second`` the second column's views: the foveal view, or the
    ``patches`` fixed test patches seeded by ``seed`` (:mod:`gpf.shards.patches`).
    """
    from ..shards.reader import make_loader

    loader = make_loader(shard_dir, split, batch_size, shuffle=False, num_workers=workers,
                         members=members, pin_memory=pin_memory, patches=patches, seed=seed)
    for batch in loader:
        if "warp" in batch:
            batch["periph"] = batch.pop("warp")
        batch["second"] = [batch["fovea"]] if "fovea" in batch else []
        if patches:
            batch["second"] = [batch["patch"][:, t] for t in range(patches)]
        yield batch


def _random_crop_batches(shard_dir, split: str, batch_size: int) -> Iterator[dict]:
    """Batches with every stored random crop of each sample (``second`` = K tensors [B, 3, S, S]).

    ``make_loader`` shows one random crop per sample and epoch (what training
    wants); averaging the ``random`` variant over all K needs them all, so the
    shards are read here directly, batched by peripheral shape like the loader.
    """
    import json

    import torch

    from ..shards.layout import JSON, PERIPH, jpeg_size, rand_index
    from ..shards.reader import decode_jpegs_uint8, iter_shard, list_shards, stack_decoded

    def keep(_key: str, member: str) -> bool:
        return member in (JSON, PERIPH) or rand_index(member) is not None

    def collate(samples: list[dict]) -> dict:
        metas = [json.loads(s[JSON]) for s in samples]
        names = [f"{s['__shard__']}, key {s['__key__']!r}" for s in samples]
        crops = sorted({m for s in samples for m in s if rand_index(m) is not None}, key=rand_index)
        incomplete = [n for n, s in zip(names, samples) if any(c not in s for c in crops)]
        if incomplete:
            raise EvaluationError(f"{incomplete[0]}: fewer random crops than other samples; "
                                  "run `gpf shards verify` on the folder")
        periph = stack_decoded(decode_jpegs_uint8([s[PERIPH] for s in samples], names))
        second = [stack_decoded(decode_jpegs_uint8([s[c] for s in samples], names)) for c in crops]
        return {"id": [m.get("id", s["__key__"]) for m, s in zip(metas, samples)],
                "votes": torch.tensor([m["votes"] for m in metas], dtype=torch.float32),
                "periph": periph, "second": second}

    buckets: dict[tuple[int, int], list[dict]] = {}
    for spec in list_shards(shard_dir, split):
        for sample in iter_shard(spec, keep):
            if PERIPH not in sample or JSON not in sample:
                raise EvaluationError(f"{spec.path}, key {sample['__key__']!r}: no periph.jpg or json member; "
                                      "run `gpf shards verify` on the folder")
            bucket = buckets.setdefault(jpeg_size(sample[PERIPH]), [])
            bucket.append(sample)
            if len(bucket) == batch_size:
                yield collate(bucket)
                bucket.clear()
    for bucket in buckets.values():
        if bucket:
            yield collate(bucket)


def predict_batch(model, batch: dict, device, view_fit: str = VIEW_FIT) -> np.ndarray:
    """Softmax distributions ``[B, N]`` of one batch of uint8 views, averaged over its second views (if several).

    ``batch``: ``periph`` ``[B, 3, H, W]`` and ``second``, a list of ``[B, 3, S, S]``
    (none for ``single``), as decoded from JPEG. Views below a column's minimum
    input are fitted to it with ``view_fit`` (:func:`gpf.model.geometry.fit_to_backbone`,
    on the CPU tensors, as the trainer does). ``gpf evaluate`` and ``gpf predict`` both score through here.
    """
    import torch

    from ..model.geometry import fit_to_backbone

    with torch.inference_mode():
        periph = model.normalize_peripheral(fit_to_backbone(batch["periph"], model.peripheral_spec, view_fit)
                                            .to(device, non_blocking=True))
        if not model.needs_fovea:
            return torch.softmax(model(periph).float(), dim=1).cpu().double().numpy()
        feat = model.peripheral_descriptor(periph)
        total = 0
        for view in batch["second"]:
            fovea = model.normalize_foveal(fit_to_backbone(view, model.foveal_spec, view_fit)
                                           .to(device, non_blocking=True))
            total = total + torch.softmax(model(periph_feat=feat, fovea=fovea).float(), dim=1)
        return (total / len(batch["second"])).cpu().double().numpy()


# ----------------------------------------------------------------------------- groups

def _group_labels(shard_dir, manifest: Manifest, split: str) -> dict[str, tuple[str | None, tuple[str, ...]]]:
    """id -> (category, tags) of the split's images, from the shards' Parquet metadata."""
    from ..shards.storage import StorageError, read_parquet

    labels = {}
    for entry in manifest.entries(split):
        path = shard_dir / entry.parquet
        try:
            table = read_parquet(path, columns=["id", "category", "tags", "status"])
        except StorageError:
            raise
        except (OSError, KeyError, ValueError) as exc:
            raise EvaluationError(f"{path}: cannot read the category and tags of the images ({exc}); run "
                                  "`gpf shards verify` on the folder") from None
        for row in table.to_pylist():
            if row["status"] == "ok":
                labels[row["id"]] = (row["category"], tuple(row["tags"] or ()))
    return labels


def group_results(ids: Sequence[str], pred: np.ndarray, true: np.ndarray, labels: dict, threshold: float,
                  scores) -> tuple[str, list[GroupResult], int]:
    """Table IV: metrics per category, or per semantic tag when no image has a category."""
    from ..model.metrics import evaluate

    category = [labels.get(i, (None, ()))[0] for i in ids]
    if any(c is not None for c in category):
        kind, members = "category", [(c,) if c is not None else () for c in category]
    else:
        kind, members = "tag", [labels.get(i, (None, ()))[1] for i in ids]
    rows: dict[str, list[int]] = {}
    for index, names in enumerate(members):
        for name in dict.fromkeys(names):
            rows.setdefault(name, []).append(index)
    groups = [GroupResult(name, len(rows[name]), evaluate(pred[rows[name]], true[rows[name]], threshold, scores))
              for name in sorted(rows)]
    return kind, groups, sum(1 for names in members if not names)


# ----------------------------------------------------------------------------- entry point

def _refuse_damaged_shards(shard_dir, manifest: Manifest, split: str) -> None:
    from ..shards.verify import check_checksums

    problems = check_checksums(shard_dir, manifest, splits=(split,))
    if problems:
        raise EvaluationError(f"{len(problems)} damaged shard(s), not evaluated: {'; '.join(problems[:5])}. "
                              f"Run `gpf shards verify {shard_dir}` for the full list and rewrite them "
                              "(rerun the same `gpf preprocess` command after deleting their stats files)")


def evaluate_checkpoint(checkpoint, shard_dir, split: str = "test", *, batch_size: int = DEFAULT_BATCH_SIZE,
                        workers: int | None = None, device="auto", by_category: bool = False,
                        allow_attention_mismatch: bool = False, progress: bool = False) -> EvaluationResult:
    """Evaluate a stage-2 checkpoint (file or run folder) on ``split`` of a shard folder.

    ``workers``: loader processes (None: up to 4). Every sample of the split is
    read exactly once. See the module doc for the checks and the ``random`` variant.
    Checkpoint and shards may be URLs (:mod:`gpf.shards.storage`).
    """
    from ..model.checkpoint import load_checkpoint, model_from_checkpoint
    from ..shards.storage import as_location, is_url, public_url
    from .compat import checkpoint_location
    from ..model.metrics import evaluate, normalize
    from .compat import check_fit
    from ..model.device import resolve_device
    from .progress import Progress
    from ..shards.manifest import read_manifest

    if split not in SPLITS:
        raise EvaluationError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise EvaluationError(f"batch size must be a positive int, got {batch_size!r}")
    path = checkpoint_location(checkpoint)
    ckpt = load_checkpoint(path, expect="stage2")
    path = public_url(checkpoint) if is_url(checkpoint) else path
    shard_dir = as_location(shard_dir)
    shard_dir = shard_dir.local if shard_dir.local is not None else shard_dir
    manifest = read_manifest(shard_dir)
    _refuse_damaged_shards(shard_dir, manifest, split)
    fit = check_fit(ckpt, manifest.run, model=str(path), data=f"the shards in {shard_dir}",
                    random_crops=manifest.random_crops, allow_attention_mismatch=allow_attention_mismatch)
    scores, threshold = manifest.run.scores, manifest.run.threshold
    total = manifest.samples(split)
    if total == 0:
        raise EvaluationError(f"the shards in {shard_dir} hold no {split!r} images; splits with images: "
                              f"{', '.join(manifest.splits_with_samples()) or 'none'}")
    if total < FEW_IMAGES:
        fit.warnings.append(f"only {total} {split!r} image(s): accuracy, SRCC and LCC on fewer than {FEW_IMAGES} "
                            "images are noise; compare models on a larger split")

    device = resolve_device(device)
    model = model_from_checkpoint(ckpt).to(device).eval()
    if model.fovea_source == "random":
        batches = _random_crop_batches(shard_dir, split, batch_size)
    else:
        from .scoring import DEFAULT_RANDOM_CROPS

        members = (model.first_view, "fovea") if model.fovea_source == "attention" else (model.first_view,)
        patches = DEFAULT_RANDOM_CROPS if model.fovea_source == "patch" else 0
        batches = _loader_batches(shard_dir, split, batch_size, workers, members, device.type == "cuda",
                                  patches=patches, seed=ckpt.shards_seed)

    ids: list[str] = []
    preds, trues = [], []
    bar = Progress(total, f"evaluate {split}", enabled=progress)
    for batch in batches:
        preds.append(predict_batch(model, batch, device, ckpt.view_fit))
        trues.append(normalize(batch["votes"].double().numpy(), "votes"))
        ids += [str(i) for i in batch["id"]]
        bar.update(len(batch["id"]))
    bar.close()
    pred, true = np.concatenate(preds), np.concatenate(trues)
    if pred.shape[1] != len(scores):
        raise EvaluationError(f"the model predicts {pred.shape[1]} buckets, the shards' votes have {len(scores)}")
    result = EvaluationResult(checkpoint=str(path), shard_dir=str(shard_dir), split=split,
                              variant=model.variant, backbone=model.spec.name, scores=scores,
                              threshold=threshold, metrics=evaluate(pred, true, threshold, scores),
                              ids=ids, pred_dist=pred, true_dist=true, warnings=fit.warnings)
    if by_category:
        labels = _group_labels(shard_dir, manifest, split)
        result.group_kind, result.groups, result.ungrouped = group_results(ids, pred, true, labels,
                                                                          threshold, scores)
    return result
