"""Fixture builders shared by the training tests (no tests here).

Everything is written in the real formats: an AVA folder (``AVA.txt`` with 15
columns, ``images/{id}.jpg``, ``aesthetics_image_lists/generic_test.jpgl``), a
stage-1 checkpoint made with ``gpf.model.checkpoint.stage1_checkpoint``, and shards
written with ``gpf.shards.writer`` plus ``manifest.json`` — the pooled peripheral
features computed here the way preprocessing defines them (mean over the
feature map of the stage-1 model's ``features`` on the normalised view).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SCORES = list(range(1, 11))
VIEW = 32
FOVEA = 32
PERIPH_SHAPES = [(24, 32), (32, 24)]          # (H, W) of stored peripheral views
TRAIN_COUNTS = (9, 8, 7)                       # odd number of shards, uneven sizes
VAL_COUNTS = (5, 4)
SMALL_HEAD = {"branch_width": 16, "fusion_width": 16, "dropout": 0.0}


def jpeg_bytes(array: np.ndarray, quality: int = 90) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, "JPEG", quality=quality)
    return out.getvalue()


def votes_for(high: bool) -> list[int]:
    """A peaked histogram: mean 7.4 (high) or 2.6 (low) on AVA's 1..10."""
    votes = [0] * 10
    votes[7 if high else 1] = 8
    votes[4] = 2
    return votes


def mean_of(votes) -> float:
    return float(np.dot(votes, SCORES) / np.sum(votes))


def write_ava(root: Path, n: int = 24, n_test: int = 4, seed: int = 0,
              sizes=((64, 48), (48, 64), (80, 40))) -> dict:
    """An AVA folder of ``n`` JPEGs; even images are 'high' (reddish), odd ones 'low' (bluish).

    Returns ``{id: votes}``. The last ``n_test`` ids form the test list.
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "aesthetics_image_lists").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    lines, votes_of = [], {}
    for i in range(n):
        image_id = str(700000 + i)
        width, height = sizes[i % len(sizes)]
        high = i % 2 == 0
        pixels = rng.integers(0, 80, (height, width, 3), dtype=np.uint8)
        pixels[..., 0 if high else 2] += 150
        (root / "images" / f"{image_id}.jpg").write_bytes(jpeg_bytes(pixels))
        votes = votes_for(high)
        votes_of[image_id] = votes
        lines.append(f"{i + 1} {image_id} {' '.join(map(str, votes))} 0 0 {1 + i % 3}")
    (root / "AVA.txt").write_text("\n".join(lines) + "\n")
    test_ids = [str(700000 + i) for i in range(n - n_test, n)]
    (root / "aesthetics_image_lists" / "generic_test.jpgl").write_text("\n".join(test_ids) + "\n")
    return votes_of


def stage1_checkpoint(path: Path, backbone: str = "tiny", seed: int = 0, view_size: int = VIEW) -> Path:
    """A (randomly initialised) stage-1 checkpoint in the gpf-stage1 format."""
    from gpf.model import checkpoint
    from gpf.model.gpf import PeripheralNet

    torch.manual_seed(seed)
    model = PeripheralNet(backbone, num_classes=2)
    checkpoint.save_checkpoint(path, checkpoint.stage1_checkpoint(model, view_size=view_size, threshold=5.0,
                                                                  scores=[float(s) for s in SCORES]))
    return Path(path)


def pooled_features(model, periph_uint8: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        x = model.normalize(periph_uint8)
        return model.features(x).float().mean(dim=(2, 3)).numpy().astype(np.float16)


def write_shards(out: Path, stage1_path: Path, *, random_crops: int = 2, features: bool = True,
                 train_counts=TRAIN_COUNTS, val_counts=VAL_COUNTS, seed: int = 0,
                 view_size: int = VIEW, scores=SCORES) -> dict:
    """Shards whose score depends on a colour cue in both views. Returns ``{key: votes}``."""
    from gpf.model.checkpoint import load_checkpoint, model_from_checkpoint, state_dict_digest
    from gpf.shards.layout import rand_member
    from gpf.shards.manifest import RunFields, write_manifest
    from gpf.shards.writer import write_shard

    out = Path(out)
    payload = load_checkpoint(stage1_path, expect="stage1")
    model = model_from_checkpoint(payload).eval()
    digest = state_dict_digest(payload.state_dict)
    rng = np.random.default_rng(seed)
    truth = {}
    for split, counts in (("train", train_counts), ("val", val_counts)):
        serial = 0
        for index, count in enumerate(counts):
            samples, rows = [], []
            for _ in range(count):
                key = f"{split}{serial:04d}"
                high = serial % 2 == 0
                height, width = PERIPH_SHAPES[(serial // 2) % 2]
                serial += 1
                periph = rng.integers(0, 80, (height, width, 3), dtype=np.uint8)
                periph[..., 0 if high else 2] += 150
                fovea = rng.integers(0, 80, (FOVEA, FOVEA, 3), dtype=np.uint8)
                fovea[..., 0 if high else 2] += 150
                votes = votes_for(high)
                periph_jpg = jpeg_bytes(periph)
                sample = {"key": key, "periph.jpg": periph_jpg, "fovea.jpg": jpeg_bytes(fovea),
                          "attn.npy": np.ones((height // 8, width // 8), np.float16),
                          "json": {"id": key, "votes": votes, "box": [0, 0, width, height]}}
                for k in range(random_crops):
                    crop = rng.integers(0, 80, (FOVEA, FOVEA, 3), dtype=np.uint8)
                    crop[..., 0 if high else 2] += 150
                    sample[rand_member(k)] = jpeg_bytes(crop)
                if features:
                    decoded = np.asarray(Image.open(io.BytesIO(periph_jpg)).convert("RGB")).copy()
                    tensor = torch.from_numpy(decoded).permute(2, 0, 1)[None]
                    sample["pfeat.npy"] = pooled_features(model, tensor)[0]
                samples.append(sample)
                rows.append({"id": key, "votes": votes, "status": "ok"})
                truth[key] = votes
            write_shard(out, split, index, samples, rows)
    config = {"dataset": "ava", "stage1": str(stage1_path), "stage1_digest": digest, "backbone": None,
              "weights": "imagenet", "tau": 0.7, "view_size": view_size, "eb_layer": "features.pool2",
              "random_crops": random_crops, "store_features": features, "seed": seed}
    run = RunFields(dataset="ava", scores=tuple(float(s) for s in scores), threshold=5.0, view_size=view_size,
                    tau=0.7, eb_layer="features.pool2", contrastive=False, stage1_digest=digest,
                    attention_model={"kind": "stage1", "path": str(stage1_path), "digest": digest,
                                     "backbone": model.spec.name},
                    features_digest=digest if features else None, config=config,
                    environment={"torch": str(torch.__version__)}, view_round=8, view_min_side=1,
                    view_fit="pad", features_from="jpeg" if features else None, jpeg_quality=90,
                    jpeg_subsampling="4:2:0")
    write_manifest(out, run)
    return truth


def stage2_config(data: dict, out, **kw):
    """A small stage-2 config on ``data['shards']`` (tiny backbone, small head, CPU-friendly); ``kw`` override."""
    from gpf.train.config import Stage2Config

    values = dict(out=None if out is None else str(out), shards=str(data["shards"]), backbone="tiny", weights="none",
                  variant="gpf", epochs=3, batch_size=4, lr=0.05, workers=0, progress=False, tensorboard=False,
                  **SMALL_HEAD)
    values.update(kw)
    return Stage2Config(**values)


def state_of(path) -> dict:
    from gpf.model.checkpoint import load_checkpoint

    return load_checkpoint(path).state_dict
