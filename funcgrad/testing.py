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

from funcgrad.errors import CheckFailedError, ConfigError
from funcgrad.primitives.registry import Primitive


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _to64(tree: Any) -> Any:
    return jax.tree.map(
        lambda a: jnp.asarray(a, jnp.float64) if _is_float(a) else jnp.asarray(a), tree
    )


def _flat_out(f: Callable[..., Any]) -> Callable[..., Any]:
    return lambda *a: ravel_pytree(f(*a))[0]


def _describe(tree: Any, name: str) -> Callable[[int], str]:
    """Name element ``k`` of ``ravel_pytree(tree)`` as ``name[path][index]``."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    offsets = np.cumsum([0] + [int(np.prod(np.shape(leaf))) for _, leaf in leaves])

    def where(k: int) -> str:
        i = int(np.searchsorted(offsets, k, side="right")) - 1
        path, leaf = leaves[i]
        index = np.unravel_index(k - offsets[i], np.shape(leaf)) if np.ndim(leaf) else ()
        return name + jax.tree_util.keystr(path) + (str(list(map(int, index))) if index else "")

    return where


def _worst(
    g: Callable[[Any], Any], flat: Any, mode: str, eps: float
) -> tuple[int, int, float, float]:
    """The element of the Jacobian of ``g`` that differs most from finite differences."""
    jac = (jax.jacfwd if mode == "fwd" else jax.jacrev)(g)(flat).reshape(-1, flat.size)
    basis = jnp.eye(flat.size, dtype=flat.dtype) * eps
    numeric = jax.vmap(lambda e: (g(flat + e) - g(flat - e)) / (2 * eps), out_axes=1)(basis)
    numeric = numeric.reshape(jac.shape)
    err = jnp.abs(jac - numeric) / jnp.maximum(1.0, jnp.maximum(jnp.abs(jac), jnp.abs(numeric)))
    i, j = np.unravel_index(int(jnp.argmax(err)), jac.shape)
    return int(i), int(j), float(numeric[i, j]), float(jac[i, j])


def _check_one(
    f: Callable[[Any], Any],
    x: Any,
    order: int,
    modes: Sequence[str],
    eps: float,
    rtol: float,
    rng: np.random.Generator,
    label: str,
    out_name: Callable[[int], str],
    level: int = 1,
    via: str = "",
) -> None:
    """Check f (of one pytree argument x, flat float64 output) in random directions.

    ``level`` is the order of the derivative checked here (1: of f; 2: of f's derivative,
    ``via`` saying which); ``out_name`` names an element of f's flat output.
    """
    flat, unravel = ravel_pytree(x)
    if flat.size == 0:
        return
    arg_name = _describe(x, label)
    g = lambda v: f(unravel(v))
    v = jnp.asarray(rng.standard_normal(flat.shape))
    u = jnp.asarray(rng.standard_normal(jax.eval_shape(g, flat).shape))

    @jax.jit
    def probe(flat: Any, v: Any, u: Any) -> tuple[Any, dict[str, Any]]:
        """u·(central difference along v), and uᵀJv in each mode: one compiled program."""
        numeric = jnp.vdot(u, (g(flat + eps * v) - g(flat - eps * v)) / (2 * eps))
        analytic = {
            "fwd": lambda: jnp.vdot(u, jax.jvp(g, (flat,), (v,))[1]),
            "rev": lambda: jnp.vdot(jax.vjp(g, flat)[1](u)[0], v),
        }
        return numeric, {mode: analytic[mode]() for mode in modes}

    numeric, analytic_by_mode = probe(flat, v, u)
    for mode in modes:
        analytic = analytic_by_mode[mode]
        scale = max(1.0, float(jnp.abs(numeric)), float(jnp.abs(analytic)))
        if not abs(float(analytic) - float(numeric)) <= rtol * scale:
            i, j, want, got = _worst(g, flat, mode, eps)
            raise CheckFailedError(
                f"check_grads: the order-{level} derivative in {mode} mode{via} with respect "
                f"to {label} disagrees with central finite differences. Worst element: "
                f"d {out_name(i)} / d {arg_name(j)}: expected {want:.10g}, got {got:.10g}. "
                f"(In a random direction: expected {float(numeric):.10g}, got "
                f"{float(analytic):.10g}; eps={eps}, rtol={rtol}.)"
            )
    if order > 1:
        for mode in modes:
            if mode == "fwd":
                d = lambda w: jax.jvp(g, (w,), (v,))[1]
                name = lambda k: f"(J·v)[{out_name(k)}]"
            else:
                d = lambda w: jax.vjp(g, w)[1](u)[0]
                name = lambda k: f"(uᵀJ)[{arg_name(k)}]"
            _check_one(
                d, flat, order - 1, modes, eps, rtol, rng, label, name, level + 1,
                f" of the {mode}-mode first derivative",
            )  # fmt: skip


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
      CheckFailedError: an AssertionError naming the order of the derivative that is wrong (a
        wrong first derivative is order 1, even with ``order=2``), the mode (``fwd``/``rev``),
        the argument, and the worst element of the Jacobian (output and argument index,
        expected finite-difference value, value got).
      ConfigError: ``order`` other than 1 or 2, or a mode other than ``fwd`` and ``rev``.

    Example:
      >>> import jax.numpy as jnp, funcgrad as fg
      >>> fg.testing.check_grads(lambda x, y: jnp.sin(x) * y, (1.0, 2.0), order=2)
    """
    if order not in (1, 2):
        raise ConfigError(f"check_grads: order must be 1 or 2; got {order}")
    bad = [mode for mode in modes if mode not in ("fwd", "rev")]
    if bad:
        raise ConfigError(f"check_grads: modes must be 'fwd' or 'rev'; got {bad[0]!r}")
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
                f"argument {i}", _describe(jax.eval_shape(fi, arg), "output"),
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
            raise CheckFailedError(
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
