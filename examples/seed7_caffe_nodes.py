"""Seed 7: Caffe-style nodes, each a registered primitive with its hand-written backward.

ReLU, Dense (z = Wᵀx + b), a squared-error loss node that honours output_diff mid-graph, and a shared W.
"""

import jax
import jax.numpy as jnp

import funcgrad as fg

if __name__ == "__main__":  # as a script, float64 (the seed's numbers); imported, the caller's mode
    jax.config.update("jax_enable_x64", True)


@fg.primitive(name="caffe_relu")
def relu(x):
    return jnp.maximum(x, 0)


@relu.backward
def _(inputs, output, output_diff):
    (x,) = inputs
    return ((x > 0) * output_diff,)


@fg.primitive(name="caffe_dense")
def dense(x, w, b):
    """z = Wᵀx + b for one example x of size A, W of shape A×B."""
    return w.T @ x + b


@dense.backward
def _(inputs, output, g):
    x, w, _ = inputs
    return (w @ g, jnp.outer(x, g), g)  # ∂L/∂x = W·g, ∂L/∂W = x gᵀ, ∂L/∂b = g


@fg.primitive(name="caffe_squared_error")
def squared_error(y, t):
    """½‖y − t‖²: a loss node; at the end of the graph output_diff is 1."""
    return 0.5 * jnp.sum((y - t) ** 2)


@squared_error.backward
def _(inputs, output, output_diff):
    y, t = inputs
    return (output_diff * (y - t), -output_diff * (y - t))


def net(w, b1, b2, x, t):
    """Two dense nodes share W (different biases); W's gradient is the sum of both."""
    h = relu(dense(x, w, b1))
    y = dense(h, w, b2)
    return 3.0 * squared_error(y, t)  # a loss node mid-graph: output_diff is 3 here


def reference(w, b1, b2, x, t):
    """The same graph in plain jax.numpy, differentiated by JAX itself."""
    h = jnp.maximum(w.T @ x + b1, 0)
    y = w.T @ h + b2
    return 3.0 * 0.5 * jnp.sum((y - t) ** 2)


def example_inputs():
    keys = jax.random.split(jax.random.key(7), 5)
    a = 4  # W is A×A so that it can be used twice
    return (
        jax.random.normal(keys[0], (a, a)),
        jax.random.normal(keys[1], (a,)),
        jax.random.normal(keys[2], (a,)),
        jax.random.normal(keys[3], (a,)),
        jax.random.normal(keys[4], (a,)),
    )


if __name__ == "__main__":
    args = example_inputs()
    ours = jax.grad(net, argnums=(0, 1, 2))(*args)
    theirs = jax.grad(reference, argnums=(0, 1, 2))(*args)
    for name, a, b in zip(("W", "b1", "b2"), ours, theirs, strict=True):
        print(
            f"d/d{name}: largest difference from JAX's own derivative {float(jnp.max(jnp.abs(a - b))):.2e}"
        )
    fg.testing.check_grads(net, args, order=2)
    print("check_grads: forward and reverse mode agree with finite differences")
