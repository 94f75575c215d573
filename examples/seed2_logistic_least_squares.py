"""Seed 2: univariate logistic least squares, L = ½(σ(wx + b) − t)², and its L2-regularised form.

Autodiff against the hand-derived backward pass; w fans out into the loss and the penalty.
"""

import jax
import jax.numpy as jnp

from funcgrad import losses, nn

if __name__ == "__main__":  # as a script, float64 (the seed's numbers); imported, the caller's mode
    jax.config.update("jax_enable_x64", True)

model = nn.serial(nn.Dense(1), nn.sigmoid)


def loss(params, x, t, lam=0.0):
    """L_reg = ½(y − t)² + λ·½w² (the bias is left out of the penalty)."""
    y = model.apply(params, jnp.reshape(x, (1, 1)))
    fit = losses.squared_error(y, jnp.reshape(t, (1, 1)), reduction="sum")
    return fit + losses.l2_penalty(params, lam, exclude=("b",))


def by_hand(w, b, x, t, lam=0.0):
    """The backward pass of the seed, written out: returns (∂L/∂w, ∂L/∂b)."""
    z = w * x + b
    y = 1 / (1 + jnp.exp(-z))
    dz = (y - t) * y * (1 - y)  # ∂L/∂y · σ'(z)
    return dz * x + lam * w, dz


def autodiff(w, b, x, t, lam=0.0):
    params = {"dense_0": {"w": jnp.reshape(w, (1, 1)), "b": jnp.reshape(b, (1,))}}
    g = jax.grad(loss)(params, x, t, lam)["dense_0"]
    return g["w"][0, 0], g["b"][0]


if __name__ == "__main__":
    values = dict(w=0.7, b=-0.3, x=1.5, t=1.0, lam=0.1)
    print("autodiff (dL/dw, dL/db):", [float(v) for v in autodiff(**values)])
    print("by hand  (dL/dw, dL/db):", [float(v) for v in by_hand(**values)])
