"""Ship a trained model without its Python code: the forward pass as serialized StableHLO (`jax.export`).

`save` writes a folder (function, weights as safetensors, a JSON description); `load` gives back ``f(x)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcgrad.errors import ConfigError, DTypeError, InputTypeError, MissingFileError, ShapeError
from funcgrad.interop import load_safetensors, save_safetensors
from funcgrad.io import write_atomic
from funcgrad.nn.layer import Layer, as_spec
from funcgrad.paths import flatten, unflatten

__all__ = ["ExportedModel", "load", "main", "save"]

FUNCTION, PARAMS, STATE, INFO = "forward.jaxexport", "params.safetensors", "state.safetensors", "export.json"  # fmt: skip
BATCH = "batch"


def save(
    path: str | os.PathLike[str],
    model: Layer,
    params: Any,
    example: Any,
    *,
    batch_polymorphic: bool = True,
    platforms: Sequence[str] | None = None,
    model_state: Any = None,
) -> Path:
    """Export ``model``'s forward pass (evaluation mode) to the folder ``path``.

    The folder holds four files:

    - ``forward.jaxexport``: a serialized `jax.export.Exported` (StableHLO) of
      ``forward(params, state, x)``, with a symbolic batch size if ``batch_polymorphic``;
    - ``params.safetensors`` and ``state.safetensors``: the weights and the model state
      (batch-norm statistics; empty for stateless models) under dotted keys, as
      `funcgrad.interop.save_safetensors` writes them;
    - ``export.json``: input and output shapes and dtypes, platforms, funcgrad and jax versions.

    The weights are inputs of the exported function, not constants baked into it: the
    function file stays small, the weights stay readable by any safetensors tool, and new
    weights for the same architecture need no new export. Each file is written atomically,
    ``export.json`` last.

    Args:
      path: the folder to write (created if missing; files of an earlier export are replaced).
      model: the funcgrad model.
      params: its parameters.
      example: one input (array or `jax.ShapeDtypeStruct`), batch first; its batch size is
        ignored when ``batch_polymorphic``.
      batch_polymorphic: export for any batch size (else for ``example``'s shape only).
      platforms: where the file will run, e.g. ``("cpu", "cuda")``; default the current backend.
      model_state: the state for models with `nn.BatchNorm` (its running statistics).

    Returns:
      The folder.

    Example:
      >>> import tempfile, jax, jax.numpy as jnp
      >>> from funcgrad import export, nn
      >>> model = nn.serial(nn.Dense(8), nn.relu, nn.Dense(2))
      >>> params = model.init(jax.random.key(0), jnp.zeros((1, 4)))
      >>> folder = export.save(tempfile.mkdtemp(), model, params, jnp.zeros((1, 4)))
      >>> f = export.load(folder)
      >>> f(jnp.ones((5, 4))).shape
      (5, 2)
    """
    if not isinstance(model, Layer):
        raise InputTypeError(f"export.save: expected a funcgrad Layer; got {type(model).__name__}")
    spec = as_spec(example, "export.save")
    if not isinstance(spec, jax.ShapeDtypeStruct):
        raise InputTypeError(
            "export.save: expected one example array (the model's input); got a "
            f"{type(example).__name__} of several"
        )
    if batch_polymorphic:
        if spec.ndim < 1:
            raise ShapeError("export.save: batch_polymorphic needs a batch axis; got a scalar")
        (batch,) = jax.export.symbolic_shape(BATCH)
        spec = jax.ShapeDtypeStruct((batch, *spec.shape[1:]), spec.dtype)
    state = {} if model_state is None else model_state
    flat_params = flatten(params, "export.save(params)")
    flat_state = flatten(state, "export.save(model_state)")

    def forward(p: dict[str, Any], s: dict[str, Any], x: Any) -> Any:
        if model_state is None:
            return model.apply(unflatten(p), x)
        return model.apply(unflatten(p), x, state=unflatten(s), train=False)[0]

    exported = jax.export.export(jax.jit(forward), platforms=platforms)(
        _specs(flat_params), _specs(flat_state), spec
    )
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / FUNCTION, bytes(exported.serialize()))
    save_safetensors(folder / PARAMS, params)
    save_safetensors(folder / STATE, state)
    info = {
        "format": "funcgrad.export/1",
        "call": "forward(params, state, x)",
        "input": _aval(exported.in_avals[-1]),
        "outputs": [_aval(a) for a in exported.out_avals],
        "batch_polymorphic": batch_polymorphic,
        "platforms": list(exported.platforms),
        "files": {"function": FUNCTION, "params": PARAMS, "state": STATE},
        "funcgrad_version": _version(),
        "jax_version": jax.__version__,
    }
    write_atomic(folder / INFO, (json.dumps(info, indent=2) + "\n").encode())
    return folder


def _specs(flat: dict[str, Any]) -> dict[str, jax.ShapeDtypeStruct]:
    return {k: jax.ShapeDtypeStruct(jnp.shape(v), v.dtype) for k, v in flat.items()}


def _aval(aval: Any) -> dict[str, Any]:
    shape = [d if isinstance(d, int) else str(d) for d in aval.shape]
    return {"shape": shape, "dtype": str(jnp.dtype(aval.dtype))}


@dataclasses.dataclass(frozen=True)
class ExportedModel:
    """An exported model loaded back: call it on a batch, ``f(x)``. Made by `load`."""

    exported: jax.export.Exported
    params: dict[str, Any]
    state: dict[str, Any]
    info: dict[str, Any]
    path: Path
    _run: Any = dataclasses.field(init=False, repr=False, compare=False)

    def __call__(self, x: Any) -> Any:
        """The model's output for ``x``, after checking ``x`` against what was exported."""
        if not (hasattr(x, "shape") and hasattr(x, "dtype")):
            x = np.asarray(x)
        want = self.info["input"]
        text = _shape_text(want["dtype"], want["shape"])
        if jnp.dtype(x.dtype) != jnp.dtype(want["dtype"]):
            raise DTypeError(
                f"exported model {self.path}: expects input {text}; got dtype {x.dtype} "
                f"(shape {tuple(x.shape)}); convert with x.astype('{want['dtype']}')"
            )
        fits = len(x.shape) == len(want["shape"]) and all(
            isinstance(w, str) or w == d for w, d in zip(want["shape"], x.shape, strict=True)
        )
        if not fits:
            batch = " (any batch size)" if self.info["batch_polymorphic"] else ""
            raise ShapeError(
                f"exported model {self.path}: expects input {text}{batch}; got shape "
                f"{tuple(x.shape)}"
            )
        return self._run(self.params, self.state, x)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_run", jax.jit(self.exported.call))


def _shape_text(dtype: str, shape: Sequence[Any]) -> str:
    return f"{dtype}[{', '.join(str(d) for d in shape)}]"


def load(path: str | os.PathLike[str]) -> ExportedModel:
    """Load a folder `save` wrote: a callable ``f(x)`` that needs neither the model's code nor `nn`.

    It runs on any batch size (for a batch-polymorphic export) on the platforms exported for,
    and checks the input's shape and dtype first. Its output equals ``jax.jit(model.apply)``
    bit for bit on the same platform.

    To load without funcgrad (``jax`` and ``safetensors`` alone)::

        exported = jax.export.deserialize(open(f"{path}/forward.jaxexport", "rb").read())
        params = safetensors.flax.load_file(f"{path}/params.safetensors")
        state = safetensors.flax.load_file(f"{path}/state.safetensors")
        y = exported.call(params, state, x)

    Example:
      >>> import tempfile, jax, jax.numpy as jnp
      >>> from funcgrad import export, nn
      >>> model, x = nn.Dense(3), jnp.zeros((1, 2), jnp.float32)
      >>> f = export.load(export.save(tempfile.mkdtemp(), model, model.init(jax.random.key(0), x), x))
      >>> f.info["input"], f.info["outputs"]
      ({'shape': ['batch', 2], 'dtype': 'float32'}, [{'shape': ['batch', 3], 'dtype': 'float32'}])
    """
    folder = Path(path)
    if not (folder / INFO).is_file():
        raise MissingFileError(
            f"export.load: {folder} is not an exported model (no {INFO}; export.save writes it last)"
        )
    info = json.loads((folder / INFO).read_text())
    files = info["files"]
    exported = jax.export.deserialize(bytearray((folder / files["function"]).read_bytes()))
    params = flatten(load_safetensors(folder / files["params"]))
    state = flatten(load_safetensors(folder / files["state"]))
    return ExportedModel(exported, params, state, info, folder)


# -- command line ---------------------------------------------------------------------------

_USAGE = """examples:
  python -m funcgrad export mymodels.py:model --input f32[1,64] --params weights.safetensors --out exported/
  python -m funcgrad export mymodels.py:model --input f32[1,8,8,1] --platform cpu --platform cuda --out exported/
"""


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m funcgrad export MODULE:NAME``; returns the exit status (0 on success, 2 on bad input)."""
    from funcgrad.inspect.cli import (
        load_target,
        parse_spec,
    )  # the one way `python -m funcgrad` names targets

    parser = argparse.ArgumentParser(
        prog="python -m funcgrad export",
        description="Export the model MODULE:NAME (a funcgrad Layer) to a folder that "
        "funcgrad.export.load, or jax and safetensors alone, can run.",
        epilog=_USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("target", metavar="MODULE:NAME")
    parser.add_argument("--input", required=True, help="the input's shape, e.g. f32[1,64]")
    parser.add_argument("--params", help="a safetensors file of the parameters (default: init with key 0)")  # fmt: skip
    parser.add_argument("--state", help="a safetensors file of the model state (batch norm)")
    parser.add_argument("--out", required=True, help="the folder to write")
    parser.add_argument("--platform", action="append", help="cpu, cuda, rocm or tpu (repeatable)")
    parser.add_argument("--fixed-batch", action="store_true", help="export for --input's batch size only")  # fmt: skip
    opts = parser.parse_args(argv)
    try:
        _, model = load_target(opts.target)
        if not isinstance(model, Layer):
            raise InputTypeError(f"{opts.target} is a {type(model).__name__}, not a funcgrad Layer")
        x = parse_spec(opts.input)
        params_like, state_like = jax.eval_shape(model.init_with_state, jax.random.key(0), x)
        if opts.params:
            params = load_safetensors(opts.params, like=params_like)
        else:
            params = model.init(jax.random.key(0), x)
        state = load_safetensors(opts.state, like=state_like) if opts.state else None
        if state is None and state_like:
            state = model.init_state(x)
        folder = save(
            opts.out, model, params, x, batch_polymorphic=not opts.fixed_batch,
            platforms=opts.platform, model_state=state,
        )  # fmt: skip
    except (ValueError, TypeError, LookupError, ImportError, OSError, ConfigError) as err:
        print(f"python -m funcgrad export: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    info = json.loads((folder / INFO).read_text())
    outs = ", ".join(_shape_text(o["dtype"], o["shape"]) for o in info["outputs"])
    inp = info["input"]
    print(f"wrote {folder}: {_shape_text(inp['dtype'], inp['shape'])} -> {outs} on {', '.join(info['platforms'])}")  # fmt: skip
    return 0


def _version() -> str:
    """funcgrad's installed version (read from its metadata: this module may not import the root)."""
    try:
        return importlib.metadata.version("funcgrad")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"
