"""The ConvAI2 metrics as ``evaluate`` modules shipped in the package (Hub metric scripts cannot be fetched offline)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import evaluate
import numpy as np

_HERE = Path(__file__).resolve().parent


def hits_from_ranks(ranks: Iterable[int], ks: Iterable[int]) -> dict[str, float]:
    """``hits@k`` for each k: the fraction of turns whose gold reply's rank (0 = best) is below k."""
    ranks = np.asarray(list(ranks))
    return {f"hits@{k}": float((ranks < k).mean()) if len(ranks) else 0.0 for k in ks}


def load_metric(name: str) -> evaluate.EvaluationModule:
    """``convai2_f1`` or ``hits_at_k``, loaded with ``evaluate.load`` from this package."""
    return evaluate.load(str(_HERE / name))
