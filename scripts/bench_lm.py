"""A small Llama's training step and cached decoding: tokens/s and XLA's memory figures.

Training (one `models.Llama`, one batch, adam): the full fine-tune, the same with
``microbatches=4``, LoRA (rank 8 via ``trainable=``, the base in the train state) and the blocked
loss (`Pretrained.hidden` and `Pretrained.head_weight` fed to
`losses.linear_softmax_cross_entropy` instead of logits and `losses.softmax_cross_entropy`).
Each is timed in interleaved rounds (see interleave.py), medians, ratios to the full fine-tune;
its ``temp_bytes`` and ``peak_bytes`` come from `inspect.cost` (XLA:CPU's peak counts the live
arguments, not the temporaries: read ``temp_bytes`` there). All four must start from the same loss.

Decoding: greedy ``nn.generate(..., temperature=0)`` against a hand-written pure-JAX loop for the
same parameters (embedding, RMSNorm, RoPE, grouped-query attention over a key/value cache written
with ``lax.dynamic_update_slice``, SwiGLU, final norm, head, argmax; prefill then a ``lax.scan``
over the new tokens, all in one jit). A call is the prefill plus ``new`` tokens; tokens/s is
``new`` over its time; the prefill alone (``new=1``) is timed too. Both must produce the same
tokens, checked before timing.

Sizes: ``tiny`` (seconds of work), ``small`` (the default, a few minutes on a 2-core CPU),
``gpu`` (a ~1B-parameter model for one 80 GB GPU; not yet measured).

Usage: PYTHONPATH=. .venv/bin/python scripts/bench_lm.py [--size small] [--rounds 5]
       [--only train|decode]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import optax
from interleave import interleaved_medians  # the scripts folder is on sys.path

import funcgrad as fg
from funcgrad import nn
from funcgrad.models import Llama, LlamaConfig

SIZES: dict[str, dict[str, Any]] = {
    # vocab, hidden, intermediate, layers, heads, kv heads; batch x length trained; decoding
    # contexts (prompt + new tokens, the cache length), batch 1; steps per timed call.
    "tiny": dict(vocab=512, d=64, inter=128, layers=2, heads=4, kv=2, batch=4, length=32,
                 contexts=(32, 64), new=8, steps=1),
    "small": dict(vocab=8192, d=256, inter=704, layers=4, heads=8, kv=4, batch=8, length=128,
                  contexts=(128, 512), new=32, steps=1),
    "gpu": dict(vocab=32000, d=2048, inter=5632, layers=16, heads=32, kv=8, batch=8,
                length=1024, contexts=(512, 2048), new=128, steps=5),
}  # fmt: skip
MICROBATCHES, RANK, ALPHA = 4, 8, 16.0


def config(size: dict[str, Any]) -> LlamaConfig:
    return LlamaConfig(size["vocab"], size["d"], size["inter"], num_layers=size["layers"],
                       num_heads=size["heads"], num_kv_heads=size["kv"], rope_theta=10000.0)  # fmt: skip


# ---------------------------------------------------------------------------------------- training


def train_variants(model: Llama, params: Any) -> dict[str, tuple[Callable[..., Any], Any, Any]]:
    """name -> (loss, initial parameters, make_step/TrainState options)."""
    opt_kw: dict[str, Any] = {}

    def full(p: Any, batch: Any) -> jax.Array:
        x, y = batch
        return fg.losses.softmax_cross_entropy(model.apply(p, x), y)

    def blocked(p: Any, batch: Any) -> jax.Array:
        x, y = batch
        h = model.hidden(p, x)
        return fg.losses.linear_softmax_cross_entropy(h, model.head_weight(p), y)

    def lora(p: Any, batch: Any) -> jax.Array:
        return full(nn.lora_merge(p["base"], p["lora"], alpha=ALPHA), batch)

    factors = nn.lora_init(jax.random.key(7), params, rank=RANK, model=model)
    return {
        "full fine-tune": (full, params, opt_kw),
        f"microbatches={MICROBATCHES}": (full, params, {"microbatches": MICROBATCHES}),
        f"LoRA rank {RANK}": (
            lora,
            {"base": params, "lora": factors},
            {"trainable": lambda path: path.startswith("lora.")},
        ),
        "blocked loss": (blocked, params, opt_kw),
    }


def bench_train(size: dict[str, Any], rounds: int) -> list[dict[str, Any]]:
    model = Llama(config(size))
    ids = jax.random.randint(jax.random.key(0), (size["batch"], size["length"] + 1), 0, size["vocab"])  # fmt: skip
    batch = (ids[:, :-1], ids[:, 1:])
    params = model.init(jax.random.key(1), batch[0][:1])
    opt = optax.adam(1e-4)
    timers: dict[str, Callable[[], float]] = {}
    costs: dict[str, Any] = {}
    losses: dict[str, float] = {}
    for name, (loss, p0, kw) in train_variants(model, params).items():
        state_kw = {"trainable": kw["trainable"]} if "trainable" in kw else {}
        step = fg.train.make_step(loss, opt, **kw)
        holder = [
            fg.train.TrainState.create(
                jax.tree.map(jnp.copy, p0), opt, key=jax.random.key(0), **state_kw
            )
        ]
        costs[name] = fg.inspect.cost(step, holder[0], batch)
        holder[0], metrics = step(holder[0], batch)
        losses[name] = float(metrics["loss"])

        def run(step: Any = step, holder: list[Any] = holder) -> float:
            start = time.perf_counter()
            for _ in range(size["steps"]):
                holder[0], metrics = step(holder[0], batch)
            jax.block_until_ready(metrics)
            return (time.perf_counter() - start) / size["steps"]

        timers[name] = run
    # Same parameters, same batch: every variant's first loss is the full fine-tune's.
    first = losses["full fine-tune"]
    for name, value in losses.items():
        if not np.isclose(value, first, rtol=1e-4):
            raise AssertionError(f"bench_lm: {name}'s first loss {value} != full's {first}")
    med = interleaved_medians(timers, rounds)
    tokens = size["batch"] * size["length"]
    base = med["full fine-tune"]
    return [
        {"variant": name, "tokens/s": tokens / t, "ratio": base / t,
         "temp": costs[name].temp_bytes, "peak": costs[name].peak_bytes}
        for name, t in med.items()
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------- decoding


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Half-split rotary embedding of ``x`` ``(batch, time, heads, head_dim)``."""
    half = x.shape[-1] // 2
    inverse = theta ** (-jnp.arange(half, dtype=jnp.float32) * 2 / x.shape[-1])
    angles = positions.astype(jnp.float32)[:, None, None] * inverse  # (time, 1, half)
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    a, b = x[..., :half], x[..., half:]
    return jnp.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)


