"""Built-in primitives against their JAX and optax counterparts: jitted value-and-grad over 10^6 elements.

Variants run interleaved, round by round; the table gives medians and the ratio funcgrad / counterpart.

Usage: .venv/bin/python scripts/bench_primitives.py [--rounds 15] [--reps 20]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from interleave import interleaved_medians  # the scripts folder is on sys.path

import funcgrad as fg

N = 1_000_000
KEY = jax.random.key(0)
X = jax.random.normal(KEY, (N,)) * 10
ROWS = jax.random.normal(KEY, (N // 1000, 1000)) * 10
LOGITS = jax.random.normal(KEY, (N // 10, 10)) * 10
LABELS = jax.random.randint(jax.random.key(1), (N // 10,), 0, 10)
TARGETS = jax.random.uniform(jax.random.key(2), (N,))

# name -> (funcgrad function, counterpart, input)
CASES: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any], Any]] = {
    "log1pexp vs jax.nn.softplus": (fg.log1pexp, jax.nn.softplus, X),
    "log_sigmoid vs jax.nn.log_sigmoid": (fg.log_sigmoid, jax.nn.log_sigmoid, X),
    "logsumexp vs jax.nn.logsumexp (rows of 1000)": (
        lambda x: fg.logsumexp(x, axis=-1),
        lambda x: jax.nn.logsumexp(x, axis=-1),
        ROWS,
    ),
    "softmax_cross_entropy vs optax (integer labels, 10 classes)": (
        lambda z: fg.softmax_cross_entropy(z, LABELS),
        lambda z: optax.softmax_cross_entropy_with_integer_labels(z, LABELS),
        LOGITS,
    ),
    "sigmoid_binary_cross_entropy vs optax": (
        lambda z: fg.sigmoid_binary_cross_entropy(z, TARGETS),
        lambda z: optax.sigmoid_binary_cross_entropy(z, TARGETS),
        X,
    ),
}


def compiled(f: Callable[[Any], Any], x: Any) -> Callable[[Any], Any]:
    g = jax.jit(jax.value_and_grad(lambda v: jnp.sum(f(v))))
    jax.block_until_ready(g(x))
    return g


def timed(g: Callable[[Any], Any], x: Any, reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        out = g(x)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / reps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    print(f"jax {jax.__version__}, optax {optax.__version__}, backend {jax.default_backend()}, "
          f"{args.rounds} interleaved rounds of {args.reps} calls, medians")  # fmt: skip
    print("| primitive | funcgrad (ms) | counterpart (ms) | ratio |")
    print("| --- | ---: | ---: | ---: |")
    worst = 0.0
    for name, (ours, theirs, x) in CASES.items():
        fns = {"ours": compiled(ours, x), "theirs": compiled(theirs, x)}
        med = interleaved_medians(
            {k: (lambda g=g, x=x: timed(g, x, args.reps)) for k, g in fns.items()}, args.rounds
        )
        ours_ms, theirs_ms = med["ours"] * 1e3, med["theirs"] * 1e3
        worst = max(worst, ours_ms / theirs_ms)
        print(f"| {name} | {ours_ms:.3f} | {theirs_ms:.3f} | {ours_ms / theirs_ms:.3f} |")
    print(f"worst ratio {worst:.3f}")


if __name__ == "__main__":
    main()
