"""Layers and combinators: pure ``init``/``apply`` pairs over nested dicts of arrays."""

from funcgrad.nn.activations import (
    Elementwise,
    elementwise,
    gelu,
    log_softmax,
    relu,
    sigmoid,
    softmax,
    softplus,
    tanh,
)
from funcgrad.nn.cells import Cell
from funcgrad.nn.combinators import (
    Parallel,
    Remat,
    Repeat,
    Residual,
    Serial,
    Shared,
    parallel,
    remat,
    repeat,
    residual,
    serial,
    shared,
)
from funcgrad.nn.conv import Conv, ConvTranspose
from funcgrad.nn.dense import Dense, Scale
from funcgrad.nn.dropout import Dropout
from funcgrad.nn.embedding import Embedding, PositionEmbedding, Unembed
from funcgrad.nn.generate import generate
from funcgrad.nn.layer import Context, Layer, ParamLayer, ParamSpec
from funcgrad.nn.lora import lora_init, lora_merge
from funcgrad.nn.mha import MultiHeadAttention, attention
from funcgrad.nn.norm import BatchNorm, GroupNorm, InstanceNorm, LayerNorm, RMSNorm
from funcgrad.nn.pool import (
    AdaptivePool,
    Pool,
    adaptive_avg_pool,
    adaptive_max_pool,
    avg_pool,
    max_pool,
)
from funcgrad.nn.precision import MixedPrecision, mixed_precision
from funcgrad.nn.recurrent import (
    Bidirectional,
    GRUCell,
    LSTMCell,
    Recurrent,
    bidirectional,
    recurrent,
)
from funcgrad.nn.reshape import Flatten, Reshape
from funcgrad.nn.rotary import RopeScaling, rotary, segment_positions

__all__ = [
    "AdaptivePool",
    "BatchNorm",
    "Bidirectional",
    "Cell",
    "Context",
    "Conv",
    "ConvTranspose",
    "Dense",
    "Dropout",
    "Elementwise",
    "Embedding",
    "Flatten",
    "GRUCell",
    "GroupNorm",
    "InstanceNorm",
    "LSTMCell",
    "Layer",
    "LayerNorm",
    "MixedPrecision",
    "MultiHeadAttention",
    "Parallel",
    "ParamLayer",
    "ParamSpec",
    "Pool",
    "PositionEmbedding",
    "RMSNorm",
    "Recurrent",
    "Remat",
    "Repeat",
    "Reshape",
    "Residual",
    "RopeScaling",
    "Scale",
    "Serial",
    "Shared",
    "Unembed",
    "adaptive_avg_pool",
    "adaptive_max_pool",
    "attention",
    "avg_pool",
    "bidirectional",
    "elementwise",
    "gelu",
    "generate",
    "log_softmax",
    "lora_init",
    "lora_merge",
    "max_pool",
    "mixed_precision",
    "parallel",
    "recurrent",
    "relu",
    "remat",
    "repeat",
    "residual",
    "rotary",
    "segment_positions",
    "serial",
    "shared",
    "sigmoid",
    "softmax",
    "softplus",
    "tanh",
]  # fmt: skip
