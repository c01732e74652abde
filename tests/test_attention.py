"""Excitation Backprop (gpf.model.attention) against an independent NumPy reference.

The reference below is written from the paper's Eq. 2-3 directly: every layer
is a list of parent -> (child, weight) connections built with explicit loops,
and each parent hands its winning probability to its children in proportion to
a_child * max(w, 0) (max pooling: to its window's winner). It shares no code
with the module under test.
"""
from __future__ import annotations

import itertools
import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.inception import (BasicConv2d, InceptionA, InceptionB, InceptionC,
                                          InceptionD, InceptionE)
from torchvision.models.resnet import BasicBlock, Bottleneck

from gpf.model import attention
from gpf.model.attention import (eb_layer_names, excitation_backprop, fold_batchnorm,
                                 marginal_winning_probability, resolve_eb_layer, upsample_map)

torch.set_num_threads(1)


# --------------------------------------------------------------------------- #
# Test models
# --------------------------------------------------------------------------- #

class FeaturesHead(nn.Module):
    def __init__(self, features, head, default_eb_layer=None):
        super().__init__()
        self.features = features if isinstance(features, nn.Sequential) else nn.Sequential(features)
        self.head = head if isinstance(head, nn.Sequential) else nn.Sequential(head)
        if default_eb_layer:
            self.default_eb_layer = default_eb_layer

    def forward(self, x):
        return self.head(self.features(x))


def randomize_bn(module: nn.Module, gen: torch.Generator, nonpositive_shift: bool = False) -> None:
    """Random eval statistics for every BatchNorm2d; gamma of both signs.

    ``nonpositive_shift`` makes every folded bias <= 0, so a unit can only be
    active (> 0) if W+ a > 0: then no winning probability is lost anywhere.
    """
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm2d):
            n = bn.num_features
            gamma = torch.rand(n, generator=gen) + 0.5
            gamma *= torch.where(torch.rand(n, generator=gen) < 0.3, -1.0, 1.0)
            mean = torch.randn(n, generator=gen) * 0.3
            beta = torch.randn(n, generator=gen) * 0.1
            if nonpositive_shift:
                mean, beta = mean.abs() * gamma.sign(), -beta.abs()
            bn.weight.data.copy_(gamma)
            bn.bias.data.copy_(beta)
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(torch.rand(n, generator=gen) + 0.5)


def zero_biases(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            m.bias.data.zero_()


def chain_net(seed: int = 0, bias: bool = True) -> FeaturesHead:
    """conv/relu/maxpool/bn/relu/conv/relu/avgpool(padded), head global max pool + linear; 6x6 inputs.

    The batch norm has no conv before it, so it is a per-channel scale of its own.
    """
    torch.manual_seed(seed)
    features = nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 4, 3, padding=1)), ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(2)),
        ("bn", nn.BatchNorm2d(4)), ("relu_bn", nn.ReLU()),
        ("conv2", nn.Conv2d(4, 6, 3, padding=1)), ("relu2", nn.ReLU()),
        ("pool2", nn.AvgPool2d(3, stride=1, padding=1)),
    ]))
    head = nn.Sequential(OrderedDict([("gmp", nn.AdaptiveMaxPool2d(1)), ("flatten", nn.Flatten()),
                                      ("fc", nn.Linear(6, 5))]))
    net = FeaturesHead(features, head).eval()
    randomize_bn(net, torch.Generator().manual_seed(seed), nonpositive_shift=not bias)
    if not bias:
        zero_biases(net)
    return net


def strided_net(seed: int = 1, bias: bool = True) -> FeaturesHead:
    """BN folding, overlapping padded max pool, strided conv, non-divisible adaptive avg pool,
    dropout and a two-layer head; 9x9 inputs."""
    torch.manual_seed(seed)
    features = nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 4, 3, padding=1, bias=False)), ("bn1", nn.BatchNorm2d(4)),
        ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(3, stride=2, padding=1)),              # 9 -> 5
        ("conv2", nn.Conv2d(4, 4, 3, stride=2, padding=1)), ("relu2", nn.ReLU()),  # 5 -> 3
        ("drop", nn.Dropout(0.5)),
        ("pool2", nn.AdaptiveAvgPool2d(2)),                             # 3 -> 2, overlapping
    ]))
    head = nn.Sequential(OrderedDict([
        ("flatten", nn.Flatten()), ("fc1", nn.Linear(16, 6)), ("relu", nn.ReLU()),
        ("fc2", nn.Linear(6, 3)),
    ]))
    net = FeaturesHead(features, head).eval()
    randomize_bn(net, torch.Generator().manual_seed(seed), nonpositive_shift=not bias)
    if not bias:
        zero_biases(net)
    return net


