"""A corpus written as OpenAI messages JSONL (``persona-data --export_messages``), for TRL, axolotl or a hosted
fine-tuning service, and readable back by persona as the very dialogs it came from.

Each dialog as read (one per bot side and conversation, before any history window or distractor sampling) becomes one
record (:func:`~persona.data.chat_records.dialog_messages`), streamed one at a time; each split goes to its own file,
``SPLIT.jsonl`` in the output folder (``all.jsonl`` for a file with no splits inside), written beside and renamed into
place once complete, so that an interrupted export leaves no half-written file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from persona.configs import DataArguments
from persona.data.chat_records import dialog_messages
from persona.data.skips import SkipLog
from persona.data.sources import corpus_stream, resolve


def export_messages(args: DataArguments, folder: Path) -> dict:
    """Write the dialogs of ``args``'s corpus (its ``dataset_path``, every split) into ``folder``; the records
    ``written`` per split and those ``skipped`` by reason (unusable records are skipped and counted as when
    preparing, or stop the export when ``strict``)."""
    folder.mkdir(parents=True, exist_ok=True)
    skips = SkipLog(strict=args.strict)
    files: dict[str, tuple] = {}
    counts: dict[str, int] = {}
    try:
        for split, dialog in corpus_stream(
            resolve(args.dataset_path, args.dataset_cache), args.dataset_format, args.bot_side, skips
        ):
            if dialog is None:
                continue
            if split not in files:
                handle, partial = tempfile.mkstemp(dir=folder, prefix=f".{split}-", suffix=".partial")
                files[split] = (os.fdopen(handle, "w", encoding="utf-8"), Path(partial))
                counts[split] = 0
            files[split][0].write(json.dumps(dialog_messages(dialog), ensure_ascii=False) + "\n")
            counts[split] += 1
    except BaseException:
        for out, partial in files.values():
            out.close()
            partial.unlink(missing_ok=True)
        raise
    for split, (out, partial) in files.items():
        out.close()
        os.replace(partial, folder / f"{split}.jsonl")
    return {"folder": str(folder), "written": counts, "skipped": skips.reasons()}
