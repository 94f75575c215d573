"""Tensor layouts, PyTorch → funcgrad: one torch module's tensors as one funcgrad layer's parameters.

Transposes, splits heads and flips kernels, then checks every converted shape against the layer's own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np

from funcgrad.errors import ParamsError, ShapeError
from funcgrad.interop.torch_modules import TORCH_NAMES, TorchModule, torch_family
from funcgrad.nn.conv import Conv
from funcgrad.nn.dense import Dense
from funcgrad.nn.embedding import Embedding
from funcgrad.nn.layer import Layer
from funcgrad.nn.mha import MultiHeadAttention
from funcgrad.nn.norm import BatchNorm, GroupNorm, LayerNorm, RMSNorm
from funcgrad.nn.recurrent import Bidirectional, GRUCell, LSTMCell, Recurrent
from funcgrad.paths import describe as describe_path

__all__ = ["Slot", "convert"]

# Which funcgrad layers take which PyTorch modules; the k-th of a family maps to the k-th.
_FAMILY = {
    Dense: "linear", Embedding: "embedding", Conv: "conv", LayerNorm: "norm", RMSNorm: "norm",
    GroupNorm: "norm", BatchNorm: "batch_norm", MultiHeadAttention: "attention",
    LSTMCell: "lstm_cell", GRUCell: "gru_cell",
}  # fmt: skip


@dataclasses.dataclass
class Slot:
    """One funcgrad layer with parameters, at its place in the tree."""

    path: tuple[str, ...]
    layer: Layer
    params: dict[str, Any]
    state: dict[str, Any]
    order: int = -1  # its place among all the layer calls of ``apply``

    @property
    def family(self) -> str:
        if isinstance(self.layer, (Recurrent, Bidirectional)):  # one layer of torch's LSTM/GRU
            kinds = {
                "lstm" if isinstance(c, LSTMCell) else "gru" if isinstance(c, GRUCell) else "?"
                for c in self.layer.children()
            }
            return kinds.pop() if kinds in ({"lstm"}, {"gru"}) else "unsupported"
        for cls in type(self.layer).__mro__:
            if cls in _FAMILY:
                return _FAMILY[cls]
        return "unsupported"

    def describe(self) -> str:
        return f"{type(self.layer).__name__} at {describe_path(self.path)}"


def convert(m: TorchModule, slot: Slot, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(params, state)`` of ``slot``'s layer from the tensors of ``m`` (which it empties)."""
    t, layer = m.tensors, slot.layer
    if torch_family(m) not in (slot.family, "linear_or_embedding"):
        raise ParamsError(
            f"{where}: a {TORCH_NAMES[m.family]} cannot fill a {type(layer).__name__}"
        )
    params: dict[str, Any] = {}
    state: dict[str, Any] = {}

    def take(name: str) -> np.ndarray:
        if name not in t:
            raise ParamsError(f"{where}: the state_dict lacks '{m.key(name)}'; has {sorted(t)}")
        return t.pop(name)

    family = slot.family
    recurrent = family in ("lstm", "gru", "lstm_cell", "gru_cell")
    if recurrent:
        params = _recurrent(m, slot, take, where)
    elif family == "linear":
        params["w"] = take("weight").T
        if "b" in slot.params:
            params["b"] = take("bias")
    elif family == "embedding":
        params["embedding"] = take("weight")
    elif family == "conv":
        w = take("weight")
        nd = w.ndim - 2
        spatial = tuple(range(2, nd + 2))
        if getattr(layer, "transpose", False):  # torch (I, O, *k), applied as the conv's gradient
            params["w"] = np.flip(np.transpose(w, (*spatial, 0, 1)), axis=tuple(range(nd)))
        else:  # torch (O, I/groups, *k)
            params["w"] = np.transpose(w, (*spatial, 1, 0))
        if "b" in slot.params:
            params["b"] = take("bias")
    elif family in ("norm", "batch_norm"):
        if "scale" in slot.params:
            params["scale"] = take("weight")
        if "bias" in slot.params:
            params["bias"] = take("bias")
        if family == "batch_norm":
            state = {"mean": take("running_mean"), "var": take("running_var")}
            t.pop("num_batches_tracked", None)
    elif family == "attention":
        params = _attention(t, slot, take, where)
    leftover = sorted(t)
    if leftover:
        raise ParamsError(
            f"{where}: the funcgrad layer has no place for {[m.key(n) for n in leftover]} "
            f"(its parameters: {sorted(slot.params)}; check use_bias / use_scale)"
        )
    if recurrent:  # fitted direction by direction
        return params, {}
    return _fit(params, slot.params, where), _fit(state, slot.state, where)