# --------------------------------------------------------------------------- #
# NumPy reference (float64), Eq. 2-3 by explicit connections
# --------------------------------------------------------------------------- #

def conv_connections(w, in_shape, stride, pad):
    """{output index: [(input index, weight)]} of a 2-D convolution."""
    out_c, in_c, kh, kw = w.shape
    _, h, wd = in_shape
    oh, ow = (h + 2 * pad[0] - kh) // stride[0] + 1, (wd + 2 * pad[1] - kw) // stride[1] + 1
    conns = {}
    for o, i, j in itertools.product(range(out_c), range(oh), range(ow)):
        lst = []
        for c, di, dj in itertools.product(range(in_c), range(kh), range(kw)):
            y, x = i * stride[0] - pad[0] + di, j * stride[1] - pad[1] + dj
            if 0 <= y < h and 0 <= x < wd:
                lst.append(((c, y, x), w[o, c, di, dj]))
        conns[(o, i, j)] = lst
    return conns, (out_c, oh, ow)


def window_connections(in_shape, windows_y, windows_x, weight):
    """Channel-wise pooling windows: weight(n_in_window, area) for each member."""
    c_n, _, _ = in_shape
    conns = {}
    for c, (i, (y0, y1)), (j, (x0, x1)) in itertools.product(
            range(c_n), enumerate(windows_y), enumerate(windows_x)):
        members = [(c, y, x) for y in range(y0, y1) for x in range(x0, x1)]
        conns[(c, i, j)] = [(m, weight(len(members), (y1 - y0, x1 - x0))) for m in members]
    return conns, (c_n, len(windows_y), len(windows_x))


def fixed_windows(size, k, s, p):
    """Windows of a pooling without ceil mode, clipped to the input."""
    n = (size + 2 * p - k) // s + 1
    return [(max(0, i * s - p), min(size, i * s - p + k)) for i in range(n)]


def adaptive_windows(size, out):
    return [(math.floor(i * size / out), math.ceil((i + 1) * size / out)) for i in range(out)]


def linear_connections(w):
    return {(o,): [((i,), w[o, i]) for i in range(w.shape[1])] for o in range(w.shape[0])}, (w.shape[0],)


class RefLayer:
    """kind 'linear' (conns + bias), 'max' (windows), 'pass', or 'flatten'."""

    def __init__(self, kind, names, conns=None, out_shape=None, bias=None):
        self.kind, self.names, self.conns, self.out_shape, self.bias = kind, names, conns, out_shape, bias

    def forward(self, a):
        if self.kind == "pass":
            return a
        if self.kind == "relu":
            return np.maximum(a, 0)
        if self.kind == "flatten":
            return a.reshape(-1)
        out = np.zeros(self.out_shape)
        for idx, lst in self.conns.items():
            vals = [a[ci] for ci, _ in lst]
            if self.kind == "max":
                out[idx] = max(vals)
            else:
                out[idx] = sum(w * v for (_, w), v in zip(lst, vals)) + (self.bias[idx[0]] if self.bias is not None else 0)
        return out

    def eb(self, a, p_out, negate=False):
        """Eq. 2-3: P(child) += P(parent) * a_child w+ / sum over the parent's children."""
        if self.kind in ("pass", "relu"):
            return p_out
        if self.kind == "flatten":
            return p_out.reshape(a.shape)
        p_in = np.zeros_like(a)
        for idx, lst in self.conns.items():
            if p_out[idx] == 0:
                continue
            if self.kind == "max":
                vals = [a[ci] for ci, _ in lst]
                p_in[lst[int(np.argmax(vals))][0]] += p_out[idx]
                continue
            shares = [(ci, a[ci] * max(-w if negate else w, 0.0)) for ci, w in lst]
            z = sum(v for _, v in shares)
            if z != 0:
                for ci, v in shares:
                    p_in[ci] += p_out[idx] * v / z
        return p_in


