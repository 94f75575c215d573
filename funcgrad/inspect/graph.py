"""The computation graph of a function, forward and backward, read from its jaxpr.

`graph` traces with `jax.make_jaxpr` (`capture`), marks and links the backward pass (`linking`), and
returns a `Graph`, which renders as text, DOT, and SVG/PNG through Graphviz (`render`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from funcgrad.errors import ConfigError, InputTypeError, ShapeError
from funcgrad.inspect._format import aval_str, trace
from funcgrad.inspect.capture import Capture, arg_labels, param_name, tree_labels
from funcgrad.inspect.graph_parts import Cluster, Edge, Node
from funcgrad.inspect.graph_types import Graph
from funcgrad.inspect.render import dot_program

__all__ = ["Cluster", "Edge", "Graph", "Node", "dot_program", "graph"]


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
        raise InputTypeError(f"inspect.graph: expected a function; got {type(fn).__name__}")
    if not isinstance(depth, int) or depth < 0:
        raise ConfigError(f"inspect.graph: depth must be an int >= 0; got {depth!r}")
    labels = arg_labels(fn, args)
    out_labels: list[str]
    if backward:
        nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
        bad = [i for i in nums if not 0 <= i < len(args)]
        if bad:
            raise ConfigError(
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
            "grad " + p for i in nums for p in tree_labels(args[i], param_name(fn, i))
        ]
    else:
        target = fn
    closed = trace(lambda: jax.make_jaxpr(target)(*args), name)
    flat_labels = [p for i, a in enumerate(args) for p in tree_labels(a, labels[i])]
    if not backward:
        out_labels = tree_labels(trace(lambda: jax.eval_shape(fn, *args), name), "out")
    builder = Capture(depth, backward)
    return builder.build(name, closed, flat_labels, out_labels)
