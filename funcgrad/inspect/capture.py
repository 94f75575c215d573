"""Reading a traced function: a closed jaxpr walked into `Graph` nodes, edges and clusters.

Sub-computations (jits, registered primitives, loop bodies) are expanded to a given depth; gradient
graphs mark their backward nodes and link them to forward ones (`funcgrad.inspect.linking`).
"""

from __future__ import annotations

import dataclasses
import inspect as pyinspect
import os
from collections import Counter
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend import core as jcore

from funcgrad.inspect._format import aval_str
from funcgrad.inspect.graph_parts import Cluster, Edge, Node, Phase
from funcgrad.inspect.graph_types import Graph
from funcgrad.inspect.linking import in_derivative, link_backward
from funcgrad.paths import leaves_with_paths

# Sub-computations that take and return their operands one to one; expanding one inlines it.
_CALLS = {"pjit", "jit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
          "custom_vjp_call_jaxpr", "remat", "checkpoint", "custom_lin"}  # fmt: skip
_JAX_DIRS = tuple(os.path.dirname(m.__file__ or "") + os.sep for m in (jax, jcore))


def param_name(fn: Callable[..., Any], i: int) -> str:
    """The name of ``fn``'s positional parameter ``i``, or ``args[i]``.

    Example:
      >>> from funcgrad.inspect.capture import param_name
      >>> param_name(lambda w, x: None, 1)
      'x'
    """
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


def arg_labels(fn: Callable[..., Any], args: tuple[Any, ...]) -> list[str]:
    """The parameter name of each argument in ``args``."""
    return [param_name(fn, i) for i in range(len(args))]


def tree_labels(tree: Any, root: str) -> list[str]:
    """Each leaf of ``tree`` named by its path under ``root``.

    Example:
      >>> from funcgrad.inspect.capture import tree_labels
      >>> tree_labels({"w": 1.0, "b": 2.0}, "params")
      ['params.b', 'params.w']
    """
    return [".".join(p for p in (root, name) if p) for name, _ in leaves_with_paths(tree)]


def _source(eqn: Any) -> str:
    tb = getattr(eqn.source_info, "traceback", None)
    for frame in getattr(tb, "frames", ()):
        if not frame.file_name.startswith(_JAX_DIRS):
            return f"{os.path.basename(frame.file_name)}:{frame.line_num}"
    return ""


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


class Capture:
    """Walks a closed jaxpr into the nodes, edges and clusters of a `Graph`."""

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
        if self.backward:
            self.nodes = link_backward(self.nodes)
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
        if self.backward and in_derivative(scope):
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


def _literal(val: Any) -> str:
    try:
        return f"{float(val):g}" if jnp.ndim(val) == 0 else "array"
    except (TypeError, ValueError):
        return str(val)
