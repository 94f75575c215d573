"""Hugging Face checkpoints in and out: `from_hf` reads a ``save_pretrained`` directory into a
`funcgrad.models` model and its parameters, `to_hf` writes one back. Neither needs transformers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy

from funcgrad.errors import ConfigError, MissingFileError, ParamsError, ShapeError, UnknownNameError
from funcgrad.interop.safetensors_file import open_safetensors, read_tensor
from funcgrad.io import write_atomic, write_atomic_with
from funcgrad.models import GPT2, GPT2Config, Llama, LlamaConfig
from funcgrad.models.base import Pretrained
from funcgrad.paths import flatten, unflatten

__all__ = ["from_hf", "to_hf"]


class Entry(NamedTuple):
    """One funcgrad leaf and where it lives in a Hugging Face checkpoint: ``hf`` (``{i}`` for the
    layer index of a stacked leaf), how a tensor becomes the leaf and back, and, for a fused HF
    tensor (GPT-2's ``c_attn``), which of ``parts`` equal slices of its last axis it is."""

    ours: str
    hf: str
    to_ours: Callable[[Any], Any]
    to_hf: Callable[[Any], Any]
    part: int = 0
    parts: int = 1


def _same(a: Any) -> Any:
    return a


def _t(a: Any) -> Any:
    return a.T


def _llama_entries(c: LlamaConfig) -> list[Entry]:
    d, h, g, k = c.hidden_size, c.num_heads, c.kv_heads, c.head_size
    layer, att = "model.layers.{i}", "layers.attention_block.attention"

    def heads_in(n: int) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
        # torch Linear (n*k, d) <-> ours (d, n, k)
        return (lambda a: a.T.reshape(d, n, k)), (lambda a: a.reshape(d, n * k).T)

    def bias(n: int) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
        return (lambda a: a.reshape(n, k)), (lambda a: a.reshape(n * k))

    entries = [
        Entry("embed.embedding", "model.embed_tokens.weight", _same, _same),
        Entry("layers.attention_block.norm.scale", f"{layer}.input_layernorm.weight", _same, _same),
        Entry(f"{att}.wq", f"{layer}.self_attn.q_proj.weight", *heads_in(h)),
        Entry(f"{att}.wk", f"{layer}.self_attn.k_proj.weight", *heads_in(g)),
        Entry(f"{att}.wv", f"{layer}.self_attn.v_proj.weight", *heads_in(g)),
        Entry(f"{att}.wo", f"{layer}.self_attn.o_proj.weight",
              lambda a: a.T.reshape(h, k, d), lambda a: a.reshape(h * k, d).T),
        Entry("layers.mlp_block.norm.scale", f"{layer}.post_attention_layernorm.weight", _same, _same),
        Entry("layers.mlp_block.gate_up.gate.w", f"{layer}.mlp.gate_proj.weight", _t, _t),
        Entry("layers.mlp_block.gate_up.up.w", f"{layer}.mlp.up_proj.weight", _t, _t),
        Entry("layers.mlp_block.down.w", f"{layer}.mlp.down_proj.weight", _t, _t),
        Entry("norm.scale", "model.norm.weight", _same, _same),
    ]  # fmt: skip
    names = "qkvo" if c.attention_bias is True else c.attention_bias or ()
    for n in names:
        width = {"q": h, "k": g, "v": g}.get(n)
        funcs = (_same, _same) if width is None else bias(width)
        entries.append(Entry(f"{att}.b{n}", f"{layer}.self_attn.{n}_proj.bias", *funcs))
    if c.mlp_bias:
        entries += [
            Entry(f"layers.mlp_block.{p}.b", f"{layer}.mlp.{n}_proj.bias", _same, _same)
            for p, n in (("gate_up.gate", "gate"), ("gate_up.up", "up"), ("down", "down"))
        ]
    if not c.tie_embeddings:
        entries.append(Entry("lm_head.w", "lm_head.weight", _t, _t))
    return entries


def _gpt2_entries(c: GPT2Config) -> list[Entry]:
    d, h = c.hidden_size, c.num_heads
    k = d // h
    layer, att = "transformer.h.{i}", "h.attention_block.attn"
    entries = [
        Entry("wte.embedding", "transformer.wte.weight", _same, _same),
        Entry("wpe.embedding", "transformer.wpe.weight", _same, _same),
        Entry("ln_f.scale", "transformer.ln_f.weight", _same, _same),
        Entry("ln_f.bias", "transformer.ln_f.bias", _same, _same),
        Entry(f"{att}.wo", f"{layer}.attn.c_proj.weight",
              lambda a: a.reshape(h, k, d), lambda a: a.reshape(d, d)),
        Entry(f"{att}.bo", f"{layer}.attn.c_proj.bias", _same, _same),
    ]  # fmt: skip
    for i, n in enumerate("qkv"):  # Conv1D (in, 3 * out): q, k, v side by side
        entries += [
            Entry(f"{att}.w{n}", f"{layer}.attn.c_attn.weight",
                  lambda a: a.reshape(d, h, k), lambda a: a.reshape(d, d), i, 3),
            Entry(f"{att}.b{n}", f"{layer}.attn.c_attn.bias",
                  lambda a: a.reshape(h, k), lambda a: a.reshape(d), i, 3),
        ]  # fmt: skip
    for block, hf in (("attention_block.ln_1", "ln_1"), ("mlp_block.ln_2", "ln_2")):
        entries += [
            Entry(f"h.{block}.scale", f"{layer}.{hf}.weight", _same, _same),
            Entry(f"h.{block}.bias", f"{layer}.{hf}.bias", _same, _same),
        ]
    for n in ("c_fc", "c_proj"):  # Conv1D weights are (in, out) already
        entries += [
            Entry(f"h.mlp_block.{n}.w", f"{layer}.mlp.{n}.weight", _same, _same),
            Entry(f"h.mlp_block.{n}.b", f"{layer}.mlp.{n}.bias", _same, _same),
        ]
    if not c.tie_embeddings:
        entries.append(Entry("lm_head.w", "lm_head.weight", _t, _t))
    return entries


# Buffers some checkpoints hold that are not weights (GPT-2's causal masks, RoPE's frequencies).
IGNORED = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")


def _family(config: dict[str, Any]) -> tuple[Pretrained, list[Entry], int]:
    """The model, its entries and its number of layers, for a config.json dict."""
    kind = config.get("model_type")
    if kind == "gpt2":
        g = GPT2Config.from_hf_config(config)
        return GPT2(g), _gpt2_entries(g), g.num_layers
    if kind in ("llama", "mistral", "qwen2"):
        c = LlamaConfig.from_hf_config(config)
        return Llama(c), _llama_entries(c), c.num_layers
    raise UnknownNameError(
        f"from_hf: model_type {kind!r} is not supported; supported: gpt2, llama, mistral, qwen2"
    )


def _entries(model: Pretrained) -> tuple[list[Entry], int]:
    if isinstance(model, GPT2):
        return _gpt2_entries(model.config), model.config.num_layers
    if isinstance(model, Llama):
        return _llama_entries(model.config), model.config.num_layers
    raise ConfigError(
        f"to_hf: expects a funcgrad.models model (Llama or GPT2); got {type(model).__name__}"
    )


def _shapes(model: Pretrained) -> dict[str, jax.ShapeDtypeStruct]:
    ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    return flatten(jax.eval_shape(model.init, jax.random.key(0), ids), "from_hf")


@contextmanager
def _tensors(directory: Path) -> Iterator[dict[str, tuple[Any, Path]]]:
    """``{HF key: (open safetensors file, its path)}`` over one file or the index's shards."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
    elif (directory / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise MissingFileError(
            f"from_hf: {directory} has neither model.safetensors nor model.safetensors.index.json "
            "(only safetensors checkpoints are read; save with safe_serialization=True)"
        )
    for name in files:
        if not (directory / name).is_file():
            raise MissingFileError(
                f"from_hf: the shard {name} listed in {index.name} is missing from {directory}"
            )
    with ExitStack() as stack:
        found: dict[str, tuple[Any, Path]] = {}
        for name in files:
            path = directory / name
            file = stack.enter_context(open_safetensors(path, "from_hf"))
            found |= {k: (file, path) for k in file.keys()}
        yield found


def from_hf(path: str | os.PathLike[str], *, dtype: Any = None) -> tuple[Pretrained, Any]:
    """A Hugging Face checkpoint directory as ``(model, params)``.

    Reads ``config.json`` (the Hub's layout or transformers 5's) and ``model.safetensors`` or
    the shards of ``model.safetensors.index.json``, one tensor at a time, memory-mapped.
    Families: ``llama`` (Llama 2/3 with Llama-3 RoPE scaling, Mistral without a sliding
    window, Qwen2 with its q/k/v biases) and ``gpt2``. ``model.apply(params, ids)`` gives
    logits ``(batch, length, vocab)``; `funcgrad.nn.generate` decodes with its caches.

    Args:
      path: the directory ``save_pretrained`` wrote (or a Hub snapshot).
      dtype: cast every weight to this dtype; default: as stored (float32, bfloat16, ...).

    Raises:
      MissingFileError: no directory, no config.json, no weights, or a shard of the index missing.
      UnknownNameError: a model_type or RoPE scaling type that is not supported.
      ConfigError: an unsupported option (sliding-window attention, ...).
      ShapeError: a weight whose shape does not fit the config (names the key and both shapes).
      ParamsError: a weight missing, or one the model has no place for.

    Example:
      >>> import tempfile, jax, jax.numpy as jnp
      >>> from funcgrad import interop, models
      >>> model = models.Llama(models.LlamaConfig(64, 32, 48, num_layers=2, num_heads=4))
      >>> params = model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
      >>> folder = interop.to_hf(model, params, tempfile.mkdtemp())
      >>> loaded, same = interop.from_hf(folder)
      >>> loaded == model, bool(jnp.all(same["norm"]["scale"] == params["norm"]["scale"]))
      (True, True)
    """
    directory = Path(path)
    if not (directory / "config.json").is_file():
        what = "config.json in" if directory.is_dir() else "directory"
        raise MissingFileError(f"from_hf: no {what} {os.fspath(directory)}")
    model, entries, layers = _family(json.loads((directory / "config.json").read_text()))
    expected = _shapes(model)
    flat: dict[str, Any] = {}
    with _tensors(directory) as tensors:
        used: set[str] = set()

        def read(key: str, shape: tuple[int, ...]) -> np.ndarray:
            name = key if key in tensors else key.split(".", 1)[1]  # a base model: no prefix
            if name not in tensors:
                raise ParamsError(f"from_hf: {directory} lacks the weight '{key}'")
            file, where = tensors[name]
            got = tuple(file.get_slice(name).get_shape())
            if got != shape:
                raise ShapeError(
                    f"from_hf: '{name}' in {where.name} has shape {got}; the config needs {shape}"
                )
            used.add(name)
            return read_tensor(file, name, where)

        for e in entries:
            want = expected[e.ours]
            stacked = "{i}" in e.hf
            one = jax.ShapeDtypeStruct(want.shape[1:] if stacked else want.shape, want.dtype)
            hf_shape = list(jax.eval_shape(e.to_hf, one).shape)
            hf_shape[-1] *= e.parts
            keys = [e.hf.format(i=i) for i in range(layers)] if stacked else [e.hf]
            pieces = [
                e.to_ours(np.split(read(k, tuple(hf_shape)), e.parts, axis=-1)[e.part])
                for k in keys
            ]
            leaf = np.stack(pieces) if stacked else pieces[0]
            flat[e.ours] = jax.device_put(leaf if dtype is None else leaf.astype(dtype))
        tied = getattr(model.config, "tie_embeddings", False)
        extra = sorted(
            k for k in set(tensors) - used
            if not k.endswith(IGNORED) and not (tied and k == "lm_head.weight")
        )  # fmt: skip
    if extra:
        raise ParamsError(
            f"from_hf: {directory} holds weights the {type(model).__name__} model has no place "
            f"for: {extra[:5]}{' ...' if len(extra) > 5 else ''}"
        )
    return model, unflatten(flat, "from_hf")


def to_hf(model: Pretrained, params: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` and ``params`` as a directory that ``transformers``' ``from_pretrained`` loads.

    ``config.json`` (the model's ``config.to_hf_config()``, rope settings in the Hub's layout)
    and one ``model.safetensors``, each written atomically; weights keep their dtype. The
    directory is made if needed; returns it.

    Example:
      >>> import tempfile, jax, jax.numpy as jnp
      >>> from funcgrad import interop, models
      >>> model = models.GPT2(models.GPT2Config(64, 32, num_layers=1, num_heads=4))
      >>> params = model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
      >>> sorted(p.name for p in interop.to_hf(model, params, tempfile.mkdtemp()).iterdir())
      ['config.json', 'model.safetensors']
    """
    entries, layers = _entries(model)
    flat = flatten(params, "to_hf")
    missing = sorted({e.ours for e in entries} - set(flat))
    if missing:
        raise ParamsError(f"to_hf: params lack {missing[:5]} (made for another model?)")
    parts: dict[str, dict[int, np.ndarray]] = {}
    for e in entries:
        leaf = np.asarray(flat[e.ours])
        if "{i}" in e.hf:
            for i in range(layers):
                parts.setdefault(e.hf.format(i=i), {})[e.part] = np.asarray(e.to_hf(leaf[i]))
        else:
            parts.setdefault(e.hf, {})[e.part] = np.asarray(e.to_hf(leaf))
    tensors = {
        k: np.ascontiguousarray(np.concatenate([p[i] for i in sorted(p)], axis=-1))
        for k, p in parts.items()
    }
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config.to_hf_config()
    config["torch_dtype"] = str(np.asarray(flat[entries[0].ours]).dtype)
    write_atomic(directory / "config.json", json.dumps(config, indent=2).encode())
    write_atomic_with(
        directory / "model.safetensors",
        lambda tmp: safetensors.numpy.save_file(tensors, tmp, metadata={"format": "pt"}),
    )
    return directory
