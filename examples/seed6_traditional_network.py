"""Seed 6: a traditional network, mynet(d0, 60, 40, 10), on one 3×10×20 image (d0 = 600).

Flatten, Linear(600, 60), ReLU, Linear(60, 40), ReLU, Linear(40, 10); one SGD step lowers the loss.
"""

import jax
import jax.numpy as jnp

from funcgrad import losses, nn

if __name__ == "__main__":  # as a script, float64 (the seed's numbers); imported, the caller's mode
    jax.config.update("jax_enable_x64", True)


def mynet(d0, d1, d2, d3):
    del d0  # funcgrad infers input sizes from the example input
    return nn.serial(nn.Flatten(), nn.Dense(d1), nn.relu, nn.Dense(d2), nn.relu, nn.Dense(d3))


model = mynet(600, 60, 40, 10)
image = jax.random.normal(jax.random.key(1), (1, 10, 20, 3))  # channels last; float64 as a script
label = jnp.array([7])


def loss(params):
    return losses.softmax_cross_entropy(model.apply(params, image), label)


def sgd_step(params, lr=0.01):
    """w ← w − η ∂L/∂w on every parameter; returns the new parameters and the loss before."""
    value, grads = jax.value_and_grad(loss)(params)
    return jax.tree.map(lambda w, g: w - lr * g, params, grads), value


if __name__ == "__main__":
    params = model.init(jax.random.key(0), image)
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    print("parameters", {k: {n: v.shape for n, v in p.items()} for k, p in params.items()})
    new_params, before = sgd_step(params)
    print(f"loss before the step {float(before):.6f}, after {float(loss(new_params)):.6f}")
