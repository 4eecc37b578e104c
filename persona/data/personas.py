"""Persona sentences drawn from a corpus as the reference's interact.py draws them."""

from __future__ import annotations

import random

from persona.configs import DataArguments
from persona.data.sources import corpus_stream, resolve


def draw_persona(data_args: DataArguments, seed: int) -> list[str]:
    """The persona of a dialog drawn (with ``seed``) from the corpus of ``data_args``, as the reference's interact.py
    does."""
    source = resolve(data_args.dataset_path, data_args.dataset_cache)
    personas = [d["persona"] for _, d in corpus_stream(source, data_args.dataset_format, data_args.bot_side)]
    return random.Random(seed).choice(personas)