def reference_layers(model, in_shape):
    """RefLayers for a flat features + head model (no blocks), in NumPy float64."""
    layers, shape = [], in_shape
    children = [(f"features.{n}", m) for n, m in model.features.named_children()]
    children += [(f"head.{n}", m) for n, m in model.head.named_children()]
    i = 0
    while i < len(children):
        name, m = children[i]
        names = [name]
        if isinstance(m, nn.Conv2d):
            w = m.weight.detach().double().numpy()
            b = m.bias.detach().double().numpy() if m.bias is not None else np.zeros(w.shape[0])
            if i + 1 < len(children) and isinstance(children[i + 1][1], nn.BatchNorm2d):
                bn_name, bn = children[i + 1]
                scale = bn.weight.detach().double().numpy() / np.sqrt(bn.running_var.double().numpy() + bn.eps)
                w = w * scale[:, None, None, None]
                b = (b - bn.running_mean.double().numpy()) * scale + bn.bias.detach().double().numpy()
                names.append(bn_name)
                i += 1
            conns, shape = conv_connections(w, shape, m.stride, m.padding)
            layers.append(RefLayer("linear", names, conns, shape, b))
        elif isinstance(m, nn.BatchNorm2d):  # no conv before it: y = scale * x + shift
            scale = m.weight.detach().double().numpy() / np.sqrt(m.running_var.double().numpy() + m.eps)
            shift = m.bias.detach().double().numpy() - m.running_mean.double().numpy() * scale
            conns = {idx: [(idx, scale[idx[0]])] for idx in itertools.product(*map(range, shape))}
            layers.append(RefLayer("linear", names, conns, shape, shift))
        elif isinstance(m, nn.AdaptiveMaxPool2d):
            out = m.output_size if isinstance(m.output_size, tuple) else (m.output_size,) * 2
            conns, shape = window_connections(shape, adaptive_windows(shape[1], out[0]),
                                              adaptive_windows(shape[2], out[1]), lambda n, a: 1.0)
            layers.append(RefLayer("max", names, conns, shape))
        elif isinstance(m, nn.MaxPool2d):
            k, s, p = m.kernel_size, m.stride, m.padding
            conns, shape = window_connections(shape, fixed_windows(shape[1], k, s, p),
                                              fixed_windows(shape[2], k, s, p), lambda n, a: 1.0)
            layers.append(RefLayer("max", names, conns, shape))
        elif isinstance(m, nn.AvgPool2d):
            k, s, p = m.kernel_size, m.stride, m.padding
            conns, shape = window_connections(shape, fixed_windows(shape[1], k, s, p),
                                              fixed_windows(shape[2], k, s, p), lambda n, a: 1.0 / (k * k))
            layers.append(RefLayer("linear", names, conns, shape))
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            out = m.output_size if isinstance(m.output_size, tuple) else (m.output_size,) * 2
            conns, shape = window_connections(shape, adaptive_windows(shape[1], out[0]),
                                              adaptive_windows(shape[2], out[1]),
                                              lambda n, a: 1.0 / (a[0] * a[1]))
            layers.append(RefLayer("linear", names, conns, shape))
        elif isinstance(m, nn.Linear):
            w = m.weight.detach().double().numpy()
            conns, shape = linear_connections(w)
            layers.append(RefLayer("linear", names, conns, shape, m.bias.detach().double().numpy()))
        elif isinstance(m, nn.ReLU):
            layers.append(RefLayer("relu", names))
        elif isinstance(m, nn.Flatten):
            shape = (int(np.prod(shape)),)
            layers.append(RefLayer("flatten", names))
        elif isinstance(m, nn.Dropout):
            layers.append(RefLayer("pass", names))
        else:
            raise AssertionError(f"reference has no layer {type(m)}")
        i += 1
    return layers


def reference_mwp(model, image, target, layer, contrastive=False):
    """Winning probability at ``layer``'s output for one image [C, H, W] (NumPy)."""
    x = image.double().numpy()
    layers = reference_layers(model, x.shape)
    acts = [x]
    for lay in layers:
        acts.append(lay.forward(acts[-1]))
    stop = next(k for k, lay in enumerate(layers) if layer in lay.names)
    last_linear = max(k for k, lay in enumerate(layers) if lay.names[0].startswith("head.")
                      and lay.kind == "linear" and lay.out_shape == acts[-1].shape)

    def walk(negate_classifier):
        p = np.zeros_like(acts[-1])
        p[target] = 1.0
        for k in range(len(layers) - 1, stop, -1):
            p = layers[k].eb(acts[k], p, negate=negate_classifier and k == last_linear)
        return p

    return walk(False) - walk(True) if contrastive else walk(False)


# --------------------------------------------------------------------------- #
# Equality with the reference
# --------------------------------------------------------------------------- #

CHAIN_LAYERS = ["features.relu1", "features.pool1", "features.bn", "features.relu_bn", "features.conv2",
                "features.relu2", "features.pool2"]
STRIDED_LAYERS = ["features.conv1", "features.bn1", "features.relu1", "features.pool1",
                  "features.relu2", "features.drop", "features.pool2"]


@pytest.mark.parametrize("make, layers, size", [(chain_net, CHAIN_LAYERS, 6),
                                                (strided_net, STRIDED_LAYERS, 9)])
