"""Seed 4: softmax (multiclass logistic) regression, K = 3 classes and 2 features, by gradient descent.

Checks ∂L/∂z = y − t, ∂L/∂w = x (y − t)ᵀ, ∂L/∂b = y − t, then trains: w ← w − α ∂J/∂w, the loss falling each step.
"""

import jax
import jax.numpy as jnp

from funcgrad import losses, nn

if __name__ == "__main__":  # as a script, float64 (the seed's numbers); imported, the caller's mode
    jax.config.update("jax_enable_x64", True)

model = nn.Dense(3)


def loss(params, x, t):
    """Mean over the batch of L = −Σ_k t_k ln y_k, with t one-hot."""
    return losses.softmax_cross_entropy(model.apply(params, x), t)


def by_hand(params, x, t):
    """Gradients of the batch-mean loss from the seed's formulas."""
    y = jax.nn.softmax(x @ params["w"] + params["b"])
    dz = (y - t) / x.shape[0]
    return {"w": x.T @ dz, "b": dz.sum(0)}


def make_batch(key, n=64):
    """Three Gaussian blobs in the plane, one per class."""
    centres = jnp.array([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]])
    labels = jax.random.randint(key, (n,), 0, 3)
    x = centres[labels] + jax.random.normal(jax.random.fold_in(key, 1), (n, 2))
    return x, jax.nn.one_hot(labels, 3, dtype=jnp.float64)


def train(steps=20, lr=0.5):
    """Plain gradient descent on one batch; returns the loss before each step."""
    x, t = make_batch(jax.random.key(0))
    params = {"w": jnp.zeros((2, 3)), "b": jnp.zeros(3)}
    history = []
    for _ in range(steps):
        value, grads = jax.value_and_grad(loss)(params, x, t)
        params = jax.tree.map(lambda p, g: p - lr * g, params, grads)
        history.append(float(value))
    return params, history


if __name__ == "__main__":
    params, history = train()
    for i, value in enumerate(history):
        print(f"step {i:2d}  loss {value:.6f}")
    x, t = make_batch(jax.random.key(0))
    accuracy = jnp.mean(jnp.argmax(model.apply(params, x), -1) == jnp.argmax(t, -1))
    print(f"training accuracy {float(accuracy):.3f}")
