"""Write your own layer: a learned gain with a custom initialiser, a running mean as state,
and Gaussian noise from the PRNG key in training mode (docs/custom_layers.md walks through it).

Usage: python examples/custom_layer.py
"""

# --- the layer ---
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

import funcgrad as fg
from funcgrad import nn
from funcgrad.errors import ShapeError
from funcgrad.nn.layer import path_key
from funcgrad.paths import describe


def near_one(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    """A custom initialiser: ``init(key, shape, dtype) -> array``, here 1 + U(-0.1, 0.1)."""
    return 1 + jax.random.uniform(key, shape, dtype, -0.1, 0.1)


@dataclasses.dataclass(frozen=True)
class NoisyCenter(nn.ParamLayer):
    """y = (x − running mean) · gain, plus N(0, noise²) in training mode."""

    noise: float = 0.1
    momentum: float = 0.9
    gain_init: Any = near_one
    name: str | None = None
    kind = "noisy_center"  # parameters are keyed "noisy_center_<i>" inside nn.serial

    def check_input(self, x: jax.ShapeDtypeStruct, path: tuple[str, ...]) -> None:
        if x.ndim < 1:
            raise ShapeError(f"NoisyCenter at {describe(path)}: expected (..., features)")

    def param_specs(self, x: jax.ShapeDtypeStruct, path: tuple[str, ...]) -> dict:
        return {"gain": nn.ParamSpec((x.shape[-1],), jnp.float32, self.gain_init)}

    def initial_state(self, x: jax.ShapeDtypeStruct) -> dict:
        return {"mean": jnp.zeros((x.shape[-1],), jnp.float32)}

    def forward_with_state(
        self, params: dict, state: dict, x: jax.Array, ctx: nn.Context, path: tuple[str, ...]
    ) -> tuple[jax.Array, dict]:
        if ctx.train:  # a key was given (or train=True): use the batch and update the state
            mean = jnp.mean(x, axis=tuple(range(x.ndim - 1)))
            m = self.momentum
            new = {"mean": m * state["mean"] + (1 - m) * jax.lax.stop_gradient(mean)}
        else:
            mean, new = state["mean"], state
        y = (x - mean) * params["gain"]
        if ctx.train and self.noise > 0:
            y = y + self.noise * jax.random.normal(path_key(ctx.key, path), y.shape, y.dtype)
        return y, new


# --- using it ---
def main() -> None:
    model = nn.serial(nn.Dense(8), NoisyCenter(noise=0.1), nn.relu, nn.Dense(1))
    x = jax.random.normal(jax.random.key(0), (32, 3)) + 2.0
    params, state = model.init_with_state(jax.random.key(1), x)
    gain = params["noisy_center_1"]["gain"]
    print("gain", gain.shape, "in [0.9, 1.1]:", bool(jnp.all(jnp.abs(gain - 1) <= 0.1)))

    # Training mode: batch mean, updated state, noise drawn from the key.
    y1, new_state = model.apply(params, x, state=state, key=jax.random.key(2))
    y2, _ = model.apply(params, x, state=state, key=jax.random.key(2))
    y3, _ = model.apply(params, x, state=state, key=jax.random.key(3))
    h = model.layers[0].apply(params["dense_0"], x)
    expected = 0.1 * h.mean(0)  # 0.9 · 0 + 0.1 · batch mean
    assert jnp.allclose(new_state["noisy_center_1"]["mean"], expected)
    assert jnp.array_equal(y1, y2) and not jnp.array_equal(y1, y3)
    print("state updated: running mean = 0.1 * batch mean")
    print("same key, same noise; another key, other noise")

    # Evaluation mode (no key): the running mean, no noise, deterministic.
    e1, kept = model.apply(params, x, state=new_state)
    e2, _ = model.apply(params, x, state=new_state)
    assert jnp.array_equal(e1, e2)
    assert jnp.array_equal(kept["noisy_center_1"]["mean"], new_state["noisy_center_1"]["mean"])
    print("evaluation: running mean, no noise, state kept")

    # Gradients in float64 against finite differences, in evaluation mode.
    loss = lambda p: jnp.mean(model.apply(p, x, state=new_state)[0] ** 2)
    fg.testing.check_grads(loss, (params,), order=1)
    print("gradients agree with finite differences, forward and reverse mode")

    # Training with fit: the state goes in as model_state=, the loss takes it after the
    # parameters and returns the new one; with_key=True hands it the noise key as key=.
    def loss_fn(p, s, batch, *, key):
        y, s = model.apply(p, batch, state=s, key=key)
        return jnp.mean((y - 1.0) ** 2), s

    result = fg.train.fit(
        loss_fn, optax.adam(1e-2), params, x, model_state=state, key=jax.random.key(4),
        batch_size=8, steps=20, with_key=True, hooks=[],
    )  # fmt: skip
    print(f"fit: {result.step} steps, running mean moved: {result.model_state is not None}")


if __name__ == "__main__":
    jax.config.update("jax_enable_x64", True)  # as a script only; imported, the caller's mode
    main()
