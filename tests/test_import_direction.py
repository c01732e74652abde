"""Arrows point down the room table of docs/internals.md only: no room imports a room below it.

Every ``.py`` of the package (the repository root is the package ``gpf``) is
parsed with ``ast``; each import - absolute (``gpf.model.checkpoint``), relative
(``from ..model import checkpoint``, ``from . import x``), at module level or
inside a function, under ``if TYPE_CHECKING:`` too, and literal
``importlib.import_module("gpf...")`` calls - is resolved to the room it lands
in. A room may import the rooms above it and the root base modules; the root
base imports no room. The table's order is :data:`ROOMS`, and the test checks
that docs/internals.md shows the same order and lists every module, so the
page and the test cannot drift apart.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1]           # the repository root is the package `gpf`
INTERNALS = PKG / "docs" / "internals.md"

#: The room table, top to bottom, and what each room may import besides the root base: only
#: rooms above it (checked below), and not every one of them - shards/ does not import model/.
MAY_IMPORT = {
    "model": (),
    "shards": (),                                    # not model: the shard contract stands alone
    "pipeline": ("model", "shards"),
    "train": ("model", "shards", "pipeline"),
    "workflows": ("model", "shards", "pipeline", "train"),
    "cli": ("model", "shards", "pipeline", "train", "workflows"),
}
ROOMS = tuple(MAY_IMPORT)
BASE = "root base"

#: Imports that break the table today and are to be fixed in the library; keyed by
#: (file, imported module) so that moving lines does not matter. Keep this empty when you can.
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()


# ----------------------------------------------------------------------------- resolving imports

def room_of(module: str) -> str:
    """The room of dotted ``module`` (``gpf`` and root modules: the root base)."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in ROOMS:
        return parts[1]
    return BASE


