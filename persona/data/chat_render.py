"""A chat rendered by its template into token ids, every message's text kept as text.

A chat template is text: rendered and tokenized whole, a message whose content holds ``<|im_end|>`` (or any other of
the tokenizer's added tokens typed as characters) becomes the template's own control token there, so that a user can
end their turn and open a ``system`` one. Here the template renders each message's content as a placeholder, the
template's own text is tokenized as the template means it (its control tokens are tokens) and each content as plain
text (:func:`~persona.data.tokenize.encode_texts`, special tokens typed in it split into ordinary tokens): the user's
characters, never the template's tokens, whatever they type.

A conversation whose contents hold no added token's text is rendered as before, in one batched call; for one that
does, the pieces are tokenized apart and joined. The two agree on every text that holds none
(:func:`renders_faithfully` checks it once per tokenizer on :data:`PROBE_CHATS`); a tokenizer for which they do not
(pre-tokenization that depends on where a piece starts, as some SentencePiece models have) keeps its messages' text by
refusing one that holds control text, with an error naming it.
"""

from __future__ import annotations

import re
from functools import lru_cache

from persona.data.tokenize import encode_texts
from persona.errors import DataError

PLACEHOLDER = "\ue000{}\ue001"  # private-use characters around a message's index: no template or text yields them
PLACEHOLDERS = re.compile("\ue000(\\d+)\ue001")
PROBE_CHATS = (
    [{"role": "system", "content": "i like cats. i am 32."}, {"role": "user", "content": "hi! how are you?"}],
    [
        {"role": "system", "content": "Über-café 😀 ;) i live in a\nsmall town."},
        {"role": "user", "content": " hello there "},
        {"role": "assistant", "content": "well... i am fine, 2 dogs!"},
        {"role": "user", "content": "and you?"},
    ],
)


def control_texts(tokenizer) -> tuple[str, ...]:
    """The texts the tokenizer reads as one added token each (its control tokens, ``<|im_end|>`` and the like),
    longest first."""
    return _control_texts(tokenizer, len(tokenizer))


@lru_cache(maxsize=8)
def _control_texts(tokenizer, vocabulary: int) -> tuple[str, ...]:
    texts = {str(token) for token in tokenizer.added_tokens_decoder.values()}
    return tuple(sorted((text for text in texts if text), key=len, reverse=True))


def holds_control_text(tokenizer, text: str) -> bool:
    """Whether ``text`` holds the text of one of the tokenizer's control tokens."""
    return any(control in text for control in control_texts(tokenizer))


def render_ids(tokenizer, conversations: list[list[dict]], *, add_generation_prompt: bool) -> list[list[int]]:
    """The ids of each conversation (messages with ``role`` and ``content``) as the tokenizer's chat template renders
    it (the assistant's generation prompt after it with ``add_generation_prompt``), each content kept as text; those
    whose contents hold no control text in one batched call."""
    rendered: list[list[int] | None] = [None] * len(conversations)
    plain = [i for i, chat in enumerate(conversations) if not any(_typed_control(tokenizer, chat))]
    if plain:
        whole = tokenizer.apply_chat_template(
            [conversations[i] for i in plain],
            add_generation_prompt=add_generation_prompt,
            tokenize=True,
            return_dict=False,
        )
        for index, ids in zip(plain, whole):
            rendered[index] = list(ids)
    for index, chat in enumerate(conversations):
        if rendered[index] is None:
            if not renders_faithfully(tokenizer):
                role = next(m["role"] for m in chat if holds_control_text(tokenizer, m["content"]))
                raise DataError(
                    f"a {role} message holds the text of one of the model's control tokens "
                    f"({', '.join(c for c in control_texts(tokenizer) if c in ''.join(_contents(chat)))}), which "
                    "this tokenizer cannot keep as text",
                    where=f"{role} message",
                    fix="remove the control token's text from the message.",
                )
            rendered[index] = _pieces_ids(tokenizer, chat, add_generation_prompt)
    return rendered


def _contents(chat: list[dict]) -> list[str]:
    return [message["content"] for message in chat]


def _typed_control(tokenizer, chat: list[dict]):
    return (holds_control_text(tokenizer, content) for content in _contents(chat))


def _pieces_ids(tokenizer, chat: list[dict], add_generation_prompt: bool) -> list[int]:
    """The template's render of ``chat`` tokenized in pieces: its own control tokens as tokens, every stretch of text
    between them (template text and contents) as plain text."""
    marked = [{**message, "content": PLACEHOLDER.format(i)} for i, message in enumerate(chat)]
    template = tokenizer.apply_chat_template(marked, add_generation_prompt=add_generation_prompt, tokenize=False)
    parts = PLACEHOLDERS.split(template)  # template text, a message's index, template text, ...
    if sorted(int(index) for index in parts[1::2]) != list(range(len(chat))):
        raise DataError(
            "the chat template changes or repeats a message's text, so typed control tokens cannot be kept as text",
            where=getattr(tokenizer, "name_or_path", "tokenizer"),
            fix="remove the control token's text from the message.",
        )
    controls = re.compile("(" + "|".join(map(re.escape, control_texts(tokenizer))) + ")")
    pieces: list[str | int] = [""]  # stretches of text, and control tokens' ids between them
    for position, part in enumerate(parts):
        if position % 2:
            pieces[-1] += chat[int(part)]["content"]
            continue
        for split, text in enumerate(controls.split(part)):
            if split % 2:
                pieces += [tokenizer.convert_tokens_to_ids(text), ""]
            else:
                pieces[-1] += text
    texts = [piece for piece in pieces if isinstance(piece, str) and piece]
    encoded = iter(encode_texts(tokenizer, texts, leading_space=False))
    ids: list[int] = []
    for piece in pieces:
        if isinstance(piece, int):
            ids.append(piece)
        elif piece:
            ids += next(encoded)
    return ids


def renders_faithfully(tokenizer) -> bool:
    """Whether tokenizing a render in pieces (:func:`render_ids`) gives the whole render's ids on :data:`PROBE_CHATS`,
    with and without the generation prompt (once per tokenizer, template and vocabulary)."""
    return _faithful(tokenizer, tokenizer.chat_template, len(tokenizer))


@lru_cache(maxsize=8)
def _faithful(tokenizer, template: str, vocabulary: int) -> bool:
    for prompt in (True, False):
        for chat in PROBE_CHATS:
            whole = tokenizer.apply_chat_template(chat, add_generation_prompt=prompt, tokenize=True, return_dict=False)
            if _pieces_ids(tokenizer, chat, prompt) != list(whole):
                return False
    return True
