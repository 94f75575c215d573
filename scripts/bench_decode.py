"""Decoding speed: tokens/s of cached decoding (`init_cache` + one position per step) against
recomputing the whole sequence for every new token, for a 6-layer transformer at lengths 128 and 1024.

Both decode greedily, ``--new`` tokens at the end of a context of the given length, each as one
jitted `jax.lax.scan`; the prompt's prefill is not timed. Rounds are interleaved (see interleave.py)
and medians are printed with the speed-up. Both variants must produce the same tokens.

Usage: .venv/bin/python scripts/bench_decode.py [--quick] [--rounds 5] [--new 8]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from interleave import interleaved_medians  # the scripts folder is on sys.path

from funcgrad import nn

FULL = {"layers": 6, "d": 128, "heads": 4, "vocab": 256, "lengths": (128, 1024)}
QUICK = {"layers": 2, "d": 32, "heads": 2, "vocab": 64, "lengths": (32, 64)}


def transformer(layers: int, d: int, heads: int, vocab: int, unrolled: bool = False) -> nn.Layer:
    """Blocks under `nn.repeat` (stacked parameters, one scanned block), or ``unrolled`` in a serial."""
    block = nn.serial(
        nn.residual(nn.LayerNorm(), nn.MultiHeadAttention(heads, causal=True, rope=True)),
        nn.residual(nn.LayerNorm(), nn.Dense(4 * d), nn.gelu, nn.Dense(d)),
    )
    blocks = [block] * layers if unrolled else [nn.repeat(block, layers)]
    return nn.serial(nn.Embedding(vocab, d), *blocks, nn.LayerNorm(), nn.Dense(vocab))


def unstack(tree: Any, layers: int) -> Any:
    """`transformer` parameters (or caches) rearranged for ``unrolled=True``: slice i -> block i."""
    rename = {"layer_norm_2": f"layer_norm_{layers + 1}", "dense_3": f"dense_{layers + 2}"}
    out = {rename.get(k, k): v for k, v in tree.items() if k != "repeat_1"}
    for i in range(layers):
        out[f"serial_{i + 1}"] = jax.tree.map(lambda a, i=i: a[i], tree["repeat_1"])
    return out


def cached(model: nn.Layer, new: int) -> Callable[..., Any]:
    """``new`` greedy steps from a filled cache: one position through the model per token."""

    @jax.jit
    def run(params: Any, cache: Any, token: jax.Array, start: jax.Array) -> jax.Array:
        def step(carry: Any, _: None) -> tuple[Any, jax.Array]:
            token, cache, t = carry
            logits, cache = model.apply(params, token[:, None], state=cache, position=t)
            token = jnp.argmax(logits[:, -1], axis=-1).astype(token.dtype)
            return (token, cache, t + 1), token

        return jax.lax.scan(step, (token, cache, start), None, length=new)[1].T

    return run


def recompute(model: nn.Layer, new: int) -> Callable[..., Any]:
    """``new`` greedy steps, each running the model over the whole (fixed-size, causal) sequence."""

    @jax.jit
    def run(params: Any, tokens: jax.Array, start: jax.Array) -> jax.Array:
        def step(carry: Any, _: None) -> tuple[Any, jax.Array]:
            tokens, t = carry
            logits = model.apply(params, tokens)
            token = jnp.argmax(logits[:, t - 1], axis=-1).astype(tokens.dtype)
            tokens = jax.lax.dynamic_update_slice_in_dim(tokens, token[:, None], t, axis=1)
            return (tokens, t + 1), token

        return jax.lax.scan(step, (tokens, start), None, length=new)[1].T

    return run


def timed(fn: Callable[..., Any], *args: Any) -> Callable[[], float]:
    def go() -> float:
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        return time.perf_counter() - start

    return go


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small model and short lengths")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new", type=int, default=8, help="tokens decoded per timed call")
    args = parser.parse_args()
    size = QUICK if args.quick else FULL
    model = transformer(size["layers"], size["d"], size["heads"], size["vocab"])
    flat = transformer(size["layers"], size["d"], size["heads"], size["vocab"], unrolled=True)
    print(f"{size['layers']} layers, d={size['d']}, {size['heads']} heads, batch 1, "
          f"{args.new} new tokens per call, {args.rounds} rounds, jax {jax.__version__} "
          f"on {jax.devices()[0].device_kind}")  # fmt: skip
    for length in size["lengths"]:
        tokens = jax.random.randint(jax.random.key(0), (1, length), 0, size["vocab"])
        params = model.init(jax.random.key(1), tokens)
        start = length - args.new  # the new tokens end the context
        n = size["layers"]
        prefill = jax.jit(lambda p, c, x: model.apply(p, x, state=c, position=0))
        cache = model.init_cache(1, length, features=size["d"])
        logits, cache = prefill(params, cache, tokens[:, :start])
        first = jnp.argmax(logits[:, -1], axis=-1)
        # Cached: steps feed token t and predict t+1; recompute predicts positions start+1 ...
        runs = {
            "cached": (cached(model, args.new - 1), (params, cache, first, jnp.asarray(start))),
            "cached, unrolled": (
                cached(flat, args.new - 1),
                (unstack(params, n), unstack(cache, n), first, jnp.asarray(start)),
            ),
            "recompute": (
                recompute(model, args.new - 1),
                (params, tokens.at[:, start].set(first), jnp.asarray(start + 1)),
            ),
        }
        outs = [fn(*a) for fn, a in runs.values()]
        same = all(bool(jnp.all(o == outs[0])) for o in outs)
        times = interleaved_medians({n: timed(fn, *a) for n, (fn, a) in runs.items()}, args.rounds)
        rate = {name: (args.new - 1) / t for name, t in times.items()}
        print(f"length {length:5d}  tokens/s: "
              + "   ".join(f"{n} {r:8.1f}" for n, r in rate.items())
              + f"   speed-up {rate['cached'] / rate['recompute']:6.1f}x"
              f" ({rate['cached, unrolled'] / rate['recompute']:.1f}x unrolled)"
              f"   same tokens: {same}")  # fmt: skip


if __name__ == "__main__":
    main()
