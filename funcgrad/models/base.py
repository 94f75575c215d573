"""`Pretrained`: a model layer made from a frozen config, the base of the reference models.

It is the network its ``build()`` makes (same parameters, caches, results), and keeps the config.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from funcgrad.errors import ConfigError
from funcgrad.nn.combinators import Serial
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

    def _head(self) -> tuple[Serial, Layer, str]:
        """The network (a serial ending in the output layer), that layer, and its key."""
        net = self.network
        if not isinstance(net, Serial) or len(net.layers) < 2:
            raise ConfigError(
                f"{type(self).__name__}: hidden/head_weight need a network that is an nn.serial "
                f"ending in the output layer; got {type(net).__name__}"
            )
        return net, net.layers[-1], net.keys[-1]

    def hidden(self, params: Params, ids: Any, **apply_kwargs: Any) -> Any:
        """The final hidden states ``(..., hidden)``: the network without its output layer
        (after the final norm), so that ``hidden(params, ids) @ head_weight(params)`` are the
        logits. For a loss that never holds the logits (`losses.linear_softmax_cross_entropy`).

        ``apply_kwargs`` go to ``apply`` (``key``, ``train``, ``position``, ``segment_ids``).

        Example:
          >>> import jax, jax.numpy as jnp
          >>> from funcgrad.models import llama
          >>> model = llama.Llama(llama.LlamaConfig(64, 32, 48, num_layers=2, num_heads=4))
          >>> ids = jnp.array([[1, 2, 3]])
          >>> params = model.init(jax.random.key(0), ids)
          >>> h = model.hidden(params, ids)
          >>> h.shape, bool(jnp.allclose(h @ model.head_weight(params), model.apply(params, ids),
          ...                            atol=1e-5))
          ((1, 3, 32), True)
        """
        net, last, key = self._head()
        if last.shared_name() is None:  # a shared head's parameters are the tree's, kept
            params = {k: v for k, v in params.items() if k != key}
        return dataclasses.replace(net, layers=net.layers[:-1]).apply(params, ids, **apply_kwargs)

    def head_weight(self, params: Params) -> Array:
        """The output layer's weight ``(hidden, vocab)``: ``lm_head.w``, or for tied embeddings
        the transposed embedding table.

        Example:
          >>> import jax, jax.numpy as jnp
          >>> from funcgrad.models import gpt2
          >>> model = gpt2.GPT2(gpt2.GPT2Config(64, 32, num_layers=1, num_heads=4))
          >>> params = model.init(jax.random.key(0), jnp.array([[1, 2]]))
          >>> model.head_weight(params).shape  # tied: wte.embedding.T
          (32, 64)
        """
        _, last, key = self._head()
        name = last.shared_name()
        where, want = (name, "embedding") if name is not None else (key, "w")
        head = params.get(where, {})
        if set(head) != {want} or getattr(head[want], "ndim", 0) != 2:
            raise ConfigError(
                f"{type(self).__name__}.head_weight: the output layer's parameters '{where}' are "
                f"not a bias-free Dense's 'w' nor a tied embedding table; got keys {sorted(head)}"
            )
        return head[want].T if name is not None else head[want]
