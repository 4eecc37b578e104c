"""Whether a conversation fits the model's positions: checked where a request comes in (the API, the page), on the
event loop's own copy of the tokenizer (:attr:`~persona.serving.batching.ReplyBatcher.front`), before anything
reaches the decoding worker."""

from __future__ import annotations

from persona.model.loading import LoadedModel


class ControlTextRefused(Exception):
    """A message holding the text of one of the engine's control tokens, which an engine that renders the chat
    itself (``--engine_url``) would read as that token."""

    def __init__(self, role: str, control: str):
        self.role, self.control = role, control
        super().__init__(
            f"a {role} message holds '{control}', the text of one of the model's control tokens, which the engine "
            "would read as that token"
        )


class ContextTooLong(Exception):
    """The persona and the last message, with the reply's token budget, need more positions than the model has."""

    def __init__(self, prompt_tokens: int, reply_budget: int, positions: int):
        self.prompt_tokens, self.reply_budget, self.positions = prompt_tokens, reply_budget, positions
        super().__init__(
            f"this conversation needs {prompt_tokens} prompt tokens (the persona and the last message) plus "
            f"max_tokens {reply_budget}, over the model's {positions} positions"
        )


def check_context(front: LoadedModel, persona: list[str], history: list[str], reply_budget: int) -> None:
    """A :class:`ContextTooLong` when ``persona`` and the last utterance of ``history`` with a reply of
    ``reply_budget`` tokens cannot fit (the older history is dropped to fit; these two never are)."""
    needed = front.layout.context_needed(persona, history[-1:], reply_budget)
    if needed > front.max_positions:
        raise ContextTooLong(needed - reply_budget, reply_budget, front.max_positions)
