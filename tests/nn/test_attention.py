import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcgrad.nn.mha
from funcgrad import errors, nn
from funcgrad.testing import check_grads


def setup(mha, q_len=5, kv_len=5, d=8):
    q = jax.random.normal(jax.random.key(0), (2, q_len, d), jnp.float32)
    kv = jax.random.normal(jax.random.key(1), (2, kv_len, d), jnp.float32)
    return mha.init(jax.random.key(2), (q, kv)), q, kv


def test_matches_jax_dot_product_attention():
    mha = nn.MultiHeadAttention(2, causal=True)
    params, q, _ = setup(mha)

    @jax.jit  # the layer and the reference in one program, rather than op by op
    def both(params, q):
        def project(n):
            return jnp.einsum("btd,dhk->bthk", q, params[f"w{n}"]) + params[f"b{n}"]

        ref = jax.nn.dot_product_attention(project("q"), project("k"), project("v"), is_causal=True)
        ref = jnp.einsum("bthk,hko->bto", ref, params["wo"]) + params["bo"]
        return mha.apply(params, q), ref

    np.testing.assert_allclose(*both(params, q), rtol=2e-5, atol=2e-6)


def test_causal_output_ignores_later_positions():
    mha = nn.MultiHeadAttention(2, causal=True)
    params, q, _ = setup(mha)
    changed = q.at[:, 3:].set(100.0)
    apply = jax.jit(mha.apply)  # compiled once for both calls, rather than run op by op
    np.testing.assert_allclose(apply(params, q)[:, :3], apply(params, changed)[:, :3], rtol=1e-5)


def test_cross_attention_and_a_fully_masked_row_gives_no_nan():
    mha = nn.MultiHeadAttention(2)
    params, q, kv = setup(mha, q_len=3, kv_len=7)
    mask = jnp.ones((2, 1, 3, 7), bool).at[:, :, 0, :].set(False)

    @jax.jit  # the output and its gradient in one program (op by op, every op compiles alone)
    def run(params):
        y = mha.apply(params, (q, kv, mask))
        return y, jax.grad(lambda p: mha.apply(p, (q, kv, mask)).sum())(params)

    y, grads = run(params)
    assert y.shape == (2, 3, 8)
    assert bool(jnp.all(jnp.isfinite(y)))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_bad_mask_shape_is_named():
    mha = nn.MultiHeadAttention(2)
    params, q, kv = setup(mha)
    with pytest.raises(errors.ShapeError, match="mask must be boolean"):
        mha.apply(params, (q, kv, jnp.ones((3, 3), bool)))


def test_heads_must_divide_features():
    with pytest.raises(errors.ConfigError, match="3 heads"):
        nn.MultiHeadAttention(3).init(jax.random.key(0), jnp.zeros((1, 2, 8)))


# -- nn.attention: the fused path against the precise one ----------------------------------------


def qkv(q_len=4, kv_len=6, heads=4, kv_heads=4, d=8, dtype=jnp.float64, seed=0):
    ks = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(ks[0], (2, q_len, heads, d), dtype)
    k = jax.random.normal(ks[1], (2, kv_len, kv_heads, d), dtype)
    v = jax.random.normal(ks[2], (2, kv_len, kv_heads, d), dtype)
    return q, k, v


