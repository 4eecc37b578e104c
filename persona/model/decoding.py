"""The decoding loop of persona-chat and persona-eval: prompts decoded together as the rows of a running batch;
replies to dialogs (:func:`generate_replies`, reranked by the multiple-choice head with ``rerank_samples``) and the
chat bot (:class:`Bot`).

The same parts as persona-serve's batcher (:mod:`~persona.serving.batching`), driven to the end here: the prompts
join one :class:`~persona.model.persona_guidance.GuidedBatch` (a running batch, and with ``persona_weight`` each
row's pair without the persona), each row's token is chosen by its
:class:`~persona.model.row_decoding.RowDecoder` (the processors ``generate`` applies, the persona's guidance from a
paired batch of the prompts without the persona), and every row is fed its token until every row has ended or the
longest reply is reached. A row that has ended goes on being fed (its end token) and drawn for, as ``generate``
does, so that a batch drawn after ``torch.manual_seed`` gives ``generate``'s replies.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from persona.data.layout import history_window
from persona.model.generation import DecodingArguments, prompt_inputs
from persona.model.loading import LoadedModel
from persona.model.persona_guidance import GuidedBatch
from persona.model.prefix_cache import PrefixCache
from persona.model.row_decoding import RowDecoder, choose_tokens
from persona.model.scoring import best_reply, check_rerankable

BOT_PREFIX_CACHE_BYTES = 256 * 2**20  # a chat's earlier prompts, so that each turn reads only what it adds


@torch.inference_mode()
def decode(
    loaded: LoadedModel,
    prompts: list[dict],
    decoding: DecodingArguments,
    *,
    unconditional: list[dict] | None = None,
    prefixes: PrefixCache | None = None,
) -> list[tuple[list[int], bool]]:
    """The reply token ids (up to its end token, excluded) of each prompt of
    :func:`~persona.model.generation.prompt_inputs` and whether that end token came, decoded together as
    ``decoding`` says (the global random generator draws); with ``decoding.persona_weight``, guided by
    ``unconditional``, each prompt's without the persona; ``prefixes`` keeps and reuses prompts read (see
    :class:`~persona.model.prefix_cache.PrefixCache`). An error choosing a token is raised."""
    if decoding.persona_weight and (unconditional is None or len(unconditional) != len(prompts)):
        raise ValueError("persona_weight needs each prompt's unconditional prompt (without the persona)")
    eos = loaded.ids.eos
    decoders = [RowDecoder(decoding, loaded, prompt["input_ids"]) for prompt in prompts]
    batch = GuidedBatch(loaded, prefixes)
    logits, alone = batch.join(prompts, unconditional if decoding.persona_weight else [None] * len(prompts))
    replies: list[list[int]] = [[] for _ in prompts]
    ended = [False] * len(prompts)
    for step in range(decoding.max_length):
        tokens = []
        for row, choice in enumerate(choose_tokens(decoders, logits, alone)):
            if choice.error is not None and not ended[row]:
                raise choice.error
            token = eos if ended[row] else choice.token
            ended[row] = ended[row] or token == eos
            if not ended[row]:
                replies[row].append(token)
            tokens.append(token)
        if all(ended) or step == decoding.max_length - 1:
            break
        logits, alone = batch.step(tokens)
    return list(zip(replies, ended))


@dataclass
class Reply:
    """A generated reply: its text, whether it ended by itself (its end token before the length limit), and its
    token count (its end token excluded)."""

    text: str
    ended: bool
    tokens: int


@dataclass
class DecodingSpeed:
    """Replies' tokens and the seconds spent generating them (prompts read, tokens chosen, samples ranked): the
    tokens/s that persona-chat, persona-eval and persona-serve's benchmark (``benchmarks/serve_load.py``) report,
    each counting the tokens of the replies given (a reranked reply's own, not its other samples')."""

    tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        """Reply tokens per second (0 before any)."""
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        return f"{self.tokens} reply tokens in {self.seconds:.1f} s, {self.tokens_per_s:.1f} tokens/s"


def generate_replies(
    loaded: LoadedModel,
    dialogs: list[tuple[list[str], list[str]]],
    decoding: DecodingArguments,
    *,
    batch_size: int = 32,
    progress: bool = False,
    prefixes: PrefixCache | None = None,
    speed: DecodingSpeed | None = None,
) -> list[Reply]:
    """One reply per ``(persona sentences, history utterances)``, generated in left-padded batches (with
    ``rerank_samples`` n, n sampled replies per prompt in the same batch, the one the multiple-choice head ranks first
    kept; with ``persona_weight``, guided by the persona); ``progress`` shows a bar; ``prefixes``: see
    :func:`decode`; ``speed``, when given, gains the replies' tokens and the time they took."""
    started = time.perf_counter()
    replies: list[Reply] = []
    samples = decoding.samples
    if samples > 1:
        check_rerankable(loaded)
    for start in tqdm(
        range(0, len(dialogs), batch_size), desc="Generating replies", unit="batch", disable=not progress
    ):
        batch = dialogs[start : start + batch_size]
        prompts = [prompt_inputs(p, h, loaded, decoding.max_length) for p, h in batch]
        unconditional = None
        if decoding.persona_weight:
            alone = [prompt_inputs([], h, loaded, decoding.max_length) for _, h in batch]
            unconditional = [prompt for prompt in alone for _ in range(samples)]
        repeated = [prompt for prompt in prompts for _ in range(samples)]
        generated = decode(loaded, repeated, decoding, unconditional=unconditional, prefixes=prefixes)
        if samples > 1:
            groups = [generated[index : index + samples] for index in range(0, len(generated), samples)]
            generated = [
                group[best_reply(loaded, prompt["input_ids"], [tokens for tokens, _ in group])]
                for prompt, group in zip(prompts, groups)
            ]
        texts = loaded.tokenizer.batch_decode([tokens for tokens, _ in generated], skip_special_tokens=True)
        replies += [Reply(text.strip(), ended, len(tokens)) for text, (tokens, ended) in zip(texts, generated)]
    if speed is not None:
        speed.tokens += sum(reply.tokens for reply in replies)
        speed.seconds += time.perf_counter() - started
    return replies


class Bot:
    """A loaded model and decoding settings: replies to a persona and a history, as persona-chat does (each turn
    reads only what it adds to the prompts of the turns before, :data:`BOT_PREFIX_CACHE_BYTES` of them kept);
    ``speed`` adds up its replies' tokens and time."""

    def __init__(self, loaded: LoadedModel, decoding: DecodingArguments, max_history: int):
        self.loaded, self.decoding, self.max_history = loaded, decoding, max_history
        self.prefixes = PrefixCache(BOT_PREFIX_CACHE_BYTES)
        self.speed = DecodingSpeed()

    def reply(self, persona: list[str], history: list[str]) -> str:
        """The bot's next utterance to the last ``max_history`` exchanges of ``history``."""
        window = history_window(history, self.max_history)
        (reply,) = generate_replies(
            self.loaded, [(persona, window)], self.decoding, prefixes=self.prefixes, speed=self.speed
        )
        return reply.text
