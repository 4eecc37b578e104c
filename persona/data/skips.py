"""Records that cannot be used, skipped and counted by reason; in strict mode, the first one is an error.

A corpus of thousands of conversations usually holds a few broken ones (an empty conversation, lines
without speaker tags, a turn without its gold reply, a reply longer than the model's positions). Each is
skipped with a warning that names the file and the record (the first few one by one, then a count),
and counted by reason in the statistics. Problems of the whole file (missing, empty, binary, truncated,
not the layout it claims) stay errors, and so does a split in which nothing usable remains.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

from persona.errors import DataError

logger = logging.getLogger(__name__)

SHOWN_ONE_BY_ONE = 5


class RecordError(DataError):
    """A problem of one record (a conversation, a dialog or a turn): skipped unless strict, counted by ``reason``."""

    def __init__(
        self, what: str, *, where: str | None = None, fix: str | None = None, reason: str = "malformed record"
    ):
        super().__init__(what, where=where, fix=fix)
        self.reason = reason


class SkipLog:
    """The records skipped while preparing a corpus, per split and reason.

    ``strict``: raise the first :class:`RecordError` instead of skipping the record.
    """

    def __init__(self, strict: bool = False):
        self.strict = strict
        self.counts: dict[str, Counter] = defaultdict(Counter)

    def skip(self, error: RecordError, split: str) -> None:
        """Count ``error``'s record as skipped in ``split`` (warning about the first few), or raise it if strict."""
        if self.strict:
            raise error
        self.counts[split][error.reason] += 1
        total = self.total()
        if total <= SHOWN_ONE_BY_ONE:
            logger.warning("Skipped %s: %s", error.where, error.what)
        if total == SHOWN_ONE_BY_ONE:
            logger.warning(
                "Further skipped records are only counted (by reason: 'skipped' in the statistics); strict: true "
                "stops at the first"
            )

    @contextmanager
    def guard(self, split: str) -> Iterator[None]:
        """Run the block; a :class:`RecordError` raised in it skips its record (see :meth:`skip`)."""
        try:
            yield
        except RecordError as error:
            self.skip(error, split)

    def of(self, split: str) -> dict[str, int]:
        """Skipped records of ``split`` by reason."""
        return dict(sorted(self.counts[split].items()))

    def reasons(self) -> dict[str, int]:
        """Skipped records of every split by reason."""
        return dict(sorted(sum(self.counts.values(), Counter()).items()))

    def total(self) -> int:
        """How many records were skipped in all."""
        return sum(self.reasons().values())
