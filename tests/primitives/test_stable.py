"""The built-ins against a 50-digit mpmath reference at the extremes of float32 and float64.

Values and gradients must be within a few ulp of the exact answer, scaled by the problem's condition
number |x·f'(x)/f(x)| (no formula can do better once x itself is rounded), and never inf or NaN where the
mathematical result is finite.
"""

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest

import funcgrad as fg

mpmath.mp.dps = 50
GRID = [0.0, 1e-30, 1.0, 30.0, 88.7, 89.0, 709.0, 710.0, 1e4, np.inf]
GRID = sorted({s * v for v in GRID for s in (1.0, -1.0)})
DTYPES = [jnp.float32, pytest.param(jnp.float64, marks=pytest.mark.x64)]
ULPS = 8


def mp_sigmoid(x):
    return 1 / (1 + mpmath.exp(-x))


def mp_log1pexp(x):
    return mpmath.log1p(mpmath.exp(x))


# name -> (funcgrad function of one x, reference value, reference derivative, domain filter)
CASES = {
    "log1pexp": (fg.log1pexp, mp_log1pexp, mp_sigmoid, None),
    "log_sigmoid": (fg.log_sigmoid, lambda x: -mp_log1pexp(-x), lambda x: mp_sigmoid(-x), None),
    "sigmoid": (fg.sigmoid, mp_sigmoid, lambda x: mp_sigmoid(x) * mp_sigmoid(-x), None),
    "log1mexp": (
        fg.log1mexp,
        lambda x: mpmath.log1p(-mpmath.exp(-x)) if x > 1 else mpmath.log(-mpmath.expm1(-x)),
        lambda x: 1 / mpmath.expm1(x),
        lambda x: x > 0,
    ),
    "logaddexp_with_0.3": (
        lambda x: fg.logaddexp(x, jnp.full_like(x, 0.3)),
        lambda x: mpmath.log(mpmath.exp(x) + mpmath.exp(mpmath.mpf("0.3"))),
        lambda x: mp_sigmoid(x - mpmath.mpf("0.3")),
        None,
    ),
    "sigmoid_bce_target_0.25": (
        lambda x: fg.sigmoid_binary_cross_entropy(x, jnp.full_like(x, 0.25)),
        lambda x: (
            mpmath.mpf("0.75") * max(x, 0)
            + mpmath.mpf("0.25") * max(-x, 0)
            + mpmath.log1p(mpmath.exp(-abs(x)))
        ),
        lambda x: mp_sigmoid(x) - mpmath.mpf("0.25"),
        None,
    ),
    "xlogy_with_2.5": (
        lambda x: fg.xlogy(x, jnp.full_like(x, 2.5)),
        lambda x: x * mpmath.log(mpmath.mpf("2.5")),
        lambda x: mpmath.log(mpmath.mpf("2.5")),
        None,
    ),
}


def to_float(value, dtype):
    """Round an mpmath value to dtype, as the exact answer would be stored."""
    return np.asarray(float(value), np.float64).astype(dtype)


def condition(f, x):
    """|x·f'(x)/f(x)|, the relative sensitivity of f to a relative change of x."""
    if not mpmath.isfinite(x) or x == 0:
        return 1.0
    value = f(x)
    if value == 0:
        return 1.0
    return float(abs(x * mpmath.diff(f, x) / value))


def close(got, ref, dtype, what, kappa=1.0):
    info = np.finfo(dtype)
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, np.float64)
    if np.isfinite(ref):
        assert np.isfinite(got), f"{what}: got {got}, expected finite {ref}"
        tolerance = ULPS * float(info.eps) * max(1.0, kappa) * abs(ref) + float(info.tiny)
        assert abs(got - ref) <= tolerance, f"{what}: got {got!r}, expected {ref!r}"
    else:
        assert got == ref, f"{what}: got {got}, expected {ref}"


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_value_and_gradient_at_the_extremes(name, dtype):
    fn, ref_value, ref_grad, domain = CASES[name]
    # Value, reverse- and forward-mode derivative in one compiled program, compiled once for the
    # whole grid (op by op, every primitive of all three compiled separately).
    evaluate = jax.jit(
        lambda x: (fn(x), jax.grad(fn)(x), jax.jvp(fn, (x,), (jnp.ones_like(x),))[1])
    )
    for x0 in GRID:
        x = jnp.asarray(x0, dtype)
        if not np.isfinite(float(x)) and name in ("xlogy_with_2.5",):
            continue
        if domain is not None and not domain(float(x)):
            continue
        mx = mpmath.mpf(float(x)) if np.isfinite(float(x)) else mpmath.inf * np.sign(float(x))
        value, grad, tangent = evaluate(x)
        assert value.dtype == dtype
        where = f"({x0}) in {dtype.__name__}"
        expected, slope = to_float(ref_value(mx), dtype), to_float(ref_grad(mx), dtype)
        k_value, k_grad = condition(ref_value, mx), condition(ref_grad, mx)
        close(value, expected, dtype, f"{name}{where}", k_value)
        close(grad, slope, dtype, f"{name}'{where}", k_grad)
        close(tangent, slope, dtype, f"jvp {name}{where}", k_grad)


