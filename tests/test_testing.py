"""funcgrad.testing.check_grads names what is wrong: the order, the mode, the argument, the element."""

import re

import jax
import jax.numpy as jnp
import pytest

import funcgrad as fg


def wrong_first(name):
    """x³ whose backward is wrong at the second element only: 3x² + 1 there."""

    @fg.primitive(name=name, override=True)
    def f(x):
        return x**3

    @f.backward
    def _(inputs, output, g):
        (x,) = inputs
        return (g * (3 * x**2 + jnp.array([0.0, 1.0, 0.0])),)

    return f


def wrong_second(name):
    """x³ with a right first derivative whose own derivative is zero (stop_gradient)."""

    @fg.primitive(name=name, override=True)
    def f(x):
        return x**3

    @f.backward
    def _(inputs, output, g):
        return (g * 3 * jax.lax.stop_gradient(inputs[0]) ** 2,)

    return f


X = jnp.array([0.5, 1.5, -1.0])
NUM = r"(-?\d+(?:\.\d+)?(?:e[+-]?\d+)?)"


@pytest.mark.parametrize("mode", ["fwd", "rev"])
@pytest.mark.parametrize("order", [1, 2])
def test_a_wrong_first_derivative_is_order_1_with_its_worst_element(mode, order):
    # Before: with order=2 this was reported as "order 2", and no element was named.
    f = wrong_first("test_testing_wrong_first")
    with pytest.raises(AssertionError) as info:
        fg.testing.check_grads(lambda a, x: a * f(x), (2.0, X), order=order, modes=(mode,))
    msg = str(info.value)
    assert f"order-1 derivative in {mode} mode with respect to argument 1" in msg
    # d output[1] / d x[1]: expected 2·3·1.5² = 13.5; got 2·(3·1.5² + 1) = 15.5.
    worst = re.search(rf"d output\[1\] / d argument 1\[1\]: expected {NUM}, got {NUM}", msg)
    assert worst, msg
    assert float(worst.group(1)) == pytest.approx(13.5, rel=1e-6)
    assert float(worst.group(2)) == pytest.approx(15.5, rel=1e-12)


@pytest.mark.parametrize("inner", ["fwd", "rev"])
def test_a_wrong_second_derivative_is_order_2_naming_the_inner_mode(inner):
    f = wrong_second("test_testing_wrong_second")
    fg.testing.check_grads(f, (X,), order=1)  # the first derivative is right
    with pytest.raises(AssertionError) as info:
        fg.testing.check_grads(f, (X,), order=2, modes=(inner,))
    msg = str(info.value)
    assert f"order-2 derivative in {inner} mode of the {inner}-mode first derivative" in msg
    assert "with respect to argument 0" in msg
    # The worst element is a diagonal one, d²(x³)/dx² = 6x, and autodiff says 0.
    worst = re.search(rf"d \((?:J·v|uᵀJ)\)\[.*?\[(\d)\]\] / d argument 0\[(\d)\]: "
                      rf"expected {NUM}, got {NUM}", msg)  # fmt: skip
    assert worst, msg
    assert worst.group(1) == worst.group(2)
    assert float(worst.group(4)) == 0.0
    assert abs(float(worst.group(3))) > 1.0


def test_a_pytree_argument_is_named_by_its_key_path():
    f = wrong_first("test_testing_wrong_pytree")
    params = {"a": jnp.ones(2), "w": X}
    with pytest.raises(AssertionError, match=r"d output\[1\] / d argument 0\['w'\]\[1\]"):
        fg.testing.check_grads(lambda p: f(p["w"]) + p["a"].sum(), (params,), modes=("rev",))
