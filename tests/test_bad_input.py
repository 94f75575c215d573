"""The bad-input battery: each wrong call raises a funcgrad error whose message names the layer or
function, what it expected and what came — never an XLA error, a bare IndexError, or a silent
broadcast to a wrong result. The cases are one table, tests/bad_input_cases.py;
tests/test_error_family.py checks the same cases' error classes."""

import jax
import jax.numpy as jnp
import pytest
from bad_input_cases import cases, layers

from funcgrad import errors, losses, nn

KEY = jax.random.key(0)
CASES = cases()
LAYERS = layers()


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_bad_input_raises_a_clear_error(case_id):
    case = CASES[case_id]
    with pytest.raises(case.error, match=case.match):
        case.call()


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_empty_batch_gives_an_empty_result(name):
    layer, x = LAYERS[name]
    params = layer.init(KEY, x)
    assert layer.apply(params, x[:0]).shape[0] == 0


def test_nan_input_propagates_instead_of_crashing():
    layer, x = LAYERS["Dense"]
    y = layer.apply(layer.init(KEY, x), x.at[0, 0].set(jnp.nan))
    assert bool(jnp.isnan(y[0]).all()) and bool(jnp.isfinite(y[1]).all())


def test_legacy_raw_keys_are_accepted():
    assert nn.Dense(2).init(jax.random.PRNGKey(0), jnp.ones((1, 3)))["w"].shape == (3, 2)


def test_a_loss_of_the_right_shapes_raises_nothing():
    assert losses.mse(jnp.zeros((2, 2)), jnp.zeros((2, 2))) == 0


def test_every_case_names_a_funcgrad_error():
    assert all(issubclass(c.error, errors.FuncgradError) for c in CASES.values())
