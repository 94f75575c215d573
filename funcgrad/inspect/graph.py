"""The computation graph of a function, forward and backward, read from its jaxpr.

`graph` traces with `jax.make_jaxpr`; `Graph` renders as text, DOT, and SVG/PNG through Graphviz.
"""

from __future__ import annotations

import dataclasses
import inspect as pyinspect
import os
import re
import shutil
import subprocess
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
from jax.extend import core as jcore

from funcgrad.errors import MissingToolError, ShapeError
from funcgrad.inspect._format import aval_str, trace
from funcgrad.primitives.registry import split_rule_scope

Kind = Literal["input", "const", "op", "call", "output"]
Phase = Literal["forward", "backward"]

# Sub-computations that take and return their operands one to one; expanding one inlines it.
_CALLS = {"pjit", "jit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
          "custom_vjp_call_jaxpr", "remat", "checkpoint", "custom_lin"}  # fmt: skip
_JAX_DIRS = tuple(os.path.dirname(m.__file__ or "") + os.sep for m in (jax, jcore))
_GRAPHVIZ_HELP = (
    "Graphviz's `dot` program was not found on PATH. Install it (Debian/Ubuntu: "
    "`apt-get install graphviz`; macOS: `brew install graphviz`; conda: `conda install "
    "graphviz`), or use Graph.to_dot() and render the text elsewhere."
)


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

    # -- renderings -------------------------------------------------------------------------

    def to_text(self) -> str:
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
        fan = self.fan_out()
        operands: dict[str, list[str]] = defaultdict(list)
        for e in self.edges:
            operands[e.dst].append(e.src if e.index == 0 else f"{e.src}.{e.index}")
        label = {c.id: c.label for c in self.clusters}
        width = max((len(n.id) for n in self.nodes), default=2)
        lines = [f"graph {self.name}: {len(self.nodes)} nodes, {len(self.edges)} edges"]
        parent = {c.id: c.parent for c in self.clusters}
        depth: dict[str | None, int] = {None: -1}
        for cl in self.clusters:  # parents come before their children
            depth[cl.id] = depth[cl.parent] + 1
        phase: str | None = None
        opened: list[str] = []
        for n in self.nodes:
            if self.backward and n.kind in ("op", "call") and n.phase != phase:
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

    def to_dot(self) -> str:
        """The graph in Graphviz's DOT language; fan-out values and their edges are drawn in red.

        With ``backward=True`` the forward and backward passes are two columns, and dashed
        grey lines join each backward node to the forward node it comes from.
        """
        fan = self.fan_out()
        out = [
            f"digraph {_quote(self.name)} {{",
            '  graph [fontname="Helvetica", fontsize=11, newrank=true, nodesep=0.25, ranksep=0.3];',
            '  node [fontname="Helvetica", fontsize=10, shape=box, style="rounded,filled", '
            'fillcolor="#eef3fb", color="#4a6fa5"];',
            '  edge [color="#555555", arrowsize=0.6, fontname="Helvetica", fontsize=8];',
        ]
        children: dict[str | None, list[Cluster]] = defaultdict(list)
        for c in self.clusters:
            children[c.parent].append(c)
        cluster_phase = {
            n.cluster: n.phase for n in reversed(self.nodes) if n.kind in ("op", "call")
        }
        members: dict[tuple[str | None, str | None], list[Node]] = defaultdict(list)
        for n in self.nodes:
            phase = None
            if self.backward and n.kind in ("op", "call"):
                phase = n.phase
            elif self.backward and n.cluster is not None:
                phase = cluster_phase.get(n.cluster, "forward")
            members[(phase, n.cluster)].append(n)

        def occupied(cid: str, phase: str | None) -> bool:
            return bool(members.get((phase, cid))) or any(
                occupied(c.id, phase) for c in children[cid]
            )

        def emit(phase: str | None, cluster: str | None, indent: str) -> None:
            for n in members.get((phase, cluster), []):
                out.append(indent + _dot_node(n, fan.get(n.id, 0)))
            for c in children[cluster]:
                if occupied(c.id, phase):
                    out.append(f"{indent}subgraph {_quote(f'cluster_{phase}_{c.id}')} {{")
                    out.append(
                        f'{indent}  label={_quote(c.label)}; style="rounded,dashed"; color="#999999";'
                    )
                    emit(phase, c.id, indent + "  ")
                    out.append(indent + "}")

        emit(None, None, "  ")
        if self.backward:
            for phase, fill in (("forward", "#f4f8ff"), ("backward", "#fff6ee")):
                out.append(f"  subgraph cluster_{phase} {{")
                out.append(
                    f'    label="{phase} pass"; style=filled; color="{fill}"; fillcolor="{fill}";'
                )
                emit(phase, None, "    ")
                out.append("  }")
        kinds = {n.id: n.kind for n in self.nodes}
        for e in self.edges:
            attrs = []
            if e.src in fan:
                attrs = [
                    'color="#d62728"',
                    "penwidth=2" if kinds[e.src] == "input" else "penwidth=1.2",
                ]
            if e.index:
                attrs.append(f'label="{e.index}"')
            out.append(f"  {e.src} -> {e.dst}" + (f" [{', '.join(attrs)}]" if attrs else "") + ";")
        for n in self.nodes:
            if n.forward:
                out.append(
                    f'  {n.id} -> {n.forward} [style=dashed, color="#cccccc", '
                    "arrowhead=none, constraint=false];"
                )
        out.append("}")
        return "\n".join(out)

    def to_svg(self) -> str:
        """The picture as SVG text, drawn by Graphviz's ``dot`` (which must be installed)."""
        return _run_dot(self.to_dot(), "svg").decode()

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
            data = _run_dot(self.to_dot(), fmt)
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


