"""`shared(layer, name)`: one parameter subtree, stored at the top of the model, used at several places.

Weight sharing is using the same subtree twice, so the gradients add up (the seeds' example 7).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from funcgrad.errors import ConfigError, ParamsError
from funcgrad.nn.layer import (
    Array,
    Context,
    Layer,
    Params,
    Path,
    SlotRequest,
    State,
    apply_child,
)
from funcgrad.paths import describe


@dataclasses.dataclass(frozen=True)
class Shared(Layer):
    """One parameter subtree, stored once at the top of the model under ``name``, used wherever this layer is."""

    layer: Layer
    name: str
    kind = "shared"

    def children(self) -> tuple[Layer, ...]:
        return (self.layer,)

    def shared_name(self) -> str | None:
        return self.name

    def _init(
        self, key: Array, x: Any, path: Path, shared: dict[str, Any]
    ) -> tuple[Params, State, Any]:
        params, state, y = self.layer._init(key, x, (self.name,), {})
        if state:
            raise ConfigError(
                f"shared layer '{self.name}' has state (batch norm); sharing it is not supported"
            )
        if self.name not in shared:
            shared[self.name] = params
        return {}, {}, y

    def _init_slot(self, request: SlotRequest, params: Params | None, path: Path) -> State:
        # Each place of use has its own slot (under its own key), the parameters are shared.
        return self.layer._init_slot(request, request.shared.get(self.name), (self.name,))

    def _apply(self, params: Params, state: State, x: Any, ctx: Context, path: Path) -> Any:
        if params:
            raise ParamsError(
                f"shared layer '{self.name}' at {describe(path)} keeps its parameters at the top "
                f"of the tree, params['{self.name}']; got parameters at its place of use"
            )
        # The state is {} or this place's cache.
        return apply_child(self.layer, ctx.shared[self.name], state, x, ctx, (self.name,))


def shared(layer: Layer, name: str) -> Shared:
    """Use one set of parameters at several places; their gradients add up (seeds, example 7).

    The parameters live once, at the top of the model's tree, under ``name``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcgrad import nn
      >>> tied = nn.shared(nn.Dense(4), name="tied")
      >>> model = nn.serial(tied, nn.relu, tied)
      >>> sorted(model.init(jax.random.key(0), jnp.zeros((1, 4))))
      ['tied']
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"shared: name must be a non-empty string; got {name!r}")
    return Shared(layer, name)