@jax.jit
def _row_functions(row):
    """logsumexp and its gradient, softmax, log_softmax, cross-entropy against label 2 and its
    gradient, of one row: one compiled program per dtype for every row of the grid."""
    label = jnp.array([2])
    ce = lambda z: fg.softmax_cross_entropy(z[None], label)[0]
    return (
        fg.logsumexp(row), jax.grad(fg.logsumexp)(row), fg.softmax(row), fg.log_softmax(row),
        ce(row), jax.grad(ce)(row),
    )  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_logsumexp_softmax_and_cross_entropy_rows_at_the_extremes(dtype):
    for x0 in GRID:
        row = jnp.asarray([x0, 1.0, -2.0], dtype)
        if not np.all(np.isfinite(np.asarray(row))):
            continue
        mrow = [mpmath.mpf(float(v)) for v in row]
        k = max(1.0, abs(x0))
        # Relative to the first entry, so that its log-probability keeps all its digits.
        tail = mpmath.log1p(sum(mpmath.exp(v - mrow[0]) for v in mrow[1:]))
        lse = mrow[0] + tail
        log_probs = [(v - mrow[0]) - tail for v in mrow]
        probs = [mpmath.exp(v - lse) for v in mrow]
        lse_got, lse_grad, softmax, log_softmax, loss, grad = _row_functions(row)
        close(lse_got, to_float(lse, dtype), dtype, f"logsumexp at {x0}", k)
        for got, p in zip(lse_grad, probs, strict=True):
            close(got, to_float(p, dtype), dtype, f"logsumexp' at {x0}", k)
        for got, p in zip(softmax, probs, strict=True):
            close(got, to_float(p, dtype), dtype, f"softmax at {x0}", k)
        for got, lp in zip(log_softmax, log_probs, strict=True):
            close(got, to_float(lp, dtype), dtype, f"log_softmax at {x0}", k)
        close(loss, to_float(lse - mrow[2], dtype), dtype, f"cross-entropy at {x0}", k)
        onehot = [0, 0, 1]
        for got, p, t in zip(grad, probs, onehot, strict=True):
            close(got, to_float(p - t, dtype), dtype, f"cross-entropy' at {x0}", k)


_norm_and_gradient = jax.jit(lambda x: (fg.safe_norm(x), jax.grad(fg.safe_norm)(x)))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("scale", [1e20, 1e-23, 0.0, 1.0])
def test_safe_norm_has_no_overflow_underflow_or_nan(scale, dtype):
    x = jnp.asarray([3 * scale, 4 * scale], dtype)
    norm, grad = _norm_and_gradient(x)  # compiled once per dtype, for every scale
    close(norm, to_float(5 * scale, dtype), dtype, f"norm at {scale}")
    expected = [0.6, 0.8] if scale else [0.0, 0.0]
    for got, e in zip(grad, expected, strict=True):
        close(got, to_float(e, dtype), dtype, f"norm' at {scale}")


# funcgrad's conventions where JAX and PyTorch differ or leave the answer undefined. Each test
# computes its values and derivatives in one jitted program: op by op, every primitive of the
# forward and backward passes would compile separately.


def test_logsumexp_of_all_minus_inf_is_minus_inf_with_zero_gradient():
    row = jnp.full((2, 3), -jnp.inf)
    lse = lambda r: fg.logsumexp(r, axis=1)
    value, grad = jax.jit(lambda r: (lse(r), jax.grad(lambda v: lse(v).sum())(r)))(row)
    assert bool(jnp.all(value == -jnp.inf))
    np.testing.assert_array_equal(grad, 0)


