"""Exact-resume plumbing: RNG states as plain types, per-epoch seeding, atomic text files.

Every value here survives ``torch.load(..., weights_only=True)``: tensors, ints,
floats, strings, lists and dicts only (no numpy arrays, no tuples of objects).
"""
from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def rng_state() -> dict:
    """The torch (CPU and CUDA), numpy and python RNG states as weights_only-safe values."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(np_state[0]), "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "cached_gaussian": float(np_state[4])},
        "python": {"version": int(py_state[0]), "state": list(py_state[1]),
                   "gauss_next": py_state[2]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state((np_state["name"], np_state["keys"].numpy().astype(np.uint32),
                         np_state["pos"], np_state["has_gauss"], np_state["cached_gaussian"]))
    py_state = state["python"]
    random.setstate((py_state["version"], tuple(py_state["state"]), py_state["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def derived_seed(*parts) -> int:
    """A 63-bit seed from ``parts`` (e.g. (seed, epoch, rank)), stable across runs and machines."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2 ** 63 - 1)


def seed_init(seed: int) -> None:
    """Seed every RNG before the model is built, so its random initial weights depend only on
    ``seed`` (identical on every DDP rank, identical in a rerun)."""
    value = derived_seed("gpf-init", seed)
    torch.manual_seed(value)
    np.random.seed(value % (2 ** 32))
    random.seed(value)


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed torch, numpy and python for one epoch of one rank.

    Dropout masks and any other random draw of an epoch then depend only on
    (seed, epoch, rank), so an epoch re-run after a resume draws exactly what the
    uninterrupted run drew, whatever consumed random numbers before it.
    """
    value = derived_seed("gpf-train", seed, epoch, rank)
    torch.manual_seed(value)
    np.random.seed(value % (2 ** 32))
    random.seed(value)
