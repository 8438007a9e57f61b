"""Load a graph spec from YAML text or a file, turning every mistake into a SpecError."""

from __future__ import annotations

import os
import stat
import typing
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import Any

import pydantic
from pydantic import BaseModel

from ..errors import Problem, SpecError, close_match
from .models import GraphSpec
from .source import MAX_FILE_BYTES, SourceMap, parse_yaml

__all__ = ["SpecReading", "read_spec", "read_spec_text", "load_spec", "load_spec_text", "spec_from_data"]


@dataclass(frozen=True)
class SpecReading:
    """What reading a spec gave: the spec (None if unusable), its source map, the problems."""

    spec: Any
    source: SourceMap
    problems: tuple[Problem, ...]

    def raise_problems(self) -> Any:
        if self.problems or self.spec is None:
            raise SpecError(self.problems)
        return self.spec


def load_spec(path: str | os.PathLike) -> tuple[GraphSpec, SourceMap]:
    """Read and validate the spec in ``path`` (types and shapes only); raise SpecError."""
    reading = read_spec(path)
    return reading.raise_problems(), reading.source


def load_spec_text(text: str | bytes, file: str = "<string>") -> tuple[GraphSpec, SourceMap]:
    reading = read_spec_text(text, file)
    return reading.raise_problems(), reading.source


def read_spec(
    path: str | os.PathLike,
    model: type[BaseModel] = GraphSpec,
    *,
    named_by: tuple[SourceMap, tuple] | None = None,
) -> SpecReading:
    """Read the spec in ``path`` as a ``model`` (a graph spec unless told otherwise),
    collecting problems instead of stopping at the first.

    ``named_by`` is the (source map, path) of the key that named this file in another
    spec (``derive: {from: ...}``, ``graph: ...``): a file that cannot be read, or is
    not a ``model`` at all, is then reported there in one line that never repeats the
    file's content.
    """
    name = str(path)

    def refuse(message: str) -> SpecError:
        if named_by is None:
            return SpecError.single(name, message)
        smap, where = named_by
        return SpecError([smap.problem(where, f"{_shown(name)}: {message}")])

    raw = read_limited(path, refuse)
    data, smap, problems = parse_yaml(raw, name)
    if named_by is not None and not _looks_like(data, model):
        raise refuse(f"not a {_kind(model)} (a YAML mapping with keys such as {', '.join(_field_names(model)[:4])})")
    spec, more = spec_from_data(data, smap, model)
    return SpecReading(spec, smap, tuple(problems) + tuple(more))


def read_spec_text(text: str | bytes, file: str = "<string>", model: type[BaseModel] = GraphSpec) -> SpecReading:
    data, smap, problems = parse_yaml(text, file)
    spec, more = spec_from_data(data, smap, model)
    return SpecReading(spec, smap, tuple(problems) + tuple(more))


MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255


def check_path_text(text: str) -> str | None:
    """Why ``text`` cannot be a file name on any system we run on, or None."""
    if "\0" in text:
        return "a file name cannot hold a NUL byte"
    encoded = os.fsencode(text) if text.isascii() else text.encode("utf-8", "surrogateescape")
    if len(encoded) > MAX_PATH_BYTES:
        return f"path is {len(encoded)} bytes long; the limit is {MAX_PATH_BYTES}"
    longest = max((len(part) for part in encoded.split(b"/")), default=0)
    if longest > MAX_NAME_BYTES:
        return f"a file name in this path is {longest} bytes long; the limit is {MAX_NAME_BYTES}"
    return None


