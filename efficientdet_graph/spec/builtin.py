"""Where the built-in YAML lives, and resolving ``NAME_OR_PATH`` arguments.

A wheel carries the repository's ``graphs/``, ``specs/`` and ``search/`` folders
as ``efficientdet_graph/_builtin/...``; a source checkout reads them in place.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import RegistryError

__all__ = ["builtin_dir", "builtin_names", "resolve_ref"]

_PACKAGE = Path(__file__).resolve().parent.parent
KINDS = ("graphs", "specs", "search")


def builtin_dir(kind: str = "graphs") -> Path:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    packaged = _PACKAGE / "_builtin" / kind
    return packaged if packaged.is_dir() else _PACKAGE.parent / kind


def builtin_names(kind: str = "graphs") -> list[str]:
    folder = builtin_dir(kind)
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def looks_like_path(ref: str) -> bool:
    return os.sep in ref or "/" in ref or ref.endswith((".yaml", ".yml")) or Path(ref).is_file()


def resolve_ref(ref: str | os.PathLike, kind: str = "graphs", relative_to: Path | None = None) -> Path:
    """A file path for ``ref``: an existing path, a path relative to ``relative_to``,
    or the name of a built-in."""
    text = os.fspath(ref)
    if looks_like_path(text):
        path = Path(text)
        if not path.is_absolute() and relative_to is not None and not path.exists():
            candidate = relative_to / path
            if candidate.exists():
                return candidate
        return path
    if text in builtin_names(kind):
        return builtin_dir(kind) / f"{text}.yaml"
    raise RegistryError(f"built-in {kind[:-1]}", text, builtin_names(kind))
