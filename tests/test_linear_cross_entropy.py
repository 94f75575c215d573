"""linear_softmax_cross_entropy against softmax_cross_entropy(h @ w, labels): value and both gradients in
float64 and float32, masks, leading batch axes, token counts that are no multiple of the block, forward
mode and finite differences, bad inputs, and XLA's temporary memory against the unblocked loss's."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcgrad as fg
from funcgrad import errors, inspect, losses

WHERE = (np.arange(14).reshape(2, 7) % 3) != 1


def problem(shape, d, vocab, dtype, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    h = jax.random.normal(k1, (*shape, d), dtype)
    w = (jax.random.normal(k2, (d, vocab), dtype) * 2).astype(dtype)
    labels = jax.random.randint(k3, shape, 0, vocab)
    return h, w, labels


def unblocked(h, w, labels, where=None, reduction="mean"):
    """The reference: the whole logits, then a masked mean or sum of the per-token losses."""
    per_token = losses.softmax_cross_entropy(h @ w, labels, reduction="none")
    counted = jnp.ones(labels.shape, bool) if where is None else where
    total = jnp.sum(jnp.where(counted, per_token, 0))
    return total / jnp.maximum(jnp.sum(counted), 1) if reduction == "mean" else total


def assert_same(got, want, rtol, atol):
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert g.dtype == e.dtype
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol)


VARIANTS = ({"where": WHERE}, {"reduction": "sum"})


@pytest.mark.parametrize(
    "dtype, rtol, atol",
    [pytest.param(jnp.float64, 1e-12, 1e-14, marks=pytest.mark.x64), (jnp.float32, 2e-5, 1e-6)],
)
def test_value_and_both_gradients_equal_the_unblocked_loss(dtype, rtol, atol):
    # (batch, time, d) with 2·7 = 14 tokens in blocks of 4 (the last block is padded), the mean
    # over the tokens a mask leaves in and the sum over all, and a vocabulary of 37.
    h, w, labels = problem((2, 7), 8, 37, dtype)

    def each(loss):
        grad = jax.value_and_grad(loss, argnums=(0, 1))
        return jax.jit(lambda h, w: [grad(h, w, labels, **kw) for kw in VARIANTS])(h, w)

    blocked = functools.partial(losses.linear_softmax_cross_entropy, block_size=4)
    assert_same(each(blocked), each(unblocked), rtol, atol)


@pytest.mark.x64
def test_derivatives_match_finite_differences_in_forward_and_reverse_mode():
    h, w, labels = problem((5,), 3, 6, jnp.float64, seed=1)
    where = jnp.array([True, False, True, True, True])

    def f(h, w):
        return fg.linear_softmax_cross_entropy(h, w, labels, where=where, block_size=2)

    fg.testing.check_grads(jax.jit(f), (h, w), modes=("fwd", "rev"))  # jit: compiled once


def test_no_counted_token_gives_zero_and_zero_gradients():
    h, w, labels = problem((3,), 4, 5, jnp.float32)
    f = lambda h, w: losses.linear_softmax_cross_entropy(h, w, labels, where=jnp.zeros(3, bool))
    loss, (dh, dw) = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(h, w)
    assert float(loss) == 0 and not jnp.any(dh) and not jnp.any(dw)


def test_bfloat16_computes_in_float32_and_returns_gradients_in_bfloat16():
    h, w, labels = problem((16,), 8, 50, jnp.float32)
    f = lambda h, w: losses.linear_softmax_cross_entropy(h, w, labels, block_size=8)
    grad = jax.value_and_grad(f, argnums=(0, 1))
    h16, w16 = h.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    (loss, (dh, dw)), (loss16, (dh16, dw16)) = jax.jit(lambda: (grad(h, w), grad(h16, w16)))()
    assert (loss16.dtype, dh16.dtype, dw16.dtype) == (jnp.bfloat16,) * 3
    np.testing.assert_allclose(float(loss16), float(loss), rtol=2e-2)
    np.testing.assert_allclose(dh16.astype(jnp.float32), dh, atol=2e-2 * float(jnp.abs(dh).max()))
    np.testing.assert_allclose(dw16.astype(jnp.float32), dw, atol=2e-2 * float(jnp.abs(dw).max()))


def test_temporary_memory_is_a_fraction_of_the_unblocked_loss_and_no_gradient_without_grad():
    # 512 tokens, d = 64, vocabulary 8192, blocks of 64 tokens: the unblocked value-and-grad holds
    # the (512, 8192) logits and their gradient; the blocked one a (64, 8192) block at a time.
    h, w, labels = problem((512,), 64, 8192, jnp.float32)
    blocked = lambda h, w: losses.linear_softmax_cross_entropy(h, w, labels, block_size=64)
    full = lambda h, w: losses.softmax_cross_entropy(h @ w, labels)
    ours = inspect.cost(jax.value_and_grad(blocked, argnums=(0, 1)), h, w)
    theirs = inspect.cost(jax.value_and_grad(full, argnums=(0, 1)), h, w)
    assert ours.temp_bytes <= theirs.temp_bytes / 4, (ours.temp_bytes, theirs.temp_bytes)
    # A call that is not differentiated computes no gradient: one product per block, not three.
    assert inspect.cost(blocked, h, w).flops < ours.flops / 2


BAD = {
    "d differs": (
        lambda h, w, y: fg.linear_softmax_cross_entropy(h, w[:-1], y),
        errors.ShapeError,
        r"h of shape \(4, 3\) and w of shape \(2, 5\)",
    ),
    "w not 2-D": (
        lambda h, w, y: fg.linear_softmax_cross_entropy(h, w[None], y),
        errors.ShapeError,
        r"w \(d, vocabulary\)",
    ),
    "labels shape": (
        lambda h, w, y: fg.linear_softmax_cross_entropy(h, w, y[:-1]),
        errors.ShapeError,
        r"labels must have shape \(4,\).*got \(3,\)",
    ),
    "float labels": (
        lambda h, w, y: fg.linear_softmax_cross_entropy(h, w, y.astype(jnp.float32)),
        errors.DTypeError,
        "labels must be integer classes; got dtype float32",
    ),
    "integer h": (
        lambda h, w, y: fg.linear_softmax_cross_entropy(y[:, None] + jnp.zeros((1, 3), int), w, y),
        errors.DTypeError,
        "floating-point",
    ),
    "where shape": (
        lambda h, w, y: fg.linear_softmax_cross_entropy(h, w, y, where=jnp.ones(3, bool)),
        errors.ShapeError,
        r"where must have the labels' shape \(4,\); got \(3,\)",
    ),
    "where dtype": (
        lambda h, w, y: fg.linear_softmax_cross_entropy(h, w, y, where=jnp.ones(4)),
        errors.DTypeError,
        "where must be a boolean mask",
    ),
    "block_size 0": (
        lambda h, w, y: fg.linear_softmax_cross_entropy(h, w, y, block_size=0),
        errors.ConfigError,
        "block_size must be a positive integer; got 0",
    ),
    "reduction none": (
        lambda h, w, y: fg.linear_softmax_cross_entropy(h, w, y, reduction="none"),
        errors.ConfigError,
        "reduction must be 'mean' or 'sum'",
    ),
    "no tokens": (
        lambda h, w, y: fg.linear_softmax_cross_entropy(h[:0], w, y[:0]),
        errors.ShapeError,
        "no tokens",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_inputs_raise_errors_naming_the_function(case):
    call, error, match = BAD[case]
    h, w, labels = problem((4,), 3, 5, jnp.float32)
    with pytest.raises(error, match=match) as info:
        call(h, w, labels)
    assert "linear_softmax_cross_entropy" in str(info.value)
