"""Damaged shard folders made by `gpf preprocess`: `gpf shards verify` names each damage, stage 2
refuses to train on it, and no shard reader ever unpickles.

tests/test_shards_verify.py checks the verifier on hand-written shards; here
the shards come from the real command and are damaged the way disks and
copies damage them: a flipped byte, a truncated file, a shard the manifest
does not list, a Parquet that disagrees with its tar, extra pickled members.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest

from helpers.ava import make_ava
from helpers.cli import invoke
from helpers.evaluation import save_stage1

VIEW = 64



@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Shards of a 24-image AVA folder (4 per shard) with their stage-1 model."""
    base = tmp_path_factory.mktemp("shards_made")
    make_ava(base / "ava", n=24)
    stage1 = save_stage1(base / "stage1.pt")
    options = ["--stage1", stage1, "--view-size", VIEW, "--samples-per-shard", 4, "--quiet"]
    result = invoke(["preprocess", "ava", base / "ava", "--out", base / "shards", *options])
    assert result.exit_code == 0, result.output
    assert len(list((base / "shards").glob("train-*.tar"))) >= 4
    return {"shards": base / "shards", "stage1": stage1, "ava": base / "ava", "options": options}


@pytest.fixture
def copy(made, tmp_path):
    out = tmp_path / "shards"
    shutil.copytree(made["shards"], out)
    return out


def member_offset(tar_path, suffix: str, which: int = 0) -> tuple[str, int, int]:
    """(name, data offset, size) of the ``which``-th member ending in ``suffix``."""
    with tarfile.open(tar_path) as tar:
        found = [m for m in tar.getmembers() if m.name.endswith(suffix)]
    member = found[which]
    return member.name, member.offset_data, member.size


