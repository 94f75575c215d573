"""`Pretrained.hidden` and `Pretrained.head_weight`: the final hidden states times the head's
weight are the model's logits, for tied and untied Llama and GPT-2; a head that is no plain
linear layer is refused."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcgrad import nn
from funcgrad.errors import ConfigError
from funcgrad.models import GPT2, GPT2Config, Llama, LlamaConfig
from funcgrad.models.base import Pretrained

MODELS = {
    "llama": Llama(LlamaConfig(64, 32, 48, num_layers=2, num_heads=4, num_kv_heads=2)),
    "llama tied": Llama(LlamaConfig(64, 32, 48, num_layers=2, num_heads=4, tie_embeddings=True)),
    "gpt2 tied": GPT2(GPT2Config(64, 32, num_layers=2, num_heads=4)),
    "gpt2": GPT2(GPT2Config(64, 32, num_layers=2, num_heads=4, tie_embeddings=False)),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_hidden_times_head_weight_is_the_logits(name: str) -> None:
    model = MODELS[name]
    ids = jnp.array([[1, 5, 9, 2], [3, 3, 7, 0]])
    params = model.init(jax.random.key(0), ids)
    h, w = model.hidden(params, ids), model.head_weight(params)
    assert h.shape == (2, 4, 32) and w.shape == (32, 64)
    np.testing.assert_allclose(h @ w, model.apply(params, ids), atol=1e-5, rtol=1e-5)
    tied = "tied" in name
    assert ("lm_head" in params) != tied  # both layouts are exercised
    if tied:
        table = params["embed" if name.startswith("llama") else "wte"]["embedding"]
        np.testing.assert_array_equal(w, table.T)
    else:
        np.testing.assert_array_equal(w, params["lm_head"]["w"])


def test_a_head_with_a_bias_is_refused() -> None:
    class Biased(Pretrained):
        def build(self) -> nn.Layer:
            return nn.serial(nn.Embedding(16, 8), nn.Dense(16, name="head"))

    model = Biased(None)
    params = model.init(jax.random.key(0), jnp.array([[1, 2]]))
    assert model.hidden(params, jnp.array([[1, 2]])).shape == (1, 2, 8)
    with pytest.raises(ConfigError, match="head_weight.*'head'"):
        model.head_weight(params)
