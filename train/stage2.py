"""``gpf train stage2``: train the foveal subnet and the fusion on preprocessed shards.

Paper, section IV-B: "In the second step, we freeze the convolutional layers of
peripheral subnet, and start to train the foveal subnet and the GIF module."
The loss is the EMD between the predicted and the voted score distributions
with r = 2 (section III-C).

* The two subnets may differ. The peripheral subnet is the network that made
  the shards' crops (the stage-1 model of ``--stage1`` or the manifest) unless
  ``--peripheral-backbone`` names another; its conv layers come from that network
  or from ``--peripheral-weights``; they are frozen and kept in eval mode, so
  their weights and batch-norm statistics stay bit-identical. ``--backbone``
  names the foveal subnet (any registered backbone or ``timm:NAME``, started from
  ``--weights``); for ``single``, its one column. GIF sizes one bottleneck per
  branch from that branch's C (``--gif-width`` overrides).
* The checkpoint embeds the attention model that made the shards' crops
  (stage-1 weights whose digest must equal the manifest's, tau, EB layer,
  contrastive flag, view size) and the score scale, threshold and N, so
  ``gpf predict`` reproduces the crops.
* When the shards hold the peripheral's pooled descriptors (``pfeat.npy``), computed
  from the JPEG-decoded views (manifest format 3) with the same view fit, and
  the frozen peripheral equals the network that computed them, the peripheral
  forward is skipped and the shards' JPEG peripheral views are not even decoded.
* Views below a column's minimum input side are fitted to it at load
  (:func:`gpf.model.geometry.fit_to_backbone`, ``view_fit``, recorded in the
  checkpoint), as ``gpf evaluate`` and ``gpf predict`` fit them.
* The Table I baselines as the paper ran them (section IV-C) fine-tune their
  first column from ``--weights`` instead: ``single`` on the whole photo warped
  to a view-size square (``warp.jpg``; ``single-periph`` on the aspect-kept
  peripheral view), ``random`` on the warped photo plus a fresh view-size patch of
  the original-resolution photo (``orig.jpg``) each time a sample is seen;
  validation shows each photo its first fixed test patch.
* ``single-frozen`` / ``random-frozen`` keep the frozen stage-1 peripheral (the
  latter with one of the K stored random crops per image and epoch).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from ..errors import GPFError
from ..model.checkpoint import AttentionBlock, Checkpoint
from ..pipeline.compat import check_fit, require_baseline_members, require_random_crops, require_scale
from ..shards.manifest import MANIFEST_FORMAT, Manifest, RunFields, compare_config
from ..shards.storage import as_location, localize, public_location_text
from ..vocabulary import get_variant
from .config import Stage2Config
from .distributed import DistContext, per_rank_batch_size
from .loop import RunResult, Task, images_to_device
from .state import seed_init


class Stage2Error(GPFError):
    """Stage 2 cannot start with these shards / checkpoints; the message says what to do."""


# ----------------------------------------------------------------------------- the manifest

@dataclass(frozen=True)
class ShardFacts:
    """What stage 2 needs to know about a shard folder, read from its :class:`Manifest`."""
    folder: str
    manifest: Manifest

    @property
    def run(self) -> RunFields:
        return self.manifest.run

    @property
    def dataset(self) -> str | None:
        return self.run.dataset

    @property
    def scores(self) -> tuple[float, ...]:
        return self.run.scores

    @property
    def threshold(self) -> float:
        return self.run.threshold

    @property
    def view_size(self) -> int:
        return int(self.run.view_size)

    @property
    def num_classes(self) -> int:
        return len(self.run.scores)

    @property
    def attention_model(self) -> dict:
        return self.run.attention_model or {}

    @property
    def samples(self) -> dict:
        return {split: self.manifest.samples(split) for split in self.manifest.splits}

    @classmethod
    def from_manifest(cls, manifest: Manifest, folder: str | os.PathLike) -> "ShardFacts":
        require_scale(manifest.run, f"the shards in {folder}")
        return cls(folder=str(folder), manifest=manifest)


_DERIVED_RUN_KEYS = ("random_crops", "features")


def _comparable_run(run: RunFields, derived: Mapping) -> dict:
    """Run fields as a resume compares them: the environment apart (compared only when shards changed)."""
    fields = {k: v for k, v in run.to_dict().items() if k != "environment"}
    return {**fields, **{k: derived.get(k) for k in _DERIVED_RUN_KEYS}}


def shards_identity(manifest: Manifest) -> dict:
    """The parts of a manifest a stage-2 run depends on (stored in its checkpoints)."""
    return {
        "run": _comparable_run(manifest.run, {"random_crops": manifest.random_crops,
                                              "features": manifest.features}),
        "environment": manifest.run.environment,
        "shards": {e.name: e.sha256 for e in manifest.shards},
    }


def saved_identity(state: Checkpoint) -> dict:
    """:func:`shards_identity` as a checkpoint recorded it, read in the manifest format it was written in."""
    record = state.shards_run
    if record is None:
        return dict(state.shards or {})
    run, version = record
    fields = RunFields.from_dict(run, f"{state.origin}: its record of the shards", version)
    return {**state.shards, "run": _comparable_run(fields, run)}


def manifest_differences(saved: Mapping, current: Mapping) -> list[str]:
    """Why shards no longer match a run: config/run-field changes, and changed shard contents
    (with the environment differences that may explain them)."""
    diffs = [f"manifest {line}" for line in compare_config(saved.get("run") or {}, current.get("run") or {})]
    old, new = saved.get("shards") or {}, current.get("shards") or {}
    changed = sorted(n for n in set(old) | set(new) if old.get(n) != new.get(n))
    if changed:
        diffs.append(f"{len(changed)} shard(s) added, removed or rewritten ({', '.join(changed[:3])}"
                     f"{' ...' if len(changed) > 3 else ''})")
        diffs += [f"environment {line}" for line in
                  compare_config(saved.get("environment") or {}, current.get("environment") or {})]
    return diffs


# ----------------------------------------------------------------------------- attention + peripheral

def resolve_checkpoint_file(path: str | os.PathLike, prefer: str = "best") -> Path:
    """A checkpoint file, or a run folder's ``best.pt`` / ``last.pt`` (see ``model.checkpoint``), local or at a URL."""
    from ..pipeline.compat import checkpoint_location

    return checkpoint_location(path, prefer)


