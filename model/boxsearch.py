"""Exact smallest rectangle holding a share of the attention (paper Eq. 4).

GPF-CNN cuts the foveal view out of the photo as the smallest rectangle
``R(tau)`` whose summed attention is at least ``tau`` of the map's total (paper,
section III-A, Eq. 4, ``tau = 0.7``); among rectangles of equal area it takes the
one with the largest summed attention. :func:`best_box` solves this exactly.

Rules (all documented in ``docs/crop.md``):

* Boxes are half-open ``(y0, x0, y1, x1)`` in array order: rows ``y0:y1``,
  columns ``x0:x1``.
* A box qualifies when ``sum >= (tau - REL_TOL) * total``. The relative slack
  ``REL_TOL = 1e-9`` absorbs rounding in the summed-area differences and in
  ``tau * total`` (``0.55 * 100`` is 55.00000000000001 in binary) so that a box whose
  sum equals the target mathematically is never rejected; on maps of integers
  (as in the tests) it changes nothing else.
* Order among qualifying boxes: smallest area, then largest sum, then the
  lexicographically smallest ``(y0, x0, y1, x1)``.
* Negative values (bicubic overshoot of an upsampled map) count as 0. NaN or
  infinite values raise :class:`AttentionMapError` (a ``ValueError``). A map whose values are all <= 0 has no
  attention to hold and returns the whole map.

The search is O(H^2 W) with H <= W (the map is transposed internally): for each
row band ``y0:y1`` a two-pointer pass over the band's column prefix sums gives the
narrowest window reaching the target, and one more pass the best-summed window
of that width. Bands are visited by increasing area lower bound and pruned, which
makes realistic (peaked) maps far cheaper than the worst case.

Compilation is lazy (first call) and cached on disk by numba (``cache=True``):
see ``docs/crop.md`` for where the cache lives.
"""
from __future__ import annotations

from numbers import Real

import numpy as np
from numba import njit, prange

from ..errors import GPFError, OptionError
from ..vocabulary import TAU

__all__ = ["REL_TOL", "AttentionMapError", "best_box", "best_boxes", "box_fraction", "map_box_to_image"]

#: Relative slack on the target ``tau * total`` (see the module docstring).
REL_TOL = 1e-9

_NON_FINITE = 1  # status code returned by the compiled kernels


# --------------------------------------------------------------------------- kernels


@njit(cache=True)
def _summed_area(att, transpose):
    """Summed-area table of ``max(att, 0)`` (transposed if asked), float64.

    Returns ``(S, ok)``; ``S[y, x]`` is the sum over rows ``< y`` and columns
    ``< x``. ``ok`` is False when the map holds NaN or +-inf. Two passes
    (down the columns, then along the rows) whose inner loops carry no
    dependency, so they pipeline instead of waiting on one running sum.
    """
    rows, cols = att.shape
    if transpose:
        rows, cols = cols, rows
    table = np.zeros((rows + 1, cols + 1))
    poison = np.zeros(cols)  # stays 0 unless a value is NaN or inf (inf * 0 is NaN)
    for y in range(rows):
        above = table[y]
        here = table[y + 1]
        for x in range(cols):
            value = att[x, y] if transpose else att[y, x]
            poison[x] += value * 0.0
            here[x + 1] = above[x + 1] + (value if value > 0.0 else 0.0)
    for x in range(1, cols):
        for y in range(1, rows + 1):
            table[y, x + 1] += table[y, x]
    for x in range(cols):
        if poison[x] != 0.0:
            return table, False
    return table, True


@njit(cache=True)
def _min_width(prefix, width, target):
    """Narrowest window ``[l, r)`` with ``prefix[r] - prefix[l] >= target``.

    ``prefix`` is the non-decreasing prefix sum of a band's column sums. Two
    pointers: the best start for each end never moves left. Returns
    ``width + 1`` when no window reaches the target.
    """
    best = width + 1
    left = 0
    for right in range(1, width + 1):
        while left + 1 < right and prefix[right] - prefix[left + 1] >= target:
            left += 1
        if right - left < best and prefix[right] - prefix[left] >= target:
            best = right - left
    return best


