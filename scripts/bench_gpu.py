"""A GPT-style training step on an accelerator: funcgrad against hand-written JAX and PyTorch.

12 pre-norm blocks, width 1024, 16 heads, sequence 1024, batch 8, bfloat16 compute on float32
parameters, Adam (every size configurable). Variants, in one run, timed in interleaved rounds:
  jax_einsum        pure JAX, attention by einsum + softmax (the logits materialised)
  jax_dpa           pure JAX, jax.nn.dot_product_attention (implementation="cudnn" on a GPU)
  jax_scan          pure JAX, the blocks' parameters stacked and run by a hand-written lax.scan
  jax_scan_unroll   the same, lax.scan(unroll=--unroll)
  fg_serial         funcgrad: nn.mixed_precision(nn.serial(block, ...)), attention by
                    nn.MultiHeadAttention as a user writes it (fused wherever funcgrad fuses it)
  fg_repeat         funcgrad: nn.mixed_precision(nn.repeat(block, L))
  fg_repeat_unroll  funcgrad: nn.repeat(block, L, unroll=--unroll)
  torch, torch_compile   PyTorch eager (SDPA, autocast, fused Adam on CUDA) and torch.compile,
                    when torch is importable
Every JAX variant uses the same jitted step (value_and_grad, optax.adam, donated state), so the
model is the only difference. Reports the median ms/step, the median per-round ratio to the best
pure-JAX variant (jax_dpa), first-call time (trace + compile + one step), TFLOP/s by the PaLM
count, and MFU against a bfloat16 matmul peak measured in the same run.

Usage:
  .venv/bin/python scripts/bench_gpu.py [--layers 12 --d 1024 --heads 16 --seq 1024 --batch 8]
      [--rounds 5 --steps 10 --unroll 2 --variants a,b --no-torch --out DIR]
  .venv/bin/python scripts/bench_gpu.py --quick    # tiny sizes; on CPU in well under 2 minutes
Writes DIR/bench_gpu.json and DIR/bench_gpu.png (default DIR: bench_results/).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
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

from funcgrad import nn

LR = 1e-4
VARIANTS = (
    "jax_einsum",
    "jax_dpa",
    "jax_scan",
    "jax_scan_unroll",
    "fg_serial",
    "fg_repeat",
    "fg_repeat_unroll",
    "torch",
    "torch_compile",
)
BASELINE = "jax_dpa"
# implementation= for jax.nn.dot_product_attention: None means XLA's lowering (jax 0.10 does not
# pick cuDNN by itself), so on a GPU `measure` asks for "cudnn" where a probe shows it works.
DPA_IMPL: list[str | None] = [None]


def cudnn_attention_works() -> bool:
    """Whether jax.nn.dot_product_attention(implementation="cudnn") compiles and runs here."""
    if jax.default_backend() != "gpu":
        return False
    q = jnp.ones((1, 128, 2, 64), jnp.bfloat16)
    try:
        f = jax.jit(lambda q: jax.nn.dot_product_attention(q, q, q, implementation="cudnn"))
        jax.block_until_ready(f(q))
    except Exception as e:  # no cuDNN, or a version without the fused kernel
        print(f"cuDNN attention unavailable ({type(e).__name__}: {e}); using XLA's", flush=True)
        return False
    return True


QUICK = {"layers": 2, "d": 64, "heads": 4, "seq": 32, "batch": 2, "rounds": 3, "steps": 2}
QUICK_PEAK_SIZE = 512


def flops_per_step(layers: int, d: int, seq: int, batch: int) -> float:
    """PaLM's model-FLOPs count: 6N per token for the 12·L·d² matmul weights, 12·L·d·s for attention."""
    return float(batch * seq * (72 * layers * d * d + 12 * layers * d * seq))


def matmul_peak(size: int) -> float:
    """bfloat16 matmul FLOP/s on the default device: the median of 10 timed calls."""
    a = jnp.ones((size, size), jnp.bfloat16)
    b = jnp.full((size, size), 0.5, jnp.bfloat16)
    f = jax.jit(lambda a, b: a @ b)
    f(a, b).block_until_ready()
    times = []
    for _ in range(10):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * size**3 / statistics.median(times)


# ------------------------------------------------------------------------------- pure JAX


