"""The two input layouts as objects, one chosen once per model: the reference's tokens or the model's chat template.

A :class:`Layout` is made for one tokenizer where a model (or the tokenizer of a corpus to prepare) is loaded, from
the recipe's ``input_layout`` or from the facts a trained model saved, and everything that differs between the two
layouts lives on it: the special ids, how a text becomes ids, the turn builder of ``datasets.map`` (the prefix and
candidates of a turn, fitted to length), the generation prompt and the positions it needs, the prefix of an empty
conversation, the tokens the collator adds around a stored candidate, the token rows LoRA trains, the ids a GGUF
names and the chat template a published model carries. No module outside this one compares a layout's name.

- :class:`ReferenceLayout` (``reference``): transfer-learning-conv-ai's ``<bos> persona <speaker2> ... <speaker1>
  reply <eos>`` (:mod:`persona.data.layout`), five special tokens added to the tokenizer, token types possible.
- :class:`ChatTemplateLayout` (``chat_template``): the model's own chat template (:mod:`persona.data.chat_layout`),
  the tokenizer as it is, no token types.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from persona.configs import CHAT_TEMPLATE_LAYOUT, INPUT_LAYOUTS, REFERENCE_LAYOUT
from persona.data import chat_layout
from persona.data.layout import REPLY_OVERHEAD, build_inputs, build_prefix, fit_context, gold_index, prefix_length
from persona.data.reference_template import add_chat_template
from persona.data.special_tokens import PARTNER, SpecialIds, add_special_tokens, special_ids
from persona.data.tokenize import byte_level_wants_space, check_unicode, encode_texts
from persona.errors import ConfigError


class GoldTooLong(Exception):
    """A turn whose gold reply cannot fit the model's positions even alone (its length in tokens)."""

    def __init__(self, tokens: int):
        super().__init__(tokens)
        self.tokens = tokens


