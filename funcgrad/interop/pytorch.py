"""`from_torch`: a funcgrad model's parameters from a PyTorch model of the same network.

Pairs the funcgrad layers with the torch modules by kind and order, checks, and converts each pair.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax

from funcgrad.errors import ConfigError, InputTypeError, ParamsError, ShapeError
from funcgrad.interop.layout_hints import channels_last_hint
from funcgrad.interop.torch_hparams import check_hyperparameters, check_order
from funcgrad.interop.torch_layouts import Slot, convert
from funcgrad.interop.torch_modules import TorchModule, read_torch
from funcgrad.nn.combinators import Repeat
from funcgrad.nn.layer import Layer, ParamLayer, as_spec
from funcgrad.nn.recording import Recorder, recording
from funcgrad.nn.recurrent import Bidirectional, Recurrent
from funcgrad.paths import ROOT, describe, dotted

__all__ = ["from_torch"]


class _Slots(Recorder):
    def __init__(self) -> None:
        self.found: list[tuple[Layer, tuple[str, ...], Any, int]] = []
        self.calls: list[tuple[Layer, tuple[str, ...]]] = []  # every layer, in order
        self.seen: set[tuple[str, ...]] = set()  # a shared layer runs at several places

    def enter(self, layer: Layer, path: tuple[str, ...], params: Any) -> Any:
        if isinstance(layer, Repeat):
            raise ConfigError(
                f"from_torch: nn.repeat at {describe(path)} stacks its copies' parameters; "
                "import into the unrolled model (one layer per copy) and stack afterwards"
            )
        self.calls.append((layer, path))
        if isinstance(layer, (ParamLayer, Recurrent, Bidirectional)) and path not in self.seen:
            self.seen.add(path)
            self.found.append((layer, path, params, len(self.calls) - 1))
            if isinstance(layer, Bidirectional):  # its cells are part of it, as in torch
                self.seen |= {(*path, "forward"), (*path, "backward")}


def from_torch(
    model: Layer,
    example: Any,
    state_dict: Any,
    *,
    mapping: Mapping[str, str] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Parameters and model state for ``model`` from a PyTorch model of the same network.

    Each funcgrad layer with parameters (in the order ``apply`` calls them) takes the PyTorch
    module (in ``state_dict`` order) of the same kind at the same position within its kind:
    the k-th `nn.Dense` the k-th ``Linear``, the k-th `LayerNorm`/`RMSNorm` the k-th
    ``LayerNorm``/``RMSNorm``, and likewise for convolutions (``Conv``/``ConvTranspose``),
    ``BatchNorm``, ``Embedding`` and ``MultiheadAttention``. `GroupNorm` and `InstanceNorm`
    count as norms (their ``state_dict`` entries look like a ``LayerNorm``'s). Each layer
    ``k`` of a ``torch.nn.LSTM``/``GRU`` is one module: the k-th `recurrent` (one way) or
    `bidirectional` (``_reverse`` tensors: the backward cell) of LSTM or GRU cells, so
    ``num_layers=2`` is two funcgrad layers; ``LSTMCell``/``GRUCell`` fill bare cells.
    Layouts are converted (a ``Linear`` or recurrent weight is transposed, conv kernels go
    from OIHW to HWIO, a transposed conv's kernel is also flipped, attention's packed
    ``in_proj_weight`` is split into heads) and every shape is checked. Batch-norm running
    statistics go into the model state, unchanged (see docs/interop.md on the running variance).
    Values are cast to the dtypes ``model.init`` gives. PyTorch itself is not needed: NumPy
    arrays do.

    Pass the ``torch.nn.Module`` itself rather than its ``state_dict`` and the settings its
    weights do not show are checked too: attention heads (an 8-head ``MultiheadAttention``
    fills a 4-head `MultiHeadAttention` shape for shape, with other outputs), norm kind and
    epsilon, ``GroupNorm`` groups, ``BatchNorm`` momentum, convolution stride, dilation,
    padding and padding mode, ``Embedding(max_norm=)``, and a ``TransformerEncoderLayer``'s
    ``norm_first`` and activation (from where funcgrad's layers run). Not checked:
    ``batch_first`` (funcgrad is always batch-first: transpose a sequence-first input),
    ``is_causal``/masks (given at call time in PyTorch), dropout rates (training only), and
    activations outside a transformer layer (in PyTorch they are code, not modules).

    Args:
      model: the funcgrad model.
      example: an example input (array or `jax.ShapeDtypeStruct`), as for ``model.init``.
      state_dict: the ``torch.nn.Module`` (checks its hyper-parameters too), or its
        ``state_dict()``, or NumPy arrays under the same keys (``safetensors.numpy.load_file``
        of a PyTorch checkpoint).
      mapping: ``{torch_module_prefix: funcgrad_dotted_path}`` pairs that override the
        matching by order, e.g. ``{"encoder.fc": "serial_0.dense_2"}``; layer ``k`` of a
        ``torch.nn.LSTM`` at ``"rnn"`` is the module ``"rnn.l{k}"``.

    Returns:
      ``(params, model_state)``; ``model_state`` is ``{}`` for a model without state.

    Raises:
      ParamsError: a module or layer is left without a partner (both sides are listed by
        name), or a module lacks a tensor the layer needs or has one it has no place for.
      ShapeError: a converted weight's shape differs from the layer's (names both sides; a
        channels-first ``example`` is told to transpose).
      ConfigError: the model holds an `nn.repeat` (stacked parameters), or a torch module
        was built with other hyper-parameters than its funcgrad layer (names both values).

    Example:
      >>> import jax.numpy as jnp, numpy as np
      >>> from funcgrad import interop, nn
      >>> torch_weights = {"0.weight": np.ones((4, 2), np.float32), "0.bias": np.zeros(4, np.float32),
      ...                  "2.weight": np.ones((1, 4), np.float32), "2.bias": np.zeros(1, np.float32)}
      >>> model = nn.serial(nn.Dense(4), nn.relu, nn.Dense(1))
      >>> params, state = interop.from_torch(model, jnp.zeros((1, 2)), torch_weights)
      >>> params["dense_0"]["w"].shape, state
      ((2, 4), {})
    """
    if not isinstance(model, Layer):
        raise InputTypeError(f"from_torch: expected a funcgrad Layer; got {type(model).__name__}")
    modules = read_torch(state_dict)
    spec = as_spec(example, "from_torch")
    params_spec, state_spec = jax.eval_shape(model.init_with_state, jax.random.key(0), spec)
    slots, calls = _slots(model, params_spec, state_spec, spec)
    pairs = _match(slots, modules, dict(mapping or {}))
    check_order(pairs, calls)
    params: dict[str, Any] = {}
    state: dict[str, Any] = {}
    for module, slot in pairs:
        where = f"from_torch: PyTorch '{module.prefix or ROOT}' → funcgrad {slot.describe()}"
        hint = _channels_hint(module, slot, spec)  # before `convert` takes the tensors
        try:
            p, s = convert(module, slot, where)
        except ShapeError as err:
            if not hint:
                raise
            raise ShapeError(f"{err}. {hint}") from None
        check_hyperparameters(module, slot, where)  # once the kinds are known to agree
        _put(params, slot.path, p)
        if s:
            _put(state, slot.path, s)
    return params, state


