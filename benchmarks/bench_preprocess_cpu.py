"""Benchmark the CPU part of preprocess (decode, both views, two JPEG encodes) per core.

    .venv/bin/python benchmarks/bench_preprocess_cpu.py                # this PIL; writes the doc
    .venv/bin/python benchmarks/bench_preprocess_cpu.py \\
        --other-python /tmp/venv-pillow/bin/python                    # + plain Pillow, same files
    .venv/bin/python benchmarks/bench_preprocess_cpu.py --quick --no-write   # smoke run

The doc is docs/bench/preprocess_cpu.md.

Per image: ``load_image`` (full decode, upright RGB), ``peripheral_view`` (224
longest side), ``foveal_view`` of a box of half the image's area (side ratio
0.71, random position) to 224 x 224, and ``encode_jpeg`` of both views at
quality 95. The baseline is PIL's bare decode (``Image.open(path).load()``) of the
same files in the same run, single process, one thread.

The inputs are 640 x 480 JPEGs at quality 90 with photo-like entropy (sinusoidal
colour gradients plus noise at 64, 16, 4 and 1 px scales), checked to weigh
80-150 KB each like AVA photos: smooth synthetic images decode much faster and
would flatter the ratio.

``--other-python`` runs this script again under another interpreter on the same
files (``--measure-only``, JSON on stdout) and adds its figures and the ratio
between the two PIL builds to the report. The other environment needs only
Pillow and numpy: when ``gpf`` is not installed there, the script imports the
package from this checkout by path (nothing is installed), e.g.

    python3 -m venv /tmp/venv-pillow && /tmp/venv-pillow/bin/pip install pillow numpy
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import fmt_range, machine_line, rate_stats, time_repeats  # noqa: E402

DOC = REPO / "docs" / "bench" / "preprocess_cpu.md"
VIEW = 224
QUALITY = 95
SIZE_KB = (80, 150)
HEADER = """# Benchmark: CPU part of preprocess

Decode plus both views plus two JPEG encodes per image, per core, against the
bare decode of the same files (`benchmarks/bench_preprocess_cpu.py`). The second
PIL is plain Pillow in a throw-away environment outside the repository:

    python3 -m venv /tmp/venv-pillow && /tmp/venv-pillow/bin/pip install pillow numpy

`gpf` is not installed there; the script imports the package from the checkout
by path (`importlib`), which works because `gpf.pipeline.images` needs only PIL
and numpy.

