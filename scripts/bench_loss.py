"""The blocked cross-entropy of a linear head against the unblocked one: XLA's temporary memory and time.

Jitted value-and-grad with respect to both ``h`` and ``w`` of the mean loss: ``losses.softmax_cross_entropy(h
@ w, labels)`` (the baseline, which holds the (tokens, vocabulary) logits) and
``losses.linear_softmax_cross_entropy(h, w, labels, block_size=b)`` for each ``--block-sizes``. Memory is
``inspect.cost``'s ``temp_bytes`` (compiled, nothing run); time is interleaved rounds (see interleave.py),
medians, ratios to the baseline of the same run. Both must give the same loss and gradients.

Usage: .venv/bin/python scripts/bench_loss.py [--tokens 4096 --d 512 --vocab 32000] [--rounds 5]
       [--block-sizes 128,256,512] [--memory-only] [--quick]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from interleave import interleaved_medians  # the scripts folder is on sys.path

from funcgrad import inspect, losses


def variants(block_sizes: list[int]) -> dict[str, Callable[..., Any]]:
    """name -> jitted ``(h, w, labels) -> (loss, (dh, dw))``; the first is the baseline."""
    fns: dict[str, Callable[..., Any]] = {
        "unblocked": lambda h, w, y: losses.softmax_cross_entropy(h @ w, y)
    }
    for b in block_sizes:
        fns[f"blocked {b}"] = lambda h, w, y, b=b: losses.linear_softmax_cross_entropy(
            h, w, y, block_size=b
        )
    return {k: jax.jit(jax.value_and_grad(f, argnums=(0, 1))) for k, f in fns.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--block-sizes", default="256", help="comma-separated tokens per block")
    parser.add_argument("--memory-only", action="store_true", help="compile and report memory")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round (a smoke test)")
    args = parser.parse_args()
    if args.quick:
        args.tokens, args.d, args.vocab, args.rounds = 64, 16, 1000, 1
    n, d, v = args.tokens, args.d, args.vocab
    fns = variants([int(b) for b in args.block_sizes.split(",")])
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    h = jax.random.normal(k1, (n, d), jnp.float32)
    w = jax.random.normal(k2, (d, v), jnp.float32) / d**0.5
    labels = jax.random.randint(k3, (n,), 0, v)
    print(f"jax {jax.__version__}, backend {jax.default_backend()}; tokens {n}, d {d}, "
          f"vocabulary {v}, float32; value_and_grad of the mean loss w.r.t. h and w")  # fmt: skip
    temp = {k: inspect.cost(f, h, w, labels).temp_bytes for k, f in fns.items()}
    base = "unblocked"
    times: dict[str, float] = {}
    if not args.memory_only:
        ref = fns[base](h, w, labels)
        for k, f in fns.items():
            got = f(h, w, labels)
            for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got), strict=True):
                err = float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(a)) + 1e-30))
                assert err < 1e-4, f"{k} differs from the unblocked loss by {err:.2e} (relative)"

        def timed(f: Callable[..., Any]) -> Callable[[], float]:
            def run() -> float:
                start = time.perf_counter()
                jax.block_until_ready(f(h, w, labels))
                return time.perf_counter() - start

            return run

        times = interleaved_medians({k: timed(f) for k, f in fns.items()}, args.rounds)
        print(f"{args.rounds} interleaved rounds, medians")
    print("| variant | temporaries (MiB) | memory ratio | time (ms) | time ratio |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for k in fns:
        mib = temp[k] / 2**20 if temp[k] is not None else float("nan")
        mem = temp[k] / temp[base] if temp[k] is not None and temp[base] else float("nan")
        t = f"{times[k] * 1e3:.1f} | {times[k] / times[base]:.3f}" if times else "- | -"
        print(f"| {k} | {mib:.1f} | {mem:.3f} | {t} |")


if __name__ == "__main__":
    main()
