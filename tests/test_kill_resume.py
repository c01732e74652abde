"""SIGKILL `gpf preprocess` at several moments; each rerun resumes, the result equals a clean run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from helpers.ava import make_ava

pytestmark = pytest.mark.slow


def _command(root: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "gpf.cli", "preprocess", "ava", str(root), "--out", str(out),
            "--backbone", "tiny", "--weights", "none", "--view-size", "64", "--samples-per-shard", "3",
            "--batch-size", "2", "--workers", "1", "--random-crops", "1", "--quiet"]


def _outputs(out: Path) -> dict[str, bytes]:
    paths = sorted(out.glob("*.tar")) + sorted((out / "meta").glob("*.parquet")) + sorted(out.glob("*.stats.json"))
    return {p.name: p.read_bytes() for p in paths}


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def test_sigkill_at_three_moments_then_rerun_gives_the_clean_shards(tmp_path):
    root = tmp_path / "ava"
    make_ava(root, n=30, seed=3)
    clean = tmp_path / "clean"
    t0 = time.perf_counter()
    subprocess.run(_command(root, clean), check=True, env=_env(), capture_output=True)
    duration = time.perf_counter() - t0

    out = tmp_path / "killed"
    killed_mid_run = 0
    for fraction in (0.55, 0.75, 0.9):
        proc = subprocess.Popen(_command(root, out), env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(duration * fraction)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed_mid_run += 1
        proc.wait()
    subprocess.run(_command(root, out), check=True, env=_env(), capture_output=True)

    assert killed_mid_run >= 1, "the run finished before any kill; the test proved nothing"
    assert _outputs(out) == _outputs(clean)
    table = pq.read_table(out / "meta").to_pandas()
    assert table["id"].is_unique and len(table) == 30
