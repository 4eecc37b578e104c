"""The canonical dialog every reader yields (see :mod:`persona.data.readers`)."""

from __future__ import annotations

from typing import TypedDict

SILENCE = "__ SILENCE __"  # PersonaChat's partner utterance before a turn that the bot opens


class Turn(TypedDict):
    """One turn: the utterances before the reply (oldest first) and the candidate replies (gold last)."""

    history: list[str]
    candidates: list[str]


class Dialog(TypedDict):
    """The canonical dialog: the bot's persona sentences, its turns, and the record it was read from."""

    persona: list[str]
    turns: list[Turn]
    record: str
