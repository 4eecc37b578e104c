"""Chat records, in the OpenAI messages and ShareGPT formats, as canonical dialogs, and dialogs written back as
messages.

- ``messages``: ``{"messages": [{"role": "system" | "developer" | "user" | "assistant", "content": ...}, ...]}``,
  the chat fine-tuning format of OpenAI, TRL's ``SFTTrainer``, axolotl and LLaMA-Factory.
- ``sharegpt``: ``{"conversations": [{"from": "system" | "human" | "gpt", "value": ...}, ...]}``.

The conversation is read by :mod:`persona.data.conversation`'s rules (roles, text parts, the persona's sentences,
a speaker's consecutive messages as one utterance, ``__ SILENCE __`` before a bot that speaks first). Then:

- Every assistant message is a turn whose history is everything said before it. What the user says after the last
  assistant message belongs to no turn.
- A record may carry distractors of its last turn: ``candidates`` (a list of strings) or ``rejected`` (a string, a
  message, or a list of messages whose last is the rejected reply, as preference datasets have it); the gold reply
  is the assistant's message. The other turns get theirs drawn as for any conversation.
- Unusable records, skipped with their reason (or an error in strict mode): no assistant message, an empty user or
  assistant message, a ``tool`` or ``function`` message (a persona dialog calls no tools), any other role, non-text
  content.
"""

from __future__ import annotations

from typing import Any

from persona.data.conversation import (
    Conversation,
    MessageError,
    conversation_messages,
    message_text,
    read_conversation,
)
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


def chat_format_of(keys) -> str | None:
    """The chat format of a record with these keys (``messages`` or ``sharegpt``), or None."""
    return next((name for name, (field, _, _) in CHAT_FORMATS.items() if field in keys), None)


def _unusable(what: str, where: str, reason: str, fix: str = "repair or drop the record.") -> RecordError:
    return RecordError(what, where=where, fix=fix, reason=reason)


def _conversation(record: Any, where: str, chat_format: str) -> Conversation:
    """A record's messages read as a conversation (roles as :data:`ROLES` names them), or a :class:`RecordError`."""
    field, role_key, content_key = CHAT_FORMATS[chat_format]
    messages = record.get(field) if isinstance(record, dict) else None
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise _unusable(f"'{field}' must be a list of message objects", where, "malformed record")
    roles = [str(message.get(role_key, "")).lower() for message in messages]
    for index, role in enumerate(roles):
        if role in TOOL_ROLES:
            said = f"{where}, message {index}"
            raise _unusable(f"a '{role}' message: a persona dialog calls no tools", said, "tool or function message")
    try:
        return read_conversation((ROLES.get(role, role), m.get(content_key)) for role, m in zip(roles, messages))
    except MessageError as error:
        fix = f"use {', '.join(sorted(ROLES))}." if error.reason == "unknown role" else error.fix
        raise _unusable(error.what, f"{where}, message {error.index}", error.reason, fix) from None


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
    try:
        texts = [message_text(c.get("content", c.get("value"))) if isinstance(c, dict) else c for c in given]
    except MessageError as error:
        raise _unusable(error.what, where, error.reason, error.fix) from None
    if not all(isinstance(text, str) and text.strip() for text in texts):
        raise _unusable("a candidate is empty or not a string", where, "malformed record")
    return [text.strip() for text in texts]


def chat_dialogs(record: Any, where: str, chat_format: str) -> list[Dialog]:
    """The dialog of one chat record (the assistant as the bot), by the rules of the module."""
    conversation = _conversation(record, where, chat_format)
    spoken = conversation.utterances
    if not any(role == "assistant" for role, _ in spoken):
        raise _unusable("the record has no assistant message", where, "no assistant message")
    texts = [text for _, text in spoken]
    turns = [
        {"history": texts[:index], "candidates": [text]}
        for index, (role, text) in enumerate(spoken)
        if role == "assistant"
    ]
    turns[-1]["candidates"] = [*_distractors(record, where), *turns[-1]["candidates"]]
    return [{"persona": conversation.persona, "turns": turns, "record": where}]


def dialog_messages(dialog: Dialog) -> dict:
    """A dialog as one OpenAI messages record: the persona as the system message, its last turn's history and gold
    reply as the conversation (``__ SILENCE __`` left out), that turn's distractors as ``candidates``; what
    :func:`chat_dialogs` reads back as the same dialog."""
    last = dialog["turns"][-1]
    messages = [
        message
        for message in (
            *conversation_messages(dialog["persona"], last["history"]),
            {"role": "assistant", "content": gold_reply(last["candidates"])},
        )
        if message["content"] not in ("", SILENCE)
    ]
    distractors = list(last["candidates"][:-1])
    return {"messages": messages, **({"candidates": distractors} if distractors else {})}