def _slots(
    model: Layer, params: Any, state: Any, spec: Any
) -> tuple[list[Slot], list[tuple[Layer, tuple[str, ...]]]]:
    """The layers with parameters or state, and every layer call, in the order ``apply`` makes them."""
    with recording(_Slots()) as recorder:
        jax.eval_shape(lambda p, s, v: model.apply(p, v, state=s, train=False), params, state, spec)
    slots = []
    for layer, path, p, order in recorder.found:
        s = state
        for k in path:
            s = s.get(k, {}) if isinstance(s, dict) else {}
        if p or s:
            slots.append(Slot(path, layer, dict(p), dict(s), order))
    return slots, recorder.calls


def _channels_hint(module: TorchModule, slot: Slot, spec: Any) -> str:
    """Where a convolution's input channels do not fit, whether ``example`` is channels-first."""
    weight = module.tensors.get("weight")
    if slot.family != "conv" or weight is None or not isinstance(spec, jax.ShapeDtypeStruct):
        return ""
    groups = getattr(module.module, "groups", 1)
    channels = (
        weight.shape[0] if getattr(slot.layer, "transpose", False) else weight.shape[1] * groups
    )
    return channels_last_hint(spec.shape, channels)


def _match(
    slots: list[Slot], modules: list[TorchModule], mapping: dict[str, str]
) -> list[tuple[TorchModule, Slot]]:
    by_prefix = {m.prefix: m for m in modules}
    by_path = {dotted(s.path): s for s in slots}
    pairs = []
    for prefix, path in mapping.items():
        if prefix not in by_prefix:
            raise ParamsError(
                f"from_torch: mapping names PyTorch module '{prefix}', which the state_dict "
                f"lacks; its modules are {list(by_prefix)}"
            )
        if path not in by_path:
            raise ParamsError(
                f"from_torch: mapping names funcgrad layer '{path}', which the model lacks; its "
                f"layers with parameters are {list(by_path)}"
            )
        pairs.append((by_prefix[prefix], by_path[path]))
    taken_m = {id(m) for m, _ in pairs}
    taken_s = {id(s) for _, s in pairs}
    free_slots = [s for s in slots if id(s) not in taken_s]
    free = [m for m in modules if id(m) not in taken_m]
    _resolve_ambiguous(free, free_slots)
    queues: dict[str, list[Slot]] = {}
    for s in free_slots:
        queues.setdefault(s.family, []).append(s)
    left_modules = []
    for m in free:
        queue = queues.get(m.family, [])
        if queue:
            pairs.append((m, queue.pop(0)))
        else:
            left_modules.append(m)
    left_slots = [s for queue in queues.values() for s in queue]
    if left_modules or left_slots:
        raise ParamsError(
            "from_torch: the state_dict and the model do not match layer for layer (the k-th "
            "PyTorch module of a kind goes to the k-th funcgrad layer of that kind; pass "
            "mapping={torch_prefix: funcgrad_path} to pair them by hand). PyTorch modules "
            f"left over: {[m.describe() for m in left_modules] or 'none'}; funcgrad layers "
            f"left over: {[s.describe() for s in left_slots] or 'none'}"
        )
    return pairs