def module_of(path: Path) -> tuple[str, bool]:
    """(dotted name, is a package) of a file of the package."""
    rel = path.relative_to(PKG).with_suffix("")
    parts = ["gpf", *rel.parts]
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def resolve_from(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """The dotted targets of ``from X import a, b`` in ``module``: ``X.a``, ``X.b`` (a name may be a submodule)."""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        if node.level - 1 > len(package) - 1:
            raise AssertionError(f"{module}:{node.lineno}: relative import beyond the package gpf")
        base = ".".join(package[:len(package) - (node.level - 1)])
        if node.module:
            base += "." + node.module
    else:
        base = node.module or ""
    return [base if alias.name == "*" else f"{base}.{alias.name}" for alias in node.names]


def imports_in(source: str, module: str, is_package: bool, filename: str = "<src>") -> list[tuple[int, str]]:
    """(line, dotted target) for every import of a ``gpf`` module in ``source``, wherever it sits."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found += [(node.lineno, target) for target in resolve_from(module, is_package, node)]
        elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))
              and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and not node.args[0].value.startswith(".")):
            found.append((node.lineno, node.args[0].value))
    return [(line, target) for line, target in found if target == "gpf" or target.startswith("gpf.")]


def package_files() -> list[Path]:
    """Every module of the package: the root's ``*.py`` and everything under the rooms that exist."""
    files = sorted(PKG.glob("*.py"))
    for room in ROOMS:
        if (PKG / room).is_dir():
            files += sorted(p for p in (PKG / room).rglob("*.py") if "__pycache__" not in p.parts)
    return files


def rel(path: Path) -> str:
    return path.relative_to(PKG).as_posix()


def all_imports() -> list[tuple[str, int, str, str, str]]:
    """(file, line, target, importer's room, target's room) for every gpf import of the package."""
    rows = []
    for path in package_files():
        module, is_package = module_of(path)
        for line, target in imports_in(path.read_text(encoding="utf-8"), module, is_package, str(path)):
            rows.append((rel(path), line, target, room_of(module), room_of(target)))
    return rows


def allowed(importer: str, target: str) -> bool:
    if target == BASE or target == importer:
        return True
    if importer == BASE:
        return False
    return target in MAY_IMPORT[importer]


def known(file: str, target: str, entries=None) -> bool:
    """Whether ``file`` importing ``target`` (or a name in it) is one of KNOWN_VIOLATIONS."""
    return any(file == f and (target == t or target.startswith(t + "."))
               for f, t in (KNOWN_VIOLATIONS if entries is None else entries))


def describe(file: str, line: int, target: str, importer: str, room: str) -> str:
    if importer == BASE:
        return f"{file}:{line} imports {target} (room {room}); root base modules import no room"
    where = "below" if ROOMS.index(room) > ROOMS.index(importer) else "beside, not above,"
    return (f"{file}:{line} imports room {room} ({target}), which sits {where} room {importer} "
            f"in the room table of docs/internals.md; {importer} may import "
            f"{', '.join(MAY_IMPORT[importer]) or 'only the root base'}")


# ----------------------------------------------------------------------------- the resolver itself

@pytest.mark.parametrize("source, module, is_package, expected", [
    ("import gpf.model.gpf", "gpf.pipeline.scoring", False, ["gpf.model.gpf"]),
    ("from gpf.shards.manifest import Manifest", "gpf.pipeline.x", False, ["gpf.shards.manifest.Manifest"]),
    ("from gpf import errors, fsutil", "gpf.shards.writer", False, ["gpf.errors", "gpf.fsutil"]),
    ("from . import images", "gpf.pipeline.scoring", False, ["gpf.pipeline.images"]),
    ("from .images import load_image", "gpf.pipeline.scoring", False, ["gpf.pipeline.images.load_image"]),
    ("from ..model.checkpoint import Checkpoint", "gpf.pipeline.scoring", False,
     ["gpf.model.checkpoint.Checkpoint"]),
    ("from .. import errors", "gpf.train.loop", False, ["gpf.errors"]),
    ("from .checkpoint import X", "gpf.model", True, ["gpf.model.checkpoint.X"]),       # in __init__.py
    ("from ..train import run", "gpf.pipeline", True, ["gpf.train.run"]),
    ("from ._version import __version__", "gpf", True, ["gpf._version.__version__"]),
    ("from .errors import GPFError", "gpf.fsutil", False, ["gpf.errors.GPFError"]),
    ("def f():\n    if True:\n        from ..train.loop import fit\n", "gpf.shards.reader", False,
     ["gpf.train.loop.fit"]),
    ("import importlib\nimportlib.import_module('gpf.cli.main')", "gpf.model.x", False, ["gpf.cli.main"]),
    ("import os, numpy\nfrom typing import Any\nfrom . import x", "gpf.vocabulary", False, ["gpf.x"]),
])
def test_resolver(source, module, is_package, expected):
    assert [target for _, target in imports_in(source, module, is_package)] == expected


def test_rooms_import_only_rooms_above_them():
    for n, room in enumerate(ROOMS):
        assert set(MAY_IMPORT[room]) <= set(ROOMS[:n]), f"{room} may import a room that is not above it"


def test_rooms_of_modules():
    assert room_of("gpf") == room_of("gpf.errors") == room_of("gpf.vocabulary.TAU") == BASE
    assert room_of("gpf.model.checkpoint.Checkpoint") == "model"
    assert room_of("gpf.workflows.experiment") == room_of("gpf.workflows.synthetic.make") == "workflows"
    assert room_of("gpf.train.loop.fit") == "train" and room_of("gpf.pipeline") == "pipeline"


def test_an_upward_import_is_caught():
    rows = [(1, t) for _, t in imports_in("def f():\n    from ..train import loop\n", "gpf.model.gpf", False)]
    assert rows == [(1, "gpf.train.loop")]
    assert not allowed("model", room_of("gpf.train.loop"))
    assert not allowed(BASE, "pipeline") and allowed("cli", "workflows") and not allowed("train", "workflows")
    assert allowed("shards", BASE) and not allowed("shards", "model") and allowed("pipeline", "shards")


# ----------------------------------------------------------------------------- the package

def test_every_package_folder_is_a_room():
    folders = sorted(p.parent.name for p in PKG.glob("*/__init__.py"))
    assert set(folders) <= set(ROOMS), (f"package folders not in the room table {ROOMS}: "
                                        f"{sorted(set(folders) - set(ROOMS))}; add them here and to "
                                        f"docs/internals.md")
    missing = [room for room in ROOMS if room not in folders]
    assert not missing, f"rooms without an __init__.py: {missing}"


def test_imports_point_down_the_room_table():
    rows = all_imports()
    assert len(rows) > 100, "the import scan found almost nothing; is PKG right?"
    bad = [describe(*row) for row in rows if not allowed(row[3], row[4]) and not known(row[0], row[2])]
    assert not bad, "imports that point up the room table:\n" + "\n".join(bad)


def test_known_violations_still_exist():
    """An entry of KNOWN_VIOLATIONS that no longer matches an import must be deleted (the list only shrinks)."""
    live = {(file, target) for file, _, target, importer, room in all_imports() if not allowed(importer, room)}
    stale = [entry for entry in KNOWN_VIOLATIONS if not any(known(f, t, [entry]) for f, t in live)]
    assert not stale, f"fixed, so delete from KNOWN_VIOLATIONS: {stale}"


def test_no_library_room_imports_cli():
    bad = [f"{file}:{line} imports {target}" for file, line, target, importer, room in all_imports()
           if room == "cli" and importer != "cli"]
    assert not bad, "only cli/ may import cli:\n" + "\n".join(bad)


def test_workflows_is_imported_only_by_cli():
    bad = [f"{file}:{line} (room {importer}) imports {target}" for file, line, target, importer, room in all_imports()
           if room == "workflows" and importer not in ("workflows", "cli")]
    assert not bad, "only cli/ (and benchmarks/, tests/) may import workflows:\n" + "\n".join(bad)


# ----------------------------------------------------------------------------- docs/internals.md

def test_internals_shows_the_room_table_in_order():
    text = INTERNALS.read_text(encoding="utf-8")
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*`(\w+)/`", text, flags=re.M)
    assert [room for _, room in rows] == list(ROOMS), (
        f"docs/internals.md's room table lists {[room for _, room in rows]}, the test {list(ROOMS)}")
    assert [int(n) for n, _ in rows] == list(range(1, len(ROOMS) + 1))
    for room, may in re.findall(r"^\|\s*\d+\s*\|\s*`(\w+)/`.*\|([^|]*)\|\s*$", text, flags=re.M):
        named = tuple(r for r in ROOMS if f"`{r}`" in may and f"not `{r}`" not in may)
        shown = ROOMS[:ROOMS.index(room)] if "everything" in may else named
        assert set(shown) == set(MAY_IMPORT[room]), (
            f"docs/internals.md says {room} may import {sorted(shown)}, the test {sorted(MAY_IMPORT[room])}")
    headings = re.findall(r"^## \d+\. `(\w+)/`", text, flags=re.M)
    assert headings == list(ROOMS), f"room sections of docs/internals.md: {headings}"
    assert "DESIGN.md" not in text


def test_internals_lists_every_module():
    """Each module of the package has its row (``| `room/module.py` | contract |``)."""
    text = INTERNALS.read_text(encoding="utf-8")
    documented = re.findall(r"^\|\s*`((?:\w+/)*\w+\.py)`\s*\|\s*\S", text, flags=re.M)
    expected = {rel(p) for p in package_files()}
    duplicates = sorted({m for m in documented if documented.count(m) > 1})
    assert not duplicates, f"listed twice in docs/internals.md: {duplicates}"
    missing, extra = sorted(expected - set(documented)), sorted(set(documented) - expected)
    assert not missing, f"modules without a line in docs/internals.md: {missing}"
    assert not extra, f"docs/internals.md lists modules that do not exist: {extra}"
    for module in documented:                           # each under its own room's section
        room = module.split("/")[0] if "/" in module else None
        row = re.search(rf"^\|\s*`{re.escape(module)}`", text, flags=re.M).start()
        section = text[:row].rsplit("\n## ", 1)[-1]
        if room is None:
            assert section.startswith("Root base"), f"{module} is listed outside 'Root base'"
        else:
            assert re.match(rf"\d+\. `{room}/`", section), f"{module} is listed outside the section of {room}/"