@dataclass(frozen=True)
class Layout:
    """How a turn becomes the model's input, for one ``tokenizer``: its special ``ids`` and whether each text is
    encoded with a ``leading_space`` (as the model was trained; byte-level BPE: yes, a transfer-learning-conv-ai
    checkpoint: no)."""

    tokenizer: object
    ids: SpecialIds
    leading_space: bool

    name: ClassVar[str]
    reply_overhead: ClassVar[int]  # the tokens the collator adds around each stored candidate
    wraps_candidates: ClassVar[bool]  # whether a stored candidate is a reply to wrap, not a whole block
    labels_history: ClassVar[bool]  # whether ``label_history`` applies

    @classmethod
    def for_tokenizer(cls, tokenizer, leading_space: bool | None = None) -> Layout:
        """This layout for ``tokenizer`` (already given the layout's tokens); ``leading_space`` None: the tokenizer's
        own rule (:func:`~persona.data.tokenize.byte_level_wants_space`)."""
        space = byte_level_wants_space(tokenizer) if leading_space is None else leading_space
        return cls(tokenizer, cls.special_ids(tokenizer), space)

    @staticmethod
    def prepare_tokenizer(tokenizer) -> int:
        """Give a base model's ``tokenizer`` what this layout needs; return how many tokens were added."""
        return 0

    @staticmethod
    def special_ids(tokenizer) -> SpecialIds:
        """The ids this layout uses in ``tokenizer``'s vocabulary."""
        raise NotImplementedError

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, as this model reads them (:func:`~persona.data.tokenize.encode_texts`)."""
        return encode_texts(self.tokenizer, texts, leading_space=self.leading_space)

    def with_tokenizer(self, tokenizer) -> Layout:
        """The same layout on another copy of its tokenizer."""
        return dataclasses.replace(self, tokenizer=tokenizer)

    def token_types(self, requested: bool | None, trained: bool = True) -> bool:
        """Whether inputs carry token types: as ``requested`` (``use_token_types``) if given, else as the model was
        ``trained``."""
        return trained if requested is None else requested

    def turn_builder(self, batch: dict, *, max_input_length: int, label_history: bool = False):
        """For one ``datasets.map`` batch of dialogs, ``build(persona, turn)``: the turn's prefix, its candidates as
        stored, whether anything was cut and its label spans; :class:`GoldTooLong` when its gold reply cannot fit."""
        raise NotImplementedError

    def prompt_inputs(self, persona: list[str], history: list[str], reply_budget: int, max_positions: int) -> dict:
        """The model input before a reply of ``reply_budget`` tokens, fitted to ``max_positions``: ``input_ids`` and
        ``token_type_ids`` (None where the layout has none)."""
        raise NotImplementedError

    def context_needed(self, persona: list[str], history: list[str], reply_budget: int) -> int:
        """The positions a reply of ``reply_budget`` tokens needs after ``persona`` and ``history`` kept whole."""
        raise NotImplementedError

    def empty_prefix(self) -> tuple[int, ...]:
        """The prefix of a conversation with no persona and no history, after which pointwise mutual information
        scores a candidate."""
        raise NotImplementedError

    def replies_as_turn(self, prompt_ids: list[int], replies: list[list[int]]) -> dict:
        """Generated ``replies`` (token ids, their end token excluded) after the prompt of :meth:`prompt_inputs`, as
        one example of the stored features (``prefix_ids``, ``candidates``) for the multiple-choice head to rank."""
        raise NotImplementedError

    def trainable_token_ids(self) -> list[int] | None:
        """The embedding rows LoRA trains in full (tokens new to the model), or None."""
        return None

    def export_ids(self) -> dict[str, int]:
        """The special ids a GGUF file names (``bos``, ``eos``, ``pad``, ``eot``), as persona generates with them."""
        raise NotImplementedError

    def ready_to_publish(self) -> None:
        """Give the tokenizer the chat template that renders this layout, for plain transformers."""

    @staticmethod
    def template_note(token_types: bool) -> list[str]:
        """The model card's lines on what the saved chat template renders, for a model trained with ``token_types``
        or not."""
        raise NotImplementedError


class ReferenceLayout(Layout):
    """transfer-learning-conv-ai's layout (:mod:`persona.data.layout`)."""

    name = REFERENCE_LAYOUT
    reply_overhead = REPLY_OVERHEAD
    wraps_candidates = True
    labels_history = False

    @staticmethod
    def prepare_tokenizer(tokenizer) -> int:
        """Add the five special tokens (see :func:`~persona.data.special_tokens.add_special_tokens`)."""
        return add_special_tokens(tokenizer)

    @staticmethod
    def special_ids(tokenizer) -> SpecialIds:
        """The five special tokens' ids; a clear error for a tokenizer without them."""
        return special_ids(tokenizer)

    def turn_builder(self, batch: dict, *, max_input_length: int, label_history: bool = False):
        """Every distinct string of the batch tokenized once, in one call of the fast tokenizer; the prefix ``<bos>
        persona... <speaker> h...`` and the candidate replies (wrapped by the collator), distractors cut to fit and the
        oldest history then persona sentences dropped (:func:`~persona.data.layout.fit_context`)."""
        strings = sorted(
            {s for persona in batch["persona"] for s in persona}
            | {s for turns in batch["turns"] for turn in turns for s in (*turn["history"], *turn["candidates"])}
        )
        token_ids = dict(zip(strings, self.encode(strings)))

        def build(persona: list[str], turn: dict) -> tuple[list[int], list[list[int]], bool, list]:
            candidates, cut = _fit_replies([token_ids[c] for c in turn["candidates"]], max_input_length)
            longest = max(len(c) for c in candidates) + REPLY_OVERHEAD
            history = [token_ids[h] for h in turn["history"]]
            kept_persona, kept_history, truncated = fit_context(
                [token_ids[p] for p in persona], history, longest, max_input_length
            )
            return build_prefix(kept_persona, kept_history, self.ids), candidates, truncated or cut, []

        return build

    def _encoded(self, persona: list[str], history: list[str]) -> tuple[list[list[int]], list[list[int]]]:
        """The ids of the persona sentences and of the history utterances, encoded in one call."""
        encoded = self.encode([*persona, *history]) if persona or history else []
        return encoded[: len(persona)], encoded[len(persona) :]

    def prompt_inputs(self, persona: list[str], history: list[str], reply_budget: int, max_positions: int) -> dict:
        """``<bos> persona ... <speaker2> last utterance <speaker1>`` with its token types."""
        persona_ids, history_ids = self._encoded(persona, history)
        persona_ids, history_ids, _ = fit_context(
            persona_ids, history_ids, reply_budget + REPLY_OVERHEAD, max_positions
        )
        return build_inputs(persona_ids, history_ids, [], self.ids, lm_labels=False, with_eos=False)

    def context_needed(self, persona: list[str], history: list[str], reply_budget: int) -> int:
        """The prefix, the reply's ``<speaker1>``, its tokens and ``<eos>``."""
        return prefix_length(*self._encoded(persona, history)) + reply_budget + REPLY_OVERHEAD

    def empty_prefix(self) -> tuple[int, ...]:
        """``<bos>``."""
        return tuple(build_prefix([], [], self.ids))

    def replies_as_turn(self, prompt_ids: list[int], replies: list[list[int]]) -> dict:
        """The prompt but its ``<speaker1>`` (the collator wraps each reply in it and ``<eos>``)."""
        return {"prefix_ids": list(prompt_ids[:-1]), "candidates": [list(reply) for reply in replies]}

    def trainable_token_ids(self) -> list[int]:
        """The five special tokens, new rows of the embedding."""
        return sorted(set(dataclasses.astuple(self.ids)))

    def export_ids(self) -> dict[str, int]:
        """``<bos>``, ``<eos>``, ``<pad>``, and the partner's ``<speaker2>`` as the end of a turn (a reply is over
        when the model starts the partner's)."""
        eot = self.tokenizer.convert_tokens_to_ids(PARTNER)
        return {"bos": self.ids.bos, "eos": self.ids.eos, "pad": self.ids.pad, "eot": eot}

    def ready_to_publish(self) -> None:
        """persona's chat template (:mod:`persona.data.reference_template`), its leading-space rule built in."""
        add_chat_template(self.tokenizer, self.leading_space)

    @staticmethod
    def template_note(token_types: bool) -> list[str]:
        """The template renders training's layout, but cannot carry token types."""
        note = [
            "The template renders exactly the input layout of training",
            "(`<bos> persona <speaker2> user <speaker1> bot ... <speaker1>`).",
        ]
        if not token_types:
            return [
                *note,
                "It cannot carry token types (speaker embeddings added at each position); this model was trained",
                "without them (`use_token_types: false`), so plain transformers feeds it exactly as training did.",
            ]
        return [
            *note,
            "It cannot carry the token types (speaker embeddings added at each position) that training used, and",
            "their absence degrades the replies; `persona-eval --use_token_types false` measures by how much. Prefer",
            "persona-chat, or pass `token_type_ids` built by `persona.data.build_inputs`.",
        ]


