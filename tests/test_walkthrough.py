"""docs/walkthrough.md, run: every ``gpf`` command of the page, in order, on a tiny fixture (issue 14).

The commands are read from the page itself (the lines starting with ``gpf `` in its ```bash
blocks), so the page and the test cannot drift: a command added to the page is run here and needs
a check in :data:`STEPS`, an option renamed in the CLI fails here. They run exactly as written,
in a folder laid out as the page's section 1 says (photos/ and votes.csv with the page's CSV
header, paths relative to the CSV's folder), except for the options of :data:`TINY`, the one
place that makes them take seconds on two CPU cores (tiny backbone, random weights, 32 px views,
one epoch). Each ```text block under a command lists lines its output must hold ("..." stands for
anything, runs of spaces count as one); a block starting with ``Error:`` means the command must
fail with exit status 1 and those words. The fixture has 57 photos, the size of the issue's trial,
so the page's outputs (48 training images, 3 validation images, ``--batch-size 16``) are the ones
the commands print here.
"""
from __future__ import annotations

import hashlib
import re
import shlex
from pathlib import Path

import click
import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from gpf.cli.main import cli
from gpf.model.checkpoint import load_checkpoint
from gpf.shards.manifest import read_manifest
from helpers.ava import photo_like
from helpers.cli import invoke

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "walkthrough.md"

#: What the test changes in the page's commands, per command: each option is set to this value
#: (replacing the page's value, or added; ``None`` = a flag). On your photos keep the page's:
#: vgg16 with ImageNet weights, 224 px views, up to 50 epochs, the device gpf picks.
TINY: dict[str, dict[str, str | None]] = {
    "train stage1": {"--backbone": "tiny", "--weights": "none", "--view-size": "32", "--epochs": "1",
                     "--workers": "0", "--device": "cpu", "--no-tensorboard": None},
    "preprocess folder": {"--view-size": "32", "--workers": "1", "--device": "cpu"},
    "train stage2": {"--backbone": "tiny", "--weights": "none", "--epochs": "1", "--workers": "0",
                     "--device": "cpu", "--no-tensorboard": None, "--branch-width": "64", "--fusion-width": "64"},
    "evaluate": {"--workers": "0", "--device": "cpu"},
    "predict": {"--workers": "1", "--device": "cpu"},
    "attention": {"--device": "cpu"},
}

N_PHOTOS = 57                               # 6 test, 3 val, 48 train by the default split
FOLDERS = ("beach", "city", "forest")
N_NEW_PHOTOS = 3


# ----------------------------------------------------------------------------- reading the page

def code_blocks(text: str) -> list[tuple[str, list[str]]]:
    """(language, lines) of every fenced block, indentation of indented (list item) blocks removed."""
    blocks, current, indent = [], None, 0
    for line in text.splitlines():
        fence = re.fullmatch(r"(\s*)```(\w*)\s*", line)
        if fence and current is None:
            indent, current = len(fence.group(1)), (fence.group(2), [])
        elif fence:
            blocks.append(current)
            current = None
        elif current is not None:
            current[1].append(line[indent:] if line[:indent].strip() == "" else line)
    assert current is None, f"{PAGE.name}: a code block is not closed"
    return blocks


def command_key(argv: list[str]) -> str:
    """'train stage1', 'preprocess folder', 'shards info', 'evaluate', ...: the click command path."""
    command, names = cli, []
    for word in argv[1:]:
        if not isinstance(command, click.Group):
            break
        command = command.get_command(click.Context(command), word)
        assert command is not None, f"{PAGE.name}: `{shlex.join(argv)}`: no command {word!r}"
        names.append(word)
    return " ".join(names)


def click_command(key: str) -> click.Command:
    command = cli
    for word in key.split():
        command = command.get_command(click.Context(command), word)
    return command


def option_names(key: str) -> set[str]:
    return {name for param in click_command(key).params if isinstance(param, click.Option)
            for name in (*param.opts, *param.secondary_opts)}


def page_steps(text: str | None = None) -> list[dict]:
    """Every ``gpf`` command of the page's bash blocks, in order, with the text blocks under it."""
    steps = []
    for language, lines in code_blocks(PAGE.read_text() if text is None else text):
        if language == "bash":
            joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
            for line in joined.splitlines():
                if line.strip().startswith("gpf "):
                    argv = shlex.split(line, comments=True)
                    steps.append({"argv": argv, "key": command_key(argv), "expect": [], "error": False})
        elif language == "text":
            assert steps, f"{PAGE.name}: a ```text block before any command"
            wanted = [line for line in lines if line.strip()]
            if wanted and wanted[0].strip().startswith("Error:"):
                steps[-1]["error"] = True
            steps[-1]["expect"] += wanted
    return steps


