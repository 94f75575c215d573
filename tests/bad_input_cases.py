"""The bad-input battery as one table: each wrong call, the funcgrad error it raises, the builtin a
user's ``except`` catches it by, and what the message says.

tests/test_bad_input.py checks each message; tests/test_error_family.py checks each error's
family. Calls are built lazily (``cases()``), so no array is made at import time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax

import funcgrad as fg
from funcgrad import errors, losses, nn

F = jnp.float32


@dataclass(frozen=True)
class Case:
    """``call()`` raises ``error``, a ``builtin`` too, with a message matching ``match``."""

    call: Callable[[], object]
    error: type[errors.FuncgradError]
    builtin: type[Exception]
    match: str


def key() -> jax.Array:
    return jax.random.key(0)


def layers() -> dict[str, tuple[nn.Layer, jax.Array]]:
    """name -> (layer, a good input)."""
    return {
        "Dense": (nn.Dense(3), jnp.ones((2, 4), F)),
        "Scale": (nn.Scale(), jnp.ones((2, 4), F)),
        "Conv": (nn.Conv(3, (3, 3)), jnp.ones((2, 5, 5, 2), F)),
        "ConvTranspose": (nn.ConvTranspose(3, (2, 2)), jnp.ones((2, 5, 5, 2), F)),
        "LayerNorm": (nn.LayerNorm(), jnp.ones((2, 4), F)),
        "RMSNorm": (nn.RMSNorm(), jnp.ones((2, 4), F)),
        "MultiHeadAttention": (nn.MultiHeadAttention(2), jnp.ones((2, 3, 4), F)),
        "GroupNorm": (nn.GroupNorm(2), jnp.ones((2, 3, 4), F)),
        "InstanceNorm": (nn.InstanceNorm(), jnp.ones((2, 3, 4), F)),
        "LSTMCell": (nn.recurrent(nn.LSTMCell(3)), jnp.ones((2, 3, 4), F)),
        "GRUCell": (nn.recurrent(nn.GRUCell(3), reverse=True), jnp.ones((2, 3, 4), F)),
    }


def wrong_rank() -> dict[str, tuple[nn.Layer, jax.Array]]:
    """name -> (layer, an input of the wrong rank)."""
    ranked = {k: v[0] for k, v in layers().items()}
    ranked |= {
        "max_pool": nn.max_pool((2, 2)),
        "Flatten": nn.Flatten(),
        "Reshape": nn.Reshape((-1,)),
        "recurrent": nn.recurrent(nn.LSTMCell(3)),
        "bidirectional": nn.bidirectional(nn.GRUCell(2), nn.GRUCell(2)),
        "adaptive_avg_pool": nn.adaptive_avg_pool((2, 2)),
    }
    inputs = {
        "Dense": jnp.ones((), F),
        "Conv": jnp.ones((5, 5, 2), F),
        "ConvTranspose": jnp.ones((2, 5, 2), F),
        "LayerNorm": jnp.ones((), F),
        "RMSNorm": jnp.ones((), F),
        "MultiHeadAttention": jnp.ones((3, 4), F),
        "max_pool": jnp.ones((4, 4), F),
        "Flatten": jnp.ones((), F),
        "Reshape": jnp.ones((), F),
        "GroupNorm": jnp.ones((4,), F),
        "InstanceNorm": jnp.ones((2, 4), F),
        "recurrent": jnp.ones((2, 4), F),
        "bidirectional": jnp.ones((2, 3, 4, 1), F),
        "adaptive_avg_pool": jnp.ones((4, 4), F),
    }
    return {name: (ranked[name], x) for name, x in inputs.items()}


def _named(layer_name: str) -> str:
    return rf"{layer_name}|{layer_name.lower()}"


def _layer_cases() -> dict[str, Case]:
    out: dict[str, Case] = {}
    for name, (layer, x) in wrong_rank().items():
        out[f"wrong_rank-{name}"] = Case(
            lambda layer=layer, x=x: layer.init(key(), x),
            errors.ShapeError, ValueError, _named(name),
        )  # fmt: skip
    for name, (layer, x) in layers().items():
        model = nn.serial(layer)

        def wider(model: nn.Layer = model, x: jax.Array = x) -> object:
            return model.apply(model.init(key(), x), jnp.concatenate([x, x], axis=-1))

        out[f"wrong_trailing_size-{name}"] = Case(
            wider, errors.ParamsError, ValueError, rf"{name} at \w+_0: .*should have shape"
        )  # fmt: skip
        out[f"integer_input-{name}"] = Case(
            lambda layer=layer, x=x: layer.init(key(), x.astype(jnp.int32)),
            errors.DTypeError, TypeError, rf"{name}.*floating-point.*int32",
        )  # fmt: skip
        for bad, pattern in _mismatched_params(name, model, x).items():
            out[f"mismatched_params-{name}-{bad}"] = Case(
                pattern[0], errors.ParamsError, ValueError, pattern[1]
            )
    return out


def _mismatched_params(
    name: str, model: nn.Layer, x: jax.Array
) -> dict[str, tuple[Callable[[], object], str]]:
    """A parameter tree with a leaf missing, one too many, one misshapen, a layer too many."""

    def bad_tree(how: str) -> object:
        params = model.init(key(), x)
        top = next(iter(params))
        inner = params[top]
        first = sorted(inner)[0]
        if how == "missing":
            return {top: {k: v for k, v in inner.items() if k != first}}
        if how == "extra":
            return {top: {**inner, "zz": jnp.ones(1)}}
        if how == "reshaped":
            return {top: {**inner, first: jnp.ones((1, *inner[first].shape))}}
        return {**params, "other_9": {}}

    patterns = {  # the first leaf's name is known only after init: \w+ stands for it
        "missing": rf"{name} at \w+_0: .*missing \['\w+'\]",
        "extra": rf"{name} at \w+_0: .*unexpected \['zz'\]",
        "reshaped": rf"{name} at \w+_0: .*'\w+' should have shape",
        "extra_layer": "unexpected parameter key",
    }
    return {
        how: (lambda how=how: model.apply(bad_tree(how), x), pattern)
        for how, pattern in patterns.items()
    }


def _function_cases() -> dict[str, Case]:
    out: dict[str, Case] = {}
    functions = {
        "log1pexp": fg.log1pexp, "log_sigmoid": fg.log_sigmoid, "sigmoid": fg.sigmoid,
        "log1mexp": fg.log1mexp, "logsumexp": fg.logsumexp, "softmax": fg.softmax,
        "log_softmax": fg.log_softmax, "safe_norm": fg.safe_norm,
        "logaddexp": lambda x: fg.logaddexp(x, x), "xlogy": lambda x: fg.xlogy(x, x),
        "max_pool": nn.max_pool((1,)), "clip_gradient": lambda x: fg.clip_gradient(x, 0, 1),
    }  # fmt: skip
    for name, fn in functions.items():
        out[f"integer_input_to_functions-{name}"] = Case(
            lambda fn=fn: fn(jnp.ones((1, 3, 1), jnp.int32)),
            errors.DTypeError, TypeError, "floating-point",
        )  # fmt: skip
    for loss in (losses.mse, losses.squared_error, losses.huber,
                 losses.sigmoid_binary_cross_entropy):  # fmt: skip
        out[f"empty_batch_to_a_loss-{loss.__name__}"] = Case(
            lambda loss=loss: loss(jnp.zeros((0, 2)), jnp.zeros((0, 2))),
            errors.ShapeError, ValueError, "batch is empty",
        )  # fmt: skip
    out["empty_batch_to_cross_entropy"] = Case(
        lambda: losses.softmax_cross_entropy(jnp.zeros((0, 3)), jnp.zeros((0,), jnp.int32)),
        errors.ShapeError, ValueError, "softmax_cross_entropy: the batch is empty",
    )  # fmt: skip
    out["params_that_are_not_a_dict"] = Case(
        lambda: nn.Dense(2).apply([1, 2], jnp.ones((1, 3))),
        errors.ParamsError, ValueError, "expected a dict of parameters; got list",
    )  # fmt: skip
    bad_keys = {
        "int": lambda: 0,
        "float_array": lambda: jnp.zeros(3),
        "uint32_matrix": lambda: jnp.zeros((2, 2), jnp.uint32),
        "two_keys": lambda: jax.random.split(key(), 2),
    }
    for kind, bad in bad_keys.items():
        out[f"prng_key_of_the_wrong_kind-init-{kind}"] = Case(
            lambda bad=bad: nn.Dense(2).init(bad(), jnp.ones((1, 3))),
            errors.InputTypeError, TypeError, "PRNG key",
        )  # fmt: skip
        out[f"prng_key_of_the_wrong_kind-dropout-{kind}"] = Case(
            lambda bad=bad: nn.Dropout(0.5).apply({}, jnp.ones(3), key=bad()),
            errors.InputTypeError, TypeError, "PRNG key",
        )  # fmt: skip
    out["unhashable_static_argument"] = Case(
        lambda: fg.logsumexp(jnp.ones((2, 2)), axis={0: 1}),
        errors.PrimitiveError, TypeError, "must be hashable",
    )  # fmt: skip
    out["example_input_that_is_not_an_array"] = Case(
        lambda: nn.Dense(2).init(key(), object()),
        errors.InputTypeError, TypeError, "example input",
    )  # fmt: skip
    return out


def _settings_cases() -> dict[str, Case]:
    settings: dict[str, tuple[Callable[[], object], str]] = {
        "Dense": (lambda: nn.Dense(0), "features must be a positive int"),
        "Dropout": (lambda: nn.Dropout(1.0), r"rate must be in \[0, 1\)"),
        "BatchNorm": (lambda: nn.BatchNorm(momentum=2.0), "momentum"),
        "repeat": (lambda: nn.repeat(nn.Dense(2), 0), "n must be a positive int"),
        "LSTMCell": (lambda: nn.LSTMCell(0), "LSTMCell: hidden must be a positive int"),
        "GroupNorm": (lambda: nn.GroupNorm(0), "GroupNorm: num_groups must be a positive int"),
        "adaptive_max_pool": (lambda: nn.adaptive_max_pool(0), "adaptive_max_pool: output_size"),
        "parallel": (lambda: nn.parallel(nn.Dense(2), combine="max"), "combine"),
        "shared": (lambda: nn.shared(nn.Dense(2), ""), "name"),
        "straight_through": (lambda: fg.straight_through(1.0, "floor"), "fn must be"),
        "make_multistep": (lambda: fg.train.make_multistep(lambda p, b: p, optax.sgd(1.0), 0), "k must be"),
        "huber": (lambda: losses.huber(jnp.ones(2), jnp.ones(2), delta=0.0), "delta"),
        "label_smoothing": (lambda: losses.softmax_cross_entropy(jnp.ones((1, 2)), jnp.zeros(1, jnp.int32), label_smoothing=1.0), "label_smoothing"),
    }  # fmt: skip
    return {
        f"out_of_range_settings-{name}": Case(call, errors.ConfigError, ValueError, pattern)
        for name, (call, pattern) in settings.items()
    }


def _config_dir(config: dict[str, object]) -> str:
    """A fresh directory holding only ``config.json``."""
    import json
    import tempfile
    from pathlib import Path

    folder = tempfile.mkdtemp()
    (Path(folder) / "config.json").write_text(json.dumps(config))
    return folder


def _language_model_cases() -> dict[str, Case]:
    q = jnp.ones((2, 3, 2, 4), F)
    ids = jnp.ones((1, 2), jnp.int32)
    params = {"dense_0": {"w": jnp.ones((4, 3), F), "b": jnp.ones(3, F)}}
    state = lambda: fg.train.TrainState.create(params, optax.sgd(1.0), key=key())
    frozen = lambda: fg.train.make_step(lambda p, b: jnp.sum(p["dense_0"]["w"]), optax.sgd(1.0), trainable=lambda path: False)  # fmt: skip
    lm = {
        "attention-lengths": (lambda: nn.attention(q, q, q, q_lengths=jnp.array([4, 1])), errors.ShapeError, ValueError, r"nn.attention: q_lengths must lie in 0..3"),
        "attention-segment_ids": (lambda: nn.attention(q, q, q, segment_ids=jnp.zeros((2, 5), jnp.int32)), errors.ShapeError, ValueError, r"segment_ids must be \(batch, length\) = \(2, 3\); got \(2, 5\)"),
        "attention-window": (lambda: nn.MultiHeadAttention(2, window=(1,)), errors.ConfigError, ValueError, "MultiHeadAttention: window must be a pair"),
        "generate-top_p": (lambda: nn.generate(nn.serial(nn.Embedding(5, 4), nn.Dense(5)), None, ids, 2, key=key(), top_p=0.0), errors.ConfigError, ValueError, r"generate: top_p must be a number in \(0, 1\]"),
        "lora_init-rank": (lambda: nn.lora_init(key(), params, rank=0), errors.ConfigError, ValueError, "lora_init: rank must be a positive integer"),
        "lora_init-targets": (lambda: nn.lora_init(key(), params, rank=2, targets="*.nothing"), errors.ConfigError, ValueError, "no leaf of params matches targets"),
        "linear_softmax_cross_entropy-shapes": (lambda: losses.linear_softmax_cross_entropy(jnp.ones((4, 3)), jnp.ones((2, 5)), jnp.zeros(4, jnp.int32)), errors.ShapeError, ValueError, r"got h of shape \(4, 3\) and w of shape \(2, 5\)"),
        "make_step-trainable": (lambda: frozen()(state(), jnp.ones((4, 1))), errors.ConfigError, ValueError, "trainable= selects none of the 2 parameters"),
        "make_step-microbatches": (lambda: fg.train.make_step(lambda p, b: p, optax.sgd(1.0), microbatches=0), errors.ConfigError, ValueError, "microbatches must be a positive int"),
        "from_hf-model_type": (lambda: fg.interop.from_hf(_config_dir({"model_type": "bert"})), errors.UnknownNameError, KeyError, "model_type 'bert' is not supported; supported: gpt2, llama"),
        "from_hf-missing": (lambda: fg.interop.from_hf(_config_dir({}) + "/nothing"), errors.MissingFileError, FileNotFoundError, "from_hf: no directory"),
        "Profile-steps": (lambda: fg.train.Profile("unused", steps=(5, 5)), errors.ConfigError, ValueError, r"Profile: steps must be a pair of ints \(a, b\) with 0 <= a < b"),
    }  # fmt: skip
    return {f"language_models-{name}": Case(*case) for name, case in lm.items()}


def _inspect_and_testing_cases() -> dict[str, Case]:
    from funcgrad import inspect
    from funcgrad.inspect.cli import load_target, parse_spec

    def graph() -> inspect.Graph:
        return inspect.graph(jnp.sin, jnp.ones(2))

    def wrong_derivative() -> None:
        @fg.primitive(name="bad_input_cases_wrong_cube", override=True)
        def cube(x: jax.Array) -> jax.Array:
            return x**3

        @cube.backward
        def _(inputs: tuple[jax.Array, ...], output: jax.Array, g: jax.Array) -> tuple[jax.Array]:
            return (g * 2 * inputs[0] ** 2,)

        fg.testing.check_grads(cube, (jnp.array([0.5, 1.5]),))

    return {
        "inspect-graph-not_a_function": Case(
            lambda: inspect.graph(3, jnp.ones(2)),
            errors.InputTypeError, TypeError, "expected a function; got int",
        ),
        "inspect-graph-negative_depth": Case(
            lambda: inspect.graph(jnp.sin, jnp.ones(3), depth=-1),
            errors.ConfigError, ValueError, "depth must be an int >= 0; got -1",
        ),
        "inspect-graph-argnums_out_of_range": Case(
            lambda: inspect.graph(jnp.sum, jnp.ones(3), backward=True, argnums=2),
            errors.ConfigError, ValueError, r"argnums \[2\] out of range for 1 argument",
        ),
        "inspect-graph-backward_of_a_vector": Case(
            lambda: inspect.graph(jnp.sin, jnp.ones(3), backward=True),
            errors.ShapeError, ValueError, "must return one float scalar",
        ),
        "inspect-Graph.node-unknown": Case(
            lambda: graph().node("n99"),
            errors.UnknownNameError, KeyError, "has no node 'n99'; its nodes are in0",
        ),
        "inspect-Graph.save-unknown_file_type": Case(
            lambda: graph().save("g.jpeg"),
            errors.ConfigError, ValueError, r"unknown file type '.jpeg'",
        ),
        "inspect-summary-not_a_layer": Case(
            lambda: inspect.summary(jnp.sin, {}, jnp.ones(2)),
            errors.InputTypeError, TypeError, "expected a funcgrad Layer",
        ),
        "inspect-cli-target_without_colon": Case(
            lambda: load_target("funcgrad.nn"),
            errors.ConfigError, ValueError, "expected MODULE:NAME",
        ),
        "inspect-cli-missing_file": Case(
            lambda: load_target("no_such_file.py:f"),
            errors.MissingFileError, FileNotFoundError, "no such file: no_such_file.py",
        ),
        "inspect-cli-missing_attribute": Case(
            lambda: load_target("funcgrad.nn:no_such_layer"),
            errors.UnknownNameError, LookupError, "has no attribute 'no_such_layer'",
        ),
        "inspect-cli-bad_shape": Case(
            lambda: parse_spec("f32(4, 3)"),
            errors.ConfigError, ValueError, "expected an array shape like f32",
        ),
        "inspect-cli-unknown_dtype": Case(
            lambda: parse_spec("q7[4]"),
            errors.ConfigError, ValueError, "unknown dtype 'q7'",
        ),
        "testing-check_grads-order_3": Case(
            lambda: fg.testing.check_grads(jnp.sin, (1.0,), order=3),
            errors.ConfigError, ValueError, "order must be 1 or 2; got 3",
        ),
        "testing-check_grads-unknown_mode": Case(
            lambda: fg.testing.check_grads(jnp.sin, (1.0,), modes=("sideways",)),
            errors.ConfigError, ValueError, "modes must be 'fwd' or 'rev'",
        ),
        "testing-check_grads-wrong_derivative": Case(
            wrong_derivative,
            errors.CheckFailedError, AssertionError, "order-1 derivative in fwd mode",
        ),
    }  # fmt: skip


def cases() -> dict[str, Case]:
    """Every case of the battery, by id (``wrong_rank-Dense``, ``inspect-cli-missing_file``)."""
    return {
        **_layer_cases(),
        **_function_cases(),
        **_settings_cases(),
        **_language_model_cases(),
        **_inspect_and_testing_cases(),
    }