def jax_block_params(key: jax.Array, d: int) -> dict:
    k = jax.random.split(key, 4)
    init = jax.nn.initializers.lecun_normal()
    return {
        "ln1": {"scale": jnp.ones(d), "bias": jnp.zeros(d)},
        "ln2": {"scale": jnp.ones(d), "bias": jnp.zeros(d)},
        "qkv": {"w": init(k[0], (d, 3 * d)), "b": jnp.zeros(3 * d)},
        "o": {"w": init(k[1], (d, d)), "b": jnp.zeros(d)},
        "fc1": {"w": init(k[2], (d, 4 * d)), "b": jnp.zeros(4 * d)},
        "fc2": {"w": init(k[3], (4 * d, d)), "b": jnp.zeros(d)},
    }


def layer_norm(v: jax.Array, p: dict) -> jax.Array:
    v32 = v.astype(jnp.float32)  # statistics in float32, as funcgrad's LayerNorm
    mean = v32.mean(-1, keepdims=True)
    var = jnp.square(v32 - mean).mean(-1, keepdims=True)
    y = (v32 - mean) * jax.lax.rsqrt(var + 1e-5)
    return (y * p["scale"].astype(jnp.float32) + p["bias"].astype(jnp.float32)).astype(v.dtype)


def jax_block(p: dict, v: jax.Array, heads: int, attention: str) -> jax.Array:
    b, t, d = v.shape
    p = jax.tree.map(lambda a: a.astype(jnp.bfloat16), p)
    u = layer_norm(v, p["ln1"])
    qkv = (u @ p["qkv"]["w"] + p["qkv"]["b"]).reshape(b, t, 3, heads, d // heads)
    q, k, vv = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if attention == "dpa":  # cuDNN's fused kernel on a GPU, XLA's lowering elsewhere
        a = jax.nn.dot_product_attention(q, k, vv, is_causal=True, implementation=DPA_IMPL[0])
    else:
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(d // heads)
        logits = jnp.where(jnp.tril(jnp.ones((t, t), bool)), logits, -jnp.inf)
        a = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, -1).astype(vv.dtype), vv)
    v = v + a.reshape(b, t, d) @ p["o"]["w"] + p["o"]["b"]
    u = layer_norm(v, p["ln2"])
    u = jax.nn.gelu(u @ p["fc1"]["w"] + p["fc1"]["b"], approximate=False)
    return v + u @ p["fc2"]["w"] + p["fc2"]["b"]


def pure_jax(variant: str, cfg: argparse.Namespace) -> tuple[Any, Callable[..., Any]]:
    """Parameters and ``forward(params, x) -> y`` of a pure-JAX variant."""
    keys = jax.random.split(jax.random.key(0), cfg.layers)
    blocks = [jax_block_params(k, cfg.d) for k in keys]
    attention = "einsum" if variant == "jax_einsum" else "dpa"
    if not variant.startswith("jax_scan"):

        def forward(params: list, x: jax.Array) -> jax.Array:
            v = x.astype(jnp.bfloat16)
            for p in params:
                v = jax_block(p, v, cfg.heads, attention)
            return v.astype(jnp.float32)

        return blocks, forward
    unroll = cfg.unroll if variant == "jax_scan_unroll" else 1
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *blocks)

    def scanned(params: dict, x: jax.Array) -> jax.Array:
        body = lambda v, p: (jax_block(p, v, cfg.heads, attention), None)
        v, _ = jax.lax.scan(body, x.astype(jnp.bfloat16), params, unroll=unroll)
        return v.astype(jnp.float32)

    return stacked, scanned


# ------------------------------------------------------------------------------- funcgrad


def funcgrad_model(variant: str, cfg: argparse.Namespace) -> nn.Layer:
    """The same blocks as a funcgrad user writes them; bfloat16 by the one-line policy."""

    def block() -> nn.Layer:
        return nn.serial(
            nn.residual(nn.LayerNorm(), nn.MultiHeadAttention(num_heads=cfg.heads, causal=True)),
            nn.residual(nn.LayerNorm(), nn.Dense(4 * cfg.d), nn.gelu, nn.Dense(cfg.d)),
        )

    if variant == "fg_serial":
        model: nn.Layer = nn.serial(*[block() for _ in range(cfg.layers)])
    elif variant == "fg_repeat":
        model = nn.repeat(block(), cfg.layers)
    else:
        model = nn.repeat(block(), cfg.layers, unroll=cfg.unroll)
    return nn.mixed_precision(model)


