"""Load a graph spec from YAML text or a file, turning every mistake into a SpecError."""

from __future__ import annotations

import os
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


def read_spec(path: str | os.PathLike, model: type[BaseModel] = GraphSpec) -> SpecReading:
    """Read the spec in ``path`` as a ``model`` (a graph spec unless told otherwise),
    collecting problems instead of stopping at the first."""
    p = FsPath(path)
    name = str(path)
    try:
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise SpecError.single(name, f"file is {size} bytes; the limit is {MAX_FILE_BYTES}")
        raw = p.read_bytes()
    except FileNotFoundError:
        raise SpecError.single(name, "no such file") from None
    except IsADirectoryError:
        raise SpecError.single(name, "is a directory, not a spec file") from None
    except OSError as e:
        raise SpecError.single(name, f"cannot read: {e.strerror}") from None
    return read_spec_text(raw, name, model)


def read_spec_text(text: str | bytes, file: str = "<string>", model: type[BaseModel] = GraphSpec) -> SpecReading:
    data, smap, problems = parse_yaml(text, file)
    spec, more = spec_from_data(data, smap, model)
    return SpecReading(spec, smap, tuple(problems) + tuple(more))


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
