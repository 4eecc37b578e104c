"""Resuming: the newest complete checkpoint of a run, and what ``resume_from_checkpoint`` names."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from transformers.trainer import TRAINER_STATE_NAME

from persona.errors import ConfigError

logger = logging.getLogger(__name__)


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest ``checkpoint-N`` of ``output_dir`` that was written to the end.

    The Trainer writes ``trainer_state.json`` last; a run killed while saving leaves a checkpoint without it, or with
    it cut short, which is skipped (with a warning) rather than resumed from.
    """
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    numbered = [
        (int(p.name.split("-")[1]), p)
        for p in folder.glob("checkpoint-*")
        if p.is_dir() and p.name.split("-")[1].isdigit()
    ]
    for _, checkpoint in sorted(numbered, reverse=True):
        if _readable_state(checkpoint / TRAINER_STATE_NAME):
            return str(checkpoint)
        logger.warning("Skipping %s: written only in part (no complete %s)", checkpoint, TRAINER_STATE_NAME)
    return None


def _readable_state(path: Path) -> bool:
    """Whether the trainer state was written whole (the Trainer writes it last, but not atomically)."""
    try:
        return isinstance(json.loads(path.read_text()), dict)
    except (OSError, ValueError):
        return False


def resolve_checkpoint(value: str | None, output_dir: str) -> str | None:
    """``resume_from_checkpoint``: a folder, or ``true``/``last`` for the newest checkpoint in ``output_dir``."""
    if value is None or value.lower() in ("false", "none", ""):
        return None
    if value.lower() in ("true", "last"):
        last = last_complete_checkpoint(output_dir)
        if last is None:
            raise ConfigError(
                "no complete checkpoint to resume from",
                where=output_dir,
                fix="train once with save_strategy set, or drop resume_from_checkpoint.",
            )
        return last
    if not os.path.isdir(value):
        raise ConfigError(
            "checkpoint folder not found", where=value, fix="pass a checkpoint-N folder of output_dir, or 'last'."
        )
    return value
