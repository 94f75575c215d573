"""The Llama family (Llama 2/3, Mistral, Qwen2) as a `funcgrad.nn` model, with its config.

Pre-norm decoder blocks (RMSNorm, grouped-query attention with RoPE, SwiGLU) stacked by `nn.repeat`.

The blocks are one `nn.repeat`, not a `nn.serial` of copies: every block has the same shapes,
so the parameters are stacked on a leading layer axis (``layers.attention_block.attention.wq``
is ``(num_layers, hidden, heads, head_dim)``), compile time does not grow with depth, and
`nn.generate` decodes through the stacked key/value caches the same way. The tree reads:

    embed.embedding                                   (vocab, hidden)
    layers.attention_block.norm.scale                 (L, hidden)
    layers.attention_block.attention.{wq,wk,wv,wo}    (L, ...), biases bq/bk/bv/bo if any
    layers.mlp_block.norm.scale                       (L, hidden)
    layers.mlp_block.gate_up.{gate,up}.w              (L, hidden, intermediate)
    layers.mlp_block.down.w                           (L, intermediate, hidden)
    norm.scale                                        (hidden,)
    lm_head.w                                         (hidden, vocab), absent when tied
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from funcgrad import nn
from funcgrad.errors import ConfigError, UnknownNameError
from funcgrad.models.base import Pretrained

MODEL_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """The shape of a Llama-family model, in Hugging Face's terms.

    Args:
      vocab_size, hidden_size, intermediate_size, num_layers, num_heads: the sizes.
      num_kv_heads: key/value heads (grouped-query attention); default ``num_heads``.
      head_dim: per head; default ``hidden_size // num_heads``.
      rope_theta: RoPE's base; rope_scaling: an `nn.RopeScaling` (Llama 3.1's) or None.
      rms_norm_eps: the RMSNorm epsilon.
      tie_embeddings: the output projection reads the input embedding table.
      attention_bias: `nn.MultiHeadAttention`'s ``use_bias`` (Qwen2: ``("q", "k", "v")``).
      mlp_bias: biases in the SwiGLU projections.
      max_position_embeddings: the context length, written to config.json.
      model_type: ``"llama"``, ``"mistral"`` or ``"qwen2"``, for config.json.

    Example:
      >>> LlamaConfig(64, 32, 48, num_layers=2, num_heads=4).to_hf_config()["num_key_value_heads"]
      4
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int | None = None
    head_dim: int | None = None
    rope_theta: float = 10000.0
    rope_scaling: nn.RopeScaling | None = None
    rms_norm_eps: float = 1e-6
    tie_embeddings: bool = False
    attention_bias: bool | tuple[str, ...] = False
    mlp_bias: bool = False
    max_position_embeddings: int = 2048
    model_type: str = "llama"

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise UnknownNameError(
                f"LlamaConfig: model_type {self.model_type!r} is not one of {sorted(MODEL_TYPES)}"
            )
        # Resolved here, so that a config read back from config.json equals the one written.
        object.__setattr__(self, "num_kv_heads", self.kv_heads)
        object.__setattr__(self, "head_dim", self.head_size)

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any]) -> LlamaConfig:
        """From a ``config.json`` dict, in the Hub's layout (``rope_theta``, ``rope_scaling``)
        or transformers 5's (``rope_parameters``); unsupported options are a `ConfigError`.

        Example:
          >>> c = LlamaConfig.from_hf_config({"model_type": "llama", "vocab_size": 64,
          ...     "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
          ...     "num_attention_heads": 4, "rope_theta": 500000.0})
          >>> c.rope_theta, c.kv_heads
          (500000.0, 4)
        """
        kind = config.get("model_type")
        where = f"LlamaConfig.from_hf_config (model_type {kind!r})"
        if kind not in MODEL_TYPES:
            raise UnknownNameError(f"{where}: not one of {sorted(MODEL_TYPES)}")
        if config.get("hidden_act", "silu") != "silu":
            raise ConfigError(
                f"{where}: hidden_act {config['hidden_act']!r}; only 'silu' is supported"
            )
        layer_types = set(config.get("layer_types") or ["full_attention"])
        window = config.get("sliding_window")
        sliding = (
            config.get("use_sliding_window", False)
            if kind == "qwen2"
            else window is not None and window < config.get("max_position_embeddings", 2048)
        )
        if sliding or layer_types != {"full_attention"}:
            raise ConfigError(
                f"{where}: sliding-window attention (sliding_window={window}, use_sliding_window="
                f"{config.get('use_sliding_window')}, layer_types={sorted(layer_types)}) is not "
                "supported; only full attention"
            )
        theta, scaling = _rope(config, where)
        bias: bool | tuple[str, ...] = (
            ("q", "k", "v") if kind == "qwen2" else bool(config.get("attention_bias", False))
        )
        return cls(
            vocab_size=config["vocab_size"],
            hidden_size=config["hidden_size"],
            intermediate_size=config["intermediate_size"],
            num_layers=config["num_hidden_layers"],
            num_heads=config["num_attention_heads"],
            num_kv_heads=config.get("num_key_value_heads"),
            head_dim=config.get("head_dim"),
            rope_theta=theta,
            rope_scaling=scaling,
            rms_norm_eps=config.get("rms_norm_eps", 1e-6),
            tie_embeddings=config.get("tie_word_embeddings", False),
            attention_bias=bias,
            mlp_bias=bool(config.get("mlp_bias", False)),
            max_position_embeddings=config.get("max_position_embeddings", 2048),
            model_type=kind,
        )

    def to_hf_config(self) -> dict[str, Any]:
        """A ``config.json`` dict that transformers (4.46 and 5) reads; rope settings in the Hub's
        layout (``rope_theta``, ``rope_scaling``)."""
        if self.model_type != "llama" and self.mlp_bias:
            raise ConfigError(f"LlamaConfig.to_hf_config: {self.model_type} has no mlp_bias")
        wanted = {"llama": (True, False), "mistral": (False,), "qwen2": (("q", "k", "v"),)}
        if self.attention_bias not in wanted[self.model_type]:
            raise ConfigError(
                f"LlamaConfig.to_hf_config: {self.model_type} cannot hold attention_bias="
                f"{self.attention_bias!r} (it allows {wanted[self.model_type]})"
            )
        config: dict[str, Any] = {
            "architectures": [MODEL_TYPES[self.model_type]],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_size,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": None if self.rope_scaling is None else dataclasses.asdict(self.rope_scaling),
            "tie_word_embeddings": self.tie_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
        }  # fmt: skip
        if self.model_type == "llama":
            config |= {"attention_bias": self.attention_bias, "mlp_bias": self.mlp_bias}
        if self.model_type == "mistral":
            config["sliding_window"] = None
        if self.model_type == "qwen2":
            config |= {"use_sliding_window": False, "sliding_window": None}
        return config