def pure_jax_decode(c: LlamaConfig, new: int, max_length: int) -> Callable[..., jax.Array]:
    """Greedy decoding written out in JAX over the funcgrad parameter tree, one jit:
    ``run(params, prompt) -> (batch, prompt_len + new)``."""
    heads, kv, hd = c.num_heads, c.kv_heads, c.head_size
    eps = c.rms_norm_eps

    def forward(p: Any, tokens: jax.Array, cache: Any, pos: jax.Array) -> tuple[jax.Array, Any]:
        """Logits of the last position of ``tokens`` (at ``pos``...), writing their keys/values."""
        batch, t = tokens.shape
        x = p["embed"]["embedding"][tokens]
        positions = pos + jnp.arange(t)
        visible = jnp.arange(max_length)[None, :] <= positions[:, None]  # (t, max_length)

        def layer(x: jax.Array, lp_kv: Any) -> tuple[jax.Array, Any]:
            lp, (kc, vc) = lp_kv
            a = lp["attention_block"]["attention"]
            h = rms_norm(x, lp["attention_block"]["norm"]["scale"], eps)
            q = rope(jnp.einsum("btd,dhk->bthk", h, a["wq"]), positions, c.rope_theta)
            k = rope(jnp.einsum("btd,dhk->bthk", h, a["wk"]), positions, c.rope_theta)
            v = jnp.einsum("btd,dhk->bthk", h, a["wv"])
            kc = jax.lax.dynamic_update_slice(kc, k, (0, pos, 0, 0))
            vc = jax.lax.dynamic_update_slice(vc, v, (0, pos, 0, 0))
            q = q.reshape(batch, t, kv, heads // kv, hd)
            s = jnp.einsum("btgrk,bsgk->bgrts", q, kc) / np.sqrt(hd)
            s = jnp.where(visible, s, -jnp.inf)
            o = jnp.einsum("bgrts,bsgk->btgrk", jax.nn.softmax(s, axis=-1), vc)
            x = x + jnp.einsum("bthk,hkd->btd", o.reshape(batch, t, heads, hd), a["wo"])
            m = lp["mlp_block"]
            h = rms_norm(x, m["norm"]["scale"], eps)
            g = jax.nn.silu(h @ m["gate_up"]["gate"]["w"]) * (h @ m["gate_up"]["up"]["w"])
            return x + g @ m["down"]["w"], (kc, vc)

        x, cache = jax.lax.scan(layer, x, (p["layers"], cache))
        h = rms_norm(x[:, -1], p["norm"]["scale"], eps)
        return h @ p["lm_head"]["w"], cache

    @jax.jit
    def run(p: Any, prompt: jax.Array) -> jax.Array:
        batch, length = prompt.shape
        shape = (c.num_layers, batch, max_length, kv, hd)
        cache = (jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32))
        logits, cache = forward(p, prompt, cache, jnp.asarray(0))
        first = jnp.argmax(logits, axis=-1).astype(prompt.dtype)

        def step(carry: Any, _: None) -> tuple[Any, jax.Array]:
            token, cache, pos = carry
            logits, cache = forward(p, token[:, None], cache, pos)
            nxt = jnp.argmax(logits, axis=-1).astype(prompt.dtype)
            return (nxt, cache, pos + 1), nxt

        _, rest = jax.lax.scan(step, (first, cache, jnp.asarray(length)), None, length=new - 1)
        return jnp.concatenate([prompt, first[:, None], rest.T], axis=1)

    return run