def graph(
    fn: Callable[..., Any],
    *args: Any,
    backward: bool = False,
    argnums: int | Sequence[int] = 0,
    depth: int = 0,
) -> Graph:
    """The computation graph of ``fn(*args)``, traced with `jax.make_jaxpr`.

    Args:
      fn: any JAX-traceable function.
      *args: example arguments (arrays, pytrees of arrays, or `jax.ShapeDtypeStruct`).
      backward: graph the gradient computation instead: ``jax.value_and_grad(fn, argnums)``,
        its forward and backward nodes marked, and each backward node linked to the forward
        node it comes from where the source line and layer scope tell. ``fn`` must return a
        scalar.
      argnums: the arguments differentiated when ``backward`` is set, as in `jax.grad`.
      depth: how many levels of sub-computations (jits, registered primitives, scan bodies)
        to expand; ``0`` shows each as one node.

    Inputs are named by their path: ``params['dense_0']['w']``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import funcgrad as fg
      >>> from funcgrad import inspect
      >>> def loss(w, x):
      ...     return jnp.sum(fg.sigmoid(x @ w))
      >>> g = inspect.graph(loss, jnp.ones(3), jnp.ones((4, 3)), backward=True)
      >>> [n.op for n in g.nodes if n.kind == "output"]
      ['value', 'grad w']
      >>> len(g.find(scope="sigmoid.backward")) > 0
      True
    """
    name = getattr(fn, "__name__", type(fn).__name__)
    if not callable(fn):
        raise TypeError(f"inspect.graph: expected a function; got {type(fn).__name__}")
    if not isinstance(depth, int) or depth < 0:
        raise ValueError(f"inspect.graph: depth must be an int >= 0; got {depth!r}")
    labels = _arg_labels(fn, args)
    out_labels: list[str]
    if backward:
        nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
        bad = [i for i in nums if not 0 <= i < len(args)]
        if bad:
            raise ValueError(
                f"inspect.graph: argnums {bad} out of range for {len(args)} argument(s) of {name}"
            )
        out = trace(lambda: jax.eval_shape(fn, *args), name)
        leaves = jax.tree.leaves(out)
        if (
            len(leaves) != 1
            or leaves[0].shape != ()
            or not jnp.issubdtype(leaves[0].dtype, jnp.floating)
        ):
            got = ", ".join(aval_str(x) for x in leaves) or "nothing"
            raise ShapeError(
                f"inspect.graph(backward=True): {name} must return one float scalar (a loss) "
                f"to be differentiated; it returns {got}"
            )
        target = jax.value_and_grad(fn, argnums=argnums)
        out_labels = ["value"] + [
            "grad " + p for i in nums for p in _tree_labels(args[i], _param_name(fn, i))
        ]
    else:
        target = fn
    closed = trace(lambda: jax.make_jaxpr(target)(*args), name)
    flat_labels = [p for i, a in enumerate(args) for p in _tree_labels(a, labels[i])]
    if not backward:
        out_labels = _tree_labels(trace(lambda: jax.eval_shape(fn, *args), name), "out")
    builder = _Builder(depth, backward)
    return builder.build(name, closed, flat_labels, out_labels)


