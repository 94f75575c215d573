"""The primitive mechanism: every JAX transformation, forward mode from the backward rule, clear errors."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcgrad as fg
from funcgrad import errors


def make_cube(name, factor=3.0, **options):
    @fg.primitive(name=name, override=True, **options)
    def cube(x):
        return x**3

    @cube.backward
    def _(inputs, output, output_grad):
        (x,) = inputs
        return (factor * x**2 * output_grad,)

    return cube


cube = make_cube("test_cube")
X = np.float64(1.3)  # float64 in the x64 tests, float32 in the others


def test_grad_and_value_and_grad():
    assert float(jax.grad(cube)(X)) == pytest.approx(3 * 1.3**2)
    value, grad = jax.value_and_grad(cube)(X)
    assert (float(value), float(grad)) == pytest.approx((1.3**3, 3 * 1.3**2))


@pytest.mark.x64
@pytest.mark.parametrize(
    "transform",
    [jax.jacfwd, jax.jacrev, lambda f: jax.jit(jax.grad(f)), lambda f: jax.grad(jax.checkpoint(f))],
)
def test_first_derivative_under_every_transform(transform):
    assert float(transform(cube)(X)) == pytest.approx(3 * 1.3**2, rel=1e-14)


@pytest.mark.x64
@pytest.mark.parametrize(
    "second",
    [jax.hessian, lambda f: jax.grad(jax.grad(f)), lambda f: jax.jacfwd(jax.jacrev(f))],
)
def test_second_derivative(second):
    assert float(second(cube)(X)) == pytest.approx(6 * 1.3, rel=1e-14)


def test_jvp_and_linearize_use_the_transposed_backward_rule():
    _, tangent = jax.jvp(cube, (X,), (jnp.float64(2.0),))
    assert float(tangent) == pytest.approx(2 * 3 * 1.3**2)
    _, linear = jax.linearize(cube, X)
    assert float(linear(1.0)) == pytest.approx(3 * 1.3**2)


def test_vmap_any_axis_and_nested():
    xs = jnp.arange(12.0).reshape(3, 4)
    np.testing.assert_allclose(jax.vmap(cube, in_axes=1)(xs), (xs**3).T)
    np.testing.assert_allclose(jax.vmap(jax.vmap(jax.grad(cube)))(xs), 3 * xs**2)


def test_inside_scan_cond_and_while_loop():
    def scanned(x):
        return jax.lax.scan(lambda c, _: (cube(c) * 0.5, None), x, None, length=3)[0]

    reference = jax.grad(lambda x: ((x**3 * 0.5) ** 3 * 0.5) ** 3 * 0.5)(0.9)
    assert float(jax.grad(scanned)(0.9)) == pytest.approx(float(reference), rel=1e-12)
    chosen = jax.grad(lambda x: jax.lax.cond(x > 0, cube, jnp.sin, x))(X)
    assert float(chosen) == pytest.approx(3 * 1.3**2)
    looped = jax.lax.while_loop(lambda c: c[0] < 2, lambda c: (c[0] + 1, cube(c[1])), (0, X))[1]
    assert float(looped) == pytest.approx(1.3**9)


def test_static_keyword_arguments_reach_both_rules():
    @fg.primitive(name="test_power", override=True)
    def power(x, *, n):
        return x**n

    @power.backward
    def _(inputs, output, g, *, n):
        return (n * inputs[0] ** (n - 1) * g,)

    assert float(jax.grad(lambda x: power(x, n=4))(2.0)) == 32.0
    assert float(jax.jacfwd(lambda x: power(x, n=4))(2.0)) == 32.0
    with pytest.raises(
        errors.PrimitiveError, match="'n' of primitive 'test_power' must be hashable"
    ):
        power(2.0, n=[4])


def test_integer_inputs_get_no_gradient():
    @fg.primitive(name="test_take", override=True)
    def take(x, idx):
        return x[idx]

    @take.backward
    def _(inputs, output, g):
        x, idx = inputs
        return (jnp.zeros_like(x).at[idx].add(g), None)

    x = jnp.arange(4.0)
    np.testing.assert_array_equal(jax.grad(lambda v: take(v, jnp.array(2)))(x), [0, 0, 1, 0])
    np.testing.assert_array_equal(jax.jacfwd(lambda v: take(v, jnp.array(2)))(x), [0, 0, 1, 0])


def test_pytree_outputs():
    @fg.primitive(name="test_sincos", override=True)
    def sincos(x):
        return {"sin": jnp.sin(x), "cos": jnp.cos(x)}

    @sincos.backward
    def _(inputs, output, g):
        (x,) = inputs
        return (g["sin"] * jnp.cos(x) - g["cos"] * jnp.sin(x),)

    fg.testing.check_grads(lambda x: sincos(x)["sin"] + 2 * sincos(x)["cos"], (0.4,), order=2)


def test_residuals_reach_the_backward_rule():
    seen = []

    @fg.primitive(name="test_exp_res", override=True, has_residuals=True)
    def exp(x):
        e = jnp.exp(x)
        return e, e

    @exp.backward
    def _(inputs, output, g, residuals):
        seen.append(residuals)
        return (g * residuals,)

    assert float(jax.grad(exp)(1.0)) == pytest.approx(np.e)
    assert float(jax.jacfwd(exp)(1.0)) == pytest.approx(np.e)
    assert seen


def test_user_given_forward_rule_is_used():
    @fg.primitive(name="test_fwd_rule", override=True)
    def double(x):
        return 2 * x

    @double.backward
    def _(inputs, output, g):
        return (2 * g,)

    @double.forward_tangent
    def _(inputs, output, tangents):
        return 2 * tangents[0] + 0 * inputs[0]

    assert float(jax.jvp(double, (1.0,), (1.0,))[1]) == 2.0


def test_reverse_only_primitive_refuses_forward_mode_by_name():
    @fg.primitive(name="test_clip_rev", override=True, reverse_only=True)
    def ident(x):
        return x

    @ident.backward
    def _(inputs, output, g):
        return (jnp.clip(g, -1, 1),)

    assert float(jax.grad(lambda x: 5 * ident(x))(0.0)) == 1.0
    with pytest.raises(errors.PrimitiveError, match="'test_clip_rev' is reverse-only"):
        jax.jvp(ident, (1.0,), (1.0,))


def test_non_linear_backward_without_reverse_only_says_so():
    @fg.primitive(name="test_nonlinear", override=True)
    def ident(x):
        return x

    @ident.backward
    def _(inputs, output, g):
        return (jnp.clip(g, -1, 1),)

    with pytest.raises(
        errors.PrimitiveError, match="must be linear in output_grad.*reverse_only=True"
    ):
        jax.grad(ident)(1.0)


@pytest.mark.x64
def test_wrong_gradient_count_shape_and_dtype_are_caught():
    @fg.primitive(name="test_bad", override=True)
    def f(x, y):
        return x * y

    rules = {
        "returned 1 gradients for 2": lambda i, o, g: (g,),
        r"shape \(1, 3\).*shape \(3,\)": lambda i, o, g: (g[None], None),
        "dtype float32.*dtype float64": lambda i, o, g: (g.astype(jnp.float32), None),
        "must return a tuple": lambda i, o, g: g,
    }
    x = jnp.ones(3, jnp.float64)
    for message, rule in rules.items():
        f.backward(rule)
        with pytest.raises(errors.PrimitiveError, match=message):
            jax.grad(lambda v: f(v, x).sum())(x)


def test_call_before_backward_rule():
    @fg.primitive(name="test_no_rule", override=True)
    def f(x):
        return x

    with pytest.raises(errors.PrimitiveError, match="before a backward rule"):
        f(1.0)


def test_registry_names_get_describe_and_taken_names():
    assert "test_cube" in fg.primitives.names()
    assert fg.primitives.get("test_cube") is cube
    assert "log1pexp | (x: 'Array')" in fg.primitives.describe()
    with pytest.raises(errors.PrimitiveError, match="no primitive named 'nope'"):
        fg.primitives.get("nope")
    with pytest.raises(errors.PrimitiveError, match="'log1pexp' is already registered"):

        @fg.primitive(name="log1pexp")
        def other(x):
            return x

    replaced = make_cube("test_cube", factor=3.0)
    assert fg.primitives.get("test_cube") is replaced


def test_check_grads_catches_a_backward_wrong_by_factor_two():
    wrong = make_cube("test_cube_wrong", factor=6.0)
    for modes in (("rev",), ("fwd",)):
        with pytest.raises(AssertionError, match=r"argument 0.*expected.*got"):
            fg.testing.check_grads(wrong, (jnp.array([0.5, 1.5]),), modes=modes)
    with pytest.raises(AssertionError):
        fg.testing.check_primitive(wrong, jnp.array([0.5, 1.5]))


def test_check_grads_catches_a_wrong_second_derivative():
    @fg.primitive(name="test_wrong_second", override=True)
    def f(x):
        return x**3

    @f.backward
    def _(inputs, output, g):
        return (g * 3 * jax.lax.stop_gradient(inputs[0]) ** 2,)

    fg.testing.check_grads(f, (1.2,), order=1)
    with pytest.raises(
        AssertionError, match="order-2 derivative in fwd mode of the fwd-mode first derivative"
    ):
        fg.testing.check_grads(f, (1.2,), order=2)


def test_check_primitive_passes_on_a_correct_primitive():
    fg.testing.check_primitive(cube, jnp.array([0.5, -1.5]))


# Every built-in, called by name exactly as its public function is called (issue 14, item 11).
_Z = jnp.array([[0.3, -1.2, 2.0], [1.0, 0.5, -0.7]])
BUILT_IN_CALLS = {
    "log1pexp": ((_Z,), {}),
    "log_sigmoid": ((_Z,), {}),
    "sigmoid": ((_Z,), {}),
    "logaddexp": ((_Z, _Z[::-1]), {}),
    "logsumexp": ((_Z,), {"axis": -1}),
    "softmax": ((_Z,), {"axis": 0}),
    "log_softmax": ((_Z,), {"where": _Z > -1}),
    "log1mexp": ((jnp.abs(_Z) + 0.1,), {}),
    "safe_norm": ((_Z,), {}),
    "xlogy": ((_Z, jnp.abs(_Z)), {}),
    "softmax_cross_entropy": ((_Z, jnp.array([2, 0])), {}),
    "linear_softmax_cross_entropy": ((_Z, _Z.T, jnp.array([1, 0])), {"block_size": 1}),
    "sigmoid_binary_cross_entropy": ((_Z, jnp.ones_like(_Z)), {}),
    "clip_gradient": ((_Z, -1.0, 1.0), {}),
    "scale_gradient": ((_Z, -1.0), {}),
    "straight_through": ((_Z,), {"fn": "sign"}),
}


def test_every_built_in_is_listed_here():
    # The registry's own doctests register examples from funcgrad.primitives.registry.
    modules = {n: fg.primitives.get(n).fn.__module__ for n in fg.primitives.names()}
    built_in = {
        n for n, m in modules.items()
        if m.startswith("funcgrad.primitives.") and m != "funcgrad.primitives.registry"
    }  # fmt: skip
    assert built_in == set(BUILT_IN_CALLS)


def value_and_gradient(fn, args, kwargs):
    """fn(*args, **kwargs) and the gradient of its sum in args[0], in one jitted program (op by
    op, every primitive of both passes compiles on its own). One program per function, so that
    XLA cannot share work between the two being compared."""
    rest = args[1:]
    run = jax.jit(
        lambda x: (fn(x, *rest, **kwargs), jax.grad(lambda v: jnp.sum(fn(v, *rest, **kwargs)))(x))
    )
    return run(args[0])


@pytest.mark.parametrize("name", sorted(BUILT_IN_CALLS))
def test_get_returns_the_public_calling_convention(name):
    args, kwargs = BUILT_IN_CALLS[name]
    public = getattr(fg, name)
    by_name = fg.primitives.get(name)
    value, grad = value_and_gradient(by_name, args, kwargs)
    public_value, public_grad = value_and_gradient(public, args, kwargs)
    np.testing.assert_array_equal(value, public_value)
    np.testing.assert_array_equal(grad, public_grad)
    assert str(inspect.signature(public)) in fg.primitives.describe()
