"""A non-editable install holds the whole package: every room, every module, the root modules.

The editable install the tests run against finds any folder of the repository,
so a room missing from ``setup.cfg``'s ``packages`` goes unnoticed there and
only breaks ``pip install gpf``. Here a wheel is built from a temporary copy of
the sources (the repository gets no ``build/`` or ``*.egg-info``), and the
expected contents are derived from the source tree, not from ``setup.cfg``.
"""
from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1]           # the repository root is the package `gpf`
ROOMS = ("model", "shards", "pipeline", "train", "workflows", "cli")   # docs/internals.md
BUILD_FILES = ("setup.cfg", "pyproject.toml", "README.md")


def package_folders() -> list[str]:
    """Top-level folders of the repository that are packages (hold an ``__init__.py``)."""
    return sorted(p.parent.name for p in PKG.glob("*/__init__.py"))


def source_modules() -> set[str]:
    """``gpf/...`` paths of every module the wheel must hold, from the source tree."""
    expected = {f"gpf/{p.name}" for p in PKG.glob("*.py")}
    for folder in package_folders():
        expected |= {"gpf/" + p.relative_to(PKG).as_posix() for p in (PKG / folder).rglob("*.py")
                     if "__pycache__" not in p.parts}
    return expected


def copy_sources(dest: Path) -> Path:
    """What a build needs, and nothing else: the build files, the root modules, the package folders."""
    dest.mkdir()
    for name in BUILD_FILES:
        shutil.copy2(PKG / name, dest / name)
    for path in PKG.glob("*.py"):
        shutil.copy2(path, dest / path.name)
    for folder in package_folders():
        shutil.copytree(PKG / folder, dest / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc"))
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    had_build = {name: (PKG / name).exists() for name in ("build", "dist")}
    src = copy_sources(tmp / "src")
    out = tmp / "dist"
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                          "--disable-pip-version-check", "-q", "-w", str(out), str(src)],
                         capture_output=True, text=True, timeout=300, cwd=tmp,
                         env=dict(os.environ, PIP_NO_INPUT="1"))
    assert run.returncode == 0, run.stdout + run.stderr
    for name, had in had_build.items():
        assert had or not (PKG / name).exists(), f"building the wheel left {name}/ in the repository"
    wheels = list(out.glob("gpf-*.whl"))
    assert len(wheels) == 1, list(out.iterdir())
    return wheels[0]


def test_the_source_tree_is_what_the_test_expects():
    folders = package_folders()
    assert set(folders) <= set(ROOMS), f"package folders that are not rooms: {sorted(set(folders) - set(ROOMS))}"
    assert {"model", "shards", "pipeline", "train", "cli"} <= set(folders)
    assert {"gpf/__init__.py", "gpf/errors.py", "gpf/model/__init__.py"} <= source_modules()


def test_setup_cfg_names_every_package_folder():
    """The cheap form of the check below: every package folder is listed in ``setup.cfg``."""
    cfg = configparser.ConfigParser()
    cfg.read(PKG / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    nested = {"gpf." + p.parent.relative_to(PKG).as_posix().replace("/", ".")
              for folder in package_folders() for p in (PKG / folder).rglob("__init__.py")}
    assert nested - listed == set(), f"packages missing from setup.cfg [options] packages: {sorted(nested - listed)}"


@pytest.mark.slow
def test_wheel_holds_every_room_and_module(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = zf.read(info).decode()
        entry_points = zf.read(info.replace("METADATA", "entry_points.txt")).decode()
    for folder in package_folders():
        assert f"gpf/{folder}/__init__.py" in names, f"the wheel has no gpf/{folder}/ (missing from setup.cfg?)"
    missing = sorted(source_modules() - names)
    assert not missing, f"modules missing from the wheel: {missing}"
    stray = sorted(n for n in names if n.startswith(("gpf/tests/", "gpf/benchmarks/", "gpf/scripts/", "tests/")))
    assert not stray, f"the wheel carries what is not the package: {stray}"
    assert "gpf = gpf.cli.main:main" in entry_points
    assert "Requires-Dist: tqdm>=4.66" in metadata


@pytest.mark.slow
def test_installed_wheel_imports_every_room(wheel, tmp_path):
    """Installed (not editable) into a folder of its own, every room imports from there."""
    target = tmp_path / "site"
    run = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                          "--disable-pip-version-check", "--target", str(target), str(wheel)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    rooms = [f"gpf.{folder}" for folder in package_folders()]
    code = ("import importlib, sys, gpf\n"
            f"for name in {rooms!r}:\n"
            "    m = importlib.import_module(name)\n"
            "    print(name, m.__file__)\n"
            "print('gpf', gpf.__file__, gpf.__version__)\n")
    env = dict(os.environ, PYTHONPATH=str(target))   # before site-packages, so before the editable finder
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                           cwd=tmp_path, env=env)
    assert probe.returncode == 0, probe.stdout + probe.stderr
    for line in probe.stdout.splitlines():
        name, path = line.split()[:2]
        assert Path(path).is_relative_to(target), f"{name} came from {path}, not from the installed wheel"
