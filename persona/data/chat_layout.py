"""The chat-template layout: a turn rendered by the model's own chat template instead of the reference's tokens.

The persona sentences are the system message, the history alternates user (the partner, who spoke last) and
assistant messages, and each candidate is the assistant's reply up to and including its end-of-turn token. A turn
is stored as persona's compact features are: the *prefix* is the generation prompt but its last token, and each
candidate is a block of that last token then the reply's tokens, so the first reply token is scored from the very
position the prompt ends at, and the multiple-choice head reads the block's last token (the end of turn). Training
a chat model in this layout, evaluating a prompted baseline, and generating from either all go through here.

With ``label_history`` a training turn also names the *label spans* of its prefix: the tokens of each earlier
assistant message (the bot's own replies in the history), up to and including its end-of-turn token, found as a
candidate block is (the template's render of the conversation up to that message, then with it) and kept only
where the prefix holds exactly those tokens there.

A candidate block is built without rendering the conversation again where the template allows it: the ids the
template puts before and after a reply (:class:`ReplyWrapper`) are found once per tokenizer and checked against full
renders, and each reply's own tokens, encoded in one batch, go between them; a template that changes a reply's tokens,
and a reply with whitespace at its edges or a line break, are rendered whole. Both give the same ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from persona.data.chat_render import render_ids
from persona.data.conversation import conversation_messages
from persona.data.special_tokens import SpecialIds
from persona.data.tokenize import encode_texts
from persona.errors import DataError, ModelLoadError

PROBE = "hello"  # a reply rendered once to find the template's end-of-turn token


def generation_prompt(tokenizer, persona: list[str], history: list[str]) -> list[int]:
    """The ids of the chat up to the assistant's turn (``add_generation_prompt``)."""
    return _prompt(tokenizer, conversation_messages(persona, history))


def generation_prompts(tokenizer, chats: list[tuple[list[str], list[str]]]) -> dict[tuple, list[int]]:
    """The generation prompt of each ``(persona, history)``, rendered and tokenized in one batched call, keyed by
    ``(tuple(persona), tuple(history))``."""
    keys = list(dict.fromkeys((tuple(persona), tuple(history)) for persona, history in chats))
    if not keys:
        return {}
    conversations = [conversation_messages(list(persona), list(history)) for persona, history in keys]
    return dict(zip(keys, render_ids(tokenizer, conversations, add_generation_prompt=True)))


def _prompt(tokenizer, messages: list[dict]) -> list[int]:
    (ids,) = render_ids(tokenizer, [messages], add_generation_prompt=True)
    return ids


def fit_template(measure, persona: list[str], history: list[str], limit: int) -> tuple[list, list, bool, object]:
    """The oldest history utterances, then persona sentences, dropped until ``measure(persona, history)`` (a length and
    what was rendered) is at most ``limit`` or nothing is left; the kept persona and history, whether anything was
    dropped, and the last render."""
    persona, history, truncated = list(persona), list(history), False
    length, rendered = measure(persona, history)
    while length > limit and (history or persona):
        (history if history else persona).pop(0)
        length, rendered = measure(persona, history)
        truncated = True
    return persona, history, truncated, rendered


def _reply_block(tokenizer, messages: list[dict], prompt: list[int], reply: str, specials: set[int]) -> list[int]:
    answered = [*messages, {"role": "assistant", "content": reply}]
    (full,) = render_ids(tokenizer, [answered], add_generation_prompt=False)
    if full[: len(prompt)] != prompt:
        raise DataError(
            "the chat template renders an assistant reply that does not continue its own generation prompt",
            where=getattr(tokenizer, "name_or_path", "tokenizer"),
            fix="use a model whose chat template extends the generation prompt with the reply (most do), or "
            "input_layout: reference.",
        )
    tail = full[len(prompt) :]
    end = next((i for i, token in enumerate(tail) if token in specials), len(tail) - 1)
    return [prompt[-1], *tail[: end + 1]]


@dataclass(frozen=True)
class ReplyWrapper:
    """How a chat template puts an assistant reply after its generation prompt: the ids ``before`` the reply's own
    tokens and ``after`` them (up to and including the end-of-turn token), the reply's own tokens being those of its
    text after ``space`` (the space some templates write before a message's content)."""

    before: tuple[int, ...]
    after: tuple[int, ...]
    space: str = ""

    def own_ids(self, tokenizer, texts: list[str]) -> list[list[int]]:
        """The own tokens of each reply text, in one batch, control tokens typed in it kept as text."""
        return encode_texts(tokenizer, [self.space + text for text in texts], leading_space=False)

    def block(self, prompt: list[int], reply_ids: list[int]) -> list[int]:
        """A candidate block (see the module) of a reply whose own tokens are ``reply_ids``."""
        return [prompt[-1], *self.before, *reply_ids, *self.after]


WRAPPER_PROBES = ("hello", "i like cats.", "ok, 2 dogs! and you?", "well... i am 32 years old", "Über-café 😀 ;)")


def reply_wrapper(tokenizer) -> ReplyWrapper | None:
    """The template's :class:`ReplyWrapper`, found from one render and checked against the full render of every
    :data:`WRAPPER_PROBES` reply (once per tokenizer, template and vocabulary); None where the template does not put
    a reply's own tokens, unchanged, between fixed ids (it changes, trims or joins them), so that each reply is
    rendered whole."""
    return _wrapper(tokenizer, tokenizer.chat_template, len(tokenizer))