"""


def import_images_module():
    """``gpf.pipeline.images``, from the installed package or else from this checkout."""
    try:
        import gpf  # noqa: F401
    except ImportError:
        spec = importlib.util.spec_from_file_location(
            "gpf", REPO / "__init__.py", submodule_search_locations=[str(REPO)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["gpf"] = module
        spec.loader.exec_module(module)
    from gpf.pipeline import images

    return images


def photo_like(seed: int, width: int = 640, height: int = 480) -> np.ndarray:
    """RGB uint8 with the entropy of a photo: colour gradients plus multi-scale noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.empty((height, width, 3), np.float32)
    for c in range(3):
        fx, fy, phase = rng.uniform(-1, 1, 3)
        img[..., c] = 128 + 60 * np.sin(fx * x / 97 + fy * y / 71 + phase * 6)
    for scale, amplitude in ((64, 40), (16, 25), (4, 14), (1, 9)):
        noise = rng.normal(0, 1, (height // scale + 2, width // scale + 2, 3))
        small = Image.fromarray((noise * 40 + 128).clip(0, 255).astype(np.uint8))
        big = small.resize((width + 2 * scale, height + 2 * scale), Image.Resampling.BICUBIC)
        img += (np.asarray(big, np.float32)[:height, :width] - 128) * amplitude / 40
    return img.clip(0, 255).astype(np.uint8)


def make_inputs(folder: Path, count: int) -> list[Path]:
    from PIL import Image

    paths = []
    for index in range(count):
        path = folder / f"photo_{index:03d}.jpg"
        Image.fromarray(photo_like(index)).save(path, format="JPEG", quality=90)
        kb = path.stat().st_size / 1024
        if not SIZE_KB[0] <= kb <= SIZE_KB[1]:
            raise SystemExit(f"{path}: {kb:.0f} KB is outside {SIZE_KB} KB; the generator needs tuning")
        paths.append(path)
    large = folder / "large_2400x1600.jpg"
    Image.fromarray(photo_like(999, 2400, 1600)).save(large, format="JPEG", quality=90)
    return paths


def fovea_box(size: tuple[int, int], seed: int) -> tuple[int, int, int, int]:
    """A box of half the image's area at a random position."""
    width, height = size
    box_w, box_h = round(width * 0.5 ** 0.5), round(height * 0.5 ** 0.5)
    rng = np.random.default_rng(seed)
    x0, y0 = int(rng.integers(0, width - box_w + 1)), int(rng.integers(0, height - box_h + 1))
    return x0, y0, x0 + box_w, y0 + box_h


def measure(folder: Path, repeat: int) -> dict:
    """Seconds per pass over the inputs in ``folder`` for every step, under this
    interpreter's PIL. Steps are interleaved within each repeat, so a busy
    machine slows the baseline and the pipeline alike."""
    from PIL import Image

    images = import_images_module()
    paths = sorted(folder.glob("photo_*.jpg"))
    large = folder / "large_2400x1600.jpg"

    def pil_decode():
        for path in paths:
            with Image.open(path) as im:
                im.load()

    def cpu_part():
        for index, path in enumerate(paths):
            img = images.load_image(path)
            periph = images.peripheral_view(img, VIEW)
            fovea = images.foveal_view(img, fovea_box(img.size, index), VIEW)
            images.encode_jpeg(periph, QUALITY), images.encode_jpeg(fovea, QUALITY)

    decoded = [images.load_image(p) for p in paths]
    boxes = [fovea_box(im.size, i) for i, im in enumerate(decoded)]
    views = [images.peripheral_view(im, VIEW) for im in decoded]
    large_img = images.load_image(large)
    large_view_size = images.peripheral_view(large_img, VIEW).size
    steps = {
        "pil_decode": pil_decode,
        "load_image": lambda: [images.load_image(p) for p in paths],
        "cpu_part": cpu_part,
        "peripheral": lambda: [images.peripheral_view(im, VIEW) for im in decoded],
        "foveal": lambda: [images.foveal_view(im, b, VIEW) for im, b in zip(decoded, boxes)],
        "encode2": lambda: [images.encode_jpeg(v, QUALITY) for v in views for _ in (0, 1)],
        "large_decode_full": lambda: images.load_image(large),
        "large_decode_reduced": lambda: images.load_image(large, reduce_to=VIEW),
        "large_lanczos_one_pass": lambda: large_img.resize(large_view_size, Image.Resampling.LANCZOS),
        "large_peripheral_view": lambda: images.peripheral_view(large_img, VIEW),
    }
    times = {name: [] for name in steps}
    for iteration in range(repeat + 1):  # the first pass warms caches and is dropped
        for name, step in steps.items():
            seconds = time_repeats(step, repeat=1, warmup=0)["median"]
            if iteration:
                times[name].append(seconds)
    return {"pil": images.pil_features(), "n": len(paths),
            "mean_kb": sum(p.stat().st_size for p in paths) / len(paths) / 1024, "times": times}


def stats(samples: list[float], scale: float = 1.0) -> dict:
    """``time_repeats``-style summary of ``samples`` multiplied by ``scale``."""
    values = sorted(v * scale for v in samples)
    middle = len(values) // 2
    median = values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2
    return {"median": median, "min": values[0], "max": values[-1], "n": len(values)}


def load_average() -> str:
    """The 1-minute load average: on a shared machine it explains slow absolute figures."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except (AttributeError, OSError):
        return "unknown"


def pil_name(result: dict) -> str:
    pil = result["pil"]
    avx = {True: ", AVX2", False: "", None: ""}[pil.get("avx2")]
    return f"{pil['flavour']} {pil['version']}{avx}"


def section(runs: list[tuple[str, dict]], command: str) -> str:
    first = runs[0][1]
    n = first["n"]
    samples = len(first["times"]["cpu_part"])
    rate = {name: {key: rate_stats(stats(t), n if not key.startswith("large_") else 1)
                   for key, t in r["times"].items()} for name, r in runs}
    per_image_ms = {name: {key: stats(t, 1e3 / n) for key, t in r["times"].items()} for name, r in runs}
    large_ms = {name: {key: stats(t, 1e3) for key, t in r["times"].items()} for name, r in runs}
    lines = [
        f"Command: `{command}`",
        "",
        f"Machine: {machine_line()}, load average {load_average()} at the end. "
        f"Single process, one thread, median (min–max) of {samples} passes "
        "over the inputs; the steps are interleaved within each pass, and with a second PIL the two "
        "interpreters alternate in rounds, so machine load hits every figure alike.",
        "",
        f"Inputs: {n} JPEGs 640x480, quality 90, photo-like content, mean {first['mean_kb']:.0f} KB "
        f"(all within {SIZE_KB[0]}–{SIZE_KB[1]} KB). CPU part = `load_image` + `peripheral_view` "
        f"({VIEW} longest side) + `foveal_view` (half-area box to {VIEW}x{VIEW}) + 2 x `encode_jpeg` "
        f"(quality {QUALITY}). Baseline = PIL's bare decode (`Image.open(path).load()`) of the same files. "
        "Ratio = per pass, CPU-part rate / decode rate.",
        "",
        "| PIL | PIL decode (img/s) | `load_image` (img/s) | CPU part (img/s) | CPU part / decode |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, r in runs:
        t = r["times"]
        ratio = stats([d / c for d, c in zip(t["pil_decode"], t["cpu_part"])], 100)
        lines.append(f"| {name} | {fmt_range(rate[name]['pil_decode'], digits=0)} "
                     f"| {fmt_range(rate[name]['load_image'], digits=0)} "
                     f"| {fmt_range(rate[name]['cpu_part'], digits=0)} | {fmt_range(ratio, digits=0)} % |")
    lines += ["", "Per image, ms (views and encodes timed on already decoded images):", "",
              "| PIL | peripheral view | foveal view | 2 JPEG encodes |", "| --- | --- | --- | --- |"]
    for name, _ in runs:
        ms = per_image_ms[name]
        lines.append(f"| {name} | {fmt_range(ms['peripheral'])} | {fmt_range(ms['foveal'])} "
                     f"| {fmt_range(ms['encode2'])} |")
    lines += ["", "One 2400x1600 photo-like JPEG (quality 90), ms:", "",
              "| PIL | full decode | `reduce_to=224` decode | Lanczos to the view in one pass "
              "| `peripheral_view` (reduce + Lanczos, gap 3) |", "| --- | --- | --- | --- | --- |"]
    for name, _ in runs:
        ms = large_ms[name]
        lines.append(f"| {name} | {fmt_range(ms['large_decode_full'], digits=1)} "
                     f"| {fmt_range(ms['large_decode_reduced'], digits=1)} "
                     f"| {fmt_range(ms['large_lanczos_one_pass'], digits=1)} "
                     f"| {fmt_range(ms['large_peripheral_view'], digits=1)} |")
    if len(runs) == 2:
        (name_a, a), (name_b, b) = runs
        ratio = {key: stats([tb / ta for ta, tb in zip(a["times"][key], b["times"][key])])
                 for key in ("cpu_part", "pil_decode", "peripheral", "foveal")}
        lines += ["", f"{name_a} / {name_b} speed, per pair of passes run back to back: "
                      f"CPU part {fmt_range(ratio['cpu_part'])}x; PIL decode {fmt_range(ratio['pil_decode'])}x; "
                      f"peripheral view {fmt_range(ratio['peripheral'])}x; "
                      f"foveal view {fmt_range(ratio['foveal'])}x."]
    return "\n".join(lines) + "\n"


def run_other(python: str, folder: Path, repeat: int) -> dict:
    command = [python, str(Path(__file__).resolve()), "--measure-only", str(folder), "--repeat", str(repeat)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{python} failed:\n{done.stderr}")
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32, help="number of 640x480 inputs (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes per round (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds, alternating the interpreters "
                        "(default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="8 images, 2 rounds of 2 passes")
    parser.add_argument("--other-python", help="also measure under this interpreter (e.g. plain Pillow)")
    parser.add_argument("--out", type=Path, default=DOC, help="Markdown file to write (default: %(default)s)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--measure-only", type=Path, metavar="FOLDER", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.repeat, args.rounds = 8, 2, 2
    if args.measure_only:
        json.dump(measure(args.measure_only, args.repeat), sys.stdout)
        return 0

    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="gpf-bench-preprocess-") as tmp:
        folder = Path(tmp)
        make_inputs(folder, args.images)
        for _ in range(args.rounds):
            results = [measure(folder, args.repeat)]
            if args.other_python:
                results.append(run_other(args.other_python, folder, args.repeat))
            for result in results:
                merged = runs.setdefault(pil_name(result), {**result, "times": {k: [] for k in result["times"]}})
                for key, samples in result["times"].items():
                    merged["times"][key].extend(samples)
    command = "python benchmarks/bench_preprocess_cpu.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = section(list(runs.items()), command.strip())
    print(text)
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(HEADER + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
