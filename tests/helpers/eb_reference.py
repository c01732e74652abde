"""A float64 NumPy reference of Excitation Backprop on residual networks (no tests here).

Written from Zhang et al.'s rule (paper Eq. 2-3) and the libraries' own forward
code, sharing nothing with gpf.model.attention: convolutions by im2col in NumPy,
pooling windows by explicit loops (PyTorch's window and divisor rules), batch
norm folded in float64. Every linear layer ``y = sum_k W_k x_k + b`` over
non-negative inputs hands each output's winning probability to its inputs in
proportion to ``x_i * max(w_ij, 0)``; a max pool hands it to the window's first
maximum; ReLU passes it on. A residual block ``relu(W' h + S x + b)`` is one
such layer over [h, x] (S the identity or the folded downsample, after an
optional average pool), so its shortcut gets the share ``x * S+`` of it.

:func:`reference_network` reads a torchvision ResNet (as gpf's ``features`` /
``head``), a timm ResNet or a timm RegNet into a chain of named layers;
:func:`reference_mwp` runs the walk for one image.
"""
from __future__ import annotations

import math

import numpy as np
from torch import nn


def _np(tensor) -> np.ndarray:
    return tensor.detach().double().cpu().numpy()


def fold(conv: nn.Conv2d, bn: nn.Module | None):
    """(W, b) of bn(conv(x)) in float64 from the modules' eval statistics."""
    w = _np(conv.weight)
    b = _np(conv.bias) if conv.bias is not None else np.zeros(w.shape[0])
    if bn is None:
        return w, b
    scale = _np(bn.weight) / np.sqrt(_np(bn.running_var) + bn.eps)
    return w * scale[:, None, None, None], (b - _np(bn.running_mean)) * scale + _np(bn.bias)


# ----------------------------------------------------------------------------- linear operators

class ConvOp:
    """A 2-D convolution [C, H, W] -> [O, oh, ow] by im2col; ``groups`` as block-diagonal weights."""

    def __init__(self, w, stride, padding, dilation=(1, 1), groups=1):
        self.w, self.groups = w, groups
        self.stride, self.padding, self.dilation = tuple(stride), tuple(padding), tuple(dilation)

    def _geometry(self, shape):
        _, h, w = shape
        kh, kw = self.w.shape[2:]
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        slices = [(i, j, slice(i * dh, i * dh + sh * (oh - 1) + 1, sh), slice(j * dw, j * dw + sw * (ow - 1) + 1, sw))
                  for i in range(kh) for j in range(kw)]
        return oh, ow, slices

    def forward(self, x, w):
        c, h, wd = x.shape
        oh, ow, slices = self._geometry(x.shape)
        (ph, pw) = self.padding
        xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw)))
        kh, kw = w.shape[2:]
        cols = np.empty((c, kh, kw, oh, ow))
        for i, j, ys, xs in slices:
            cols[:, i, j] = xp[:, ys, xs]
        out = np.empty((w.shape[0], oh, ow))
        cg, og = c // self.groups, w.shape[0] // self.groups
        for g in range(self.groups):
            block = cols[g * cg:(g + 1) * cg].reshape(cg * kh * kw, oh * ow)
            out[g * og:(g + 1) * og] = (w[g * og:(g + 1) * og].reshape(og, -1) @ block).reshape(og, oh, ow)
        return out

    def transpose(self, s, in_shape, w):
        """W^T s: each output's value spread back over its input window (col2im)."""
        c, h, wd = in_shape
        oh, ow, slices = self._geometry(in_shape)
        (ph, pw) = self.padding
        kh, kw = w.shape[2:]
        cg, og = c // self.groups, w.shape[0] // self.groups
        cols = np.empty((c, kh, kw, oh, ow))
        for g in range(self.groups):
            flat = w[g * og:(g + 1) * og].reshape(og, -1).T @ s[g * og:(g + 1) * og].reshape(og, -1)
            cols[g * cg:(g + 1) * cg] = flat.reshape(cg, kh, kw, oh, ow)
        grad = np.zeros((c, h + 2 * ph, wd + 2 * pw))
        for i, j, ys, xs in slices:
            grad[:, ys, xs] += cols[:, i, j]
        return grad[:, ph:ph + h, pw:pw + wd]