@pytest.mark.parametrize("contrastive", [False, True])
def test_matches_numpy_reference(make, layers, size, contrastive):
    model = make()
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(5))
    targets = torch.tensor([1, 2])
    for layer in layers:
        mwp = marginal_winning_probability(model, images, targets, layer, contrastive=contrastive)
        maps = excitation_backprop(model, images, targets, layer, contrastive=contrastive)
        for b in range(2):
            ref = reference_mwp(model, images[b], int(targets[b]), layer, contrastive)
            np.testing.assert_allclose(mwp[b].numpy(), ref, rtol=1e-4, atol=1e-6, err_msg=layer)
            np.testing.assert_allclose(maps[b].numpy(), np.maximum(ref.sum(0), 0), rtol=1e-4, atol=1e-6)
        assert maps.dtype == torch.float32 and maps.shape == (2, *ref.shape[1:])


def test_target_none_is_the_predicted_class_and_int_target_broadcasts():
    model = strided_net()
    images = torch.randn(3, 3, 9, 9, generator=torch.Generator().manual_seed(2))
    predicted = model(images).argmax(1)
    layer = "features.pool1"
    assert torch.equal(excitation_backprop(model, images, None, layer),
                       excitation_backprop(model, images, predicted, layer))
    by_int = excitation_backprop(model, images, 2, layer)
    for b in range(3):
        single = excitation_backprop(model, images[b:b + 1], torch.tensor([2]), layer)[0]
        torch.testing.assert_close(by_int[b], single)  # images are independent in a batch


def test_maps_differ_between_targets():
    model = strided_net()
    images = torch.randn(1, 3, 9, 9, generator=torch.Generator().manual_seed(2))
    maps = [excitation_backprop(model, images, t, "features.relu1") for t in range(3)]
    assert not torch.allclose(maps[0], maps[1]) and not torch.allclose(maps[1], maps[2])


# --------------------------------------------------------------------------- #
# Conservation and signs
# --------------------------------------------------------------------------- #

def expected_totals(model, images, target=None):
    """Total mass EB must keep when biases are <= 0 (no unit active with W+ a == 0):
    1 for the target if its classifier row has W+ a > 0, minus 1 for the dual if W- a > 0."""
    with torch.no_grad():
        a = model.head[:-1](model.features(images))
        if target is None:
            target = model(images).argmax(1)
    row = model.head[-1].weight[target].detach()
    positive = (a * row.clamp_min(0)).sum(1) > 0
    negative = (a * (-row).clamp_min(0)).sum(1) > 0
    return positive.double().numpy(), (positive.double() - negative.double()).numpy()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_probability_is_conserved_without_biases(seed):
    """With biases <= 0 every active unit has W+ a > 0, so each layer keeps the total mass."""
    for model, size, layers in ((chain_net(seed, bias=False), 6, CHAIN_LAYERS),
                                (strided_net(seed, bias=False), 9, STRIDED_LAYERS)):
        images = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(seed))
        target = None
        total, contrast_total = expected_totals(model, images, target)
        assert total.sum() >= 3 and np.abs(contrast_total).sum() < 4  # the cases below are not all trivial
        for layer in layers:
            mwp = marginal_winning_probability(model, images, target, layer)
            assert mwp.min() >= 0
            np.testing.assert_allclose(mwp.sum((1, 2, 3)).numpy(), total, atol=1e-5, err_msg=layer)
            contrast = marginal_winning_probability(model, images, target, layer, contrastive=True)
            np.testing.assert_allclose(contrast.sum((1, 2, 3)).numpy(), contrast_total, atol=1e-5, err_msg=layer)
            assert contrast.min() < 0 < contrast.max()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mass_at_most_one_with_biases(seed):
    model = strided_net(seed, bias=True)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.uniform_(-0.5, 1.0)
    images = torch.randn(4, 3, 9, 9, generator=torch.Generator().manual_seed(seed))
    totals = [marginal_winning_probability(model, images, None, layer).sum((1, 2, 3))
              for layer in STRIDED_LAYERS]
    for upper, lower in zip(totals, totals[1:]):  # mass only leaks on the way down
        assert torch.all(lower <= upper + 1e-5)
    assert torch.all(totals[0] <= 1 + 1e-5) and torch.all(totals[-1] > 0)


def test_contrastive_map_is_clamped_sum_of_the_signal():
    model = chain_net()
    images = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(3))
    signal = marginal_winning_probability(model, images, 0, "features.relu1", contrastive=True)
    maps = excitation_backprop(model, images, 0, "features.relu1", contrastive=True)
    assert maps.min() >= 0 and (signal.sum(1) < 0).any()
    torch.testing.assert_close(maps, signal.sum(1).clamp_min(0))


# --------------------------------------------------------------------------- #
# Blocks: ResNet residual sums, Inception concatenations, BN folding
# --------------------------------------------------------------------------- #