def jax_runner(variant: str, cfg: argparse.Namespace, x: jax.Array, y: jax.Array) -> Callable:
    """One training step per call, returning the loss (not yet synchronised)."""
    if variant.startswith("fg_"):
        model = funcgrad_model(variant, cfg)
        params: Any = model.init(jax.random.key(0), x)
        forward: Callable[..., Any] = model.apply
    else:
        params, forward = pure_jax(variant, cfg)
    opt = optax.adam(LR)

    def loss_fn(p: Any, x: jax.Array, y: jax.Array) -> jax.Array:
        return jnp.mean(jnp.square(forward(p, x) - y))

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(p: Any, o: Any, x: jax.Array, y: jax.Array) -> tuple[Any, Any, jax.Array]:
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        updates, o = opt.update(g, o, p)
        return optax.apply_updates(p, updates), o, loss

    state = [params, opt.init(params)]

    def run() -> Any:
        state[0], state[1], loss = step(state[0], state[1], x, y)
        return loss

    return run


# ------------------------------------------------------------------------------- PyTorch


def torch_runner(compiled: bool, cfg: argparse.Namespace, x: jax.Array, y: jax.Array) -> Callable:
    import torch
    import torch.nn.functional as F
    from torch import nn as tnn

    device = "cuda" if torch.cuda.is_available() else "cpu"
    d, heads = cfg.d, cfg.heads

    class Block(tnn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1, self.ln2 = tnn.LayerNorm(d), tnn.LayerNorm(d)
            self.qkv, self.o = tnn.Linear(d, 3 * d), tnn.Linear(d, d)
            self.fc1, self.fc2 = tnn.Linear(d, 4 * d), tnn.Linear(4 * d, d)

        def forward(self, v: Any) -> Any:
            b, t, _ = v.shape
            qkv = self.qkv(self.ln1(v)).view(b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=True)
            v = v + self.o(a.transpose(1, 2).reshape(b, t, d))
            return v + self.fc2(F.gelu(self.fc1(self.ln2(v))))

    model = tnn.Sequential(*[Block() for _ in range(cfg.layers)]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=LR, fused=device == "cuda")
    tx = torch.from_numpy(np.array(x)).to(device)
    ty = torch.from_numpy(np.array(y)).to(device)
    fwd = torch.compile(model) if compiled else model

    def run() -> Any:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16):
            out = fwd(tx)
        loss = F.mse_loss(out.float(), ty)
        loss.backward()
        opt.step()
        return loss

    return run


def sync(out: Any) -> None:
    if hasattr(out, "block_until_ready"):
        out.block_until_ready()
    else:  # a torch tensor: reading it waits for the device
        float(out.detach())


# ------------------------------------------------------------------------------- the run


