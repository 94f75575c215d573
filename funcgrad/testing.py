"""Derivative checks: autodiff against central finite differences in float64, both modes, orders 1 and 2.

`check_primitive` adds jit, vmap and dtype consistency for a registered primitive.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from funcgrad.primitives.registry import Primitive


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _to64(tree: Any) -> Any:
    return jax.tree.map(
        lambda a: jnp.asarray(a, jnp.float64) if _is_float(a) else jnp.asarray(a), tree
    )


def _flat_out(f: Callable[..., Any]) -> Callable[..., Any]:
    return lambda *a: ravel_pytree(f(*a))[0]


def _check_one(
    f: Callable[[Any], Any],
    x: Any,
    order: int,
    modes: Sequence[str],
    eps: float,
    rtol: float,
    rng: np.random.Generator,
    label: str,
) -> None:
    """Check f (of one pytree argument x, flat float64 output) in random directions."""
    flat, unravel = ravel_pytree(x)
    if flat.size == 0:
        return
    g = lambda v: f(unravel(v))
    v = jnp.asarray(rng.standard_normal(flat.shape))
    y = g(flat)
    u = jnp.asarray(rng.standard_normal(y.shape))
    numeric = jnp.vdot(u, (g(flat + eps * v) - g(flat - eps * v)) / (2 * eps))
    for mode in modes:
        if mode == "fwd":
            analytic = jnp.vdot(u, jax.jvp(g, (flat,), (v,))[1])
        elif mode == "rev":
            analytic = jnp.vdot(jax.vjp(g, flat)[1](u)[0], v)
        else:
            raise ValueError(f"check_grads: modes must be 'fwd' or 'rev'; got {mode!r}")
        scale = max(1.0, float(jnp.abs(numeric)), float(jnp.abs(analytic)))
        if not abs(float(analytic) - float(numeric)) <= rtol * scale:
            raise AssertionError(
                f"check_grads: {mode}-mode derivative of order {order} with respect to {label} "
                f"disagrees with central finite differences: expected {float(numeric):.10g}, "
                f"got {float(analytic):.10g} (directional derivative, eps={eps}, rtol={rtol})"
            )
    if order > 1:
        for mode in modes:
            if mode == "fwd":
                d = lambda w: jax.jvp(g, (w,), (v,))[1]
            else:
                d = lambda w: jax.vjp(g, w)[1](u)[0]
            _check_one(d, flat, order - 1, modes, eps, rtol, rng, f"{label} ({mode} derivative)")


def check_grads(
    f: Callable[..., Any],
    args: Sequence[Any],
    order: int = 1,
    modes: Sequence[str] = ("fwd", "rev"),
    eps: float | None = None,
    rtol: float | None = None,
    seed: int = 0,
) -> None:
    """Compare ``f``'s derivatives with central finite differences in float64.

    Each floating-point argument (a pytree of arrays) is checked on its own,
    holding the others fixed, in a random direction: forward mode compares
    ``uᵀ J v``, reverse mode ``(Jᵀu)ᵀ v``. ``order=2`` checks the derivatives
    of the derivatives too. Inputs are cast to float64 (64-bit mode is turned
    on for the check).

    Raises:
      AssertionError: naming the argument, the mode and order, and showing the
        expected (finite-difference) and actual values.

    Example:
      >>> import jax.numpy as jnp, funcgrad as fg
      >>> fg.testing.check_grads(lambda x, y: jnp.sin(x) * y, (1.0, 2.0), order=2)
    """
    if order not in (1, 2):
        raise ValueError(f"check_grads: order must be 1 or 2; got {order}")
    with jax.enable_x64(True):
        args64 = [_to64(a) for a in args]
        rng = np.random.default_rng(seed)
        for i, arg in enumerate(args64):
            if not all(_is_float(leaf) for leaf in jax.tree.leaves(arg)):
                continue

            def fi(a: Any, i: int = i) -> Any:
                return f(*args64[:i], a, *args64[i + 1 :])

            _check_one(
                _flat_out(fi), arg, order, tuple(modes), eps or 1e-6, rtol or 1e-5, rng,
                f"argument {i}",
            )  # fmt: skip


def check_primitive(
    prim: Primitive | Callable[..., Any], *example_args: Any, **static: Any
) -> None:
    """Check a registered primitive: derivatives (both modes unless reverse-only, orders 1 and 2),
    ``jit`` equal to eager, ``vmap`` equal to a loop, output dtype equal to input dtype.

    Example:
      >>> import jax.numpy as jnp, funcgrad as fg
      >>> fg.testing.check_primitive(fg.log1pexp, jnp.array([-3.0, 0.5, 4.0]))
    """
    f = lambda *a: prim(*a, **static)
    reverse_only = isinstance(prim, Primitive) and prim.reverse_only
    modes = ("rev",) if reverse_only else ("fwd", "rev")
    check_grads(f, example_args, order=1 if reverse_only else 2, modes=modes)
    eager = f(*example_args)
    jitted = jax.jit(f)(*example_args)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg="jit differs from eager")
    floats = [jnp.result_type(a) for a in example_args if _is_float(a)]
    for out in jax.tree.leaves(eager):
        if floats and jnp.result_type(out) != floats[0]:
            raise AssertionError(
                f"check_primitive: output dtype {jnp.result_type(out)} differs from input dtype {floats[0]}"
            )
    batch = [
        jnp.stack([jnp.asarray(a), jnp.asarray(a) * 0.5 if _is_float(a) else jnp.asarray(a)])
        for a in example_args
    ]
    mapped = jax.vmap(f)(*batch)
    for j in range(2):
        looped = f(*(b[j] for b in batch))
        for a, b in zip(jax.tree.leaves(looped), jax.tree.leaves(mapped), strict=True):
            np.testing.assert_allclose(
                b[j], a, rtol=1e-5, atol=1e-6, err_msg="vmap differs from a loop"
            )
