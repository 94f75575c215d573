"""Which forward node each backward node of a gradient graph comes from, read from name scopes and source lines.

A transposed operation keeps the source line of the one it transposes; a primitive's backward rule runs
under ``NAME.backward`` (`funcgrad.primitives.registry.rule_scope`).
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict

from funcgrad.inspect.graph_parts import Node
from funcgrad.primitives.registry import split_rule_scope


def strip_scope(scope: str) -> str:
    """A name stack without its transformations and rule suffixes.

    Example:
      >>> from funcgrad.inspect.linking import strip_scope
      >>> strip_scope("transpose(jvp(dense_0))/jvp(sigmoid.backward)")
      'dense_0/sigmoid'
    """
    parts: list[str] = []
    for part in scope.split("/"):
        while (m := re.fullmatch(r"[\w.]+\((.*)\)", part)) is not None:
            part = m.group(1)
        part = split_rule_scope(part)[0]
        if part and (not parts or parts[-1] != part):
            parts.append(part)
    return "/".join(parts)


def in_derivative(scope: str) -> bool:
    """Does a name stack lie inside a transpose or a primitive's derivative rule?

    Example:
      >>> from funcgrad.inspect.linking import in_derivative
      >>> in_derivative("dense_0/jvp(sigmoid.backward)"), in_derivative("dense_0/sigmoid")
      (True, False)
    """
    if scope.startswith("transpose("):
        return True
    return any(split_rule_scope(part)[1] is not None for part in re.split(r"[/()]", scope))


def link_backward(nodes: list[Node]) -> list[Node]:
    """``nodes`` with each backward node's ``forward`` set to the forward node it comes from."""
    # A transposed operation keeps the source line of the one it transposes; a primitive's
    # backward rule keeps the primitive's scope. Match on both, else on the scope alone.
    by_line: dict[tuple[str, str], list[Node]] = defaultdict(list)
    by_scope: dict[str, list[Node]] = defaultdict(list)
    for n in nodes:
        if n.kind in ("op", "call") and n.phase == "forward":
            by_line[(n.source, strip_scope(n.scope))].append(n)
            by_scope[strip_scope(n.scope)].append(n)
    for i, n in enumerate(nodes):
        if n.phase != "backward":
            continue
        scope = strip_scope(n.scope)
        candidates = (by_line.get((n.source, scope)) if n.source else None) or (
            by_scope.get(scope, []) if scope else []
        )
        if candidates:
            same = [c for c in candidates if c.op == n.op]
            nodes[i] = dataclasses.replace(n, forward=(same or candidates)[-1].id)
    return nodes
