"""`Pretrained`: a model layer made from a frozen config, the base of the reference models.

It is the network its ``build()`` makes (same parameters, caches, results), and keeps the config.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from funcgrad.nn.layer import Array, Context, Layer, Params, Path, SlotRequest, State, apply_child


@dataclasses.dataclass(frozen=True)
class Pretrained(Layer):
    """A layer defined by ``config`` alone: ``build()`` says the network, this delegates to it.

    Two models with equal configs are equal (and hash alike), so ``jit`` compiles once per config.

    Example:
      >>> from funcgrad.models import llama
      >>> model = llama.Llama(llama.LlamaConfig(64, 32, 48, num_layers=2, num_heads=4))
      >>> type(model.network).__name__
      'Serial'
    """

    config: Any

    def build(self) -> Layer:
        """The network, from ``self.config``."""
        raise NotImplementedError

    @functools.cached_property
    def network(self) -> Layer:
        """The `funcgrad.nn` layers this model is (built once per instance)."""
        return self.build()

    @property
    def kind(self) -> str:  # type: ignore[override]
        return self.network.kind

    def children(self) -> tuple[Layer, ...]:
        return (self.network,)

    def _init(
        self, key: Array, x: Any, path: Path, shared: dict[str, Any]
    ) -> tuple[Params, State, Any]:
        return self.network._init(key, x, path, shared)

    def _init_slot(self, request: SlotRequest, params: Params | None, path: Path) -> State:
        return self.network._init_slot(request, params, path)

    def _apply(self, params: Params, state: State, x: Any, ctx: Context, path: Path) -> Any:
        return apply_child(self.network, params, state, x, ctx, path)
