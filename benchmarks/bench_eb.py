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
from _util import fmt_range, machine_line, time_repeats  # noqa: E402

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


def _time_after(prepare, measured, repeat: int, warmup: int = 1) -> dict:
    """Time ``measured(prepare())`` only, ``repeat`` times after ``warmup``."""
    times = []
    for i in range(warmup + repeat):
        state = prepare()
        start = time.perf_counter()
        measured(state)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "n": repeat}


def measure(model: nn.Module, images: torch.Tensor, layer: str, repeat: int) -> dict:
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

    def eb_prepare():
        with torch.no_grad():
            trace = attention._forward(model, images, layer)
            return trace, {trace.logits: attention._one_hot(trace.logits.tensor, target)}

    def eb_walk(state):
        with torch.no_grad():
            attention._propagate(state[0].nodes, state[1])

    return {
        "forward": time_repeats(forward_with_graph, repeat=repeat),
        "backward": _time_after(forward_with_graph, backward, repeat),
        "eb_walk": _time_after(eb_prepare, eb_walk, repeat),
        "eb_total": time_repeats(lambda: attention.excitation_backprop(model, images, target, layer),
                                 repeat=repeat),
        "map": tuple(attention.excitation_backprop(model, images[:1], target[:1], layer).shape[1:]),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 2 at 112x112, 2 repeats")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DOC, help="Markdown file to write (default: %(default)s)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batch, size, repeat = (2, 112, 2) if args.quick else (4, 224, 5)
    images = torch.randn(batch, 3, size, size)

    command = "benchmarks/bench_eb.py" + (" --quick" if args.quick else "") + f" --threads {args.threads}"
    lines = [f"Command: `.venv/bin/python {command}`  ", f"Machine: {machine_line()}, torch {torch.__version__}, "
             f"{args.threads} torch threads  ",
             f"Batch {batch} x 3 x {size} x {size}, float32, CPU; seconds per batch, median (min–max) "
             f"of {repeat} repeats after 1 warm-up.", "",
             "| network | read-out (map) | forward | backward (autograd) | EB walk | EB total "
             "| EB walk / backward | EB total / (forward + backward) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    origins = set()
    for name, layers in CASES:
        model, origin = build_net(name)
        origins.add(origin)
        for layer in layers:
            r = measure(model, images, attention.resolve_eb_layer(model, layer), repeat)
            ratio = r["eb_walk"]["median"] / r["backward"]["median"]
            ratio_total = r["eb_total"]["median"] / (r["forward"]["median"] + r["backward"]["median"])
            lines.append(f"| {name} | {layer} ({r['map'][0]}×{r['map'][1]}) | {fmt_range(r['forward'])} "
                         f"| {fmt_range(r['backward'])} | {fmt_range(r['eb_walk'])} "
                         f"| {fmt_range(r['eb_total'])} | {ratio:.2f}× | {ratio_total:.2f}× |")
            print(lines[-1], flush=True)
    lines += ["", f"Networks: {', '.join(sorted(origins))}; weights random (speed does not depend on them)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("# Benchmark: Excitation Backprop\n\n" + text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