@dataclass
class Attention:
    """The attention model of the shards: its checkpoint block and the stage-1 checkpoint that made it (if one)."""
    block: AttentionBlock
    stage1: Checkpoint | None
    description: str


def resolve_attention(cfg: Stage2Config, facts: ShardFacts, resume_state: Checkpoint | None) -> Attention:
    """Find the network that made the shards' crops and check it is that network."""
    from ..model.checkpoint import attention_block, load_checkpoint, state_dict_digest

    run, described = facts.run, facts.attention_model
    settings = dict(tau=run.tau, eb_layer=run.eb_layer or "", contrastive=bool(run.contrastive),
                    view_size=facts.view_size)
    if resume_state is not None:
        return Attention(resume_state.attention, None, "the run being resumed")
    if run.stage1_digest:
        given = cfg.stage1 or described.get("path")
        if not given:
            raise Stage2Error(f"the shards in {facts.folder} were made by a stage-1 model (digest "
                              f"{run.stage1_digest[:12]}...) but no path to it is known; pass it with "
                              "--stage1 CKPT|RUN")
        try:
            path = resolve_checkpoint_file(given)
        except GPFError as exc:
            raise Stage2Error(f"{exc}. The shards in {facts.folder} were made by the stage-1 model with digest "
                              f"{run.stage1_digest[:12]}...; pass it with --stage1 CKPT|RUN") from None
        stage1 = load_checkpoint(path, expect="stage1")
        digest = stage1.digest
        path = public_location_text(str(given)) if as_location(given).remote else path
        if digest != run.stage1_digest:
            raise Stage2Error(
                f"{path} (digest {digest[:12]}...) is not the stage-1 model that made the shards in {facts.folder} "
                f"(digest {run.stage1_digest[:12]}..., recorded path {described.get('path')}); pass that checkpoint "
                "with --stage1, or re-run `gpf preprocess --stage1` with this one. (To start the peripheral "
                "from another model use --peripheral-weights.)")
        return Attention(attention_block(stage1, **settings), stage1, f"stage-1 model {path}")
    # the crops came from an ImageNet classifier
    backbone, weights = described.get("backbone"), described.get("weights")
    if cfg.stage1:
        raise Stage2Error(f"the shards in {facts.folder} were made with ImageNet attention "
                          f"({backbone}, weights {weights}), not a stage-1 model; "
                          "to start the peripheral from a stage-1 checkpoint pass it as --peripheral-weights")
    if not backbone or weights in (None, "none"):
        raise Stage2Error(
            f"the shards in {facts.folder} were made by a randomly initialised attention network "
            f"(backbone {backbone}, weights {weights}); a checkpoint could not "
            "reproduce their crops. Re-run preprocessing with --stage1 CKPT or --weights imagenet|PATH")
    from ..model.gpf import imagenet_classifier

    model = imagenet_classifier(backbone, weights=localize(weights))
    digest = state_dict_digest(model.state_dict())
    if run.attention_digest and digest != run.attention_digest:
        raise Stage2Error(f"the ImageNet classifier {backbone} ({weights}) has digest "
                          f"{digest[:12]}... here, but the shards in {facts.folder} were made with digest "
                          f"{run.attention_digest[:12]}... (other weights files?); a checkpoint could not "
                          "reproduce their crops. Re-run preprocessing with the weights at hand")
    return Attention(attention_block(model, **settings), None, f"ImageNet classifier {backbone} ({weights})")