def pool_windows(size, kernel, stride, padding, ceil_mode):
    """[(start, end, divisor_with_padding)] of PyTorch's pooling along one axis."""
    if ceil_mode:
        out = math.ceil((size + 2 * padding - kernel) / stride) + 1
        if (out - 1) * stride >= size + padding:
            out -= 1
    else:
        out = (size + 2 * padding - kernel) // stride + 1
    windows = []
    for i in range(out):
        start = i * stride - padding
        end = min(start + kernel, size + padding)
        windows.append((max(start, 0), min(end, size), end - start))
    return windows


class AvgPoolOp:
    """Average pooling as a linear operator with fixed positive weights 1/divisor."""

    def __init__(self, kernel, stride, padding=0, ceil_mode=False, count_include_pad=True):
        pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
        self.kernel, self.stride, self.padding = pair(kernel), pair(stride), pair(padding)
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad

    def _windows(self, shape):
        _, h, w = shape
        rows = pool_windows(h, self.kernel[0], self.stride[0], self.padding[0], self.ceil_mode)
        cols = pool_windows(w, self.kernel[1], self.stride[1], self.padding[1], self.ceil_mode)
        for i, (y0, y1, ny) in enumerate(rows):
            for j, (x0, x1, nx) in enumerate(cols):
                divisor = ny * nx if self.count_include_pad else (y1 - y0) * (x1 - x0)
                yield i, j, slice(y0, y1), slice(x0, x1), divisor, (len(rows), len(cols))

    def forward(self, x, w=None):
        windows = list(self._windows(x.shape))
        out = np.zeros((x.shape[0], *windows[0][5]))
        for i, j, ys, xs, divisor, _ in windows:
            out[:, i, j] = x[:, ys, xs].sum(axis=(1, 2)) / divisor
        return out

    def transpose(self, s, in_shape, w=None):
        grad = np.zeros(in_shape)
        for i, j, ys, xs, divisor, _ in self._windows(in_shape):
            grad[:, ys, xs] += (s[:, i, j] / divisor)[:, None, None]
        return grad


class PoolThenConv:
    """conv(avgpool(x)); its positive part is the conv's (the pooled units are hidden units)."""

    def __init__(self, pool: AvgPoolOp, conv: ConvOp):
        self.pool, self.conv, self.w = pool, conv, conv.w

    def forward(self, x, w):
        return self.conv.forward(self.pool.forward(x), w)

    def transpose(self, s, in_shape, w):
        pooled_shape = self.pool.forward(np.zeros(in_shape)).shape
        return self.pool.transpose(self.conv.transpose(s, pooled_shape, w), in_shape)


class IdentityOp:
    w = None

    def forward(self, x, w=None):
        return x

    def transpose(self, s, in_shape, w=None):
        return s


class DenseOp:
    def __init__(self, w):
        self.w = w

    def forward(self, x, w):
        return w @ x

    def transpose(self, s, in_shape, w):
        return w.T @ s


class GlobalAvgOp:
    """[C, H, W] -> [C]: the mean over positions."""
    w = None

    def forward(self, x, w=None):
        return x.mean(axis=(1, 2))

    def transpose(self, s, in_shape, w=None):
        return np.broadcast_to((s / (in_shape[1] * in_shape[2]))[:, None, None], in_shape).copy()


def _positive(op, negate=False):
    if op.w is None:
        return None
    return np.maximum(-op.w if negate else op.w, 0.0)


def eb_linear(terms, p_out, negate=False):
    """Eq. 2-3 for y = sum_k op_k(x_k) + b: P(x_k) = x_k * op_k+^T (P / sum_k op_k+(x_k))."""
    z = sum(op.forward(x, _positive(op, negate)) for op, x in terms)
    ratio = np.divide(p_out, z, out=np.zeros_like(p_out), where=z != 0)
    return [x * op.transpose(ratio, x.shape, _positive(op, negate)) for op, x in terms]


# ----------------------------------------------------------------------------- layers of the chain

class Linear:
    """One linear layer (conv + folded norm, fc, average pool), optionally followed by ReLU."""

    def __init__(self, op, bias=None, relu=False):
        self.op, self.bias, self.relu = op, bias, relu

    def forward(self, x):
        y = self.op.forward(x, self.op.w)
        if self.bias is not None:
            y = y + self.bias.reshape(-1, *([1] * (y.ndim - 1)))
        return np.maximum(y, 0) if self.relu else y

    def eb(self, x, p_out, negate=False):
        return eb_linear([(self.op, x)], p_out, negate)[0]


