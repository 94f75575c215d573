"""Decoding speed: tokens/s of greedy cached decoding (`init_cache` + one position per step) through
`nn.repeat` and through a `serial` of the same blocks, against the same model written by hand in
pure JAX (the baseline) and against recomputing the whole sequence for every new token; a 6-layer
transformer at context lengths 128 and 1024.

Each variant decodes ``--new`` tokens at the end of a context of the given length as one jitted
`jax.lax.scan`; the prompt's prefill is not timed. Rounds are interleaved (see interleave.py),
medians are printed with the ratio to the pure-JAX tokens/s of the same run, and all variants must
produce the same tokens. Recompute at 1024 is slow (seconds a token): leave it out with --only.

Usage: .venv/bin/python scripts/bench_decode.py [--quick] [--rounds 5] [--new 8]
           [--only "pure JAX,repeat,serial"] [--lengths 128,1024]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from interleave import interleaved_medians  # the scripts folder is on sys.path

from funcgrad import nn

FULL = {"layers": 6, "d": 128, "heads": 4, "vocab": 256, "lengths": (128, 1024)}
VARIANTS = ("pure JAX", "repeat", "serial", "recompute")
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


def pure_jax(heads: int, new: int) -> Callable[..., Any]:
    """The baseline: the same model written by hand in JAX, ``unstack``ed parameters, one cache per
    layer updated with `jax.lax.dynamic_update_slice`, layers unrolled; ``new`` greedy steps."""

    def norm(x: jax.Array, p: Any) -> jax.Array:
        mean = jnp.mean(x, -1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + 1e-5) * p["scale"] + p["bias"]

    def rope(x: jax.Array, t: jax.Array) -> jax.Array:
        half = x.shape[-1] // 2
        angle = t * 10000.0 ** (-jnp.arange(half) * 2 / x.shape[-1])
        a, b = x[..., :half], x[..., half:]
        return jnp.concatenate([a * jnp.cos(angle) - b * jnp.sin(angle),
                                b * jnp.cos(angle) + a * jnp.sin(angle)], -1)  # fmt: skip

    def block(p: Any, cache: Any, x: jax.Array, t: jax.Array) -> tuple[jax.Array, Any]:
        a, f = p["residual_0"]["attention_1"], p["residual_1"]
        h = norm(x, p["residual_0"]["layer_norm_0"])
        q, k, v = (jnp.einsum("btd,dhk->bthk", h, a[f"w{n}"]) + a[f"b{n}"] for n in "qkv")
        q, k = rope(q, t), rope(k, t)
        keys = jax.lax.dynamic_update_slice_in_dim(cache["k"], k, t, 1)
        values = jax.lax.dynamic_update_slice_in_dim(cache["v"], v, t, 1)
        logits = jnp.einsum("bthk,bshk->bhts", q, keys) / jnp.sqrt(q.shape[-1])
        logits = jnp.where(jnp.arange(keys.shape[1]) <= t, logits, -jnp.inf)
        y = jnp.einsum("bhts,bshk->bthk", jax.nn.softmax(logits, -1), values)
        x = x + jnp.einsum("bthk,hko->bto", y, a["wo"]) + a["bo"]
        h = norm(x, f["layer_norm_0"]) @ f["dense_1"]["w"] + f["dense_1"]["b"]
        x = x + jax.nn.gelu(h, approximate=False) @ f["dense_3"]["w"] + f["dense_3"]["b"]
        return x, {"k": keys, "v": values}

    @jax.jit
    def run(params: Any, caches: Any, token: jax.Array, start: jax.Array) -> jax.Array:
        names = sorted((k for k in params if k.startswith("serial_")), key=lambda k: int(k[7:]))
        head_norm, head = (
            params[k] for k in sorted(params, key=lambda k: int(k.split("_")[-1]))[-2:]
        )

        def step(carry: Any, _: None) -> tuple[Any, jax.Array]:
            token, caches, t = carry
            x = params["embedding_0"]["embedding"][token][:, None]
            out = []
            for name, cache in zip(names, caches, strict=True):
                x, cache = block(params[name], cache, x, t)
                out.append(cache)
            logits = norm(x, head_norm) @ head["w"] + head["b"]
            token = jnp.argmax(logits[:, -1], axis=-1).astype(token.dtype)
            return (token, out, t + 1), token

        return jax.lax.scan(step, (token, caches, start), None, length=new)[1].T

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
    parser.add_argument("--only", default=",".join(VARIANTS),
                        help=f"comma-separated variants among {', '.join(VARIANTS)}")  # fmt: skip
    parser.add_argument("--lengths", default=None, help="comma-separated context lengths")
    args = parser.parse_args()
    only = args.only.split(",")
    if not set(only) <= set(VARIANTS) or "pure JAX" not in only:
        parser.error(f"--only takes variants among {VARIANTS}, 'pure JAX' included; got {only}")
    size = QUICK if args.quick else FULL
    lengths = [int(n) for n in args.lengths.split(",")] if args.lengths else size["lengths"]
    n = size["layers"]
    model = transformer(n, size["d"], size["heads"], size["vocab"])
    flat = transformer(n, size["d"], size["heads"], size["vocab"], unrolled=True)
    print(f"{n} layers, d={size['d']}, {size['heads']} heads, batch 1, {args.new} new tokens "
          f"per call, {args.rounds} rounds, jax {jax.__version__} on {jax.devices()[0].device_kind}"
          f", load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    for length in lengths:
        tokens = jax.random.randint(jax.random.key(0), (1, length), 0, size["vocab"])
        params = model.init(jax.random.key(1), tokens)
        start = length - args.new  # the new tokens end the context
        prefill = jax.jit(lambda p, c, x: model.apply(p, x, state=c, position=0))
        cache = model.init_cache(1, length, features=size["d"])
        logits, cache = prefill(params, cache, tokens[:, :start])
        first = jnp.argmax(logits[:, -1], axis=-1)
        flat_cache = unstack(cache, n)
        layer_caches = [
            flat_cache[f"serial_{i + 1}"]["residual_0"]["attention_1"] for i in range(n)
        ]
        at = jnp.asarray(start)
        # Cached: steps feed token t and predict t+1; recompute predicts positions start+1 ...
        runs = {
            "pure JAX": (pure_jax(size["heads"], args.new - 1),
                         (unstack(params, n), layer_caches, first, at)),
            "repeat": (cached(model, args.new - 1), (params, cache, first, at)),
            "serial": (cached(flat, args.new - 1), (unstack(params, n), flat_cache, first, at)),
            "recompute": (recompute(model, args.new - 1),
                          (params, tokens.at[:, start].set(first), jnp.asarray(start + 1))),
        }  # fmt: skip
        runs = {name: run for name, run in runs.items() if name in only}
        outs = [fn(*a) for fn, a in runs.values()]
        same = all(bool(jnp.all(o == outs[0])) for o in outs)
        times = interleaved_medians({n: timed(fn, *a) for n, (fn, a) in runs.items()}, args.rounds)
        rate = {name: (args.new - 1) / t for name, t in times.items()}
        print(f"length {length:5d}  tokens/s: "
              + "   ".join(f"{name} {r:8.1f} ({r / rate['pure JAX']:.2f}x)" for name, r in rate.items())
              + f"   same tokens: {same}")  # fmt: skip


if __name__ == "__main__":
    main()