def _recurrent(
    m: TorchModule, slot: Slot, take: Callable[[str], np.ndarray], where: str
) -> dict[str, Any]:
    """One layer of torch's LSTM/GRU (both directions), or one LSTMCell/GRUCell: transpose the weights."""
    layer = slot.layer
    two_way = any(n.endswith("_reverse") for n in m.tensors)
    if isinstance(layer, Recurrent) and layer.reverse:
        raise ParamsError(
            f"{where}: nn.recurrent(reverse=True) has no PyTorch counterpart (a one-way LSTM/GRU "
            "reads forwards; a bidirectional one is an nn.bidirectional)"
        )
    if two_way != isinstance(layer, Bidirectional):
        raise ParamsError(
            f"{where}: a {'bidirectional' if two_way else 'one-way'} PyTorch layer goes into an "
            + (
                "nn.bidirectional, not an nn.recurrent"
                if two_way
                else "nn.recurrent, not an nn.bidirectional"
            )
        )
    directions = [("forward", ""), ("backward", "_reverse")] if two_way else [("", "")]
    params: dict[str, Any] = {}
    for direction, sfx in directions:
        specs = slot.params[direction] if direction else slot.params
        here = f"{where} ({direction})" if direction else where
        wh, hidden = take(f"weight_hh{sfx}"), specs["wh"].shape[0]
        if wh.shape[1] != hidden:
            raise ShapeError(
                f"{here}: the PyTorch layer has hidden size {wh.shape[1]} ('{m.key(f'weight_hh{sfx}')}' "
                f"is {list(wh.shape)}); the funcgrad cell has hidden={hidden}"
            )
        cell = {"wi": take(f"weight_ih{sfx}").T, "wh": wh.T}
        if f"bias_ih{sfx}" in m.tensors or f"bias_hh{sfx}" in m.tensors:
            cell |= {"bi": take(f"bias_ih{sfx}"), "bh": take(f"bias_hh{sfx}")}
        else:  # bias=False: funcgrad's cells always have biases; zeros are the same function
            cell |= {"bi": np.zeros(cell["wi"].shape[1:]), "bh": np.zeros(cell["wh"].shape[1:])}
        fitted = _fit(cell, specs, here)
        params |= {direction: fitted} if direction else fitted
    return params


def _attention(
    t: dict[str, np.ndarray], slot: Slot, take: Callable[[str], np.ndarray], where: str
) -> dict[str, Any]:
    if "bias_k" in t or "bias_v" in t:
        raise ParamsError(f"{where}: add_bias_kv=True has no funcgrad equivalent")
    h, hd = slot.params["wq"].shape[1:]
    if "in_proj_weight" in t:
        wq, wk, wv = np.split(take("in_proj_weight"), 3, axis=0)
    else:
        wq, wk, wv = take("q_proj_weight"), take("k_proj_weight"), take("v_proj_weight")
    params: dict[str, Any] = {}
    for n, w in zip("qkv", (wq, wk, wv), strict=True):  # (h*hd, d) → (d, h, hd)
        params[f"w{n}"] = w.T.reshape(w.shape[1], h, hd)
    wo = take("out_proj.weight")  # (out, h*hd) → (h, hd, out)
    params["wo"] = wo.T.reshape(h, hd, wo.shape[0])
    if "bo" in slot.params:
        bq, bk, bv = np.split(take("in_proj_bias"), 3)
        params |= {"bq": bq.reshape(h, hd), "bk": bk.reshape(h, hd), "bv": bv.reshape(h, hd)}
        params["bo"] = take("out_proj.bias")
    return params


def _fit(values: dict[str, Any], specs: dict[str, Any], where: str) -> dict[str, Any]:
    out = {}
    for name, spec in specs.items():
        got = np.shape(values[name])
        if got != tuple(spec.shape):
            raise ShapeError(
                f"{where}: '{name}' should have shape {tuple(spec.shape)}; the PyTorch weights "
                f"give {got} after conversion (a layer of another size?)"
            )
        out[name] = jnp.asarray(values[name], dtype=spec.dtype)
    return out
