"""Zero-cost check: a funcgrad MLP training step against the same step hand-written in pure JAX.

Same shapes, same initial parameters, same optax optimizer, same data; the two steps run interleaved,
round by round, and the ratio of their median step times is printed last.

Usage: .venv/bin/python scripts/bench_overhead.py [--rounds 15] [--steps 200]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from interleave import interleaved_medians  # the scripts folder is on sys.path

import funcgrad as fg
from funcgrad import losses, nn

WORKLOADS = {
    "mlp-784-512-512-10/b128": ((784, 512, 512, 10), 128),
    "mlp-2-16-16-1/b32": ((2, 16, 16, 1), 32),
}


def make_data(sizes: Sequence[int], batch: int) -> tuple[jax.Array, jax.Array]:
    x = jax.random.normal(jax.random.key(1), (batch, sizes[0]))
    if sizes[-1] == 1:
        return x, jax.random.normal(jax.random.key(2), (batch, 1))
    return x, jax.random.randint(jax.random.key(2), (batch,), 0, sizes[-1])


def funcgrad_model_loss(sizes: Sequence[int], loss: str = "funcgrad") -> Callable[..., Any]:
    """The loss of a funcgrad MLP; ``loss="optax"`` uses optax's cross-entropy, as the baseline does."""
    layers: list[nn.Layer] = []
    for width in sizes[1:-1]:
        layers += [nn.Dense(width), nn.relu]
    model = nn.serial(*layers, nn.Dense(sizes[-1]))

    def loss_fn(params: Any, batch: Any) -> jax.Array:
        x, y = batch
        out = model.apply(params, x)
        if sizes[-1] == 1:
            return losses.mse(out, y)
        if loss == "optax":
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out, y))
        return losses.softmax_cross_entropy(out, y)

    loss_fn.model = model  # type: ignore[attr-defined]
    return loss_fn


def funcgrad_step(
    sizes: Sequence[int], optimizer: optax.GradientTransformation
) -> tuple[Callable[..., Any], Any]:
    """The step as a funcgrad user writes it: serial layers, funcgrad losses, make_step."""
    loss_fn = funcgrad_model_loss(sizes)
    params = loss_fn.model.init(jax.random.key(0), jnp.zeros((1, sizes[0])))  # type: ignore[attr-defined]
    return fg.train.make_step(loss_fn, optimizer, donate=True), params  # arrays donated, as in JAX


def pure_jax_step(
    sizes: Sequence[int], optimizer: optax.GradientTransformation
) -> Callable[..., Any]:
    """The same step hand-written in JAX: dict params, jax.jit, optax, donated buffers."""
    n = len(sizes) - 1
    names = [f"dense_{2 * i}" for i in range(n)]

    def loss_fn(params: Any, batch: Any) -> jax.Array:
        x, y = batch
        for i, name in enumerate(names):
            x = x @ params[name]["w"] + params[name]["b"]
            if i < n - 1:
                x = jax.nn.relu(x)
        if sizes[-1] == 1:
            return jnp.mean((x - y) ** 2)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(x, y))

    def step(params: Any, opt_state: Any, batch: Any) -> Any:
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {"loss": loss}

    return jax.jit(step, donate_argnums=(0, 1))


def time_steps(
    step: Callable[..., Any], params: Any, opt_state: Any, batch: Any, steps: int
) -> tuple[float, Any, Any]:
    call = getattr(step, "arrays", step)  # a make_step step on the arrays, or a jax.jit one
    start = time.perf_counter()
    for _ in range(steps):
        params, opt_state, metrics = call(params, opt_state, batch)
    jax.block_until_ready((params, metrics))
    return (time.perf_counter() - start) / steps, params, opt_state


def bench(name: str, rounds: int, steps: int) -> float:
    sizes, batch_size = WORKLOADS[name]
    optimizer = optax.adam(1e-3)
    fg_step, params = funcgrad_step(sizes, optimizer)
    jax_step = pure_jax_step(sizes, optimizer)
    batch = make_data(sizes, batch_size)
    copy = lambda tree: jax.tree.map(jnp.array, tree)
    state = {
        "funcgrad": (fg_step, copy(params), optimizer.init(params)),
        "pure JAX": (jax_step, copy(params), optimizer.init(params)),
    }

    def variant(name: str) -> Callable[[], float]:
        def run() -> float:
            step, p, o = state[name]
            t, p, o = time_steps(step, p, o, batch, steps)
            state[name] = (step, p, o)  # the step donated the old buffers
            return t

        return run

    med = interleaved_medians({name: variant(name) for name in state}, rounds)
    ratio = med["funcgrad"] / med["pure JAX"]
    print(
        f"{name:26s} funcgrad {med['funcgrad'] * 1e6:9.1f} us/step   pure JAX "
        f"{med['pure JAX'] * 1e6:9.1f} us/step   ratio {ratio:.3f}"
    )
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    print(f"jax {jax.__version__}, optax {optax.__version__}, backend {jax.default_backend()}, "
          f"{args.rounds} interleaved rounds of {args.steps} steps, medians")  # fmt: skip
    ratios = {name: bench(name, args.rounds, args.steps) for name in WORKLOADS}
    print("ratio funcgrad / pure JAX: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
