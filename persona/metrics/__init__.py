"""The ConvAI2 metrics as ``evaluate`` modules shipped in the package (Hub metric scripts cannot be fetched offline)."""

from __future__ import annotations

from pathlib import Path

import evaluate

_HERE = Path(__file__).resolve().parent


def load_metric(name: str) -> evaluate.EvaluationModule:
    """``convai2_f1`` or ``hits_at_k``, loaded with ``evaluate.load`` from this package."""
    return evaluate.load(str(_HERE / name))
