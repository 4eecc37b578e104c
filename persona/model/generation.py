"""How replies are decoded (:class:`DecodingArguments`, the reference's interact.py settings and their bounds) and
the prompt a reply follows (:func:`prompt_inputs`): what chat, evaluation and serving share. The decoding loop is
:mod:`persona.model.decoding` (chat and evaluation) and :mod:`persona.serving.batching` (serving), over the same
:class:`~persona.model.running_batch.RunningBatch` and :class:`~persona.model.row_decoding.RowDecoder`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from persona.errors import ConfigError
from persona.model.loading import LoadedModel

NEUTRAL_SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": 50}
GREEDY_BELOW = 1e-5  # a sampling temperature below this decodes greedily, as vLLM does (dividing by it overflows)
REPETITION_PENALTY_RANGE = (0.01, 10.0)  # the scores divided or multiplied by it stay finite
PERSONA_WEIGHT_RANGE = (0.0, 10.0)  # guided scores stay finite; past a few, replies are the persona's words alone


@dataclass
class DecodingArguments:
    """How replies are decoded (defaults: the reference's interact.py).

    The degenerate values are decided here, for every command: a temperature below :data:`GREEDY_BELOW` (0
    included) decodes greedily (one sample, whatever ``rerank_samples`` says); a negative or non-finite
    temperature, a ``top_p`` outside [0, 1], a ``repetition_penalty`` outside :data:`REPETITION_PENALTY_RANGE` and
    ``rerank_samples`` below 1 (or above 1 without sampling) and a ``persona_weight`` outside
    :data:`PERSONA_WEIGHT_RANGE` are a :class:`~persona.errors.ConfigError`.
    """

    do_sample: bool = field(default=True, metadata={"help": "Sample (nucleus/top-k); false: greedy."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature."})
    top_p: float = field(
        default=0.9, metadata={"help": "Nucleus sampling: keep the smallest token set of this probability."}
    )
    top_k: int = field(default=0, metadata={"help": "Keep the k most likely tokens (0: no limit)."})
    max_length: int = field(default=20, metadata={"help": "Most tokens in a reply."})
    min_length: int = field(default=1, metadata={"help": "Fewest tokens in a reply before <eos> may end it."})
    repetition_penalty: float = field(
        default=1.0,
        metadata={
            "help": "Divide the positive scores of tokens already in the prompt or the reply by this (1: off; 1.2 "
            "is common)."
        },
    )
    presence_penalty: float = field(
        default=0.0,
        metadata={"help": "OpenAI's: subtract this from the score of every token the reply already holds."},
    )
    frequency_penalty: float = field(
        default=0.0, metadata={"help": "OpenAI's: subtract this times its count in the reply from each token's score."}
    )
    rerank_samples: int = field(
        default=1,
        metadata={
            "help": "Sample this many replies and answer with the one the trained multiple-choice head ranks first "
            "(1: off; needs do_sample and a model trained by persona-train)."
        },
    )
    persona_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weigh the persona while decoding (0: off; 0 to 10): each next token's log-probability after the "
            "persona and the conversation plus this weight times its difference from the one after the conversation "
            "alone, classifier-free guidance by the persona (transformers' guidance_scale 1 + weight). Costs a "
            "second forward pass per token."
        },
    )

    def __post_init__(self):
        low, high = REPETITION_PENALTY_RANGE
        checks = (
            ("temperature", math.isfinite(self.temperature) and self.temperature >= 0, "a number >= 0"),
            ("top_p", 0 <= self.top_p <= 1, "a number from 0 to 1"),
            ("repetition_penalty", low <= self.repetition_penalty <= high, f"a number from {low} to {high}"),
            ("persona_weight", PERSONA_WEIGHT_RANGE[0] <= self.persona_weight <= PERSONA_WEIGHT_RANGE[1], "0 to 10"),
        )
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError(f"{name} is {getattr(self, name)}", fix=f"give {name} {expected}.")
        if self.rerank_samples < 1 or (self.rerank_samples > 1 and not self.do_sample):
            raise ConfigError(
                f"rerank_samples is {self.rerank_samples} with do_sample {self.do_sample}",
                where="rerank_samples",
                fix="give rerank_samples 1 (off) or more with do_sample true: greedy decoding has one reply to rank.",
            )
        if self.do_sample and self.temperature < GREEDY_BELOW:
            self.do_sample = False

    @property
    def samples(self) -> int:
        """How many replies are sampled for one answer: ``rerank_samples`` when sampling, else 1."""
        return self.rerank_samples if self.do_sample else 1

    def settings(self) -> dict:
        """These settings as ``GenerationConfig`` fields, whatever the tokenizer."""
        # Greedy decoding gets transformers' neutral values: left unset, a model's saved sampling settings would fill
        # them in, and generate would warn about flags that only sampling uses.
        sampling = (
            {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}
            if self.do_sample
            else NEUTRAL_SAMPLING
        )
        return {
            "do_sample": self.do_sample,
            "max_new_tokens": self.max_length,
            "min_new_tokens": self.min_length,
            **({"repetition_penalty": self.repetition_penalty} if self.repetition_penalty != 1.0 else {}),
            **sampling,
        }

    def logits_processors(self, prompt_length: int) -> LogitsProcessorList:
        """The processors ``GenerationConfig`` has no field for: OpenAI's presence and frequency penalties over the
        reply's own tokens (those after ``prompt_length``)."""
        if not (self.presence_penalty or self.frequency_penalty):
            return LogitsProcessorList()
        return LogitsProcessorList([ReplyPenalties(prompt_length, self.presence_penalty, self.frequency_penalty)])

    def generation_config(self, loaded: LoadedModel) -> GenerationConfig:
        """The ``GenerationConfig`` of a persona model: these settings, its end token (``<eos>``, or the chat
        template's end of turn) to stop, every other special token suppressed."""
        ids = loaded.ids
        suppressed = sorted(set(loaded.tokenizer.all_special_ids) - {ids.eos})
        bos = {"bos_token_id": ids.bos} if ids.bos is not None else {}  # the chat template adds no <bos> of its own
        return GenerationConfig(
            **self.settings(), eos_token_id=ids.eos, pad_token_id=ids.pad, suppress_tokens=suppressed, **bos
        )


class ReplyPenalties(LogitsProcessor):
    """OpenAI's presence and frequency penalties: each token's score minus ``presence`` if the reply already holds it,
    minus ``frequency`` times how often it does (the prompt, left-padded to ``prompt_length``, does not count)."""

    def __init__(self, prompt_length: int, presence: float, frequency: float):
        self.prompt_length, self.presence, self.frequency = prompt_length, presence, frequency

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        reply = input_ids[:, self.prompt_length :]
        counts = torch.zeros_like(scores).scatter_add_(1, reply, torch.ones_like(reply, dtype=scores.dtype))
        return scores - self.presence * (counts > 0).to(scores.dtype) - self.frequency * counts


def prompt_inputs(persona: list[str], history: list[str], loaded: LoadedModel, reply_budget: int) -> dict:
    """The model input before a reply of ``reply_budget`` tokens, fitted to the model's positions, in its layout
    (:meth:`~persona.data.input_layouts.Layout.prompt_inputs`): in the reference layout ``<bos> persona ...
    <speaker2> last utterance <speaker1>`` with its token types, in the chat-template layout the template's
    generation prompt (no token types)."""
    return loaded.layout.prompt_inputs(persona, history, reply_budget, loaded.max_positions)
