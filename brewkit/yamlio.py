"""Reading YAML run files safely: no Python objects, no duplicate keys, bounded aliases, one-line errors.

:func:`safe_load` is ``yaml.safe_load`` (only plain data: mappings, lists, strings, numbers, booleans, null;
``!!python/...`` tags are refused) with four changes:

- ``1e-4`` and ``2E5`` are floats, as in YAML 1.2 (PyYAML's YAML 1.1 rules read them as strings);
- a key given twice in one mapping, at any depth, is an error naming the key and both lines (the YAML spec
  forbids it; PyYAML silently kept the second, so a second ``distillation:`` section replaced the first);
- a document whose aliases expand to more than :data:`MAX_NODES` nodes (an alias counts as a copy of what it
  names, so the 1.6 KB "billion laughs" file counts 10^9), or that nests deeper than :data:`MAX_DEPTH`, or whose
  aliases refer to themselves, is refused before anything is built;
- every problem is a :class:`YAMLInputError` (a :class:`~brewkit.errors.ConfigError` and a ``yaml.YAMLError``)
  on one line: ``run.yaml:3:7: mapping values are not allowed here``, ``run.yaml: byte 41 (line 3) is not
  UTF-8 ...``.

:func:`load_file` reads a file by path (the form to use for run files).
"""
from __future__ import annotations

import os
import re
from typing import Any

import yaml

from .errors import ConfigError, brief

MAX_NODES = 100_000
"""The most nodes a document may expand to, counting each alias as a copy of the node it names."""
MAX_DEPTH = 100
"""The deepest nesting of mappings and lists a document may have."""

_MERGE_TAG = "tag:yaml.org,2002:merge"


class YAMLInputError(ConfigError, yaml.YAMLError):
    """A YAML text that cannot be read: not UTF-8, not valid YAML, a duplicate key, too many aliases.

    ``path`` names the key at fault when there is one (``training.optimizer.lr`` for a duplicate key)."""


class SafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2 floats, checking each document (duplicates, size, depth) before
    building it. Set ``name`` (the file name used in messages) after construction when reading a string."""

    def construct_document(self, node: yaml.Node) -> Any:
        check_document(node, self, self.name)
        return super().construct_document(node)


SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def _source(name: str | None) -> str | None:
    """The file name to put in messages, or None for text that did not come from a file."""
    return None if not name or name.startswith("<") else name


def _where(name: str | None, line: int | None = None, column: int | None = None) -> str:
    """``file:line:col`` (1-based) for a file, ``line L, column C`` for a string."""
    source = _source(name)
    if source is None:
        return f"line {line}, column {column}" if line is not None else "the YAML text"
    return f"{source}:{line}:{column}" if line is not None else source


def _key_path(parent: str, key: Any) -> str:
    return f"{parent}.{key}" if parent else str(key)


def check_document(root: yaml.Node, loader: yaml.SafeLoader, name: str | None = None) -> None:
    """Raise :class:`YAMLInputError` when the composed document ``root`` has a duplicate mapping key, expands
    (aliases counted as copies) to more than :data:`MAX_NODES` nodes, nests deeper than :data:`MAX_DEPTH`, or
    holds an alias inside the node it names. Each distinct node is visited once, so a document of a few KB
    costs a few KB of work however far its aliases would expand."""
    expanded: dict[int, int] = {}  # id(node) -> number of nodes it expands to
    active: set[int] = set()  # nodes on the current path (an alias to one of them is a cycle)

    def visit(node: yaml.Node, path: str, depth: int) -> int:
        key = id(node)
        if key in expanded:
            return expanded[key]
        if key in active:
            raise YAMLInputError(f"{_where(name, node.start_mark.line + 1, node.start_mark.column + 1)}: an "
                                 "alias refers to the node that contains it (a recursive structure); a run file "
                                 "holds plain, finite data", path or None)
        if depth > MAX_DEPTH:
            raise YAMLInputError(f"{_where(name, node.start_mark.line + 1, node.start_mark.column + 1)}: nested "
                                 f"more than {MAX_DEPTH} levels deep", path or None)
        active.add(key)
        total = 1
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, value_node in node.value:
                label = "<<"
                if key_node.tag != _MERGE_TAG and isinstance(key_node, yaml.ScalarNode):
                    label = loader.construct_object(key_node)
                    try:
                        first = seen.get(label)
                    except TypeError:  # an unhashable key: the constructor reports it
                        first = None
                    line = key_node.start_mark.line + 1
                    if first is not None:
                        raise YAMLInputError(
                            f"duplicate key {brief(label, 80)} in {_where(name)} at lines {first} and {line}; "
                            "a key may appear once per mapping (the second would silently replace the first): "
                            "merge the two", _key_path(path, label))
                    seen[label] = line
                total += visit(key_node, path, depth + 1)
                total += visit(value_node, _key_path(path, label), depth + 1)
                if total > MAX_NODES:
                    break
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                total += visit(item, f"{path}[{i}]", depth + 1)
                if total > MAX_NODES:
                    break
        active.discard(key)
        if total > MAX_NODES:
            mark = node.start_mark
            raise YAMLInputError(f"{_where(name, mark.line + 1, mark.column + 1)}: this value expands to more "
                                 f"than {MAX_NODES:,} values once the aliases (*name) in it are copied in; a run "
                                 "file never needs that many (nested aliases, as in a 'billion laughs' file?)",
                                 path or None)
        expanded[key] = total
        return total

    visit(root, "", 0)


def _yaml_error(e: yaml.YAMLError, name: str | None, text: str) -> YAMLInputError:
    """A PyYAML error as one line: ``file:line:col: problem (context at line L)``."""
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        where = _where(name, mark.line + 1, mark.column + 1) if mark is not None else _where(name)
        problem = e.problem or e.context or "not valid YAML"
        context = ""
        if e.context and e.problem and e.context_mark is not None:
            context = f" ({e.context} at line {e.context_mark.line + 1})"
        message = f"{where}: {problem}{context}"
    elif isinstance(e, yaml.reader.ReaderError):  # a control character such as NUL (PyYAML gives its code point)
        line = text.count("\n", 0, e.position) + 1
        column = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        what = f"character U+{e.character:04X}" if isinstance(e.character, int) else "a character"
        message = f"{_where(name, line, column)}: {what} is not allowed in YAML ({e.reason})"
    else:
        message = f"{_where(name)}: {e}"
    return YAMLInputError(" ".join(message.split()))


def _not_utf8(data: bytes, e: UnicodeDecodeError, name: str | None) -> YAMLInputError:
    line = data.count(b"\n", 0, e.start) + 1
    return YAMLInputError(f"{_where(name)}: byte {e.start} (line {line}) is 0x{data[e.start]:02x}, which is not "
                          f"UTF-8 ({e.reason}); save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)")


def _decode(data: bytes, name: str | None) -> str:
    """UTF-8 text (a leading byte-order mark dropped); YAMLInputError naming the first bad byte."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _not_utf8(data, e, name) from None
    return text.removeprefix("\ufeff")


