"""verify and info: each kind of damage is named; CLI exit codes via CliRunner."""
from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from gpf.cli.shards import shards as shards_cli
from gpf.shards.layout import safe_key
from gpf.shards.manifest import MANIFEST_FORMAT, RunFields, read_manifest, write_manifest
from gpf.shards.verify import info, verify_shards
from gpf.shards.writer import file_sha256, write_shard

RUN = RunFields(dataset="test", scores=(1, 2, 3, 4, 5, 6, 7), threshold=3.5, view_size=16, tau=0.7,
                eb_layer="features.2", stage1_digest="cd" * 32, config={"tau": 0.7}, environment={"torch": "x"})


def manifest_json(folder) -> dict:
    """manifest.json as stored (to tamper with it as a damaged file would be)."""
    return json.loads((folder / "manifest.json").read_text())


def _jpeg(rng, width, height):
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
        out, "JPEG", quality=90)
    return out.getvalue()


def _shard(folder, split, index, ids, rng, box=(2, 4, 10, 12)):
    samples, rows = [], []
    for image_id in ids:
        samples.append({"key": safe_key(image_id), "periph.jpg": _jpeg(rng, 16, 12),
                        "fovea.jpg": _jpeg(rng, 16, 16),
                        "attn.npy": rng.random((3, 4)).astype(np.float16),
                        "json": {"id": image_id, "votes": [1, 2, 3, 4, 5, 6, 7]}})
        x0, y0, x1, y1 = box
        rows.append({"id": image_id, "votes": [1, 2, 3, 4, 5, 6, 7], "width": 40, "height": 20,
                     "x0": x0, "y0": y0, "x1": x1, "y1": y1, "attn_fraction": 0.8,
                     "status": "ok"})
    rows.append({"id": f"{split}{index}-lost", "status": "missing", "error": "file not found"})
    write_shard(folder, split, index, samples, rows)


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    _shard(tmp_path, "train", 0, ["1", "2", "a b.jpg"], rng)
    _shard(tmp_path, "train", 1, ["3", "4"], rng, box=(0, 0, 20, 10))
    _shard(tmp_path, "val", 0, ["5"], rng)
    write_manifest(tmp_path, RUN)
    return tmp_path


def lines(report):
    return "\n".join(report.lines())


def test_clean_folder_verifies(folder):
    report = verify_shards(folder)
    assert report.ok, report.lines()
    assert report.shards == 3 and report.samples == 6
    quick = verify_shards(folder, deep=False)
    assert quick.ok and quick.samples == 6


def test_flipped_byte_is_named(folder):
    tar = folder / "train-000001.tar"
    data = bytearray(tar.read_bytes())
    data[700] ^= 0xFF                      # inside the first member's data, size unchanged
    tar.write_bytes(bytes(data))
    report = verify_shards(folder, deep=False)
    assert "train-000001: tar sha256 differs" in lines(report)
    assert all(p.shard == "train-000001" for p in report.problems)


def test_corrupt_jpeg_member_is_named_by_key_and_member(folder):
    tar = folder / "val-000000.tar"
    data = bytearray(tar.read_bytes())
    start = data.index(b"\xff\xd8")        # first JPEG (periph) of key '5'
    data[start:start + 2] = b"\x00\x00"
    tar.write_bytes(bytes(data))
    text = lines(verify_shards(folder))
    assert "val-000000: 5.periph.jpg: does not decode" in text


def test_truncated_shard_is_named(folder):
    tar = folder / "train-000000.tar"
    tar.write_bytes(tar.read_bytes()[:2000])
    text = lines(verify_shards(folder))
    assert "train-000000: tar is 2000 bytes" in text
    assert "train-000000: tar cannot be read to the end" in text


