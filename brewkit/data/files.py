"""Why a data file cannot be read: cheap checks before ``datasets`` reads it, and a line-level diagnosis after.

``datasets`` reports most broken files as "An error occurred while generating the dataset", with the cause
(and its line) buried in the exception chain. :func:`check_file` refuses, before any reading, what can be seen
from the file system and the first bytes: a missing file, a directory, an empty file, a ``.gz`` / ``.bz2`` /
``.xz`` / ``.zst`` / ``.lz4`` name on a file that is not compressed that way. When ``datasets`` fails anyway,
:func:`explain_read_error` reads the file again in Python (only then, so a good file costs nothing more) and
names the first problem and its line: bytes that are not UTF-8, a csv row with more fields than the header, a
quote that is never closed, a JSON Lines line that is not a JSON object, a truncated compressed stream. Where
it finds nothing, it falls back to the innermost cause in the exception chain.
"""
from __future__ import annotations

import bz2
import csv
import gzip
import json
import lzma
import os
import zlib
from collections.abc import Iterator

from ..errors import ConfigError, brief

# the first bytes of each compression's stream
_MAGIC = {".gz": ("gzip", (b"\x1f\x8b",)), ".bz2": ("bzip2", (b"BZh",)), ".xz": ("xz", (b"\xfd7zXZ\x00",)),
          ".zst": ("zstd", (b"\x28\xb5\x2f\xfd",)), ".lz4": ("lz4", (b"\x04\x22\x4d\x18",))}
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_DECOMPRESS_ERRORS = (OSError, EOFError, lzma.LZMAError, zlib.error)


class _Problem(Exception):
    """The first problem found in a file, as the text that follows its name in the message."""


def compression_of(path: str) -> str | None:
    """The compression suffix of ``path`` (``.gz``, ``.bz2``, ``.xz``, ``.zst``, ``.lz4``), else None."""
    name = path.lower()
    return next((ext for ext in _MAGIC if name.endswith(ext)), None)


def check_file(path: str, field: str) -> None:
    """Raise :class:`ConfigError` at ``field`` when ``path`` is missing, not a regular file, unreadable, empty,
    or named as compressed (``x.csv.gz``) without starting as such a file does."""
    if not os.path.exists(path):
        raise ConfigError(f"file not found: {path}", field)
    if os.path.isdir(path):
        raise ConfigError(f"{path} is a directory; give the path of a data file in it", field)
    if not os.path.isfile(path):
        raise ConfigError(f"{path} is not a regular file", field)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}", field) from None
    if not head:
        raise ConfigError(f"{path} is empty (0 bytes): it holds no header and no rows", field)
    ext = compression_of(path)
    if ext is not None:
        kind, magics = _MAGIC[ext]
        if not any(head.startswith(m) for m in magics):
            raise ConfigError(f"{path} is not a {kind} file (its name ends in {ext}, but it starts with "
                              f"{brief(head)}); compress it with {kind}, or remove {ext} from its name if it is "
                              "plain text", field)


def _binary(path: str):
    ext = compression_of(path)
    if ext is None:
        return open(path, "rb")
    if ext not in _OPENERS:
        raise _Problem(f"cannot check a {_MAGIC[ext][0]} file here (no Python module for it)")
    return _OPENERS[ext](path, "rb")


