"""Readers that turn PersonaChat in its common formats into one canonical dialog schema.

The canonical dialog (one per bot persona and conversation) is a :class:`Dialog`::

    {"persona": ["i like cats.", "i am a nurse."],          # the bot's persona sentences
     "turns": [{"history": ["hi!", "hello, how are you?", "good, you?"],  # utterances before the reply
                "candidates": ["a distractor", "...", "the gold reply"]}],  # gold reply LAST
     "record": "train.csv, row 12 (user 2 as the bot)"}     # where it comes from, for messages

When the bot opens a conversation its first turn's history is the single utterance ``__ SILENCE __``, as
PersonaChat has it, so every history holds an odd number of utterances (the partner spoke last).

Accepted formats (``dataset_format``, default ``auto``: detected from the content):

- ``personachat_json``: the JSON of transfer-learning-conv-ai,
  ``{"train": [{"personality": [...], "utterances": [{"history": [...], "candidates": [...]}]}], "valid": [...]}``.
- ``parlai``: ParlAI/ConvAI2 text (``train_self_original.txt``, ``valid_self_revised.txt``,
  ``*_no_cands.txt``): numbered lines, ``your persona:`` lines, ``text<TAB>label<TAB><TAB>c1|c2|...``;
  a dialog starts where the numbering restarts at 1. A folder of such files is read split by split.
- ``conversations``: whole conversations with both personas, as CSV (the Synthetic-Persona-Chat columns
  ``user 1 personas``, ``user 2 personas``, ``Best Generated Conversation`` with ``User 1: ...`` lines)
  or as JSON / JSONL records ``{"personas": [[user 1 sentences], [user 2 sentences]], "utterances":
  [first utterance (user 1), second (user 2), ...]}``. Each side can serve as the bot (``bot_side``).
- ``messages`` and ``sharegpt``: chat records, OpenAI's ``{"messages": [{"role", "content"}, ...]}`` and
  ``{"conversations": [{"from", "value"}, ...]}``, as JSON lists or JSONL, the assistant as the bot and the system
  message as its persona (:mod:`persona.data.chat_records` has the rules).
- ``hub``: a Hugging Face Hub dataset id (or a folder saved by ``datasets``), read with
  ``datasets.load_dataset``; rows in any of the shapes above, or one row per turn with
  ``personality``, ``history``, ``candidates`` and ``conv_id`` (``bavard/personachat_truecased``).

Splits come from the corpus (``train``, ``valid``, ``test``; ``validation`` and ``dev`` are read as
``valid``). A folder's files take the split their names mention, else ``train``. A single file with no
splits inside (ParlAI text, conversations, chat records) is one split, :data:`WHOLE_FILE`, which serves as the training
split when training and as the evaluated split when evaluating, whatever the file's name.

Problems of one record (an empty conversation, lines without speaker tags, a dialog without turns, a turn
without its gold reply...) raise :class:`~persona.data.skips.RecordError`, which the reading loops hand to
a :class:`~persona.data.skips.SkipLog`: skipped and counted, or an error in strict mode.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import re
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path
from typing import Any

from persona.configs import FORMATS
from persona.data.chat_records import CHAT_FORMATS, chat_dialogs, chat_format_of
from persona.data.corpus_file import CorpusFile
from persona.data.dialog import SILENCE, Dialog, Turn
from persona.data.skips import RecordError, SkipLog
from persona.errors import DataError

CORPUS_SUFFIXES = (".txt", ".json", ".jsonl", ".csv")
SPLIT_ALIASES = {
    "train": "train",
    "valid": "valid",
    "validation": "valid",
    "val": "valid",
    "dev": "valid",
    "test": "test",
}
_SPC_COLUMNS = ("user 1 personas", "user 2 personas", "Best Generated Conversation")
_SPEAKER_LINE = re.compile(r"^[\s*_]*(?:user|person|speaker)\s*([12])\s*[*_]*:[*_\s]*(.*?)[*_\s]*$", re.IGNORECASE)
_PARLAI_LINE = re.compile(r"^(\d+) (.*)$")
WHOLE_FILE = "all"  # the one split of a single file with no splits inside


Corpus = dict[str, list[Dialog]]
Stream = Iterator[tuple[str, Dialog | None]]  # (split, dialog) pairs in the order of the source; see Splits
Splits = Collection[str] | None  # the splits a stream reads (None: all); one it leaves unread is told as (split, None)


def split_of_filename(path: str | os.PathLike) -> str:
    """The split a file's name mentions (``train_self_original.txt`` -> ``train``), else ``train``."""
    for word in re.split(r"[^a-z]+", Path(path).name.lower()):
        if word in SPLIT_ALIASES:
            return SPLIT_ALIASES[word]
    return "train"


