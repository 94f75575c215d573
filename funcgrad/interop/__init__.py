"""Weights in and out: safetensors files of parameter trees, and PyTorch models as funcgrad parameters.

One file per source or format: `safetensors_file`, `pytorch` (with its `torch_*` helpers), `hf`
(Hugging Face checkpoints), `layout_hints`.
"""

from __future__ import annotations

from funcgrad.interop.dotted_keys import flatten_dotted, unflatten_dotted
from funcgrad.interop.hf import from_hf, to_hf
from funcgrad.interop.layout_hints import channels_last_hint
from funcgrad.interop.pytorch import from_torch
from funcgrad.interop.safetensors_file import load_safetensors, save_safetensors

__all__ = [
    "channels_last_hint", "flatten_dotted", "from_hf", "from_torch", "load_safetensors",
    "save_safetensors", "to_hf", "unflatten_dotted",
]  # fmt: skip