@lru_cache(maxsize=8)
def _wrapper(tokenizer, template: str, vocabulary: int) -> ReplyWrapper | None:
    messages = conversation_messages(["i like cats."], ["hi!"])
    prompt = _prompt(tokenizer, messages)
    specials = set(tokenizer.all_special_ids)
    rendered = [_reply_block(tokenizer, messages, prompt, text, specials) for text in WRAPPER_PROBES]
    for space in ("", " "):
        own = ReplyWrapper((), (), space).own_ids(tokenizer, list(WRAPPER_PROBES))
        block, probe = rendered[0][1:], own[0]
        start = next((i for i in range(len(block) - len(probe) + 1) if block[i : i + len(probe)] == probe), None)
        if start is None:
            continue
        wrapper = ReplyWrapper(tuple(block[:start]), tuple(block[start + len(probe) :]), space)
        if all(wrapper.block(prompt, ids) == full for ids, full in zip(own, rendered)):
            return wrapper
    return None


def _wrappable(text: str) -> bool:
    """Whether a reply's text is one that :data:`WRAPPER_PROBES` vouch for: no edge whitespace, no line break."""
    return text == text.strip() and "\n" not in text and "\r" not in text


def own_ids_of(tokenizer, texts) -> dict[str, list[int]]:
    """The own tokens (:class:`ReplyWrapper`) of each of ``texts`` that :func:`reply_blocks` may put between the
    template's wrapper, encoded in one batch: not those the wrapper does not vouch for (:func:`_wrappable`)."""
    wrapper = reply_wrapper(tokenizer)
    wrappable = sorted({text for text in texts if _wrappable(text)}) if wrapper else []
    if not wrappable:
        return {}
    return dict(zip(wrappable, wrapper.own_ids(tokenizer, wrappable)))


def reply_blocks(tokenizer, messages: list[dict], prompt: list[int], replies: list[str], own_ids=None) -> list[list]:
    """The candidate blocks of ``replies`` after ``prompt`` (the generation prompt of ``messages``): each reply's own
    tokens (``own_ids`` of :func:`own_ids_of` when the caller encoded them already) between the template's
    :func:`reply_wrapper`, the template's full render for the others."""
    own_ids = own_ids_of(tokenizer, replies) if own_ids is None else own_ids
    wrapper = reply_wrapper(tokenizer) if own_ids else None
    specials = None if all(reply in own_ids for reply in replies) else set(tokenizer.all_special_ids)
    return [
        wrapper.block(prompt, own_ids[reply])
        if reply in own_ids
        else _reply_block(tokenizer, messages, prompt, reply, specials)
        for reply in replies
    ]


def end_of_turn_id(tokenizer) -> int:
    """The token that ends an assistant turn in the tokenizer's chat template (the first special token after a
    reply); a clear error for a tokenizer without a template."""
    if not getattr(tokenizer, "chat_template", None):
        raise ModelLoadError(
            "the tokenizer has no chat template",
            where=getattr(tokenizer, "name_or_path", None) or "tokenizer",
            fix="use input_layout: reference for a model without one (GPT-2, openai-gpt), or a chat model.",
        )
    messages = conversation_messages([], [PROBE])
    prompt = _prompt(tokenizer, messages)
    return _reply_block(tokenizer, messages, prompt, PROBE, set(tokenizer.all_special_ids))[-1]


def template_ids(tokenizer) -> SpecialIds:
    """The ids a chat-template model uses: its end-of-turn token as ``eos``, its pad token (else the end of turn);
    the template has no ``<bos>`` or speaker tokens of the reference's (None)."""
    eos = end_of_turn_id(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return SpecialIds(bos=None, eos=eos, speaker1=None, speaker2=None, pad=pad)


def template_turn(
    tokenizer, persona: list[str], history: list[str], candidates: list[str], own_ids=None, prompts=None
) -> dict:
    """``prefix_ids`` and ``candidates`` (whole blocks, see the module and :func:`reply_blocks`) of one turn, rendered
    by the chat template (its generation prompt taken from ``prompts``, of :func:`generation_prompts`, where it is
    there)."""
    messages = conversation_messages(persona, history)
    prompt = (prompts or {}).get((tuple(persona), tuple(history))) or _prompt(tokenizer, messages)
    return {"prefix_ids": prompt[:-1], "candidates": reply_blocks(tokenizer, messages, prompt, candidates, own_ids)}


def label_spans(tokenizer, persona: list[str], history: list[str], prefix: list[int]) -> list[list[int]]:
    """The ``[start, end)`` ranges of ``prefix`` (the turn's of :func:`template_turn`) that hold an earlier assistant
    message and its end-of-turn token (see the module)."""
    messages, spans = conversation_messages(persona, history), []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = messages[:index]
        prompt = _prompt(tokenizer, before)
        (block,) = reply_blocks(tokenizer, before, prompt, [message["content"]])
        start, end = len(prompt), len(prompt) - 1 + len(block)  # the block's first token is the prompt's last
        if prefix[start - 1 : end] == block:
            spans.append([start, end])
    return spans
