"""A model's layers as a table: key path, type, output shape, parameter count, bytes and dtype.

`summary` runs the model abstractly (`jax.eval_shape`): no arrays are computed or allocated.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from typing import Any

import jax
import jax.numpy as jnp

from funcgrad.errors import InputTypeError
from funcgrad.inspect._format import aval_str, human_bytes
from funcgrad.nn.activations import Elementwise
from funcgrad.nn.combinators import Repeat, Shared
from funcgrad.nn.layer import Layer, Path, as_spec
from funcgrad.nn.pool import Pool
from funcgrad.nn.precision import MixedPrecision
from funcgrad.nn.recording import Recorder, recording
from funcgrad.paths import dotted


@dataclasses.dataclass(frozen=True)
class Row:
    """One layer call: where it sits, what it is, what it makes and what it holds.

    ``params`` and ``bytes`` count the parameters this call receives: for a combinator, all of
    its children's; inside `nn.repeat`, one copy's (the repeat's own row has the stacked total).
    ``dtype`` and ``bytes`` are those of the parameters as stored; inside `nn.mixed_precision`
    the layer computes with them cast, in ``compute_dtype`` (empty when it is the stored one).
    """

    path: str
    layer: str
    output: str
    params: int
    bytes: int
    dtype: str
    depth: int
    shared: bool = False
    compute_dtype: str = ""


@dataclasses.dataclass(frozen=True)
class Summary:
    """The rows of a model in call order, with totals over the whole parameter tree."""

    rows: tuple[Row, ...]
    total_params: int
    total_bytes: int
    dtypes: dict[str, int]

    def to_text(self) -> str:
        """The table as aligned text with a totals line."""
        head = ("layer", "type", "output", "params", "bytes", "dtype")
        body = [
            (
                "  " * r.depth + (r.path or "(model)"),
                r.layer + (" (shared)" if r.shared else ""),
                r.output,
                f"{r.params:,}",
                human_bytes(r.bytes),
                r.dtype + (f" (computes in {r.compute_dtype})" if r.compute_dtype else ""),
            )
            for r in self.rows
        ]
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
        right = {3, 4}

        def line(cells: tuple[str, ...]) -> str:
            return "  ".join(
                c.rjust(w) if i in right else c.ljust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()

        rule = "-" * len(line(head))
        by_dtype = ", ".join(f"{k}: {v:,}" for k, v in self.dtypes.items())
        total = f"total: {self.total_params:,} parameters, {human_bytes(self.total_bytes)}"
        return "\n".join(
            [
                line(head),
                rule,
                *map(line, body),
                rule,
                total + (f" ({by_dtype})" if by_dtype else ""),
            ]
        )

    def __str__(self) -> str:
        return self.to_text()


def summary(model: Layer, params: Any, x: Any, *, state: Any = None) -> Summary:
    """Tabulate ``model`` applied to inputs like ``x`` with ``params``; nothing is computed.

    Args:
      model: a funcgrad layer.
      params: its parameter tree (arrays or `jax.ShapeDtypeStruct`); it is checked as ``apply`` would.
      x: an example input or its `jax.ShapeDtypeStruct`.
      state: the model state, for models with `nn.BatchNorm` (made by ``init_state`` if left out).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcgrad import inspect, nn
      >>> model = nn.serial(nn.Dense(16), nn.relu, nn.Dense(10))
      >>> params = model.init(jax.random.key(0), jnp.zeros((1, 784), jnp.float32))
      >>> s = inspect.summary(model, params, jnp.zeros((32, 784), jnp.float32))
      >>> [(r.path, r.layer, r.output, r.params) for r in s.rows]  # doctest: +NORMALIZE_WHITESPACE
      [('', 'Serial', 'f32[32,10]', 12730), ('dense_0', 'Dense', 'f32[32,16]', 12560),
       ('relu_1', 'relu', 'f32[32,16]', 0), ('dense_2', 'Dense', 'f32[32,10]', 170)]
      >>> s.total_params
      12730
    """
    if not isinstance(model, Layer):
        raise InputTypeError(
            f"inspect.summary: expected a funcgrad Layer; got {type(model).__name__}"
        )
    spec = as_spec(x, f"inspect.summary({type(model).__name__})")
    if state is None:
        state = jax.eval_shape(model.init_state, spec)
    with recording(_Table()) as recorder:
        jax.eval_shape(lambda p, s, v: model.apply(p, v, state=s), params, state, spec)
    leaves = jax.tree.leaves(params)
    dtypes: Counter[str] = Counter()
    for leaf in leaves:
        dtypes[str(jnp.dtype(leaf.dtype))] += _size(leaf)
    total, nbytes = sum(_size(a) for a in leaves), sum(_nbytes(a) for a in leaves)
    # The model's own row holds everything, shared parameters (kept at the top) included.
    rows = recorder.rows
    rows[0] = dataclasses.replace(rows[0], params=total, bytes=nbytes, dtype=", ".join(dtypes))
    return Summary(tuple(rows), total, nbytes, dict(dtypes))


class _Table(Recorder):
    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.depth = 0
        self.seen: set[tuple[int, Path]] = set()
        # (path, parameters as stored) of each mixed-precision wrapper being run: its
        # children receive the parameters cast, and the table shows both dtypes.
        self.stored: list[tuple[Path, Any]] = []
        self.wrappers: set[int] = set()

    def _stored(self, path: Path, params: Any) -> Any:
        for root, tree in reversed(self.stored):
            if path[: len(root)] == root:
                for key in path[len(root) :]:
                    if not isinstance(tree, dict) or key not in tree:
                        return params
                    tree = tree[key]
                same = str(jax.tree.structure(tree)) == str(jax.tree.structure(params))
                return tree if same else params
        return params

    def enter(self, layer: Layer, path: Path, params: Any) -> Any:
        stored = self._stored(path, params)
        leaves, computed = jax.tree.leaves(stored), jax.tree.leaves(params)
        kind = type(layer).__name__
        if isinstance(layer, (Elementwise, Pool)):
            kind = layer.kind
        elif isinstance(layer, Shared):
            kind = f"Shared '{layer.name}'"
        elif isinstance(layer, Repeat):
            kind = f"Repeat ×{layer.n}"
        dtype = ", ".join(sorted({str(jnp.dtype(a.dtype)) for a in leaves}))
        compute = ", ".join(sorted({str(jnp.dtype(a.dtype)) for a in computed}))
        key = (id(layer), path)
        row = Row(
            dotted(path),
            kind,
            "",
            sum(_size(a) for a in computed),
            sum(
                _size(a) * jnp.dtype(s.dtype).itemsize
                for a, s in zip(computed, leaves, strict=True)
            ),
            dtype,
            self.depth,
            shared=key in self.seen,
            compute_dtype=compute if compute != dtype else "",
        )
        self.seen.add(key)
        self.rows.append(row)
        self.depth += 1
        if isinstance(layer, MixedPrecision):
            self.stored.append((path, stored))
            self.wrappers.add(len(self.rows) - 1)
        return len(self.rows) - 1

    def leave(self, token: Any, y: Any) -> None:
        self.depth -= 1
        if token in self.wrappers:
            self.stored.pop()
        out = " ".join(aval_str(a) for a in jax.tree.leaves(y))
        self.rows[token] = dataclasses.replace(self.rows[token], output=out)


def _size(a: Any) -> int:
    return math.prod(a.shape)


def _nbytes(a: Any) -> int:
    return _size(a) * jnp.dtype(a.dtype).itemsize
