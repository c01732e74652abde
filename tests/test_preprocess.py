"""gpf preprocess: shards, Parquet, resume, ranks, bad images (on tiny AVA folders built here)."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from helpers.ava import make_ava, photo_like
from gpf.cli.main import cli
from gpf.model.checkpoint import load_checkpoint, save_checkpoint, stage1_checkpoint
from gpf.model.boxsearch import best_box
from gpf.model.gpf import PeripheralNet
from gpf.pipeline.preprocess import PreprocessConfig, PreprocessError, run_preprocess
from gpf.pipeline.sources import load_ava
from gpf.shards.manifest import MANIFEST_FORMAT, read_manifest

VIEW = 64


@pytest.fixture(scope="module")
def ava_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ava")
    make_ava(root, n=24)
    return root


@pytest.fixture(scope="module")
def stage1_ckpt(tmp_path_factory, ava_root) -> Path:
    torch.manual_seed(0)
    model = PeripheralNet("tiny", num_classes=2)
    payload = stage1_checkpoint(model, view_size=VIEW, threshold=5.0, scores=list(range(1, 11)))
    payload.dataset = {"name": "ava", "split_spec": load_ava(ava_root).split_spec}
    path = tmp_path_factory.mktemp("stage1") / "best.pt"
    save_checkpoint(path, payload)
    return path


def _config(root, out, stage1, **kw) -> PreprocessConfig:
    base = dict(dataset="ava", root=str(root), out=str(out), stage1=str(stage1), view_size=VIEW,
                samples_per_shard=5, batch_size=3, workers=2, progress=False)
    base.update(kw)
    return PreprocessConfig(**base)


def _shard_bytes(out: Path) -> dict[str, bytes]:
    names = sorted(out.glob("*.tar")) + sorted((out / "meta").glob("*.parquet"))
    return {p.name: p.read_bytes() for p in names}


def _samples(tar_path: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(tar_path) as tar:
        for member in tar.getmembers():
            key, _, ext = member.name.partition(".")
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, ava_root, stage1_ckpt) -> Path:
    out = tmp_path_factory.mktemp("clean")
    summary = run_preprocess(_config(ava_root, out, stage1_ckpt, random_crops=1, store_features=True))
    assert summary.counts == {"ok": 24}
    return out


def test_shards_parquet_and_manifest_written(clean_run, stage1_ckpt):
    table = pq.read_table(clean_run / "meta").to_pandas()
    assert len(table) == 24 and table["id"].is_unique
    assert set(table["status"]) == {"ok"}
    manifest = read_manifest(clean_run)
    assert manifest.format == MANIFEST_FORMAT and manifest.complete
    assert sum(entry.count for entry in manifest.shards) == 24
    assert manifest.random_crops == 1 and manifest.features
    run = manifest.run
    assert run.view_size == VIEW and run.tau == 0.7 and run.contrastive is False
    digest = load_checkpoint(stage1_ckpt).digest
    assert run.stage1_digest == digest and run.attention_digest == digest
    assert run.attention_model["kind"] == "stage1" and run.features_digest == digest
    assert run.split_spec
    assert (run.view_round, run.view_min_side, run.view_fit) == (8, 1, "pad")      # the rule the views follow
    assert (run.features_from, run.jpeg_quality, run.jpeg_subsampling) == ("jpeg", 95, "4:2:0")
    assert set(table["split"]) == {"train", "val", "test"}
    result = CliRunner().invoke(cli, ["shards", "verify", str(clean_run)])
    assert result.exit_code == 0, result.output


def test_stored_features_are_those_of_the_decoded_jpeg_view(clean_run, stage1_ckpt):
    """pfeat.npy = the stage-1 trunk's pooled features of periph.jpg as the shard reader decodes it
    (the reference computes them by hand), not of the pixels before the encode."""
    from gpf.model.checkpoint import model_from_checkpoint
    from gpf.shards.reader import decode_jpegs_uint8

    model = model_from_checkpoint(stage1_ckpt)
    closer = 0
    for tar_path in sorted(clean_run.glob("*.tar"))[:2]:
        for key, members in _samples(tar_path).items():
            stored = np.load(io.BytesIO(members["pfeat.npy"]), allow_pickle=False).astype(np.float32)
            decoded = decode_jpegs_uint8([members["periph.jpg"]], [key])[0][None]
            with torch.no_grad():
                expected = model.features(model.normalize(decoded)).mean(dim=(2, 3))[0].numpy()
            np.testing.assert_allclose(stored, expected, rtol=1e-3, atol=1e-4)   # float16; pixels: 2e-3+ off
            closer += 1
    assert closer >= 5


def test_members_decode_and_boxes_hold_tau(clean_run):
    table = pq.read_table(clean_run / "meta").to_pandas().set_index("key")
    seen = 0
    for tar_path in sorted(clean_run.glob("*.tar")):
        for key, members in _samples(tar_path).items():
            row = table.loc[key]
            meta = json.loads(members["json"])
            assert meta["id"] == row["id"]
            periph = Image.open(io.BytesIO(members["periph.jpg"]))
            fovea = Image.open(io.BytesIO(members["fovea.jpg"]))
            rand = Image.open(io.BytesIO(members["rand0.jpg"]))
            assert max(periph.size) == VIEW and fovea.size == (VIEW, VIEW) == rand.size
            attn = np.load(io.BytesIO(members["attn.npy"]), allow_pickle=False)
            assert attn.dtype == np.float16 and attn.ndim == 2
            feat = np.load(io.BytesIO(members["pfeat.npy"]), allow_pickle=False)
            assert feat.ndim == 1 and feat.dtype == np.float16
            x0, y0, x1, y1 = (int(row[c]) for c in ("x0", "y0", "x1", "y1"))
            assert 0 <= x0 < x1 <= row["width"] and 0 <= y0 < y1 <= row["height"]
            assert meta["box"] == [x0, y0, x1, y1]
            assert row["attn_fraction"] >= 0.7 - 1e-6
            # Independent check: the stored map, upsampled to the view, re-searched, holds tau.
            up = torch.nn.functional.interpolate(torch.from_numpy(attn.astype(np.float32))[None, None],
                                                 size=periph.size[::-1], mode="bicubic",
                                                 align_corners=False)[0, 0].clamp_min(0).numpy()
            by0, bx0, by1, bx1 = best_box(up, 0.7)
            assert up[by0:by1, bx0:bx1].sum() >= 0.7 * up.sum() - 1e-3
            seen += 1
    assert seen == 24


def test_rerun_redoes_only_the_unfinished_shard_byte_identical(tmp_path, ava_root, stage1_ckpt, clean_run):
    out = tmp_path / "out"
    cfg = dict(random_crops=1, store_features=True)
    run_preprocess(_config(ava_root, out, stage1_ckpt, **cfg))
    assert _shard_bytes(out) == _shard_bytes(clean_run)
    victim = sorted(out.glob("train-*.stats.json"))[1]
    victim.unlink()
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    summary = run_preprocess(_config(ava_root, out, stage1_ckpt, **cfg))
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    rewritten = {name for name in before if before[name] != after[name]}
    assert rewritten == {victim.name.replace(".stats.json", ".tar")}
    assert summary.written_shards == 1
    assert _shard_bytes(out) == _shard_bytes(clean_run)


def test_two_ranks_make_exactly_the_single_process_shards(tmp_path, ava_root, stage1_ckpt, clean_run):
    out = tmp_path / "ranks"
    for rank in (0, 1):
        run_preprocess(_config(ava_root, out, stage1_ckpt, random_crops=1, store_features=True,
                               num_nodes=2, node_rank=rank, workers=1))
    assert _shard_bytes(out) == _shard_bytes(clean_run)
    assert (out / "manifest.json").exists()


def test_changed_config_is_refused_then_overwrite_allowed(tmp_path, ava_root, stage1_ckpt):
    out = tmp_path / "out"
    run_preprocess(_config(ava_root, out, stage1_ckpt, limit=3))
    with pytest.raises(PreprocessError, match="tau"):
        run_preprocess(_config(ava_root, out, stage1_ckpt, limit=3, tau=0.5))
    run_preprocess(_config(ava_root, out, stage1_ckpt, limit=3, tau=0.5, overwrite=True))
    assert read_manifest(out).run.tau == 0.5


def test_split_spec_differing_from_stage1_is_refused(tmp_path, ava_root, stage1_ckpt):
    with pytest.raises(PreprocessError, match="split"):
        run_preprocess(_config(ava_root, tmp_path / "o", stage1_ckpt,
                               dataset_options={"val_size": 0.5}))


def _bad_images_dataset(root: Path) -> dict[str, str]:
    """An AVA folder with one image of each awkward kind; returns id -> expected status."""
    make_ava(root, n=8)
    rng = np.random.default_rng(1)
    images = root / "images"
    good = photo_like(80, 60, rng)
    expected = {}

    def add(image_id, status, writer):
        writer(images / f"{image_id}.jpg")
        expected[image_id] = status

    add("9001", "empty", lambda p: p.write_bytes(b""))
    full = io.BytesIO()
    Image.fromarray(good).save(full, "JPEG", quality=90)
    add("9002", "truncated", lambda p: p.write_bytes(full.getvalue()[: len(full.getvalue()) // 2]))
    add("9003", "not_an_image", lambda p: p.write_bytes(rng.bytes(3000)))
    add("9004", "ok", lambda p: Image.fromarray(good).convert("CMYK").save(p, "JPEG"))
    add("9005", "ok", lambda p: Image.fromarray(good).convert("L").save(p, "JPEG"))
    ramp = (np.arange(60 * 80, dtype=np.uint32).reshape(60, 80) * 13 % 65535).astype(np.uint16)
    add("9006", "ok", lambda p: Image.fromarray(ramp).save(p, "PNG"))

    def rotated(p):
        tall = Image.fromarray(photo_like(60, 100, rng))  # upright: 60 wide, 100 tall
        exif = Image.Exif()
        exif[0x0112] = 6  # stored rotated 90 degrees; viewers rotate it back upright
        tall.transpose(Image.Transpose.ROTATE_90).save(p, "JPEG", exif=exif.tobytes())
    add("9007", "ok", rotated)
    expected["9008"] = "missing"
    lines = (root / "AVA.txt").read_text().splitlines()
    for n, image_id in enumerate(expected, start=len(lines) + 1):
        lines.append(f"{n} {image_id} 1 2 3 4 5 6 7 8 9 10 0 0 1")
    (root / "AVA.txt").write_text("\n".join(lines) + "\n")
    return expected


def test_bad_images_are_rows_with_a_reason_and_the_good_ones_are_written(tmp_path):
    root = tmp_path / "ava"
    expected = _bad_images_dataset(root)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["preprocess", "ava", str(root), "--out", str(out), "--backbone", "tiny",
                                      "--weights", "none", "--view-size", str(VIEW), "--samples-per-shard",
                                      "4", "--quiet", "--max-failure-rate", "0.9"])
    assert result.exit_code == 0, result.output
    table = pq.read_table(out / "meta").to_pandas().set_index("id")
    assert len(table) == 8 + len(expected)
    for image_id, status in expected.items():
        row = table.loc[image_id]
        assert row["status"] == status, (image_id, row["error"])
        if status != "ok":
            assert image_id in row["error"] and row["error"]
    rotated = table.loc["9007"]
    assert (rotated["width"], rotated["height"]) == (60, 100)
    # the failure summary names each status
    assert "empty 1" in result.output and "missing 1" in result.output


def test_failure_rate_over_the_limit_exits_non_zero(tmp_path):
    root = tmp_path / "ava"
    _bad_images_dataset(root)
    result = CliRunner().invoke(cli, ["preprocess", "ava", str(root), "--out", str(tmp_path / "o"),
                                      "--backbone", "tiny", "--weights", "none", "--view-size", str(VIEW),
                                      "--quiet"])
    assert result.exit_code == 1
    assert "--max-failure-rate" in result.output


def test_verify_names_a_shard_with_one_flipped_byte(tmp_path, clean_run):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(clean_run, out)
    victim = sorted(out.glob("*.tar"))[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 3] ^= 0xFF
    victim.write_bytes(bytes(data))
    result = CliRunner().invoke(cli, ["shards", "verify", str(out)])
    assert result.exit_code != 0
    assert victim.stem in result.output


def test_missing_attention_model_is_a_clear_error(tmp_path, ava_root):
    result = CliRunner().invoke(cli, ["preprocess", "ava", str(ava_root), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0
    assert "--stage1" in result.output and "Traceback" not in result.output


def test_the_view_size_comes_from_the_stage1_model_and_another_is_refused(tmp_path, ava_root):
    """As a new user met it: stage 1 trained at 96 px, the preprocess command it suggests has no
    --view-size. The shards get 96 px views; --view-size 224 is refused naming both values and the fix."""
    torch.manual_seed(0)
    path = tmp_path / "s1" / "best.pt"
    payload = stage1_checkpoint(PeripheralNet("tiny", num_classes=2), view_size=96, threshold=5.0,
                                scores=list(range(1, 11)))
    payload.dataset = {"name": "ava", "split_spec": load_ava(ava_root).split_spec}
    save_checkpoint(path, payload)
    common = ["preprocess", "ava", str(ava_root), "--stage1", str(path.parent), "--limit", "2", "--workers", "1",
              "--device", "cpu", "--quiet"]
    made = CliRunner().invoke(cli, [*common, "--out", str(tmp_path / "shards")])
    assert made.exit_code == 0, made.output
    assert read_manifest(tmp_path / "shards").run.view_size == 96
    refused = CliRunner().invoke(cli, [*common, "--out", str(tmp_path / "other"), "--view-size", "224"])
    assert refused.exit_code == 1
    text = " ".join(refused.output.split())
    assert "--view-size 224 differs from the view size 96" in text and str(path) in text
    assert "Drop --view-size (preprocess takes 96 from the checkpoint)" in text
    assert "retrain stage 1 with --view-size 224" in text
    assert not (tmp_path / "other").exists()