def page_csv_header() -> list[str]:
    csv_blocks = [lines for language, lines in code_blocks(PAGE.read_text()) if language == "csv"]
    assert len(csv_blocks) == 1, f"{PAGE.name} should show one CSV excerpt"
    return csv_blocks[0][0].split(",")


def tiny(argv: list[str], key: str) -> list[str]:
    """The page's command with the options of TINY set."""
    argv = list(argv)
    for option, value in TINY.get(key, {}).items():
        if option in argv:
            if value is not None:
                argv[argv.index(option) + 1] = value
        else:
            argv += [option] if value is None else [option, value]
    return argv


def normalized(line: str) -> str:
    return " ".join(line.split())


def missing_lines(expected: list[str], output: str) -> list[str]:
    """Lines of ``expected`` that match no line of ``output`` ('...' = anything)."""
    got = [normalized(line) for line in re.split(r"[\r\n]+", output)]
    missing = []
    for line in expected:
        pattern = re.compile(".*?".join(re.escape(part) for part in normalized(line).split("...")))
        if not any(pattern.fullmatch(g) for g in got):
            missing.append(line)
    return missing


# ----------------------------------------------------------------------------- the fixture

def write_fixture(folder: Path, steps: list[dict]) -> dict:
    """Section 1 of the page: photos/<place>/NNN.jpg, votes.csv beside photos/ with the page's
    header and paths relative to it; and the new photos the predict and attention steps name."""
    header = page_csv_header()
    assert header[0] == "path" and len(header) > 2, header
    rng = np.random.default_rng(0)
    rows = []
    for k in range(N_PHOTOS):
        path = Path("photos") / FOLDERS[k % len(FOLDERS)] / f"{k:03d}.jpg"
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        size = (48, 36) if k % 2 else (36, 48)
        Image.fromarray(photo_like(*size, rng)).save(folder / path, quality=90)
        votes = rng.integers(0, 8, len(header) - 1)
        votes[k % len(votes)] += 6
        rows.append(",".join([path.as_posix(), *map(str, votes)]))
    csv_name = next(s["argv"][4] for s in steps if s["key"] == "train stage1")   # gpf train stage1 folder CSV
    (folder / csv_name).write_text(",".join(header) + "\n" + "\n".join(rows) + "\n")

    predict = next(s for s in steps if s["key"] == "predict")
    attention = next(s for s in steps if s["key"] == "attention")
    new_folder = next(a for a in predict["argv"][2:] if a.endswith("/"))
    photo = next(a for a in attention["argv"] if a.lower().endswith((".jpg", ".jpeg", ".png")))
    assert photo.startswith(new_folder), "the attention step should draw one of the photos predict scores"
    names = [Path(photo).name] + [f"IMG_{2040 + k}.jpg" for k in range(1, N_NEW_PHOTOS)]
    (folder / new_folder).mkdir()
    for name in names:
        Image.fromarray(photo_like(64, 48, rng)).save(folder / new_folder / name, quality=90)
    return {"header": header, "new_photos": sorted(names)}


# ----------------------------------------------------------------------------- what each step makes

def tar_digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))}


def _stage1(d, fixture, argv, out):
    ckpt = load_checkpoint(d / "runs/stage1/best.pt", expect="stage1")
    assert [c["column"] for c in ckpt.dataset["score_columns"]] == fixture["header"][1:]
    assert (d / "runs/stage1/metrics.csv").is_file()


def _preprocess(d, fixture, argv, out):
    manifest = read_manifest(d / "shards")
    assert manifest.complete
    assert sum(manifest.samples(split) for split in ("train", "val", "test")) == N_PHOTOS
    fixture["tars"] = tar_digests(d / "shards")


def _verify(d, fixture, argv, out):
    assert "OK" in out


def _info(d, fixture, argv, out):
    assert "config:" in out


def _stage2_refused(d, fixture, argv, out):
    assert "pass --batch-size" in out and not (d / "runs/gpf/last.pt").exists()


def _stage2(d, fixture, argv, out):
    ckpt = load_checkpoint(d / "runs/gpf/best.pt", expect="stage2")
    assert ckpt.model_config["variant"] == "gpf"


