"""remat on serial and repeat (less memory, same numbers) and the one-line mixed-precision policy."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from backends import ON_CPU, tolerance

from funcgrad import inspect, nn
from funcgrad.errors import ConfigError, DTypeError, ShapeError


def mlp(depth, remat=False, old_remat=False):
    layers = [nn.serial(nn.Dense(64), nn.tanh) for _ in range(depth)]
    if remat is not False:  # the one way: each layer a rematerialised segment
        layers = [nn.remat(layer, None if remat is True else remat) for layer in layers]
    return nn.serial(*layers, remat=old_remat)


def grads_and_temp(model, x):
    params = model.init(jax.random.key(0), x)
    loss = lambda p: jnp.sum(model.apply(p, x) ** 2)
    return params, jax.grad(loss)(params), inspect.cost(jax.grad(loss), params).temp_bytes


def test_serial_remat_keeps_keys_and_gradients():
    x = jax.random.normal(jax.random.key(1), (32, 64))
    plain, g0, _ = grads_and_temp(mlp(4), x)
    rem, g1, _ = grads_and_temp(mlp(4, remat=True), x)
    with pytest.deprecated_call(match=r"nn.remat\(layer\) for layer in layers"):
        old = mlp(4, old_remat=True)
    _, g_old, _ = grads_and_temp(old, x)
    for a, b in zip(jax.tree.leaves(g_old), jax.tree.leaves(g1), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    assert jax.tree.structure(plain) == jax.tree.structure(rem)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    policy = jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    _, g2, _ = grads_and_temp(mlp(4, remat=policy), x)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_repeat_with_remat_stores_less_and_computes_the_same():
    x = jax.random.normal(jax.random.key(1), (512, 64), jnp.float32)
    block = nn.serial(nn.Dense(64, dtype=jnp.float32), nn.tanh)
    _, g0, t0 = grads_and_temp(nn.repeat(block, 16), x)
    _, g1, t1 = grads_and_temp(nn.repeat(nn.remat(block), 16), x)
    with pytest.deprecated_call(match=r"repeat\(nn.remat\(layer\), n\)"):
        old = nn.repeat(block, 16, remat=True)
    assert grads_and_temp(old, x)[2] == t1
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
        np.testing.assert_allclose(a, b, **tolerance(jnp.float32, cpu=(1e-5, 1e-6), scale=16))
    # XLA:CPU keeps under half; XLA:GPU's temporaries hold cuBLAS workspaces too (0.56 on an H100).
    assert t1 <= t0 * (0.5 if ON_CPU else 0.7), (t0, t1)


def test_remat_settings_are_checked():
    with pytest.raises(
        ConfigError, match="serial: remat must be True, False or a jax.checkpoint_policies"
    ):
        nn.serial(nn.Dense(2), remat="yes")
    with pytest.raises(ConfigError, match="repeat: remat must be"):
        nn.repeat(nn.Dense(2), 3, remat=1.5)


def test_mixed_precision_computes_in_bf16_and_keeps_float32_outside():
    base = nn.serial(nn.Dense(32), nn.relu, nn.LayerNorm(), nn.Dense(10))
    model = nn.mixed_precision(base)
    x = jax.random.normal(jax.random.key(1), (8, 16), jnp.float32)
    params = model.init(jax.random.key(0), x)
    base_params = jax.eval_shape(base.init, jax.random.key(0), x)  # traced, not compiled and drawn
    assert jax.tree.structure(params) == jax.tree.structure(base_params)
    assert {a.dtype for a in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    loss = lambda p: jnp.mean(model.apply(p, x) ** 2)
    # Both models' outputs, the loss and its gradient in one program (op by op, each op compiles).
    run = jax.jit(lambda p: (model.apply(p, x), loss(p), jax.grad(loss)(p), base.apply(p, x)))
    y, value, grads, y_base = run(params)
    assert y.dtype == jnp.float32
    assert value.dtype == jnp.float32
    assert {a.dtype for a in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}
    # The matmuls run in bfloat16:
    g = inspect.graph(lambda p: model.apply(p, x), params)
    assert {n.outputs[0][:4] for n in g.find("dot_general")} == {"bf16"}
    # Close to the float32 model, at bfloat16's precision.
    np.testing.assert_allclose(y, y_base, rtol=0.05, atol=0.05)
    s = inspect.summary(model, params, x)
    assert s.rows[0].output == "f32[8,10]" and s.rows[1].output == "bf16[8,10]"


def test_mixed_precision_checks_its_dtypes():
    with pytest.raises(ConfigError, match="compute must be a floating dtype; got 'int8'"):
        nn.mixed_precision(nn.Dense(2), compute="int8")
    with pytest.raises(ConfigError, match="output must be a floating dtype"):
        nn.mixed_precision(nn.Dense(2), output="banana")


# -- mixed precision on any model (issue 13) ----------------------------------------------------


def block(d):
    return nn.serial(
        nn.residual(nn.LayerNorm(), nn.MultiHeadAttention(2, causal=True)),
        nn.residual(nn.RMSNorm(), nn.Dense(2 * d), nn.gelu, nn.Dense(d)),
    )


FIRST_LAYERS = {
    "residual": lambda d: nn.serial(block(d), nn.Dense(d)),
    "shared": lambda d: nn.serial(
        nn.shared(nn.Dense(d), "tied"), block(d), nn.shared(nn.Dense(d), "tied")
    ),
    "norm": lambda d: nn.serial(nn.LayerNorm(), block(d)),
    "repeat": lambda d: nn.repeat(block(d), 2),
    "repeat_unrolled": lambda d: nn.repeat(block(d), 3, unroll=2),
}


@pytest.mark.parametrize("first", sorted(FIRST_LAYERS))
def test_mixed_precision_works_whatever_comes_first(first):
    base = FIRST_LAYERS[first](8)
    model = nn.mixed_precision(base)
    x = jax.random.normal(jax.random.key(1), (2, 5, 8), jnp.float32)
    params = model.init(jax.random.key(0), x)
    # The plain model's parameters are only compared by shape: traced, not compiled and drawn.
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(
        jnp.shape, jax.eval_shape(base.init, jax.random.key(0), x)
    )
    assert {a.dtype for a in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}

    @jax.jit  # both models' outputs and the gradient in one program (op by op, each op compiles)
    def run(params, x):
        grads = jax.grad(lambda p: jnp.mean(model.apply(p, x) ** 2))(params)
        return model.apply(params, x), base.apply(params, x), grads

    y, y_base, grads = run(params, x)
    assert y.dtype == jnp.float32
    # bf16 keeps about 3 significant digits; 12 layers of them stay within a few percent.
    np.testing.assert_allclose(y, y_base, rtol=0.1, atol=0.1)
    assert {g.dtype for g in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_per_layer_bf16_residual_on_float32_input_adds_in_bf16():
    x = jax.random.normal(jax.random.key(1), (4, 8), jnp.float32)
    layer = nn.residual(nn.Dense(8, dtype=jnp.bfloat16))
    params = layer.init(jax.random.key(0), x)
    y = layer.apply(params, x)
    assert y.dtype == jnp.bfloat16
    branch = nn.Dense(8, dtype=jnp.bfloat16).apply(params["dense_0"], x)
    np.testing.assert_array_equal(y, x.astype(jnp.bfloat16) + branch)
    # Two in a row: the second sees the first's bf16 output, at init as at apply.
    two = nn.serial(layer, layer)
    assert two.apply(two.init(jax.random.key(0), x), x).dtype == jnp.bfloat16


def test_dtype_mismatches_that_remain_errors_name_both_dtypes():
    x = jnp.ones((2, 4), jnp.float32)
    to_int = nn.elementwise(lambda v: v.astype(jnp.int32))
    with pytest.raises(DTypeError, match="float32 to int32"):
        nn.residual(to_int).init(jax.random.key(0), x)
    with pytest.raises(ShapeError, match=r"\(2, 4\) float32 to \(2, 3\) float32"):
        nn.residual(nn.Dense(3)).init(jax.random.key(0), x)
    with pytest.raises(ShapeError, match=r"repeat .* float32 to \(2, 4\) bfloat16"):
        nn.repeat(nn.Dense(4, dtype=jnp.bfloat16), 2).init(jax.random.key(0), x)


def primitive_dtypes(fn, *args):
    """(primitive name, input dtypes) of every equation in ``fn``'s jaxpr, sub-jaxprs included."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            found.append((eqn.primitive.name, {str(v.aval.dtype) for v in eqn.invars}))
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