def block_net(block: nn.Module, in_channels: int, seed: int, nonpositive_shift: bool = True) -> FeaturesHead:
    """stem conv(3->in)+relu, the block, GAP + linear: the block's input is post-ReLU as in a real net."""
    torch.manual_seed(seed)
    features = nn.Sequential(OrderedDict([("stem", nn.Conv2d(3, in_channels, 3, padding=1, bias=False)),
                                          ("relu", nn.ReLU()), ("block", block)]))
    with torch.no_grad():
        channels = features.eval()(torch.zeros(1, 3, 9, 9)).shape[1]
    net = FeaturesHead(features, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 3)))
    randomize_bn(net, torch.Generator().manual_seed(seed), nonpositive_shift=nonpositive_shift)
    if nonpositive_shift:
        zero_biases(net)
    return net.eval()


def _downsample(cin, cout, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


BLOCKS = {
    "basic": lambda: (BasicBlock(4, 4), 4),
    "basic_downsample": lambda: (BasicBlock(4, 6, stride=2, downsample=_downsample(4, 6, 2)), 4),
    "bottleneck": lambda: (Bottleneck(8, 2), 8),
    "bottleneck_downsample": lambda: (Bottleneck(4, 2, stride=2, downsample=_downsample(4, 8, 2)), 4),
    "basic_conv2d": lambda: (BasicConv2d(4, 5, kernel_size=3, padding=1), 4),
    "inception_a": lambda: (InceptionA(4, pool_features=3), 4),
    "inception_b": lambda: (InceptionB(4), 4),
    "inception_c": lambda: (InceptionC(4, channels_7x7=3), 4),
    "inception_d": lambda: (InceptionD(4), 4),
    "inception_e": lambda: (InceptionE(4), 4),
}


@pytest.mark.parametrize("kind", sorted(BLOCKS))
def test_block_forward_mirrors_torchvision(kind):
    block, channels = BLOCKS[kind]()
    net = block_net(block, channels, seed=3, nonpositive_shift=False)
    images = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    trace = attention._forward(net, images, "features.relu")
    torch.testing.assert_close(trace.logits.tensor, net(images), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", sorted(BLOCKS))
def test_blocks_conserve_mass(kind):
    block, channels = BLOCKS[kind]()
    net = block_net(block, channels, seed=4)
    images = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(1))
    total, contrast_total = expected_totals(net, images)
    assert total.sum() == 2
    for contrastive, expected in ((False, total), (True, contrast_total)):
        mwp = marginal_winning_probability(net, images, None, "features.relu", contrastive=contrastive)
        np.testing.assert_allclose(mwp.sum((1, 2, 3)).numpy(), expected, atol=1e-5)
    assert mwp.shape == (2, channels, 9, 9)
    assert marginal_winning_probability(net, images, None, "features.relu").min() >= 0


def _conv_layer(w, b, in_shape, stride, pad):
    conns, shape = conv_connections(w, in_shape, stride, pad)
    return RefLayer("linear", ["conv"], conns, shape, b)


def _fold_np(conv, bn):
    w = conv.weight.detach().double().numpy()
    scale = bn.weight.detach().double().numpy() / np.sqrt(bn.running_var.double().numpy() + bn.eps)
    return w * scale[:, None, None, None], bn.bias.detach().double().numpy() - bn.running_mean.double().numpy() * scale


def reference_basic_block(block: BasicBlock, x: np.ndarray, p_out: np.ndarray) -> np.ndarray:
    """Eq. 2-3 over the residual sum: parents see children [h (via W2'), x (via I or W_down')]."""
    w1, b1 = _fold_np(block.conv1, block.bn1)
    w2, b2 = _fold_np(block.conv2, block.bn2)
    conv1 = _conv_layer(w1, b1, x.shape, block.conv1.stride, block.conv1.padding)
    h = np.maximum(conv1.forward(x), 0)
    conns_h, shape = conv_connections(w2, h.shape, block.conv2.stride, block.conv2.padding)
    if block.downsample is None:
        conns_x = {idx: [(idx, 1.0)] for idx in conns_h}
    else:
        wd, _ = _fold_np(block.downsample[0], block.downsample[1])
        conns_x, _ = conv_connections(wd, x.shape, block.downsample[0].stride, (0, 0))
    p_h, p_x = np.zeros_like(h), np.zeros_like(x)
    for idx in conns_h:
        shares = [(p_h, ci, h[ci] * max(w, 0)) for ci, w in conns_h[idx]]
        shares += [(p_x, ci, x[ci] * max(w, 0)) for ci, w in conns_x[idx]]
        z = sum(v for _, _, v in shares)
        if z != 0:
            for target, ci, v in shares:
                target[ci] += p_out[idx] * v / z
    return p_x + conv1.eb(x, p_h)


@pytest.mark.parametrize("kind", ["basic", "basic_downsample"])
def test_basic_block_matches_reference(kind):
    block, channels = BLOCKS[kind]()
    net = block_net(block, channels, seed=5, nonpositive_shift=False)
    images = torch.randn(1, 3, 9, 9, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        x = net.features[:2](images)[0].double().numpy()
        y = net.features(images)
    # P at the block's output, from the head (GAP + linear), computed with the reference too.
    head_layers = reference_layers(FeaturesHead(nn.Sequential(), net.head), tuple(y.shape[1:]))
    acts = [y[0].double().numpy()]
    for lay in head_layers:
        acts.append(lay.forward(acts[-1]))
    p = np.zeros(3)
    p[1] = 1
    for k in range(len(head_layers) - 1, -1, -1):
        p = head_layers[k].eb(acts[k], p)
    expected = reference_basic_block(block, x, p)
    got = marginal_winning_probability(net, images, 1, "features.relu")[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_fold_batchnorm_equals_conv_then_bn():
    gen = torch.Generator().manual_seed(0)
    for bias in (False, True):
        conv = nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=bias)
        bn = nn.BatchNorm2d(5, eps=1e-3)
        randomize_bn(bn, gen)
        x = torch.randn(2, 3, 7, 7, generator=gen)
        weight, shift = fold_batchnorm(conv, bn.eval())
        torch.testing.assert_close(F.conv2d(x, weight, shift, stride=2, padding=1),
                                   bn(conv(x)).detach(), rtol=1e-5, atol=1e-5)


def test_eb_forward_equals_model_forward_with_folded_bn():
    model = strided_net()
    images = torch.randn(3, 3, 9, 9)
    trace = attention._forward(model, images, "features.relu1")
    torch.testing.assert_close(trace.logits.tensor, model(images).detach(), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- #
# The model is left as it was; precision; devices
# --------------------------------------------------------------------------- #

def _snapshot(model):
    return ({n: m.training for n, m in model.named_modules()},
            {n: p.requires_grad for n, p in model.named_parameters()},
            {k: v.clone() for k, v in model.state_dict().items()})


def _assert_unchanged(model, snapshot):
    modes, grads, state = snapshot
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
    assert all(p.grad is None for p in model.parameters())


def test_model_state_unchanged_after_success_and_after_error(monkeypatch):
    block, channels = BLOCKS["basic_downsample"]()
    model = block_net(block, channels, seed=0, nonpositive_shift=False)
    model.train()                       # EB must neither switch to eval nor update BN statistics
    model.features.stem.weight.requires_grad_(False)
    model.features.block.bn1.training = False  # a mixed-mode model stays mixed
    snapshot = _snapshot(model)
    conv2d = F.conv2d
    images = torch.randn(2, 3, 9, 9)
    maps_train = excitation_backprop(model, images, 0, "features.relu")
    _assert_unchanged(model, snapshot)
    assert F.conv2d is conv2d

    def broken(self, p_out, negate=False):
        raise RuntimeError("midway")
    monkeypatch.setattr(attention._LinearNode, "backward", broken)
    with pytest.raises(RuntimeError, match="midway"):
        excitation_backprop(model, images, 0, "features.relu")
    _assert_unchanged(model, snapshot)
    monkeypatch.undo()

    # inference semantics whatever the mode: same map as the eval-mode model
    model.eval()
    torch.testing.assert_close(maps_train, excitation_backprop(model, images, 0, "features.relu"))


def test_float32_under_autocast_and_with_bf16_weights():
    model = strided_net()
    images = torch.randn(2, 3, 9, 9)
    expected = excitation_backprop(model, images, None, "features.relu1")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = excitation_backprop(model, images, None, "features.relu1")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    # half-precision weights: computed in float32 from the rounded weights
    rounded = strided_net()
    rounded.load_state_dict({k: v.bfloat16().float() for k, v in model.state_dict().items()})
    low = excitation_backprop(model.bfloat16(), images, None, "features.relu1")
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, excitation_backprop(rounded, images, None, "features.relu1"))


def test_runs_under_inference_mode_and_with_images_requiring_grad():
    model = chain_net()
    images = torch.randn(1, 3, 6, 6)
    expected = excitation_backprop(model, images, 1, "features.relu1")
    with torch.inference_mode():
        torch.testing.assert_close(excitation_backprop(model, images, 1, "features.relu1"), expected)
    got = excitation_backprop(model, images.clone().requires_grad_(True), 1, "features.relu1")
    assert not got.requires_grad
    torch.testing.assert_close(got, expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    block, channels = BLOCKS["inception_a"]()
    model = block_net(block, channels, seed=0, nonpositive_shift=False)
    images = torch.randn(2, 3, 9, 9)
    expected = excitation_backprop(model, images, 1, "features.relu", contrastive=True)
    got = excitation_backprop(model.cuda(), images.cuda(), 1, "features.relu", contrastive=True)
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- #
# Layer names, defaults and errors
# --------------------------------------------------------------------------- #

def test_layer_names_flatten_nested_sequentials_and_alias_folded_convs():
    block, _ = BLOCKS["basic"]()
    features = nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 4, 3, padding=1)), ("bn1", nn.BatchNorm2d(4)), ("relu", nn.ReLU()),
        ("layer1", nn.Sequential(block, nn.MaxPool2d(2)))]))
    model = FeaturesHead(features, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))).eval()
    assert eb_layer_names(model) == ["features.conv1", "features.bn1", "features.relu", "features.layer1.0",
                                     "features.layer1.1", "features.layer1", "features"]
    images = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(excitation_backprop(model, images, 0, "features.conv1"),
                               excitation_backprop(model, images, 0, "features.bn1"))
    torch.testing.assert_close(excitation_backprop(model, images, 0, "features.layer1"),
                               excitation_backprop(model, images, 0, "features"))
    assert excitation_backprop(model, images, 0, "features.layer1.0").shape == (1, 8, 8)


