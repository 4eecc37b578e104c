"""Stopping on SIGTERM and SIGINT: the first one raises :class:`~persona.errors.Interrupted` in the command, so that
its ``finally`` blocks run, and is remembered, so that work about to be published (a cache) is dropped even where a
library swallowed the exception. Around a multiprocessing pool (``datasets.map`` with workers), which can deadlock
when interrupted mid-call, the stop is deferred to the pool's end (:func:`deferred_interrupts`); processes forked by
the command end as by default."""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager

from persona.errors import Interrupted

STOPPING = (signal.SIGTERM, signal.SIGINT)
_state = {"pid": os.getpid(), "received": None}


def _record(signum: int, frame) -> bool:
    """Remember the signal in the command's process; in a forked worker, which inherited the handler, end as by
    default. Whether this is the command's process."""
    if os.getpid() != _state["pid"]:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return False
    _state["received"] = signum
    return True


def _raise_interrupted(signum: int, frame) -> None:
    if _record(signum, frame):
        raise Interrupted(signum)


@contextmanager
def stopping_on_signals():
    """Within this block (in the main thread), SIGTERM and SIGINT raise :class:`Interrupted`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state.update(pid=os.getpid(), received=None)
    previous = {signum: signal.signal(signum, _raise_interrupted) for signum in STOPPING}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def raise_if_interrupted() -> None:
    """Raise :class:`Interrupted` again if a signal came, whether or not its first raise reached the command."""
    if _state["received"] is not None:
        raise Interrupted(_state["received"])


@contextmanager
def deferred_interrupts():
    """Within this block a stop signal is only recorded; it is raised when the block ends, in place of any error it
    caused on the way (a worker that a signal to the whole process group ended)."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not _raise_interrupted
    ):
        yield
        return
    previous = {signum: signal.signal(signum, _record) for signum in STOPPING}
    try:
        yield
    except Exception:
        raise_if_interrupted()
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    raise_if_interrupted()