def peripheral_backbone(cfg: Stage2Config, attention: Attention) -> str:
    """The peripheral subnet's backbone: ``--peripheral-backbone``, by default the network that made the
    shards' crops (the stage-1 model; paper IV-B: stage 2 keeps it, frozen). ``single`` has one column,
    the ``--backbone``."""
    if get_variant(cfg.variant).columns == 1:
        if cfg.peripheral_backbone and cfg.peripheral_backbone != cfg.backbone:
            raise Stage2Error(f"the {cfg.variant!r} variant has one column, --backbone {cfg.backbone}; "
                              f"--peripheral-backbone {cfg.peripheral_backbone} does not apply")
        return cfg.backbone
    if not get_variant(cfg.variant).frozen:      # Random-VGG16: both columns are the backbone, fine-tuned
        return cfg.peripheral_backbone or cfg.backbone
    return cfg.peripheral_backbone or attention.block.stage1_config.get("backbone") or cfg.backbone


def _fallback_weights(cfg: Stage2Config, name: str) -> str:
    """Initial peripheral weights when neither --peripheral-weights nor the attention model applies."""
    if name == cfg.backbone or cfg.weights in ("imagenet", "none"):
        return cfg.weights
    raise Stage2Error(f"the peripheral subnet {name} is not the network that made the shards, and --weights "
                      f"{cfg.weights} is a file for the foveal subnet {cfg.backbone}: pass --peripheral-weights "
                      "imagenet|PATH|none")