def read_limited(path: str | os.PathLike, refuse: Any = None) -> bytes:
    """The bytes of a regular file of at most MAX_FILE_BYTES; anything else is a
    SpecError (device files, FIFOs and sockets are refused before they are opened,
    and at most the limit is read, whatever the file claims its size is)."""
    name = str(path)
    refuse = refuse or (lambda message: SpecError.single(name, message))
    why = check_path_text(os.fspath(path))
    if why:
        raise refuse(why)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise refuse("no such file") from None
    except (OSError, ValueError) as e:
        raise refuse(f"cannot read: {getattr(e, 'strerror', None) or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise refuse("is a directory, not a spec file")
    if not stat.S_ISREG(st.st_mode):
        raise refuse("not a regular file (a device, FIFO or socket); give a spec file")
    if st.st_size > MAX_FILE_BYTES:
        raise refuse(f"file is {st.st_size} bytes; the limit is {MAX_FILE_BYTES}")
    try:
        # O_NONBLOCK: should the file have turned into a FIFO since stat, open must not block.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise refuse("no such file") from None
    except OSError as e:
        raise refuse(f"cannot read: {e.strerror or e}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise refuse(f"file is larger than the limit of {MAX_FILE_BYTES} bytes")
    return raw


def _shown(name: str, limit: int = 80) -> str:
    return name if len(name) <= limit else name[: limit // 2] + "..." + name[-limit // 2 :]


def _kind(model: type[BaseModel]) -> str:
    return {"GraphSpec": "graph spec", "ModelSpec": "model spec"}.get(model.__name__, model.__name__)


def _looks_like(data: Any, model: type[BaseModel]) -> bool:
    """Whether ``data`` is meant as a ``model``: a mapping using at least one of its keys."""
    return isinstance(data, dict) and any(isinstance(k, str) and k in _field_names(model) for k in data)


def spec_from_data(
    data: Any, smap: SourceMap, model: type[BaseModel] = GraphSpec
) -> tuple[Any, list[Problem]]:
    """Validate plain data against ``model``.

    Unknown keys are reported and then dropped, so that a typo does not hide the
    problems further on (unknown references, cycles) from the same report.
    """
    if not isinstance(data, dict):
        kind = {list: "a list", str: "a string"}.get(type(data), type(data).__name__)
        raise SpecError.single(smap.file, f"expected a mapping (name: ..., nodes: ...) at the top level, got {kind}")
    try:
        return model.model_validate(data), []
    except pydantic.ValidationError as e:
        problems = _problems(e, smap, data, model)
        extra = [tuple(i["loc"]) for i in e.errors() if i["type"] == "extra_forbidden"]
        if len(extra) < e.error_count():
            return None, problems
    stripped = _without(data, [_document_path(loc, model)[0] for loc in extra])
    try:
        return model.model_validate(stripped), problems
    except pydantic.ValidationError:
        return None, problems


def _without(data: Any, paths: list[tuple]) -> Any:
    """A copy of ``data`` without the keys at ``paths``."""
    drop = set(paths)

    def walk(x: Any, path: tuple) -> Any:
        if isinstance(x, dict):
            return {k: walk(v, path + (k,)) for k, v in x.items() if path + (k,) not in drop}
        if isinstance(x, list):
            return [walk(v, path + (i,)) for i, v in enumerate(x)]
        return x

    return walk(data, ())


def _problems(err: pydantic.ValidationError, smap: SourceMap, data: Any, root: type[BaseModel]) -> list[Problem]:
    out = []
    for item in err.errors(include_url=False):
        loc = tuple(item["loc"])
        path, tags = _document_path(loc, root)
        if tags and not _branch_applies(tags[-1], _lookup(data, path[: _tag_depth(loc, tags[-1])])):
            continue  # an error from the other member of a union (name vs {src: ...})
        kind = item["type"]
        if kind == "extra_forbidden":
            model = _model_at(root, path[:-1])
            allowed = _field_names(model) if model else []
            hint = close_match(str(path[-1]), allowed)
            msg = f"unknown key {path[-1]!r}"
            msg += f" (did you mean {hint!r}?)" if hint else f"; expected one of: {', '.join(allowed)}"
            out.append(smap.problem(path, msg, key=True))
        elif kind == "missing":
            model = _model_at(root, path[:-1])
            where = f" in {model.__name__}" if model else ""
            out.append(smap.problem(path[:-1], f"missing required key {path[-1]!r}{where}"))
        else:
            got = item.get("input")
            shown = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
            out.append(smap.problem(path, f"{_where(path)}{item['msg'][0].lower()}{item['msg'][1:]} (got {shown})"))
    return out


def _where(path: tuple) -> str:
    return f"{'.'.join(str(p) for p in path)}: " if path else ""


def _document_path(loc: tuple, root: type[BaseModel]) -> tuple[tuple, list[str]]:
    """Split pydantic's union-member tags (``str``, ``InputRef``...) off an error location."""
    out, tags = [], []
    model: Any = root
    for part in loc:
        if isinstance(part, str) and model is not None and _is_tag(model, part):
            tags.append(part)
            continue
        out.append(part)
        model = _step(model, part)
    return tuple(out), tags


def _tag_depth(loc: tuple, tag: str) -> int:
    """How many document-path elements precede ``tag`` in ``loc``."""
    depth = 0
    for part in loc:
        if part == tag:
            return depth
        depth += 1
    return depth


def _branch_applies(tag: str, value: Any) -> bool:
    """Whether the union member named ``tag`` is the one the user meant for ``value``."""
    is_model_tag = tag[:1].isupper()
    return is_model_tag == isinstance(value, dict)


def _lookup(data: Any, path: tuple) -> Any:
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _is_tag(annotation: Any, part: str) -> bool:
    if part in ("str", "int", "constrained-str", "function-after[...]"):
        return True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return part not in _field_names(annotation) and part == annotation.__name__
    return part.endswith("]") or part in {a.__name__ for a in _members(annotation) if isinstance(a, type)}


def _members(annotation: Any) -> list[Any]:
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _members(args[0])
    if origin in (typing.Union,) or type(annotation).__name__ == "UnionType":
        return [m for a in args for m in _members(a)]
    return [annotation]


def _step(annotation: Any, part: Any) -> Any:
    """The annotation one path element further in."""
    for member in _members(annotation):
        if isinstance(member, type) and issubclass(member, BaseModel) and isinstance(part, str):
            for fname, f in member.model_fields.items():
                if part in (fname, f.alias):
                    return f.annotation
        origin = typing.get_origin(member)
        if origin in (tuple, list) and isinstance(part, int):
            return typing.get_args(member)[0]
        if origin is dict:
            return typing.get_args(member)[1]
    return None


def _model_at(root: type[BaseModel], path: tuple) -> type[BaseModel] | None:
    annotation: Any = root
    for part in path:
        annotation = _step(annotation, part)
    for member in _members(annotation):
        if isinstance(member, type) and issubclass(member, BaseModel):
            return member
    return None


def _field_names(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]
