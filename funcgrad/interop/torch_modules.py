"""The PyTorch side of `from_torch`: a state_dict (or a torch module) as modules, each of a kind.

Read without importing torch: tensors are recognised by their methods, modules by their attributes.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from funcgrad.errors import InputTypeError
from funcgrad.paths import ROOT

__all__ = ["TORCH_NAMES", "TorchModule", "is_torch_module", "read_torch", "torch_family"]

TORCH_NAMES = {
    "linear": "Linear", "embedding": "Embedding", "conv": "Conv/ConvTranspose",
    "norm": "LayerNorm/RMSNorm/GroupNorm/InstanceNorm", "batch_norm": "BatchNorm",
    "attention": "MultiheadAttention", "linear_or_embedding": "Linear(bias=False)/Embedding",
    "lstm": "LSTM layer", "gru": "GRU layer", "lstm_cell": "LSTMCell", "gru_cell": "GRUCell",
    "unknown": "unknown module",
}  # fmt: skip
# One layer of torch.nn.LSTM/GRU/RNN: `weight_ih_l0`, `bias_hh_l1_reverse`, `weight_hr_l0` (proj_size).
_LAYER_KEY = re.compile(r"(?P<name>(?:weight|bias)_(?:ih|hh|hr))_l(?P<k>\d+)(?P<rev>_reverse)?")
_CELL_NAMES = {"weight_ih", "weight_hh", "bias_ih", "bias_hh"}


@dataclasses.dataclass
class TorchModule:
    """One PyTorch module's tensors, by name relative to its prefix.

    ``module`` is the ``torch.nn.Module`` itself when `from_torch` was given the model (so its
    hyper-parameters can be checked), and ``parent`` the module that holds it (a
    ``TransformerEncoderLayer`` holds its attention, linears and norms); both ``None`` for a
    bare state_dict.
    """

    prefix: str
    tensors: dict[str, np.ndarray]
    family: str = "unknown"
    layer_of: tuple[str, str] | None = None  # one layer of a torch LSTM/GRU: (its prefix, k)
    module: Any = None
    parent: Any = None

    def key(self, name: str) -> str:
        """The state_dict key of tensor ``name`` (``weight_ih_reverse`` is ``weight_ih_l{k}_reverse``)."""
        if self.layer_of is not None:
            owner, k = self.layer_of
            rev = "_reverse" if name.endswith("_reverse") else ""
            key = f"{name.removesuffix('_reverse')}_l{k}{rev}"
            return f"{owner}.{key}" if owner else key
        return f"{self.prefix}.{name}" if self.prefix else name

    def describe(self) -> str:
        names = ", ".join(f"{n}{list(t.shape)}" for n, t in self.tensors.items())
        return f"'{self.prefix or ROOT}' ({TORCH_NAMES[self.family]}: {names})"


def is_torch_module(value: Any) -> bool:
    """Whether ``value`` looks like a ``torch.nn.Module`` (torch is not imported to ask)."""
    return callable(getattr(value, "state_dict", None)) and callable(
        getattr(value, "named_modules", None)
    )


def read_torch(source: Any) -> list[TorchModule]:
    """The modules of a state_dict or of a ``torch.nn.Module``, in state_dict order."""
    if is_torch_module(source):
        owners = dict(source.named_modules())
        modules = _modules(source.state_dict())
        for m in modules:
            owner = m.layer_of[0] if m.layer_of is not None else m.prefix
            m.module = owners.get(owner)
            m.parent = owners.get(owner.rpartition(".")[0]) if owner else None
        return modules
    if not isinstance(source, Mapping):
        raise InputTypeError(
            "from_torch: expected a torch.nn.Module or its state_dict (a mapping of names to "
            f"tensors or arrays); got {type(source).__name__}"
        )
    return _modules(source)


def _numpy(value: Any, key: str) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch.Tensor, read without importing torch here
        value = value.detach().cpu()
        try:
            return np.asarray(value.numpy())
        except TypeError:  # bfloat16 and other dtypes NumPy lacks
            return np.asarray(value.float().numpy())
    try:
        return np.asarray(value)
    except Exception:
        raise InputTypeError(
            f"from_torch: state_dict['{key}'] is a {type(value).__name__}, not a tensor or array"
        ) from None


def _modules(state_dict: Mapping[str, Any]) -> list[TorchModule]:
    flat = {str(k): _numpy(v, str(k)) for k, v in state_dict.items()}
    # Attention modules own their out_proj Linear: find them first, then group by prefix.
    attention = {
        k.rpartition(".")[0]
        for k in flat
        if k.rpartition(".")[2] in ("in_proj_weight", "q_proj_weight")
    }
    modules: dict[str, TorchModule] = {}
    for key, value in flat.items():
        prefix, _, name = key.rpartition(".")
        layer_of = None
        if prefix.endswith(".out_proj") or prefix == "out_proj":
            owner = prefix[: -len("out_proj")].rstrip(".")
            if owner in attention:
                prefix, name = owner, f"out_proj.{name}"
        elif match := _LAYER_KEY.fullmatch(name):  # torch's LSTM/GRU: one module per layer
            layer_of = (prefix, match["k"])
            prefix = f"{prefix}.l{match['k']}" if prefix else f"l{match['k']}"
            name = match["name"] + (match["rev"] or "")
        modules.setdefault(prefix, TorchModule(prefix, {}, layer_of=layer_of)).tensors[name] = value
    for m in modules.values():
        m.family = torch_family(m)
    return list(modules.values())


def torch_family(m: TorchModule) -> str:
    """The kind of a module, from its tensors' names and ranks alone."""
    names, w = set(m.tensors), m.tensors.get("weight")
    if m.layer_of is not None or (names <= _CELL_NAMES and "weight_hh" in names):
        # LSTM and GRU differ in their number of gates: weight_hh is (gates * hidden, hidden).
        rows, cols = np.shape(m.tensors.get("weight_hh", np.zeros((0, 1))))
        kind = {4 * cols: "lstm", 3 * cols: "gru"}.get(rows) if cols else None
        if kind is None or "weight_hr" in names or "weight_hr_reverse" in names:
            return "unknown"  # torch.nn.RNN, or an LSTM with proj_size
        return kind if m.layer_of is not None else f"{kind}_cell"
    if "in_proj_weight" in names or "q_proj_weight" in names:
        return "attention"
    if "running_mean" in names:
        return "batch_norm"
    if w is None or not names <= {"weight", "bias"}:
        return "unknown"
    if w.ndim >= 3:
        return "conv"
    if w.ndim == 2:
        return "linear" if "bias" in names else "linear_or_embedding"
    return "norm" if w.ndim == 1 else "unknown"
