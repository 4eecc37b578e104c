"""Text to token ids, the one way every command does it."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=8)
def _wants_leading_space(tokenizer) -> bool:
    # Byte-level BPE (GPT-2, SmolLM2...) reads " word" and "word" as different tokens and was pretrained
    # on words preceded by a space; utterances are tokenized alone and concatenated, so give each one
    # its space. Tokenizers that strip or add spaces themselves (openai-gpt, SentencePiece) are left as is.
    plain = tokenizer("hello", add_special_tokens=False)["input_ids"]
    spaced = tokenizer(" hello", add_special_tokens=False)["input_ids"]
    return plain != spaced and tokenizer.decode(spaced) == " hello"


def encode_texts(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, in one batched call, special tokens in the text split into plain tokens.

    Splitting means a user who types ``<speaker2>`` cannot forge a speaker token.
    """
    if _wants_leading_space(tokenizer):
        texts = [" " + text for text in texts]
    return tokenizer(list(texts), add_special_tokens=False, split_special_tokens=True)["input_ids"]
