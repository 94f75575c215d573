"""GPT-2 as a `funcgrad.nn` model, with its config.

Learned position embeddings, pre-norm blocks (LayerNorm, biased attention, a GELU MLP) stacked by `nn.repeat`.

As in `funcgrad.models.llama`, one `nn.repeat` holds the blocks (parameters stacked on a
leading layer axis, compile time flat in depth, stacked caches for `nn.generate`). The tree:

    wte.embedding                        (vocab, hidden)   read again by the tied output layer
    wpe.embedding                        (positions, hidden)
    h.attention_block.ln_1.{scale,bias}  (L, hidden)
    h.attention_block.attn.{wq,wk,wv,wo,bq,bk,bv,bo}
    h.mlp_block.ln_2.{scale,bias}        (L, hidden)
    h.mlp_block.c_fc.{w,b}               (L, hidden, inner), (L, inner)
    h.mlp_block.c_proj.{w,b}             (L, inner, hidden), (L, hidden)
    ln_f.{scale,bias}                    (hidden,)
    lm_head.w                            (hidden, vocab), only when not tied
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax

from funcgrad import nn
from funcgrad.errors import ConfigError, UnknownNameError
from funcgrad.models.base import Pretrained

ACTIVATIONS = {
    "gelu_new": nn.elementwise(functools.partial(jax.nn.gelu, approximate=True), "gelu_tanh"),
    "gelu_pytorch_tanh": nn.elementwise(functools.partial(jax.nn.gelu, approximate=True), "gelu_tanh"),
    "gelu": nn.gelu,
    "relu": nn.relu,
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """The shape of a GPT-2 model, in Hugging Face's terms.

    Args:
      vocab_size, hidden_size, num_layers, num_heads: the sizes (``n_embd``, ``n_layer``, ``n_head``).
      max_position_embeddings: rows of the position table (``n_positions``).
      intermediate_size: the MLP's width (``n_inner``); default ``4 * hidden_size``.
      layer_norm_eps: the LayerNorm epsilon.
      activation: ``"gelu_new"`` (the tanh approximation), ``"gelu"``, ``"relu"``.
      tie_embeddings: the output projection reads ``wte`` (GPT-2 always does).

    Example:
      >>> GPT2Config(64, 32, num_layers=2, num_heads=4).to_hf_config()["n_inner"]
      128
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    max_position_embeddings: int = 1024
    intermediate_size: int | None = None
    layer_norm_eps: float = 1e-5
    activation: str = "gelu_new"
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise UnknownNameError(
                f"GPT2Config: activation {self.activation!r} is not one of {sorted(ACTIVATIONS)}"
            )
        # Resolved here, so that a config read back from config.json equals the one written.
        object.__setattr__(self, "intermediate_size", self.inner)

    @property
    def inner(self) -> int:
        return self.intermediate_size or 4 * self.hidden_size

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any]) -> GPT2Config:
        """From a ``config.json`` dict; unsupported options are a `ConfigError`.

        Example:
          >>> GPT2Config.from_hf_config({"model_type": "gpt2", "vocab_size": 64, "n_embd": 32,
          ...     "n_layer": 2, "n_head": 4, "n_positions": 16}).max_position_embeddings
          16
        """
        where = f"GPT2Config.from_hf_config (model_type {config.get('model_type')!r})"
        if config.get("model_type") != "gpt2":
            raise UnknownNameError(f"{where}: expected model_type 'gpt2'")
        needed = {
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "add_cross_attention": False,
        }
        bad = {k: config[k] for k, ok in needed.items() if config.get(k, ok) != ok}
        if bad:
            raise ConfigError(f"{where}: unsupported settings {bad}")
        act = config.get("activation_function", "gelu_new")
        if act not in ACTIVATIONS:
            raise UnknownNameError(
                f"{where}: activation_function {act!r} is not one of {sorted(ACTIVATIONS)}"
            )
        return cls(
            vocab_size=config["vocab_size"],
            hidden_size=config["n_embd"],
            num_layers=config["n_layer"],
            num_heads=config["n_head"],
            max_position_embeddings=config.get("n_positions", 1024),
            intermediate_size=config.get("n_inner"),
            layer_norm_eps=config.get("layer_norm_epsilon", 1e-5),
            activation=act,
            tie_embeddings=config.get("tie_word_embeddings", True),
        )

    def to_hf_config(self) -> dict[str, Any]:
        """A ``config.json`` dict that transformers reads."""
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": self.vocab_size,
            "n_embd": self.hidden_size,
            "n_layer": self.num_layers,
            "n_head": self.num_heads,
            "n_positions": self.max_position_embeddings,
            "n_inner": self.inner,
            "layer_norm_epsilon": self.layer_norm_eps,
            "activation_function": self.activation,
            "tie_word_embeddings": self.tie_embeddings,
        }


@dataclasses.dataclass(frozen=True)
class GPT2(Pretrained):
    """A GPT-2 causal language model: tokens ``(batch, length)`` to logits ``(..., vocab)``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> model = GPT2(GPT2Config(64, 32, num_layers=2, num_heads=4, max_position_embeddings=16))
      >>> ids = jnp.array([[1, 2, 3]])
      >>> params = model.init(jax.random.key(0), ids)
      >>> model.apply(params, ids).shape, sorted(params)
      ((1, 3, 64), ['h', 'ln_f', 'wpe', 'wte'])
    """

    config: GPT2Config

    def build(self) -> nn.Layer:
        c = self.config
        eps = c.layer_norm_eps
        attention = nn.MultiHeadAttention(c.num_heads, causal=True, name="attn")
        block = nn.serial(
            nn.residual(nn.LayerNorm(eps, name="ln_1"), attention, name="attention_block"),
            nn.residual(
                nn.LayerNorm(eps, name="ln_2"),
                nn.Dense(c.inner, name="c_fc"),
                ACTIVATIONS[c.activation],
                nn.Dense(c.hidden_size, name="c_proj"),
                name="mlp_block",
            ),
        )
        embed = nn.Embedding(c.vocab_size, c.hidden_size, name="wte")
        if c.tie_embeddings:
            first: nn.Layer = nn.shared(embed, "wte")
            last: nn.Layer = nn.shared(nn.Unembed(c.vocab_size, c.hidden_size), "wte")
        else:
            first, last = embed, nn.Dense(c.vocab_size, use_bias=False, name="lm_head")
        return nn.serial(
            first,
            nn.PositionEmbedding(c.max_position_embeddings, name="wpe"),
            nn.repeat(block, c.num_layers, name="h"),
            nn.LayerNorm(eps, name="ln_f"),
            last,
        )


def gpt2(config: GPT2Config) -> GPT2:
    """The model of ``config`` (the same as ``GPT2(config)``).

    Example:
      >>> gpt2(GPT2Config(64, 32, num_layers=1, num_heads=4)).config.inner
      128
    """
    return GPT2(config)