def _evaluate(d, fixture, argv, out):
    pictures = sorted((d / "plots").glob("*.png"))
    assert len(pictures) >= 3, pictures
    for picture in pictures:
        with Image.open(picture) as image:
            assert image.format == "PNG" and min(image.size) > 100


def _predict(d, fixture, argv, out):
    table = pq.read_table(d / "scores.parquet").to_pandas()
    assert sorted(table["id"]) == fixture["new_photos"]
    assert (table["status"] == "ok").all() and table["mean"].between(1, 10).all()


def _attention(d, fixture, argv, out):
    picture = d / argv[argv.index("--out") + 1]
    with Image.open(picture) as image:
        assert image.format == "PNG" and image.size[0] > image.size[1]


def _preprocess_again(d, fixture, argv, out):
    assert "shards: 0 written, 3 already done" in out
    assert tar_digests(d / "shards") == fixture["tars"]            # nothing redone


def _resume(d, fixture, argv, out):
    assert "nothing to do" in out


#: The page's commands in order, with what each must have made (besides exit status 0, or 1 for
#: a command whose output block starts with "Error:", and the lines of its output block).
STEPS = [
    ("train stage1", _stage1),
    ("preprocess folder", _preprocess),
    ("shards verify", _verify),
    ("shards info", _info),
    ("train stage2", _stage2_refused),
    ("train stage2", _stage2),
    ("evaluate", _evaluate),
    ("predict", _predict),
    ("attention", _attention),
    ("preprocess folder", _preprocess_again),
    ("train stage1", _resume),
    ("train stage2", _resume),
]


# ----------------------------------------------------------------------------- tests

def test_the_page_is_listed_and_its_commands_are_the_ones_this_test_checks():
    steps = page_steps()
    assert [s["key"] for s in steps] == [key for key, _ in STEPS]
    assert "docs/walkthrough.md" in (REPO / "README.md").read_text()
    for step in steps:                         # every option the page writes exists (help lists it)
        written = {a for a in step["argv"] if a.startswith("--")}
        assert written <= option_names(step["key"]), (shlex.join(step["argv"]), written - option_names(step["key"]))
    for key, settings in TINY.items():         # and TINY sets only real options
        assert set(settings) <= option_names(key), (key, set(settings) - option_names(key))
    # the page's own vocabulary: the paper's backbone with ImageNet weights, not the test's tiny one
    first = steps[0]["argv"]
    assert first[first.index("--backbone") + 1] == "vgg16" and first[first.index("--weights") + 1] == "imagenet"


def test_reading_the_page():
    text = "\n".join([
        "```bash", "gpf shards verify shards   # a comment", "```",
        "```text", "shards: ... OK", "```",
        "- a list item:", "", "  ```bash", "  gpf train stage2 --shards s \\", "      --out r", "  ```",
        "  ```text", "  Error: the shards in s hold 3 ...", "  ```",
        "```", "gpf models", "```",
    ])
    steps = page_steps(text)
    assert [s["argv"] for s in steps] == [["gpf", "shards", "verify", "shards"],
                                          ["gpf", "train", "stage2", "--shards", "s", "--out", "r"]]
    assert [s["error"] for s in steps] == [False, True]
    assert steps[0]["expect"] == ["shards: ... OK"]
    assert tiny(["gpf", "predict", "--device", "cuda", "x/"], "predict") == \
        ["gpf", "predict", "--device", "cpu", "x/", "--workers", "1"]
    assert missing_lines(["a ...  c", "x  y"], "a b    c\nq\rx y z") == ["x  y"]


def test_every_command_of_the_walkthrough_runs_as_written(tmp_path, monkeypatch):
    steps = page_steps()
    fixture = write_fixture(tmp_path, steps)
    monkeypatch.chdir(tmp_path)
    for number, (step, (key, check)) in enumerate(zip(steps, STEPS, strict=True), 1):
        assert step["key"] == key
        argv = tiny(step["argv"], key)
        result = invoke(argv[1:])
        where = f"step {number}: {shlex.join(argv)}\n{result.output}"
        assert result.exit_code == (1 if step["error"] else 0), where
        missing = missing_lines(step["expect"], result.output)
        assert not missing, f"lines of {PAGE.name} not in the output of {where}\nmissing: {missing}"
        check(tmp_path, fixture, argv, result.output)