@njit(cache=True)
def _best_window(prefix, width, w):
    """Start and sum of the best-summed window of width ``w`` (first one on ties)."""
    best_x = 0
    best_sum = prefix[w] - prefix[0]
    for x in range(1, width - w + 1):
        s = prefix[x + w] - prefix[x]
        if s > best_sum:
            best_sum = s
            best_x = x
    return best_x, best_sum


@njit(cache=True)
def _max_window_sum(table, y0, y1, w):
    """Largest attention in a ``w``-wide window of rows ``y0:y1``.

    A branch-light pass that LLVM vectorises; it computes each window sum with
    the same floating-point operations as ``_band_prefix`` differences, so
    both agree exactly on which windows reach a target.
    """
    top = table[y0]
    bottom = table[y1]
    best = -np.inf
    for x in range(table.shape[1] - w):
        s = (bottom[x + w] - top[x + w]) - (bottom[x] - top[x])
        if s > best:
            best = s
    return best


@njit(cache=True)
def _band_prefix(table, y0, y1, out):
    """``out[x]`` = attention in rows ``y0:y1`` and columns ``< x``."""
    top = table[y0]
    bottom = table[y1]
    for x in range(out.shape[0]):
        out[x] = bottom[x] - top[x]


@njit(cache=True)
def _precedes(key, best_key):
    """Lexicographic ``key < best_key`` for 4-tuples of ints."""
    for i in range(4):
        if key[i] != best_key[i]:
            return key[i] < best_key[i]
    return False


@njit(cache=True)
def _top_row_bounds(table, target):
    """Height and width bounds for boxes whose top row is ``y0``.

    ``min_height[y0]``: rows of the lowest full-width band ``y0:y1`` reaching
    the target (``lowest`` only moves down as ``y0`` does).
    ``min_width_below[y0]``: narrowest window of the band ``y0:rows`` reaching
    it; non-decreasing in ``y0``, so it is found by stepping up one width at a
    time. Only the first ``n_tops`` tops can hold the target at all.
    """
    rows = table.shape[0] - 1
    cols = table.shape[1] - 1
    min_height = np.empty(rows, np.int64)
    min_width_below = np.empty(rows, np.int64)
    n_tops = 0
    lowest = 1
    width = 1
    for y0 in range(rows):
        lowest = max(lowest, y0 + 1)
        while lowest <= rows and table[lowest, cols] - table[y0, cols] < target:
            lowest += 1
        if lowest > rows:
            break  # rows y0: hold too little, and so do all later tops
        n_tops = y0 + 1
        min_height[y0] = lowest - y0
        while width < cols and _max_window_sum(table, y0, rows, width) < target:
            width += 1
        min_width_below[y0] = width
    return min_height, min_width_below, n_tops


@njit(cache=True)
def _bottom_row_bounds(table, target):
    """``min_width_above[y1]``: narrowest window of the band ``0:y1`` reaching the target.

    Non-increasing in ``y1``, found by stepping down one width at a time;
    ``cols + 1`` where even the full width falls short.
    """
    rows = table.shape[0] - 1
    cols = table.shape[1] - 1
    min_width_above = np.empty(rows + 1, np.int64)
    min_width_above[0] = cols + 1
    width = cols
    for y1 in range(1, rows + 1):
        if table[y1, cols] - table[0, cols] < target:
            min_width_above[y1] = cols + 1
            continue
        while width > 1 and _max_window_sum(table, 0, y1, width - 1) >= target:
            width -= 1
        min_width_above[y1] = width
    return min_width_above


