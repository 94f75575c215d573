import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcgrad import errors, nn


def setup(mha, q_len=5, kv_len=5, d=8):
    q = jax.random.normal(jax.random.key(0), (2, q_len, d), jnp.float32)
    kv = jax.random.normal(jax.random.key(1), (2, kv_len, d), jnp.float32)
    return mha.init(jax.random.key(2), (q, kv)), q, kv


def test_matches_jax_dot_product_attention():
    mha = nn.MultiHeadAttention(2, causal=True)
    params, q, _ = setup(mha)

    def project(n):
        return jnp.einsum("btd,dhk->bthk", q, params[f"w{n}"]) + params[f"b{n}"]

    ref = jax.nn.dot_product_attention(project("q"), project("k"), project("v"), is_causal=True)
    ref = jnp.einsum("bthk,hko->bto", ref, params["wo"]) + params["bo"]
    np.testing.assert_allclose(mha.apply(params, q), ref, rtol=2e-5, atol=2e-6)


def test_causal_output_ignores_later_positions():
    mha = nn.MultiHeadAttention(2, causal=True)
    params, q, _ = setup(mha)
    changed = q.at[:, 3:].set(100.0)
    np.testing.assert_allclose(
        mha.apply(params, q)[:, :3], mha.apply(params, changed)[:, :3], rtol=1e-5
    )


def test_cross_attention_and_a_fully_masked_row_gives_no_nan():
    mha = nn.MultiHeadAttention(2)
    params, q, kv = setup(mha, q_len=3, kv_len=7)
    mask = jnp.ones((2, 1, 3, 7), bool).at[:, :, 0, :].set(False)
    y = mha.apply(params, (q, kv, mask))
    assert y.shape == (2, 3, 8)
    assert bool(jnp.all(jnp.isfinite(y)))
    grads = jax.grad(lambda p: mha.apply(p, (q, kv, mask)).sum())(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_bad_mask_shape_is_named():
    mha = nn.MultiHeadAttention(2)
    params, q, kv = setup(mha)
    with pytest.raises(errors.ShapeError, match="mask must be boolean"):
        mha.apply(params, (q, kv, jnp.ones((3, 3), bool)))


def test_heads_must_divide_features():
    with pytest.raises(errors.ConfigError, match="3 heads"):
        nn.MultiHeadAttention(3).init(jax.random.key(0), jnp.zeros((1, 2, 8)))
