"""The evaluation fixture shared by the evaluate, predict and attention tests.

A tiny AVA folder (real formats: AVA.txt with 15 columns, tags.txt, generic
and category test lists, JPEGs including one with an EXIF rotation), a stage-1
checkpoint, shards made by `run_preprocess`, and stage-2 checkpoints with
random weights, built once per session (:func:`build_eval_data`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

SCORES = [float(s) for s in range(1, 11)]
VIEW = 64
N_IMAGES = 20
TEST_IDS = [str(800000 + i) for i in range(6, N_IMAGES)]          # 14 test images, 6 train
CATEGORIES = {"animal": TEST_IDS[:5], "landscape": TEST_IDS[5:9]}  # the other 5 have no category
EXIF_ID = str(800000 + 7)                                          # stored sideways, EXIF orientation 6
TAG_NAMES = {1: "Abstract", 2: "Nature", 3: "Portraiture"}


# ----------------------------------------------------------------------------- fixture builders

def _votes(rng: np.random.Generator, peak: int) -> list[int]:
    votes = rng.integers(0, 4, 10)
    votes[peak] += 12
    votes[max(0, peak - 1)] += 4
    return [int(v) for v in votes]


def write_ava(root: Path, seed: int = 0) -> dict:
    """An AVA folder of N_IMAGES noisy colour photos whose votes follow their redness."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "aesthetics_image_lists").mkdir()
    sizes = [(96, 64), (64, 96), (120, 60), (80, 80), (100, 72)]
    lines = []
    for i in range(N_IMAGES):
        image_id = str(800000 + i)
        width, height = sizes[i % len(sizes)]
        red = i % 4
        pixels = rng.integers(0, 90, (height, width, 3), dtype=np.uint8)
        pixels[..., 0] += np.uint8(40 * red)
        pixels[..., 2] += np.uint8(40 * (3 - red))
        # a bright blob so attention has a place to look
        cy, cx = rng.integers(height // 4, 3 * height // 4), rng.integers(width // 4, 3 * width // 4)
        pixels[max(0, cy - 8):cy + 8, max(0, cx - 8):cx + 8] = 240
        path = root / "images" / f"{image_id}.jpg"
        if image_id == EXIF_ID:
            exif = Image.Exif()
            exif[0x0112] = 6   # stored rotated; viewers turn it 90 degrees clockwise
            Image.fromarray(np.rot90(pixels, 1).copy()).save(path, "JPEG", quality=92, exif=exif)
        else:
            Image.fromarray(pixels).save(path, "JPEG", quality=92)
        tags = (1 + i % 3, 0 if i % 2 else 1 + (i + 1) % 3)
        votes = _votes(rng, 2 + 2 * red + int(rng.integers(0, 2)))
        lines.append(f"{i + 1} {image_id} {' '.join(map(str, votes))} {tags[0]} {tags[1]} {100 + i}")
    (root / "AVA.txt").write_text("\n".join(lines) + "\n")
    (root / "tags.txt").write_text("".join(f"{k} {v}\n" for k, v in TAG_NAMES.items()))
    lists = root / "aesthetics_image_lists"
    (lists / "generic_test.jpgl").write_text("\n".join(TEST_IDS) + "\n")
    for name, ids in CATEGORIES.items():
        (lists / f"{name}_test.jpgl").write_text("\n".join(ids) + "\n")
    return {"root": root}


def save_stage1(path: Path, seed: int = 0) -> Path:
    from gpf.model.checkpoint import save_checkpoint, stage1_checkpoint
    from gpf.model.gpf import PeripheralNet

    torch.manual_seed(seed)
    save_checkpoint(path, stage1_checkpoint(PeripheralNet("tiny"), view_size=VIEW, threshold=5.0, scores=SCORES))
    return path


def make_stage2(path: Path, stage1: Path, variant: str = "gpf", *, eb_layer: str, num_classes: int = 10,
                view_size: int = VIEW, tau: float = 0.7, seed: int = 1, sharpen: float = 30.0) -> Path:
    """A stage-2 checkpoint with random weights; the classifier is scaled up so that the
    predicted distribution is peaked and depends clearly on the input."""
    from gpf.model.checkpoint import attention_block, load_checkpoint, save_checkpoint, stage2_checkpoint
    from gpf.model.gpf import GPFNet

    torch.manual_seed(seed)
    model = GPFNet("tiny", variant, num_classes=num_classes, branch_width=16, fusion_width=32)
    with torch.no_grad():
        model.classifier.weight.mul_(sharpen)
    block = attention_block(load_checkpoint(stage1, expect="stage1"), tau=tau, eb_layer=eb_layer,
                            contrastive=False, view_size=view_size)
    save_checkpoint(path, stage2_checkpoint(model, block, view_size=view_size, threshold=5.0,
                                         scores=[float(s) for s in range(1, num_classes + 1)]))
    return path


def build_eval_data(tmp_path_factory) -> dict:
    """Build (once per session, shared by the three test files) the AVA folder, shards and checkpoints."""
    from gpf.pipeline.preprocess import PreprocessConfig, run_preprocess

    base = tmp_path_factory.getbasetemp() / "gpf_eval_data"
    data = {"base": base, "ava": base / "ava", "stage1": base / "stage1.pt", "shards": base / "shards",
            "gpf": base / "gpf.pt", "random": base / "random.pt", "single": base / "single.pt",
            "random-paper": base / "random-paper.pt", "single-paper": base / "single-paper.pt"}
    if (base / "done").exists():
        return data
    base.mkdir()
    write_ava(data["ava"])
    save_stage1(data["stage1"])
    run_preprocess(PreprocessConfig(dataset="ava", root=str(data["ava"]), out=str(data["shards"]),
                                    stage1=str(data["stage1"]), view_size=VIEW, samples_per_shard=4,
                                    random_crops=2, workers=2, batch_size=8, progress=False,
                                    store_warped=True, store_original=True))
    from gpf.shards.manifest import read_manifest

    eb_layer = read_manifest(data["shards"]).run.eb_layer
    # "random" / "single": the frozen-column variants; "*-paper": the Table I baselines as the paper ran them
    for key, variant in (("gpf", "gpf"), ("random", "random-frozen"), ("single", "single-frozen"),
                         ("random-paper", "random"), ("single-paper", "single")):
        make_stage2(data[key], data["stage1"], variant, eb_layer=eb_layer)
    (base / "done").write_text("ok")
    return data


def predict_results_of(scorer, evaluation, images: Path, tolerance: float, batch_size: int = 4) -> dict:
    """``scorer``'s results on the photos ``images/{id}.jpg`` of an ``EvaluationResult``, each checked to
    equal evaluate's mean score and distribution within ``tolerance``; id -> result."""
    paths = [images / f"{image_id}.jpg" for image_id in evaluation.ids]
    results = {r.id: r for r in scorer.score_many(paths, batch_size=batch_size)}
    for k, image_id in enumerate(evaluation.ids):
        result = results[image_id]
        assert result.ok, (image_id, result.error)
        assert abs(result.mean - evaluation.pred_mean[k]) <= tolerance, (image_id, result.mean, evaluation.pred_mean[k])
        np.testing.assert_allclose(result.distribution, evaluation.pred_dist[k], atol=tolerance)
    return results