class Relu:
    def forward(self, x):
        return np.maximum(x, 0)

    def eb(self, x, p_out, negate=False):
        return p_out


class MaxPool:
    def __init__(self, kernel, stride, padding, ceil_mode=False):
        self.args = (kernel, stride, padding, ceil_mode)

    def _windows(self, shape):
        k, s, p, ceil = self.args
        return pool_windows(shape[1], k, s, p, ceil), pool_windows(shape[2], k, s, p, ceil)

    def forward(self, x):
        rows, cols = self._windows(x.shape)
        out = np.empty((x.shape[0], len(rows), len(cols)))
        for i, (y0, y1, _) in enumerate(rows):
            for j, (x0, x1, _) in enumerate(cols):
                out[:, i, j] = x[:, y0:y1, x0:x1].max(axis=(1, 2))
        return out

    def eb(self, x, p_out, negate=False):
        rows, cols = self._windows(x.shape)
        p_in = np.zeros_like(x)
        for c in range(x.shape[0]):
            for i, (y0, y1, _) in enumerate(rows):
                for j, (x0, x1, _) in enumerate(cols):
                    window = x[c, y0:y1, x0:x1]
                    dy, dx = np.unravel_index(int(np.argmax(window)), window.shape)  # the first maximum
                    p_in[c, y0 + dy, x0 + dx] += p_out[c, i, j]
        return p_in


class Residual:
    """relu(last(body(x)) + shortcut(x) + b); ``shortcut`` None: no sum (a RegNet block without one)."""

    def __init__(self, body, last_op, last_bias, shortcut_op, shortcut_bias):
        self.body, self.last_op, self.shortcut_op = body, last_op, shortcut_op
        self.bias = last_bias + (shortcut_bias if shortcut_bias is not None else 0)

    def _hidden(self, x):
        acts = [x]
        for layer in self.body:
            acts.append(layer.forward(acts[-1]))
        return acts

    def forward(self, x):
        h = self._hidden(x)[-1]
        y = self.last_op.forward(h, self.last_op.w) + self.bias[:, None, None]
        if self.shortcut_op is not None:
            y = y + self.shortcut_op.forward(x, self.shortcut_op.w)
        return np.maximum(y, 0)

    def eb(self, x, p_out, negate=False):
        acts = self._hidden(x)
        terms = [(self.last_op, acts[-1])] + ([(self.shortcut_op, x)] if self.shortcut_op is not None else [])
        shares = eb_linear(terms, p_out)
        p = shares[0]
        for layer, a in zip(reversed(self.body), reversed(acts[:-1])):
            p = layer.eb(a, p)
        return p + (shares[1] if len(shares) == 2 else 0)


# ----------------------------------------------------------------------------- reading networks

def conv_op(conv: nn.Conv2d, bn=None):
    w, b = fold(conv, bn)
    return ConvOp(w, conv.stride, conv.padding, conv.dilation, conv.groups), b


def conv_layer(conv, bn=None, relu=False):
    op, b = conv_op(conv, bn)
    return Linear(op, b, relu)


def shortcut(parts):
    """(op, bias) of a downsample given as [AvgPool2d] Conv2d [norm] modules; (Identity, None) if empty."""
    parts = [m for m in parts if not isinstance(m, nn.Identity)]
    if not parts:
        return IdentityOp(), None
    pool = None
    if isinstance(parts[0], nn.AvgPool2d):
        p = parts.pop(0)
        pool = AvgPoolOp(p.kernel_size, p.stride, p.padding, p.ceil_mode, p.count_include_pad)
    op, b = conv_op(parts[0], parts[1] if len(parts) > 1 else None)
    return (PoolThenConv(pool, op) if pool is not None else op), b


def _head(pool, fc):
    assert isinstance(pool, (nn.AdaptiveAvgPool2d,)) or "avg" in str(getattr(pool, "pool_type", "")), pool
    return [(["head.pool"], Linear(GlobalAvgOp())), (["head.fc"], Linear(DenseOp(_np(fc.weight)), _np(fc.bias)))]


