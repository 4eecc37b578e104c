"""The Arrow cache of prepared corpora: keyed by everything that changes the features, written atomically."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from persona.interrupts import raise_if_interrupted

FORMAT_VERSION = 7  # raised whenever the cache's layout or the meaning of its features changes


def tokenizer_fingerprint(tokenizer) -> str:
    """A digest of the tokenizer's vocabulary, merges, normalisation and special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        content = backend.to_str()
    else:
        content = json.dumps(sorted(tokenizer.get_vocab().items()))
    content += json.dumps(
        [
            type(tokenizer).__name__,
            tokenizer.all_special_tokens,
            getattr(tokenizer, "model_max_length", None),
        ]
    )
    return hashlib.sha256(content.encode()).hexdigest()


def cache_key(**parts) -> str:
    """A digest of the keyword parts (JSON-serialisable), with the cache format version."""
    return hashlib.sha256(json.dumps({"format": FORMAT_VERSION, **parts}, sort_keys=True).encode()).hexdigest()


def write_atomically(target: Path, write) -> bool:
    """Call ``write(folder)`` on a temporary folder beside ``target``, then rename it to ``target``.

    A build that is interrupted leaves only a ``.tmp-*`` folder, which no run reads (and the next
    build of the same cache removes). If another process finished the same cache first, this one's
    copy is discarded. Returns whether this call's folder became the cache.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".tmp-{target.name}-*"):
        if not _owner_alive(stale):
            shutil.rmtree(stale, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".tmp-{target.name}-{os.getpid()}-"))
    try:
        write(folder)
        raise_if_interrupted()  # a stop that a library swallowed on the way still drops the build
        os.replace(folder, target)
        return True
    except OSError:
        if target.exists():
            return False
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _owner_alive(folder: Path) -> bool:
    """Whether the process that made a ``.tmp-NAME-PID-*`` folder still runs."""
    try:
        pid = int(folder.name.rsplit("-", 2)[-2])
        os.kill(pid, 0)
    except (ValueError, IndexError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True
