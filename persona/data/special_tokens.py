"""The TransferTransfo special tokens and how a tokenizer and a model receive them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from persona.errors import ModelLoadError

BOS, EOS, SPEAKER1, SPEAKER2, PAD = "<bos>", "<eos>", "<speaker1>", "<speaker2>", "<pad>"
BOT, PARTNER = SPEAKER1, SPEAKER2  # the reference's roles: the reply is always <speaker1>
PERSONA_TOKENS = (BOS, EOS, SPEAKER1, SPEAKER2, PAD)  # in the order of SpecialIds
SPECIAL_TOKENS = {
    "bos_token": BOS,
    "eos_token": EOS,
    "pad_token": PAD,
    "additional_special_tokens": [SPEAKER1, SPEAKER2],
}


@dataclass(frozen=True)
class SpecialIds:
    """The ids of the five special tokens in one tokenizer's vocabulary (in the chat-template layout: its end of turn
    as ``eos``, its pad token, and None for the three tokens the template does without)."""

    bos: int | None
    eos: int
    speaker1: int | None
    speaker2: int | None
    pad: int

    @property
    def bot(self) -> int:
        """The bot's speaker token (the reply's): ``<speaker1>``, as in transfer-learning-conv-ai."""
        return self.speaker1

    @property
    def partner(self) -> int:
        """The partner's speaker token (the utterance right before the reply): ``<speaker2>``."""
        return self.speaker2


def add_special_tokens(tokenizer) -> int:
    """Give ``tokenizer`` the persona special tokens (bos, eos and pad as its own); return how many were new."""
    return tokenizer.add_special_tokens(SPECIAL_TOKENS)


def has_persona_tokens(tokenizer) -> bool:
    """Whether the tokenizer holds the five persona special tokens (a persona model's, or the reference's)."""
    vocab = tokenizer.get_vocab()
    return all(token in vocab for token in PERSONA_TOKENS)


def special_ids(tokenizer) -> SpecialIds:
    """The ids of the special tokens; a clear error if the tokenizer was never given them."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in PERSONA_TOKENS if t not in vocab]
    if missing:
        raise ModelLoadError(
            f"the tokenizer has no persona special tokens {missing}",
            where=getattr(tokenizer, "name_or_path", None) or "tokenizer",
            fix="use a model trained with persona-train (its folder holds the tokenizer with "
            "<bos> <eos> <speaker1> <speaker2> <pad>), or train one from this base model first.",
        )
    return SpecialIds(*(vocab[t] for t in PERSONA_TOKENS))


def resize_embeddings(model, tokenizer) -> None:
    """Resize the model's token embeddings to the tokenizer, new rows set to the mean of the old ones."""
    embeddings = model.get_input_embeddings()
    old_rows = embeddings.weight.shape[0]
    if len(tokenizer) == old_rows:
        return
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    weight = model.get_input_embeddings().weight
    if len(tokenizer) > old_rows:
        with torch.no_grad():
            weight[old_rows:] = weight[:old_rows].mean(dim=0, keepdim=True)
    model.config.vocab_size = len(tokenizer)
