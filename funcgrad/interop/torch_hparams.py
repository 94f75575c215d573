"""What a torch module says that its weights do not: heads, epsilons, strides, norm placement.

Given the torch model itself (not only its state_dict), `from_torch` refuses a funcgrad layer built otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import numpy as np

from funcgrad.errors import ConfigError
from funcgrad.interop.torch_layouts import Slot
from funcgrad.interop.torch_modules import TorchModule
from funcgrad.nn.activations import Elementwise
from funcgrad.nn.layer import Layer
from funcgrad.nn.norm import GroupNorm, InstanceNorm, LayerNorm, RMSNorm
from funcgrad.nn.window import padding_arg, per_axis
from funcgrad.paths import ROOT

__all__ = ["check_hyperparameters", "check_order"]

_NORMS = {"LayerNorm": LayerNorm, "RMSNorm": RMSNorm, "GroupNorm": GroupNorm, "InstanceNorm": InstanceNorm}  # fmt: skip


def check_hyperparameters(m: TorchModule, slot: Slot, where: str) -> None:
    """Refuse ``slot``'s layer where the torch module ``m`` was built with other settings.

    Nothing is checked for a bare state_dict (``m.module`` is ``None``).
    """
    torch_module, layer = m.module, cast(Any, slot.layer)
    if torch_module is None:
        return
    problems: list[str] = []

    def differ(what: str, torch_value: Any, ours: Any, fix: str) -> None:
        problems.append(f"PyTorch has {what}={torch_value!r}, funcgrad has {ours!r} ({fix})")

    family = slot.family
    if family == "attention" and hasattr(torch_module, "num_heads"):
        heads = int(torch_module.num_heads)
        if heads != layer.num_heads:
            problems.append(
                f"PyTorch has num_heads={heads} (head_dim {torch_module.head_dim}), funcgrad has "
                f"num_heads={layer.num_heads} (head_dim {slot.params['wq'].shape[-1]}); the "
                f"weights fit either way but the outputs differ: build "
                f"nn.MultiHeadAttention({heads}, ...)"
            )
        if getattr(torch_module, "add_zero_attn", False):
            problems.append("PyTorch has add_zero_attn=True, which funcgrad has no equivalent of")
        if getattr(layer, "rope", False):
            problems.append("funcgrad has rope=True; PyTorch's MultiheadAttention has no rotary embeddings")  # fmt: skip
    elif family in ("norm", "batch_norm"):
        _norm(torch_module, layer, slot, differ, problems)
    elif family == "conv" and hasattr(torch_module, "kernel_size"):
        _conv(torch_module, layer, differ, problems)
    elif family == "embedding" and getattr(torch_module, "max_norm", None) is not None:
        problems.append(
            f"PyTorch has max_norm={torch_module.max_norm} (rows renormalised as they are "
            "looked up), which funcgrad's Embedding does not do"
        )
    if problems:
        raise ConfigError(f"{where}: the layers are built differently; " + "; ".join(problems))


def _norm(torch_module: Any, layer: Any, slot: Slot, differ: Any, problems: list[str]) -> None:
    kind = type(torch_module).__name__
    kind = "InstanceNorm" if kind.startswith("InstanceNorm") else kind
    want = _NORMS.get(kind)
    is_instance = isinstance(layer, InstanceNorm)
    if want is not None and (not isinstance(layer, want) or (want is GroupNorm and is_instance)):
        problems.append(
            f"PyTorch has a {type(torch_module).__name__}, funcgrad a {type(layer).__name__} "
            f"(build an nn.{want.__name__})"
        )
        return
    if not hasattr(torch_module, "eps"):  # a norm of the user's own: nothing known to compare
        return
    eps = torch_module.eps
    if eps is None:  # torch.nn.RMSNorm(eps=None): the input dtype's machine epsilon
        eps = float(np.finfo(np.float32).eps)
    ours = getattr(layer, "epsilon", None)
    if ours is not None and not math.isclose(eps, ours, rel_tol=1e-6):
        differ("eps", eps, ours, f"build it with epsilon={eps}")
    if kind == "GroupNorm":
        channels = next(iter(slot.params.values())).shape[-1]
        groups = layer.num_groups or channels // (layer.group_size or channels)
        if groups != torch_module.num_groups:
            differ("num_groups", torch_module.num_groups, groups, f"build nn.GroupNorm({torch_module.num_groups})")  # fmt: skip
    momentum = getattr(torch_module, "momentum", None)
    if kind.startswith("BatchNorm") and momentum is not None:
        if not math.isclose(1 - momentum, layer.momentum, rel_tol=1e-6):
            differ("momentum", momentum, layer.momentum, f"funcgrad's is 1 − PyTorch's: momentum={1 - momentum:g}")  # fmt: skip


def _conv(torch_module: Any, layer: Any, differ: Any, problems: list[str]) -> None:
    kernel = tuple(torch_module.kernel_size)
    nd, name = len(kernel), type(layer).__name__
    stride, dilation = tuple(torch_module.stride), tuple(torch_module.dilation)
    if per_axis(layer.strides, nd, "strides", name) != stride:
        differ("stride", stride, layer.strides, f"build it with strides={stride}")
    if per_axis(layer.dilation, nd, "dilation", name) != dilation:
        differ("dilation", dilation, layer.dilation, f"build it with dilation={dilation}")
    if getattr(torch_module, "padding_mode", "zeros") != "zeros":
        problems.append(f"PyTorch has padding_mode={torch_module.padding_mode!r}; funcgrad pads with zeros")  # fmt: skip
    theirs = _torch_pads(torch_module, kernel, stride, dilation)
    ours = _our_pads(
        padding_arg(layer.padding, nd, name), kernel, stride, dilation, layer.transpose
    )
    if theirs is not None and ours is not None and theirs != ours:
        differ("padding", torch_module.padding, layer.padding, f"as (low, high) pairs: PyTorch's is {theirs}, funcgrad's {ours}")  # fmt: skip


def _torch_pads(m: Any, kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int]) -> list[tuple[int, int]] | None:  # fmt: skip
    """PyTorch's padding as funcgrad's (low, high) pairs for the same layer kind; None where unknown."""
    if getattr(
        m, "transposed", False
    ):  # funcgrad pads the dilated input: d(k-1)-p, plus output_padding
        q = tuple(m.output_padding)
        return [(d * (k - 1) - p, d * (k - 1) - p + o) for k, d, p, o in zip(kernel, dilation, m.padding, q, strict=True)]  # fmt: skip
    if m.padding == "valid":
        return [(0, 0)] * len(kernel)
    if m.padding == "same":
        return _same(kernel, dilation)
    return [(p, p) for p in m.padding]


def _our_pads(padding: Any, kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int], transpose: bool) -> list[tuple[int, int]] | None:  # fmt: skip
    if padding == "VALID":
        if transpose:  # lax.conv_transpose's VALID is PyTorch's padding=0
            return [(d * (k - 1), d * (k - 1)) for k, d in zip(kernel, dilation, strict=True)]
        return [(0, 0)] * len(kernel)
    if padding == "SAME":  # its split depends on the input's size unless the stride is 1
        return _same(kernel, dilation) if set(stride) == {1} and not transpose else None
    return [tuple(p) for p in padding]


def _same(kernel: Sequence[int], dilation: Sequence[int]) -> list[tuple[int, int]]:
    total = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
    return [(t // 2, t - t // 2) for t in total]


def check_order(pairs: list[tuple[TorchModule, Slot]], calls: list[tuple[Layer, tuple[str, ...]]]) -> None:  # fmt: skip
    """Refuse a funcgrad block whose norm placement or activation differs from its torch parent's.

    A ``TransformerEncoderLayer``/``DecoderLayer`` holds ``norm_first`` and ``activation``;
    funcgrad's order of calls shows where its norms run and which activation sits between the
    two linears.
    """
    blocks: dict[int, tuple[Any, str, dict[str, Slot]]] = {}
    for m, slot in pairs:
        if m.parent is not None and m.module is not None:
            owner = m.prefix.rpartition(".")[0]
            blocks.setdefault(id(m.parent), (m.parent, owner, {}))[2][m.prefix.rpartition(".")[2]] = slot  # fmt: skip
    for parent, owner, children in blocks.values():
        where = f"from_torch: PyTorch '{owner or ROOT}' ({type(parent).__name__})"
        norm, attention = children.get("norm1"), children.get("self_attn")
        norm_first = getattr(parent, "norm_first", None)
        if isinstance(norm_first, bool) and norm is not None and attention is not None:
            if (norm.order < attention.order) != norm_first:
                runs = "after" if norm_first else "before"
                raise ConfigError(
                    f"{where} has norm_first={norm_first}, but funcgrad's {norm.describe()} "
                    f"(its norm1) runs {runs} {attention.describe()} (its self_attn); build the "
                    "block with the norm "
                    + ("inside the residual, first" if norm_first else "after the residual")
                )
        first, second = children.get("linear1"), children.get("linear2")
        wanted = _activation_name(getattr(parent, "activation", None))
        if wanted is None or first is None or second is None:
            continue
        lo, hi = sorted((first.order, second.order))
        ours = [layer.kind for layer, _ in calls[lo + 1 : hi] if isinstance(layer, Elementwise)]
        if wanted not in ours:
            raise ConfigError(
                f"{where} applies {wanted} between linear1 and linear2; funcgrad applies "
                f"{ours or 'no activation'} between {first.describe()} and {second.describe()} "
                f"(build it with nn.{wanted})"
            )


def _activation_name(activation: Any) -> str | None:
    """``relu``/``gelu`` for PyTorch's activation function or module; ``gelu_tanh`` for the tanh form."""
    if activation is None:
        return None
    name = getattr(activation, "__name__", None) or type(activation).__name__.lower()
    if name == "gelu" and getattr(activation, "approximate", "none") == "tanh":
        return "gelu_tanh"
    return name if name in ("relu", "gelu", "gelu_tanh", "tanh", "sigmoid", "silu") else None
