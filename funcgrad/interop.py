"""Weights in and out: parameter trees as safetensors files, PyTorch state_dicts as funcgrad parameters.

`save_safetensors`/`load_safetensors` keep a tree under dotted keys; `from_torch` converts layer by layer.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy

from funcgrad.errors import ConfigError, InputTypeError, ParamsError, ShapeError
from funcgrad.io import write_atomic
from funcgrad.nn.combinators import Repeat
from funcgrad.nn.conv import Conv
from funcgrad.nn.dense import Dense
from funcgrad.nn.embedding import Embedding
from funcgrad.nn.layer import Layer, ParamLayer, as_spec, path_str
from funcgrad.nn.mha import MultiHeadAttention
from funcgrad.nn.norm import BatchNorm, GroupNorm, LayerNorm, RMSNorm
from funcgrad.nn.recording import Recorder, recording
from funcgrad.nn.recurrent import Bidirectional, GRUCell, LSTMCell, Recurrent

__all__ = ["flatten_dotted", "from_torch", "load_safetensors", "save_safetensors", "unflatten_dotted"]  # fmt: skip

# safetensors' dtype names (its numpy reader lacks bfloat16 and float8; ml_dtypes, a JAX dependency, has them).
_DTYPES: dict[str, Any] = {
    "BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "U16": np.uint16, "I16": np.int16,
    "U32": np.uint32, "I32": np.int32, "U64": np.uint64, "I64": np.int64, "F16": np.float16,
    "BF16": ml_dtypes.bfloat16, "F32": np.float32, "F64": np.float64,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
}  # fmt: skip


# -- dotted keys ------------------------------------------------------------------------------


def flatten_dotted(tree: Any, where: str = "flatten_dotted") -> dict[str, Any]:
    """A nested dict of arrays as one flat dict keyed by dotted paths.

    Example:
      >>> import jax.numpy as jnp
      >>> from funcgrad import interop
      >>> tree = {"serial_0": {"dense_0": {"w": jnp.zeros((2, 3)), "b": jnp.zeros(3)}}}
      >>> sorted(interop.flatten_dotted(tree))
      ['serial_0.dense_0.b', 'serial_0.dense_0.w']
    """
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                if not isinstance(k, str) or not k or "." in k:
                    raise ParamsError(
                        f"{where}: key {k!r} under '{prefix or '(top)'}' must be a non-empty "
                        "string without '.', since '.' separates the levels of a dotted path"
                    )
                walk(v, f"{prefix}.{k}" if prefix else k)
        elif hasattr(node, "shape") and hasattr(node, "dtype"):
            flat[prefix] = node
        else:
            raise ParamsError(
                f"{where}: expected nested dicts of arrays; '{prefix or '(top)'}' holds a "
                f"{type(node).__name__}"
            )

    walk(tree, "")
    return flat


def unflatten_dotted(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The nested dict of a flat dict with dotted keys (the inverse of `flatten_dotted`).

    Example:
      >>> from funcgrad import interop
      >>> interop.unflatten_dotted({"a.b": 1, "a.c": 2, "d": 3})
      {'a': {'b': 1, 'c': 2}, 'd': 3}
    """
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ParamsError(f"unflatten_dotted: '{key}' nests under a leaf, '{p}'")
        node[leaf] = value
    return tree


# -- safetensors ------------------------------------------------------------------------------


