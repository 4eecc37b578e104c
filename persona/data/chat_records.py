"""Chat records, in the OpenAI messages and ShareGPT formats, as canonical dialogs, and dialogs written back as
messages.

- ``messages``: ``{"messages": [{"role": "system" | "developer" | "user" | "assistant", "content": ...}, ...]}``,
  the chat fine-tuning format of OpenAI, TRL's ``SFTTrainer``, axolotl and LLaMA-Factory.
- ``sharegpt``: ``{"conversations": [{"from": "system" | "human" | "gpt", "value": ...}, ...]}``.

The rules, the same for both:

- The system (and ``developer``) messages are the bot's persona: their texts, joined with a space, split into
  sentences by :func:`split_sentences` (each runs to its ``.``, ``!`` or ``?``); those sentences are what
  ``personality_permutations`` rotates and persona-chat draws. A record without one is a dialog without a persona.
- The assistant is the bot, the user its partner; consecutive messages of one speaker are one utterance (their texts
  joined with a space).
- Every assistant message is a turn whose history is everything said before it; when the assistant speaks first,
  that history is ``__ SILENCE __``, as PersonaChat has it. What the user says after the last assistant message
  belongs to no turn.
- A message's content is a string or a list of parts, whose text parts (``{"type": "text", "text": ...}``) are
  joined with a space; any other part (an image, audio) makes the record unusable.
- A record may carry distractors of its last turn: ``candidates`` (a list of strings) or ``rejected`` (a string, a
  message, or a list of messages whose last is the rejected reply, as preference datasets have it); the gold reply
  is the assistant's message. The other turns get theirs drawn as for any conversation.
- Unusable records, skipped with their reason (or an error in strict mode): no assistant message, an empty message,
  a ``tool`` or ``function`` message (a persona dialog calls no tools), any other role, non-text content.
"""

from __future__ import annotations

import re
from typing import Any

from persona.data.dialog import SILENCE, Dialog
from persona.data.layout import gold_reply
from persona.data.skips import RecordError

MESSAGES, SHAREGPT = "messages", "sharegpt"
CHAT_FORMATS = {MESSAGES: ("messages", "role", "content"), SHAREGPT: ("conversations", "from", "value")}
ROLES = {  # each format's roles as persona reads them
    "system": "system",
    "developer": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "model": "assistant",
}
TOOL_ROLES = ("tool", "function", "ipython", "function_call", "observation")


def split_sentences(text: str) -> list[str]:
    """``"i like cats. i am tall."`` -> ``["i like cats.", "i am tall."]``: a system message as persona sentences."""
    return [s.strip() for s in re.findall(r"[^.!?]+[.!?]?", text) if s.strip()]


def chat_format_of(keys) -> str | None:
    """The chat format of a record with these keys (``messages`` or ``sharegpt``), or None."""
    return next((name for name, (field, _, _) in CHAT_FORMATS.items() if field in keys), None)


def _unusable(what: str, where: str, reason: str, fix: str = "repair or drop the record.") -> RecordError:
    return RecordError(what, where=where, fix=fix, reason=reason)


def _text(content: Any, where: str) -> str:
    """A message's content as one text (see the module for the rule on parts)."""
    if isinstance(content, str):
        return content.strip()
    if isinstance(content, list):
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text" or not isinstance(part.get("text"), str):
                raise _unusable(
                    f"a content part of type '{kind}' is not text", where, "non-text content", "keep text parts only."
                )
            texts.append(part["text"].strip())
        return " ".join(text for text in texts if text)
    raise _unusable("a message's content is neither a string nor a list of parts", where, "malformed record")


def _messages(record: Any, where: str, chat_format: str) -> list[tuple[str, str]]:
    """The ``(role, text)`` of each message of a record (roles as :data:`ROLES` reads them)."""
    field, role_key, content_key = CHAT_FORMATS[chat_format]
    messages = record.get(field) if isinstance(record, dict) else None
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise _unusable(f"'{field}' must be a list of message objects", where, "malformed record")
    read = []
    for index, message in enumerate(messages):
        said = f"{where}, message {index}"
        role = str(message.get(role_key, "")).lower()
        if role in TOOL_ROLES:
            raise _unusable(f"a '{role}' message: a persona dialog calls no tools", said, "tool or function message")
        if role not in ROLES:
            raise _unusable(f"unknown role '{role}'", said, "unknown role", f"use {', '.join(sorted(ROLES))}.")
        text = _text(message.get(content_key), said)
        if not text:
            raise _unusable("the message is empty", said, "empty message", "drop the message or the record.")
        read.append((ROLES[role], text))
    return read


def _distractors(record: dict, where: str) -> list[str]:
    """The record's own distractors of its last turn (``candidates`` or ``rejected``, see the module)."""
    given = record.get("candidates", record.get("rejected"))
    if given is None:
        return []
    if isinstance(given, str):
        given = [given]
    elif isinstance(given, dict):
        given = [given]
    elif isinstance(given, list) and given and all(isinstance(m, dict) for m in given):
        given = [given[-1]]  # a rejected conversation: its last message is the rejected reply
    if not isinstance(given, list):
        raise _unusable("'candidates' must be a list of strings", where, "malformed record")
    texts = [_text(c.get("content", c.get("value")), where) if isinstance(c, dict) else c for c in given]
    if not all(isinstance(text, str) and text.strip() for text in texts):
        raise _unusable("a candidate is empty or not a string", where, "malformed record")
    return [text.strip() for text in texts]


def chat_dialogs(record: Any, where: str, chat_format: str) -> list[Dialog]:
    """The dialog of one chat record (the assistant as the bot), by the rules of the module."""
    messages = _messages(record, where, chat_format)
    persona = split_sentences(" ".join(text for role, text in messages if role == "system"))
    spoken: list[tuple[str, str]] = []
    for role, text in messages:
        if role == "system":
            continue
        if spoken and spoken[-1][0] == role:
            spoken[-1] = (role, f"{spoken[-1][1]} {text}")
        else:
            spoken.append((role, text))
    if not any(role == "assistant" for role, _ in spoken):
        raise _unusable("the record has no assistant message", where, "no assistant message")
    if spoken[0][0] == "assistant":
        spoken.insert(0, ("user", SILENCE))
    texts = [text for _, text in spoken]
    turns = [
        {"history": texts[:index], "candidates": [text]}
        for index, (role, text) in enumerate(spoken)
        if role == "assistant"
    ]
    turns[-1]["candidates"] = [*_distractors(record, where), *turns[-1]["candidates"]]
    return [{"persona": persona, "turns": turns, "record": where}]


def dialog_messages(dialog: Dialog) -> dict:
    """A dialog as one OpenAI messages record: the persona as the system message, its last turn's history and gold
    reply as the conversation (``__ SILENCE __`` left out), that turn's distractors as ``candidates``; what
    :func:`chat_dialogs` reads back as the same dialog."""
    last = dialog["turns"][-1]
    history = list(last["history"])
    opens = bool(history) and history[0] == SILENCE
    spoken = [*history[1:], gold_reply(last["candidates"])] if opens else [*history, gold_reply(last["candidates"])]
    first = "assistant" if opens else ("user" if len(history) % 2 else "assistant")
    roles = ["user", "assistant"] if first == "user" else ["assistant", "user"]
    messages = [{"role": "system", "content": " ".join(dialog["persona"])}] if dialog["persona"] else []
    messages += [{"role": roles[index % 2], "content": text} for index, text in enumerate(spoken)]
    distractors = list(last["candidates"][:-1])
    return {"messages": messages, **({"candidates": distractors} if distractors else {})}
