"""Streaming loader: shapes, dtypes, rank/worker splitting, determinism, content.

Expected content comes from the fixture itself (PIL decode of the same bytes,
the arrays and votes that were written), never from the reader.
"""
from __future__ import annotations

import io
import math
import tarfile
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from gpf.errors import OptionError
from gpf.shards.layout import ShardReadError, rand_member, safe_key
from gpf.shards.manifest import RunFields, write_manifest
from gpf.shards.reader import (ShardDataset, ShardSpec, TarFormatError, choose_random_crop,
                               iter_tar_members, make_loader, plan_eval, plan_train_epoch)
from gpf.shards.writer import write_shard

SHAPES = [(24, 32), (32, 24)]           # peripheral (H, W): landscape and portrait
TRAIN_COUNTS = [7, 6, 5, 7, 5]          # odd number of shards, uneven sizes
VAL_COUNTS = [5, 4, 6]
RUN = RunFields(dataset="test", scores=tuple(range(1, 11)), threshold=5.0, view_size=32, tau=0.7,
                eb_layer="features.4", stage1_digest=None, config={}, environment={})


def _jpeg(rng, width, height):
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
        out, "JPEG", quality=90)
    return out.getvalue()


def _sample(image_id, rng, shape, extras):
    sample = {"key": safe_key(image_id), "periph.jpg": _jpeg(rng, shape[1], shape[0]),
              "fovea.jpg": _jpeg(rng, 16, 16),
              "attn.npy": rng.random((shape[0] // 8, shape[1] // 8)).astype(np.float16),
              "json": {"id": image_id, "votes": rng.integers(0, 20, 10).tolist()}}
    if extras:
        for k in range(3):
            sample[rand_member(k)] = _jpeg(rng, 16, 16)
        sample["pfeat.npy"] = rng.standard_normal(6).astype(np.float16)
    return sample


def _write_split(folder, split, counts, rng, extras, truth):
    serial = 0
    for index, count in enumerate(counts):
        samples = []
        for _ in range(count):
            image_id = f"{split} img.{serial}" if serial % 4 == 0 else f"{split}{serial}"
            shape = SHAPES[int(rng.integers(0, 2))]
            samples.append(_sample(image_id, rng, shape, extras))
            truth[samples[-1]["key"]] = samples[-1]
            serial += 1
        rows = [{"id": s["json"]["id"], "votes": s["json"]["votes"], "status": "ok"}
                for s in samples]
        write_shard(folder, split, index, samples, rows)


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    truth = {}
    _write_split(folder, "train", TRAIN_COUNTS, rng, True, truth)
    _write_split(folder, "val", VAL_COUNTS, rng, False, truth)
    write_manifest(folder, RUN)
    return folder, truth


def keys_of(batches):
    return [k for b in batches for k in b["key"]]


def periph_hw(sample):
    return Image.open(io.BytesIO(sample["periph.jpg"])).size[::-1]


# ---------------------------------------------------------------- batches
def test_train_batches_are_full_single_shape_uint8(shard_dir):
    folder, truth = shard_dir
    data = ShardDataset(folder, "train", 4, seed=1, members=("periph", "fovea", "attn"))
    batches = list(data)
    assert len(batches) == len(data) == sum(TRAIN_COUNTS) // 4
    for batch in batches:
        assert batch["periph"].dtype == torch.uint8 and batch["fovea"].dtype == torch.uint8
        assert batch["periph"].is_contiguous(memory_format=torch.channels_last)
        assert batch["fovea"].shape == (4, 3, 16, 16)
        expected = {periph_hw(truth[k]) for k in batch["key"]}
        assert len(expected) == 1                       # one peripheral shape per batch
        assert batch["periph"].shape == (4, 3, *expected.pop())
        assert batch["attn"].dtype == torch.float32
        assert batch["attn"].shape[1:] == (batch["periph"].shape[2] // 8,
                                           batch["periph"].shape[3] // 8)
        assert batch["votes"].dtype == torch.float32 and batch["votes"].shape == (4, 10)
    # repeats only fill what partly filled shape buckets hold back at the end of a pass
    assert len(set(keys_of(batches))) >= sum(TRAIN_COUNTS) - len(SHAPES) * (4 - 1)


def test_decoded_content_matches_what_was_written(shard_dir):
    folder, truth = shard_dir
    data = ShardDataset(folder, "train", 3, shuffle=False, members=("periph", "fovea", "attn"),
                        with_features=True)
    for batch in data:
        for i, key in enumerate(batch["key"]):
            sample = truth[key]
            assert batch["id"][i] == sample["json"]["id"]
            assert batch["votes"][i].tolist() == sample["json"]["votes"]
            for name in ("periph", "fovea"):
                reference = np.asarray(Image.open(io.BytesIO(sample[f"{name}.jpg"])).convert("RGB"))
                got = batch[name][i].permute(1, 2, 0).numpy()
                # two libjpeg builds may round the IDCT differently by a level or two
                assert np.abs(got.astype(int) - reference.astype(int)).mean() < 1.0
            np.testing.assert_array_equal(batch["attn"][i].numpy(),
                                          sample["attn.npy"].astype(np.float32))
            np.testing.assert_array_equal(batch["pfeat"][i].numpy(),
                                          sample["pfeat.npy"].astype(np.float32))


def test_random_crop_member_is_a_stored_crop_chosen_by_seed_epoch_key(shard_dir):
    folder, truth = shard_dir
    chosen = {}
    for epoch in (0, 1):
        data = ShardDataset(folder, "train", 2, shuffle=False, members=("periph",),
                            random_crop_member=True, seed=5, epoch=epoch)
        for batch in data:
            assert "fovea" not in batch and batch["rand"].shape[1:] == (3, 16, 16)
            for i, key in enumerate(batch["key"]):
                crops = [np.asarray(Image.open(io.BytesIO(truth[key][rand_member(k)])))
                         for k in range(3)]
                errors = [np.abs(batch["rand"][i].permute(1, 2, 0).numpy().astype(int) - c).mean()
                          for c in crops]
                k = int(np.argmin(errors))
                assert errors[k] < 1.0
                assert k == choose_random_crop(5, epoch, key, 3)
                chosen[key, epoch] = k
    keys = {key for key, _ in chosen}
    assert any(chosen[key, 0] != chosen[key, 1] for key in keys)


# ---------------------------------------------------------------- ranks and workers
def test_two_ranks_disjoint_and_equal_batch_counts(shard_dir):
    folder, _ = shard_dir
    per_rank = []
    for rank in (0, 1):
        data = ShardDataset(folder, "train", 3, seed=2, epoch=4, rank=rank, world_size=2)
        batches = list(data)
        assert len(batches) == len(data) == sum(TRAIN_COUNTS) // (2 * 3)
        assert all(len(b["key"]) == 3 for b in batches)
        per_rank.append(set(keys_of(batches)))
    assert not per_rank[0] & per_rank[1]


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_eval_sees_every_sample_exactly_once(shard_dir, world_size):
    folder, truth = shard_dir
    seen = Counter()
    for rank in range(world_size):
        data = ShardDataset(folder, "val", 4, shuffle=False, rank=rank, world_size=world_size)
        batches = list(data)
        assert len(batches) == len(data)
        assert all(1 <= len(b["key"]) <= 4 for b in batches)
        seen.update(keys_of(batches))
    val_keys = {k for k, s in truth.items() if not s["json"]["id"].startswith("train")}
    assert set(seen) == val_keys and set(seen.values()) == {1}


def test_eval_order_is_deterministic(shard_dir):
    folder, _ = shard_dir
    runs = [keys_of(ShardDataset(folder, "val", 4, shuffle=False)) for _ in range(2)]
    assert runs[0] == runs[1]


def test_same_seed_epoch_same_order_other_epoch_other_order(shard_dir):
    folder, _ = shard_dir
    data = ShardDataset(folder, "train", 2, seed=9, epoch=3)
    first, again = keys_of(data), keys_of(data)
    data.set_epoch(4)
    other = keys_of(data)
    assert first == again
    assert first != other
    assert keys_of(ShardDataset(folder, "train", 2, seed=10, epoch=3)) != first


def test_workers_zero_and_two_give_the_same_samples(shard_dir):
    folder, _ = shard_dir
    eval_sets = []
    for workers in (0, 2):
        loader = make_loader(folder, "val", 4, shuffle=False, num_workers=workers)
        batches = list(loader)
        assert len(batches) == len(loader)
        eval_sets.append(sorted(keys_of(batches)))
    assert eval_sets[0] == eval_sets[1]
    train_runs = []
    for _ in range(2):
        loader = make_loader(folder, "train", 4, seed=1, epoch=2, num_workers=2)
        batches = list(loader)
        assert len(batches) == len(loader) == sum(TRAIN_COUNTS) // 4
        train_runs.append(keys_of(batches))
    assert train_runs[0] == train_runs[1]               # deterministic with workers too


def test_too_few_shards_for_ranks_times_workers(shard_dir):
    folder, _ = shard_dir
    with pytest.raises(OptionError, match=r"3 x 2 = 6 non-empty shards, the split has 5"):
        ShardDataset(folder, "train", 2, rank=0, world_size=3, num_workers=2)


def test_drop_last_false_fills_with_repeats(shard_dir):
    folder, _ = shard_dir
    data = ShardDataset(folder, "train", 4, drop_last=False)
    batches = list(data)
    assert len(batches) == len(data) == math.ceil(sum(TRAIN_COUNTS) / 4)
    assert all(len(b["key"]) == 4 for b in batches)


def test_plan_train_epoch_equal_quota_disjoint_shards():
    rng = np.random.default_rng(3)
    shards = [ShardSpec(f"train-{i:06d}", None, "train", i, int(c), ())
              for i, c in enumerate(rng.integers(1, 50, 23))]
    total = sum(s.count for s in shards)
    for world_size in (1, 2, 4):
        for workers in (1, 2, 3):
            plans = [plan_train_epoch(shards, batch_size=8, seed=0, epoch=1, rank=r,
                                      world_size=world_size, workers=workers, drop_last=True)
                     for r in range(world_size)]
            quotas = [sum(p.batches for p in rank_plans) for rank_plans in plans]
            assert quotas == [total // (world_size * 8)] * world_size
            dealt = [s.index for rank_plans in plans for p in rank_plans for s in p.shards]
            assert sorted(dealt) == list(range(23))
    evals = [plan_eval(shards, rank=r, world_size=2, workers=2) for r in range(2)]
    assert sorted(s.index for e in evals for p in e for s in p.shards) == list(range(23))


# ---------------------------------------------------------------- errors and robustness
def test_missing_member_is_named(shard_dir):
    folder, _ = shard_dir
    data = ShardDataset(folder, "val", 2, shuffle=False, with_features=True)
    with pytest.raises(ShardReadError, match=r"val-000000.tar, key .*: no pfeat.npy member"):
        list(data)
    with pytest.raises(ShardReadError, match="no shards of split 'test'.*'train', 'val'"):
        ShardDataset(folder, "test", 2)
    with pytest.raises(OptionError, match="each must be one of periph, fovea, attn"):
        ShardDataset(folder, "val", 2, members=("periph", "depth"))
    with pytest.raises(ShardReadError, match="val-000000, val-000001, val-000002 store no random"):
        ShardDataset(folder, "val", 2, random_crop_member=True)
    with pytest.raises(OptionError, match="drop_last"):
        ShardDataset(folder, "val", 2, shuffle=False, drop_last=True)


def test_unknown_members_are_ignored_and_incomplete_manifest_refused(tmp_path):
    rng = np.random.default_rng(4)
    samples = [_sample(f"k{i}", rng, SHAPES[0], False) for i in range(3)]
    rows = [{"id": s["json"]["id"], "votes": s["json"]["votes"], "status": "ok"} for s in samples]
    write_shard(tmp_path, "val", 0, samples, rows)
    tar_path = tmp_path / "val-000000.tar"
    with tarfile.open(tar_path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data))
            if info.name.endswith(".json"):
                extra = tarfile.TarInfo(info.name.replace(".json", ".evil.pyd"))
                extra.size = 3
                tar.addfile(extra, io.BytesIO(b"\x80\x04."))   # a pickle: never loaded
    write_manifest(tmp_path, RUN)
    batches = list(ShardDataset(tmp_path, "val", 8, shuffle=False))
    assert sorted(keys_of(batches)) == ["k0", "k1", "k2"]
    assert set(batches[0]) == {"key", "id", "votes", "periph", "fovea"}
    write_manifest(tmp_path, RUN, complete=False)
    with pytest.raises(ShardReadError, match=f"{tmp_path}: preprocessing has not finished"):
        ShardDataset(tmp_path, "val", 8, shuffle=False)


def test_truncated_tar_is_a_clear_error(tmp_path):
    rng = np.random.default_rng(5)
    samples = [_sample(f"k{i}", rng, SHAPES[1], False) for i in range(4)]
    rows = [{"id": s["json"]["id"], "votes": s["json"]["votes"], "status": "ok"} for s in samples]
    write_shard(tmp_path, "val", 0, samples, rows)
    write_manifest(tmp_path, RUN)
    tar_path = tmp_path / "val-000000.tar"
    tar_path.write_bytes(tar_path.read_bytes()[:3000])
    with pytest.raises(ShardReadError, match="val-000000.tar.*(corrupt|truncated|JPEG)"):
        list(ShardDataset(tmp_path, "val", 4, shuffle=False))


# ---------------------------------------------------------------- the tar reader
def _tar_with(path, fmt, names):
    with tarfile.open(path, "w", format=fmt) as tar:
        directory = tarfile.TarInfo("somedir")
        directory.type = tarfile.DIRTYPE
        tar.addfile(directory)
        for i, name in enumerate(names):
            data = bytes((i + j) % 256 for j in range(700 + i))
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tar_reader_agrees_with_tarfile(tmp_path, fmt):
    long_name = "d" * 60 + "/" + "n" * 80 + ".periph.jpg"          # > 100 characters
    names = ["a.json", "a.periph.jpg", "b.json"]
    if fmt != tarfile.USTAR_FORMAT:
        names += [long_name, "ü-ñ.json"]
    path = tmp_path / "x.tar"
    _tar_with(path, fmt, names)
    with tarfile.open(path) as tar:
        expected = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]
    got = list(iter_tar_members(path, lambda name: True))
    assert got == expected
    skipped = list(iter_tar_members(path, lambda name: name.endswith(".json")))
    assert [(n, d is None) for n, d in skipped] == [(n, not n.endswith(".json"))
                                                    for n, _ in expected]


def test_tar_reader_detects_truncation_anywhere(tmp_path):
    assert issubclass(TarFormatError, ShardReadError)     # one type for every shard read problem
    path = tmp_path / "x.tar"
    _tar_with(path, tarfile.USTAR_FORMAT, ["a.json", "a.periph.jpg", "b.json"])
    full = path.read_bytes()
    end = 512 * (1 + 3 * 3)          # dir header + 3 x (header + 2 data blocks)
    for cut in (100, 512, 1000, 1536, 2048, end - 1, end):
        path.write_bytes(full[:cut])
        with pytest.raises(TarFormatError):
            list(iter_tar_members(path, lambda name: True))
        with pytest.raises(TarFormatError):
            list(iter_tar_members(path, lambda name: False))
    corrupt = bytearray(full)
    corrupt[512 + 10] ^= 1           # a name byte of the first file header
    path.write_bytes(bytes(corrupt))
    with pytest.raises(TarFormatError, match="checksum"):
        list(iter_tar_members(path, lambda name: True))
