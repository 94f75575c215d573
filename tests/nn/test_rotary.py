import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcgrad import errors, nn
from funcgrad.testing import check_grads


def direct(x, positions, base):
    """RoPE by its definition, pair by pair in float64: (x[i], x[i + d/2]) turned by pos·base^(-2i/d)."""
    x = np.asarray(x, np.float64)
    b, t, _, d = x.shape
    pos = np.broadcast_to(np.asarray(positions, np.float64), (b, t))
    out = np.empty_like(x)
    for i in range(d // 2):
        angle = pos * base ** (-2 * i / d)
        c, s = np.cos(angle)[..., None], np.sin(angle)[..., None]
        a, z = x[..., i], x[..., i + d // 2]
        out[..., i] = a * c - z * s
        out[..., i + d // 2] = z * c + a * s
    return out


def example(shape=(2, 5, 3, 8), seed=0):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float64)


@pytest.mark.x64
@pytest.mark.parametrize("base", [10000.0, 500.0])
def test_matches_the_direct_formula(base):
    x = example()
    pos = jnp.array([0, 1, 2, 7, 100])
    np.testing.assert_allclose(
        nn.rotary(x, pos, base=base), direct(x, pos, base), rtol=1e-12, atol=1e-12
    )
    per_row = jnp.array([[0, 1, 2, 3, 4], [9, 10, 11, 12, 13]])
    np.testing.assert_allclose(
        nn.rotary(x, per_row), direct(x, per_row, 10000.0), rtol=1e-12, atol=1e-12
    )


@pytest.mark.x64
def test_scores_depend_only_on_the_distance():
    q, k = example(seed=1), example(seed=2)
    pos = jnp.arange(5)

    def scores(shift):
        return jnp.einsum("bqhd,bkhd->bhqk", nn.rotary(q, pos + shift), nn.rotary(k, pos + shift))

    np.testing.assert_allclose(scores(0), scores(37), rtol=1e-10, atol=1e-10)
    assert not np.allclose(scores(0), jnp.einsum("bqhd,bkhd->bhqk", q, k))


def test_keeps_dtype_and_norm_and_has_exact_gradients():
    x = example()
    y = nn.rotary(x.astype(jnp.float32), jnp.arange(5))
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(jnp.linalg.norm(y, axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5)
    check_grads(lambda x: nn.rotary(x, jnp.arange(5)), (x,))


def test_bad_shapes_are_named():
    with pytest.raises(errors.ShapeError, match="even head_dim"):
        nn.rotary(jnp.zeros((1, 2, 1, 3)), jnp.arange(2))
    with pytest.raises(errors.ShapeError, match="positions must be"):
        nn.rotary(jnp.zeros((1, 2, 1, 4)), jnp.arange(3))


@pytest.mark.x64
def test_attention_layer_with_rope_rotates_queries_and_keys():
    x = jax.random.normal(jax.random.key(0), (2, 6, 8), jnp.float64)
    mha = nn.MultiHeadAttention(2, causal=True, rope=True, rope_base=100.0, param_dtype=jnp.float64)
    params = mha.init(jax.random.key(1), x)

    def project(n):
        return jnp.einsum("btd,dhk->bthk", x, params[f"w{n}"]) + params[f"b{n}"]

    pos = jnp.arange(6)
    q = direct(project("q"), pos, 100.0)
    k = direct(project("k"), pos, 100.0)
    y = nn.attention(jnp.asarray(q), jnp.asarray(k), project("v"), causal=True)
    want = jnp.einsum("bthk,hko->bto", y, params["wo"]) + params["bo"]
    np.testing.assert_allclose(mha.apply(params, x), want, rtol=1e-12)


def test_rope_needs_an_even_head_dim():
    with pytest.raises(errors.ConfigError, match="rope needs an even head_dim; got 3"):
        nn.MultiHeadAttention(2, rope=True).init(jax.random.key(0), jnp.zeros((1, 2, 6)))
