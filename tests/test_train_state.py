"""RNG state capture and restore (gpf.train.state), as a resume needs it."""
from __future__ import annotations

import io
import random

import numpy as np
import torch

from gpf.train.loop import plain
from gpf.train.state import rng_state, seed_epoch, set_rng_state


def test_rng_states_survive_a_weights_only_checkpoint():
    seed_epoch(3, 1, 0)
    state = rng_state()
    buffer = io.BytesIO()
    torch.save(plain({"rng": state}), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)["rng"]
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(5), np.random.rand(5), random.random()
    set_rng_state(loaded)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]