def _fit_replies(candidates: list[list[int]], max_input_length: int) -> tuple[list[list[int]], bool]:
    """Distractors (never the gold reply) cut to fit with ``<bos>``, a speaker token and ``<eos>``, and whether one
    was cut; :class:`GoldTooLong` when the gold reply cannot fit."""
    budget = max_input_length - 1 - REPLY_OVERHEAD
    gold = gold_index(candidates)
    if len(candidates[gold]) > budget:
        raise GoldTooLong(len(candidates[gold]))
    cut = any(len(c) > budget for c in candidates[:gold])
    return [c[:budget] for c in candidates[:gold]] + [candidates[gold]], cut


class ChatTemplateLayout(Layout):
    """The model's own chat template (:mod:`persona.data.chat_layout`)."""

    name = CHAT_TEMPLATE_LAYOUT
    reply_overhead = 0
    wraps_candidates = False
    labels_history = True

    @staticmethod
    def special_ids(tokenizer) -> SpecialIds:
        """The template's end of turn as ``eos`` and the pad token, no ``<bos>`` or speaker tokens
        (:func:`~persona.data.chat_layout.template_ids`)."""
        return chat_layout.template_ids(tokenizer)

    def token_types(self, requested: bool | None, trained: bool = False) -> bool:
        """Never: a chat template carries none, so asking for them is an error."""
        if requested:
            raise ConfigError(
                "a chat template carries no token types",
                where="use_token_types",
                fix="drop use_token_types (or set it false).",
            )
        return False

    def turn_builder(self, batch: dict, *, max_input_length: int, label_history: bool = False):
        """The prefix and candidate blocks rendered by the template (the batch's prompts rendered and every distinct
        reply encoded in one call each), the oldest history then persona sentences dropped until they fit, distractor
        blocks cut (their end-of-turn token kept); with ``label_history`` the label spans of the prefix as kept."""
        tokenizer = self.tokenizer
        own_ids = chat_layout.own_ids_of(
            tokenizer, {c for turns in batch["turns"] for t in turns for c in t["candidates"]}
        )
        prompts = chat_layout.generation_prompts(
            tokenizer, [(p, t["history"]) for p, turns in zip(batch["persona"], batch["turns"]) for t in turns]
        )

        def build(persona: list[str], turn: dict) -> tuple[list[int], list[list[int]], bool, list]:
            candidates = turn["candidates"]

            def longest(kept_persona, kept_history):
                example = chat_layout.template_turn(
                    tokenizer, kept_persona, kept_history, candidates, own_ids, prompts
                )
                return len(example["prefix_ids"]) + max(map(len, example["candidates"])), example

            persona_kept, history, truncated, example = chat_layout.fit_template(
                longest, persona, turn["history"], max_input_length
            )
            prefix, blocks = example["prefix_ids"], example["candidates"]
            budget = max_input_length - len(prefix)
            if len(blocks[gold_index(blocks)]) > budget:
                raise GoldTooLong(len(blocks[gold_index(blocks)]))
            cut = any(len(block) > budget for block in blocks)
            return (
                prefix,
                [block if len(block) <= budget else [*block[: budget - 1], block[-1]] for block in blocks],
                truncated or cut,
                chat_layout.label_spans(tokenizer, persona_kept, history, prefix) if label_history else [],
            )

        return build

    def _prompt(self, persona: list[str], history: list[str]) -> list[int]:
        try:
            return chat_layout.generation_prompt(self.tokenizer, persona, history)
        except TypeError:  # what the tokenizers library raises for a lone surrogate
            check_unicode([*persona, *history])
            raise

    def prompt_inputs(self, persona: list[str], history: list[str], reply_budget: int, max_positions: int) -> dict:
        """The template's generation prompt (no token types)."""

        def length(kept_persona, kept_history):
            prompt = self._prompt(kept_persona, kept_history)
            return len(prompt) + reply_budget, prompt

        *_, prompt = chat_layout.fit_template(length, persona, history, max_positions)
        return {"input_ids": prompt, "token_type_ids": None}

    def context_needed(self, persona: list[str], history: list[str], reply_budget: int) -> int:
        """The generation prompt and the reply's tokens (its end of turn among them)."""
        return len(self._prompt(persona, history)) + reply_budget

    def empty_prefix(self) -> tuple[int, ...]:
        """The generation prompt of an empty system message, but its last token (a candidate's block starts with
        it)."""
        return tuple(chat_layout.generation_prompt(self.tokenizer, [], [])[:-1])

    def replies_as_turn(self, prompt_ids: list[int], replies: list[list[int]]) -> dict:
        """The prompt but its last token, which starts each block: that token, the reply, the end of turn."""
        blocks = [[prompt_ids[-1], *reply, self.ids.eos] for reply in replies]
        return {"prefix_ids": list(prompt_ids[:-1]), "candidates": blocks}

    def export_ids(self) -> dict[str, int]:
        """The tokenizer's own ``bos`` (where it has one), the end of turn as ``eos``, the pad token."""
        bos = self.tokenizer.bos_token_id
        return {"eos": self.ids.eos, "pad": self.ids.pad, **({"bos": bos} if bos is not None else {})}

    @staticmethod
    def template_note(token_types: bool) -> list[str]:
        """The model's own template, as trained."""
        return [
            "The model was trained in this very chat template (the base model's own), without token types: plain",
            "transformers prompts it exactly as training did.",
        ]


LAYOUTS: dict[str, type[Layout]] = {layout.name: layout for layout in (ReferenceLayout, ChatTemplateLayout)}


def layout_class(name: str) -> type[Layout]:
    """The layout called ``name`` (a recipe's ``input_layout``, a saved model's), with a clear error for another."""
    if name not in LAYOUTS:
        raise ConfigError(
            f"unknown input layout '{name}'", where="input_layout", fix=f"use one of {', '.join(INPUT_LAYOUTS)}."
        )
    return LAYOUTS[name]
