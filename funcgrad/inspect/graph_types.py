"""The value `inspect.graph` returns: a `Graph` of nodes, edges and clusters.

Queries (`Graph.find`, `Graph.fan_out`) live here; drawing is in `funcgrad.inspect.render`.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from pathlib import Path

from funcgrad.errors import ConfigError, UnknownNameError
from funcgrad.inspect import render
from funcgrad.inspect.graph_parts import Cluster, Edge, Node
from funcgrad.io import write_atomic


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
        raise UnknownNameError(
            f"graph '{self.name}' has no node '{node_id}'; its nodes are "
            + ", ".join(n.id for n in self.nodes)
        )

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

        The file appears whole or not at all (`funcgrad.io.write_atomic`: written beside it,
        fsynced, then renamed).
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
            raise ConfigError(
                f"Graph.save: unknown file type '{path.suffix}' in {str(path)!r}; "
                "use .svg, .png, .pdf, .dot or .txt"
            )
        write_atomic(path, data, mode=0o644)
        return path
