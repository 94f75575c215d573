"""Decoding through `nn.repeat` gives a serial model's outputs and caches, and writes its stacked cache in place."""

import jax
import jax.numpy as jnp
import numpy as np

from funcgrad import nn

D, N, L = 8, 3, 6


def block():
    return nn.serial(
        nn.residual(nn.LayerNorm(), nn.MultiHeadAttention(2, causal=True, rope=True)),
        nn.residual(nn.LayerNorm(), nn.Dense(2 * D), nn.gelu, nn.Dense(D)),
    )


def unstack(tree):
    """`repeat`'s stacked subtree ``repeat_0`` as the serial model's ``serial_0 ... serial_{N-1}``."""
    return {f"serial_{i}": jax.tree.map(lambda a, i=i: a[i], tree["repeat_0"]) for i in range(N)}


def test_repeat_decodes_as_serial_outputs_and_caches():
    stacked, flat = nn.serial(nn.repeat(block(), N)), nn.serial(*[block()] * N)
    x = jax.random.normal(jax.random.key(0), (2, 4, D))
    params = stacked.init(jax.random.key(1), x)
    step = jax.jit(lambda m, p, c, x, t: m.apply(p, x, state=c, position=t), static_argnums=0)
    caches = stacked.init_cache(2, L, features=D), flat.init_cache(2, L, features=D)
    ps = params, unstack(params)
    for t, n in ((0, 2), (2, 1), (3, 1)):  # a two-token prefill (scanned), then one-token steps
        (a, ca), (b, cb) = (
            step(m, p, c, x[:, t : t + n], t)
            for m, p, c in zip((stacked, flat), ps, caches, strict=True)
        )
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
        jax.tree.map(
            lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-6), unstack(ca), cb
        )
        caches = ca, cb
    k = caches[0]["repeat_0"]["residual_0"]["attention_1"]["k"]
    assert k.shape == (N, 2, L, 2, D // 2)
    assert np.all(k[:, :, 4:] == 0) and np.all(k[:, :, :4] != 0)  # written at 0..3 only


def test_repeat_decode_loop_copies_no_cache():
    """A greedy loop of one-token steps: XLA updates the carried stacked caches in place."""
    model = nn.serial(nn.Embedding(11, D), nn.repeat(block(), N), nn.Dense(11))
    params = model.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32))
    cache = model.init_cache(1, 16, params=params)

    def run(params, cache, token):
        def step(carry, _):
            token, cache, t = carry
            logits, cache = model.apply(params, token[:, None], state=cache, position=t)
            token = jnp.argmax(logits[:, -1], -1).astype(token.dtype)
            return (token, cache, t + 1), token

        return jax.lax.scan(step, (token, cache, jnp.int32(0)), None, length=4)

    hlo = jax.jit(run).lower(params, cache, jnp.zeros((1,), jnp.int32)).compile().as_text()
    shape = f"f32[{N},1,16,2,{D // 2}]"
    computation, copies = None, []
    for line in hlo.splitlines():
        if line and not line.startswith(" "):
            computation = line.split()[0]
        elif f"= {shape}" in line and " copy(" in line and computation != "ENTRY":
            copies.append(line.strip())
    assert copies == []
