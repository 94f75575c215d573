"""Autoregressive sampling from a token model with a key/value cache, the whole loop in one jit.

`generate` prefills the cache with the prompt, then decodes one token per `jax.lax.scan` step.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from funcgrad.errors import ConfigError, DTypeError, ShapeError
from funcgrad.nn.layer import Layer, Params, State, check_key


def generate(
    model: Layer,
    params: Params,
    prompt: Any,
    max_new_tokens: int,
    *,
    key: jax.Array,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    features: int | None = None,
    cache_dtype: Any = None,
    max_length: int | None = None,
    state: State | None = None,
) -> jax.Array:
    """Continue ``prompt`` by ``max_new_tokens`` tokens sampled from ``model``.

    ``model`` maps integer tokens ``(batch, length)`` to logits ``(batch, length, vocab)``
    and is causal (its attention layers have ``causal=True``); its caches come from
    ``model.init_cache(batch, max_length, params=params, dtype=cache_dtype, state=state)``,
    their widths read from ``params``. The prompt is run through the model once (filling
    the caches), then each new token costs one step over a single position, as
    ``logits, state = model.apply(params, token, state=state, position=p)``. Everything
    runs in one compiled call (compiled once per model, shapes and sampling settings).
    A request that does not fit ``max_length`` is refused before anything runs (inside the
    compiled loop positions are traced and an overflow could not be caught).

    Args:
      model, params: the model and its parameters.
      prompt: integer tokens ``(batch, prompt_len)``.
      max_new_tokens: how many tokens to add (at least 1).
      key: a PRNG key; each step draws with its own key split from it.
      temperature: divides the logits before sampling; 0 is greedy (argmax).
      top_k: sample among the ``top_k`` most likely tokens only; 1 is greedy.
      top_p: nucleus sampling, ``0 < top_p <= 1``: sample among the fewest most likely
        tokens whose probabilities sum to at least ``top_p`` (tokens tied with the last one
        kept stay in); 1 (or None) keeps every token. Applied after ``temperature`` and
        ``top_k``, to the probabilities they leave.
      features, cache_dtype: passed to `Layer.init_cache` (``features`` only matters for a
        layer whose width the parameters do not show).
      max_length: the cache length, the most positions the model may see (a model trained
        on a fixed context, say); default ``prompt_len + max_new_tokens``. A
        ``prompt_len + max_new_tokens`` above it is a `ConfigError`.
      state: the model's state (batch-norm statistics from ``init_with_state``); the caches
        are added to it.

    Returns:
      ``(batch, prompt_len + max_new_tokens)`` tokens: the prompt, then the new ones.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcgrad import nn
      >>> model = nn.serial(
      ...     nn.Embedding(11, 8), nn.MultiHeadAttention(2, causal=True, rope=True), nn.Dense(11)
      ... )
      >>> prompt = jnp.array([[1, 2, 3]])
      >>> params = model.init(jax.random.key(0), prompt)
      >>> out = nn.generate(model, params, prompt, 4, key=jax.random.key(1))
      >>> out.shape, out[0, :3].tolist()
      ((1, 7), [1, 2, 3])
    """
    prompt = jnp.asarray(prompt)
    if prompt.ndim != 2 or prompt.shape[1] < 1:
        raise ShapeError(
            f"generate: prompt must be (batch, prompt_len) tokens; got shape {tuple(prompt.shape)}"
        )
    if not jnp.issubdtype(prompt.dtype, jnp.integer):
        raise DTypeError(f"generate: prompt must hold integer tokens; got {prompt.dtype}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError(
            f"generate: max_new_tokens must be a positive int; got {max_new_tokens!r}"
        )
    if not temperature >= 0:
        raise ConfigError(f"generate: temperature must be >= 0; got {temperature!r}")
    if top_k is not None and not (isinstance(top_k, int) and top_k >= 1):
        raise ConfigError(f"generate: top_k must be a positive int or None; got {top_k!r}")
    if top_p is not None and not (
        isinstance(top_p, (int, float)) and not isinstance(top_p, bool) and 0 < top_p <= 1
    ):
        raise ConfigError(f"generate: top_p must be a number in (0, 1] or None; got {top_p!r}")
    check_key(key, "generate")
    batch, length = prompt.shape
    if max_length is None:
        max_length = length + max_new_tokens
    elif length + max_new_tokens > max_length:
        raise ConfigError(
            f"generate: a prompt of {length} tokens plus max_new_tokens={max_new_tokens} is "
            f"{length + max_new_tokens} positions; the cache holds max_length={max_length} "
            f"(at most {max(max_length - length, 0)} new tokens)"
        )
    cache = model.init_cache(
        batch, max_length, params=params, features=features, dtype=cache_dtype, state=state
    )
    greedy = temperature == 0 or top_k == 1
    nucleus = not (greedy or top_p is None or top_p >= 1)
    # Temperature and top_p are inputs of the compiled loop, not constants: a sweep over them
    # reuses one program.
    knobs = jnp.asarray([1.0 if greedy else temperature, top_p if nucleus else 1.0], jnp.float32)
    return _generate(
        model, max_new_tokens, None if greedy else top_k, nucleus, greedy, params, prompt,
        cache, key, knobs,
    )  # fmt: skip


def _sample(
    logits: jax.Array,
    key: jax.Array,
    temperature: jax.Array,
    top_k: int | None,
    top_p: jax.Array | None,
    greedy: bool,
) -> jax.Array:
    """One token per row of ``logits`` ``(batch, vocab)``: temperature, then top-k, then top-p."""
    if greedy:
        return jnp.argmax(logits, axis=-1)
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32)) / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p is not None:
        ranked = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(ranked, axis=-1)
        # A token is in the nucleus when the more likely ones before it hold less than top_p.
        inside = jnp.cumsum(probs, axis=-1) - probs < top_p
        last = jnp.min(jnp.where(inside, ranked, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < last, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _generate(
    model: Layer,
    steps: int,
    top_k: int | None,
    nucleus: bool,
    greedy: bool,
    params: Params,
    prompt: jax.Array,
    cache: Any,
    key: jax.Array,
    knobs: jax.Array,
) -> jax.Array:
    temperature, top_p = knobs[0], (knobs[1] if nucleus else None)

    def logits_of(tokens: jax.Array, cache: Any, position: Any) -> tuple[jax.Array, Any]:
        logits, cache = model.apply(params, tokens, state=cache, position=position)
        if logits.ndim != 3 or logits.shape[:2] != tokens.shape:
            raise ShapeError(
                "generate: the model must map tokens (batch, length) to logits (batch, length, "
                f"vocab); got {tuple(logits.shape)} for {tuple(tokens.shape)}"
            )
        return logits[:, -1], cache

    keys = jax.random.split(key, steps)
    logits, cache = logits_of(prompt, cache, 0)
    first = _sample(logits, keys[0], temperature, top_k, top_p, greedy).astype(prompt.dtype)

    def step(carry: tuple[jax.Array, Any, jax.Array], k: jax.Array) -> tuple[Any, jax.Array]:
        token, cache, position = carry
        logits, cache = logits_of(token[:, None], cache, position)
        token = _sample(logits, k, temperature, top_k, top_p, greedy).astype(prompt.dtype)
        return (token, cache, position + 1), token

    start = jnp.asarray(prompt.shape[1], jnp.int32)
    _, rest = jax.lax.scan(step, (first, cache, start), keys[1:])
    return jnp.concatenate([prompt, first[:, None], rest.T], axis=1)