def detect_format(file: CorpusFile) -> str:
    """The format of one file, decided from its head (the name only breaks no ties)."""
    head = file.head()
    if head.startswith("{"):
        if re.match(r'\{\s*"(train|valid|validation|test|dev|val)"\s*:', head):
            return "personachat_json"
        keys = _first_record_keys(file, "")
        if any(key in SPLIT_ALIASES for key in keys):
            return "personachat_json"
        return chat_format_of(keys) or "conversations"
    if head.startswith("["):
        return chat_format_of(_first_record_keys(file, "item")) or "conversations"
    first_line = head.splitlines()[0] if head else ""
    if _PARLAI_LINE.match(first_line):
        return "parlai"
    if all(column in first_line for column in _SPC_COLUMNS):
        return "conversations"
    raise DataError(
        "cannot tell the corpus format from its content (not PersonaChat JSON, ParlAI text, a conversation "
        "CSV with the Synthetic-Persona-Chat columns, nor JSON/JSONL conversations)",
        where=str(file.path),
        fix="check the file, or set dataset_format to one of " + ", ".join(FORMATS[1:]) + ".",
    )


def _first_record_keys(file: CorpusFile, prefix: str) -> list[str]:
    """The keys of the file's first object at ``prefix`` (``""``: the top-level object, the first record of JSONL;
    ``"item"``: the first element of a top-level list), read as a stream; none when it cannot be parsed (the reader
    then says which record is broken)."""
    keys: list[str] = []
    try:
        for path, event, value in file.json_events(multiple_values=True):
            if path == prefix and event == "map_key":
                keys.append(value)
            elif path == prefix and event == "end_map":
                break
    except DataError:
        pass
    return keys


def _string_list(
    value: Any, where: str, field: str, *, allow_empty: bool = False, reason: str = "malformed record"
) -> list[str]:
    if isinstance(value, str):
        value = [line for line in value.splitlines() if line.strip()]
    try:
        if not isinstance(value, list):
            raise TypeError
        value = [item for item in map(str.strip, value) if item]  # str.strip refuses anything but text
    except TypeError:
        raise RecordError(
            f"field '{field}' must be a list of strings", where=where, fix=f"give '{field}' as a list of sentences."
        ) from None
    if not value and not allow_empty:
        raise RecordError(
            f"field '{field}' is empty",
            where=where,
            fix=f"give at least one sentence in '{field}', or drop the record.",
            reason=reason,
        )
    return value


def _require(record: Any, fields: Iterable[str], where: str) -> None:
    if not isinstance(record, dict):
        raise RecordError(
            f"expected an object, found {type(record).__name__}", where=where, fix="each record must be a JSON object."
        )
    missing = [field for field in fields if field not in record]
    if missing:
        raise RecordError(
            f"missing field(s) {missing}",
            where=where,
            fix="add them, or set dataset_format to the format of the file.",
        )


def _no_turns(where: str) -> RecordError:
    return RecordError(
        "the dialog has no usable turns",
        where=where,
        fix="drop the dialog or add its turns.",
        reason="dialog without turns",
    )


def _reference_turn(turn: Any, where: str, index: int) -> dict:
    """One turn (``history`` + ``candidates``) of a reference dialog, validated; ``where`` names its dialog."""
    turn_where = f"{where}, utterance {index}"
    try:
        history, candidates = turn["history"], turn["candidates"]
    except (KeyError, TypeError):
        _require(turn, ("history", "candidates"), turn_where)
        raise
    return {
        "history": _string_list(history, turn_where, "history", allow_empty=True),
        "candidates": _string_list(candidates, turn_where, "candidates", reason="turn without candidates"),
    }


