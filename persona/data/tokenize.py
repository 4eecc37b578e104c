"""Text to token ids, the one way every command does it."""

from __future__ import annotations

import threading
import weakref
from functools import lru_cache

from tokenizers import Tokenizer


@lru_cache(maxsize=8)
def byte_level_wants_space(tokenizer) -> bool:
    """Whether each text should get a leading space before a model persona has not trained yet reads it: yes where
    the tokenizer reads ``" word"`` and ``"word"`` differently and decodes the spaced form back (byte-level BPE). A
    trained model keeps the rule it was trained with (its :class:`~persona.model.facts.PersonaFacts`)."""
    # Byte-level BPE (GPT-2, SmolLM2...) reads " word" and "word" as different tokens and was pretrained
    # on words preceded by a space; utterances are tokenized alone and concatenated, so give each one
    # its space. Tokenizers that strip or add spaces themselves (openai-gpt, SentencePiece) are left as is.
    plain = tokenizer("hello", add_special_tokens=False)["input_ids"]
    spaced = tokenizer(" hello", add_special_tokens=False)["input_ids"]
    return plain != spaced and tokenizer.decode(spaced) == " hello"


class InvalidText(ValueError):
    """A text that is not valid Unicode (a lone surrogate, as undecodable bytes read leniently give): no tokenizer
    reads it."""


def check_unicode(texts: list[str]) -> None:
    """An :class:`InvalidText` naming the first text that is not valid Unicode, if any."""
    for index, text in enumerate(texts):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise InvalidText(
                f"text {index} is not valid Unicode ({error.reason} at character {error.start})"
            ) from None


def encode_texts(tokenizer, texts: list[str], *, leading_space: bool) -> list[list[int]]:
    """Token ids of each text (after a space, with ``leading_space``), in one batched call, special tokens in the
    text split into plain tokens.

    Splitting means a user who types ``<speaker2>`` cannot forge a speaker token. A text that is not valid Unicode
    raises :class:`InvalidText`, which names it.
    """
    texts = [" " + text for text in texts] if leading_space else list(texts)
    try:
        return _encode(tokenizer, texts)
    except TypeError:  # what the tokenizers library raises for a lone surrogate
        check_unicode(texts)
        raise


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a slow tokenizer
        return tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    # The fast tokenizer's own engine, as transformers drives it for split_special_tokens, without the
    # per-text dictionaries of offsets and masks that nobody here reads.
    engine = _splitting_engine(tokenizer, backend)
    return [encoding.ids for encoding in engine.encode_batch_fast(texts, add_special_tokens=False)]


_SPLITTING_ENGINES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_ENGINES_LOCK = threading.Lock()


def _splitting_engine(tokenizer, backend) -> Tokenizer:
    """A copy of the fast tokenizer's engine that splits the special tokens typed in a text, made once per tokenizer
    (again when tokens are added to it), without the truncation or padding a tokenizer may be saved with (texts are
    cut where persona decides), and never changed after. Threads may encode with it at once, whatever else uses the
    tokenizer: transformers sets the flags of the tokenizer's own engine at each call, and one thread changing them
    while another encodes would encode a typed ``<speaker2>`` as the real token."""
    size = backend.get_vocab_size(with_added_tokens=True)
    with _ENGINES_LOCK:
        cached = _SPLITTING_ENGINES.get(tokenizer)
        if cached is None or cached[0] != size:
            engine = Tokenizer.from_str(backend.to_str())
            engine.no_truncation()
            engine.no_padding()
            engine.encode_special_tokens = True
            cached = _SPLITTING_ENGINES[tokenizer] = (size, engine)
    return cached[1]