def flip_byte_inside_jpeg(tar_path) -> str:
    """Flip one byte in the middle of the first fovea.jpg's entropy-coded data; returns the member."""
    name, offset, size = member_offset(tar_path, "fovea.jpg")
    data = bytearray(tar_path.read_bytes())
    data[offset + size // 2] ^= 0xFF
    tar_path.write_bytes(bytes(data))
    return name


def truncate(path, keep: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# ----------------------------------------------------------------------------- gpf shards verify

def test_verify_names_every_kind_of_damage(copy):
    flip_byte_inside_jpeg(copy / "train-000000.tar")
    truncate(copy / "train-000001.tar")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["shards"] = [e for e in manifest["shards"] if e["name"] != "train-000002"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    parquet = copy / "meta" / "train-000003.parquet"
    table = pq.read_table(parquet)
    dropped_key = table.column("key")[0].as_py()
    pq.write_table(table.slice(1), parquet)                 # one 'ok' row lost: Parquet and tar disagree
    (copy / "test-000001.tar").unlink()                      # listed in the manifest, gone from disk

    result = invoke(["shards", "verify", copy])
    assert result.exit_code == 1
    lines = result.output.splitlines()

    def about(shard: str, *words: str) -> bool:
        return any(line.startswith(shard) and all(w in line for w in words) for line in lines)

    assert about("train-000000", "sha256 differs")
    assert about("train-000001", "bytes, stats say", "truncated")
    assert about("train-000002", "not in manifest.json")
    assert about("train-000003", "Parquet", "sha256 differs")
    assert about("train-000003", dropped_key, "no 'ok' Parquet row")
    assert about("test-000001", "listed in manifest.json but the tar is missing")
    assert not any(line.startswith(("train-000004", "val-000000", "test-000000")) for line in lines)
    assert "problem(s)" in lines[-1]


def test_quick_verify_finds_the_flipped_byte_and_the_truncation_without_decoding(copy):
    flip_byte_inside_jpeg(copy / "train-000000.tar")
    truncate(copy / "val-000000.tar", keep=0.9)
    result = invoke(["shards", "verify", copy, "--quick"])
    assert result.exit_code == 1
    assert "train-000000: tar sha256 differs" in result.output
    assert "val-000000: tar is" in result.output


def test_a_truncated_manifest_is_named_and_rerunning_preprocess_restores_it(made, copy):
    manifest = copy / "manifest.json"
    original = manifest.read_bytes()
    manifest.write_bytes(original[: len(original) // 3])
    result = invoke(["shards", "verify", copy])
    assert result.exit_code == 1 and "manifest.json: " in result.output and "unreadable" in result.output
    tars = {p.name: p.stat().st_mtime_ns for p in copy.glob("*.tar")}
    rerun = invoke(["preprocess", "ava", made["ava"], "--out", copy, *made["options"]])
    assert rerun.exit_code == 0, rerun.output
    assert "0 written" in rerun.output and manifest.read_bytes() == original
    assert {p.name: p.stat().st_mtime_ns for p in copy.glob("*.tar")} == tars     # nothing redone


# ----------------------------------------------------------------------------- train stage2 on damage

def _stage2(shards, out, workers: int):
    return subprocess.run([sys.executable, "-m", "gpf.cli", "train", "stage2", "--shards", str(shards),
                           "--backbone", "tiny", "--weights", "none", "--out", str(out), "--epochs", "1",
                           "--batch-size", "4", "--workers", str(workers), "--no-tensorboard", "--quiet"],
                          capture_output=True, text=True, timeout=240,       # a hang fails the test
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


@pytest.mark.slow
def test_stage2_refuses_a_truncated_shard_with_a_message(copy, tmp_path):
    truncate(copy / "train-000000.tar")
    run = _stage2(copy, tmp_path / "run", workers=0)
    assert run.returncode == 1
    assert "train-000000.tar" in run.stderr and "truncated" in run.stderr and "gpf shards verify" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.slow
def test_stage2_refuses_a_truncated_shard_in_one_line_with_loader_workers(copy, tmp_path):
    truncate(copy / "train-000000.tar")
    run = _stage2(copy, tmp_path / "run", workers=1)
    assert run.returncode == 1 and "train-000000.tar" in run.stderr
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1


def test_stage2_refuses_a_shard_whose_checksum_does_not_match(copy, tmp_path):
    flip_byte_inside_jpeg(copy / "train-000000.tar")
    result = invoke(["train", "stage2", "--shards", copy, "--backbone", "tiny", "--weights", "none",
                     "--out", tmp_path / "run", "--epochs", 1, "--batch-size", 4, "--workers", 0,
                     "--no-tensorboard", "--quiet"])
    assert result.exit_code == 1 and "train-000000" in result.output
    assert not (tmp_path / "run" / "last.pt").exists()


def test_evaluate_refuses_a_truncated_shard_naming_it(made, copy, tmp_path):
    from helpers.evaluation import make_stage2

    checkpoint = make_stage2(tmp_path / "stage2.pt", made["stage1"], eb_layer="features.pool2")
    truncate(copy / "test-000000.tar")
    result = invoke(["evaluate", "--checkpoint", checkpoint, "--shards", copy, "--workers", 0, "--device", "cpu",
                     "--quiet"])
    assert result.exit_code == 1
    assert "test-000000.tar" in result.output and "truncated" in result.output


# ----------------------------------------------------------------------------- nothing is unpickled

class _Trap:
    """Unpickling this creates a folder: proof that someone unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _rewrite_with_extras(tar_path, extras: dict[str, bytes], replace: dict[str, bytes]) -> None:
    """Rewrite ``tar_path`` adding ``extras`` after their sample's members and replacing members."""
    with tarfile.open(tar_path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    keys = list(dict.fromkeys(name.partition(".")[0] for name, _ in members))
    ordered = []
    for key in keys:
        ordered += [(n, replace.get(n, d)) for n, d in members if n.partition(".")[0] == key]
        ordered += [(n, d) for n, d in extras.items() if n.partition(".")[0] == key]
    with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in ordered:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def trapped(copy, tmp_path):
    """train-000000 gains ``.pickle`` and ``.pyd`` members; val-000000's first attn.npy becomes an
    object array (a pickle inside the .npy)."""
    marker = tmp_path / "unpickled"
    bomb = pickle.dumps(_Trap(marker))
    train = copy / "train-000000.tar"
    first_key = member_offset(train, "json")[0].partition(".")[0]
    _rewrite_with_extras(train, {f"{first_key}.pickle": bomb, f"{first_key}.pyd": bomb}, {})
    val = copy / "val-000000.tar"
    attn_name = member_offset(val, "attn.npy")[0]
    buffer = io.BytesIO()
    np.save(buffer, np.array([_Trap(marker)], dtype=object), allow_pickle=True)
    _rewrite_with_extras(val, {}, {attn_name: buffer.getvalue()})
    return {"shards": copy, "marker": marker, "key": first_key, "attn": attn_name}


def test_readers_skip_pickle_members_and_refuse_pickled_npy(trapped):
    from gpf.shards.layout import ShardReadError
    from gpf.shards.manifest import read_manifest
    from gpf.shards.reader import make_loader

    shards, marker = trapped["shards"], trapped["marker"]
    n_train = read_manifest(shards).samples("train")
    assert n_train > 0
    train = make_loader(shards, "train", 1, shuffle=False, num_workers=0, members=("periph", "fovea", "attn"))
    keys = [key for batch in train for key in batch["key"]]
    assert len(keys) == n_train and trapped["key"] in keys   # the sample is read, its extras ignored
    val = make_loader(shards, "val", 1, shuffle=False, num_workers=0, members=("periph", "attn"))
    with pytest.raises(ShardReadError, match=r"val-000000\.tar.*attn\.npy"):
        list(val)
    assert not marker.exists()


def test_verify_reports_pickle_members_without_unpickling(trapped):
    result = invoke(["shards", "verify", trapped["shards"]])
    assert result.exit_code == 1
    key = trapped["key"]
    for extra in ("pickle", "pyd"):
        assert f"train-000000: {key}.{extra}: member outside the shard contract" in result.output
    assert f"val-000000: {trapped['attn']}: does not decode" in result.output
    assert not trapped["marker"].exists()


def test_stage2_on_shards_with_pickle_members_never_unpickles(trapped, made, tmp_path):
    """Ignored (the tar's samples train) or refused (a checksum check): either way nothing is unpickled."""
    result = invoke(["train", "stage2", "--shards", trapped["shards"], "--backbone", "tiny", "--weights", "none",
                     "--out", tmp_path / "run", "--epochs", 1, "--batch-size", 4, "--workers", 0,
                     "--no-tensorboard", "--quiet"])
    assert not trapped["marker"].exists()
    assert result.exit_code == 0 or "train-000000" in result.output, result.output
