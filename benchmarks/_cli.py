"""Command-line pieces the benchmarks share."""

from __future__ import annotations

import argparse


def mac_target(text: str) -> float:
    """The argparse type of ``--targets``: a MAC ratio to prune to, in (0, 1] (1: the unpruned
    model's MACs); anything else is refused before a teacher is trained."""
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value:g}")
    return value
