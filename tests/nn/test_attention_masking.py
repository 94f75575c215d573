"""Padding lengths, packed segments and sliding windows in `nn.attention` and `MultiHeadAttention`,
against a reference built from explicit masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcgrad import errors, nn
from funcgrad.testing import check_grads


def qkv(q_len=6, kv_len=6, heads=4, kv_heads=4, d=8, dtype=jnp.float32, seed=0):
    ks = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(ks[0], (2, q_len, heads, d), dtype)
    k = jax.random.normal(ks[1], (2, kv_len, kv_heads, d), dtype)
    v = jax.random.normal(ks[2], (2, kv_len, kv_heads, d), dtype)
    return q, k, v


def explicit_mask(t, s, *, causal=False, window=None, q_lengths=None, kv_lengths=None, seg=None):
    """(batch, 1, t, s) booleans written out position by position, funcgrad's bottom-right
    alignment: query i stands at key position i + s - t."""
    allowed = np.ones((2, 1, t, s), bool)
    for b in range(2):
        for i in range(t):
            at = i + s - t
            for j in range(s):
                ok = True
                if causal:
                    ok &= j <= at
                if window is not None:
                    ok &= at - window[0] <= j <= at + (0 if causal else window[1])
                if q_lengths is not None:
                    ok &= i < q_lengths[b]
                if kv_lengths is not None:
                    ok &= j < kv_lengths[b]
                if seg is not None:
                    ok &= seg[0][b][i] == seg[1][b][j]
                allowed[b, 0, i, j] = ok
    return allowed


def reference(q, k, v, allowed):
    """softmax over the allowed keys, heads repeated for grouped queries; rows with none give 0."""
    g = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, g, axis=2), jnp.repeat(v, g, axis=2)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(q.shape[-1])
    allowed = jnp.broadcast_to(allowed, logits.shape)
    logits = jnp.where(allowed, logits, -1e30)  # finite, so a dead row has no NaN gradient
    weights = jax.nn.softmax(logits, axis=-1) * jnp.any(allowed, -1, keepdims=True)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


SEG6 = [[0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 2, 2]]
CASES = {
    "lengths": dict(q_lengths=[6, 3], kv_lengths=[4, 5]),
    "segments window": dict(segment_ids=SEG6, window=(2, 1)),
    "causal window lengths gqa": dict(causal=True, window=(2, 0), q_lengths=[5, 6], kv_heads=2),
    "segments causal gqa": dict(causal=True, segment_ids=SEG6, kv_heads=1),
    "cross everything": dict(
        q_len=3,
        causal=True,
        window=(3, 5),
        kv_lengths=[6, 4],
        q_lengths=[3, 2],
        segment_ids=([[0, 1, 1], [2, 2, 2]], [[0, 0, 0, 1, 1, 1], [1, 2, 2, 2, 2, 2]]),
    ),
    "mask and lengths": dict(mask=True, kv_lengths=[6, 2]),
}


def case(name):
    c = dict(CASES[name])
    q, k, v = qkv(q_len=c.pop("q_len", 6), kv_heads=c.pop("kv_heads", 4))
    mask = None
    if c.pop("mask", False):
        mask = jax.random.bernoulli(jax.random.key(5), 0.7, (2, 1, q.shape[1], k.shape[1]))
    seg = c.get("segment_ids")
    seg = None if seg is None else (seg if isinstance(seg, tuple) else (seg, seg))
    allowed = explicit_mask(
        q.shape[1],
        k.shape[1],
        causal=c.get("causal", False),
        window=c.get("window"),
        q_lengths=c.get("q_lengths"),
        kv_lengths=c.get("kv_lengths"),
        seg=seg,
    )
    if mask is not None:
        allowed &= np.asarray(mask)
    kwargs = {
        n: (jnp.asarray(a) if n.endswith("lengths") else a) for n, a in c.items() if a is not None
    }
    if "segment_ids" in kwargs:
        s = kwargs["segment_ids"]
        kwargs["segment_ids"] = (
            tuple(map(jnp.asarray, s)) if isinstance(s, tuple) else jnp.asarray(s)
        )
    return (q, k, v), dict(kwargs, mask=mask), allowed


@pytest.mark.parametrize("name", list(CASES))
def test_both_paths_match_the_explicit_mask_in_values_and_gradients(name):
    (q, k, v), kwargs, allowed = case(name)
    w = jax.random.normal(jax.random.key(9), q.shape)
    ref = lambda q, k, v: jnp.sum(reference(q, k, v, allowed) * w)

    # Every value and gradient below in one compiled program (op by op, each of the hundreds of
    # ops in the gradients compiled on its own). The lengths, ids and mask stay closed-over
    # constants, so nn.attention sees them concrete, as it does eagerly.
    @jax.jit
    def run(q, k, v):
        want = jax.value_and_grad(ref, argnums=(0, 1, 2))(q, k, v)
        values = nn.attention(q, k, v, **kwargs), reference(q, k, v, allowed)
        paths = []
        for fused in (False, True):
            f = lambda q, k, v, fused=fused: jnp.sum(
                nn.attention(q, k, v, fused=fused, **kwargs) * w
            )
            paths.append(jax.value_and_grad(f, argnums=(0, 1, 2))(q, k, v))
        return want, values, paths

    (want, want_grads), values, paths = run(q, k, v)
    np.testing.assert_allclose(*values, rtol=2e-5, atol=2e-6)
    for got, grads in paths:  # fused=False, then fused=True
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
        for g, h in zip(grads, want_grads, strict=True):
            np.testing.assert_allclose(g, h, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("fused", [False, True])
def test_fully_masked_rows_give_zero_on_both_paths(fused):
    q, k, v = qkv()
    ids = jnp.array([[0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]])
    y = nn.attention(q, k, v, q_lengths=jnp.array([4, 6]), segment_ids=(ids, ids + 1), fused=fused)
    assert bool(jnp.all(y[0, 4:] == 0))  # padded queries
    assert bool(jnp.all(y[0, :2] == 0)) and bool(jnp.all(y[1] == 0))  # no key of their segment
    assert bool(jnp.all(jnp.abs(y[0, 2:4]) > 0))


@pytest.mark.x64
def test_precise_path_gradients_against_finite_differences():
    q, k, v = qkv(q_len=3, kv_len=4, heads=2, kv_heads=1, d=4, dtype=jnp.float64)
    ids = (jnp.array([[0, 0, 1], [0, 1, 1]]), jnp.array([[0, 0, 1, 1], [0, 0, 1, 1]]))
    f = jax.jit(
        lambda q, k, v: nn.attention(
            q, k, v, causal=True, window=(2, 0), kv_lengths=jnp.array([4, 3]), segment_ids=ids
        )
    )
    check_grads(f, (q, k, v))


# -- the layer -----------------------------------------------------------------------------------


def test_layer_lengths_input_matches_each_row_alone_and_pads_with_zero():
    mha = nn.MultiHeadAttention(2, window=(1, 1))
    x = jax.random.normal(jax.random.key(0), (2, 5, 8))
    params = mha.init(jax.random.key(1), x)
    lengths = jnp.array([3, 5])
    # Both passes in one program (op by op, each op would compile on its own for each shape);
    # the lengths a closed-over constant, concrete as they are eagerly.
    run = jax.jit(lambda p, x: (mha.apply(p, (x, lengths)), mha.apply(p, x[:, :3])))
    (y, out_lengths), alone = run(params, x)
    assert bool(jnp.all(out_lengths == lengths))
    # alone: row 0 alone; row 1 (full length) reads its 4th token
    np.testing.assert_allclose(y[0, :3], alone[0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(y[1, 2], alone[1, 2], atol=1e-4)
    assert bool(jnp.all(y[0, 3:] == 0))


def test_windowed_decoding_matches_the_windowed_forward_pass():
    mha = nn.MultiHeadAttention(2, causal=True, window=(2, 0), rope=True)
    x = jax.random.normal(jax.random.key(0), (1, 5, 8))
    params = mha.init(jax.random.key(1), x)
    state = mha.init_cache(1, 5, params=params)

    @jax.jit  # one program for all four passes (op by op, each op compiles for each shape)
    def run(params, x, state):
        y0, state = mha.apply(params, x[:, :4], state=state, position=0)
        y1, state = mha.apply(params, x[:, 4:], state=state, position=4)
        full = mha.apply(params, x)
        # The window matters: without it the last position reads more of the past.
        wide = nn.MultiHeadAttention(2, causal=True, rope=True).apply(params, x)
        return jnp.concatenate([y0, y1], 1), full, wide

    decoded, full, wide = run(params, x, state)
    np.testing.assert_allclose(decoded, full, rtol=1e-5, atol=1e-5)
    assert not np.allclose(wide[:, -1], full[:, -1], atol=1e-4)


def test_a_packed_row_gives_each_document_its_own_logits():
    block = nn.residual(nn.LayerNorm(), nn.MultiHeadAttention(2, causal=True, rope=True))
    model = nn.serial(nn.Embedding(13, 16), nn.remat(block), nn.repeat(block, 2), nn.Dense(13))
    # Row 0 packs documents a (4 tokens) and b (3); rows 1 and 2 hold each alone, one segment,
    # followed by filler that a causal model does not let them see.
    a, b, filler = [3, 1, 4, 1], [5, 9, 2], [7, 7, 7, 7]
    tokens = jnp.array([a + b, a + filler[:3], b + filler])
    ids = jnp.array([[0, 0, 0, 0, 1, 1, 1], [0] * 7, [0] * 7])
    params = model.init(jax.random.key(0), tokens)
    run = jax.jit(lambda p, x, s: model.apply(p, x, segment_ids=s))  # compiled once, run twice
    logits = run(params, tokens, ids)
    np.testing.assert_allclose(logits[0, :4], logits[1, :4], atol=1e-5)
    np.testing.assert_allclose(logits[0, 4:], logits[2, :3], atol=1e-5)
    # Unpacked, b would read a (and take positions 4..6): the segments are what separate them.
    ones = jnp.zeros_like(ids)
    mixed = run(params, tokens, ones)
    assert not np.allclose(mixed[0, 4:], logits[2, :3], atol=1e-3)


# -- bad inputs ----------------------------------------------------------------------------------


def test_bad_inputs_to_attention_are_named():
    q, k, v = qkv()
    with pytest.raises(errors.ShapeError, match=r"nn.attention: q_lengths must lie in 0..6"):
        nn.attention(q, k, v, q_lengths=jnp.array([7, 2]))
    with pytest.raises(errors.ShapeError, match=r"kv_lengths must have shape \(batch,\)"):
        nn.attention(q, k, v, kv_lengths=jnp.array([[1, 2]]))
    with pytest.raises(errors.DTypeError, match="q_lengths must be integers"):
        nn.attention(q, k, v, q_lengths=jnp.array([1.0, 2.0]))
    with pytest.raises(errors.ShapeError, match=r"segment_ids must be \(batch, length\)"):
        nn.attention(q, k, v, segment_ids=jnp.zeros((2, 5), int))
    with pytest.raises(errors.DTypeError, match="segment_ids must be integers"):
        nn.attention(q, k, v, segment_ids=jnp.zeros((2, 6)))
    with pytest.raises(errors.ShapeError, match=r"q_segment_ids, kv_segment_ids"):
        nn.attention(q[:, :3], k, v, segment_ids=jnp.zeros((2, 3), int))
    for window in [3, (1, -1), (1.5, 0), (1, 2, 3), (True, 0)]:
        with pytest.raises(errors.ConfigError, match="nn.attention: window must be a pair"):
            nn.attention(q, k, v, window=window)


def test_bad_inputs_to_the_layer_are_named():
    with pytest.raises(errors.ConfigError, match="MultiHeadAttention: window must be a pair"):
        nn.MultiHeadAttention(2, window=(-1, 0))
    mha = nn.MultiHeadAttention(2, causal=True)
    model = nn.serial(nn.Dense(8), mha)
    x = jnp.ones((2, 7, 8))
    with pytest.raises(errors.ShapeError, match=r"attention_0: lengths must lie in 0..7"):
        alone = nn.serial(mha)
        alone.apply(alone.init(jax.random.key(0), x), (x, jnp.array([8, 1])))
    params = model.init(jax.random.key(0), x)
    with pytest.raises(
        errors.ShapeError,
        match=r"MultiHeadAttention at attention_1: segment_ids must be \(batch, length\) = "
        r"\(2, 7\); got \(2, 5\)",
    ):
        model.apply(params, x, segment_ids=jnp.zeros((2, 5), jnp.int32))
    with pytest.raises(errors.DTypeError, match="attention_1: segment_ids must be integers"):
        model.apply(params, x, segment_ids=jnp.zeros((2, 7)))
    state = model.init_cache(2, 8, params=params)
    with pytest.raises(errors.ConfigError, match="attention_1: decoding .* takes no segment_ids"):
        model.apply(params, x, state=state, position=0, segment_ids=jnp.zeros((2, 7), int))
    p = mha.init(jax.random.key(0), (x, x))
    with pytest.raises(errors.ConfigError, match="segment_ids are for self-attention"):
        mha.apply(p, (x, x), segment_ids=jnp.zeros((2, 7), int))
