"""Training-step benchmark: funcgrad against pure JAX, Flax (NNX, Linen), Equinox, Haiku and PyTorch.

Every variant runs the same full step (forward, loss, backward, Adam) on the same data; rounds
are interleaved; medians and ratios to the pure-JAX step of the same round are reported.
Usage: .venv/bin/pip install -e .[bench] (torch: the CPU build), then
       .venv/bin/python scripts/bench.py [--rounds 7] [--workloads tiny_mlp,cnn] [--out docs/bench]
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import itertools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import funcgrad as fg
from funcgrad import losses, nn

LR = 1e-3
FUSED_K = 100
WORKLOADS: dict[str, dict[str, Any]] = {
    "tiny_mlp": {"kind": "mlp", "widths": [2, 16, 16, 1], "batch": 32, "act": "tanh", "loss": "mse"},
    "mlp_784": {"kind": "mlp", "widths": [784, 512, 512, 10], "batch": 128, "act": "relu", "loss": "ce"},
    "cnn": {"kind": "cnn", "batch": 64, "loss": "ce"},
    "deep_mlp": {"kind": "mlp", "widths": [256] * 33, "batch": 128, "act": "tanh", "loss": "mse"},
    "transformer": {"kind": "transformer", "batch": 16, "seq": 128, "d": 256, "heads": 4, "loss": "mse"},
}  # fmt: skip


def data(w: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The same inputs and targets for every library."""
    rng = np.random.default_rng(0)
    if w["kind"] == "mlp":
        x = rng.standard_normal((w["batch"], w["widths"][0]), dtype=np.float32)
        out = w["widths"][-1]
    elif w["kind"] == "cnn":
        x = rng.standard_normal((w["batch"], 28, 28, 1), dtype=np.float32)
        out = 10
    else:
        x = rng.standard_normal((w["batch"], w["seq"], w["d"]), dtype=np.float32)
        return x, rng.standard_normal(x.shape, dtype=np.float32)
    if w["loss"] == "ce":
        return x, rng.integers(0, out, w["batch"]).astype(np.int32)
    return x, rng.standard_normal((w["batch"], out), dtype=np.float32)


def jax_loss(w: dict[str, Any], out: jax.Array, y: jax.Array) -> jax.Array:
    if w["loss"] == "ce":
        return optax.softmax_cross_entropy_with_integer_labels(out, y).mean()
    return jnp.mean((out - y) ** 2)


class Runner:
    """One variant: ``step()`` runs one training step (or one fused block) on its own state."""

    per_call = 1  # training steps a call performs

    def step(self) -> None:
        raise NotImplementedError

    def block(self) -> None:
        raise NotImplementedError


class JaxRunner(Runner):
    def __init__(
        self,
        fn: Callable[..., Any],
        state: tuple[Any, ...],
        batch: tuple[Any, ...],
        per_call: int = 1,
    ):
        self.fn, self.state, self.batch, self.per_call = fn, state, batch, per_call

    def step(self) -> None:
        *self.state, self.loss = self.fn(*self.state, *self.batch)  # type: ignore[assignment]

    def block(self) -> None:
        jax.block_until_ready((self.state, self.loss))


def jax_step(loss_fn: Callable[..., Any]) -> Callable[..., Any]:
    """The hand-written baseline step: value_and_grad, optax Adam, donated buffers."""
    opt = optax.adam(LR)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params: Any, opt_state: Any, x: Any, y: Any) -> Any:
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


# -- pure JAX ----------------------------------------------------------------------------------


