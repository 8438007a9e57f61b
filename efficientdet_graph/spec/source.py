"""Safe YAML → plain Python, remembering where every key and value came from.

PyYAML's safe composer gives positions for each node; we build the Python
objects ourselves from that node tree so that (a) every path into the document
has a line and column, (b) duplicate keys are errors instead of silently
overwriting, and (c) alias bombs are cut off by a node budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from ..errors import Problem, SpecError

__all__ = ["MAX_FILE_BYTES", "MAX_YAML_DEPTH", "MAX_YAML_NODES", "Path", "SourceMap", "parse_yaml"]

MAX_FILE_BYTES = 1 << 20
MAX_YAML_NODES = 200_000
# Real specs nest 4-5 deep; PyYAML's composer recurses per level, so a few hundred
# brackets would end in RecursionError instead of a located problem.
MAX_YAML_DEPTH = 64

Path = tuple[Any, ...]


@dataclass
class SourceMap:
    """1-based (line, column) of every key and value, by path into the document."""

    file: str
    keys: dict[Path, tuple[int, int]] = field(default_factory=dict)
    values: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def locate(self, path: Path, *, key: bool = False) -> tuple[int, int]:
        """Position of ``path``; the nearest enclosing item when it is not in the file."""
        path = tuple(path)
        while True:
            table = (self.keys, self.values) if key else (self.values, self.keys)
            for t in table:
                if path in t:
                    return t[path]
            if not path:
                return (1, 1)
            path = path[:-1]
            key = False

    def problem(self, path: Path, message: str, *, key: bool = False) -> Problem:
        line, col = self.locate(path, key=key)
        return Problem(self.file, line, col, message)


_COLLECTION_TAGS = {"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"}


def _pos(mark: yaml.Mark) -> tuple[int, int]:
    return (mark.line + 1, mark.column + 1)


class _Loader(yaml.SafeLoader):
    """SafeLoader whose composer refuses nesting deeper than MAX_YAML_DEPTH."""

    def __init__(self, stream: str, file: str = "<string>"):
        super().__init__(stream)
        self._depth = 0
        self._file = file

    def compose_node(self, parent, index):  # noqa: ANN001 (PyYAML's signature)
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise SpecError.single(self._file, f"nested more than {MAX_YAML_DEPTH} levels deep; a spec needs "
                                       "a handful", *_pos(self.peek_event().start_mark))
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _line_col(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def _control_character(text: str, file: str) -> SpecError | None:
    """A located problem for the first character YAML does not allow (NUL, ESC, DEL...)."""
    m = yaml.reader.Reader.NON_PRINTABLE.search(text)
    if m is None:
        return None
    return SpecError.single(
        file, f"control character U+{ord(m.group()):04X} is not allowed in YAML (remove it)", *_line_col(text, m.start())
    )


def _scalar_error(e: Exception, tag: str) -> str:
    """What a failing explicit tag (``!!int abc``) said, without PyYAML internals."""
    if isinstance(e, yaml.YAMLError):
        return str(getattr(e, "problem", None) or e)
    return f"not a valid {_tag(tag)[2:] if tag.startswith('tag:yaml.org') else 'value'}"


def parse_yaml(text: str | bytes, file: str = "<string>") -> tuple[Any, SourceMap, list[Problem]]:
    """Parse one YAML document safely.

    Raises SpecError when nothing usable can be read; returns the problems it
    could read past (duplicate keys: the first value is kept) for the caller to
    report together with everything else.
    """
    if isinstance(text, bytes):
        if len(text) > MAX_FILE_BYTES:
            raise SpecError.single(file, f"file is {len(text)} bytes; the limit is {MAX_FILE_BYTES}")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SpecError.single(file, f"not UTF-8 text (byte {e.start}): is this a YAML file?") from None
    if len(text.encode("utf-8")) > MAX_FILE_BYTES:
        raise SpecError.single(file, f"file is larger than the limit of {MAX_FILE_BYTES} bytes")
    if not text.strip():
        raise SpecError.single(file, "file is empty; expected a mapping with keys such as name, levels, nodes, outputs")

    bad_char = _control_character(text, file)
    if bad_char is not None:
        raise bad_char
    try:
        loader = _Loader(text, file)
    except yaml.YAMLError as e:  # the reader's own checks (BOMs, encodings)
        raise SpecError.single(file, f"not valid YAML: {e}") from None
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = _pos(mark) if mark else (1, 1)
        what = " ".join(x for x in (e.context, e.problem) if x)
        raise SpecError.single(file, f"not valid YAML: {what}", line, col) from None
    except yaml.YAMLError as e:
        raise SpecError.single(file, f"not valid YAML: {e}") from None
    finally:
        loader.dispose()
    if root is None:
        raise SpecError.single(file, "file holds no YAML document; expected a mapping")

    smap = SourceMap(file)
    problems: list[Problem] = []
    budget = [MAX_YAML_NODES]

    def build(node: yaml.Node, path: Path) -> Any:
        budget[0] -= 1
        if budget[0] < 0:
            raise SpecError.single(
                file, f"document expands to more than {MAX_YAML_NODES} YAML nodes (alias bomb?)", *_pos(node.start_mark)
            )
        smap.values.setdefault(path, _pos(node.start_mark))
        if not isinstance(node, yaml.ScalarNode) and node.tag not in _COLLECTION_TAGS:
            # SafeLoader would refuse such a tag at construction; we build collections
            # ourselves, so refuse it here (e.g. !!python/object/apply).
            problems.append(Problem(file, *_pos(node.start_mark), f"YAML tag {node.tag!r} is not allowed"))
            return None
        if isinstance(node, yaml.MappingNode):
            try:
                loader.flatten_mapping(node)  # resolves YAML merge keys (<<)
            except yaml.MarkedYAMLError as e:
                problems.append(Problem(file, *_pos(e.problem_mark or node.start_mark), f"bad merge key: {e.problem}"))
                return {}
            out: dict[Any, Any] = {}
            for knode, vnode in node.value:
                if not isinstance(knode, yaml.ScalarNode):
                    problems.append(Problem(file, *_pos(knode.start_mark), "a mapping key must be a plain scalar"))
                    continue
                try:
                    key = loader.construct_object(knode)
                except Exception as e:  # noqa: BLE001 - any failing tag (!!float abc) is the user's
                    problems.append(Problem(file, *_pos(knode.start_mark), f"bad key {_short(knode.value)} for tag "
                                            f"{_tag(knode.tag)}: {_scalar_error(e, knode.tag)}"))
                    continue
                if not isinstance(key, (str, int)) or isinstance(key, bool):
                    key = str(knode.value)
                if key in out:
                    first = smap.keys.get(path + (key,), (0, 0))
                    problems.append(
                        Problem(file, *_pos(knode.start_mark), f"duplicate key {key!r} (first given at line {first[0]})")
                    )
                    continue
                smap.keys[path + (key,)] = _pos(knode.start_mark)
                out[key] = build(vnode, path + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [build(item, path + (i,)) for i, item in enumerate(node.value)]
        try:
            return loader.construct_object(node)
        except Exception as e:  # noqa: BLE001 - !!int abc, !!bool maybe, !!timestamp nope...
            problems.append(Problem(file, *_pos(node.start_mark), f"bad value {_short(node.value)} for tag "
                                    f"{_tag(node.tag)}: {_scalar_error(e, node.tag)}"))
            return None

    return build(root, ()), smap, problems


def _tag(tag: str) -> str:
    return tag.replace("tag:yaml.org,2002:", "!!")


def _short(value: str, limit: int = 40) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")
