"""Cached decoding gives the full causal forward's result, for one layer and through every combinator."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcgrad import errors, nn

D = 8


def to64(tree):
    return jax.tree.map(lambda a: a.astype(jnp.float64), tree)


def attn(**kw):
    return nn.MultiHeadAttention(4, causal=True, **kw)


# Compiled once per model (layers are frozen dataclasses, equal when built alike), so the
# parametrizations that share a layer share its programs; the position is a traced int32, so one
# program serves every position of a chunk length.
step = jax.jit(lambda model, p, c, x, t: model.apply(p, x, state=c, position=t), static_argnums=0)
forward = jax.jit(lambda model, p, x: model.apply(p, x), static_argnums=0)


def decode(model, params, x, chunks, **cache_kw):
    """Run ``x`` through ``model`` in pieces of the given lengths with a cache; outputs joined."""
    cache = model.init_cache(x.shape[0], x.shape[1] + 2, **cache_kw)
    ys, t = [], 0
    for n in chunks:
        y, cache = step(model, params, cache, x[:, t : t + n], jnp.int32(t))
        ys.append(y)
        t += n
    return jnp.concatenate(ys, axis=1), cache


def check(model, x, chunks=(1, 1, 1, 1, 1, 1), **cache_kw):
    params = to64(model.init(jax.random.key(1), x))
    want = forward(model, params, x)
    got, cache = decode(model, params, x, chunks, **cache_kw)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    return params, cache


@pytest.mark.x64
@pytest.mark.parametrize(
    "layer",
    [
        attn(),
        attn(rope=True),
        attn(num_kv_heads=2, rope=True),
        attn(num_kv_heads=1, qkv_features=12),
    ],
    ids=["plain", "rope", "gqa_rope", "mqa"],
)
@pytest.mark.parametrize("chunks", [(1,) * 6, (4, 1, 1), (6,)])
def test_one_layer_cached_steps_equal_the_causal_forward(layer, chunks):
    x = jax.random.normal(jax.random.key(0), (2, 6, D), jnp.float64)
    _, cache = check(layer, x, chunks, features=D, dtype=jnp.float64)
    kv, hd = layer.kv_heads, (layer.qkv_features or D) // 4
    assert cache["k"].shape == (2, 8, kv, hd) and cache["v"].dtype == jnp.float64
    assert bool(jnp.all(cache["k"][:, 6:] == 0))  # positions not reached are untouched


def block():
    return nn.serial(
        nn.residual(nn.LayerNorm(), attn(rope=True, num_kv_heads=2)),
        nn.residual(nn.LayerNorm(), nn.Dense(2 * D), nn.gelu, nn.Dense(D)),
    )


@pytest.mark.x64
def test_combinators_pass_caches_through():
    tied = nn.shared(attn(), name="tied")
    model = nn.serial(
        nn.Dense(D),
        nn.repeat(block(), 2),
        nn.remat(nn.residual(attn(rope=True))),
        nn.parallel(attn(), nn.Dense(D)),
        tied,
        tied,
        nn.Dense(3),
    )
    x = jax.random.normal(jax.random.key(0), (2, 6, 5), jnp.float64)
    cache = model.init_cache(2, 8, features=D, dtype=jnp.float64)
    shapes = jax.tree.map(jnp.shape, cache)
    assert shapes["repeat_1"]["residual_0"]["attention_1"]["k"] == (2, 2, 8, 2, 2)
    assert set(shapes) == {"repeat_1", "residual_2", "parallel_3", "shared_4", "shared_5"}
    assert shapes["residual_2"] == {"attention_0": {"k": (2, 8, 4, 2), "v": (2, 8, 4, 2)}}
    check(model, x, (3, 1, 1, 1), features=D, dtype=jnp.float64)


def test_mixed_precision_caches_in_the_compute_dtype():
    model = nn.mixed_precision(nn.serial(nn.Dense(D), block()), compute=jnp.float32)
    cache = model.init_cache(1, 4, features=D)
    assert {a.dtype for a in jax.tree.leaves(cache)} == {jnp.dtype(jnp.float32)}
    x = jax.random.normal(jax.random.key(0), (1, 4, 3), jnp.float32)
    params = model.init(jax.random.key(1), x)
    got, _ = decode(model, params, x, (2, 1, 1), features=D)
    np.testing.assert_allclose(got, forward(model, params, x), rtol=1e-4, atol=1e-5)


def test_state_and_cache_travel_together():
    model = nn.serial(nn.Dense(D), nn.BatchNorm(), attn())
    x = jax.random.normal(jax.random.key(0), (2, 3, 4), jnp.float64)
    params, state = model.init_with_state(jax.random.key(1), x)
    both = model.init_cache(2, 3, params=params, dtype=jnp.float64, state=state)
    assert set(both) == {"batch_norm_1", "attention_2"}

    @jax.jit  # both passes in one program, not op by op; the position stays a concrete 0
    def run(params, x, both, state):
        return model.apply(params, x, state=both, position=0), model.apply(params, x, state=state)

    (y, new_both), (plain, _) = run(params, x, both, state)
    assert jax.tree.structure(new_both) == jax.tree.structure(both)
    np.testing.assert_allclose(y, plain, rtol=1e-6)


def test_init_cache_on_a_state_that_has_a_cache_starts_a_fresh_one():
    model = nn.serial(nn.Dense(D), attn())
    x = jnp.ones((1, 2, 3))
    params = model.init(jax.random.key(0), x)
    run = jax.jit(lambda p, x, c: model.apply(p, x, state=c, position=0))  # not op by op
    _, used = run(params, x, model.init_cache(1, 4, params=params))
    fresh = model.init_cache(1, 4, params=params, state=used)
    assert not any(bool(a.any()) for a in jax.tree.leaves(fresh))


def test_model_without_attention_has_an_empty_cache():
    model = nn.serial(nn.Dense(3), nn.relu)
    assert model.init_cache(1, 4) == {}
    x = jnp.ones((1, 2, 3))
    params = model.init(jax.random.key(0), x)
    y, state = model.apply(params, x, state={}, position=0)
    assert state == {} and y.shape == (1, 2, 3)


def test_init_cache_reads_the_widths_from_params():
    layer = attn(num_kv_heads=2)
    x = jnp.ones((1, 2, 12))
    params = layer.init(jax.random.key(0), x)
    cache = layer.init_cache(1, 5, params=params)
    assert cache["k"].shape == (1, 5, 2, 3)
    tied = nn.shared(attn(), name="tied")
    model = nn.serial(nn.Dense(D), nn.repeat(nn.residual(attn()), 2), tied, tied)
    params = model.init(jax.random.key(0), x)
    shapes = jax.tree.map(jnp.shape, model.init_cache(1, 5, params=params))
    assert shapes["repeat_1"]["attention_0"]["k"] == (2, 1, 5, 4, 2)
    assert shapes["shared_2"]["k"] == shapes["shared_3"]["v"] == (1, 5, 4, 2)


def test_the_old_cache_keyword_still_works_with_a_warning():
    model = nn.serial(nn.Dense(D), nn.BatchNorm(), attn())
    x = jax.random.normal(jax.random.key(0), (2, 3, 4), jnp.float64)
    params, state = model.init_with_state(jax.random.key(1), x)
    cache = model.init_cache(2, 3, params=params, dtype=jnp.float64)
    with pytest.deprecated_call(match=r"state=cache, position=p"):
        y, new_state, new_cache = model.apply(params, x, state=state, cache=cache, position=0)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert jax.tree.structure(new_cache) == jax.tree.structure(cache)
    both = model.init_cache(2, 3, params=params, dtype=jnp.float64, state=state)
    np.testing.assert_allclose(model.apply(params, x, state=both, position=0)[0], y)
    plain = nn.serial(nn.Dense(D), attn())
    params = plain.init(jax.random.key(1), x)
    with pytest.deprecated_call():
        y, new_cache = plain.apply(params, x, cache=plain.init_cache(2, 3, features=D), position=0)
    assert set(new_cache) == {"attention_1"} and y.shape == (2, 3, D)


@pytest.mark.parametrize("position, tokens", [(6, 4), (0, 12), (8, 1), (-1, 1)])
def test_cache_overflow_is_an_error_naming_length_position_and_tokens(position, tokens):
    layer = attn()
    x = jnp.ones((1, tokens, D))
    params = layer.init(jax.random.key(0), x)
    cache = layer.init_cache(1, 8, params=params)
    with pytest.raises(errors.ShapeError, match=rf"{tokens} token.*length 8") as info:
        layer.apply(params, x, state=cache, position=position)
    assert str(position) in str(info.value)
    with pytest.raises(errors.ShapeError, match=r"length 8"):  # a concrete array position too
        layer.apply(params, x, state=cache, position=jnp.asarray(position))


def test_cache_overflow_under_jit_is_caught_when_the_tokens_alone_overflow():
    layer = attn()
    x = jnp.ones((1, 12, D))
    params = layer.init(jax.random.key(0), x)
    step = jax.jit(lambda p, c, v, t: layer.apply(p, v, state=c, position=t))
    with pytest.raises(errors.ShapeError, match=r"12 tokens do not fit.*length 8"):
        step(params, layer.init_cache(1, 8, params=params), x, 0)


def test_a_full_cache_still_decodes_its_last_position():
    layer = attn()
    x = jax.random.normal(jax.random.key(0), (1, 8, D))
    params = layer.init(jax.random.key(0), x)
    # Both passes in one program, not op by op; the position stays a concrete 0.
    run = jax.jit(lambda p, x, c: (layer.apply(p, x, state=c, position=0)[0], layer.apply(p, x)))
    y, want = run(params, x, layer.init_cache(1, 8, params=params))
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)


def test_cache_errors_are_clear():
    with pytest.raises(errors.ConfigError, match="params=params.*features=d"):
        nn.serial(attn()).init_cache(1, 4)
    made = attn(qkv_features=8).init_cache(1, 4)["k"]  # the layer's param_dtype by default
    assert made.shape == (1, 4, 4, 2) and made.dtype == jnp.float32
    layer = attn()
    x = jnp.ones((1, 2, D))
    params = layer.init(jax.random.key(0), x)
    with pytest.raises(errors.InputTypeError, match="position= decodes.*state=model.init_cache"):
        layer.apply(params, x, position=0)
    with pytest.raises(errors.ConfigError, match=r"holds a key/value cache.*position=p"):
        layer.apply(params, x, state=layer.init_cache(1, 4, params=params))
    with pytest.raises(errors.ConfigError, match=r"its state must be \{'k', 'v'\}"):
        nn.serial(layer).apply(
            {"attention_0": params}, x, state={"attention_0": {"a": x}}, position=0
        )
    with pytest.raises(errors.ConfigError, match=r"attention_0: position= decodes.*got \[\]"):
        nn.serial(layer).apply({"attention_0": params}, x, state={}, position=0)
    with pytest.raises(errors.ShapeError, match="does not fit this step"):
        layer.apply(params, x, state=layer.init_cache(3, 4, features=D), position=0)
    with pytest.raises(errors.InputTypeError, match="max_length must be a positive int"):
        layer.init_cache(1, 0, features=D)
