"""The values `inspect.graph` returns: nodes, edges, clusters and the `Graph` that holds them.

Queries (`Graph.find`, `Graph.fan_out`) live here; drawing is in `funcgrad.inspect.render`.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Literal

from funcgrad.inspect import render

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


@dataclasses.dataclass(frozen=True)
class Graph:
    """A computation graph: nodes, edges and the clusters of expanded sub-computations.

    Example:
      >>> import jax.numpy as jnp
      >>> from funcgrad import inspect
      >>> g = inspect.graph(lambda w, x: jnp.sum(x @ w) + jnp.sum(w * w), jnp.ones(3), jnp.ones((2, 3)))
      >>> [n.op for n in g.nodes if n.kind == "op"]
      ['dot_general', 'reduce_sum', 'mul', 'reduce_sum', 'add']
      >>> g.fan_out()  # w feeds dot_general once and mul twice: its gradients add up
      {'in0': 3}
    """

    name: str
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    clusters: tuple[Cluster, ...] = ()
    backward: bool = False

    def node(self, node_id: str) -> Node:
        """The node with this id."""
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(f"graph '{self.name}' has no node '{node_id}'")

    def find(self, op: str | None = None, *, scope: str | None = None) -> list[Node]:
        """Nodes whose ``op`` equals ``op`` and whose scope contains ``scope`` (either may be left out)."""
        return [
            n
            for n in self.nodes
            if (op is None or n.op == op) and (scope is None or scope in n.scope)
        ]

    def fan_out(self) -> dict[str, int]:
        """Nodes whose value is used more than once, with the number of uses.

        In the backward pass the gradients of these uses add up: the seeds' shared weights.
        """
        outputs = {n.id for n in self.nodes if n.kind == "output"}
        uses = Counter(e.src for e in self.edges if e.dst not in outputs)
        return {k: v for k, v in uses.items() if v > 1}

    # -- renderings (funcgrad.inspect.render) ------------------------------------------------

    def to_text(self) -> str:
        """An indented listing, one node per line, operands after ``←`` (see `render.to_text`)."""
        return render.to_text(self)

    def to_dot(self) -> str:
        """The graph in Graphviz's DOT language (see `render.to_dot`)."""
        return render.to_dot(self)

    def to_svg(self) -> str:
        """The picture as SVG text, drawn by Graphviz's ``dot`` (which must be installed)."""
        return render.run_dot(self.to_dot(), "svg").decode()

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the graph to ``path``: ``.svg``, ``.png`` or ``.pdf`` through Graphviz, ``.dot`` or ``.txt`` as text.

        The file appears whole or not at all (written beside it, then renamed).
        """
        path = Path(path)
        fmt = path.suffix.lower().lstrip(".")
        if fmt in ("dot", "gv"):
            data = self.to_dot().encode()
        elif fmt == "txt":
            data = (self.to_text() + "\n").encode()
        elif fmt in ("svg", "png", "pdf"):
            data = render.run_dot(self.to_dot(), fmt)
        else:
            raise ValueError(
                f"Graph.save: unknown file type '{path.suffix}' in {str(path)!r}; "
                "use .svg, .png, .pdf, .dot or .txt"
            )
        fd, tmp = tempfile.mkstemp(dir=path.parent or ".", prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path