@njit(cache=True)
def _search(table, target, transposed):
    """Exact Eq. 4 search on a summed-area table with rows <= columns.

    Returns the box ``(y0, x0, y1, x1)`` in the table's own orientation; ties
    are broken in the *caller's* orientation (``transposed`` swaps the axes of
    the lexicographic key) so the answer does not depend on the transposition.
    """
    rows = table.shape[0] - 1
    cols = table.shape[1] - 1
    prefix = np.empty(cols + 1)

    # Per top row y0: the lowest full-width band reaching the target gives a
    # height bound, the band y0:rows a width bound; a box with top y0 has area
    # >= their product. Per bottom row y1: the band 0:y1 bounds the width of
    # every band ending at y1.
    min_height, min_width_below, n_tops = _top_row_bounds(table, target)
    min_width_above = _bottom_row_bounds(table, target)
    lower_bound = min_height[:n_tops] * min_width_below[:n_tops]

    best_area = rows * cols + 1
    best_sum = -1.0
    best_key = (0, 0, rows, cols)
    best = (0, 0, rows, cols)
    for y0 in np.argsort(lower_bound, kind="mergesort"):
        if lower_bound[y0] > best_area:
            break  # tops are sorted by bound: none left can win or tie
        width_floor = min_width_below[y0]
        for y1 in range(y0 + min_height[y0], rows + 1):
            height = y1 - y0
            if height * width_floor > best_area:
                break  # taller bands only grow the bound
            if height * min_width_above[y1] > best_area:
                continue
            # Cheap rejection: no window narrow enough to tie the best reaches the target.
            if _max_window_sum(table, y0, y1, min(best_area // height, cols)) < target:
                continue
            _band_prefix(table, y0, y1, prefix)
            w = _min_width(prefix, cols, target)
            area = height * w
            if w > cols or area > best_area:
                continue
            x0, s = _best_window(prefix, cols, w)
            if transposed:
                key = (x0, y0, x0 + w, y1)
            else:
                key = (y0, x0, y1, x0 + w)
            if area < best_area or s > best_sum or (s == best_sum and _precedes(key, best_key)):
                best_area = area
                best_sum = s
                best_key = key
                best = (y0, x0, y1, x0 + w)
    return best


@njit(cache=True)
def _box_kernel(att, tau):
    """``(y0, x0, y1, x1, status)`` for one map; status 0 = ok, 1 = non-finite."""
    rows, cols = att.shape
    transposed = rows > cols
    table, ok = _summed_area(att, transposed)
    if not ok:
        return 0, 0, 0, 0, _NON_FINITE
    total = table[-1, -1]
    if total <= 0.0:
        return 0, 0, rows, cols, 0
    target = (tau - REL_TOL) * total
    a0, b0, a1, b1 = _search(table, target, transposed)
    if transposed:
        return b0, a0, b1, a1, 0
    return a0, b0, a1, b1, 0


@njit(cache=True, parallel=True)
def _boxes_kernel(maps, tau):
    """Batched :func:`_box_kernel`, maps spread over numba's threads."""
    out = np.empty((maps.shape[0], 5), np.int64)
    for i in prange(maps.shape[0]):
        y0, x0, y1, x1, status = _box_kernel(maps[i], tau)
        out[i, 0] = y0
        out[i, 1] = x0
        out[i, 2] = y1
        out[i, 3] = x1
        out[i, 4] = status
    return out


# --------------------------------------------------------------------------- validation


class AttentionMapError(GPFError, ValueError):
    """An attention map holding NaN or infinite values (e.g. from a model whose weights hold them)."""


def _check_tau(tau) -> float:
    if isinstance(tau, bool) or not isinstance(tau, Real) or not (0.0 < float(tau) <= 1.0):
        raise OptionError(f"tau must be a number in (0, 1] (share of attention to keep; "
                          f"the paper uses {TAU}), got {tau!r}", param="tau")
    return float(tau)


def _as_maps(attention, ndim: int, what: str) -> np.ndarray:
    """``attention`` as a C-contiguous float64 array with ``ndim`` dims.

    One dtype and layout means one compiled specialisation per kernel (a cold
    numba cache compiles in seconds, not tens of seconds); the copy costs
    microseconds next to the search.
    """
    arr = np.asarray(attention)
    if arr.ndim != ndim:
        expected = "(H, W)" if ndim == 2 else "(B, H, W)"
        raise ValueError(f"{what} must be a {ndim}-D array {expected}, got shape {arr.shape}")
    if arr.shape[-1] == 0 or arr.shape[-2] == 0:
        raise ValueError(f"{what} must not be empty, got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{what} must hold real numbers (float16/32/64, int or bool), "
                         f"got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float64)


def _non_finite_error(arr: np.ndarray, what: str) -> AttentionMapError:
    where = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
    return AttentionMapError(f"{what} holds a non-finite value ({arr[where]}) at index {where}; "
                             "attention must be finite (replace NaN with 0 if it means 'none')")


# --------------------------------------------------------------------------- public API


def best_box(attention, tau: float = TAU) -> tuple[int, int, int, int]:
    """Smallest rectangle holding ``tau`` of the attention (paper Eq. 4).

    Args:
        attention: 2-D map ``(H, W)`` of real numbers (any float, int or bool
            dtype; searched in float64). Negative values count as 0.
        tau: share of the total attention the box must hold, in ``(0, 1]``.

    Returns:
        ``(y0, x0, y1, x1)``, half-open, array order. Among boxes holding at
        least ``(tau - REL_TOL) * total``: smallest area, then largest sum, then
        smallest ``(y0, x0, y1, x1)``. An all-zero map gives the whole map.

    Raises:
        ValueError: not 2-D, empty, non-real dtype, NaN/inf values
            (:class:`AttentionMapError`), or tau outside ``(0, 1]``
            (:class:`~gpf.errors.OptionError`).
    """
    tau = _check_tau(tau)
    arr = _as_maps(attention, 2, "attention map")
    y0, x0, y1, x1, status = _box_kernel(arr, tau)
    if status == _NON_FINITE:
        raise _non_finite_error(arr, "attention map")
    return int(y0), int(x0), int(y1), int(x1)


def best_boxes(maps, tau: float = TAU) -> np.ndarray:
    """:func:`best_box` for each map of a ``(B, H, W)`` stack, in parallel.

    Uses numba's thread pool (``NUMBA_NUM_THREADS`` / ``numba.set_num_threads``).
    Returns ``np.int64[B, 4]`` rows ``(y0, x0, y1, x1)``; ``B = 0`` gives ``(0, 4)``.
    """
    tau = _check_tau(tau)
    arr = np.asarray(maps)
    if arr.ndim == 3 and arr.shape[0] == 0:
        return np.zeros((0, 4), np.int64)
    arr = _as_maps(arr, 3, "attention maps")
    out = _boxes_kernel(arr, tau)
    bad = np.flatnonzero(out[:, 4] == _NON_FINITE)
    if bad.size:
        raise _non_finite_error(arr, f"attention maps (map {int(bad[0])} of {arr.shape[0]})")
    return out[:, :4].copy()


def box_fraction(attention, box) -> float:
    """Share of the (negatives-clamped) attention inside ``box = (y0, x0, y1, x1)``.

    Returns NaN when the map holds no positive attention (0 / 0).
    """
    arr = _as_maps(attention, 2, "attention map")
    y0, x0, y1, x1 = _check_box(box, arr.shape)
    if not np.isfinite(arr).all():
        raise _non_finite_error(arr, "attention map")
    clamped = np.maximum(arr, 0.0)
    total = float(clamped.sum())
    if total <= 0.0:
        return float("nan")
    return float(clamped[y0:y1, x0:x1].sum()) / total


def map_box_to_image(box, map_hw, image_wh) -> tuple[int, int, int, int]:
    """Box on an ``(h, w)`` map as pixel box ``(x0, y0, x1, y1)`` of a ``width x height`` image.

    The map is taken to cover the image exactly (cell ``j`` spans pixels
    ``[j * width / w, (j + 1) * width / w)``). Edges round outward (floor the
    start, ceil the end, exact integer arithmetic) and are clamped to the
    image, so the pixel box contains every pixel that a box cell covers: under
    a nearest or area upsampling of the map, the crop keeps at least the box's
    share of the attention.
    """
    h, w = (_positive_int(v, "map_hw") for v in map_hw)
    width, height = (_positive_int(v, "image_wh") for v in image_wh)
    y0, x0, y1, x1 = _check_box(box, (h, w))
    px0, px1 = (x0 * width) // w, -((-x1 * width) // w)
    py0, py1 = (y0 * height) // h, -((-y1 * height) // h)
    return (max(0, px0), max(0, py0), min(width, px1), min(height, py1))


def _positive_int(value, what: str) -> int:
    try:
        ok = not isinstance(value, (bool, np.bool_)) and int(value) == value and value > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{what} must hold two positive integers, got {value!r}")
    return int(value)


def _check_box(box, shape) -> tuple[int, int, int, int]:
    try:
        y0, x0, y1, x1 = (int(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"box must be 4 integers (y0, x0, y1, x1), got {box!r}") from None
    h, w = shape
    if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
        raise ValueError(f"box (y0, x0, y1, x1) = {(y0, x0, y1, x1)} is empty or outside "
                         f"the {h}x{w} map; need 0 <= y0 < y1 <= {h} and 0 <= x0 < x1 <= {w}")
    return y0, x0, y1, x1

