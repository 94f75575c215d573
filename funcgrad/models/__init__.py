"""Reference models built from `funcgrad.nn` layers: `llama` (Llama 2/3, Mistral, Qwen2) and `gpt2`.

Each is a frozen config plus a `Pretrained` layer; `funcgrad.interop.from_hf` loads them from Hugging Face.
"""

from __future__ import annotations

from funcgrad.models.base import Pretrained
from funcgrad.models.gpt2 import GPT2, GPT2Config
from funcgrad.models.llama import Llama, LlamaConfig

__all__ = ["GPT2", "GPT2Config", "Llama", "LlamaConfig", "Pretrained"]
