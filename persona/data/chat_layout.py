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
"""

from __future__ import annotations

from persona.data.special_tokens import SpecialIds
from persona.errors import DataError, ModelLoadError

PROBE = "hello"  # a reply rendered once to find the template's end-of-turn token


def chat_messages(persona: list[str], history: list[str]) -> list[dict]:
    """The chat of a turn: the persona as the system message, then the history, the partner's last utterance as the
    user's."""
    roles = ["user" if (len(history) - index) % 2 else "assistant" for index in range(len(history))]
    return [
        {"role": "system", "content": " ".join(persona)},
        *({"role": r, "content": u} for r, u in zip(roles, history)),
    ]


def generation_prompt(tokenizer, persona: list[str], history: list[str]) -> list[int]:
    """The ids of the chat up to the assistant's turn (``add_generation_prompt``)."""
    return tokenizer.apply_chat_template(
        chat_messages(persona, history), add_generation_prompt=True, tokenize=True, return_dict=False
    )


def _reply_block(tokenizer, messages: list[dict], prompt: list[int], reply: str, specials: set[int]) -> list[int]:
    full = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": reply}], tokenize=True, return_dict=False
    )
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


def end_of_turn_id(tokenizer) -> int:
    """The token that ends an assistant turn in the tokenizer's chat template (the first special token after a
    reply); a clear error for a tokenizer without a template."""
    if not getattr(tokenizer, "chat_template", None):
        raise ModelLoadError(
            "the tokenizer has no chat template",
            where=getattr(tokenizer, "name_or_path", None) or "tokenizer",
            fix="use input_layout: reference for a model without one (GPT-2, openai-gpt), or a chat model.",
        )
    messages = chat_messages([], [PROBE])
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    return _reply_block(tokenizer, messages, prompt, PROBE, set(tokenizer.all_special_ids))[-1]


def template_ids(tokenizer) -> SpecialIds:
    """The ids a chat-template model uses: its end-of-turn token as ``eos``, its pad token (else the end of turn);
    the reference's other tokens match none."""
    eos = end_of_turn_id(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return SpecialIds(bos=-1, eos=eos, speaker1=-1, speaker2=-1, pad=pad)


def template_turn(tokenizer, persona: list[str], history: list[str], candidates: list[str]) -> dict:
    """``prefix_ids`` and ``candidates`` (whole blocks, see the module) of one turn, rendered by the chat template."""
    messages = chat_messages(persona, history)
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    specials = set(tokenizer.all_special_ids)
    blocks = [_reply_block(tokenizer, messages, prompt, candidate, specials) for candidate in candidates]
    return {"prefix_ids": prompt[:-1], "candidates": blocks}


def label_spans(tokenizer, persona: list[str], history: list[str], prefix: list[int]) -> list[list[int]]:
    """The ``[start, end)`` ranges of ``prefix`` (the turn's of :func:`template_turn`) that hold an earlier assistant
    message and its end-of-turn token (see the module)."""
    messages, specials, spans = chat_messages(persona, history), set(tokenizer.all_special_ids), []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = messages[:index]
        prompt = tokenizer.apply_chat_template(before, add_generation_prompt=True, tokenize=True, return_dict=False)
        block = _reply_block(tokenizer, before, prompt, message["content"], specials)
        start, end = len(prompt), len(prompt) - 1 + len(block)  # the block's first token is the prompt's last
        if prefix[start - 1 : end] == block:
            spans.append([start, end])
    return spans
