"""Type checks for the plain values gpf reads back from its own files (manifest JSON, checkpoint payloads).

A kind is a Python type or ``"number"`` (an int or a float); ``bool`` is never
taken for a number or an int, although Python makes it one.
"""
from __future__ import annotations


def is_kind(value, kinds: tuple) -> bool:
    """Whether ``value`` is of one of ``kinds``."""
    for kind in kinds:
        if kind == "number":
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return True
        elif kind is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return True
        elif isinstance(value, kind):
            return True
    return False


def kinds_text(kinds: tuple, joiner: str = " or ") -> str:
    """``int or float`` style names of ``kinds`` for messages."""
    return joiner.join(k if isinstance(k, str) else k.__name__ for k in kinds)
