"""CLI error plumbing: expected errors are one line, also when raised in a DataLoader worker."""
from __future__ import annotations

import click
import pytest
import torch

from gpf.cli.common import error_text, friendly_errors
from gpf.errors import GPFError


class _Broken(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        raise GPFError("shards/train-000000.tar: truncated inside member 3; rewrite the shard")


def test_error_raised_in_a_loader_worker_comes_out_as_its_own_line():
    loader = torch.utils.data.DataLoader(_Broken(), num_workers=1)
    with pytest.raises(GPFError) as caught:
        next(iter(loader))
    assert "Original Traceback" in str(caught.value)          # what torch hands back
    assert error_text(caught.value) == "shards/train-000000.tar: truncated inside member 3; rewrite the shard"


def test_plain_messages_pass_through_unchanged():
    assert error_text(ValueError("a: b: c")) == "a: b: c"


def test_friendly_errors_turns_expected_errors_into_click_exceptions_only():
    @friendly_errors
    def expected():
        raise GPFError("bad input X; do Y")

    @friendly_errors
    def bad_path():
        raise FileNotFoundError(2, "No such file or directory", "/no/such/photo.jpg")

    @friendly_errors
    def bug():
        raise KeyError("internal")

    with pytest.raises(click.ClickException, match="bad input X; do Y"):
        expected()
    with pytest.raises(click.ClickException, match="/no/such/photo.jpg"):
        bad_path()
    with pytest.raises(KeyError):
        bug()

    @friendly_errors
    def value_bug():
        raise ValueError("a bug of gpf's, not bad input")

    with pytest.raises(ValueError):      # a plain ValueError is a bug: it keeps its traceback
        value_bug()
