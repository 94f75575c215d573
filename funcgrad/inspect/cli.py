"""``python -m funcgrad``: a model's graph, parameter table or cost from the command line.

Each command names a function as ``MODULE:NAME`` (a dotted module or a ``.py`` file) and its example arguments.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp

from funcgrad.errors import ConfigError, InputTypeError, MissingFileError, UnknownNameError
from funcgrad.inspect.cost import cost
from funcgrad.inspect.graph import graph
from funcgrad.inspect.summary import summary
from funcgrad.nn.layer import Layer

_USAGE = """examples:
  python -m funcgrad graph examples/see_the_graph.py:seed2_loss --args SEED2_ARGS --backward --out g.svg
  python -m funcgrad graph jax.numpy:tanh --arg f32[8,16] --depth 1
  python -m funcgrad summary examples/seed1_torch_chain.py:chain --input f64[1,2]
  python -m funcgrad cost jax.numpy:matmul --arg f32[128,784] --arg f32[784,512]
"""


def main(argv: Sequence[str] | None = None, *, elsewhere: Mapping[str, str] | None = None) -> int:
    """Run one command; returns the exit status (0 on success, 2 on bad input).

    ``elsewhere`` names commands that ``python -m funcgrad`` runs itself (``export``), with
    their one-line help: ``--help`` lists them beside this module's own.
    """
    parser = argparse.ArgumentParser(
        prog="python -m funcgrad",
        description="See a computation: graph, parameter table or cost of a function"
        + (f"; also {', '.join(elsewhere)}." if elsewhere else "."),
        epilog=_USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("graph", "draw the computation graph of MODULE:FUNCTION"),
        ("cost", "XLA's FLOPs, bytes and memory of MODULE:FUNCTION, compiled"),
        ("summary", "the parameter table of the model MODULE:MODEL"),
    ):
        cmd = sub.add_parser(name, help=text, description=text, epilog=_USAGE,
                             formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
        cmd.add_argument("target", metavar="MODULE:NAME")
        if name == "summary":
            cmd.add_argument(
                "--input",
                required=True,
                help="example input: a shape like f32[1,784], or an expression",
            )
            cmd.add_argument("--params", help="expression for the parameters (default: model.init with key 0)")  # fmt: skip
        else:
            cmd.add_argument("--args", help="Python expression, evaluated in the module, giving the argument tuple")  # fmt: skip
            cmd.add_argument("--arg", action="append", default=[], help="one array argument by shape, e.g. f32[4,3] (repeatable)")  # fmt: skip
        if name == "graph":
            cmd.add_argument(
                "--backward", action="store_true", help="graph the gradient computation"
            )
            cmd.add_argument("--argnums", type=int, nargs="+", default=[0], help="arguments to differentiate (default 0)")  # fmt: skip
            cmd.add_argument(
                "--depth", type=int, default=0, help="levels of sub-computations to expand"
            )
            cmd.add_argument(
                "--out", help="write .svg, .png, .pdf, .dot or .txt instead of printing text"
            )
    for name, text in (elsewhere or {}).items():
        sub.add_parser(name, help=text, add_help=False)
    opts = parser.parse_args(argv)
    if opts.command in (elsewhere or {}):
        print(f"run `python -m funcgrad {opts.command} --help`", file=sys.stderr)
        return 2
    try:
        module, obj = load_target(opts.target)
        if opts.command == "summary":
            if not isinstance(obj, Layer):
                raise InputTypeError(
                    f"{opts.target} is a {type(obj).__name__}, not a funcgrad Layer"
                )
            x = _value(opts.input, module)
            params = (
                _value(opts.params, module)
                if opts.params
                else jax.eval_shape(obj.init, jax.random.key(0), x)
            )
            print(summary(obj, params, x))
            return 0
        args = _arguments(opts, module)
        if opts.command == "cost":
            print(cost(obj, *args))
            return 0
        g = graph(obj, *args, backward=opts.backward, argnums=tuple(opts.argnums), depth=opts.depth)
        if opts.out:
            print(f"wrote {g.save(opts.out)}: {len(g.nodes)} nodes, {len(g.edges)} edges")
        else:
            print(g.to_text())
    except (ValueError, TypeError, LookupError, ImportError, RuntimeError, SyntaxError,
            NameError, OSError) as err:  # fmt: skip
        print(f"python -m funcgrad {opts.command}: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    return 0


def load_target(target: str) -> tuple[ModuleType, Any]:
    """The module and the object a ``MODULE:NAME`` target names (MODULE dotted, or a ``.py`` file).

    Example:
      >>> load_target("funcgrad.nn:relu")[1].kind
      'relu'
    """
    module_name, sep, attr = target.rpartition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(
            f"expected MODULE:NAME (like mypkg.model:loss or train.py:loss); got {target!r}"
        )
    if module_name.endswith(".py"):
        path = Path(module_name).resolve()
        if not path.is_file():
            raise MissingFileError(f"no such file: {module_name}")
        sys.path.insert(0, str(path.parent))
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise UnknownNameError(f"module {module_name} has no attribute {attr!r}") from None
    return module, obj


def _arguments(opts: argparse.Namespace, module: ModuleType) -> tuple[Any, ...]:
    if opts.args and opts.arg:
        raise ConfigError("give the arguments either with --args or with --arg, not both")
    if opts.args:
        value = _value(opts.args, module)
        return value if isinstance(value, tuple) else (value,)
    if not opts.arg:
        raise ConfigError("the function needs example arguments: --args EXPR or --arg f32[4,3]")
    return tuple(parse_spec(text) for text in opts.arg)


def _value(text: str, module: ModuleType) -> Any:
    if re.fullmatch(r"\w+\[[\d, ]*\]", text.strip()):
        return parse_spec(text)
    return eval(text, vars(module))  # the user's own expression, in the user's own module


def parse_spec(text: str) -> jax.ShapeDtypeStruct:
    """An array spec written as XLA writes it, like ``f32[4,3]``.

    Example:
      >>> parse_spec("bf16[2, 8]")
      ShapeDtypeStruct(shape=(2, 8), dtype=bfloat16)
    """
    m = re.fullmatch(r"(\w+)\[([\d, ]*)\]", text.strip())
    if m is None:
        raise ConfigError(f"expected an array shape like f32[4,3]; got {text!r}")
    names = {"f16": "float16", "bf16": "bfloat16", "f32": "float32", "f64": "float64",
             "i8": "int8", "i32": "int32", "i64": "int64", "u8": "uint8", "bool": "bool"}  # fmt: skip
    dtype = names.get(m.group(1), m.group(1))
    try:
        dt = jnp.dtype(dtype)
    except TypeError:
        raise ConfigError(
            f"unknown dtype {m.group(1)!r} in {text!r}; use f32, f64, bf16, i32, ..."
        ) from None
    shape = tuple(int(d) for d in m.group(2).replace(" ", "").split(",") if d)
    return jax.ShapeDtypeStruct(shape, dt)