def test_default_and_relative_layer_names():
    model = chain_net()
    images = torch.randn(1, 3, 6, 6)
    assert resolve_eb_layer(model, "pool1") == "features.pool1"
    with pytest.raises(ValueError, match="default_eb_layer.*features.pool1"):
        excitation_backprop(model, images)
    model.default_eb_layer = "features.pool1"
    torch.testing.assert_close(excitation_backprop(model, images),
                               excitation_backprop(model, images, layer="features.pool1"))


def test_unknown_layer_lists_close_matches():
    model = chain_net()
    with pytest.raises(ValueError, match="close matches: features.pool1") as err:
        excitation_backprop(model, torch.randn(1, 3, 6, 6), layer="features.pol1")
    assert "features.relu2" in str(err.value)  # all valid layers listed
    with pytest.raises(ValueError, match="not a read-out point"):
        excitation_backprop(model, torch.randn(1, 3, 6, 6), layer="head.fc")


def test_unsupported_module_names_path_and_type():
    model = chain_net()
    model.features.relu2 = nn.GELU()
    with pytest.raises(NotImplementedError, match=r"'features.relu2'.*torch.nn.modules.activation.GELU"):
        excitation_backprop(model, torch.randn(1, 3, 6, 6), 0, "features.relu1")
    block, channels = BLOCKS["basic"]()
    block.bn2 = nn.GroupNorm(2, 4)
    net = block_net(block, channels, seed=0, nonpositive_shift=False)
    with pytest.raises(NotImplementedError, match=r"'features.block.bn2'.*GroupNorm"):
        excitation_backprop(net, torch.randn(1, 3, 9, 9), 0, "features.relu")
    with pytest.raises(TypeError, match="features"):
        excitation_backprop(nn.Sequential(nn.Conv2d(3, 3, 1)), torch.randn(1, 3, 6, 6), 0, "0")


