"""User-facing errors: what went wrong, where, and how to fix it.

Every command of the package raises :class:`PersonaError` (or a subclass) for problems the user
can fix: bad input data, a bad recipe, a model that cannot be found offline.
:func:`persona.commands.cli.cli_entry` prints the message on one line and exits with status 2.
"""

from __future__ import annotations


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


def first_line(error: BaseException) -> str:
    """``TypeName: first line of the message``, at most 200 characters: how a library's error is quoted in ours."""
    message = str(error).splitlines()[0][:200] if str(error) else ""
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


class Interrupted(BaseException):
    """The command was asked to stop (SIGTERM, SIGINT): it stops cleanly, through its ``finally`` blocks; ``signum``
    says by which signal. Like ``KeyboardInterrupt`` it is no ``Exception``, so that no ``except Exception`` in a
    library swallows it."""

    def __init__(self, signum: int, message: str = ""):
        super().__init__(message or f"interrupted by {signal_name(signum)}")
        self.signum = signum


def signal_name(signum: int) -> str:
    """``SIGTERM``, ``SIGINT``...: a signal's name."""
    import signal

    return signal.Signals(signum).name