@pytest.mark.parametrize(
    "layer",
    [nn.LayerNorm(), nn.RMSNorm(), nn.BatchNorm(), nn.MultiHeadAttention(2, causal=True)],
    ids=["layer_norm", "rms_norm", "batch_norm", "attention"],
)
def test_norm_statistics_and_softmax_stay_float32_under_a_bf16_policy(layer):
    model = nn.mixed_precision(layer)
    x = jax.random.normal(jax.random.key(1), (2, 6, 8), jnp.float32)
    params, state = model.init_with_state(jax.random.key(0), x)
    run = lambda p, v: model.apply(p, v, state=state, train=True)[0]
    ops = primitive_dtypes(run, params, x)
    # Statistics: the square roots of variances, the sums behind means; softmax: its exp.
    watched = [dt for name, dt in ops if name in ("rsqrt", "reduce_sum", "exp", "reduce_max")]
    assert {"float32"} in watched, ops
    assert not [dt for dt in watched if dt & {"bfloat16", "float16"}], watched
    # ... while the layer's own output and the matmuls are bfloat16.
    assert any(name == "dot_general" and dt == {"bfloat16"} for name, dt in ops) or not isinstance(
        layer, nn.MultiHeadAttention
    )
    y, new_state = model.apply(params, x, state=state, train=True)
    assert y.dtype == jnp.float32
    assert all(s.dtype == jnp.float32 for s in jax.tree.leaves(new_state))


