"""Seed 5: a custom operator, log(1 + exp(x)), written as a funcgrad user writes a primitive.

The naive forward overflows in float32 from x ≈ 89; the stable one does not. Then grad, jacfwd, hessian, vmap.
"""

import jax
import jax.numpy as jnp

import funcgrad as fg

if __name__ == "__main__":  # as a script, float64 (the seed's numbers); imported, the caller's mode
    jax.config.update("jax_enable_x64", True)


def naive_log1pexp(x):
    return jnp.log(1 + jnp.exp(x))


# The classic operator saves exp(x) in the forward pass and reuses it in the backward pass:
# dy · (1 − 1/(1 + eˣ)). has_residuals=True hands the saved value to the rule.
@fg.primitive(name="example_log1pexp", has_residuals=True)
def my_log1pexp(x):
    e = jnp.exp(-jnp.abs(x))
    return jnp.maximum(x, 0) + jnp.log1p(e), e  # stable value, and the residual


@my_log1pexp.backward
def _(inputs, output, output_grad, residuals):
    (x,) = inputs
    e = residuals  # exp(−|x|), never overflows
    sigmoid = jnp.where(x >= 0, 1 / (1 + e), e / (1 + e))
    return (output_grad * sigmoid,)


if __name__ == "__main__":
    x = jnp.float64(4.5)
    print("value     ", float(my_log1pexp(x)))
    print("derivative", float(jax.grad(my_log1pexp)(x)))
    big = jnp.float32(89.0)
    print("float32 at 89: naive", float(naive_log1pexp(big)), " funcgrad", float(fg.log1pexp(big)))
    xs = jnp.linspace(-3.0, 3.0, 4)
    print("vmap(grad)", jax.vmap(jax.grad(my_log1pexp))(xs).tolist())
    print("jacfwd    ", jnp.diag(jax.jacfwd(my_log1pexp)(xs)).tolist())
    print("hessian   ", float(jax.hessian(my_log1pexp)(x)), "(σ(x)(1 − σ(x)) =",
          float(jax.nn.sigmoid(x) * (1 - jax.nn.sigmoid(x))), ")")  # fmt: skip
    fg.testing.check_primitive(my_log1pexp, xs)
    print("check_primitive: derivatives, jit and vmap agree")