# -- tracing -----------------------------------------------------------------------------------


def _param_name(fn: Callable[..., Any], i: int) -> str:
    try:
        params = [
            p.name
            for p in pyinspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
        ]
    except (TypeError, ValueError):
        params = []
    if i < len(params) and not (i == len(params) - 1 and params[-1] == "args"):
        return params[i]
    return f"args[{i}]"


def _arg_labels(fn: Callable[..., Any], args: tuple[Any, ...]) -> list[str]:
    return [_param_name(fn, i) for i in range(len(args))]


def _tree_labels(tree: Any, root: str) -> list[str]:
    paths, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [root + jax.tree_util.keystr(p) for p, _ in paths]


def _source(eqn: Any) -> str:
    tb = getattr(eqn.source_info, "traceback", None)
    for frame in getattr(tb, "frames", ()):
        if not frame.file_name.startswith(_JAX_DIRS):
            return f"{os.path.basename(frame.file_name)}:{frame.line_num}"
    return ""


def _strip(scope: str) -> str:
    """``transpose(jvp(dense_0))/jvp(sigmoid.backward)`` → ``dense_0/sigmoid``."""
    parts: list[str] = []
    for part in scope.split("/"):
        while (m := re.fullmatch(r"[\w.]+\((.*)\)", part)) is not None:
            part = m.group(1)
        part = split_rule_scope(part)[0]
        if part and (not parts or parts[-1] != part):
            parts.append(part)
    return "/".join(parts)


def _in_derivative(scope: str) -> bool:
    """Does a name stack lie inside a transpose or a primitive's derivative rule?"""
    if scope.startswith("transpose("):
        return True
    return any(split_rule_scope(part)[1] is not None for part in re.split(r"[/()]", scope))


def _call_label(eqn: Any) -> str:
    name = eqn.primitive.name
    p = eqn.params
    if name in ("pjit", "jit"):
        return str(p.get("name", name))
    if name.startswith("custom_"):
        inner = p.get("call_jaxpr") or p.get("fun_jaxpr")
        info = getattr(getattr(inner, "jaxpr", inner), "debug_info", None)
        src = getattr(info, "func_src_info", None) or ""
        return src.split(" at ")[0] or name
    if name == "scan":
        return f"scan ×{p.get('length')}"
    return name


def _detail(eqn: Any) -> str:
    keep = {"y", "axes", "new_sizes", "dimensions", "permutation", "window_dimensions",
            "window_strides", "feature_group_count", "length"}  # fmt: skip
    shown = [f"{k}={v}" for k, v in eqn.params.items() if k in keep and v not in (None, ())]
    return " ".join(shown)