def _rope(config: Mapping[str, Any], where: str) -> tuple[float, nn.RopeScaling | None]:
    """``(rope_theta, scaling)`` from either layout of config.json."""
    rope = dict(config.get("rope_scaling") or {}) | dict(config.get("rope_parameters") or {})
    theta = float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))
    if rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ConfigError(f"{where}: partial_rotary_factor is not supported")
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind == "linear":
        return theta, nn.RopeScaling("linear", factor=float(rope["factor"]))
    if kind == "llama3":
        names = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")  # fmt: skip
        return theta, nn.RopeScaling("llama3", **{n: rope[n] for n in names})
    raise UnknownNameError(
        f"{where}: rope_scaling type {kind!r} is not supported; only 'default', 'linear', 'llama3'"
    )


def _swiglu(x: jax.Array) -> jax.Array:
    gate, up = jnp.split(x, 2, axis=-1)
    return jax.nn.silu(gate) * up


swiglu = nn.elementwise(_swiglu, "swiglu")
"""``silu(gate) * up`` of the two halves of the last axis (`nn.parallel`'s concatenated branches)."""


@dataclasses.dataclass(frozen=True)
class Llama(Pretrained):
    """A Llama-family causal language model: tokens ``(batch, length)`` to logits ``(..., vocab)``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> model = Llama(LlamaConfig(64, 32, 48, num_layers=2, num_heads=4, num_kv_heads=2))
      >>> ids = jnp.array([[1, 2, 3]])
      >>> params = model.init(jax.random.key(0), ids)
      >>> model.apply(params, ids).shape, params["layers"]["attention_block"]["attention"]["wk"].shape
      ((1, 3, 64), (2, 32, 2, 8))
    """

    config: LlamaConfig

    def build(self) -> nn.Layer:
        c = self.config
        attention = nn.MultiHeadAttention(
            c.num_heads,
            qkv_features=c.num_heads * c.head_size,
            num_kv_heads=c.kv_heads,
            causal=True,
            use_bias=c.attention_bias,
            rope=True,
            rope_base=c.rope_theta,
            rope_scaling=c.rope_scaling,
            name="attention",
        )
        mlp = (
            nn.parallel(
                nn.Dense(c.intermediate_size, use_bias=c.mlp_bias, name="gate"),
                nn.Dense(c.intermediate_size, use_bias=c.mlp_bias, name="up"),
                combine="concat",
                name="gate_up",
            ),
            swiglu,
            nn.Dense(c.hidden_size, use_bias=c.mlp_bias, name="down"),
        )
        block = nn.serial(
            nn.residual(nn.RMSNorm(c.rms_norm_eps, name="norm"), attention, name="attention_block"),
            nn.residual(nn.RMSNorm(c.rms_norm_eps, name="norm"), *mlp, name="mlp_block"),
        )
        embed = nn.Embedding(c.vocab_size, c.hidden_size, name="embed")
        if c.tie_embeddings:
            first: nn.Layer = nn.shared(embed, "embed")
            last: nn.Layer = nn.shared(nn.Unembed(c.vocab_size, c.hidden_size), "embed")
        else:
            first, last = embed, nn.Dense(c.vocab_size, use_bias=False, name="lm_head")
        return nn.serial(
            first,
            nn.repeat(block, c.num_layers, name="layers"),
            nn.RMSNorm(c.rms_norm_eps, name="norm"),
            last,
        )


def llama(config: LlamaConfig) -> Llama:
    """The model of ``config`` (the same as ``Llama(config)``).

    Example:
      >>> llama(LlamaConfig(64, 32, 48, num_layers=1, num_heads=4)).config.head_size
      8
    """
    return Llama(config)