def _lines(f, counter: list[int], compressed: bool) -> Iterator[str]:
    """Decoded lines of the binary stream ``f`` (UTF-8, an initial byte-order mark dropped); ``counter[0]``
    is the number of lines read so far. A byte that is not UTF-8 raises :class:`_Problem` with its offset."""
    offset = 0
    for number, raw in enumerate(f, start=1):
        counter[0] = number
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            where = "of the decompressed data " if compressed else ""
            raise _Problem(f"line {number}: byte {offset + e.start} {where}is 0x{raw[e.start]:02x}, which is not "
                           f"UTF-8 ({e.reason}); save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
        if number == 1:
            text = text.removeprefix("\ufeff")
        offset += len(raw)
        yield text


def _csv_problem(lines: Iterator[str], delimiter: str) -> None:
    reader = csv.reader(lines, delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None or not any(cell.strip() for cell in header):
            raise _Problem("line 1: no header row (the first line must name the columns)")
        rows, start, last = 0, reader.line_num + 1, None
        for row in reader:
            if not row:  # a blank line
                start = reader.line_num + 1
                continue
            rows += 1
            if len(row) > len(header):
                name = "a tab" if delimiter == "\t" else repr(delimiter)
                raise _Problem(f"line {start}: {len(row)} fields, but the header (line 1) has {len(header)}; a "
                               f"field that contains {name} must be quoted")
            last = (start, reader.line_num, row)
            start = reader.line_num + 1
    except csv.Error as e:
        raise _Problem(f"line {reader.line_num}: {e}") from None
    if rows == 0:
        raise _Problem("the header is the only row: there are no data rows")
    if last is not None and last[1] > last[0] and len(last[2]) < len(header) and any("\n" in c for c in last[2]):
        raise _Problem(f"line {last[0]}: a quoted field starts here and is never closed (it runs to the end of "
                       "the file); add the closing quote")


def _json_lines_problem(lines: Iterator[str]) -> None:
    rows = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise _Problem(f"line {number}, column {e.colno}: not valid JSON ({e.msg}); each line must be one "
                           "complete JSON object (a truncated or wrapped line?)") from None
        if not isinstance(value, dict):
            raise _Problem(f"line {number} holds a JSON {type(value).__name__}, not an object: each line must be "
                           'one row such as {"text": "...", "label": "..."}')
        rows += 1
    if rows == 0:
        raise _Problem("no rows: every line is blank")


def _json_problem(lines: Iterator[str]) -> None:
    text = "".join(lines)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        first = next((line for line in text.splitlines() if line.strip()), "")
        try:
            one_row = isinstance(json.loads(first), dict)
        except json.JSONDecodeError:
            one_row = False
        if one_row:  # JSON Lines in a .json file, which datasets accepts
            _json_lines_problem(iter(text.splitlines()))
            return
        raise _Problem(f"line {e.lineno}, column {e.colno}: not valid JSON ({e.msg})") from None
    if not isinstance(value, (list, dict)):
        raise _Problem(f"holds a JSON {type(value).__name__}; expected a list of row objects, or one object "
                       "per line (JSON Lines)")


def _parquet_problem(path: str) -> None:
    import pyarrow.parquet as pq

    try:
        pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 -- pyarrow raises ArrowInvalid, OSError, ...; each means unreadable
        raise _Problem(f"not a readable parquet file: {' '.join(str(e).split())}") from None


def find_problem(path: str, fmt: str) -> str | None:
    """The first problem reading ``path`` as ``fmt`` (``csv``, ``tsv``, ``json``, ``jsonl``, ``parquet``), as
    text such as ``line 3: 3 fields, but the header (line 1) has 2; ...``; None when none is found."""
    try:
        if fmt == "parquet":
            _parquet_problem(path)
            return None
        counter = [0]
        with _binary(path) as f:
            lines = _lines(f, counter, compression_of(path) is not None)
            if fmt in ("csv", "tsv"):
                _csv_problem(lines, "\t" if fmt == "tsv" else ",")
            elif fmt == "jsonl":
                _json_lines_problem(lines)
            else:
                _json_problem(lines)
    except _Problem as p:
        return str(p)
    except _DECOMPRESS_ERRORS as e:
        kind = _MAGIC.get(compression_of(path) or "", ("compressed",))[0]
        return (f"the {kind} data is damaged or cut short after line {counter[0]} "
                f"({' '.join(str(e).split()) or type(e).__name__}); recompress or download the file again")
    return None


def innermost_cause(e: BaseException) -> BaseException:
    """The deepest exception in ``e``'s cause / context chain that has a message (``datasets`` wraps the
    parser's error in ``DatasetGenerationError``)."""
    best, seen = e, set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if str(e).strip():
            best = e
        e = e.__cause__ or e.__context__
    return best


def explain_read_error(path: str, fmt: str, error: BaseException) -> str:
    """One line saying why reading ``path`` as ``fmt`` raised ``error``: the problem :func:`find_problem`
    finds (with its line), else the innermost cause of ``error``."""
    problem = find_problem(path, fmt)
    if problem is None:
        cause = innermost_cause(error)
        problem = f"{type(cause).__name__}: {' '.join(str(cause).split())}"
    return f"cannot read {path} as {fmt}: {problem}"
