"""Pydantic models of a graph spec: frozen, plain data, unknown keys rejected.

These models check types and shapes only. Whether the references resolve, the
graph is acyclic and every node reaches an output is the graph stage's job,
because those checks need the whole document at once.
"""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

__all__ = [
    "MAX_LEVEL",
    "MAX_NODES",
    "MAX_REPEAT",
    "Defaults",
    "NodeOptions",
    "InputRef",
    "NodeSpec",
    "EdgeSpec",
    "PassCall",
    "DeriveSpec",
    "GraphSpec",
    "input_name",
]

MAX_LEVEL = 12  # P12 is a 4096x down-sampling: far beyond any real pyramid
MAX_NODES = 4096
MAX_REPEAT = 64

Level = Annotated[StrictInt, Field(ge=0, le=MAX_LEVEL)]
Name = Annotated[StrictStr, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=64)]


def input_name(level: int) -> str:
    """The name of the graph input at ``level`` (``P3_in`` for level 3)."""
    return f"P{level}_in"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NodeOptions(_Frozen):
    """Choices a node may override; unset ones come from the spec's ``defaults``."""

    fusion: StrictStr | None = None
    op: StrictStr | None = None
    act: StrictStr | None = None


class Defaults(_Frozen):
    """Per-spec defaults for every node and edge."""

    fusion: StrictStr = "fast_normalized"
    op: StrictStr = "sep_conv"
    act: StrictStr = "swish"
    downsample: StrictStr = "max_pool"
    upsample: StrictStr = "nearest"


class InputRef(_Frozen):
    """An input edge with its own resampling, e.g. ``{src: P4_in, downsample: avg_pool}``."""

    src: Name
    downsample: StrictStr | None = None
    upsample: StrictStr | None = None


class NodeSpec(NodeOptions):
    """A node: fuses its inputs at ``level``, then applies its op."""

    id: Name
    level: Level
    inputs: tuple[Union[Name, InputRef], ...] = ()


class EdgeSpec(_Frozen):
    """An edge given in the ``edges:`` list instead of a node's ``inputs``."""

    src: Name
    dst: Name
    downsample: StrictStr | None = None
    upsample: StrictStr | None = None


class PassCall(_Frozen):
    """An analysis pass and its arguments, e.g. ``{name: repeat, n: 3}``."""

    model_config = ConfigDict(frozen=True, extra="allow")
    name: Name


class DeriveSpec(_Frozen):
    """This spec is another graph after a list of passes."""

    from_: StrictStr = Field(alias="from", min_length=1)
    passes: tuple[Union[Name, PassCall], ...] = ()


class GraphSpec(_Frozen):
    """A feature network: input levels, named nodes, edges by name, outputs by level."""

    name: Name
    description: StrictStr = ""
    levels: tuple[Level, Level] | None = Field(
        default=None, description="inclusive [min, max] of the pyramid's levels, e.g. [3, 7]"
    )
    inputs: tuple[Level, ...] | None = Field(
        default=None,
        description="the levels that have a graph input P{k}_in, ascending, e.g. [3, 5]; "
        "default: every level of `levels`",
    )
    defaults: Defaults = Defaults()
    nodes: tuple[NodeSpec, ...] = Field(default=(), max_length=MAX_NODES)
    edges: tuple[EdgeSpec, ...] = Field(default=(), max_length=8 * MAX_NODES)
    outputs: dict[Level, Name] = Field(default_factory=dict)
    repeat: Annotated[StrictInt, Field(ge=1, le=MAX_REPEAT)] = 1
    derive: DeriveSpec | None = None

    def pass_calls(self) -> tuple[tuple[str, dict], ...]:
        """``derive.passes`` as (name, arguments) pairs."""
        if self.derive is None:
            return ()
        out = []
        for p in self.derive.passes:
            if isinstance(p, str):
                out.append((p, {}))
            else:
                out.append((p.name, dict(p.model_extra or {})))
        return tuple(out)

