"""generate(top_p=): nucleus sampling after temperature and top_k, checked against a nucleus computed here."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcgrad import errors, nn

VOCAB = 13


@pytest.fixture(scope="module")
def model_params():
    model = nn.serial(
        nn.Embedding(VOCAB, 8), nn.MultiHeadAttention(2, causal=True, rope=True), nn.Dense(VOCAB)
    )
    prompt = jnp.tile(jnp.array([[1, 2, 3]]), (8, 1))
    params = model.init(jax.random.key(0), prompt)
    return model, params, prompt


def test_tiny_top_p_is_greedy_and_top_p_one_is_no_top_p(model_params):
    model, params, prompt = model_params
    key = jax.random.key(3)
    greedy = nn.generate(model, params, prompt, 4, key=key, temperature=0)
    tiny = nn.generate(model, params, prompt, 4, key=key, top_p=1e-6)
    np.testing.assert_array_equal(tiny, greedy)
    plain = nn.generate(model, params, prompt, 4, key=key)
    np.testing.assert_array_equal(nn.generate(model, params, prompt, 4, key=key, top_p=1.0), plain)


def nucleus(logits, temperature, top_k, top_p):
    """The tokens allowed after temperature, then top_k, then top_p, written out in float64."""
    z = np.asarray(logits, np.float64) / temperature
    order = np.argsort(-z)[:top_k]
    p = np.exp(z[order] - z[order].max())
    p /= p.sum()
    before = np.cumsum(p) - p
    return set(order[before < top_p - 1e-6].tolist()), set(order[before < top_p + 1e-6].tolist())


def test_sampled_tokens_lie_in_the_nucleus(model_params):
    model, params, prompt = model_params
    temperature, top_k, top_p = 0.8, 6, 0.7
    out = nn.generate(
        model, params, prompt, 5, key=jax.random.key(1), temperature=temperature, top_k=top_k,
        top_p=top_p,
    )  # fmt: skip
    # Position t's logits choose token t + 1; the forward compiled as one program, and both read
    # into NumPy once (indexing device arrays element by element dispatches an op per element).
    logits = np.asarray(jax.jit(model.apply)(params, out))
    out = np.asarray(out)
    sizes, off_greedy = [], 0
    for b in range(out.shape[0]):
        for t in range(prompt.shape[1], out.shape[1]):
            inside, inside_with_ties = nucleus(logits[b, t - 1], temperature, top_k, top_p)
            token = int(out[b, t])
            assert token in inside_with_ties, (b, t, token, inside)
            sizes.append(len(inside))
            off_greedy += token != int(np.argmax(logits[b, t - 1]))
    # Not a trivial check: the nucleus cut some of the top_k tokens, and sampling was not greedy.
    assert min(sizes) < top_k and max(sizes) > 1 and off_greedy > 0


@pytest.mark.parametrize("top_p", [0, 1.5, -0.1, True, "0.5"])
def test_top_p_outside_zero_one_is_refused(model_params, top_p):
    model, params, prompt = model_params
    with pytest.raises(errors.ConfigError, match=r"generate: top_p must be a number in \(0, 1\]"):
        nn.generate(model, params, prompt, 2, key=jax.random.key(0), top_p=top_p)
