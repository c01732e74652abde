"""Benchmark Excitation Backprop (``gpf.model.attention``) against one autograd backward pass.

    .venv/bin/python benchmarks/bench_eb.py            # full run, writes docs/bench/eb.md
    .venv/bin/python benchmarks/bench_eb.py --quick    # smaller batch and views, fewer repeats

For each network and read-out layer, on the same batch:

* *forward*: the model's own forward pass with weights requiring grad (as in
  training), timed apart;
* *backward*: one ordinary ``torch.autograd`` backward pass of the target logits
  (all weight gradients, down to the first layer), the forward done untimed;
* *EB walk*: the top-down Excitation Backprop walk from the logits down to the
  read-out layer, its forward pass done untimed;
* *EB total*: ``excitation_backprop`` end to end (its own forward pass + walk).

The ratio *EB walk / backward* is the figure of merit (target <= 0.7 for VGG16).
The four are timed in interleaved rounds and the ratios taken within a round, so
that a busy shared machine slows both sides of a ratio alike.
Networks are the project's backbones (``create_backbone`` + ``PeripheralNet``,
two classes) when they import, else torchvision's ``vgg16`` / ``resnet18``
(``weights=None``) cut into ``features`` + a two-class head.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import fmt_range, machine_line  # noqa: E402

from gpf.model import attention  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "bench" / "eb.md"
# (network, read-out layers relative to `features`)
CASES = (("vgg16", ("pool3", "pool4")), ("resnet18", ("layer2", "layer3")))


class _FeaturesHead(nn.Module):
    def __init__(self, features: nn.Sequential, head: nn.Sequential):
        super().__init__()
        self.features, self.head = features, head

    def forward(self, x):
        return self.head(self.features(x))


def _torchvision_net(name: str) -> nn.Module:
    import torchvision
    if name == "vgg16":
        children, pool = OrderedDict(), 0
        for index, module in enumerate(torchvision.models.vgg16(weights=None).features):
            pool += isinstance(module, nn.MaxPool2d)
            children[f"pool{pool}" if isinstance(module, nn.MaxPool2d) else f"layer{index}"] = module
        features, channels = nn.Sequential(children), 512
    else:
        net = torchvision.models.resnet18(weights=None)
        names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
        features, channels = nn.Sequential(OrderedDict((n, getattr(net, n)) for n in names)), 512
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(channels, 2))
    return _FeaturesHead(features, head)


def build_net(name: str) -> tuple[nn.Module, str]:
    """(model in eval mode, where it came from)."""
    try:
        from gpf.model.backbones import create_backbone
        from gpf.model.gpf import PeripheralNet
        model, origin = PeripheralNet(create_backbone(name)), "gpf PeripheralNet"
    except ImportError:
        model, origin = _torchvision_net(name), "torchvision, features + 2-class head"
    return model.eval(), origin


def _stats(times: list[float]) -> dict:
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "n": len(times)}


def _timed(fn, *args) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def measure(model: nn.Module, images: torch.Tensor, layer: str, repeat: int) -> dict:
    """Interleaved rounds (forward, backward, EB walk, EB total) so that every
    quantity sees the same machine load; ratios are taken within each round."""
    for p in model.parameters():
        p.requires_grad_(True)
    with torch.no_grad():
        target = model(images).argmax(1)
    rows = torch.arange(len(images))

    def forward_with_graph():
        model.zero_grad(set_to_none=True)
        return model(images)

    def backward(logits):
        logits[rows, target].sum().backward()

    def eb_walk(trace):
        with torch.no_grad():
            signal = {trace.logits: attention._one_hot(trace.logits.tensor, target)}
            attention._propagate(trace.nodes, signal)
            return signal[trace.readout]

    times = {key: [] for key in ("forward", "backward", "eb_walk", "eb_total")}
    for round_ in range(repeat + 1):  # round 0 is the warm-up
        t_forward, logits = _timed(forward_with_graph)
        t_backward, _ = _timed(backward, logits)
        del logits
        with torch.no_grad():
            trace = attention._forward(model, images, layer)
        t_walk, _ = _timed(eb_walk, trace)
        del trace
        t_total, maps = _timed(attention.excitation_backprop, model, images, target, layer)
        if round_:
            for key, value in zip(times, (t_forward, t_backward, t_walk, t_total)):
                times[key].append(value)
    result = {key: _stats(values) for key, values in times.items()}
    result["walk_ratio"] = _stats([w / b for w, b in zip(times["eb_walk"], times["backward"])])
    result["total_ratio"] = _stats([t / (f + b) for t, f, b in
                                    zip(times["eb_total"], times["forward"], times["backward"])])
    result["map"] = tuple(maps.shape[1:])
    return result


def table(images: torch.Tensor, repeat: int) -> tuple[list[str], set[str]]:
    lines = ["| network | read-out (map) | forward | backward (autograd) | EB walk | EB total "
             "| EB walk / backward | EB total / (forward + backward) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    origins = set()
    for name, layers in CASES:
        model, origin = build_net(name)
        origins.add(origin)
        for layer in layers:
            r = measure(model, images, attention.resolve_eb_layer(model, layer), repeat)
            lines.append(f"| {name} | {layer} ({r['map'][0]}×{r['map'][1]}) | {fmt_range(r['forward'])} "
                         f"| {fmt_range(r['backward'])} | {fmt_range(r['eb_walk'])} "
                         f"| {fmt_range(r['eb_total'])} | {fmt_range(r['walk_ratio'])}× "
                         f"| {fmt_range(r['total_ratio'])}× |")
            print(lines[-1], flush=True)
    return lines, origins


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 2 at 112x112, 2 rounds")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="torch thread counts, one table each (default: 1 2)")
    parser.add_argument("--out", type=Path, default=DOC, help="Markdown file to write (default: %(default)s)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    batch, size, repeat = (2, 112, 2) if args.quick else (4, 224, 7)
    images = torch.randn(batch, 3, size, size)

    command = ("benchmarks/bench_eb.py" + (" --quick" if args.quick else "")
               + " --threads " + " ".join(map(str, args.threads)))
    lines = [f"Command: `.venv/bin/python {command}`  ",
             f"Machine: {machine_line()}, torch {torch.__version__}  ",
             f"Batch {batch} x 3 x {size} x {size}, float32, CPU; seconds per batch, median (min–max) "
             f"of {repeat} interleaved rounds after 1 warm-up round; ratios are taken within each "
             "round (same machine load), then median (min–max)."]
    origins = set()
    for threads in args.threads:
        torch.set_num_threads(threads)
        lines += ["", f"### {threads} torch thread{'s' if threads > 1 else ''}", ""]
        rows, used = table(images, repeat)
        lines += rows
        origins |= used
    lines += ["", f"Networks: {', '.join(sorted(origins))}; weights random (speed does not depend on them)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("# Benchmark: Excitation Backprop\n\n" + text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