def init_peripheral(model, cfg: Stage2Config, attention: Attention, log) -> str:
    """Load the peripheral subnet's weights; returns a description of where they came from.

    ``--peripheral-weights`` if given; else the attention model's features when the peripheral is
    that network (the stage-1 model, or the ImageNet classifier that made the crops); else ``--weights``.
    """
    from ..model.backbones import create_backbone

    name = model.peripheral_spec.name
    if cfg.peripheral_weights:
        source = create_backbone(name, localize(cfg.peripheral_weights))
        model.peripheral.load_state_dict(source.features.state_dict())
        return f"--peripheral-weights {public_location_text(cfg.peripheral_weights)}"
    if not get_variant(cfg.variant).frozen:
        weights = _fallback_weights(cfg, name)
        model.peripheral.load_state_dict(create_backbone(name, localize(weights)).features.state_dict())
        return f"--weights {public_location_text(weights)} (the {cfg.variant!r} baseline fine-tunes its first column)"
    trained_on = attention.block.stage1_config.get("backbone")
    if trained_on == name:
        model.load_peripheral_from_stage1(attention.block.stage1_state_dict)
        return f"the attention model ({attention.description})"
    if cfg.stage1 and get_variant(cfg.variant).columns == 1:
        raise Stage2Error(f"--stage1 holds a {trained_on!r} peripheral but the {cfg.variant!r} column is --backbone "
                          f"{name!r}; train with --backbone {trained_on}, or start the column from "
                          "--peripheral-weights imagenet|PATH")
    weights = _fallback_weights(cfg, name)
    log(f"the network that made the shards is a {trained_on!r}, not {name!r}: the peripheral subnet starts "
        f"from --weights {public_location_text(weights)}")
    model.peripheral.load_state_dict(create_backbone(name, localize(weights)).features.state_dict())
    return f"--weights {public_location_text(weights)}"


def features_match(model, attention: Attention) -> bool:
    """True when the frozen peripheral equals the attention model's features (which computed pfeat)."""
    state = attention.block.stage1_state_dict
    mine = model.peripheral.state_dict()
    for key, value in mine.items():
        other = state.get("features." + key)
        if other is None or other.shape != value.shape or not torch.equal(other.to(value.device), value):
            return False
    return True


# ----------------------------------------------------------------------------- the task