def naive(q, k, v, allowed):
    """softmax attention written out in NumPy float64, heads repeated for grouped queries; 0 for dead rows."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    g = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    allowed = np.broadcast_to(allowed, logits.shape)
    logits = np.where(allowed, logits, -np.inf)
    top = np.max(logits, -1, keepdims=True)
    e = np.where(allowed, np.exp(logits - np.where(np.isfinite(top), top, 0)), 0)
    total = e.sum(-1, keepdims=True)
    w = np.divide(e, total, out=np.zeros_like(e), where=total > 0)
    return np.einsum("bhqk,bkhd->bqhd", w, v)


def test_module_and_function_names_do_not_clash():
    assert callable(nn.attention) and nn.attention is funcgrad.nn.mha.attention
    assert funcgrad.nn.mha.MultiHeadAttention is nn.MultiHeadAttention


MASK = np.random.default_rng(0).random((2, 1, 4, 6)) < 0.6
MASK[:, :, 1, :] = False  # a fully masked row


@pytest.mark.x64
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mask", [None, MASK])
def test_precise_path_matches_the_formula(kv_heads, causal, mask):
    q, k, v = qkv(kv_heads=kv_heads)
    allowed = np.ones((4, 6), bool) if mask is None else mask
    if causal:  # bottom-right: query i sees keys j <= i + kv_len - q_len
        allowed = allowed & np.tril(np.ones((4, 6), bool), 2)
    y = nn.attention(q, k, v, mask=None if mask is None else jnp.asarray(mask), causal=causal)
    np.testing.assert_allclose(y, naive(q, k, v, allowed), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "dtype, fused, tol", [(jnp.bfloat16, None, 3e-2), (jnp.float32, True, 2e-5)]
)
@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mask", [None, MASK])
def test_fused_matches_precise(dtype, fused, tol, kv_heads, causal, mask):
    q, k, v = qkv(kv_heads=kv_heads)
    m = None if mask is None else jnp.asarray(mask)
    want = nn.attention(q, k, v, mask=m, causal=causal)
    low = [a.astype(dtype) for a in (q, k, v)]
    got = nn.attention(*low, mask=m, causal=causal, fused=fused)
    assert got.dtype == dtype
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=tol, atol=tol)
    if mask is not None:  # the fully masked row is 0, not NaN and not the mean of v
        assert bool(jnp.all(got[:, 1] == 0))


def test_fused_is_what_jax_computes_where_rows_are_live():
    q, k, v = (a.astype(jnp.float32) for a in qkv())
    ref = jax.nn.dot_product_attention(q, k, v, mask=jnp.asarray(MASK))
    got = nn.attention(q, k, v, mask=jnp.asarray(MASK), fused=True)
    np.testing.assert_allclose(got[:, [0, 2, 3]], ref[:, [0, 2, 3]], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ref[:, 1], jnp.broadcast_to(v.mean(1), ref[:, 1].shape), rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_fused_gradients_match_precise(causal):
    q, k, v = qkv(kv_heads=2)
    m = jnp.asarray(MASK)

    def loss(fused, dtype):
        def f(q, k, v):
            y = nn.attention(q, k, v, mask=m, causal=causal, fused=fused)
            return jnp.sum(jnp.sin(y.astype(jnp.float64)))

        return jax.grad(f, argnums=(0, 1, 2))(*(a.astype(dtype) for a in (q, k, v)))

    want = loss(None, jnp.float64)
    for got, tol in ((loss(True, jnp.float32), 1e-4), (loss(None, jnp.bfloat16), 6e-2)):
        for g, w in zip(got, want, strict=True):
            assert bool(jnp.all(jnp.isfinite(g)))
            np.testing.assert_allclose(np.asarray(g, np.float64), w, rtol=tol, atol=tol)


def test_precise_path_gradients_match_finite_differences():
    q, k, v = qkv(q_len=3, kv_len=5, heads=2, kv_heads=1, d=4)
    mask = jnp.ones((1, 1, 3, 5), bool).at[..., 0, :].set(False)
    # Jitted: check_grads also calls f once as it is, op by op unless f is compiled.
    check_grads(jax.jit(lambda q, k, v: nn.attention(q, k, v, mask=mask, causal=True)), (q, k, v))


def test_float16_on_cpu_keeps_the_precise_path():
    q, k, v = qkv()
    got = nn.attention(*(a.astype(jnp.float16) for a in (q, k, v)), causal=True)
    assert got.dtype == jnp.float16
    want = nn.attention(q, k, v, causal=True)
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-2, atol=1e-2)


@pytest.mark.x64
def test_attention_errors_name_the_function():
    q, k, v = qkv()
    with pytest.raises(errors.ShapeError, match=r"nn.attention: q must be \(batch"):
        nn.attention(q[0], k, v)
    with pytest.raises(errors.ShapeError, match="4 query heads do not split.*3 key/value"):
        nn.attention(q, k[:, :, :3], v[:, :, :3])
    with pytest.raises(
        errors.ShapeError, match=r"mask must be boolean and broadcast to \(2, 4, 4, 6\)"
    ):
        nn.attention(q, k, v, mask=jnp.ones((4, 5), bool))
    with pytest.raises(errors.ConfigError, match="float64 keeps the precise path"):
        nn.attention(q, k, v, fused=True)


# -- grouped-query heads in the layer ------------------------------------------------------------


def test_grouped_query_layer_equals_full_heads_with_repeated_kv_weights():
    x = jax.random.normal(jax.random.key(0), (2, 5, 8), jnp.float64)
    gqa = nn.MultiHeadAttention(4, num_kv_heads=2, causal=True, param_dtype=jnp.float64)
    params = gqa.init(jax.random.key(1), x)
    assert params["wk"].shape == (8, 2, 2) and params["bv"].shape == (2, 2)
    assert params["wq"].shape == (8, 4, 2)
    params = jax.tree.map(lambda a: a + 0.1 * jnp.ones_like(a), params)  # non-zero biases
    full = {n: jnp.repeat(a, 2, axis=-2) if n in ("wk", "wv", "bk", "bv") else a
            for n, a in params.items()}  # fmt: skip
    mha = nn.MultiHeadAttention(4, causal=True, param_dtype=jnp.float64)
    both = jax.jit(lambda params, full, x: (gqa.apply(params, x), mha.apply(full, x)))
    np.testing.assert_allclose(*both(params, full, x), rtol=1e-12)  # one program, not op by op


def test_kv_heads_that_do_not_divide_heads_name_both():
    with pytest.raises(errors.ConfigError, match="num_kv_heads=3.*num_heads=8"):
        nn.MultiHeadAttention(8, num_kv_heads=3)


def test_layer_fused_float32_is_close_to_precise():
    x = jax.random.normal(jax.random.key(0), (2, 5, 8), jnp.float32)
    mha = nn.MultiHeadAttention(2, causal=True)
    params = mha.init(jax.random.key(1), x)
    fused = nn.MultiHeadAttention(2, causal=True, fused=True)
    both = jax.jit(lambda p, x: (fused.apply(p, x), mha.apply(p, x)))  # one program, not op by op
    np.testing.assert_allclose(*both(params, x), rtol=1e-4, atol=1e-5)
