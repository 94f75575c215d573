import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from funcgrad import errors, losses


def test_mse_is_torch_mse_criterion():
    y, t = jnp.array([[17.5, 2.0]]), jnp.array([[10.0, 0.0]])
    assert float(losses.mse(y, t)) == pytest.approx((7.5**2 + 4) / 2)


@pytest.mark.parametrize(
    "reduction, expected", [("sum", 2.5), ("mean", 1.25), ("none", [2.0, 0.5])]
)
def test_squared_error_reductions(reduction, expected):
    out = losses.squared_error(jnp.array([3.0, 1.0]), jnp.array([1.0, 0.0]), reduction=reduction)
    np.testing.assert_allclose(out, expected)


def test_cross_entropy_integer_and_one_hot_agree_with_optax():
    logits = jax.random.normal(jax.random.key(0), (8, 5)) * 4
    labels = jax.random.randint(jax.random.key(1), (8,), 0, 5)
    onehot = jax.nn.one_hot(labels, 5)
    expected = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    np.testing.assert_allclose(losses.softmax_cross_entropy(logits, labels), expected, rtol=1e-6)
    np.testing.assert_allclose(losses.softmax_cross_entropy(logits, onehot), expected, rtol=1e-6)


def test_label_smoothing_matches_optax():
    logits = jax.random.normal(jax.random.key(0), (4, 3))
    labels = jnp.array([0, 2, 1, 1])
    smoothed = optax.smooth_labels(jax.nn.one_hot(labels, 3), 0.1)
    expected = optax.softmax_cross_entropy(logits, smoothed).mean()
    got = losses.softmax_cross_entropy(logits, labels, label_smoothing=0.1)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_cross_entropy_refuses_labels_that_fit_neither_form():
    logits = jnp.zeros((4, 3))
    with pytest.raises(
        errors.ShapeError,
        match=r"\(4, 2\).*neither integer class labels \(4,\) nor per-class targets \(4, 3\)",
    ):
        losses.softmax_cross_entropy(logits, jnp.zeros((4, 2)))
    with pytest.raises(errors.ShapeError, match=r"integer labels must have shape \(4,\)"):
        losses.softmax_cross_entropy(logits, jnp.zeros((4, 3), jnp.int32))


def test_cross_entropies_are_finite_at_extreme_float32_logits():
    logits = jnp.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 3e38]], jnp.float32)
    labels = jnp.array([1, 0])
    value, grad = jax.value_and_grad(losses.softmax_cross_entropy)(logits, labels)
    assert bool(jnp.isfinite(value)) and bool(jnp.all(jnp.isfinite(grad)))
    x = jnp.array([1e4, -1e4, 88.0, -89.0], jnp.float32)
    t = jnp.array([0.0, 1.0, 0.5, 0.5])
    value, grad = jax.value_and_grad(losses.sigmoid_binary_cross_entropy)(x, t)
    assert bool(jnp.isfinite(value)) and bool(jnp.all(jnp.isfinite(grad)))
    np.testing.assert_allclose(value, optax.sigmoid_binary_cross_entropy(x, t).mean(), rtol=1e-6)


def test_nll_of_log_softmax_is_cross_entropy():
    logits = jax.random.normal(jax.random.key(0), (6, 4))
    labels = jnp.arange(6) % 4
    np.testing.assert_allclose(
        losses.nll(jax.nn.log_softmax(logits), labels),
        losses.softmax_cross_entropy(logits, labels),
        rtol=1e-6,
    )


def test_huber_matches_optax():
    y = jnp.linspace(-3, 3, 13)
    np.testing.assert_allclose(
        losses.huber(y, jnp.zeros(13), delta=1.5), optax.huber_loss(y, delta=1.5).mean(), rtol=1e-6
    )


def test_l2_penalty_is_half_lambda_squared_norm_and_can_skip_biases():
    params = {
        "dense_0": {"w": jnp.array([1.0, 2.0]), "b": jnp.array([3.0])},
        "ln": {"scale": jnp.ones(2)},
    }
    assert float(losses.l2_penalty(params, 0.5)) == pytest.approx(0.25 * (1 + 4 + 9 + 2))
    only_w = losses.l2_penalty(params, 0.5, exclude=losses.BIASES_AND_NORMS)
    assert float(only_w) == pytest.approx(0.25 * 5)


@pytest.mark.parametrize("loss", [losses.mse, losses.squared_error, losses.huber])
def test_regression_losses_refuse_silent_broadcasting(loss):
    with pytest.raises(errors.ShapeError, match=r"\(4, 1\).*\(4,\)"):
        loss(jnp.zeros((4, 1)), jnp.zeros(4))


def test_unknown_reduction():
    with pytest.raises(errors.ConfigError, match="reduction"):
        losses.squared_error(jnp.zeros(2), jnp.zeros(2), reduction="avg")