def pure_jax(w: dict[str, Any]) -> Runner:
    key = jax.random.key(0)
    x, y = map(jnp.asarray, data(w))
    lecun = jax.nn.initializers.lecun_normal()

    def dense(k: Any, i: int, o: int) -> dict[str, Any]:
        return {"w": lecun(k, (i, o)), "b": jnp.zeros(o)}

    def layer_norm(v: Any, p: dict[str, Any]) -> Any:
        m = v.mean(-1, keepdims=True)
        var = ((v - m) ** 2).mean(-1, keepdims=True)
        return (v - m) * jax.lax.rsqrt(var + 1e-6) * p["scale"] + p["bias"]

    if w["kind"] == "mlp":
        widths, act = w["widths"], getattr(jnp, w["act"]) if w["act"] == "tanh" else jax.nn.relu
        keys = jax.random.split(key, len(widths) - 1)
        params: Any = {
            f"l{i}": dense(keys[i], a, b) for i, (a, b) in enumerate(itertools.pairwise(widths))
        }

        def apply(p: Any, v: Any) -> Any:
            for i in range(len(widths) - 1):
                v = v @ p[f"l{i}"]["w"] + p[f"l{i}"]["b"]
                if i < len(widths) - 2:
                    v = act(v)
            return v
    elif w["kind"] == "cnn":
        k = jax.random.split(key, 3)
        params = {
            "c0": {"w": lecun(k[0], (3, 3, 1, 32)), "b": jnp.zeros(32)},
            "c1": {"w": lecun(k[1], (3, 3, 32, 64)), "b": jnp.zeros(64)},
            "d": dense(k[2], 7 * 7 * 64, 10),
        }

        def conv(v: Any, p: dict[str, Any]) -> Any:
            out = jax.lax.conv_general_dilated(
                v, p["w"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
            return out + p["b"]

        def pool(v: Any) -> Any:
            return jax.lax.reduce_window(
                v, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID"
            )

        def apply(p: Any, v: Any) -> Any:
            v = pool(jax.nn.relu(conv(v, p["c0"])))
            v = pool(jax.nn.relu(conv(v, p["c1"])))
            return v.reshape(v.shape[0], -1) @ p["d"]["w"] + p["d"]["b"]
    else:
        d, h = w["d"], w["heads"]
        k = jax.random.split(key, 6)
        params = {
            "ln1": {"scale": jnp.ones(d), "bias": jnp.zeros(d)},
            "ln2": {"scale": jnp.ones(d), "bias": jnp.zeros(d)},
            "qkv": dense(k[0], d, 3 * d),
            "o": dense(k[1], d, d),
            "fc1": dense(k[2], d, 4 * d),
            "fc2": dense(k[3], 4 * d, d),
        }

        def apply(p: Any, v: Any) -> Any:
            b, t, _ = v.shape
            u = layer_norm(v, p["ln1"])
            qkv = (u @ p["qkv"]["w"] + p["qkv"]["b"]).reshape(b, t, 3, h, d // h)
            q, kk, vv = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
            att = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, kk) / np.sqrt(d // h), axis=-1)
            u = jnp.einsum("bhqk,bkhd->bqhd", att, vv).reshape(b, t, d)
            v = v + u @ p["o"]["w"] + p["o"]["b"]
            u = layer_norm(v, p["ln2"])
            u = jax.nn.gelu(u @ p["fc1"]["w"] + p["fc1"]["b"], approximate=False)
            return v + u @ p["fc2"]["w"] + p["fc2"]["b"]

    step = jax_step(lambda p, xb, yb: jax_loss(w, apply(p, xb), yb))
    return JaxRunner(step, (params, optax.adam(LR).init(params)), (x, y))


# -- funcgrad ----------------------------------------------------------------------------------


def funcgrad_model(w: dict[str, Any], repeat: bool = False) -> nn.Layer:
    if w["kind"] == "mlp":
        widths = w["widths"]
        act = nn.tanh if w["act"] == "tanh" else nn.relu
        if repeat:
            return nn.repeat(nn.serial(nn.Dense(widths[1]), act), len(widths) - 1)
        layers: list[nn.Layer] = []
        for i, o in enumerate(widths[1:]):
            layers.append(nn.Dense(o))
            if i < len(widths) - 2:
                layers.append(act)
        return nn.serial(*layers)
    if w["kind"] == "cnn":
        return nn.serial(
            nn.Conv(32, (3, 3)), nn.relu, nn.max_pool((2, 2)),
            nn.Conv(64, (3, 3)), nn.relu, nn.max_pool((2, 2)),
            nn.Flatten(), nn.Dense(10),
        )  # fmt: skip
    d = w["d"]
    return nn.serial(
        nn.residual(nn.LayerNorm(), nn.MultiHeadAttention(num_heads=w["heads"])),
        nn.residual(nn.LayerNorm(), nn.Dense(4 * d), nn.gelu, nn.Dense(d)),
    )


def funcgrad_loss(w: dict[str, Any], model: nn.Layer) -> Callable[..., Any]:
    if w["loss"] == "ce":
        return lambda p, b: losses.softmax_cross_entropy(model.apply(p, b[0]), b[1])
    return lambda p, b: losses.mse(model.apply(p, b[0]), b[1])


def funcgrad_step(w: dict[str, Any], repeat: bool = False) -> Runner:
    x, y = map(jnp.asarray, data(w))
    model = funcgrad_model(w, repeat)
    params = model.init(jax.random.key(0), x)
    opt = optax.adam(LR)
    step = fg.train.make_step(funcgrad_loss(w, model), opt)

    def call(p: Any, o: Any, xb: Any, yb: Any) -> Any:
        p, o, metrics = step(p, o, (xb, yb))
        return p, o, metrics["loss"]

    return JaxRunner(call, (params, opt.init(params)), (x, y))


class StateRunner(Runner):
    """`make_multistep` on a `TrainState` (donated, as `fit(fused=)` runs it): k steps a call."""

    def __init__(self, multi: Any, params: Any, opt: Any, block: Any, k: int) -> None:
        self.multi, self.block_, self.per_call = multi, block, k
        self.state = fg.train.TrainState.create(params, opt, key=jax.random.key(0))

    def step(self) -> None:
        self.state, self.metrics = self.multi(self.state, self.block_)

    def block(self) -> None:
        jax.block_until_ready((self.state.params, self.metrics))


def fused_setup(w: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    x, y = map(jnp.asarray, data(w))
    model = funcgrad_model(w)
    params = model.init(jax.random.key(0), x)
    block = (jnp.broadcast_to(x, (FUSED_K, *x.shape)), jnp.broadcast_to(y, (FUSED_K, *y.shape)))
    return funcgrad_loss(w, model), params, optax.adam(LR), block


def funcgrad_fused(w: dict[str, Any]) -> Runner:
    loss, params, opt, block = fused_setup(w)
    multi = fg.train.make_multistep(loss, opt, FUSED_K)
    return StateRunner(multi, params, opt, block, FUSED_K)


def raw_scan(w: dict[str, Any]) -> Runner:
    """The bar for `make_multistep`: a hand-written `jax.lax.scan` over `make_update`, donated."""
    loss, params, opt, block = fused_setup(w)
    update = fg.train.make_update(loss, opt)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def call(p: Any, o: Any, xb: Any, yb: Any) -> Any:
        def body(carry: Any, batch: Any) -> Any:
            p, o = carry
            p, _, o, metrics = update(p, {}, o, batch, None)
            return (p, o), metrics["loss"]

        (p, o), losses = jax.lax.scan(body, (p, o), (xb, yb))
        return p, o, losses

    return JaxRunner(call, (jax.tree.map(jnp.copy, params), opt.init(params)), block, FUSED_K)


# -- Flax Linen, Haiku (functional: the same jitted step as pure JAX) -------------------------


def linen(w: dict[str, Any]) -> Runner:
    import flax.linen as ln

    class Model(ln.Module):
        @ln.compact
        def __call__(self, v: Any) -> Any:
            if w["kind"] == "mlp":
                widths = w["widths"]
                for i, o in enumerate(widths[1:]):
                    v = ln.Dense(o)(v)
                    if i < len(widths) - 2:
                        v = jnp.tanh(v) if w["act"] == "tanh" else ln.relu(v)
                return v
            if w["kind"] == "cnn":
                for c in (32, 64):
                    v = ln.max_pool(ln.relu(ln.Conv(c, (3, 3))(v)), (2, 2), (2, 2))
                return ln.Dense(10)(v.reshape(v.shape[0], -1))
            d = w["d"]
            v = v + ln.MultiHeadDotProductAttention(num_heads=w["heads"])(ln.LayerNorm()(v))
            u = ln.Dense(d)(ln.gelu(ln.Dense(4 * d)(ln.LayerNorm()(v)), approximate=False))
            return v + u

    x, y = map(jnp.asarray, data(w))
    model = Model()
    params = model.init(jax.random.key(0), x)
    step = jax_step(lambda p, xb, yb: jax_loss(w, model.apply(p, xb), yb))
    return JaxRunner(step, (params, optax.adam(LR).init(params)), (x, y))


def haiku(w: dict[str, Any]) -> Runner:
    import haiku as hk

    def forward(v: Any) -> Any:
        if w["kind"] == "mlp":
            act = jnp.tanh if w["act"] == "tanh" else jax.nn.relu
            return hk.nets.MLP(w["widths"][1:], activation=act)(v)
        if w["kind"] == "cnn":
            for c in (32, 64):
                v = jax.nn.relu(hk.Conv2D(c, 3)(v))
                v = hk.max_pool(v, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
            return hk.Linear(10)(v.reshape(v.shape[0], -1))
        d, h = w["d"], w["heads"]
        u = hk.LayerNorm(-1, True, True)(v)
        v = v + hk.MultiHeadAttention(
            h, d // h, w_init=hk.initializers.VarianceScaling(1.0), model_size=d
        )(u, u, u)
        u = hk.LayerNorm(-1, True, True)(v)
        return v + hk.Linear(d)(jax.nn.gelu(hk.Linear(4 * d)(u), approximate=False))

    model = hk.without_apply_rng(hk.transform(forward))
    x, y = map(jnp.asarray, data(w))
    params = model.init(jax.random.key(0), x)
    step = jax_step(lambda p, xb, yb: jax_loss(w, model.apply(p, xb), yb))
    return JaxRunner(step, (params, optax.adam(LR).init(params)), (x, y))


# -- Equinox ------------------------------------------------------------------------------------


def equinox(w: dict[str, Any]) -> Runner:
    import equinox as eqx

    key = jax.random.key(0)
    if w["kind"] == "mlp":
        widths = w["widths"]
        act = jnp.tanh if w["act"] == "tanh" else jax.nn.relu
        model: Any = eqx.nn.MLP(
            widths[0], widths[-1], widths[1], len(widths) - 2, activation=act, key=key
        )
        call = lambda m, v: jax.vmap(m)(v)
    elif w["kind"] == "cnn":
        k = jax.random.split(key, 3)

        class CNN(eqx.Module):
            c0: eqx.nn.Conv2d
            c1: eqx.nn.Conv2d
            d: eqx.nn.Linear

            def __call__(self, v: Any) -> Any:  # one example, channels first as Equinox wants
                pool = eqx.nn.MaxPool2d(2, 2)
                v = pool(jax.nn.relu(self.c0(v)))
                v = pool(jax.nn.relu(self.c1(v)))
                return self.d(v.reshape(-1))

        model = CNN(eqx.nn.Conv2d(1, 32, 3, padding=1, key=k[0]), eqx.nn.Conv2d(32, 64, 3, padding=1, key=k[1]),
                    eqx.nn.Linear(7 * 7 * 64, 10, key=k[2]))  # fmt: skip
        call = lambda m, v: jax.vmap(m)(jnp.moveaxis(v, -1, 1))
    else:
        d, h = w["d"], w["heads"]
        k = jax.random.split(key, 3)

        class Block(eqx.Module):
            ln1: eqx.nn.LayerNorm
            ln2: eqx.nn.LayerNorm
            att: eqx.nn.MultiheadAttention
            fc1: eqx.nn.Linear
            fc2: eqx.nn.Linear

            def __call__(self, v: Any) -> Any:  # one sequence
                u = jax.vmap(self.ln1)(v)
                v = v + self.att(u, u, u)
                u = jax.vmap(self.ln2)(v)
                return v + jax.vmap(self.fc2)(jax.nn.gelu(jax.vmap(self.fc1)(u), approximate=False))

        model = Block(eqx.nn.LayerNorm(d), eqx.nn.LayerNorm(d),
                      eqx.nn.MultiheadAttention(h, d, use_query_bias=True, use_key_bias=True,
                                                use_value_bias=True, use_output_bias=True, key=k[0]),
                      eqx.nn.Linear(d, 4 * d, key=k[1]), eqx.nn.Linear(4 * d, d, key=k[2]))  # fmt: skip
        call = lambda m, v: jax.vmap(m)(v)
    opt = optax.adam(LR)
    opt_state = opt.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit(donate="all")
    def step(m: Any, o: Any, xb: Any, yb: Any) -> Any:
        loss, grads = eqx.filter_value_and_grad(lambda mm: jax_loss(w, call(mm, xb), yb))(m)
        updates, o = opt.update(grads, o, eqx.filter(m, eqx.is_array))
        return eqx.apply_updates(m, updates), o, loss

    x, y = map(jnp.asarray, data(w))
    return JaxRunner(step, (model, opt_state), (x, y))


# -- Flax NNX -----------------------------------------------------------------------------------


def nnx_model(w: dict[str, Any]) -> Any:
    from flax import nnx

    rngs = nnx.Rngs(0)
    if w["kind"] == "mlp":
        widths = w["widths"]

        class MLP(nnx.Module):
            def __init__(self) -> None:
                self.layers = nnx.List(
                    [nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(widths)]
                )

            def __call__(self, v: Any) -> Any:
                for i, layer in enumerate(self.layers):
                    v = layer(v)
                    if i < len(self.layers) - 1:
                        v = jnp.tanh(v) if w["act"] == "tanh" else nnx.relu(v)
                return v

        return MLP()
    if w["kind"] == "cnn":

        class CNN(nnx.Module):
            def __init__(self) -> None:
                self.c0 = nnx.Conv(1, 32, (3, 3), rngs=rngs)
                self.c1 = nnx.Conv(32, 64, (3, 3), rngs=rngs)
                self.d = nnx.Linear(7 * 7 * 64, 10, rngs=rngs)

            def __call__(self, v: Any) -> Any:
                for c in (self.c0, self.c1):
                    v = nnx.max_pool(nnx.relu(c(v)), (2, 2), (2, 2))
                return self.d(v.reshape(v.shape[0], -1))

        return CNN()
    d = w["d"]

    class Block(nnx.Module):
        def __init__(self) -> None:
            self.ln1, self.ln2 = nnx.LayerNorm(d, rngs=rngs), nnx.LayerNorm(d, rngs=rngs)
            self.att = nnx.MultiHeadAttention(w["heads"], d, decode=False, rngs=rngs)
            self.fc1, self.fc2 = nnx.Linear(d, 4 * d, rngs=rngs), nnx.Linear(4 * d, d, rngs=rngs)

        def __call__(self, v: Any) -> Any:
            v = v + self.att(self.ln1(v))
            return v + self.fc2(nnx.gelu(self.fc1(self.ln2(v)), approximate=False))

    return Block()


class NNXRunner(Runner):
    def __init__(self, w: dict[str, Any], cached: bool) -> None:
        from flax import nnx

        model = nnx_model(w)
        optimizer = nnx.Optimizer(model, optax.adam(LR), wrt=nnx.Param)
        self.x, self.y = map(jnp.asarray, data(w))

        @nnx.jit
        def step(model: Any, optimizer: Any, xb: Any, yb: Any) -> Any:
            loss, grads = nnx.value_and_grad(lambda m: jax_loss(w, m(xb), yb))(model)
            optimizer.update(model, grads)
            return loss

        self.fn = (
            nnx.cached_partial(step, model, optimizer)
            if cached
            else functools.partial(step, model, optimizer)
        )

    def step(self) -> None:
        self.loss = self.fn(self.x, self.y)

    def block(self) -> None:
        jax.block_until_ready(self.loss)


# -- PyTorch eager ------------------------------------------------------------------------------


class TorchRunner(Runner):
    def __init__(self, w: dict[str, Any]) -> None:
        import torch
        from torch import nn as tnn

        torch.set_num_threads(os.cpu_count() or 1)
        torch.manual_seed(0)
        if w["kind"] == "mlp":
            widths, layers = w["widths"], []
            for i, (a, b) in enumerate(itertools.pairwise(widths)):
                layers.append(tnn.Linear(a, b))
                if i < len(widths) - 2:
                    layers.append(tnn.Tanh() if w["act"] == "tanh" else tnn.ReLU())
            self.model = tnn.Sequential(*layers)
        elif w["kind"] == "cnn":
            self.model = tnn.Sequential(
                tnn.Conv2d(1, 32, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
                tnn.Conv2d(32, 64, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
                tnn.Flatten(), tnn.Linear(7 * 7 * 64, 10),
            )  # fmt: skip
        else:
            d = w["d"]

            class Block(tnn.Module):
                def __init__(self) -> None:
                    super().__init__()
                    self.ln1, self.ln2 = tnn.LayerNorm(d), tnn.LayerNorm(d)
                    self.att = tnn.MultiheadAttention(d, w["heads"], batch_first=True)
                    self.mlp = tnn.Sequential(
                        tnn.Linear(d, 4 * d), tnn.GELU(), tnn.Linear(4 * d, d)
                    )

                def forward(self, v: Any) -> Any:
                    u = self.ln1(v)
                    v = v + self.att(u, u, u, need_weights=False)[0]
                    return v + self.mlp(self.ln2(v))

            self.model = Block()
        x, y = data(w)
        self.x = torch.from_numpy(np.moveaxis(x, -1, 1).copy() if w["kind"] == "cnn" else x)
        self.y = torch.from_numpy(y).long() if w["loss"] == "ce" else torch.from_numpy(y)
        self.loss_fn = tnn.CrossEntropyLoss() if w["loss"] == "ce" else tnn.MSELoss()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=LR)

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()
        self.loss = loss.detach()

    def block(self) -> None:
        float(self.loss)


# -- the run ------------------------------------------------------------------------------------

VARIANTS: dict[str, Callable[[dict[str, Any]], Runner]] = {
    "pure JAX": pure_jax,
    "funcgrad make_step": funcgrad_step,
    "funcgrad fused": funcgrad_fused,
    "raw scan over make_update": raw_scan,
    "funcgrad repeat": lambda w: funcgrad_step(w, repeat=True),
    "Flax NNX (nnx.jit)": lambda w: NNXRunner(w, cached=False),
    "Flax NNX (cached_partial)": lambda w: NNXRunner(w, cached=True),
    "Flax Linen": linen,
    "Equinox (filter_jit)": equinox,
    "Haiku": haiku,
    "PyTorch eager": TorchRunner,
}
LIBRARY = {
    "Flax": "flax", "Equinox": "equinox", "Haiku": "dm-haiku", "PyTorch": "torch",
}  # fmt: skip


def applies(variant: str, workload: str) -> bool:
    if variant == "funcgrad repeat":
        return workload == "deep_mlp"
    return True


def time_per_step(runner: Runner, budget: float) -> float:
    """Seconds per training step, over enough calls to fill about ``budget`` seconds."""
    runner.step()
    runner.block()
    start = time.perf_counter()
    runner.step()
    runner.block()
    once = max(time.perf_counter() - start, 1e-6)
    calls = max(3, int(budget / once))
    start = time.perf_counter()
    for _ in range(calls):
        runner.step()
    runner.block()
    return (time.perf_counter() - start) / calls / runner.per_call


def run(workloads: list[str], variants: list[str], rounds: int, budget: float) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in workloads:
        w = WORKLOADS[name]
        runners: dict[str, Runner] = {}
        row: dict[str, Any] = {}
        for v in variants:
            if not applies(v, name):
                continue
            start = time.perf_counter()
            try:
                r = VARIANTS[v](w)
                r.step()
                r.block()
            except ImportError as err:
                row[v] = {"skipped": f"not installed ({err.name})"}
                continue
            row[v] = {"first_call_s": time.perf_counter() - start, "per_step_s": [], "ratio": []}
            runners[v] = r
        for k in range(rounds):
            order = list(runners) if k % 2 == 0 else list(reversed(runners))
            times = {v: time_per_step(runners[v], budget) for v in order}
            for v, t in times.items():
                row[v]["per_step_s"].append(t)
                row[v]["ratio"].append(t / times["pure JAX"])
        for v in runners:
            row[v]["median_s"] = statistics.median(row[v]["per_step_s"])
            row[v]["median_ratio"] = statistics.median(row[v]["ratio"])
        results[name] = row
        print(f"  {name}: " + ", ".join(f"{v} {row[v].get('median_ratio', 0):.2f}" for v in runners),
              file=sys.stderr, flush=True)  # fmt: skip
    return results


def versions() -> dict[str, str]:
    out = {
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    for dist in ("jax", "jaxlib", "optax", "funcgrad", "flax", "equinox", "dm-haiku", "torch"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def markdown(results: dict[str, Any]) -> str:
    variants = list(dict.fromkeys(v for row in results.values() for v in row))
    lines = ["| variant | " + " | ".join(results) + " |", "| --- |" + " ---: |" * len(results)]
    for v in variants:
        cells = []
        for row in results.values():
            r = row.get(v)
            if r is None:
                cells.append("")
            elif "skipped" in r:
                cells.append(r["skipped"])
            else:
                cells.append(f"{r['median_s'] * 1e6:,.0f} µs ({r['median_ratio']:.2f}×)")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    lines += ["", "First call (trace + compile + one step), seconds:", ""]
    lines += ["| variant | " + " | ".join(results) + " |", "| --- |" + " ---: |" * len(results)]
    for v in variants:
        cells = [
            f"{row[v]['first_call_s']:.2f}" if v in row and "first_call_s" in row[v] else ""
            for row in results.values()
        ]
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(dict.fromkeys(v for row in results.values() for v in row))
    fig, ax = plt.subplots(figsize=(12, 5.5))
    width = 0.8 / len(variants)
    for i, v in enumerate(variants):
        ys = [
            row[v]["median_ratio"] if v in row and "median_ratio" in row[v] else np.nan
            for row in results.values()
        ]
        ax.bar(np.arange(len(results)) + i * width, ys, width, label=v)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(results)) + 0.4 - width / 2, list(results))
    ax.set_ylabel("time per training step / pure JAX (log scale; lower is faster)")
    ax.legend(fontsize=8, ncol=2)
    ax.set_title("Training step, median over interleaved rounds (2-core CPU)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--budget", type=float, default=0.3, help="seconds per measurement")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", help="folder for bench.md, bench.json and bench.png")
    args = parser.parse_args()
    if args.rounds < 5:
        parser.error(
            "--rounds must be at least 5 (medians of fewer say little on a shared machine)"
        )
    workloads = args.workloads.split(",")
    variants = args.variants.split(",")
    unknown = [w for w in workloads if w not in WORKLOADS] + [
        v for v in variants if v not in VARIANTS
    ]
    if unknown:
        parser.error(
            f"unknown workloads or variants {unknown}; have {list(WORKLOADS)} and {list(VARIANTS)}"
        )
    if "pure JAX" not in variants:
        variants.insert(0, "pure JAX")
    info = versions()
    print(" ".join(f"{k} {v}" for k, v in info.items()), file=sys.stderr)
    results = run(workloads, variants, args.rounds, args.budget)
    table = markdown(results)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.md").write_text(table + "\n")
        (out / "bench.json").write_text(
            json.dumps({"versions": info, "results": results}, indent=1)
        )
        chart(results, out / "bench.png")


if __name__ == "__main__":
    main()