def test_logsumexp_where_mask_and_keepdims():
    x = jnp.array([[1.0, 2.0, 50.0]])
    mask = jnp.array([[True, True, False]])
    masked = lambda v: fg.logsumexp(v, axis=1, where=mask)

    @jax.jit
    def run(v):
        return (
            masked(v),
            fg.logsumexp(v, axis=1, keepdims=True),
            jax.grad(lambda u: masked(u).sum())(v),
        )

    value, kept, grad = run(x)
    np.testing.assert_allclose(value, jnp.logaddexp(1.0, 2.0))
    assert kept.shape == (1, 1)
    assert float(grad[0, 2]) == 0.0


def test_fully_masked_softmax_rows_give_zero_and_minus_inf_never_nan():
    x = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    mask = jnp.array([[True, True], [False, False]])

    @jax.jit
    def run(v):
        out = []
        for f in (fg.softmax, fg.log_softmax):
            kept = lambda u, f=f: jnp.where(mask, f(u, where=mask), 0)
            grad = jax.grad(lambda u, kept=kept: jnp.sum(kept(u)))(v)
            out.append((f(v, where=mask), grad, jax.jacfwd(kept)(v)))
        return out

    (probs, *_), (log_probs, *_) = out = run(x)
    np.testing.assert_array_equal(probs[1], [0, 0])
    assert bool(jnp.all(log_probs[1] == -jnp.inf))
    for _, g, fwd in out:
        assert bool(jnp.all(jnp.isfinite(g)))
        assert bool(jnp.all(jnp.isfinite(fwd)))


def test_cross_entropy_with_minus_inf_logit_of_zero_weight_is_finite():
    logits = jnp.array([[0.0, -jnp.inf, 1.0]])
    targets = jnp.array([[0.5, 0.0, 0.5]])
    total = lambda z: fg.softmax_cross_entropy(z, targets).sum()
    run = jax.jit(lambda z: (fg.softmax_cross_entropy(z, targets), jax.grad(total)(z),
                             jax.hessian(total)(z)))  # fmt: skip
    loss, grad, hess = run(logits)
    assert bool(jnp.all(jnp.isfinite(loss)))
    assert bool(jnp.all(jnp.isfinite(grad)))
    assert bool(jnp.all(jnp.isfinite(hess)))


def test_safe_norm_gradient_at_zero_is_zero_in_both_modes():
    both = jax.jit(lambda x: (jax.grad(fg.safe_norm)(x), jax.jacfwd(fg.safe_norm)(x)))
    rev, fwd = both(jnp.zeros(3))
    np.testing.assert_array_equal(rev, 0)
    np.testing.assert_array_equal(fwd, 0)


def test_safe_norm_of_a_subnormal_vector_is_finite_jitted_and_eager():
    """XLA:CPU flushes subnormals in compiled code: a subnormal scale once gave 0/0 = NaN under jit."""
    x = jnp.array([1e-40], jnp.float32)
    for run in (lambda x: (fg.safe_norm(x), jax.grad(fg.safe_norm)(x)), _norm_and_gradient):
        value, grad = run(x)
        assert np.isfinite(value) and 0 <= float(value) <= 2e-40
        assert np.all(np.isfinite(grad))


def test_xlogy_is_zero_at_x_zero_whatever_y():
    for y in (0.0, 1.0, jnp.inf):
        assert float(fg.xlogy(0.0, y)) == 0.0
    assert float(jax.grad(fg.xlogy, argnums=1)(0.0, 0.0)) == 0.0


def test_logaddexp_both_minus_inf():
    run = jax.jit(lambda a, b: (fg.logaddexp(a, b), jax.grad(fg.logaddexp, argnums=(0, 1))(a, b)))
    value, grads = run(-jnp.inf, -jnp.inf)
    assert float(value) == -np.inf
    assert [float(g) for g in grads] == [0.0, 0.0]


@pytest.mark.x64
def test_log1pexp_backward_does_not_cancel_below_minus_17():
    # The textbook dy·(1 − 1/(1 + eˣ)) rounds to 0 here; the true derivative is ≈ eˣ.
    x = jnp.float64(-30.0)
    assert float(jax.grad(fg.log1pexp)(x)) == pytest.approx(np.exp(-30.0), rel=1e-14)


