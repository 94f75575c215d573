"""The worked examples of SEEDS.md, with their exact float64 numbers (each also a script in examples/)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcgrad as fg

pytestmark = pytest.mark.x64  # the seeds' numbers are float64

ULP2 = 4.5e-16  # two float64 ulps, relative: XLA's exp/sin may round differently from libm


def test_seed1_torch_chain_node_values():
    import seed1_torch_chain as seed

    values = {k: float(jnp.squeeze(v)) for k, v in seed.node_values(seed.params).items()}
    assert values["linear"] == 2.0
    np.testing.assert_allclose(values["sigmoid"], 0.8807970779778823, rtol=ULP2)
    np.testing.assert_allclose(values["mul"], 17.615941559557648, rtol=ULP2)
    np.testing.assert_allclose(values["cost"], 58.00256583859738, rtol=ULP2)
    assert float(seed.cost(seed.params)) == pytest.approx(values["cost"], rel=ULP2)


def test_seed1_torch_chain_gradients():
    import seed1_torch_chain as seed

    grads = seed.gradients()
    np.testing.assert_allclose(
        grads["dense_0"]["w"].T, [[63.9700008449225, 95.95500126738375]], rtol=ULP2
    )
    np.testing.assert_allclose(grads["dense_0"]["b"], [31.98500042246125], rtol=ULP2)
    np.testing.assert_allclose(grads["scale_2"]["factor"], [13.416198143417384], rtol=ULP2)


@pytest.mark.parametrize("lam", [0.0, 0.3])
def test_seed2_logistic_least_squares_matches_hand_backward(lam):
    import seed2_logistic_least_squares as seed

    rng = np.random.default_rng(2)
    for _ in range(20):
        w, b, x, t = rng.normal(size=4)
        auto = seed.autodiff(w, b, x, t, lam)
        hand = seed.by_hand(w, b, x, t, lam)
        np.testing.assert_allclose(auto, hand, rtol=1e-13, atol=1e-15)


def test_seed2_penalty_fan_out_adds_lambda_w():
    import seed2_logistic_least_squares as seed

    plain = seed.autodiff(0.8, 0.1, 2.0, 0.0, 0.0)
    regularised = seed.autodiff(0.8, 0.1, 2.0, 0.0, 0.5)
    assert float(regularised[0] - plain[0]) == pytest.approx(0.5 * 0.8, rel=1e-14)
    assert float(regularised[1]) == float(plain[1])


def test_seed3_multivariate_chain_rule_both_modes():
    import seed3_multivariate_chain_rule as seed

    t = jnp.float64(0.7)
    expected = 2.498432319393961
    np.testing.assert_allclose(float(jax.grad(seed.f_of_t)(t)), expected, rtol=ULP2)
    np.testing.assert_allclose(float(jax.jvp(seed.f_of_t, (t,), (1.0,))[1]), expected, rtol=ULP2)
    np.testing.assert_allclose(float(seed.by_hand(t)), expected, rtol=ULP2)


def test_seed4_softmax_regression_gradients_are_y_minus_t():
    import softmax_regression as seed

    # Jitted: one program each, not one compile per eager op.
    x, t = jax.jit(seed.make_batch, static_argnames="n")(jax.random.key(3), n=16)
    params = {"w": jax.random.normal(jax.random.key(4), (2, 3)), "b": jnp.arange(3.0)}
    auto = jax.jit(jax.grad(seed.loss))(params, x, t)
    hand = jax.jit(seed.by_hand)(params, x, t)
    np.testing.assert_allclose(auto["w"], hand["w"], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(auto["b"], hand["b"], rtol=1e-12, atol=1e-15)


def test_seed4_gradient_descent_lowers_the_loss_every_step():
    import softmax_regression as seed

    _, history = seed.train(steps=20)
    assert all(b < a for a, b in itertools.pairwise(history))
    assert history[-1] < 0.5 * history[0]


def test_seed5_log1pexp_value_and_derivative():
    x = jnp.float64(4.5)
    assert float(fg.log1pexp(x)) == pytest.approx(4.511047744848594, rel=ULP2)
    assert float(jax.grad(fg.log1pexp)(x)) == pytest.approx(0.9890130573694068, rel=ULP2)
    assert float(jax.jacfwd(fg.log1pexp)(x)) == pytest.approx(0.9890130573694068, rel=ULP2)


def test_seed5_user_written_operator_matches_the_seed():
    import custom_primitive as seed

    x = jnp.float64(4.5)
    assert float(seed.my_log1pexp(x)) == pytest.approx(4.511047744848594, rel=ULP2)
    assert float(jax.grad(seed.my_log1pexp)(x)) == pytest.approx(0.9890130573694068, rel=ULP2)


def test_seed5_naive_overflows_builtin_does_not():
    import custom_primitive as seed

    x = jnp.float32(89.0)
    assert np.isinf(seed.naive_log1pexp(x))
    assert float(fg.log1pexp(x)) == 89.0
    assert float(seed.my_log1pexp(x)) == 89.0


def test_seed6_one_sgd_step_lowers_the_loss():
    import seed6_traditional_network as seed

    # Jitted: one program each, not one compile per eager op.
    params = jax.jit(seed.model.init)(jax.random.key(0), seed.image)
    assert params["dense_1"]["w"].shape == (600, 60)
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    new_params, before = jax.jit(seed.sgd_step)(params)
    assert float(jax.jit(seed.loss)(new_params)) < float(before)


def test_seed7_nodes_agree_with_jax_to_rounding():
    import seed7_caffe_nodes as seed

    args = seed.example_inputs()
    # Jitted: one program each, not one compile per eager op.
    ours = jax.jit(jax.grad(seed.net, argnums=(0, 1, 2, 3, 4)))(*args)
    theirs = jax.jit(jax.grad(seed.reference, argnums=(0, 1, 2, 3, 4)))(*args)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)
    fg.testing.check_grads(seed.net, args, order=2)


def test_seed7_shared_weight_gradient_is_the_sum_of_both_uses():
    import seed7_caffe_nodes as seed

    w, b1, b2, x, t = seed.example_inputs()

    def split(w1, w2):
        h = seed.relu(seed.dense(x, w1, b1))
        return 3.0 * seed.squared_error(seed.dense(h, w2, b2), t)

    g1, g2 = jax.grad(split, argnums=(0, 1))(w, w)
    np.testing.assert_allclose(jax.grad(seed.net)(w, b1, b2, x, t), g1 + g2, rtol=1e-14)


def test_seed7_loss_node_honours_output_diff():
    import seed7_caffe_nodes as seed

    y, t = jnp.array([1.0, 2.0]), jnp.array([0.5, 0.0])
    _, vjp = jax.vjp(seed.squared_error, y, t)
    np.testing.assert_allclose(vjp(jnp.float64(1.0))[0], y - t)
    np.testing.assert_allclose(vjp(jnp.float64(2.5))[0], 2.5 * (y - t))