def reference_dialog(record: Any, where: str, skips: SkipLog, split: str) -> Dialog:
    """One dialog of the transfer-learning-conv-ai JSON (``personality`` + ``utterances``), validated.

    A turn without candidates (no gold reply) is skipped through ``skips``; a dialog left with no turns
    raises :class:`RecordError`.
    """
    _require(record, ("personality", "utterances"), where)
    persona = _string_list(record["personality"], where, "personality", reason="empty persona")
    if not isinstance(record["utterances"], list):
        raise RecordError("'utterances' must be a list of turns", where=where, fix="fix the record.")
    turns = []
    for index, turn in enumerate(record["utterances"]):
        try:
            turns.append(_reference_turn(turn, where, index))
        except RecordError as error:
            skips.skip(error, split)
    if not turns:
        raise _no_turns(where)
    return {"persona": persona, "turns": turns, "record": where}


def _guarded(skips: SkipLog, split: str, read: Callable[..., list[Dialog]], *args: Any) -> Stream:
    """The dialogs ``read(*args)`` gives, as ``(split, dialog)`` pairs; none when it raises a :class:`RecordError`,
    which ``skips`` counts (or raises in strict mode)."""
    checked: list[Dialog] = []
    with skips.guard(split):
        dialogs = read(*args)
        for dialog in dialogs:
            _check_unicode(dialog)
        checked = dialogs
    for dialog in checked:
        yield split, dialog