def _resolve_ambiguous(modules: list[TorchModule], slots: list[Slot]) -> None:
    """A 2-d weight without bias is an ``Embedding`` or a bias-free ``Linear``: decide by the model.

    In order against the model's embeddings and bias-free dense layers where the counts and
    shapes agree; else by shape alone; else ask for a mapping.
    """
    torch_side = [m for m in modules if m.family == "linear_or_embedding"]
    ours = [s for s in slots if s.family == "embedding" or (s.family == "linear" and "b" not in s.params)]  # fmt: skip

    def fits(shape: tuple[int, ...], slot: Slot) -> bool:
        if slot.family == "embedding":
            return shape == tuple(slot.params["embedding"].shape)
        return shape == tuple(slot.params["w"].shape[::-1])

    pairs = list(zip(torch_side, ours, strict=False))
    if len(torch_side) == len(ours) and all(fits(m.tensors["weight"].shape, s) for m, s in pairs):
        for m, s in pairs:
            m.family = s.family
        return
    for m in torch_side:
        shape = m.tensors["weight"].shape
        kinds = {s.family for s in ours if fits(shape, s)}
        if len(kinds) > 1:
            raise ParamsError(
                f"from_torch: PyTorch module '{m.prefix}' (a 2-d weight {list(shape)}, no bias) "
                "could be an Embedding or a bias-free Linear of this model; pair it by hand "
                "with mapping={torch_prefix: funcgrad_path}"
            )
        m.family = kinds.pop() if kinds else "linear"


def _put(tree: dict[str, Any], path: tuple[str, ...], value: dict[str, Any]) -> None:
    node = tree
    for k in path:
        node = node.setdefault(k, {})
    node.update(value)
