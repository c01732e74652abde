"""The ``gpf`` command group (gpf.cli.main): help, versions, unknown commands, lazy loading.

The references: the command modules in ``cli/`` (one per command), the
versions the libraries report themselves, and a fresh interpreter's
``sys.modules`` for what ``gpf --help`` imports.
"""
from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import click
import pytest

from helpers.cli import invoke
from gpf.cli.main import cli, main

CLI_DIR = Path(__file__).resolve().parents[1] / "cli"
#: One module per command; the others are the group itself and shared code.
COMMANDS = sorted(p.stem for p in CLI_DIR.glob("*.py") if p.stem not in ("__init__", "__main__", "main", "common"))


def test_the_commands_are_the_modules_of_cli():
    assert COMMANDS == ["attention", "demo", "evaluate", "models", "predict", "preprocess", "shards", "train"]


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_every_command_with_its_line(flag):
    result = invoke([flag])
    assert result.exit_code == 0, result.output
    assert "Typical flow: train stage1 -> preprocess -> train stage2 -> evaluate." in result.output
    commands = result.output.split("Commands:", 1)[1].splitlines()
    listed = {line.split()[0]: line.split(None, 1)[1] for line in commands if line.strip()}
    assert sorted(listed) == COMMANDS
    assert all(len(text) > 10 for text in listed.values()), listed


@pytest.mark.parametrize("name", COMMANDS)
def test_every_listed_command_loads_and_has_help(name):
    command = cli.get_command(click.Context(cli, info_name="gpf"), name)
    assert isinstance(command, click.Command) and command.name == name
    result = invoke([name, "--help"])
    assert result.exit_code == 0 and f"Usage: cli {name}" in result.output, result.output


def test_help_imports_no_command_module_nor_torch():
    code = ("import sys\nfrom gpf.cli.main import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m in ('torch', 'numpy', 'PIL') or m.startswith('gpf.cli.')))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "['gpf.cli.main']"


@pytest.mark.parametrize("typo, suggestions", [("preproces", ["preprocess"]), ("evalute", ["evaluate"]),
                                               ("atention", ["attention"]), ("shard", ["shards"])])
def test_an_unknown_command_suggests_close_matches(typo, suggestions):
    result = invoke([typo, "--help"])
    assert result.exit_code == 2
    message = result.output
    assert f"No such command {typo!r}. Did you mean: {', '.join(suggestions)}?" in message
    assert f"Commands: {', '.join(COMMANDS)}." in message


def test_an_unknown_command_without_a_close_match_lists_the_commands():
    result = invoke(["xyzzy"])
    assert result.exit_code == 2
    assert "No such command 'xyzzy'. Commands: attention, demo" in result.output
    assert "Did you mean" not in result.output


def test_version_prints_gpf_torch_torchvision_pil_and_python():
    import PIL
    import torch
    import torchvision

    from gpf import __version__

    result = invoke(["--version"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0] == f"gpf {__version__}"
    assert lines[1] == f"torch {torch.__version__} (cuda available: {torch.cuda.is_available()})"
    assert lines[2] == f"torchvision {torchvision.__version__}"
    assert lines[3].startswith("PIL: ") and f" {PIL.__version__} (" in lines[3]
    assert lines[4] == f"python {platform.python_version()}"


def test_the_entry_point_exits_with_click_status(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("gpf ")
    with pytest.raises(SystemExit) as info:
        main(["preproces"])
    assert info.value.code == 2 and "Did you mean: preprocess?" in capsys.readouterr().err
