"""Log-probabilities in OpenAI's shape: ``{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}``.

A token's text is what it decodes to alone; its bytes are the token's own bytes, which for a byte-level BPE
tokenizer (GPT-2's, SmolLM2's) may be part of one character, so that a client joins the bytes of consecutive
tokens to rebuild the text exactly.
"""

from __future__ import annotations

from functools import lru_cache

from transformers.convert_slow_tokenizer import bytes_to_unicode

from persona.model.row_decoding import TokenLogprob

UNICODE_TO_BYTE = {char: byte for byte, char in bytes_to_unicode().items()}


class TokenTexts:
    """Each token id's text and bytes, for one tokenizer (remembered: a reply asks for the same tokens again)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        self.byte_level = type(decoder).__name__ == "ByteLevel"
        self.entry = lru_cache(maxsize=65536)(self._entry)

    def _entry(self, token: int) -> tuple[str, list[int]]:
        text = self.tokenizer.decode([token])
        piece = self.tokenizer.convert_ids_to_tokens(token)
        if self.byte_level and all(char in UNICODE_TO_BYTE for char in piece):
            return text, [UNICODE_TO_BYTE[char] for char in piece]
        return text, list(text.encode("utf-8"))

    def decode(self, tokens: list[int]) -> str:
        """The text of generated ``tokens`` (special tokens left out)."""
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def content(self, logprobs: list[TokenLogprob]) -> list[dict]:
        """OpenAI's ``logprobs.content`` of generated tokens: each token, its log-probability, its bytes and the
        most likely alternatives."""

        def described(token: int, logprob: float) -> dict:
            text, raw = self.entry(token)
            return {"token": text, "logprob": logprob, "bytes": raw}

        return [
            {**described(entry.token, entry.logprob), "top_logprobs": [described(*alt) for alt in entry.top]}
            for entry in logprobs
        ]