def timed(fn: Callable[[], Any], calls: int = 1) -> Callable[[], float]:
    """Seconds per call of ``fn``, over ``calls`` calls."""

    def go() -> float:
        start = time.perf_counter()
        for _ in range(calls):
            out = fn()
        jax.block_until_ready(out)
        return (time.perf_counter() - start) / calls

    return go


def decode_context(c: LlamaConfig, context: int, new: int, rounds: int) -> dict[str, Any]:
    """Both decoders on one prompt of ``context - new`` tokens: tokens/s of each for the prefill
    and ``new`` tokens, and each one's prefill alone (``new=1``) in ms; medians."""
    model = Llama(c)
    prompt = jax.random.randint(jax.random.key(2), (1, context - new), 0, c.vocab_size)
    params = model.init(jax.random.key(3), prompt)
    key = jax.random.key(0)
    pure, pure_1 = pure_jax_decode(c, new, context), pure_jax_decode(c, 1, context)

    def ours(n: int = new) -> jax.Array:
        return nn.generate(model, params, prompt, n, key=key, temperature=0, max_length=context)

    a, b = ours(), pure(params, prompt)
    if a.shape != b.shape or not bool(jnp.all(a == b)):
        raise AssertionError(
            f"bench_lm: nn.generate and the pure-JAX loop disagree at context {context}:\n"
            f"{a[0, -new:].tolist()}\n{b[0, -new:].tolist()}"
        )
    med = interleaved_medians(
        {
            "nn.generate": timed(ours, 3),
            "pure JAX": timed(lambda: pure(params, prompt), 3),
            "nn.generate prefill": timed(lambda: ours(1), 3),
            "pure JAX prefill": timed(lambda: pure_1(params, prompt), 3),
        },
        rounds,
    )
    return {"context": context, "prompt": context - new, "new": new, "same": True,
            "generate": new / med["nn.generate"], "pure": new / med["pure JAX"],
            "generate prefill": med["nn.generate prefill"] * 1e3,
            "pure prefill": med["pure JAX prefill"] * 1e3}  # fmt: skip


def bench_decode(size: dict[str, Any], rounds: int) -> list[dict[str, Any]]:
    return [decode_context(config(size), n, size["new"], rounds) for n in size["contexts"]]


# ---------------------------------------------------------------------------------------- report


def mb(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.1f} MiB"


def table(size_name: str, size: dict[str, Any], rounds: int, train: Any, decode: Any) -> str:
    c = config(size)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        f"Llama d={c.hidden_size}, {c.num_layers} layers, {c.num_heads} heads / {c.kv_heads} kv, "
        f"intermediate {c.intermediate_size}, vocab {c.vocab_size} (size `{size_name}`); "
        f"{rounds} interleaved rounds, medians. jax {jax.__version__}, jaxlib {jaxlib.__version__}, "
        f"{jax.default_backend()} ({jax.devices()[0].device_kind}, {os.cpu_count()} cores, "
        f"{platform.machine()}), load average {load:.1f}, {datetime.date.today().isoformat()}.",
        "",
    ]
    if train:
        lines += [
            f"Training step, batch {size['batch']} x {size['length']} tokens, adam:",
            "",
            "| variant | tokens/s | vs full | temp_bytes | peak_bytes |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        lines += [
            f"| {r['variant']} | {r['tokens/s']:,.0f} | {r['ratio']:.2f}x | {mb(r['temp'])} | "
            f"{mb(r['peak'])} |"
            for r in train
        ]
        lines.append("")
    if decode:
        lines += [
            "Greedy cached decoding, batch 1, one call = prefill + new tokens:",
            "",
            "| context | prompt | new | nn.generate tokens/s | pure JAX tokens/s | ratio "
            "| prefill ms, nn.generate / pure JAX | same tokens |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]  # fmt: skip
        lines += [
            f"| {r['context']} | {r['prompt']} | {r['new']} | {r['generate']:,.1f} | "
            f"{r['pure']:,.1f} | {r['generate'] / r['pure']:.2f}x | {r['generate prefill']:.1f} / "
            f"{r['pure prefill']:.1f} | {'yes' if r['same'] else 'NO'} |"
            for r in decode
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", choices=("train", "decode"), help="one half of the benchmark")
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    train = bench_train(size, args.rounds) if args.only in (None, "train") else []
    decode = bench_decode(size, args.rounds) if args.only in (None, "decode") else []
    text = table(args.size, size, args.rounds, train, decode)
    print(text)
    return text


if __name__ == "__main__":
    main()