def measure(cfg: argparse.Namespace) -> dict[str, Any]:
    """Build, compile and time every variant; the figures as a JSON-ready dict."""
    device = jax.devices()[0]
    result: dict[str, Any] = {
        "config": {k: v for k, v in vars(cfg).items() if k not in ("out", "variants")},
        "jax": jax.__version__,
        "backend": device.platform,
        "device": device.device_kind,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    DPA_IMPL[0] = "cudnn" if cudnn_attention_works() else None
    result["dot_product_attention"] = DPA_IMPL[0] or "xla"
    peak = matmul_peak(QUICK_PEAK_SIZE if cfg.quick else cfg.peak_size)
    flops = flops_per_step(cfg.layers, cfg.d, cfg.seq, cfg.batch)
    result.update(bf16_matmul_peak_tflops=peak / 1e12, tflop_per_step=flops / 1e12)
    print(f"{device.platform} ({device.device_kind}), jax {jax.__version__}; "
          f"bf16 matmul peak {peak / 1e12:.3g} TFLOP/s", flush=True)  # fmt: skip
    rng = np.random.default_rng(0)
    shape = (cfg.batch, cfg.seq, cfg.d)
    x = jnp.asarray(rng.standard_normal(shape, dtype=np.float32))
    y = jnp.asarray(rng.standard_normal(shape, dtype=np.float32))

    runners: dict[str, Callable[[], Any]] = {}
    rows: dict[str, dict[str, Any]] = {}
    for v in cfg.variants:
        start = time.perf_counter()
        try:
            if v.startswith("torch"):
                import torch

                result["torch"] = torch.__version__
                run = torch_runner(v == "torch_compile", cfg, x, y)
            else:
                run = jax_runner(v, cfg, x, y)
            sync(run())
        except Exception as e:  # one variant failing (no compiler for torch.compile) is reported
            rows[v] = {"error": f"{type(e).__name__}: {e}"[:500]}
            print(f"  {v}: failed: {rows[v]['error']}", flush=True)
            continue
        rows[v] = {"first_call_s": time.perf_counter() - start}
        runners[v] = run
        print(f"  {v}: first call {rows[v]['first_call_s']:.2f} s", flush=True)

    times: dict[str, list[float]] = {v: [] for v in runners}
    for r in range(cfg.rounds):  # every variant once a round, the order reversed every other
        for v in list(runners) if r % 2 == 0 else list(reversed(runners)):
            sync(runners[v]())
            t = time.perf_counter()
            for _ in range(cfg.steps):
                out = runners[v]()
            sync(out)
            times[v].append((time.perf_counter() - t) / cfg.steps)
    base = BASELINE if BASELINE in times else next(iter(times), None)
    for v, ts in times.items():
        median = statistics.median(ts)
        rows[v].update(
            ms=[t * 1e3 for t in ts],
            median_ms=median * 1e3,
            ratio=statistics.median([t / b for t, b in zip(ts, times[base], strict=True)]),
            tflops=flops / median / 1e12,
            mfu=flops / median / peak,
        )
    result.update(baseline=base, variants=rows)
    return result


def table(result: dict[str, Any]) -> str:
    c = result["config"]
    lines = [
        f"GPT-style step: {c['layers']} blocks, width {c['d']}, {c['heads']} heads, seq {c['seq']}, "
        f"batch {c['batch']}; bf16 compute, f32 params, Adam; {result['tflop_per_step']:.3g} "
        f"TFLOP/step; {result['backend']} ({result['device']}), jax {result['jax']}; bf16 matmul "
        f"peak {result['bf16_matmul_peak_tflops']:.3g} TFLOP/s; unroll={c['unroll']}; "
        f"jax_dpa attention: {result['dot_product_attention']}",
        "",
        f"| variant | ms/step | vs {result['baseline']} | first call (s) | TFLOP/s | MFU |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for v, row in result["variants"].items():
        if "error" in row:
            lines.append(f"| {v} | failed: {row['error'][:80]} | | | | |")
        else:
            lines.append(
                f"| {v} | {row['median_ms']:.2f} | {row['ratio']:.2f} | "
                f"{row['first_call_s']:.2f} | {row['tflops']:.3g} | {row['mfu']:.1%} |"
            )
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = {v: r for v, r in result["variants"].items() if "error" not in r}
    names = list(ok)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.45 * len(names) + 1.8), sharey=True)
    left.barh(names, [ok[v]["median_ms"] for v in names], color="tab:blue")
    left.set_xlabel("ms per training step (median)")
    right.barh(names, [ok[v]["first_call_s"] for v in names], color="tab:orange")
    right.set_xlabel("first call: trace + compile + one step (s)")
    left.invert_yaxis()
    for v_index, v in enumerate(names):
        left.text(ok[v]["median_ms"], v_index, f" {ok[v]['mfu']:.0%} MFU", va="center", fontsize=8)
    c = result["config"]
    fig.suptitle(
        f"GPT-style step L={c['layers']} d={c['d']} s={c['seq']} b={c['batch']} on "
        f"{result['device']} (jax {result['jax']})",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10, help="steps timed per variant per round")
    ap.add_argument("--unroll", type=int, default=2, help="for jax_scan_unroll, fg_repeat_unroll")
    ap.add_argument("--peak-size", type=int, default=8192, help="matmul size for the bf16 peak")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--no-torch", action="store_true", help="leave out the PyTorch variants")
    ap.add_argument("--quick", action="store_true", help=f"tiny sizes for CPU and CI: {QUICK}")
    ap.add_argument("--out", default="bench_results", help="folder for the JSON and the PNG")
    cfg = ap.parse_args(argv)
    if cfg.quick:
        for k, v in QUICK.items():
            if f"--{k}" not in (argv if argv is not None else sys.argv):
                setattr(cfg, k, v)
    variants = [v for v in cfg.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    if cfg.no_torch:
        variants = [v for v in variants if not v.startswith("torch")]
    else:
        try:
            import torch  # noqa: F401
        except ImportError:
            print("torch is not importable: the PyTorch variants are left out", flush=True)
            variants = [v for v in variants if not v.startswith("torch")]
    cfg.variants = variants
    return cfg


def main(argv: list[str] | None = None) -> None:
    cfg = parse(argv)
    result = measure(cfg)
    text = table(result)
    print("\n" + text)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_gpu.json").write_text(json.dumps(result, indent=1))
    (out / "bench_gpu.md").write_text(text + "\n")
    plot(result, out / "bench_gpu.png")
    print(f"\nwrote {out / 'bench_gpu.json'}, {out / 'bench_gpu.md'} and {out / 'bench_gpu.png'}")


if __name__ == "__main__":
    main()