def test_same_padding_and_grouped_convs_equal_their_explicit_forms():
    """padding='same' is padding=1 for 3x3; a grouped conv is a full conv with zero
    off-group weights (zero weights get no probability, so the maps are equal)."""
    torch.manual_seed(0)
    grouped = nn.Conv2d(4, 6, 3, padding="same", groups=2)
    full = nn.Conv2d(4, 6, 3, padding=1)
    with torch.no_grad():
        full.weight.zero_()
        full.weight[:3, :2] = grouped.weight[:3]
        full.weight[3:, 2:] = grouped.weight[3:]
        full.bias.copy_(grouped.bias)

    def net(conv):
        features = nn.Sequential(OrderedDict([("conv1", nn.Conv2d(3, 4, 3, padding=1)), ("relu1", nn.ReLU()),
                                              ("conv2", conv), ("relu2", nn.ReLU())]))
        return FeaturesHead(features, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2)))

    torch.manual_seed(1)
    a = net(grouped).eval()
    torch.manual_seed(1)
    b = net(full).eval()
    b.features.conv1.load_state_dict(a.features.conv1.state_dict())
    b.head.load_state_dict(a.head.state_dict())
    images = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(a(images), b(images))
    torch.testing.assert_close(marginal_winning_probability(a, images, 1, "features.relu1"),
                               marginal_winning_probability(b, images, 1, "features.relu1"))