def _check_unicode(dialog: Dialog) -> None:
    """A :class:`RecordError` for a dialog holding text that is not valid Unicode (a lone surrogate, which a JSON
    ``\\ud800`` escape can write): no tokenizer, and no Arrow file, takes it."""
    try:
        json.dumps(dialog, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as error:
        raise RecordError(
            f"text that is not valid Unicode ({error.reason})",
            where=dialog.get("record", "a record"),
            fix="repair the record's text (a lone surrogate escape such as \\ud800), or drop the record.",
            reason="invalid Unicode",
        ) from None


def _reference_dialogs(record: Any, where: str, skips: SkipLog, split: str) -> list[Dialog]:
    return [reference_dialog(record, where, skips, split)]


def read_personachat_json(file: CorpusFile, skips: SkipLog, splits: Splits = None) -> Stream:
    """The transfer-learning-conv-ai JSON, ``{"train": [dialog, ...], "valid": [...]}``, one dialog at a time: one
    streaming pass finds the splits, then one per split read builds its dialogs (``ijson``'s C builder)."""
    keys: dict[str, str] = {}
    for key, event in file.top_level() or []:
        if key in SPLIT_ALIASES:
            keys.setdefault(key, event)  # a key given twice is read once (ijson reads both of its lists)
    if not keys:
        raise DataError(
            "expected an object with 'train'/'valid' lists of dialogs (the transfer-learning-conv-ai JSON)",
            where=str(file.path),
            fix="set dataset_format: conversations for JSON conversations, or fix the file.",
        )
    for key, event in keys.items():
        if event != "start_array":
            raise DataError(f"split '{key}' must be a list of dialogs", where=str(file.path), fix="fix the file.")
        split = SPLIT_ALIASES[key]
        if splits is not None and split not in splits:
            yield split, None
            continue
        for index, record in enumerate(file.json_values(f"{key}.item")):
            yield from _guarded(skips, split, _reference_dialogs, record, f"{file.path}, {key}[{index}]", skips, split)


def read_parlai(file: CorpusFile, skips: SkipLog, split: str) -> Stream:
    """ParlAI/ConvAI2 text: ``N your persona: ...`` and ``N text<TAB>label[<TAB><TAB>c1|...|cK]`` lines.

    A dialog with a turn that lacks its gold reply, with no turns or with no persona is skipped whole.
    """
    persona: list[str] = []
    history: list[str] = []
    turns: list[Turn] = []
    broken: RecordError | None = None
    previous_number = 0
    start_line = 1

    def close() -> list[Dialog]:
        where = f"{file.path}, dialog starting at line {start_line}"
        if broken is not None:
            raise broken
        if not turns:
            raise _no_turns(where)
        if not persona:
            raise RecordError(
                "the dialog has no 'your persona:' lines",
                where=where,
                fix="add the bot's persona lines.",
                reason="empty persona",
            )
        return [{"persona": list(persona), "turns": list(turns), "record": where}]

    for line_number, line in file.lines():
        if not line.strip():
            continue
        match = _PARLAI_LINE.match(line)
        if not match:
            raise DataError(
                "not a ParlAI line (expected a number, a space, then text)",
                where=f"{file.path}, line {line_number}",
                fix="check the file is ConvAI2 text, or set dataset_format.",
            )
        number, content = int(match.group(1)), match.group(2)
        if number <= previous_number or (number == 1 and previous_number):
            yield from _guarded(skips, split, close)
            persona, history, turns, broken, start_line = [], [], [], None, line_number
        previous_number = number
        if content.startswith("your persona:"):
            persona.append(content[len("your persona:") :].strip())
            continue
        if content.startswith("partner's persona:"):
            continue
        fields = content.split("\t")
        if len(fields) < 2 or not fields[1].strip():
            broken = broken or RecordError(
                "turn without its gold reply (expected 'text<TAB>label')",
                where=f"{file.path}, line {line_number}",
                fix="add the label after a tab, or drop the line.",
                reason="turn without candidates",
            )
            continue
        message, label = fields[0].strip(), fields[1].strip()
        candidates = [c.strip() for c in fields[3].split("|")] if len(fields) > 3 and fields[3].strip() else []
        candidates = [c for c in candidates if c and c != label] + [label]
        history.append(message)
        turns.append({"history": list(history), "candidates": candidates})
        history.append(label)
    if previous_number:
        yield from _guarded(skips, split, close)


def conversation_dialogs(
    personas: list[list[str]], utterances: list[str], bot_side: str, where: str, first_speaker: int = 0
) -> list[Dialog]:
    """The dialogs of one two-person conversation, one per side that serves as the bot.

    ``personas[0]`` is user 1's; ``first_speaker`` (0 or 1) says which user spoke ``utterances[0]``.
    The side that opens the conversation gets :data:`SILENCE` before it, as PersonaChat does.
    """
    if not utterances:
        raise RecordError(
            "the conversation is empty", where=where, fix="drop it or complete it.", reason="empty conversation"
        )
    if len(utterances) < 2:
        raise RecordError(
            "the conversation has a single utterance",
            where=where,
            fix="drop it or complete it.",
            reason="conversation of one utterance",
        )
    sides = {"both": (0, 1), "user1": (0,), "user2": (1,)}[bot_side]
    dialogs = []
    for side in sides:
        persona = _string_list(personas[side], where, f"persona of user {side + 1}", reason="empty persona")
        spoken = [SILENCE, *utterances] if side == first_speaker else utterances
        turns = [{"history": spoken[:index], "candidates": [spoken[index]]} for index in range(1, len(spoken), 2)]
        dialogs.append({"persona": persona, "turns": turns, "record": f"{where} (user {side + 1} as the bot)"})
    return dialogs


def parse_conversation_text(text: str, where: str) -> tuple[list[str], int]:
    """``User 1: ...`` / ``User 2: ...`` lines into alternating utterances and the first speaker (0 or 1).

    A line without a tag, or a second line of the same speaker, continues the last utterance; untagged
    text before the first tag is user 1's; lines of mere decoration (``* * *``) are skipped. Text in which
    no line carries a speaker tag raises :class:`RecordError` (the speakers cannot be told apart).
    """
    utterances: list[str] = []
    speakers: list[str] = []
    tagged = False
    for line in text.splitlines():
        if not line.strip():
            continue
        match = _SPEAKER_LINE.match(line)
        tagged = tagged or match is not None
        if match:
            if speakers and speakers[-1] == match.group(1):
                utterances[-1] += " " + match.group(2)
            else:
                speakers.append(match.group(1))
                utterances.append(match.group(2))
        elif utterances:
            utterances[-1] += " " + line.strip()
        elif re.search(r"\w", line):  # untagged text before the first tag opens the conversation as user 1
            speakers.append("1")
            utterances.append(line.strip())
    if utterances and not tagged:
        raise RecordError(
            "no line carries a speaker tag ('User 1:' / 'User 2:'), so the speakers cannot be told apart",
            where=where,
            fix="tag each line with its speaker, or drop the conversation.",
            reason="no speaker tags",
        )
    return utterances, int(speakers[0]) - 1 if speakers else 0


def record_dialogs(
    record: Any, where: str, bot_side: str, skips: SkipLog, split: str, chat_format: str | None = None
) -> list[Dialog]:
    """The dialogs of one record of a conversation CSV/JSON/JSONL or Hub row, whatever its shape (a chat record in
    ``chat_format`` when given, see :mod:`persona.data.chat_records`)."""
    chat_format = chat_format or (chat_format_of(record) if isinstance(record, dict) else None)
    if chat_format:
        return chat_dialogs(record, where, chat_format)
    if isinstance(record, dict) and "personality" in record and "utterances" in record:
        return [reference_dialog(record, where, skips, split)]
    if isinstance(record, dict) and all(column in record for column in _SPC_COLUMNS):
        personas = [_string_list(record[c] or "", where, c, allow_empty=True) for c in _SPC_COLUMNS[:2]]
        conversation = record[_SPC_COLUMNS[2]] or ""
        if not isinstance(conversation, str):
            raise RecordError(
                f"'{_SPC_COLUMNS[2]}' must be text ('User 1: ...' and 'User 2: ...' lines), not "
                f"{type(conversation).__name__}",
                where=where,
                fix="write the conversation as one text, a line per utterance.",
                reason="conversation not text",
            )
        utterances, first_speaker = parse_conversation_text(conversation, where)
        return conversation_dialogs(personas, utterances, bot_side, where, first_speaker)
    _require(record, ("personas", "utterances"), where)
    personas = record["personas"]
    if not isinstance(personas, list) or len(personas) != 2:
        raise RecordError(
            "'personas' must be a list of two lists (user 1, user 2)", where=where, fix="give both personas."
        )
    utterances = _string_list(record["utterances"], where, "utterances", allow_empty=True)
    return conversation_dialogs(personas, utterances, bot_side, where)


def _jsonl_records(file: CorpusFile, skips: SkipLog, split: str) -> Iterator[tuple[Any, str]]:
    """``(record, where)`` of each line of a JSONL file; a line that is not JSON is skipped into ``skips``."""
    for line_number, line in file.lines():
        if not line.strip():
            continue
        where = f"{file.path}, line {line_number}"
        records: list[Any] = []
        with skips.guard(split):
            try:
                records = [json.loads(line)]
            except json.JSONDecodeError as error:
                raise RecordError(
                    f"invalid JSON ({error.msg}); JSONL needs one object per line",
                    where=where,
                    fix="repair the line, or check the file is not truncated.",
                    reason="invalid JSON line",
                ) from None
            except RecursionError:
                raise RecordError(
                    "JSON nested too deeply to read",
                    where=where,
                    fix="a record is an object of personas and utterances: repair or drop the line.",
                    reason="JSON nested too deeply",
                ) from None
        for record in records:
            yield record, where


def _csv_records(file: CorpusFile, skips: SkipLog, split: str) -> Iterator[tuple[Any, str]]:
    """``(row, where)`` of each row of a Synthetic-Persona-Chat CSV; a row that the CSV reader refuses (a field over
    its 128 KiB limit) is skipped into ``skips``."""
    reader = csv.DictReader(line for _, line in file.lines(keepends=True))
    missing = [c for c in _SPC_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise DataError(
            f"the CSV lacks column(s) {missing}", where=str(file.path), fix="use the Synthetic-Persona-Chat columns."
        )
    for row_number in itertools.count(2):  # the header is row 1
        where = f"{file.path}, row {row_number}"
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            with skips.guard(split):
                raise RecordError(
                    f"a row the CSV reader cannot read ({error})",
                    where=where,
                    fix="shorten the field (a conversation is a few KB) or repair its quoting.",
                    reason="unreadable CSV row",
                ) from None
            continue
        yield row, where


def read_conversations(
    file: CorpusFile, bot_side: str, skips: SkipLog, split: str, chat_format: str | None = None
) -> Stream:
    """Conversation records from CSV (Synthetic-Persona-Chat columns), a JSON list, or JSONL, one at a time (chat
    records of ``chat_format`` when given)."""
    head = file.head()
    if head.startswith("["):
        records = ((record, f"{file.path}, record {i}") for i, record in enumerate(file.json_values("item")))
    elif head.startswith("{"):
        records = _jsonl_records(file, skips, split)
    else:
        records = _csv_records(file, skips, split)
    for record, where in records:
        yield from _guarded(skips, split, record_dialogs, record, where, bot_side, skips, split, chat_format)


def read_file(
    path: Path, dataset_format: str, bot_side: str, skips: SkipLog, split: str | None = None, splits: Splits = None
) -> Stream:
    """One corpus file, in the given format or the one its content shows, as ``(split, dialog)`` pairs.

    A file with no splits inside is read as ``split`` (default :data:`WHOLE_FILE`); of a file with splits inside,
    ``splits`` only.
    """
    file = CorpusFile(path)
    file_format = detect_format(file) if dataset_format == "auto" else dataset_format
    if file_format == "personachat_json":
        return read_personachat_json(file, skips, splits)
    split = split or WHOLE_FILE
    if file_format == "parlai":
        return read_parlai(file, skips, split)
    if file_format == "conversations":
        return read_conversations(file, bot_side, skips, split)
    if file_format in CHAT_FORMATS:
        return read_conversations(file, bot_side, skips, split, file_format)
    raise DataError(
        f"dataset_format '{file_format}' does not apply to a file", where=str(path), fix="use auto for files."
    )


def read_folder(path: Path, dataset_format: str, bot_side: str, skips: SkipLog, splits: Splits = None) -> Stream:
    """A folder of corpus files (ParlAI ``train_*.txt``/``valid_*.txt``, CSV, JSON), file after file; the files of
    ``splits`` only."""
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in CORPUS_SUFFIXES)
    if not files:
        raise DataError(
            "the folder holds no .txt, .json, .jsonl or .csv corpus file", where=str(path), fix="check dataset_path."
        )
    for file in files:
        split = split_of_filename(file)
        if splits is not None and split not in splits:
            yield split, None
            continue
        yield from read_file(file, dataset_format, bot_side, skips, split, splits)


def hub_rows(dataset_dict, bot_side: str, name: str, skips: SkipLog, splits: Splits = None) -> Stream:
    """Rows of a ``datasets.DatasetDict`` (from the Hub or disk) in any accepted shape; the rows of ``splits`` only."""
    for split_name, rows in dataset_dict.items():
        split = SPLIT_ALIASES.get(split_name, split_name)
        if splits is not None and split not in splits:
            yield split, None
            continue
        if {"personality", "history", "candidates", "conv_id"} <= set(rows.column_names):
            for dialog in _group_turn_rows(rows, f"{name}[{split_name}]", skips, split):
                yield split, dialog
            continue
        for index, row in enumerate(rows):
            where = f"{name}[{split_name}] row {index}"
            yield from _guarded(skips, split, record_dialogs, row, where, bot_side, skips, split)


def collect(stream: Stream) -> Corpus:
    """The dialogs of a stream gathered split by split (for a corpus small enough to hold: a persona to draw, a
    test)."""
    corpus: Corpus = defaultdict(list)
    for split, dialog in stream:
        corpus[split].append(dialog)
    return dict(corpus)


def _group_turn_rows(rows, where: str, skips: SkipLog, split: str) -> list[Dialog]:
    """One row per turn (``bavard/personachat_truecased``) grouped into dialogs by ``conv_id``; bad rows skipped."""
    grouped: dict[Any, Dialog] = {}
    for index, row in enumerate(rows):
        record_where = f"{where} row {index}"
        with skips.guard(split):
            persona = _string_list(row["personality"], record_where, "personality", reason="empty persona")
            turn = {
                "history": _string_list(row["history"], record_where, "history", allow_empty=True),
                "candidates": _string_list(
                    row["candidates"], record_where, "candidates", reason="turn without candidates"
                ),
            }
            grouped.setdefault(
                row["conv_id"], {"persona": persona, "turns": [], "record": f"{where} conv_id {row['conv_id']}"}
            )["turns"].append(turn)
    return list(grouped.values())
