"""Scale figures: compile time of serial vs repeat, peak memory with and without remat, and data parallel.

Usage: .venv/bin/python scripts/bench_scale.py [--rounds 3] [--skip-slow] [--json out.json]
Prints markdown tables; docs/scaling.md quotes a full run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time

# Eight simulated CPU devices for the data-parallel part; set before JAX starts.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import jax
import jax.numpy as jnp
import optax

from funcgrad import inspect, losses, nn, parallel, train


def mlp_layers(depth: int) -> list[nn.Layer]:
    return [nn.serial(nn.Dense(256), nn.tanh) for _ in range(depth)]


def transformer_block() -> nn.Layer:
    """Pre-norm: x + attention(norm(x)), then x + mlp(norm(x)); d=256, 4 heads."""
    return nn.serial(
        nn.residual(nn.LayerNorm(), nn.MultiHeadAttention(num_heads=4)),
        nn.residual(nn.LayerNorm(), nn.Dense(1024), nn.gelu, nn.Dense(256)),
    )


def build(kind: str, depth: int, how: str) -> tuple[nn.Layer, jax.Array]:
    if kind == "mlp":
        x = jnp.zeros((32, 256), jnp.float32)
        blocks = mlp_layers(depth) if how == "serial" else [nn.serial(nn.Dense(256), nn.tanh)]
    else:
        x = jnp.zeros((8, 128, 256), jnp.float32)
        blocks = [transformer_block() for _ in range(depth if how == "serial" else 1)]
    model = nn.serial(*blocks) if how == "serial" else nn.repeat(blocks[0], depth)
    return model, x


def compile_seconds(kind: str, depth: int, how: str) -> float:
    """Trace, lower and compile one Adam training step, from nothing (no caches)."""
    model, x = build(kind, depth, how)
    params = jax.eval_shape(model.init, jax.random.key(0), x)
    opt = optax.adam(1e-3)
    opt_state = jax.eval_shape(opt.init, params)

    def loss(p: dict, batch: jax.Array) -> jax.Array:
        return jnp.mean(model.apply(p, batch) ** 2)

    step = train.make_step(loss, opt)
    start = time.perf_counter()
    step.lower(params, opt_state, x).compile()
    return time.perf_counter() - start


def compile_table(rounds: int, skip_slow: bool) -> list[dict]:
    rows = []
    cases = [("mlp", d) for d in (8, 32, 128)] + [("transformer", d) for d in (4, 16, 48)]
    for kind, depth in cases:
        row: dict = {"model": kind, "depth": depth}
        for how in ("serial", "repeat"):
            if skip_slow and how == "serial" and kind == "transformer" and depth == 48:
                row[how] = None
                continue
            times = []
            for _ in range(rounds):
                t = compile_seconds(kind, depth, how)
                times.append(t)
                if t > 20:  # one measurement of a minute-long compile is enough
                    break
            row[how] = statistics.median(times)
        row["ratio"] = row["serial"] / row["repeat"] if row["serial"] else None
        rows.append(row)
        print(f"  {kind} {depth}: {row}", file=sys.stderr, flush=True)
    return rows


def memory_table() -> list[dict]:
    """XLA's temporaries for one training step of a 64-layer MLP, width 256, batch 4096."""
    x = jnp.zeros((4096, 256), jnp.float32)
    layer = nn.serial(nn.Dense(256), nn.tanh)
    variants = {
        "repeat": nn.repeat(layer, 64),
        "repeat, remat": nn.repeat(nn.remat(layer), 64),
        "serial": nn.serial(*[nn.serial(nn.Dense(256), nn.tanh) for _ in range(64)]),
        "serial, remat per layer": nn.serial(
            *[nn.remat(nn.serial(nn.Dense(256), nn.tanh)) for _ in range(64)]
        ),
        "serial, remat per 8 layers": nn.serial(
            *[
                nn.remat(nn.serial(*[nn.serial(nn.Dense(256), nn.tanh) for _ in range(8)]))
                for _ in range(8)
            ],
        ),
    }
    rows = []
    for name, model in variants.items():
        params = jax.eval_shape(model.init, jax.random.key(0), x)
        opt = optax.sgd(0.1)
        loss = lambda p, b, model=model: jnp.mean(model.apply(p, b) ** 2)
        step = train.make_step(loss, opt)
        args = (params, jax.eval_shape(opt.init, params), x)
        cost = inspect.cost(step, *args)
        hlo = step.lower(*args).compile().as_text()
        rows.append(
            {
                "variant": name,
                "temp_MiB": cost.temp_bytes / 2**20 if cost.temp_bytes is not None else None,
                "flops_G": cost.flops / 1e9 if cost.flops else None,
                "dots_in_hlo": len(re.findall(r"\bdot\(", hlo)),
            }
        )
        print(f"  memory {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def data_parallel(rounds: int) -> dict:
    """One step of the 784-512-512-10 MLP at batch 128: one device against 8 simulated ones."""
    model = nn.serial(nn.Dense(512), nn.relu, nn.Dense(512), nn.relu, nn.Dense(10))
    x = jax.random.normal(jax.random.key(1), (128, 784))
    y = jnp.arange(128) % 10
    params = model.init(jax.random.key(0), x)
    loss = lambda p, b: losses.softmax_cross_entropy(model.apply(p, b[0]), b[1])
    opt = optax.adam(1e-3)
    out: dict = {"devices": len(jax.devices())}
    for name, mesh in (("one device", None), ("8 devices", parallel.mesh(data=8))):
        step = train.make_step(loss, opt, mesh=mesh)
        p = jax.tree.map(jnp.copy, params)
        o = opt.init(p)
        p, o, m = step(p, o, (x, y))
        first = float(m["loss"])
        times = []
        for _ in range(rounds):
            jax.block_until_ready(p)
            start = time.perf_counter()
            for _ in range(20):
                p, o, m = step(p, o, (x, y))
            jax.block_until_ready(p)
            times.append((time.perf_counter() - start) / 20 * 1e3)
        out[name] = {"first_loss": first, "ms_per_step": statistics.median(times)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--skip-slow", action="store_true", help="skip the 48-block unrolled compile"
    )
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, {os.cpu_count()} cores\n")

    compile_rows = compile_table(args.rounds, args.skip_slow)
    print("| model | depth | serial (s) | repeat (s) | serial / repeat |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in compile_rows:
        serial = "skipped" if r["serial"] is None else f"{r['serial']:.2f}"
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.1f}×"
        print(f"| {r['model']} | {r['depth']} | {serial} | {r['repeat']:.2f} | {ratio} |")
    base = next(r for r in compile_rows if r["model"] == "transformer" and r["depth"] == 4)
    deep = next(r for r in compile_rows if r["model"] == "transformer" and r["depth"] == 48)
    print(f"\nrepeat at 48 blocks / repeat at 4 blocks: {deep['repeat'] / base['repeat']:.2f}×\n")

    memory_rows = memory_table()
    print("| 64-layer MLP step, batch 4096 | temporaries (MiB) | GFLOP | dots in HLO |")
    print("| --- | ---: | ---: | ---: |")
    for r in memory_rows:
        print(f"| {r['variant']} | {r['temp_MiB']:.1f} | {r['flops_G']:.1f} | {r['dots_in_hlo']} |")

    dp = data_parallel(args.rounds)
    print("\n| 784-512-512-10, batch 128 | first loss | ms/step |")
    print("| --- | ---: | ---: |")
    for name in ("one device", "8 devices"):
        print(f"| {name} | {dp[name]['first_loss']:.6f} | {dp[name]['ms_per_step']:.2f} |")
    print("(8 simulated CPU devices share this machine's cores: the time says nothing of speed)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"compile": compile_rows, "memory": memory_rows, "data_parallel": dp}, f, indent=1
            )


if __name__ == "__main__":
    main()
