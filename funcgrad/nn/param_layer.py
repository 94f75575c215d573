"""Leaf layers from a table of parameter specs: `ParamSpec`, `ParamLayer`, and the check of a given tree.

Initialisation and the check of given parameters both read the one table, so they cannot disagree.
"""

from __future__ import annotations

import contextvars
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from funcgrad.errors import DTypeError, ParamsError
from funcgrad.nn.checks import path_key
from funcgrad.nn.protocol import Context, Layer
from funcgrad.nn.types import Array, Initializer, Params, Path, Spec, State
from funcgrad.paths import describe

# Set by `mixed_precision` while it initialises its layer: how ``apply`` will cast parameters, so
# that the output specs ``init`` computes (and the checks on them) match what ``apply`` does.
INIT_PARAM_CAST: contextvars.ContextVar[Callable[[Any], Any] | None] = contextvars.ContextVar(
    "funcgrad_init_param_cast", default=None
)


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One parameter of a leaf layer: its shape, dtype and initialiser."""

    shape: tuple[int, ...]
    dtype: Any
    init: Initializer


class ParamLayer(Layer):
    """A leaf layer described by ``param_specs(x)`` and ``forward(params, x, ctx, path)``.

    Initialisation and the check of a given parameter tree both come from the
    one table of specs, so they cannot disagree.
    """

    def param_specs(self, x: Spec, path: Path) -> dict[str, ParamSpec]:
        return {}

    def check_input(self, x: Spec, path: Path) -> None:
        """Raise a clear error if ``x`` cannot go through this layer."""

    def forward(self, params: Params, x: Array, ctx: Context, path: Path) -> Array:
        raise NotImplementedError

    def forward_with_state(
        self, params: Params, state: State, x: Array, ctx: Context, path: Path
    ) -> tuple[Array, State]:
        """``forward`` for layers with state; stateless layers pass the state through."""
        return self.forward(params, x, ctx, path), state

    def _init(
        self, key: Array, x: Any, path: Path, shared: dict[str, Any]
    ) -> tuple[Params, State, Any]:
        self.check_input(x, path)
        specs = self.param_specs(x, path)
        base = path_key(key, path)
        params = {
            n: s.init(jax.random.fold_in(base, i), s.shape, s.dtype)
            for i, (n, s) in enumerate(sorted(specs.items()))
        }
        state = self.initial_state(x)
        cast = INIT_PARAM_CAST.get()
        seen = params if cast is None else cast(params)
        return params, state, self._output_spec(seen, state, x, path)

    def initial_state(self, x: Spec) -> State:
        """The state of a stateful layer before any step; ``{}`` for the rest."""
        return {}

    def _apply(self, params: Params, state: State, x: Any, ctx: Context, path: Path) -> Any:
        # x may be a tuple of arrays (attention's (query, context, mask)); errors report the first.
        x = jax.tree.map(jnp.asarray, x)
        self.check_input(x, path)
        first = jnp.shape(jax.tree.leaves(x)[0])
        check_params(params, self.param_specs(x, path), path, type(self).__name__, first)
        with jax.named_scope("/".join(path) or self.kind):
            return self.forward_with_state(params, state, x, ctx, path)


def check_params(
    params: Any, specs: dict[str, ParamSpec], path: Path, layer: str, x_shape: tuple[int, ...]
) -> None:
    """Check that ``params`` holds exactly the keys of ``specs``, with their shapes."""
    where = f"{layer} at {describe(path)}"
    if not isinstance(params, Mapping):
        raise ParamsError(f"{where}: expected a dict of parameters; got {type(params).__name__}")
    expected = {n: s.shape for n, s in specs.items()}
    missing = sorted(set(expected) - set(params))
    extra = sorted(set(params) - set(expected))
    if missing or extra:
        raise ParamsError(
            f"{where}: parameter keys differ (missing {missing}, unexpected {extra}); "
            f"expected {expected or 'no parameters'}"
        )
    for n, shape in expected.items():
        got = jnp.shape(params[n])
        if got != shape:
            raise ParamsError(
                f"{where}: parameter '{n}' should have shape {shape} for an input of shape "
                f"{tuple(x_shape)}; got {got} (were the parameters made for another input size?)"
            )
        if not jnp.issubdtype(jnp.result_type(params[n]), jnp.inexact):
            raise DTypeError(
                f"{where}: parameter '{n}' must be floating point; got {jnp.result_type(params[n])}"
            )
