"""Registries of the modules behind the names a spec uses.

Extending is done from Python, by registration, never by an import path in YAML.
Registering a name here also makes it valid in specs (``spec.vocab``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generic, Iterator, TypeVar

from ..errors import ConfigError, RegistryError
from ..spec.vocab import register_name

__all__ = ["Registry", "CompileOptions", "FUSIONS", "NODE_OPS", "ACTIVATIONS", "DOWNSAMPLERS", "UPSAMPLERS"]

F = TypeVar("F", bound=Callable)


@dataclass(frozen=True)
class CompileOptions:
    """Settings shared by every module the compiler builds.

    ``padding``: ``"same"`` pads pools and strided convs like TensorFlow's SAME (the
    official EfficientDet); ``"symmetric"`` is PyTorch's padding=k//2 (effdet's
    non-TF models). Both give output size ceil(s / 2).
    """

    bn_eps: float = 1e-3
    bn_momentum: float = 0.01
    fusion_eps: float = 1e-4
    padding: str = "same"

    def __post_init__(self) -> None:
        if self.padding not in ("same", "symmetric"):
            raise ConfigError(f"padding must be 'same' or 'symmetric', got {self.padding!r}")


class Registry(Generic[F]):
    """Name → factory, with errors that list what is registered and a close match."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, F] = {}

    def register(self, name: str, *, ordered: bool = False, arity: int | None = None) -> Callable[[F], F]:
        def deco(factory: F) -> F:
            if name in self._items:
                raise ConfigError(f"{self.kind} {name!r} is already registered")
            self._items[name] = factory
            register_name(self.kind, name, ordered=ordered, arity=arity)
            return factory

        return deco

    def get(self, name: str) -> F:
        try:
            return self._items[name]
        except KeyError:
            raise RegistryError(self.kind, name, self._items) from None

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._items))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


FUSIONS: Registry = Registry("fusion")
NODE_OPS: Registry = Registry("op")
ACTIVATIONS: Registry = Registry("act")
DOWNSAMPLERS: Registry = Registry("downsample")
UPSAMPLERS: Registry = Registry("upsample")
