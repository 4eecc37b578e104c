"""User-facing errors and the command-line wrapper that turns them into one clear line.

Every command of the package raises :class:`PersonaError` (or a subclass) for problems the user
can fix: bad input data, a bad recipe, a model that cannot be found offline. ``cli_entry`` prints
the message on one line, exits with status 2 and hides the traceback unless ``--debug`` is given.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable


class PersonaError(Exception):
    """A problem the user can fix; the message says what, where and how."""

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None):
        self.what, self.where, self.fix = what, where, fix
        parts = [f"{where}: {what}" if where else what]
        if fix:
            parts.append(f"Fix: {fix}")
        super().__init__(" ".join(parts))


class DataError(PersonaError):
    """A corpus file (or record in it) that cannot be read as a persona dialog corpus."""


class ConfigError(PersonaError):
    """A recipe or command-line value that is unknown or of the wrong type."""


class ModelLoadError(PersonaError):
    """A model or tokenizer that cannot be loaded (for example from the Hub while offline)."""


def cli_entry(main: Callable[[list[str] | None], int | None]) -> Callable[[list[str] | None], int]:
    """Wrap a command's ``main(argv)`` so user errors exit 2 with one line and no traceback.

    ``--debug`` anywhere on the command line re-raises the error with its traceback.
    """

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        argv = list(sys.argv[1:] if argv is None else argv)
        debug = "--debug" in argv
        if debug:
            argv.remove("--debug")
        try:
            return main(argv) or 0
        except PersonaError as error:
            if debug:
                raise
            print(f"error: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper
