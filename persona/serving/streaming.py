"""A reply as text deltas while it is generated: one :class:`ReplyStream` per row of the running batch.

The batcher hands each step's new token of a row to its stream; the row's text is decoded from all its tokens so
far (byte-level BPE joins bytes across tokens), cut at ``<eos>`` or at the first stop string, and only what can no
longer change is sent: not a half-decoded character, not trailing white space, not the start of what may become a
stop string. The deltas of a row add up to its final reply, which is what
:func:`persona.model.decoding.generate_replies` returns for the same tokens (stripped).
"""

from __future__ import annotations

from collections.abc import Callable

from persona.serving.engine import held_back

Send = Callable[[str], None]


class ReplyStream:
    """One row of a batch: the reply's tokens so far, the text sent so far, and whether it has ended.

    ``send(delta)`` receives each new piece of text, and ``ended(stream)`` the stream itself as soon as its row ends
    (the rows beside it may go on); ``finish_reason`` is ``stop`` (``<eos>`` or a stop string) or ``length`` (the
    token budget ran out), ``abandoned`` for a row whose client went away, None while the reply goes on.
    """

    def __init__(
        self,
        decode: Callable[[list[int]], str],
        stops: list[str],
        send: Send,
        ended: Callable[[ReplyStream], None] = lambda stream: None,
    ):
        self.decode, self.stops, self.send, self.ended = decode, [s for s in stops if s], send, ended
        self.tokens: list[int] = []
        self.text = ""
        self.finish_reason: str | None = None

    def add(self, token: int, eos: int) -> None:
        """Take one generated token (ignored once the reply has ended)."""
        if self.finish_reason:
            return
        if token == eos:
            self.close("stop")
            return
        self.tokens.append(token)
        text = self.decode(self.tokens).lstrip()
        cuts = [text.index(stop) for stop in self.stops if stop in text]
        if cuts:
            self.text_up_to(text[: min(cuts)].rstrip())
            self._end("stop")
            return
        self.text_up_to(text[: len(text) - held_back(text, self.stops)])

    def text_up_to(self, text: str) -> None:
        """Send what ``text`` adds to the text sent so far."""
        if len(text) > len(self.text) and text.startswith(self.text):
            self.send(text[len(self.text) :])
            self.text = text

    def close(self, reason: str) -> None:
        """End the reply: send what was held back (but trailing white space and half characters), set the reason."""
        if self.finish_reason:
            return
        text = self.decode(self.tokens).strip().rstrip("\ufffd").rstrip()
        self.text_up_to(text)
        self._end(reason)

    def _end(self, reason: str) -> None:
        self.finish_reason = reason
        self.ended(self)

    def abandon(self) -> None:
        """End the row without a word: nobody is listening any more."""
        self.finish_reason = self.finish_reason or "abandoned"