class Stage2Task(Task):
    name = "stage2"

    def __init__(self, cfg: Stage2Config, ctx: DistContext, model, facts: ShardFacts, attention: Attention,
                 identity: dict, use_features: bool):
        from ..shards.reader import default_num_workers, list_shards, make_loader

        self.cfg, self.ctx, self.model, self.facts = cfg, ctx, model, facts
        self.attention, self.identity, self.use_features = attention, identity, use_features
        self.rank_batch = per_rank_batch_size(cfg.batch_size, ctx.world_size)
        self.channels_last = ctx.device.type == "cuda"
        table = get_variant(cfg.variant)
        self.first, self.second = table.first_view, table.member
        members = [] if use_features else [self.first]
        if self.second == "fovea":
            members.append("fovea")
        shards = as_location(cfg.shards)
        train_shards = [s for s in list_shards(shards, "train") if s.count > 0]
        if len(train_shards) < ctx.world_size:
            raise Stage2Error(f"{shards} has {len(train_shards)} training shard(s), fewer than the "
                              f"{ctx.world_size} processes; preprocess with a smaller --samples-per-shard")
        workers = cfg.workers
        if workers is None:
            workers = default_num_workers(len(train_shards), ctx.world_size, shuffle=True)
        # the reader needs world_size x workers non-empty shards; fewer workers only cost speed
        workers = min(workers, len(train_shards) // ctx.world_size)
        self.workers = workers
        common = dict(rank=ctx.rank, world_size=ctx.world_size, members=tuple(members),
                      random_crop_member=self.second == "rand", with_features=use_features,
                      pin_memory=ctx.device.type == "cuda", patches=int(self.second == "patch"),
                      cache_dir=cfg.cache_dir, cache_bytes=int(cfg.cache_max_gb * (1 << 30)))
        self.train_loader = make_loader(shards, "train", self.rank_batch, shuffle=True, seed=cfg.seed,
                                        epoch=0, num_workers=workers, **common)
        self.val_loader = make_loader(shards, "val", self.rank_batch, shuffle=False, seed=cfg.seed,
                                      epoch=0, num_workers=min(workers, 2), **common)
        self.train_samples = len(self.train_loader) * cfg.batch_size

    # -- data
    def train_batches(self, epoch: int):
        self.train_loader.set_epoch(epoch)
        return self.train_loader

    def steps_per_epoch(self) -> int:
        return len(self.train_loader)

    def val_batches(self):
        return self.val_loader

    # -- model
    def _forward(self, forward, batch):
        from ..model.geometry import fit_to_backbone

        device, model, fit = self.ctx.device, self.model, self.cfg.view_fit
        periph = feat = fovea = None
        if self.use_features:
            feat = batch["pfeat"].to(device, non_blocking=True)
        else:
            periph = images_to_device(fit_to_backbone(batch[self.first], model.peripheral_spec, fit), device,
                                      model.normalize_peripheral, self.channels_last)
        if self.second is not None:
            second = batch["patch"][:, 0] if self.second == "patch" else batch[self.second]
            fovea = images_to_device(fit_to_backbone(second, model.foveal_spec, fit), device,
                                     model.normalize_foveal, self.channels_last)
        logits = forward(periph=periph, fovea=fovea, periph_feat=feat)
        votes = batch["votes"].to(device, non_blocking=True)
        target = votes / votes.sum(dim=1, keepdim=True)
        return torch.softmax(logits.float(), dim=1), target

    def train_loss(self, forward, batch):
        from ..model.losses import emd_loss

        pred, target = self._forward(forward, batch)
        # No per-step validation (a device sync): the loop's NaN watch checks the loss. emd_loss
        # maps a NaN row to 0 (its safe root), so NaN predictions are carried into the loss
        # explicitly (0 * NaN = NaN; the gradient of this term is zero otherwise).
        loss = emd_loss(pred, target, r=self.cfg.emd_r, validate=False) + 0.0 * pred.sum()
        return loss, int(target.shape[0])

    def eval_outputs(self, forward, batch):
        pred, target = self._forward(forward, batch)
        return pred.cpu(), target.cpu()

    def val_metrics(self, predictions, targets) -> dict:
        from ..model.losses import emd_loss
        from ..model.metrics import evaluate

        if not bool(torch.isfinite(predictions).all()):
            return {"val_loss": math.nan}
        metrics = evaluate(predictions.numpy(), targets.numpy(), self.facts.threshold, list(self.facts.scores))
        out = {"val_loss": float(emd_loss(predictions, targets, r=self.cfg.emd_r))}
        for key in ("accuracy", "srcc", "lcc", "mae", "rmse", "emd"):
            value = metrics.get(key)
            out[key] = float(value) if value is not None else math.nan
        return out

    def checkpoint(self) -> Checkpoint:
        from ..model.checkpoint import stage2_checkpoint

        facts = self.facts
        checkpoint = stage2_checkpoint(self.model, self.attention.block, view_size=facts.view_size,
                                       threshold=facts.threshold, scores=list(facts.scores),
                                       extra_config={"dataset": facts.dataset, "view_fit": self.cfg.view_fit})
        checkpoint.dataset = {"name": facts.dataset, "scores": list(facts.scores), "threshold": facts.threshold,
                              "num_classes": facts.num_classes, "split_spec": facts.run.split_spec}
        folder = as_location(self.cfg.shards)
        checkpoint.shards = {"folder": str(folder.local.resolve() if folder.local else folder), **self.identity,
                             "run_format": MANIFEST_FORMAT, "features_used": self.use_features}
        return checkpoint


# ----------------------------------------------------------------------------- entry point

def _decide_features(cfg: Stage2Config, facts: ShardFacts, model, attention: Attention, log) -> bool:
    if cfg.use_features == "no":
        return False
    reasons = []
    if not facts.manifest.features:
        reasons.append("the shards hold no peripheral features (preprocess with --store-features)")
    elif not get_variant(cfg.variant).frozen:
        reasons.append(f"the {cfg.variant!r} variant fine-tunes its first column")
    elif cfg.train_peripheral:
        reasons.append("--train-peripheral changes the peripheral, so stored features go stale")
    elif facts.run.features_from != "jpeg":
        reasons.append("the stored features were computed from the peripheral views before their JPEG encode "
                       f"(manifest format {facts.manifest.format}), not from the views `gpf evaluate` decodes; "
                       "re-run `gpf preprocess --store-features` to store them from the decoded views")
    elif facts.run.view_fit != cfg.view_fit:
        reasons.append(f"the stored features were computed from views fitted by {facts.run.view_fit!r}, "
                       f"this run fits by {cfg.view_fit!r}")
    elif facts.run.features_digest and facts.run.features_digest != attention.block.stage1_digest:
        reasons.append("the stored features were computed by another network than the shards' attention model")
    elif model.peripheral_spec.name != attention.block.stage1_config.get("backbone"):
        reasons.append(f"the peripheral subnet ({model.peripheral_spec.name}) is not the network that computed "
                       f"the stored features ({attention.block.stage1_config.get('backbone')})")
    elif not features_match(model, attention):
        reasons.append("the frozen peripheral is not the network that computed the stored features "
                       "(start it from the stage-1 model that made the shards)")
    if not reasons:
        log("using the stored peripheral features (pfeat.npy): the peripheral forward is skipped")
        return True
    if cfg.use_features == "yes":
        raise Stage2Error(f"--use-features yes: {reasons[0]}")
    if facts.manifest.features:
        log(f"not using the stored peripheral features: {reasons[0]}")
    return False


def _refuse_damaged_shards(shard_dir, manifest: Manifest, cache_dir=None) -> None:
    """Never train on rotten bytes: every train/val tar must match the manifest's size and sha256 (at a URL:
    size and ETag now, the sha256 as each tar streams)."""
    from ..shards.verify import check_checksums

    problems = check_checksums(shard_dir, manifest, splits=("train", "val"), cache_dir=cache_dir)
    if problems:
        raise Stage2Error(f"{len(problems)} damaged shard(s), not training on them: {'; '.join(problems[:5])}. "
                          f"Run `gpf shards verify {shard_dir}` for the full list and rewrite them (delete "
                          "their stats files and rerun the same `gpf preprocess` command)")


def batch_size_that_fits(samples: int, world_size: int = 1) -> int:
    """A global batch size for a split of ``samples``: a power of two (rounded to a multiple of
    ``world_size``) giving at least two steps per epoch where the split allows."""
    target = samples // 2 if samples >= 2 * world_size else samples
    size = 1
    while size * 2 <= target:
        size *= 2
    return max(world_size, size // world_size * world_size)


def _refuse_batch_larger_than_split(cfg: Stage2Config, samples: int, world_size: int) -> None:
    """Training drops the last partial batch, so a split smaller than one batch gives no step at all:
    refuse it naming a ``--batch-size`` that works (not lowered silently: the batch is a hyperparameter)."""
    if samples >= cfg.batch_size:
        return
    fits = batch_size_that_fits(samples, world_size)
    most = samples // world_size * world_size
    processes = f", a multiple of the {world_size} processes" if world_size > 1 else ""
    raise Stage2Error(f"the shards in {as_location(cfg.shards)} hold {samples} training sample(s), fewer than one batch of "
                      f"--batch-size {cfg.batch_size} (training drops a partial batch, so no step could be "
                      f"taken): pass --batch-size {fits} ({samples // fits} step(s) per epoch), or any value up "
                      f"to {most}{processes}")


def train_stage2(cfg: Stage2Config, hooks=None) -> RunResult:
    """Train a stage-2 variant on shards; see the module doc."""
    from ..model.gpf import GPFNet
    from ..shards.manifest import read_manifest
    from .config import validate
    from .loop import Trainer
    from .run import run_context

    if cfg.resume:
        from .run import check_resume_stage

        check_resume_stage(cfg.resume, "stage2")   # a stage-1 run says so, before anything else
    validate(cfg)
    if not cfg.shards:
        raise Stage2Error("no shards: pass --shards DIR (made by `gpf preprocess`)")
    if not cfg.backbone:
        raise Stage2Error("no backbone: pass --backbone NAME (see `gpf models`)")
    from ..model.backbones import get_spec

    for name in (cfg.backbone, cfg.peripheral_backbone):
        if name:
            get_spec(name)      # an unknown name fails before the run folder is made
    shards = as_location(cfg.shards)
    manifest = read_manifest(shards)
    if not manifest.complete:
        raise Stage2Error(f"{shards}: preprocessing has not finished (manifest.json says complete: false); "
                          "rerun the same `gpf preprocess` command to finish it")
    _refuse_damaged_shards(shards, manifest, cfg.cache_dir)
    facts = ShardFacts.from_manifest(manifest, shards)
    identity = shards_identity(manifest)
    require_random_crops(cfg.variant, manifest.random_crops, f"the shards in {shards}")
    require_baseline_members(cfg.variant, manifest.run, f"the shards in {shards}")
    for split in ("train", "val"):
        if not facts.samples.get(split):
            raise Stage2Error(f"the shards in {shards} hold no {split!r} samples; preprocess with --split all")
    if cfg.workers is None:   # fixed now and saved: the data order of an epoch depends on it
        from ..shards.reader import default_num_workers, list_shards

        trains = [s for s in list_shards(shards, "train") if s.count > 0]
        cfg.workers = default_num_workers(len(trains), int(os.environ.get("WORLD_SIZE", "1")), shuffle=True)
    def check_resume(state: Checkpoint, run_dir: Path) -> None:
        check_fit(state, facts.run, model=f"the run in {run_dir}", data=f"the shards in {shards}",
                  mismatch_option=None)
        diffs = manifest_differences(saved_identity(state), identity)
        if diffs:
            raise Stage2Error(f"cannot resume {run_dir}: the shards in {shards} differ from the ones "
                              f"it was trained on ({'; '.join(diffs[:8])}). Resume with the original shards "
                              "or start a new run")

    with run_context(cfg, "stage2", check_resume=check_resume) as run:
        ctx, log, state = run.ctx, run.log, run.resume_state
        attention = resolve_attention(cfg, facts, state)
        # after the checkpoints are known to fit (a wrong --stage1 is the bigger mistake), before any work
        _refuse_batch_larger_than_split(cfg, facts.samples["train"], ctx.world_size)
        seed_init(cfg.seed)
        model = GPFNet(cfg.backbone, cfg.variant, facts.num_classes,
                       weights="none" if state is not None else localize(cfg.weights),
                       peripheral_backbone=peripheral_backbone(cfg, attention), peripheral_weights="none",
                       branch_width=cfg.branch_width, fusion_width=cfg.fusion_width, gif_hidden=cfg.gif_width,
                       dropout=float(cfg.dropout))
        if state is None:
            log(f"peripheral from {init_peripheral(model, cfg, attention, log)}; attention model: "
                f"{attention.description}")
        if not cfg.train_peripheral and get_variant(cfg.variant).frozen:
            model.freeze_peripheral()
        if state is not None:
            model.load_state_dict(state.state_dict)
        use_features = _decide_features(cfg, facts, model, attention, log)
        model.to(ctx.device)
        if ctx.device.type == "cuda":
            model.to(memory_format=torch.channels_last)
        task = Stage2Task(cfg, ctx, model, facts, attention, identity, use_features)
        return Trainer(task, cfg, ctx, run.run_dir, hooks=hooks, log=log, resume_state=state).fit()
