"""Seed 1: Torch's Linear → Sigmoid → Mul → MSECriterion chain, composed with `serial`.

Prints each node's value and the cost's gradients; the numbers are those of ../shared/SEEDS.md.
"""

import jax
import jax.numpy as jnp
import numpy as np

from funcgrad import losses, nn

if __name__ == "__main__":  # as a script, float64 (the seed's numbers); imported, the caller's mode
    jax.config.update("jax_enable_x64", True)

# Torch's Linear(2, 1) stores weight as (out, in) = [[1, 5]]; funcgrad's Dense stores (in, out).
chain = nn.serial(nn.Dense(1), nn.sigmoid, nn.Scale())
# NumPy constants: JAX takes them in the mode it runs in when they are used (float64 as a script),
# where a JAX array would keep the mode of the moment this module was imported.
params = {
    "dense_0": {"w": np.array([[1.0], [5.0]]), "b": np.array([-15.0])},
    "scale_2": {"factor": np.array([20.0])},
}
x = np.array([[2.0, 3.0]])  # one example, batch first
target = np.array([[10.0]])


def node_values(params):
    """The value after each node of the chain, and the cost."""
    linear = nn.Dense(1).apply(params["dense_0"], x)
    sigmoid = nn.sigmoid(linear)
    mul = nn.Scale().apply(params["scale_2"], sigmoid)
    return {"linear": linear, "sigmoid": sigmoid, "mul": mul, "cost": losses.mse(mul, target)}


def cost(params):
    return losses.mse(chain.apply(params, x), target)


def gradients():
    return jax.grad(cost)(params)


if __name__ == "__main__":
    for node, value in node_values(params).items():
        print(f"{node:8s} {float(jnp.squeeze(value))!r}")
    grads = gradients()
    print("d cost / d weight (Torch layout)", grads["dense_0"]["w"].T.tolist())
    print("d cost / d bias  ", grads["dense_0"]["b"].tolist())
    print("d cost / d factor", grads["scale_2"]["factor"].tolist())