def save_safetensors(path: str | os.PathLike[str], params: Any) -> Path:
    """Write a nested dict of arrays to a safetensors file under dotted keys, atomically.

    Every dtype is kept (bfloat16 included). The file is written to a temporary file,
    fsynced and renamed, so a crash leaves any previous file whole. It opens with any
    safetensors reader (``safetensors.torch.load_file``, ``safetensors.numpy`` for the
    dtypes NumPy has, Hugging Face's loaders) and with `load_safetensors`.

    Example:
      >>> import tempfile, jax, jax.numpy as jnp
      >>> from funcgrad import interop, nn
      >>> params = nn.Dense(3).init(jax.random.key(0), jnp.zeros((1, 2)))
      >>> path = interop.save_safetensors(tempfile.mkdtemp() + "/dense.safetensors", params)
      >>> jax.tree.map(jnp.shape, interop.load_safetensors(path))
      {'b': (3,), 'w': (2, 3)}
    """
    flat = flatten_dotted(params, "save_safetensors")
    arrays = {}
    for key, value in flat.items():
        if jnp.issubdtype(value.dtype, jax.dtypes.prng_key):
            raise ParamsError(
                f"save_safetensors: '{key}' is a PRNG key array; safetensors holds numbers only "
                "(store jax.random.key_data(key) instead)"
            )
        arrays[key] = np.ascontiguousarray(np.asarray(value))
    path = Path(path)
    write_atomic(path, safetensors.numpy.save(arrays))
    return path


def load_safetensors(path: str | os.PathLike[str], like: Any = None) -> Any:
    """Read a safetensors file into a nested dict of `jax.Array`, dtypes as stored.

    Args:
      path: the file.
      like: optional tree (arrays or `jax.ShapeDtypeStruct`, e.g. ``model.init``'s output or
        ``jax.eval_shape`` of it). The file must then hold exactly its paths with its shapes
        and dtypes; a mismatch raises `ParamsError` listing every missing, extra, mis-shaped
        and mis-typed path. The result has ``like``'s structure, and each leaf ``like``'s
        sharding where ``like`` holds placed arrays.

    Float64 arrays stay float64 only with ``jax_enable_x64`` on, as for any JAX array.

    Example:
      >>> import tempfile, jax, jax.numpy as jnp
      >>> from funcgrad import interop
      >>> path = tempfile.mkdtemp() + "/p.safetensors"
      >>> _ = interop.save_safetensors(path, {"dense_0": {"w": jnp.ones((2, 2), jnp.bfloat16)}})
      >>> interop.load_safetensors(path)["dense_0"]["w"].dtype
      dtype(bfloat16)
    """
    data = Path(path).read_bytes()
    try:
        entries = safetensors.deserialize(data)
    except Exception as err:  # safetensors raises its own SafetensorError
        raise ParamsError(
            f"load_safetensors: {os.fspath(path)} ({len(data)} bytes) is not a complete "
            f"safetensors file: {err}. Was it truncated, or written by something else?"
        ) from None
    flat: dict[str, np.ndarray] = {}
    for name, entry in entries:
        if entry["dtype"] not in _DTYPES:
            raise ParamsError(
                f"load_safetensors: '{name}' in {os.fspath(path)} has dtype {entry['dtype']}, "
                f"which funcgrad does not read; known: {sorted(_DTYPES)}"
            )
        raw = np.frombuffer(bytes(entry["data"]), dtype=_DTYPES[entry["dtype"]])
        flat[name] = raw.reshape(entry["shape"])
    if like is None:
        return unflatten_dotted({k: jnp.asarray(v) for k, v in sorted(flat.items())})
    want = flatten_dotted(like, "load_safetensors(like=...)")
    _check_like(flat, want, f"load_safetensors({os.fspath(path)!r})")

    def place(key_path: Any, leaf: Any) -> Any:
        value = flat[".".join(str(k.key) for k in key_path)]
        sharding = getattr(leaf, "sharding", None)
        return jax.device_put(value, sharding) if sharding is not None else jnp.asarray(value)

    return jax.tree_util.tree_map_with_path(place, like)