def test_shard_missing_from_manifest_is_named(folder):
    manifest = manifest_json(folder)
    manifest["shards"] = [e for e in manifest["shards"] if e["name"] != "train-000001"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert [e.name for e in read_manifest(folder).shards] == ["train-000000", "val-000000"]
    report = verify_shards(folder)
    assert [p.shard for p in report.problems] == ["train-000001"]
    assert "not in manifest.json" in report.problems[0].message


def test_extra_shard_on_disk_is_named(folder):
    shutil.copy(folder / "val-000000.tar", folder / "val-000007.tar")
    text = lines(verify_shards(folder))
    assert "val-000007: tar on disk is not in manifest.json" in text
    assert "val-000007: stats file" in text


def test_listed_shard_missing_on_disk_is_named(folder):
    (folder / "train-000000.tar").unlink()
    text = lines(verify_shards(folder))
    assert "train-000000: listed in manifest.json but the tar is missing" in text


def test_parquet_row_disagreeing_with_tar_is_named(folder):
    path = folder / "meta" / "train-000000.parquet"
    table = pq.read_table(path).to_pylist()
    table[1]["key"] = table[1]["id"] = "999"  # the row of key '2' now names '999'
    pq.write_table(pa.Table.from_pylist(table, schema=pq.read_schema(path)), path)
    # bring stats and manifest in line so only the row/tar disagreement remains
    stats_path = folder / "train-000000.stats.json"
    stats = json.loads(stats_path.read_text())
    stats["parquet_sha256"] = file_sha256(path)
    stats["parquet_bytes"] = path.stat().st_size
    stats_path.write_text(json.dumps(stats))
    write_manifest(folder, RUN)
    report = verify_shards(folder)
    assert sorted(report.lines()) == [
        "train-000000: 2: sample in the tar has no 'ok' Parquet row",
        "train-000000: 999: 'ok' Parquet row has no sample in the tar"]


def test_stats_disagreeing_with_manifest_is_named(folder):
    manifest = manifest_json(folder)
    manifest["shards"][2]["count"] = 5
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert "val-000000: manifest.json says count 5, the stats file 1" in lines(verify_shards(folder))


def test_missing_manifest_and_write_manifest(folder):
    (folder / "manifest.json").unlink()
    report = verify_shards(folder)
    assert [p.shard for p in report.problems] == ["manifest.json"]
    assert "--write-manifest" in report.problems[0].message
    report = verify_shards(folder, write_manifest=True)
    assert report.manifest_written and any("unknown" in n for n in report.notes)
    # rebuilt from the stats alone, it lacks the score scale: shards nothing can be trained on are not OK
    assert [p.shard for p in report.problems] == ["manifest.json"]
    assert "lacks scores, threshold, view_size" in report.problems[0].message
    rebuilt = read_manifest(folder)
    assert [e.name for e in rebuilt.shards] == ["train-000000", "train-000001", "val-000000"]
    assert rebuilt.format == MANIFEST_FORMAT and rebuilt.complete
    assert rebuilt.run == RunFields() and rebuilt.run.config is None


def test_write_manifest_keeps_config_and_refuses_damaged_shards(folder):
    write_manifest(folder, RUN)
    manifest = manifest_json(folder)
    manifest["shards"] = manifest["shards"][:1]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert len(read_manifest(folder).shards) == 1
    report = verify_shards(folder, write_manifest=True)
    rebuilt = read_manifest(folder)
    assert report.ok and rebuilt.run.config == {"tau": 0.7}
    assert rebuilt.run == RUN                             # every run field kept, not only the config
    assert len(rebuilt.shards) == 3
    tar = folder / "val-000000.tar"
    tar.write_bytes(tar.read_bytes()[:-1024])
    before = (folder / "manifest.json").read_bytes()
    report = verify_shards(folder, write_manifest=True)
    assert not report.ok and not report.manifest_written
    assert (folder / "manifest.json").read_bytes() == before


def test_info_counts_and_box_statistics(folder):
    summary = info(folder)
    assert summary["splits"]["train"]["samples"] == 5
    assert summary["splits"]["train"]["status_counts"] == {"missing": 2, "ok": 5}
    # boxes: 3 rows of 8x8 and 2 rows of 20x10 in a 40x20 image
    expected = (3 * 64 / 800 + 2 * 200 / 800) / 5
    assert summary["boxes"]["train"]["mean_box_fraction"] == pytest.approx(expected)
    assert summary["boxes"]["train"]["mean_attn_fraction"] == pytest.approx(0.8)
    assert summary["boxes"]["val"]["rows"] == 1
    assert summary["config"] == {"tau": 0.7} and summary["tau"] == 0.7


# ---------------------------------------------------------------- CLI
def test_cli_verify_exit_codes(folder):
    runner = CliRunner()
    result = runner.invoke(shards_cli, ["verify", str(folder)])
    assert result.exit_code == 0, result.output
    assert "3 shard(s), 6 sample(s) checked" in result.output and "OK" in result.output
    tar = folder / "train-000001.tar"
    tar.write_bytes(tar.read_bytes()[:-512])
    result = runner.invoke(shards_cli, ["verify", str(folder), "--quick"])
    assert result.exit_code == 1
    assert "train-000001: tar is" in result.output and "1 problem(s)" in result.output


def test_cli_errors_without_traceback(tmp_path):
    runner = CliRunner()
    result = runner.invoke(shards_cli, ["verify", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "no such shard folder" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(shards_cli, ["info", str(tmp_path)])
    assert result.exit_code == 1 and "is not a shard folder" in result.output
    assert "Traceback" not in result.output


def test_cli_info(folder):
    result = CliRunner().invoke(shards_cli, ["info", str(folder)])
    assert result.exit_code == 0, result.output
    assert "train: 2 shard(s), 5 sample(s), 7 row(s) [missing 2, ok 5]" in result.output
    result = CliRunner().invoke(shards_cli, ["info", str(folder), "--json"])
    assert json.loads(result.output)["splits"]["val"]["samples"] == 1
