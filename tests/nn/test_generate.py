"""generate: cached sampling inside one jit agrees with recomputing the whole sequence every step."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcgrad import errors, nn

VOCAB, D = 11, 8


def lm():
    block = nn.serial(
        nn.residual(
            nn.LayerNorm(), nn.MultiHeadAttention(4, causal=True, rope=True, num_kv_heads=2)
        ),
        nn.residual(nn.LayerNorm(), nn.Dense(2 * D), nn.gelu, nn.Dense(D)),
    )
    return nn.serial(nn.Embedding(VOCAB, D), nn.repeat(block, 2), nn.LayerNorm(), nn.Dense(VOCAB))


# The forward pass and one cached step, each compiled once per model (a static argument: layers
# are frozen dataclasses) and shape, and shared by the tests; run op by op, every op would compile
# for every sequence length. A traced int32 position lets one program serve every position.
forward = jax.jit(lambda model, p, x: model.apply(p, x), static_argnums=0)
step = jax.jit(lambda model, p, c, x, t: model.apply(p, x, state=c, position=t), static_argnums=0)


@pytest.fixture(scope="module")
def model_params():
    model = lm()
    prompt = jnp.array([[1, 2, 3], [4, 5, 6]])
    params = model.init(jax.random.key(0), prompt)
    return model, jax.tree.map(lambda a: a.astype(jnp.float64) * 3, params), prompt


@pytest.mark.x64
def test_cached_logits_equal_the_full_forward(model_params):
    model, params, _ = model_params
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)  # the fixture ran in 32-bit mode
    tokens = jax.random.randint(jax.random.key(1), (2, 7), 0, VOCAB)
    want = forward(model, params, tokens)
    state = model.init_cache(2, 7, params=params, dtype=jnp.float64)
    got, state = step(model, params, state, tokens[:, :3], jnp.int32(0))
    steps = [got]
    for t in range(3, 7):
        logits, state = step(model, params, state, tokens[:, t : t + 1], jnp.int32(t))
        steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), want, rtol=1e-10, atol=1e-10)


def greedy_by_recompute(model, params, prompt, n):
    tokens = prompt  # `forward`: one compile a length; op by op, every op recompiled for each
    for _ in range(n):
        nxt = jnp.argmax(forward(model, params, tokens)[:, -1], axis=-1)
        tokens = jnp.concatenate([tokens, nxt[:, None]], axis=1)
    return tokens


def test_greedy_equals_argmax_by_recompute(model_params):
    model, params, prompt = model_params
    want = greedy_by_recompute(model, params, prompt, 6)
    kw = dict(key=jax.random.key(2), features=D, cache_dtype=jnp.float64)
    np.testing.assert_array_equal(nn.generate(model, params, prompt, 6, temperature=0, **kw), want)
    np.testing.assert_array_equal(nn.generate(model, params, prompt, 6, top_k=1, **kw), want)


def test_top_k_samples_only_the_k_most_likely(model_params):
    model, params, prompt = model_params
    out = nn.generate(model, params, prompt, 6, key=jax.random.key(3), top_k=3, features=D)
    assert out.shape == (2, 9) and out.dtype == prompt.dtype
    np.testing.assert_array_equal(out[:, :3], prompt)
    logits = forward(model, params, out)[:, 2:-1]  # the logits each new token was drawn from
    top3 = jnp.argsort(logits, axis=-1)[..., -3:]
    assert bool(jnp.all(jnp.any(top3 == out[:, 3:, None], axis=-1)))
    again = nn.generate(model, params, prompt, 6, key=jax.random.key(3), top_k=3, features=D)
    np.testing.assert_array_equal(out, again)  # keys explicit: same key, same tokens


def test_sampling_follows_the_temperature(model_params):
    model, params, prompt = model_params
    keys = jax.random.split(jax.random.key(4), 40)

    def agree_with_greedy(temperature):
        greedy = nn.generate(model, params, prompt, 1, key=keys[0], temperature=0, features=D)
        outs = [nn.generate(model, params, prompt, 1, key=k, temperature=temperature, features=D)
                for k in keys]  # fmt: skip
        return np.mean([bool(jnp.all(o == greedy)) for o in outs])

    assert agree_with_greedy(0.01) == 1.0
    assert agree_with_greedy(100.0) < 0.5


def test_a_sweep_over_temperature_and_top_p_compiles_one_program(model_params):
    """Temperature and top_p are inputs of the compiled decoding loop, not constants in it."""
    from funcgrad.nn.generate import _generate

    model, params, prompt = model_params
    run = lambda t, p: nn.generate(
        model, params, prompt, 2, key=jax.random.key(1), temperature=t, top_p=p, features=D
    )
    run(0.5, 0.9)
    before = _generate._cache_size()
    outs = [run(t, p) for t, p in ((0.7, 0.8), (1.3, 0.95), (1e-4, 0.5))]
    assert _generate._cache_size() == before
    greedy = nn.generate(model, params, prompt, 2, key=jax.random.key(1), temperature=0, features=D)
    np.testing.assert_array_equal(outs[-1], greedy)  # a near-zero temperature is still read


def test_bad_arguments_are_named(model_params):
    model, params, prompt = model_params
    key = jax.random.key(0)
    with pytest.raises(errors.DTypeError, match="generate: prompt must hold integer tokens"):
        nn.generate(model, params, prompt.astype(jnp.float32), 2, key=key, features=D)
    with pytest.raises(errors.ShapeError, match=r"generate: prompt must be \(batch, prompt_len\)"):
        nn.generate(model, params, prompt[0], 2, key=key, features=D)
    with pytest.raises(errors.ConfigError, match="max_new_tokens must be a positive int"):
        nn.generate(model, params, prompt, 0, key=key, features=D)
    with pytest.raises(errors.ConfigError, match="top_k must be a positive int"):
        nn.generate(model, params, prompt, 2, key=key, top_k=0, features=D)


def test_generate_reads_the_widths_from_params():
    model = nn.serial(
        nn.Embedding(VOCAB, D), nn.MultiHeadAttention(2, causal=True), nn.Dense(VOCAB)
    )
    prompt = jnp.array([[1, 2, 3]])
    params = model.init(jax.random.key(0), prompt)
    out = nn.generate(model, params, prompt, 4, key=jax.random.key(1), temperature=0)
    np.testing.assert_array_equal(out, greedy_by_recompute(model, params, prompt, 4))


def test_generate_refuses_more_tokens_than_max_length_before_it_starts(model_params):
    model, params, prompt = model_params
    with pytest.raises(errors.ConfigError, match=r"3 tokens plus max_new_tokens=6.*max_length=8"):
        nn.generate(model, params, prompt, 6, key=jax.random.key(0), max_length=8)
    out = nn.generate(model, params, prompt, 5, key=jax.random.key(0), max_length=8)
    assert out.shape == (2, 8)


def test_generate_keeps_the_model_state():
    model = nn.serial(
        nn.Embedding(VOCAB, D),
        nn.BatchNorm(),
        nn.MultiHeadAttention(2, causal=True),
        nn.Dense(VOCAB),
    )
    prompt = jnp.array([[1, 2, 3]])
    params, state = model.init_with_state(jax.random.key(0), prompt)
    state = jax.tree.map(lambda a: a + 0.5, state)
    out = nn.generate(model, params, prompt, 3, key=jax.random.key(1), temperature=0, state=state)
    apply = jax.jit(lambda p, x, s: model.apply(p, x, state=s))  # one compile a length
    tokens = prompt
    for _ in range(3):
        logits, _ = apply(params, tokens, state)
        tokens = jnp.concatenate([tokens, jnp.argmax(logits[:, -1], axis=-1)[:, None]], axis=1)
    np.testing.assert_array_equal(out, tokens)


def test_the_decoding_benchmark_compares_like_with_like():
    """scripts/bench_decode.py's cached and recomputing decoders produce the same tokens."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    import bench_decode as bench

    model = bench.transformer(layers=2, d=D, heads=2, vocab=VOCAB)
    tokens = jax.random.randint(jax.random.key(0), (1, 12), 0, VOCAB)
    params = model.init(jax.random.key(1), tokens)
    cache = model.init_cache(1, 12, params=params)
    logits, cache = step(model, params, cache, tokens[:, :8], jnp.int32(0))
    first = jnp.argmax(logits[:, -1], axis=-1)
    fast = bench.cached(model, 3)(params, cache, first, jnp.asarray(8))
    slow = bench.recompute(model, 3)(params, tokens.at[:, 8].set(first), jnp.asarray(9))
    np.testing.assert_array_equal(fast, slow)
    assert fast.shape == (1, 3)