# -- repeat(unroll=) ------------------------------------------------------------------------------


@pytest.mark.parametrize("unroll", [2, 3, True])
def test_repeat_unroll_keeps_parameters_and_numbers(unroll):
    x = jax.random.normal(jax.random.key(1), (3, 8))
    one = nn.repeat(nn.serial(nn.Dense(8), nn.tanh, nn.LayerNorm()), 5)
    fast = nn.repeat(nn.serial(nn.Dense(8), nn.tanh, nn.LayerNorm()), 5, unroll=unroll)
    params = one.init(jax.random.key(0), x)
    same = fast.init(jax.random.key(0), x)
    assert jax.tree.structure(same) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)
    loss = lambda m: lambda p: jnp.sum(jnp.sin(m.apply(p, x)))
    np.testing.assert_allclose(fast.apply(params, x), one.apply(params, x), **tolerance(x.dtype))
    for a, b in zip(
        jax.tree.leaves(jax.grad(loss(fast))(params)),
        jax.tree.leaves(jax.grad(loss(one))(params)),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, **tolerance(x.dtype, cpu=(1e-10, 1e-12)))
    # The unroll reaches lax.scan: the loop runs ceil(5 / unroll) times.
    jaxpr = jax.make_jaxpr(lambda p: fast.apply(p, x))(params)
    (scan,) = [e for e in jaxpr.eqns if e.primitive.name == "scan"]
    assert scan.params["unroll"] == (5 if unroll is True else unroll)


def test_repeat_unroll_with_remat_computes_the_same():
    x = jax.random.normal(jax.random.key(1), (3, 8))
    base = nn.repeat(nn.serial(nn.Dense(8), nn.tanh), 4)
    rem = nn.repeat(nn.remat(nn.serial(nn.Dense(8), nn.tanh)), 4, unroll=2)
    params = base.init(jax.random.key(0), x)
    g0 = jax.grad(lambda p: jnp.sum(base.apply(p, x) ** 2))(params)
    g1 = jax.grad(lambda p: jnp.sum(rem.apply(p, x) ** 2))(params)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
        np.testing.assert_allclose(a, b, **tolerance(x.dtype, cpu=(1e-10, 1e-12)))
    text = str(jax.make_jaxpr(jax.grad(lambda p: jnp.sum(rem.apply(p, x) ** 2)))(params))
    assert "checkpoint" in text or "remat" in text


def test_repeat_unroll_is_checked():
    with pytest.raises(ConfigError, match="repeat: unroll must be a positive int or a bool; got 0"):
        nn.repeat(nn.Dense(2), 3, unroll=0)