def test_unfoldable_batch_norm_and_padding_modes_are_refused():
    model = strided_net()
    model.features.bn1 = nn.BatchNorm2d(4, track_running_stats=False)
    with pytest.raises(NotImplementedError, match=r"'features.bn1'.*running statistics"):
        excitation_backprop(model, torch.randn(1, 3, 9, 9), 0, "features.pool1")
    model = strided_net()
    model.features.conv2.padding_mode = "reflect"
    with pytest.raises(NotImplementedError, match=r"'features.conv2'.*padding_mode='reflect'"):
        excitation_backprop(model, torch.randn(1, 3, 9, 9), 0, "features.pool1")


def test_contrastive_needs_a_linear_classifier():
    features = nn.Sequential(OrderedDict([("conv", nn.Conv2d(3, 4, 3)), ("relu", nn.ReLU())]))
    model = FeaturesHead(features, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())).eval()
    images = torch.rand(1, 3, 6, 6)
    assert excitation_backprop(model, images, 0, "features.relu").shape == (1, 4, 4)
    with pytest.raises(ValueError, match="Linear classifier"):
        excitation_backprop(model, images, 0, "features.relu", contrastive=True)


def test_bad_targets_and_images():
    model = chain_net()
    images = torch.randn(2, 3, 6, 6)
    with pytest.raises(ValueError, match=r"out of range.*5 classes \(0..4\)"):
        excitation_backprop(model, images, 5, "features.relu1")
    with pytest.raises(ValueError, match=r"out of range"):
        excitation_backprop(model, images, torch.tensor([0, -1]), "features.relu1")
    with pytest.raises(ValueError, match=r"shape \[2\]"):
        excitation_backprop(model, images, torch.tensor([0, 1, 2]), "features.relu1")
    with pytest.raises(TypeError, match="integer"):
        excitation_backprop(model, images, 1.5, "features.relu1")
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        excitation_backprop(model, images[0], 0, "features.relu1")
    with pytest.raises(TypeError, match="float"):
        excitation_backprop(model, images.to(torch.uint8), 0, "features.relu1")


# --------------------------------------------------------------------------- #
# upsample_map
# --------------------------------------------------------------------------- #

def test_upsample_map_nearest_is_block_repeat_and_keeps_kind():
    maps = torch.rand(2, 3, 4)
    up = upsample_map(maps, (6, 8), mode="nearest")
    for b in range(2):
        np.testing.assert_array_equal(up[b].numpy(), np.kron(maps[b].numpy(), np.ones((2, 2))))
    single = upsample_map(maps[0].numpy().astype(np.float16), (6, 8), mode="nearest")
    assert isinstance(single, np.ndarray) and single.shape == (6, 8) and single.dtype == np.float32


def test_upsample_map_bicubic_keeps_constants_and_may_overshoot():
    const = upsample_map(torch.full((1, 5, 7), 0.25), (20, 28))
    torch.testing.assert_close(const, torch.full((1, 20, 28), 0.25))
    peak = torch.zeros(1, 5, 5)
    peak[0, 2, 2] = 1.0
    assert upsample_map(peak, (20, 20)).min() < 0  # documented: clamping is the consumer's job


def test_upsample_map_errors():
    with pytest.raises(ValueError, match="allowed: nearest"):
        upsample_map(torch.rand(1, 2, 2), (4, 4), mode="cubic")
    with pytest.raises(ValueError, match="two positive ints"):
        upsample_map(torch.rand(1, 2, 2), (4, 0))
    with pytest.raises(ValueError, match=r"\[B, h, w\]"):
        upsample_map(torch.rand(1, 1, 2, 2), (4, 4))


# --------------------------------------------------------------------------- #
# The project's models
# --------------------------------------------------------------------------- #

def _registered_backbones():
    try:
        from gpf.model.backbones import list_backbones
    except ImportError:
        return []
    return list_backbones()


SMALL_BACKBONES = {"tiny", "small", "tiny_inception"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in SMALL_BACKBONES else pytest.mark.slow)
                                  for n in _registered_backbones()])
def test_peripheral_net_of_every_backbone(name):
    from gpf.model.backbones import get_spec
    from gpf.model.gpf import PeripheralNet

    torch.manual_seed(0)
    model = PeripheralNet(name, hidden=8).eval()
    spec = get_spec(name)
    size = max(spec.min_input, 2 * spec.stride)
    images = torch.randn(2, 3, size, size + spec.stride)
    trace = attention._forward(model, images, resolve_eb_layer(model))
    torch.testing.assert_close(trace.logits.tensor, model(images).detach(), rtol=1e-3, atol=1e-4)
    mwp = marginal_winning_probability(model, images)
    assert mwp.min() >= 0 and torch.all(mwp.sum((1, 2, 3)) <= 1 + 1e-4)
    maps = excitation_backprop(model, images, contrastive=True)
    assert maps.shape == mwp.shape[:1] + mwp.shape[2:] and maps.min() >= 0
    assert resolve_eb_layer(model) == spec.default_eb_layer
