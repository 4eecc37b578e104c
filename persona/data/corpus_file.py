"""A corpus file read in bounded chunks: checked as UTF-8 as it goes, by lines or by JSON events.

Nothing holds the whole file: lines are decoded one at a time, and one large JSON document is parsed as a stream of
events (``ijson``, its C backend where it is built). Errors name the file and where in it: a byte that is not UTF-8
(byte offset and line), a JSON document broken at a line and column.
"""

from __future__ import annotations

import codecs
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ijson

from persona.errors import DataError

CHUNK = 1 << 20  # bytes read at a time
HEAD = 4096  # characters of the head that tell the layout of a file


class CorpusFile:
    """One corpus file: its head (to tell its layout), its lines, or its JSON values, read in chunks of
    :data:`CHUNK` bytes; a :class:`DataError` for a missing, empty or non-UTF-8 file."""

    def __init__(self, path: Path):
        self.path = path
        if not path.is_file():
            raise DataError(
                "file not found", where=str(path), fix="check dataset_path (a file, a folder, a URL or a Hub id)."
            )
        if not any(chunk.strip() for chunk in self._chunks()):
            raise DataError("the file is empty", where=str(path), fix="point dataset_path at a non-empty corpus.")

    def _chunks(self) -> Iterator[bytes]:
        with open(self.path, "rb") as handle:
            while chunk := handle.read(CHUNK):
                yield chunk

    def _not_utf8(self, offset: int, line: int) -> DataError:
        return DataError(
            f"not UTF-8 text (byte {offset}, line {line}); binary or another encoding",
            where=str(self.path),
            fix="re-encode the file as UTF-8 (for example with iconv -t utf-8).",
        )

    def checked_chunks(self) -> Iterator[bytes]:
        """The file's bytes in chunks, a leading byte-order mark dropped, each checked as UTF-8 on the way."""
        decoder = codecs.getincrementaldecoder("utf-8")()
        offset, lines, first = 0, 1, True
        for chunk in self._chunks():
            if first and chunk.startswith(codecs.BOM_UTF8):
                chunk, offset = chunk[len(codecs.BOM_UTF8) :], len(codecs.BOM_UTF8)
            first = False
            pending = len(decoder.getstate()[0])
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as error:
                start = max(error.start - pending, 0)
                raise self._not_utf8(offset + start, lines + chunk[:start].count(b"\n")) from None
            offset, lines = offset + len(chunk), lines + chunk.count(b"\n")
            yield chunk
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise self._not_utf8(offset, lines) from None

    def head(self) -> str:
        """The first :data:`HEAD` characters after leading whitespace."""
        text = ""
        for chunk in self.checked_chunks():
            text += chunk.decode("utf-8", errors="ignore")
            if len(text.lstrip()) >= HEAD:
                break
        return text.lstrip()[:HEAD]

    def lines(self, keepends: bool = False) -> Iterator[tuple[int, str]]:
        """``(line number, text)`` of every line, counted from 1."""
        raw = io.BufferedReader(_ChunkReader(self.checked_chunks()), CHUNK)
        stream = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        for number, line in enumerate(stream, start=1):
            yield number, line if keepends else line.rstrip("\r\n")

    def json_values(self, prefix: str) -> Iterator[Any]:
        """The JSON values at ``prefix`` (``ijson``'s path syntax: ``item`` for each element of a top-level list),
        one at a time; a broken document is a :class:`DataError` that says at which line and column."""
        try:
            yield from ijson.items(_ChunkReader(self.checked_chunks()), prefix, use_float=True)
        except ijson.JSONError as error:
            raise self.broken_json(error) from None

    def json_events(self, multiple_values: bool = False) -> Iterator[tuple[str, str, Any]]:
        """``ijson.parse``'s ``(prefix, event, value)`` stream of the document (of each document one after the other
        with ``multiple_values``, as in JSONL); see :meth:`json_values` for errors."""
        try:
            yield from ijson.parse(
                _ChunkReader(self.checked_chunks()), use_float=True, multiple_values=multiple_values
            )
        except ijson.JSONError as error:
            raise self.broken_json(error) from None

    def top_level(self) -> list[tuple[str, str]] | None:
        """The keys of the (first) top-level object, each with the event its value starts with (``start_array`` for a
        list), in file order; None when the document is not an object. One streaming pass, which stops at the end of
        that object (the first record of a JSONL file)."""
        events = self.json_events(multiple_values=True)
        _, event, _ = next(events, ("", None, None))
        if event != "start_map":
            return None
        keys, pending = [], None
        for prefix, event, value in events:
            if prefix == "" and event == "end_map":
                break
            if prefix == "" and event == "map_key":
                pending = value
            elif pending is not None and prefix == pending:
                keys.append((pending, event))
                pending = None
        return keys

    def broken_json(self, error: Exception) -> DataError:
        """Where a JSON document breaks, found again by the pure-Python parser (which counts characters), read as
        a line and column."""
        reason = str(error).strip().splitlines()[0].removeprefix("parse error: ").removeprefix("lexical error: ")
        position = None
        try:
            for _ in ijson.get_backend("python").parse(_ChunkReader(self.checked_chunks())):
                pass
        except ijson.IncompleteJSONError:
            position = None  # the document ends inside a value: the end of the file
        except ijson.JSONError as located:
            digits = str(located).rsplit(" at ", 1)[-1]
            position = int(digits) if digits.isdigit() else None
        line, column = self._line_and_column(position)
        return DataError(
            f"invalid JSON at line {line}, column {column}: {reason} (truncated or not JSON?)",
            where=str(self.path),
            fix="repair or re-download the file.",
        )

    def _line_and_column(self, position: int | None) -> tuple[int, int]:
        """Line and column (from 1) of character ``position``, or of the end of the file."""
        line, column, seen = 1, 1, 0
        for _, text in self.lines(keepends=True):
            if position is not None and seen + len(text) > position:
                return line, position - seen + 1
            seen += len(text)
            if text.endswith(("\n", "\r")):
                line, column = line + 1, 1
            else:
                column = len(text) + 1
        return line, column


class _ChunkReader(io.RawIOBase):
    """A read-only binary stream over an iterator of byte chunks (what ``ijson`` and ``TextIOWrapper`` read)."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks, self._left = chunks, memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._left:
            chunk = next(self._chunks, b"")
            if not chunk:
                return 0
            self._left = memoryview(chunk)
        size = min(len(buffer), len(self._left))
        buffer[:size], self._left = self._left[:size], self._left[size:]
        return size
