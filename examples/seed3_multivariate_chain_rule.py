"""Seed 3: the multivariate chain rule, f(x, y) = y + e^{xy} with x = cos t, y = t².

df/dt = y·e^{xy}·(−sin t) + (1 + x·e^{xy})·2t; at t = 0.7 both sides give 2.498432319393961.
"""

import jax
import jax.numpy as jnp

if __name__ == "__main__":  # as a script, float64 (the seed's numbers); imported, the caller's mode
    jax.config.update("jax_enable_x64", True)


def f_of_t(t):
    x, y = jnp.cos(t), t**2
    return y + jnp.exp(x * y)


def by_hand(t):
    x, y = jnp.cos(t), t**2
    e = jnp.exp(x * y)
    return y * e * (-jnp.sin(t)) + (1 + x * e) * 2 * t


if __name__ == "__main__":
    t = jnp.float64(0.7)
    print("reverse mode:", float(jax.grad(f_of_t)(t)))
    print("forward mode:", float(jax.jvp(f_of_t, (t,), (1.0,))[1]))
    print("by hand:     ", float(by_hand(t)))
