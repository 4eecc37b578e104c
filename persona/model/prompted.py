"""Prompted baselines: a causal LM that persona never trained, evaluated on the same turns through its own chat
template.

The persona sentences are the system message, the history alternates user (the partner, who spoke last) and
assistant messages, and each candidate is the assistant's reply up to and including its end-of-turn token.
Each turn becomes a packed example like persona's own (the prompt once, every candidate after it): the prefix
is the generation prompt but its last token, and each candidate block is that last token then the reply's
tokens, so the first reply token is scored from the very position the prompt ends at.
"""

from __future__ import annotations

import datasets
import torch
from transformers import GenerationConfig

from persona.configs import DataArguments
from persona.data.prepare import read_splits, resolved_sources
from persona.data.readers import Dialog
from persona.data.skips import SkipLog
from persona.errors import DataError
from persona.model.generation import DecodingArguments, left_padded
from persona.model.loading import LoadedModel

PROMPTING = (
    "its own chat template: the persona sentences as the system message, the history as alternating user and "
    "assistant messages (the partner as the user), each candidate as the assistant's reply up to and including its "
    "end-of-turn token"
)


def chat_messages(persona: list[str], history: list[str]) -> list[dict]:
    """The chat of a turn: the persona as the system message, then the history, the partner's last utterance as the
    user's."""
    roles = ["user" if (len(history) - index) % 2 else "assistant" for index in range(len(history))]
    return [
        {"role": "system", "content": " ".join(persona)},
        *({"role": r, "content": u} for r, u in zip(roles, history)),
    ]


def turn_example(tokenizer, persona: list[str], history: list[str], candidates: list[str]) -> dict:
    """``prefix_ids``, ``candidates`` (whole blocks) and ``length`` (of the packed row) of one turn, rendered by the
    tokenizer's chat template."""
    messages = chat_messages(persona, history)
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    specials = set(tokenizer.all_special_ids)
    blocks = []
    for candidate in candidates:
        full = tokenizer.apply_chat_template(
            [*messages, {"role": "assistant", "content": candidate}], tokenize=True, return_dict=False
        )
        if full[: len(prompt)] != prompt:
            raise DataError(
                "the chat template renders an assistant reply that does not continue its own generation prompt",
                where=getattr(tokenizer, "name_or_path", "tokenizer"),
                fix="evaluate a model whose chat template extends the generation prompt with the reply (most do).",
            )
        reply = full[len(prompt) :]
        end = next((i for i, token in enumerate(reply) if token in specials), len(reply) - 1)
        blocks.append([prompt[-1], *reply[: end + 1]])
    return {"prefix_ids": prompt[:-1], "candidates": blocks, "length": len(prompt) - 1 + sum(map(len, blocks))}


def prompted_corpus(args: DataArguments, tokenizer) -> tuple[datasets.Dataset, list[Dialog], dict]:
    """The evaluated turns as persona reads them (the same dialogs, history window and candidates as for a persona
    model), as packed examples through the chat template; the dialogs; and ``{"split", "skipped"}``."""
    skips = SkipLog(strict=args.strict)
    dialogs, splits = read_splits(args, ("eval",), *resolved_sources(args, ("eval",)), skips)
    examples = [
        turn_example(tokenizer, d["persona"], t["history"], t["candidates"])
        for d in dialogs["eval"]
        for t in d["turns"]
    ]
    return datasets.Dataset.from_list(examples), dialogs["eval"], {"split": splits["eval"], "skipped": skips.reasons()}


@torch.no_grad()
def generate_prompted(
    loaded: LoadedModel, turns: list[tuple[list[str], list[str]]], decoding: DecodingArguments, batch_size: int
) -> list[str]:
    """A reply per ``(persona, history)`` from the model prompted with its chat template, in left-padded batches."""
    model, tokenizer, pad = loaded.model, loaded.tokenizer, loaded.ids.pad
    device = next(model.parameters()).device
    config = GenerationConfig(**decoding.settings(), pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
    replies = []
    for start in range(0, len(turns), batch_size):
        prompts = [
            tokenizer.apply_chat_template(
                chat_messages(p, h), add_generation_prompt=True, tokenize=True, return_dict=False
            )
            for p, h in turns[start : start + batch_size]
        ]
        ids, mask = left_padded(prompts, pad)
        output = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
        replies += [
            text.strip() for text in tokenizer.batch_decode(output[:, ids.shape[1] :], skip_special_tokens=True)
        ]
    return replies
