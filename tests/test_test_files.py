"""Tests a contributor can find: every module of more than 100 lines has a test file named for it,
and no test file imports another (shared builders live in tests/helpers/ and conftest.py).

A module ``room/name.py`` is tested by ``tests/test_name.py``, ``tests/test_room_name.py`` or
``tests/room/test_name.py``; :data:`NAMED_OTHERWISE` lists the older names kept as they are.
"""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1]           # the repository root is the package `gpf`
TESTS = Path(__file__).resolve().parent
ROOMS = ("model", "shards", "pipeline", "train", "workflows", "cli")   # docs/internals.md
MAX_UNTESTED_LINES = 100
#: Modules whose test file predates the naming rule.
NAMED_OTHERWISE = {"model/gpf.py": "test_gpf_model.py"}


def modules() -> list[Path]:
    found = sorted(PKG.glob("*.py"))
    for room in ROOMS:
        found += sorted(p for p in (PKG / room).rglob("*.py") if "__pycache__" not in p.parts)
    return [p for p in found if not p.name.startswith("__")]


def expected_test_files(module: Path) -> set[str]:
    rel = module.relative_to(PKG)
    names = {f"test_{module.stem}.py"}
    if len(rel.parts) > 1:
        room = rel.parts[0]
        names |= {f"test_{room}_{module.stem}.py", f"{room}/test_{module.stem}.py"}
    if rel.as_posix() in NAMED_OTHERWISE:
        names.add(NAMED_OTHERWISE[rel.as_posix()])
    return names


def test_file_names_follow_the_rule():
    assert expected_test_files(PKG / "shards" / "layout.py") == {"test_layout.py", "test_shards_layout.py",
                                                             "shards/test_layout.py"}
    assert expected_test_files(PKG / "vocabulary.py") == {"test_vocabulary.py"}


def test_every_module_of_more_than_100_lines_has_a_test_file_named_for_it():
    present = {p.relative_to(TESTS).as_posix() for p in TESTS.rglob("test_*.py")}
    long_modules = [m for m in modules() if len(m.read_text(encoding="utf-8").splitlines()) > MAX_UNTESTED_LINES]
    assert len(long_modules) > 20, "found almost no modules; is PKG right?"
    missing = [f"{m.relative_to(PKG).as_posix()} (e.g. tests/test_{m.stem}.py)" for m in long_modules
               if not expected_test_files(m) & present]
    assert not missing, "modules of more than 100 lines without a test file named for them:\n" + "\n".join(missing)


def imported_tests(source: str, test_modules: set[str]) -> list[tuple[int, str]]:
    """(line, module) of each import in ``source`` of one of ``test_modules`` (absolute or relative)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] + ([alias.name for alias in node.names] if node.level else [])
        else:
            continue
        found += [(node.lineno, n) for n in names if set(n.split(".")) & test_modules]
    return found


def test_imports_of_test_files_are_found():
    tests = {"test_a", "conftest"}
    source = ("import os\nfrom helpers.ava import make_ava\nimport test_a\nfrom test_a import f\n"
              "from . import test_a\nfrom .conftest import x\ndef g():\n    from tests.test_a import h\n")
    assert imported_tests(source, tests) == [(3, "test_a"), (4, "test_a"), (5, "test_a"), (6, "conftest"),
                                             (8, "tests.test_a")]


def test_no_test_file_imports_another():
    test_modules = {p.stem for p in TESTS.rglob("test_*.py")} | {"conftest"}
    bad = [f"{path.relative_to(TESTS).as_posix()}:{line} imports {name}"
           for path in sorted(TESTS.rglob("*.py"))
           for line, name in imported_tests(path.read_text(encoding="utf-8"), test_modules)]
    assert not bad, ("test files import test files; move the shared builder into tests/helpers/ "
                     "or a conftest.py fixture:\n" + "\n".join(bad))
