"""The conversation model: how chat messages become a persona and a history, one set of rules for every place that
reads a chat (corpus records in the messages and ShareGPT formats, the API's request, the web page's chat) and for
the chat template saved with a model (:mod:`persona.data.reference_template`).

- Roles: ``system`` and ``developer`` messages are the bot's persona, ``assistant`` is the bot, ``user`` its
  partner; a format's own role names are mapped onto these by its reader.
- A message's content is a string or a list of parts: strings or text parts (``{"type": "text", "text": ...}``),
  each stripped and joined with a space; any other part (an image, audio) makes the message unreadable.
- The persona is the text of every persona message, wherever it stands, joined with a space and split into
  sentences by :func:`split_sentences` (each runs to its ``.``, ``!`` or ``?``). An empty persona message adds nothing.
- Consecutive messages of one speaker are one utterance, their texts joined with a space. An empty user or assistant
  message is refused: it is no utterance, and dropping it would join its neighbours.
- When the bot speaks first, or nobody has spoken yet, the history starts with ``__ SILENCE __``, as PersonaChat has
  it for the side that opens: the bot then answers silence.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from persona.data.dialog import SILENCE

PERSONA_ROLES = ("system", "developer")
SPEAKERS = ("user", "assistant")


class MessageError(ValueError):
    """A message that the rules cannot read: ``index`` is its place among the messages, ``reason`` a short label (a
    corpus's skip reason), ``fix`` what to do."""

    def __init__(self, index: int, what: str, reason: str, fix: str):
        super().__init__(what)
        self.index, self.what, self.reason, self.fix = index, what, reason, fix


@dataclass(frozen=True)
class Conversation:
    """A chat read by the rules: the persona's sentences and the utterances, each ``(speaker, text)`` with speakers
    alternating and the partner (``user``) first."""

    persona: list[str]
    utterances: list[tuple[str, str]]

    @property
    def history(self) -> list[str]:
        """The utterances' texts, in order."""
        return [text for _, text in self.utterances]

    @property
    def awaits_reply(self) -> bool:
        """Whether the partner spoke last, so that the bot's reply comes next."""
        return self.utterances[-1][0] == "user"


def split_sentences(text: str) -> list[str]:
    """``"i like cats. i am tall."`` -> ``["i like cats.", "i am tall."]``: a persona text as sentences."""
    return [s.strip() for s in re.findall(r"[^.!?]+[.!?]?", text) if s.strip()]


def message_text(content: Any, index: int = 0) -> str:
    """A message's content as one text (see the module for the rule on parts), or a :class:`MessageError`."""
    if isinstance(content, str):
        return content.strip()
    if not isinstance(content, list):
        raise MessageError(
            index, "a message's content is neither a string nor a list of parts", "malformed record", "give text."
        )
    texts = []
    for part in content:
        text = part.get("text") if isinstance(part, dict) and part.get("type") == "text" else part
        if not isinstance(text, str):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise MessageError(
                index, f"a content part of type '{kind}' is not text", "non-text content", "keep text parts only."
            )
        texts.append(text.strip())
    return " ".join(text for text in texts if text)


def read_conversation(messages: Iterable[tuple[str, Any]]) -> Conversation:
    """The :class:`Conversation` of ``(role, content)`` messages by the rules of the module, or a
    :class:`MessageError` naming the first message they cannot read."""
    persona_texts: list[str] = []
    utterances: list[tuple[str, str]] = []
    for index, (role, content) in enumerate(messages):
        if role not in (*PERSONA_ROLES, *SPEAKERS):
            roles = ", ".join((*PERSONA_ROLES, *SPEAKERS))
            raise MessageError(index, f"unknown role '{role}'", "unknown role", f"use {roles}.")
        text = message_text(content, index)
        if role in PERSONA_ROLES:
            persona_texts.append(text)
            continue
        if not text:
            raise MessageError(index, "the message is empty", "empty message", "drop the message or give it text.")
        if utterances and utterances[-1][0] == role:
            utterances[-1] = (role, f"{utterances[-1][1]} {text}")
        else:
            utterances.append((role, text))
    if not utterances or utterances[0][0] == "assistant":
        utterances.insert(0, ("user", SILENCE))
    return Conversation(split_sentences(" ".join(persona_texts)), utterances)


def conversation_messages(persona: list[str], history: list[str]) -> list[dict]:
    """The inverse of :func:`read_conversation` for a history the bot answers next: the persona as the system message,
    then the history alternating, the partner's last utterance as the user's (``__ SILENCE __`` kept as the user's
    text: the chat-template layout renders it)."""
    roles = ["user" if (len(history) - index) % 2 else "assistant" for index in range(len(history))]
    return [
        {"role": "system", "content": " ".join(persona)},
        *({"role": role, "content": text} for role, text in zip(roles, history)),
    ]
