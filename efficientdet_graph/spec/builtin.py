"""Where the built-in YAML lives, and resolving ``NAME_OR_PATH`` arguments.

A wheel carries the repository's ``graphs/``, ``specs/`` and ``search/`` folders
as ``efficientdet_graph/_builtin/...``; a source checkout reads them in place.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import EdgError, RegistryError

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


def looks_like_path(ref: str, relative_to: Path | None = None) -> bool:
    if os.sep in ref or "/" in ref or ref.endswith((".yaml", ".yml")):
        return True
    folder = relative_to if relative_to is not None else Path(".")
    try:
        return (folder / ref).is_file()
    except (OSError, ValueError):
        return False


def resolve_ref(ref: str | os.PathLike, kind: str = "graphs", relative_to: Path | None = None) -> Path:
    """A file path for ``ref``: the name of a built-in, or a path. A relative path is
    relative to ``relative_to`` (the folder of the file that names it) when given,
    so a spec means the same file wherever it is run from."""
    text = os.fspath(ref)
    if "\0" in text or len(text) > 4096:
        raise EdgError(f"{text[:60]!r}{'...' if len(text) > 60 else ''}: not a usable file name "
                       f"({'it holds a NUL byte' if chr(0) in text else 'longer than 4096 characters'})")
    if looks_like_path(text, relative_to):
        path = Path(text)
        if not path.is_absolute() and relative_to is not None:
            return relative_to / path
        return path
    if text in builtin_names(kind):
        return builtin_dir(kind) / f"{text}.yaml"
    raise RegistryError(f"built-in {kind[:-1]}", text, builtin_names(kind))
