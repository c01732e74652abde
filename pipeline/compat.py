"""Can this model use these shards? One answer for ``gpf train stage2`` (resume), ``gpf evaluate`` and ``gpf predict``.

A stage-2 model fits data made with :class:`~gpf.shards.manifest.RunFields`
when it predicts the same number of score buckets (N), was trained on views of
the same size, and — for the variants whose foveal view is the attention crop
(``gpf``, ``pf``) — its embedded attention model is the one that made the crops:
the same weights (digest), tau, EB layer and contrastive flag (paper Eq. 4: the
crop is a function of all four). Other bucket scores or another threshold only
change how predictions are read, so they are warnings, and the data's values win.
The ``random-frozen`` variant needs stored random crops; ``single`` and ``random``
need the warped photo (``warp.jpg``) and ``random`` the original-resolution photo
(``orig.jpg``).

``gpf predict`` has no shards: it checks a checkpoint against the record of the
shards it was trained on (kept in the checkpoint), which catches a checkpoint
whose embedded attention model is not the one its crops came from, and takes
from that record how the shards made their views (:func:`shard_geometry`,
:func:`attention_fit`, :func:`shard_jpeg`), so it makes them the same way.

All three also check that this installation rebuilds the checkpoint's two
subnets as they were saved (format 3 records each one's backbone, C,
mean/std and minimum input, and the timm version of a timm subnet): a backbone
it does not know or builds otherwise is refused naming the timm version to
install; another timm version that builds the same subnet is a warning.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

from ..errors import GPFError
from ..model.checkpoint import Checkpoint
from ..model.geometry import ViewGeometry
from ..model.gpf import variant_of
from ..shards.manifest import RunFields
from ..vocabulary import (JPEG_CHROMA_SUBSAMPLING, JPEG_QUALITY, VARIANTS, VIEW_FIT, VIEW_ROUND, get_variant)


class FitError(GPFError, ValueError):
    """A model that cannot use these shards; the message names both and what to do."""


@dataclass
class Fit:
    """The warnings of a model that fits (scale differences the data's values override)."""
    warnings: list[str] = field(default_factory=list)


def missing_scale(run: RunFields) -> list[str]:
    """The run fields without which nothing can be trained or evaluated on the shards."""
    return [name for name in ("scores", "threshold", "view_size") if getattr(run, name) is None]


def require_scale(run: RunFields, data: str) -> None:
    """Refuse shards whose manifest lacks the score scale or the view size (e.g. rebuilt without its run fields)."""
    missing = missing_scale(run)
    if missing:
        raise FitError(f"{data}: the manifest lacks {', '.join(missing)}, so nothing can be trained or evaluated "
                       "on these shards; re-run `gpf preprocess` into a new --out folder")


def require_random_crops(variant: str, random_crops: int, data: str) -> None:
    """Refuse a variant that reads stored random crops (``random``) on shards without them."""
    if get_variant(variant).needs_random_crops and random_crops < 1:
        raise FitError(f"the {variant!r} variant needs the random crops stored in shards, but none are stored in "
                       f"{data}; make them with `gpf preprocess ... --random-crops K` (e.g. K = 5) into a new "
                       "--out folder")


def require_baseline_members(variant: str, run: RunFields, data: str) -> None:
    """Refuse a variant that reads ``warp.jpg`` / ``orig.jpg`` on shards without them, naming the
    preprocess option that stores them (Table I baselines as the paper ran them)."""
    table = get_variant(variant)
    lacking = [option for needed, stored, option in
               ((table.needs_warped, run.warped, "--store-warped"), (table.needs_original, run.original,
                                                                      "--store-original")) if needed and not stored]
    if lacking:
        frozen = f"{variant}-frozen"
        also = f" (or train {frozen!r}, the frozen-column variant these shards suit)" if frozen in VARIANTS else ""
        raise FitError(f"the {variant!r} variant needs {' and '.join(lacking)} members that {data} do not store; "
                       f"re-run `gpf preprocess ... {' '.join(lacking)}` into a new --out folder{also}")


def attention_differences(checkpoint: Checkpoint, run: RunFields) -> list[str]:
    """How the checkpoint's embedded attention model differs from the one that made the crops of ``run``."""
    block = checkpoint.attention
    if block is None:
        return ["no embedded attention model"]
    diffs = []
    made_by = run.attention_digest
    if made_by and block.stage1_digest != made_by:
        diffs.append(f"attention model digest {block.stage1_digest[:12]}... vs the shards' {made_by[:12]}...")
    if run.tau is not None and not math.isclose(block.tau, run.tau):
        diffs.append(f"tau {block.tau} vs {run.tau}")
    if run.eb_layer and block.eb_layer != run.eb_layer:
        diffs.append(f"EB layer {block.eb_layer!r} vs {run.eb_layer!r}")
    if run.contrastive is not None and block.contrastive != run.contrastive:
        diffs.append(f"contrastive {block.contrastive} vs {run.contrastive}")
    return diffs


def subnet_differences(checkpoint: Checkpoint) -> tuple[list[str], list[str]]:
    """(problems, warnings) of rebuilding the subnets recorded in a stage-2 ``checkpoint`` here."""
    from ..model.backbones import get_spec, record_differences

    problems, warnings = [], []
    recorded = checkpoint.model_config.get("subnets")
    for column, record in (recorded.items() if isinstance(recorded, Mapping) else ()):
        if not isinstance(record, Mapping) or not isinstance(record.get("backbone"), str):
            continue
        name, version = record["backbone"], record.get("timm_version")
        made_with = f" (made with timm {version}: install timm=={version})" if version else ""
        try:
            spec = get_spec(name)
        except GPFError as exc:
            problems.append(f"its {column} subnet {name} cannot be built here{made_with}: {exc}")
            continue
        diffs = record_differences(record, spec)
        if diffs:
            problems.append(f"its {column} subnet {name} was saved as {'; '.join(diffs)}{made_with}")
        elif version and spec.record().get("timm_version") != version:
            warnings.append(f"its {column} subnet {name} was made with timm {version}, this is timm "
                            f"{spec.record().get('timm_version')} (it builds the same C, mean/std and minimum input)")
    return problems, warnings


def _refuse_subnets(checkpoint: Checkpoint, model: str) -> list[str]:
    """Raise :class:`FitError` for subnets this installation cannot rebuild; return the warnings."""
    problems, warnings = subnet_differences(checkpoint)
    if problems:
        raise FitError(f"{model}: {'; '.join(problems)}")
    return warnings


def check_fit(checkpoint: Checkpoint, run: RunFields, *, model: str, data: str, random_crops: int | None = None,
              allow_attention_mismatch: bool = False, mismatch_option: str | None = "--allow-attention-mismatch") -> Fit:
    """Refuse (:class:`FitError`) a stage-2 ``checkpoint`` that cannot use data made with ``run``.

    ``model`` and ``data`` name both sides in messages (a file, a run folder,
    ``the shards in DIR``); ``random_crops`` is the number of random crops the
    data stores (None: not checked). ``allow_attention_mismatch`` turns a
    different attention model into a warning; ``mismatch_option`` is the option
    that does so where the caller has one (None: the refusal names none).
    Attention settings the data does not record cannot be checked: a warning says which.
    """
    require_scale(run, data)
    fit = Fit(warnings=_refuse_subnets(checkpoint, model))
    if checkpoint.num_classes != len(run.scores):
        raise FitError(f"{model} predicts N = {checkpoint.num_classes} score buckets, but {data} has "
                       f"N = {len(run.scores)} (scores {list(run.scores)}); use shards of the dataset the "
                       "checkpoint was trained on, or train a new model on these shards")
    view = checkpoint.view_size
    if view is not None and view != run.view_size:
        raise FitError(f"{model} was trained on views of {view} px, but {data} was made with --view-size "
                       f"{run.view_size}; preprocess with --view-size {view}, or train a new model on these shards")
    if any(not math.isclose(a, b) for a, b in zip(checkpoint.scores, run.scores)):
        fit.warnings.append(f"the checkpoint's bucket scores {list(checkpoint.scores)} differ from "
                            f"{list(run.scores)} of {data}; the data's are used")
    if checkpoint.threshold is not None and not math.isclose(checkpoint.threshold, run.threshold):
        fit.warnings.append(f"the checkpoint's threshold {checkpoint.threshold:g} differs from {run.threshold:g} "
                            f"of {data}; the data's is used")
    variant = get_variant(variant_of(checkpoint.model_config))
    if variant.needs_attention:
        unrecorded = run.attention_unrecorded
        if unrecorded:
            fit.warnings.append(f"{data} does not record the attention model's {', '.join(unrecorded)}: "
                                "whether it made these crops cannot be checked")
        diffs = attention_differences(checkpoint, run)
        if diffs:
            text = (f"the attention model embedded in {model} did not make the crops of {data} "
                    f"({'; '.join(diffs)})")
            if not allow_attention_mismatch:
                escape = f", or pass {mismatch_option} to go on anyway" if mismatch_option else ""
                raise FitError(f"{text}: its numbers would not be what `gpf predict` gives with this checkpoint. "
                               f"Use shards made with its stage-1 model{escape}")
            fit.warnings.append(text)
    if random_crops is not None:
        require_random_crops(variant.name, random_crops, data)
    require_baseline_members(variant.name, run, data)
    return fit


def trained_on(checkpoint: Checkpoint) -> RunFields | None:
    """The run fields of the shards a stage-2 checkpoint was trained on, as it recorded them (None if absent),
    read in the manifest format the record was written in."""
    record = checkpoint.shards_run
    if record is None:
        return None
    run, version = record
    return RunFields.from_dict(run, f"{checkpoint.origin}: its record of the shards it was trained on", version)


def check_self_consistent(checkpoint: Checkpoint, source: str) -> None:
    """``gpf predict``: refuse a checkpoint whose embedded attention model is not the one that made the crops
    it was trained on (per its own record of those shards): its scores would come from other crops;
    and one whose subnets this installation cannot rebuild as they were saved."""
    _refuse_subnets(checkpoint, source)
    run = trained_on(checkpoint)
    if run is None or not get_variant(variant_of(checkpoint.model_config)).needs_attention:
        return
    diffs = attention_differences(checkpoint, run)
    if diffs:
        raise FitError(f"{source}: the attention model it embeds did not make the crops it was trained on "
                       f"({'; '.join(diffs)}); the file is damaged or was edited: use the checkpoint "
                       "`gpf train stage2` wrote")


# ----------------------------------------------------------------------------- how shards made their views

def shard_geometry(run: RunFields | None, view_size: int, attention_spec) -> ViewGeometry:
    """How the shards of ``run`` made their peripheral views, for a photo ``gpf predict`` sees.

    Format 3 records the rule (``view_round``, ``view_min_side``); formats 1/2
    rounded to the attention backbone's stride and clamped to its minimum input
    (``attention_spec``: ``stride``, ``min_input``); without a record at all (a
    checkpoint not made by ``gpf train stage2``) the current rule applies.
    """
    if run is None:
        return ViewGeometry(int(view_size), VIEW_ROUND, 1)
    if run.view_round is None:
        return ViewGeometry.legacy(int(view_size), attention_spec.stride, attention_spec.min_input)
    return ViewGeometry(int(view_size), run.view_round, run.view_min_side or 1)


def attention_fit(run: RunFields | None) -> str:
    """How the attention network of ``run`` took views below its minimum input (formats 1/2 and no record: the
    default; their views never needed it, being clamped to that minimum)."""
    return (run.view_fit if run is not None else None) or VIEW_FIT


def shard_jpeg(run: RunFields | None) -> tuple[int, str]:
    """(quality, chroma subsampling) the stored views of ``run`` were encoded with (the defaults without a record)."""
    if run is None:
        return JPEG_QUALITY, JPEG_CHROMA_SUBSAMPLING
    return run.jpeg_quality or JPEG_QUALITY, run.jpeg_subsampling or JPEG_CHROMA_SUBSAMPLING


def checkpoint_location(where, prefer: str = "best"):
    """The local file of a checkpoint given as a file or run folder, local or at a URL (a URL is fetched
    once per process by :func:`gpf.shards.storage.local_file`); see
    :func:`gpf.model.checkpoint.resolve_checkpoint_path`. Name it in messages and records with
    :func:`gpf.shards.storage.public_url` of ``where``, not this path."""
    from ..model.checkpoint import resolve_checkpoint_path
    from ..shards.storage import local_file

    names = ("best.pt", "last.pt") if prefer == "best" else ("last.pt", "best.pt")
    return resolve_checkpoint_path(local_file(where, within=names), prefer)
