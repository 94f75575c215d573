"""The parts of a traced computation's graph: its nodes, edges and clusters.

`funcgrad.inspect.graph_types.Graph` holds them; `funcgrad.inspect.render` draws them.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

Kind = Literal["input", "const", "op", "call", "output"]
Phase = Literal["forward", "backward"]


@dataclasses.dataclass(frozen=True)
class Node:
    """One operation (or input, constant, output) of a traced function.

    Attributes:
      id: unique within the graph (``in0``, ``n12``, ``out1``).
      kind: ``input``, ``const``, ``op``, ``call`` (a sub-computation shown as one node) or ``output``.
      op: the JAX primitive (``dot_general``), the call's name (``sigmoid``), or the input's path.
      outputs: the values it makes, as jaxprs write them (``f32[4,3]``).
      scope: the name stack: layer paths (``dense_0``), primitives (``sigmoid``, ``sigmoid.backward``)
        and transformations (``transpose(jvp(dense_0))``).
      source: ``file.py:line`` of the user code that made it, when known.
      cluster: the id of the expanded sub-computation it sits in, or ``None``.
      phase: ``forward`` or ``backward`` (graphs of a gradient); ``forward`` otherwise.
      forward: for a backward node, the id of the forward node it comes from, where known.
      detail: literals and parameters worth showing (``y=2``, ``0.5``).
    """

    id: str
    kind: Kind
    op: str
    outputs: tuple[str, ...]
    scope: str = ""
    source: str = ""
    cluster: str | None = None
    phase: Phase = "forward"
    forward: str | None = None
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class Edge:
    """Value ``index`` of node ``src`` is an operand of node ``dst``."""

    src: str
    dst: str
    index: int = 0


@dataclasses.dataclass(frozen=True)
class Cluster:
    """An expanded sub-computation (a jit, a custom rule, a scan body), drawn as a box of nodes."""

    id: str
    label: str
    parent: str | None
