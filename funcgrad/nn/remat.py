"""Rematerialisation, asked for one way: `remat(layer, policy)` recomputes a layer's activations in the backward pass.

`serial(remat=)` and `repeat(remat=)` are deprecated spellings that build `remat` layers (they warn).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import jax

from funcgrad.errors import ConfigError
from funcgrad.nn.layer import (
    Array,
    Context,
    Layer,
    Params,
    Path,
    State,
    Wrapper,
    apply_child,
)


def warn_remat(where: str, instead: str) -> None:
    warnings.warn(
        f"{where}(..., remat=) is deprecated: rematerialisation is asked for one way, "
        f"nn.remat(layer, policy=None); write {instead}",
        DeprecationWarning,
        stacklevel=3,
    )


def check_remat(remat: Any, where: str) -> None:
    if not (isinstance(remat, bool) or callable(remat)):
        raise ConfigError(
            f"{where}: remat must be True, False or a jax.checkpoint_policies entry; got {remat!r}"
        )


@dataclasses.dataclass(frozen=True)
class Remat(Wrapper):
    """A layer whose activations are recomputed in the backward pass; made by `remat`."""

    policy: Callable[..., Any] | None = None

    def _apply(self, params: Params, state: State, x: Any, ctx: Context, path: Path) -> Any:
        # What may be traced arrays comes in as arguments, not closed over, so the checkpointed
        # function sees it as its inputs (the key, the decoding position, the segment ids).
        def run(
            p: Params, s: State, v: Any, key: Array | None, position: Any, segment_ids: Any
        ) -> Any:
            inner = dataclasses.replace(ctx, key=key, position=position, segment_ids=segment_ids)
            return apply_child(self.layer, p, s, v, inner, path)

        checkpointed = jax.checkpoint(run, policy=self.policy)
        return checkpointed(params, state, x, ctx.key, ctx.position, ctx.segment_ids)


def remat(layer: Layer, policy: Callable[..., Any] | None = None) -> Remat:
    """Recompute ``layer``'s activations in the backward pass instead of storing them.

    Same parameters, same results, less memory; ``policy`` is a
    `jax.checkpoint_policies` entry. Parameters are those of ``layer`` itself. This is the
    one way to ask for rematerialisation: ``repeat(nn.remat(block), n)`` recomputes each
    copy (only the carry between copies is stored), ``serial(nn.remat(a), nn.remat(b))``
    makes each a segment.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcgrad import nn
      >>> block = nn.remat(nn.serial(nn.Dense(4), nn.gelu))
      >>> x = jnp.ones((2, 4))
      >>> block.apply(block.init(jax.random.key(0), x), x).shape
      (2, 4)
    """
    return Remat(layer, policy)