def safe_load(stream: Any, name: str | None = None) -> Any:
    """Plain data from one YAML document: ``stream`` is a string, UTF-8 bytes or an open file.

    ``name`` (default: the file's name for an open file) is what messages call the source. Raises
    :class:`YAMLInputError` for anything that is not valid, safe, bounded YAML (see the module docstring).
    """
    if hasattr(stream, "read"):
        name = name or getattr(stream, "name", None)
        try:
            stream = stream.read()
        except UnicodeDecodeError:  # a text-mode file: find the byte offset in the file itself
            path = getattr(stream, "name", None) or name
            if isinstance(path, (str, os.PathLike)) and os.path.isfile(path):
                with open(path, "rb") as f:
                    data = f.read()
                _decode(data, name)
            raise YAMLInputError(f"{_where(name)}: not UTF-8 text; save the file as UTF-8") from None
    if isinstance(stream, bytes):
        stream = _decode(stream, name)
    if not isinstance(stream, str):
        raise TypeError(f"safe_load reads a string, bytes or an open file, not {type(stream).__name__}")
    name = str(name) if name is not None else None
    loader = None
    try:
        loader = SafeLoader(stream)  # checks for control characters already
        if name is not None:
            loader.name = name
        return loader.get_single_data()
    except YAMLInputError:
        raise
    except yaml.YAMLError as e:
        raise _yaml_error(e, name, stream) from None
    except RecursionError:  # PyYAML composes nested nodes recursively
        raise YAMLInputError(f"{_where(name)}: nested too deeply to read (more than {MAX_DEPTH} levels)") from None
    finally:
        if loader is not None:
            loader.dispose()


def load_file(path: str | os.PathLike) -> Any:
    """The YAML document in the file ``path`` (see :func:`safe_load`). A missing file, a directory or an
    unreadable file is a :class:`~brewkit.errors.ConfigError` naming it."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ConfigError(f"{path} is a directory, not a YAML file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ConfigError(f"no such file: {path}") from None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
    return safe_load(_decode(data, path), name=path)