def _resnet_block(block):
    """torchvision's or timm's BasicBlock / Bottleneck (timm's drop_block, aa, se, drop_path are identities here)."""
    pairs = [("conv1", "bn1"), ("conv2", "bn2")] + ([("conv3", "bn3")] if hasattr(block, "conv3") else [])
    body = [conv_layer(getattr(block, c), getattr(block, b), relu=True) for c, b in pairs[:-1]]
    last, last_b = conv_op(getattr(block, pairs[-1][0]), getattr(block, pairs[-1][1]))
    s_op, s_b = shortcut(list(block.downsample) if block.downsample is not None else [])
    return Residual(body, last, last_b, s_op, s_b)


def _conv_norm_act(cna, relu):
    return conv_layer(cna.conv, cna.bn, relu=relu)


def _regnet_block(block):
    body = [_conv_norm_act(block.conv1, True), _conv_norm_act(block.conv2, True)]
    last, last_b = conv_op(block.conv3.conv, block.conv3.bn)
    if block.downsample is None:
        return Residual(body, last, last_b, None, None)
    parts = list(block.downsample) if isinstance(block.downsample, nn.Sequential) else [block.downsample]
    flat = []
    for part in parts:
        flat += [part.conv, part.bn] if hasattr(part, "conv") else [part]
    s_op, s_b = shortcut(flat)
    return Residual(body, last, last_b, s_op, s_b)


def _stages(model, names, make_block):
    chain = []
    for stage in names:
        blocks = list(getattr(model, stage).named_children())
        for k, (name, block) in enumerate(blocks):
            labels = [f"features.{stage}.{name}"] + ([f"features.{stage}"] if k == len(blocks) - 1 else [])
            chain.append((labels, make_block(block)))
    return chain


def reference_network(model, kind: str):
    """[(read-out names, layer)] of ``model``: 'torchvision' (gpf features/head of a torchvision
    ResNet), 'timm_resnet' or 'timm_regnet' (the timm model itself), named as gpf names them."""
    if kind == "torchvision":
        f = model.features
        chain = [(["features.conv1", "features.bn1"], conv_layer(f.conv1, f.bn1)), (["features.relu"], Relu()),
                 (["features.maxpool"], MaxPool(f.maxpool.kernel_size, f.maxpool.stride, f.maxpool.padding))]
        chain += _stages(f, ["layer1", "layer2", "layer3", "layer4"], _resnet_block)
        return chain + _head(model.head.pool, model.head.fc)
    if kind == "timm_resnet":
        if isinstance(model.conv1, nn.Sequential):     # deep stem: conv bn relu conv bn relu conv, then bn1
            s = model.conv1
            chain = [(["features.conv1.0", "features.conv1.1"], conv_layer(s[0], s[1], relu=True)),
                     (["features.conv1.3", "features.conv1.4"], conv_layer(s[3], s[4], relu=True)),
                     (["features.conv1.6", "features.conv1", "features.bn1"], conv_layer(s[6], model.bn1))]
        else:
            chain = [(["features.conv1", "features.bn1"], conv_layer(model.conv1, model.bn1))]
        m = model.maxpool
        chain += [(["features.act1"], Relu()), (["features.maxpool"], MaxPool(m.kernel_size, m.stride, m.padding))]
        chain += _stages(model, ["layer1", "layer2", "layer3", "layer4"], _resnet_block)
        return chain + _head(model.global_pool, model.fc)
    if kind == "timm_regnet":
        chain = [(["features.stem"], _conv_norm_act(model.stem, True))]
        chain += _stages(model, ["s1", "s2", "s3", "s4"], _regnet_block)
        assert isinstance(model.final_conv, nn.Identity)
        return chain + _head(model.head.global_pool, model.head.fc)
    raise ValueError(kind)


def reference_mwp(chain, image, target: int, layer: str, contrastive: bool = False) -> np.ndarray:
    """Winning probability at ``layer``'s output for one image [3, H, W] (float64 NumPy)."""
    acts = [_np(image)]
    for _, lay in chain:
        acts.append(lay.forward(acts[-1]))
    stop = next(k for k, (names, _) in enumerate(chain) if layer in names)

    def walk(negate_classifier):
        p = np.zeros_like(acts[-1])
        p[target] = 1.0
        for k in range(len(chain) - 1, stop, -1):
            p = chain[k][1].eb(acts[k], p, negate=negate_classifier and k == len(chain) - 1)
        return p

    return walk(False) - walk(True) if contrastive else walk(False)


def reference_logits(chain, image) -> np.ndarray:
    x = _np(image)
    for _, lay in chain:
        x = lay.forward(x)
    return x