class _Builder:
    def __init__(self, depth: int, backward: bool) -> None:
        self.depth = depth
        self.backward = backward
        self.nodes: list[Node] = []
        self.edges: list[Edge] = []
        self.clusters: list[Cluster] = []
        self.count = Counter[str]()

    def _id(self, prefix: str) -> str:
        i = self.count[prefix]
        self.count[prefix] += 1
        return f"{prefix}{i}"

    def _add(self, node: Node) -> Node:
        self.nodes.append(node)
        return node

    def build(self, name: str, closed: Any, inputs: list[str], outputs: list[str]) -> Graph:
        env: dict[Any, tuple[str, int]] = {}
        jaxpr = closed.jaxpr
        self._consts(jaxpr.constvars, env, None)
        for v, label in zip(jaxpr.invars, inputs, strict=True):
            env[v] = (self._add(Node(self._id("in"), "input", label, (aval_str(v.aval),))).id, 0)
        self._body(jaxpr, env, None, 0)
        for v, label in zip(jaxpr.outvars, outputs, strict=True):
            node = self._add(Node(self._id("out"), "output", label, (aval_str(v.aval),)))
            self._operand(v, env, node.id)
        self._link_backward()
        return Graph(
            name, tuple(self.nodes), tuple(self.edges), tuple(self.clusters), self.backward
        )

    def _operand(self, atom: Any, env: dict[Any, tuple[str, int]], dst: str) -> str | None:
        """Draw the edge for one operand; a literal comes back as text for the node's label."""
        if isinstance(atom, jcore.Literal):
            return _literal(atom.val)
        src, index = env[atom]
        self.edges.append(Edge(src, dst, index))
        return None

    def _value(
        self, atom: Any, env: dict[Any, tuple[str, int]], cluster: str | None
    ) -> tuple[str, int]:
        if isinstance(atom, jcore.Literal):
            node = self._add(
                Node(
                    self._id("c"),
                    "const",
                    _literal(atom.val),
                    (aval_str(atom.aval),),
                    cluster=cluster,
                )
            )
            return node.id, 0
        return env[atom]

    def _body(
        self, jaxpr: Any, env: dict[Any, tuple[str, int]], cluster: str | None, level: int
    ) -> None:
        for eqn in jaxpr.eqns:
            self._eqn(eqn, env, cluster, level)

    def _eqn(
        self, eqn: Any, env: dict[Any, tuple[str, int]], cluster: str | None, level: int
    ) -> None:
        subs = [j for j in jcore.jaxprs_in_params(eqn.params)]
        name = eqn.primitive.name
        scope = str(eqn.source_info.name_stack)
        phase: Phase = "forward"
        if self.backward and _in_derivative(scope):
            phase = "backward"
        expand = subs and level < self.depth
        if expand and name in _CALLS and len(subs) == 1:
            cid = self._cluster(_call_label(eqn), cluster)
            inner = subs[0]
            inner_env = dict(
                zip(
                    inner.invars,
                    (self._value(a, env, cluster) for a in eqn.invars[-len(inner.invars) :]),
                    strict=True,
                )
            )
            self._consts(inner.constvars, inner_env, cid)
            self._body(inner, inner_env, cid, level + 1)
            for outer, res in zip(eqn.outvars, inner.outvars, strict=True):
                env[outer] = self._value(res, inner_env, cid)
            return
        node = Node(
            self._id("n"),
            "call" if subs else "op",
            _call_label(eqn) if subs else name,
            tuple(aval_str(v.aval) for v in eqn.outvars),
            scope,
            _source(eqn),
            cluster,
            phase,
        )
        literals = [t for a in eqn.invars if (t := self._operand(a, env, node.id)) is not None]
        detail = " ".join([*literals, _detail(eqn)]).strip()
        self._add(dataclasses.replace(node, detail=detail))
        for i, v in enumerate(eqn.outvars):
            if not isinstance(v, jcore.DropVar):
                env[v] = (node.id, i)
        if expand:
            self._expand_control(eqn, subs, env, node, level)

    def _expand_control(
        self, eqn: Any, subs: list[Any], env: dict[Any, tuple[str, int]], node: Node, level: int
    ) -> None:
        """A loop or branch: its bodies as clusters fed by the operands, feeding the node."""
        operands = list(eqn.invars)
        p = eqn.params
        for k, inner in enumerate(subs):
            if eqn.primitive.name == "while":
                nc, nb = p["cond_nconsts"], p["body_nconsts"]
                carry = operands[nc + nb :]
                ins = operands[:nc] + carry if k == 0 else operands[nc : nc + nb] + carry
            else:
                ins = operands[-len(inner.invars) :] if inner.invars else []
            label = f"{node.op} {'cond' if eqn.primitive.name == 'while' and k == 0 else 'body'}"
            if eqn.primitive.name == "cond":
                label = f"cond branch {k}"
            cid = self._cluster(label, node.cluster)
            inner_env = dict(
                zip(inner.invars, (self._value(a, env, node.cluster) for a in ins), strict=True)
            )
            self._consts(inner.constvars, inner_env, cid)
            self._body(inner, inner_env, cid, level + 1)
            for v in inner.outvars:
                src, index = self._value(v, inner_env, cid)
                self.edges.append(Edge(src, node.id, index))

    def _consts(self, names: Any, env: dict[Any, tuple[str, int]], cluster: str | None) -> None:
        for v in names:
            node = Node(self._id("c"), "const", "const", (aval_str(v.aval),), cluster=cluster)
            env[v] = (self._add(node).id, 0)

    def _cluster(self, label: str, parent: str | None) -> str:
        cid = self._id("k")
        self.clusters.append(Cluster(cid, label, parent))
        return cid

    def _link_backward(self) -> None:
        if not self.backward:
            return
        # A transposed operation keeps the source line of the one it transposes; a primitive's
        # backward rule keeps the primitive's scope. Match on both, else on the scope alone.
        by_line: dict[tuple[str, str], list[Node]] = defaultdict(list)
        by_scope: dict[str, list[Node]] = defaultdict(list)
        for n in self.nodes:
            if n.kind in ("op", "call") and n.phase == "forward":
                by_line[(n.source, _strip(n.scope))].append(n)
                by_scope[_strip(n.scope)].append(n)
        for i, n in enumerate(self.nodes):
            if n.phase != "backward":
                continue
            scope = _strip(n.scope)
            candidates = (by_line.get((n.source, scope)) if n.source else None) or (
                by_scope.get(scope, []) if scope else []
            )
            if candidates:
                same = [c for c in candidates if c.op == n.op]
                self.nodes[i] = dataclasses.replace(n, forward=(same or candidates)[-1].id)


def _literal(val: Any) -> str:
    try:
        return f"{float(val):g}" if jnp.ndim(val) == 0 else "array"
    except (TypeError, ValueError):
        return str(val)


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _quote(text: str) -> str:
    return '"' + _escape(text) + '"'


def _dot_node(n: Node, fan: int) -> str:
    head = n.op + (f" {n.detail}" if n.detail else "")
    attrs = [f'label="{_escape(head)}\\n{_escape(" ".join(n.outputs))}"']
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
        attrs.append(f"tooltip={_quote(n.scope + (' ' + n.source if n.source else ''))}")
    return f"{n.id} [{', '.join(attrs)}];"


def _run_dot(dot: str, fmt: str) -> bytes:
    exe = shutil.which("dot")
    if exe is None:
        raise MissingToolError(_GRAPHVIZ_HELP)
    done = subprocess.run(
        [exe, f"-T{fmt}"], input=dot.encode(), capture_output=True, check=False, timeout=120
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"Graphviz's dot failed ({done.returncode}): {done.stderr.decode().strip()}"
        )
    return done.stdout
