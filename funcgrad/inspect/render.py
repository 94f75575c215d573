"""Drawing a `Graph`: an indented text listing, Graphviz DOT, and pictures through Graphviz's ``dot``.

The `Graph` methods ``to_text``, ``to_dot``, ``to_svg`` and ``save`` call these.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import defaultdict
from collections.abc import Sequence
from typing import Protocol

from funcgrad.errors import MissingToolError, ToolFailedError
from funcgrad.inspect.graph_parts import Cluster, Edge, Node


class Graph(Protocol):
    """What drawing reads of a `funcgrad.inspect.Graph` (which imports this module to draw itself,
    so the class itself is not imported here)."""

    @property
    def name(self) -> str: ...
    @property
    def nodes(self) -> Sequence[Node]: ...
    @property
    def edges(self) -> Sequence[Edge]: ...
    @property
    def clusters(self) -> Sequence[Cluster]: ...
    @property
    def backward(self) -> bool: ...
    def fan_out(self) -> dict[str, int]: ...


GRAPHVIZ_HELP = (
    "Graphviz's `dot` program was not found on PATH. Install it (no root needed: "
    "`pip install graphviz-pure`; Debian/Ubuntu: `apt-get install graphviz`; macOS: "
    "`brew install graphviz`; conda: `conda install graphviz`), or use Graph.to_dot() and "
    "render the text elsewhere."
)


def to_text(g: Graph) -> str:
    """An indented listing, one node per line, operands after ``←``.

    Example:
      >>> import jax.numpy as jnp
      >>> from funcgrad import inspect
      >>> print(inspect.graph(lambda x: jnp.sin(x) * 2.0, jnp.ones(2, jnp.float32)).to_text())
      graph <lambda>: 4 nodes, 3 edges
        in0   input  x  f32[2]
        n0    sin  f32[2]  ← in0
        n1    mul 2  f32[2]  ← n0
        out0  output  out  f32[2]  ← n1
    """
    fan = g.fan_out()
    operands: dict[str, list[str]] = defaultdict(list)
    for e in g.edges:
        operands[e.dst].append(e.src if e.index == 0 else f"{e.src}.{e.index}")
    label = {c.id: c.label for c in g.clusters}
    width = max((len(n.id) for n in g.nodes), default=2)
    lines = [f"graph {g.name}: {len(g.nodes)} nodes, {len(g.edges)} edges"]
    parent = {c.id: c.parent for c in g.clusters}
    depth: dict[str | None, int] = {None: -1}
    for cl in g.clusters:  # parents come before their children
        depth[cl.id] = depth[cl.parent] + 1
    phase: str | None = None
    opened: list[str] = []
    for n in g.nodes:
        if g.backward and n.kind in ("op", "call") and n.phase != phase:
            phase, opened = n.phase, []
            lines.append(f"  -- {phase} --")
        chain: list[str] = []
        c = n.cluster
        while c is not None:
            chain.insert(0, c)
            c = parent[c]
        for c in chain:
            if c not in opened:
                lines.append("  " * (depth[c] + 1) + f"[{label[c]}]")
        opened = chain
        indent = "  " * (depth[n.cluster] + 2 if n.cluster else 1)
        parts = [n.id.ljust(width), n.kind if n.kind in ("input", "const", "output") else ""]
        parts += [n.op + (f" {n.detail}" if n.detail else ""), " ".join(n.outputs)]
        if operands[n.id]:
            parts.append("← " + ", ".join(operands[n.id]))
        if n.scope:
            parts.append(f"[{n.scope}]")
        if n.forward:
            parts.append(f"(backward of {n.forward})")
        if n.id in fan:
            parts.append(f"fan-out ×{fan[n.id]}")
        lines.append(indent + "  ".join(p for p in parts if p))
    return "\n".join(lines)


def to_dot(g: Graph) -> str:
    """The graph in Graphviz's DOT language; fan-out values and their edges are drawn in red.

    With ``backward=True`` the forward and backward passes are two columns, and dashed
    grey lines join each backward node to the forward node it comes from.
    """
    fan = g.fan_out()
    out = [
        f"digraph {quote(g.name)} {{",
        '  graph [fontname="Helvetica", fontsize=11, newrank=true, nodesep=0.25, ranksep=0.3];',
        '  node [fontname="Helvetica", fontsize=10, shape=box, style="rounded,filled", '
        'fillcolor="#eef3fb", color="#4a6fa5"];',
        '  edge [color="#555555", arrowsize=0.6, fontname="Helvetica", fontsize=8];',
    ]
    children: dict[str | None, list[Cluster]] = defaultdict(list)
    for c in g.clusters:
        children[c.parent].append(c)
    cluster_phase = {n.cluster: n.phase for n in reversed(g.nodes) if n.kind in ("op", "call")}
    members: dict[tuple[str | None, str | None], list[Node]] = defaultdict(list)
    for n in g.nodes:
        phase = None
        if g.backward and n.kind in ("op", "call"):
            phase = n.phase
        elif g.backward and n.cluster is not None:
            phase = cluster_phase.get(n.cluster, "forward")
        members[(phase, n.cluster)].append(n)

    def occupied(cid: str, phase: str | None) -> bool:
        return bool(members.get((phase, cid))) or any(occupied(c.id, phase) for c in children[cid])

    def emit(phase: str | None, cluster: str | None, indent: str) -> None:
        for n in members.get((phase, cluster), []):
            out.append(indent + dot_node(n, fan.get(n.id, 0)))
        for c in children[cluster]:
            if occupied(c.id, phase):
                out.append(f"{indent}subgraph {quote(f'cluster_{phase}_{c.id}')} {{")
                out.append(
                    f'{indent}  label={quote(c.label)}; style="rounded,dashed"; color="#999999";'
                )
                emit(phase, c.id, indent + "  ")
                out.append(indent + "}")

    emit(None, None, "  ")
    if g.backward:
        for phase, fill in (("forward", "#f4f8ff"), ("backward", "#fff6ee")):
            out.append(f"  subgraph cluster_{phase} {{")
            out.append(
                f'    label="{phase} pass"; style=filled; color="{fill}"; fillcolor="{fill}";'
            )
            emit(phase, None, "    ")
            out.append("  }")
    kinds = {n.id: n.kind for n in g.nodes}
    for e in g.edges:
        attrs = []
        if e.src in fan:
            attrs = [
                'color="#d62728"',
                "penwidth=2" if kinds[e.src] == "input" else "penwidth=1.2",
            ]
        if e.index:
            attrs.append(f'label="{e.index}"')
        out.append(f"  {e.src} -> {e.dst}" + (f" [{', '.join(attrs)}]" if attrs else "") + ";")
    for n in g.nodes:
        if n.forward:
            out.append(
                f'  {n.id} -> {n.forward} [style=dashed, color="#cccccc", '
                "arrowhead=none, constraint=false];"
            )
    out.append("}")
    return "\n".join(out)


def escape(text: str) -> str:
    """``text`` safe inside a DOT double-quoted string.

    Example:
      >>> from funcgrad.inspect.render import escape
      >>> print(escape('a "b"'))
      a \\"b\\"
    """
    return text.replace("\\", "\\\\").replace('"', '\\"')


def quote(text: str) -> str:
    """``text`` as a DOT double-quoted string.

    Example:
      >>> from funcgrad.inspect.render import quote
      >>> quote("dense_0")
      '"dense_0"'
    """
    return '"' + escape(text) + '"'


def dot_node(n: Node, fan: int) -> str:
    """One node's DOT statement: label, shape and colours by kind and phase, red when it fans out."""
    head = n.op + (f" {n.detail}" if n.detail else "")
    attrs = [f'label="{escape(head)}\\n{escape(" ".join(n.outputs))}"']
    if n.kind == "input":
        attrs += ["shape=ellipse", 'fillcolor="#dbe9ff"']
    elif n.kind == "const":
        attrs += ["shape=plaintext", 'style=""', 'fontcolor="#777777"']
    elif n.kind == "output":
        attrs += ["shape=ellipse", 'fillcolor="#e3f4e1"', 'color="#3c8d2f"']
    elif n.kind == "call":
        attrs += ["shape=box3d", 'style="filled"']
    if n.phase == "backward" and n.kind in ("op", "call"):
        attrs += ['fillcolor="#ffe9d6"', 'color="#c76b1e"']
    if fan:
        attrs += [
            'color="#d62728"',
            "penwidth=2",
            f'xlabel="fan-out ×{fan}"',
            'fontcolor="#000000"',
        ]
    if n.scope:
        attrs.append(f"tooltip={quote(n.scope + (' ' + n.source if n.source else ''))}")
    return f"{n.id} [{', '.join(attrs)}];"


def dot_program() -> str | None:
    """Graphviz's ``dot`` on PATH, else graphviz-pure's ``graphviz-pure`` (PyPI, no root needed)
    on PATH or next to this Python (an unactivated virtualenv); ``None`` if neither is there.

    Example:
      >>> from funcgrad.inspect.graph import dot_program
      >>> dot_program() is None or dot_program().endswith(("dot", "graphviz-pure"))
      True
    """
    here = os.path.join(os.path.dirname(sys.executable), "graphviz-pure")
    return shutil.which("dot") or shutil.which("graphviz-pure") or shutil.which(here)


def run_dot(dot: str, fmt: str) -> bytes:
    """Graphviz's ``dot -T{fmt}`` on DOT text; a MissingToolError that says how to install it,
    a ToolFailedError with dot's own message if it fails."""
    exe = dot_program()
    if exe is None:
        raise MissingToolError(GRAPHVIZ_HELP)
    done = subprocess.run(
        [exe, f"-T{fmt}"], input=dot.encode(), capture_output=True, check=False, timeout=120
    )
    if done.returncode != 0:
        raise ToolFailedError(
            f"Graphviz's dot failed ({done.returncode}): {done.stderr.decode().strip()}"
        )
    return done.stdout