def _check_like(flat: Mapping[str, Any], want: Mapping[str, Any], where: str) -> None:
    missing = sorted(set(want) - set(flat))
    extra = sorted(set(flat) - set(want))
    shapes, dtypes = [], []
    for key in sorted(set(want) & set(flat)):
        exp, got = want[key], flat[key]
        if tuple(exp.shape) != tuple(got.shape):
            shapes.append(f"{key}: expected {tuple(exp.shape)}, file has {tuple(got.shape)}")
        elif jnp.dtype(exp.dtype) != jnp.dtype(got.dtype):
            dtypes.append(f"{key}: expected {jnp.dtype(exp.dtype)}, file has {got.dtype}")
    problems = [
        f"missing from the file: {missing}" if missing else "",
        f"in the file but not in `like`: {extra}" if extra else "",
        f"wrong shape: {shapes}" if shapes else "",
        f"wrong dtype: {dtypes}" if dtypes else "",
    ]
    if any(problems):
        raise ParamsError(
            f"{where}: the file does not match `like`; " + "; ".join(p for p in problems if p)
        )


# -- PyTorch state_dicts ----------------------------------------------------------------------

# Which funcgrad layers take which PyTorch modules; the k-th of a family maps to the k-th.
_FAMILY = {
    Dense: "linear", Embedding: "embedding", Conv: "conv", LayerNorm: "norm", RMSNorm: "norm",
    GroupNorm: "norm", BatchNorm: "batch_norm", MultiHeadAttention: "attention",
    LSTMCell: "lstm_cell", GRUCell: "gru_cell",
}  # fmt: skip
_TORCH_NAMES = {
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
class _Slot:
    """One funcgrad layer with parameters, at its place in the tree."""

    path: tuple[str, ...]
    layer: Layer
    params: dict[str, Any]
    state: dict[str, Any]

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
        return f"{type(self.layer).__name__} at {'.'.join(self.path) or '(top)'}"


@dataclasses.dataclass
class _Module:
    """One PyTorch module's tensors, by name relative to its prefix."""

    prefix: str
    tensors: dict[str, np.ndarray]
    family: str = "unknown"
    layer_of: tuple[str, str] | None = None  # one layer of a torch LSTM/GRU: (its prefix, k)

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
        return f"'{self.prefix or '(top)'}' ({_TORCH_NAMES[self.family]}: {names})"


class _Slots(Recorder):
    def __init__(self) -> None:
        self.found: list[tuple[Layer, tuple[str, ...], Any]] = []
        self.seen: set[tuple[str, ...]] = set()  # a shared layer runs at several places

    def enter(self, layer: Layer, path: tuple[str, ...], params: Any) -> Any:
        if isinstance(layer, Repeat):
            raise ConfigError(
                f"from_torch: nn.repeat at {path_str(path)} stacks its copies' parameters; "
                "import into the unrolled model (one layer per copy) and stack afterwards"
            )
        if isinstance(layer, (ParamLayer, Recurrent, Bidirectional)) and path not in self.seen:
            self.seen.add(path)
            self.found.append((layer, path, params))
            if isinstance(layer, Bidirectional):  # its cells are part of it, as in torch
                self.seen |= {(*path, "forward"), (*path, "backward")}


def from_torch(
    model: Layer,
    example: Any,
    state_dict: Mapping[str, Any],
    *,
    mapping: Mapping[str, str] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Parameters and model state for ``model`` from a PyTorch ``state_dict`` of the same network.

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

    Args:
      model: the funcgrad model.
      example: an example input (array or `jax.ShapeDtypeStruct`), as for ``model.init``.
      state_dict: PyTorch's ``module.state_dict()``, or NumPy arrays under the same keys
        (``safetensors.numpy.load_file`` of a PyTorch checkpoint).
      mapping: ``{torch_module_prefix: funcgrad_dotted_path}`` pairs that override the
        matching by order, e.g. ``{"encoder.fc": "serial_0.dense_2"}``; layer ``k`` of a
        ``torch.nn.LSTM`` at ``"rnn"`` is the module ``"rnn.l{k}"``.

    Returns:
      ``(params, model_state)``; ``model_state`` is ``{}`` for a model without state.

    Raises:
      ParamsError: a module or layer is left without a partner (both sides are listed by
        name), or a module lacks a tensor the layer needs or has one it has no place for.
      ShapeError: a converted weight's shape differs from the layer's (names both sides).
      ConfigError: the model holds an `nn.repeat` (stacked parameters).

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
    if not isinstance(state_dict, Mapping):
        raise InputTypeError(
            f"from_torch: expected a state_dict (a mapping of names to tensors or arrays); got "
            f"{type(state_dict).__name__}"
        )
    spec = as_spec(example, "from_torch")
    params_spec, state_spec = jax.eval_shape(model.init_with_state, jax.random.key(0), spec)
    slots = _slots(model, params_spec, state_spec, spec)
    modules = _modules(state_dict)
    pairs = _match(slots, modules, dict(mapping or {}))
    params: dict[str, Any] = {}
    state: dict[str, Any] = {}
    for module, slot in pairs:
        p, s = _convert(module, slot)
        _put(params, slot.path, p)
        if s:
            _put(state, slot.path, s)
    return params, state


def _slots(model: Layer, params: Any, state: Any, spec: Any) -> list[_Slot]:
    with recording(_Slots()) as recorder:
        jax.eval_shape(lambda p, s, v: model.apply(p, v, state=s, train=False), params, state, spec)
    slots = []
    for layer, path, p in recorder.found:
        s = state
        for k in path:
            s = s.get(k, {}) if isinstance(s, dict) else {}
        if p or s:
            slots.append(_Slot(path, layer, dict(p), dict(s)))
    return slots


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


def _modules(state_dict: Mapping[str, Any]) -> list[_Module]:
    flat = {str(k): _numpy(v, str(k)) for k, v in state_dict.items()}
    # Attention modules own their out_proj Linear: find them first, then group by prefix.
    attention = {
        k.rpartition(".")[0]
        for k in flat
        if k.rpartition(".")[2] in ("in_proj_weight", "q_proj_weight")
    }
    modules: dict[str, _Module] = {}
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
        modules.setdefault(prefix, _Module(prefix, {}, layer_of=layer_of)).tensors[name] = value
    for m in modules.values():
        m.family = _torch_family(m)
    return list(modules.values())


def _torch_family(m: _Module) -> str:
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


def _match(
    slots: list[_Slot], modules: list[_Module], mapping: dict[str, str]
) -> list[tuple[_Module, _Slot]]:
    by_prefix = {m.prefix: m for m in modules}
    by_path = {".".join(s.path): s for s in slots}
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
    queues: dict[str, list[_Slot]] = {}
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


def _resolve_ambiguous(modules: list[_Module], slots: list[_Slot]) -> None:
    """A 2-d weight without bias is an ``Embedding`` or a bias-free ``Linear``: decide by the model.

    In order against the model's embeddings and bias-free dense layers where the counts and
    shapes agree; else by shape alone; else ask for a mapping.
    """
    torch_side = [m for m in modules if m.family == "linear_or_embedding"]
    ours = [s for s in slots if s.family == "embedding" or (s.family == "linear" and "b" not in s.params)]  # fmt: skip

    def fits(shape: tuple[int, ...], slot: _Slot) -> bool:
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


def _convert(m: _Module, slot: _Slot) -> tuple[dict[str, Any], dict[str, Any]]:
    t, layer = m.tensors, slot.layer
    where = f"from_torch: PyTorch '{m.prefix or '(top)'}' → funcgrad {slot.describe()}"
    if _torch_family(m) not in (slot.family, "linear_or_embedding"):
        raise ParamsError(
            f"{where}: a {_TORCH_NAMES[m.family]} cannot fill a {type(layer).__name__}"
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


def _recurrent(m: _Module, slot: _Slot, take: Any, where: str) -> dict[str, Any]:
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


def _attention(t: dict[str, np.ndarray], slot: _Slot, take: Any, where: str) -> dict[str, Any]:
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


def _put(tree: dict[str, Any], path: tuple[str, ...], value: dict[str, Any]) -> None:
    node = tree
    for k in path:
        node = node.setdefault(k, {})
    node.update(value)