def test_gradient_tools():
    assert float(jax.grad(lambda x: 10 * fg.clip_gradient(x, -1.0, 2.0))(0.0)) == 2.0
    assert float(jax.grad(lambda x: 3 * fg.scale_gradient(x, -1.0))(0.0)) == -3.0
    assert float(jax.jvp(lambda x: fg.scale_gradient(x, 0.5), (1.0,), (1.0,))[1]) == 0.5
    assert float(fg.straight_through(0.6)) == 1.0
    assert float(fg.straight_through(-0.2, "sign")) == -1.0
    assert float(jax.grad(lambda x: fg.straight_through(x, "sign"))(0.3)) == 1.0
    with pytest.raises(fg.errors.PrimitiveError, match="clip_gradient.*reverse-only"):
        jax.jvp(lambda x: fg.clip_gradient(x, -1.0, 1.0), (1.0,), (1.0,))


@pytest.mark.parametrize(
    "prim, args",
    [
        (fg.log1pexp, (jnp.array([-20.0, -1.0, 0.5, 30.0]),)),
        (fg.log_sigmoid, (jnp.array([-20.0, 0.5, 30.0]),)),
        (fg.sigmoid, (jnp.array([-5.0, 0.5, 3.0]),)),
        (fg.logaddexp, (jnp.array([-3.0, 2.0]), jnp.array([0.5, 2.5]))),
        (fg.log1mexp, (jnp.array([0.1, 0.7, 5.0]),)),
        (fg.xlogy, (jnp.array([0.5, 2.0]), jnp.array([0.3, 4.0]))),
        (fg.logsumexp, (jnp.array([[0.1, 2.0, -1.0]]),)),
        (fg.softmax, (jnp.array([[0.1, 2.0, -1.0]]),)),
        (fg.log_softmax, (jnp.array([[0.1, 2.0, -1.0]]),)),
        (fg.safe_norm, (jnp.array([0.3, -1.2, 2.0]),)),
        (fg.sigmoid_binary_cross_entropy, (jnp.array([-2.0, 3.0]), jnp.array([0.2, 0.9]))),
        (fg.softmax_cross_entropy, (jnp.array([[0.1, 2.0, -1.0]]), jnp.array([[0.2, 0.5, 0.3]]))),
    ],
)
def test_check_primitive_on_every_builtin(prim, args):
    fg.testing.check_primitive(prim, *args)


@pytest.mark.x64
@pytest.mark.parametrize("classes", [10, 300], ids=["short rows", "long rows"])
def test_cross_entropy_gradient_on_short_and_long_rows(classes):
    """Both backward forms (a compare per logit, a scatter per row) give softmax − one-hot.

    Integer labels take optax's one-pass form, exact to an absolute ε per class; one-hot
    targets keep the mass off the maximum apart, so a dominant class's loss keeps its digits."""

    logits = jax.random.normal(jax.random.key(0), (4, classes), jnp.float64) * 3
    labels = jnp.array([0, classes - 1, 3, 7])

    @jax.jit  # one compiled program per row length (op by op, every primitive compiles apart)
    def run(logits, labels):
        grad = jax.grad(lambda z: jnp.sum(fg.softmax_cross_entropy(z, labels)))(logits)
        dominant = jnp.zeros((1, classes), jnp.float64).at[0, 5].set(40.0)
        g = jax.grad(lambda z: fg.softmax_cross_entropy(z, jnp.array([5]))[0])(dominant)
        onehot = jax.nn.one_hot(jnp.array([5]), classes, dtype=jnp.float64)
        return grad, g, fg.softmax_cross_entropy(dominant, onehot)[0]

    grad, g, loss = run(logits, labels)
    # The reference in a program of its own, so that XLA cannot share its softmax with the
    # gradient's.
    expected = jax.jit(lambda z, y: jax.nn.softmax(z) - jax.nn.one_hot(y, classes, dtype=z.dtype))
    expected = expected(logits, labels)
    np.testing.assert_allclose(grad, expected, rtol=1e-12, atol=1e-15)
    rest = (classes - 1) * np.exp(-40.0)
    assert abs(float(g[0, 5]) + rest / (1 + rest)) <= classes * np.finfo(np.float64).eps
    np.testing.assert_allclose(float(loss), np.log1p(rest), rtol=1e-14)
