"""Training-loop speed: `fit` against the hand-written loop over `make_step` it replaces, and the fused loop.

Same model, data, batching and optimizer for every variant; interleaved rounds, medians, ratios to the
pure-JAX loop measured in the same round, and of each `fit` variant to the hand loop doing the same work
(with the NaN guard: `make_step` over `nan_guard(adam)`). `fit` includes its metrics and, unless
"no bar", its progress bar; its per-step time is (t(2N) − t(N)) / N, so that its compilation cancels out.

Usage: .venv/bin/python scripts/bench_train.py [--rounds 7] [--baseline COMMIT]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import bench_overhead as models  # the scripts folder is on sys.path
import jax
import jax.numpy as jnp
import numpy as np
import optax
from interleave import interleaved_medians

import funcgrad as fg

WORKLOADS = {
    "mlp-784-512-512-10/b128": ((784, 512, 512, 10), 128, 400),
    "mlp-2-16-16-1/b32": ((2, 16, 16, 1), 32, 20000),
}


def dataset(sizes: tuple[int, ...], batch: int) -> tuple[np.ndarray, np.ndarray]:
    n = batch * 50
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, sizes[0])).astype(np.float32)
    if sizes[-1] == 1:
        return x, rng.normal(size=(n, 1)).astype(np.float32)
    return x, rng.integers(0, sizes[-1], n).astype(np.int32)


def loop(
    step: Callable[..., Any], params: Any, opt_state: Any, data: Any, batch: int, steps: int
) -> float:
    """The loop a user writes by hand: shuffle each epoch, slice, step."""
    n = len(data[0])
    start = time.perf_counter()
    done, epoch = 0, 0
    while done < steps:
        order = np.random.default_rng(epoch).permutation(n)
        for b in range(n // batch):
            if done == steps:
                break
            idx = order[b * batch : (b + 1) * batch]
            params, opt_state, metrics = step(params, opt_state, (data[0][idx], data[1][idx]))
            done += 1
        epoch += 1
    jax.block_until_ready((params, metrics))
    return (time.perf_counter() - start) / steps


def fit_time(loss_fn: Any, params: Any, data: Any, batch: int, steps: int, **options: Any) -> float:
    def run(n: int) -> float:
        start = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):
            result = fg.train.fit(loss_fn, optax.adam(1e-3), params, data, key=jax.random.key(0),
                                  batch_size=batch, steps=n, **{"progress": True, **options})  # fmt: skip
        jax.block_until_ready(result.params)
        return time.perf_counter() - start

    return (run(2 * steps) - run(steps)) / steps


def worker(name: str, variant: str) -> None:
    """Print one variant's seconds per step as JSON; run in a subprocess over another tree's funcgrad."""
    sizes, batch, steps = WORKLOADS[name]
    loss_fn = models.funcgrad_model_loss(sizes)
    params = loss_fn.model.init(jax.random.key(0), jnp.zeros((1, sizes[0])))  # type: ignore[attr-defined]
    data = dataset(sizes, batch)
    if variant == "make_step":
        opt = optax.adam(1e-3)
        step = fg.train.make_step(loss_fn, opt)
        copy = lambda t: jax.tree.map(jnp.array, t)
        loop(step, copy(params), opt.init(params), data, batch, 10)  # compile
        seconds = loop(step, copy(params), opt.init(params), data, batch, steps)
    else:
        options = {"nan_guard": variant != "fit no guard"}
        seconds = fit_time(loss_fn, params, data, batch, steps, **options)
    print(json.dumps(seconds))


def in_tree(tree: str, name: str, variant: str) -> Callable[[], float]:
    """A variant timed in a fresh process that imports funcgrad from ``tree`` (another commit)."""

    def run() -> float:
        env = {**os.environ, "PYTHONPATH": tree}
        out = subprocess.run(
            [sys.executable, __file__, "--worker", name, variant],
            env=env, check=True, capture_output=True, text=True,
        )  # fmt: skip
        return float(json.loads(out.stdout.strip().splitlines()[-1]))

    return run


def bench_workload(
    name: str, sizes: tuple[int, ...], batch: int, steps: int, rounds: int, baseline: str | None
) -> None:
    """Time every variant on one workload, interleaved round by round; print medians and ratios."""
    opt = optax.adam(1e-3)
    guarded = fg.train.nan_guard(opt)
    loss_fn = models.funcgrad_model_loss(sizes)
    params = loss_fn.model.init(jax.random.key(0), jnp.zeros((1, sizes[0])))  # type: ignore[attr-defined]
    data = dataset(sizes, batch)
    steps_fg = fg.train.make_step(loss_fn, opt)
    steps_guarded = fg.train.make_step(loss_fn, guarded)
    steps_jax = models.pure_jax_step(sizes, opt)
    copy = lambda t: jax.tree.map(jnp.array, t)
    variants: dict[str, Callable[[], float]] = {
        "pure JAX": lambda s=steps_jax: loop(s, copy(params), opt.init(params), data, batch, steps),
        "make_step": lambda s=steps_fg: loop(s, copy(params), opt.init(params), data, batch, steps),
        "make_step+guard": lambda s=steps_guarded: loop(
            s, copy(params), guarded.init(params), data, batch, steps
        ),
        "fit": lambda: fit_time(loss_fn, params, data, batch, steps),
        "fit no bar": lambda: fit_time(loss_fn, params, data, batch, steps, progress=False),
        "fit no guard": lambda: fit_time(loss_fn, params, data, batch, steps, nan_guard=False),
        "fit no guard, no bar": lambda: fit_time(
            loss_fn, params, data, batch, steps, nan_guard=False, progress=False
        ),
    }
    if sizes[0] == 2:
        k = 100
        multi = fg.train.make_multistep(loss_fn, guarded, k)
        x, y = data
        block = (np.stack([x[:batch]] * k), np.stack([y[:batch]] * k))

        def fused(multi: Any = multi, block: Any = block) -> float:
            p, o = copy(params), guarded.init(params)
            start = time.perf_counter()
            for _ in range(steps // k):
                p, o, m = multi(p, o, block)
            jax.block_until_ready((p, m))
            return (time.perf_counter() - start) / (steps // k * k)

        variants["make_multistep k=100"] = fused
        variants["fit fused=100"] = lambda: fit_time(loss_fn, params, data, batch, steps, fused=k)
    if baseline is not None:
        for variant in ("make_step", "fit", "fit no guard"):
            variants[f"{variant} (before)"] = in_tree(baseline, name, variant)
    med = interleaved_medians(variants, rounds)
    base = med["pure JAX"]
    print(f"{name}: " + ", ".join(f"{k} {v * 1e6:.1f} ({v / base:.3f})" for k, v in med.items()))
    pairs = [
        ("fit", "make_step+guard"),
        ("fit no bar", "make_step+guard"),
        ("fit no guard", "make_step"),
        ("fit no guard, no bar", "make_step"),
        ("fit fused=100", "make_multistep k=100"),
        ("fit (before)", "make_step (before)"),
        ("fit no guard (before)", "make_step (before)"),
        ("fit", "fit (before)"),
        ("make_step", "make_step (before)"),
    ]
    for a, b in pairs:
        if a in med and b in med:
            print(f"  {a} / {b}: {med[a] / med[b]:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--baseline", metavar="COMMIT", help="also time make_step and fit of this commit (git)"
    )
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    baseline = None
    if args.baseline:
        baseline = tempfile.mkdtemp(prefix="funcgrad-baseline-")
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        subprocess.run(
            ["git", "-C", root, "worktree", "add", "--detach", baseline, args.baseline],
            check=True, capture_output=True,
        )  # fmt: skip
    print(f"jax {jax.__version__}, optax {optax.__version__}, backend {jax.default_backend()}, "
          f"{args.rounds} interleaved rounds, medians; us per step (ratio to pure JAX)")  # fmt: skip
    for name, (sizes, batch, steps) in WORKLOADS.items():
        bench_workload(name, sizes, batch, steps, args.rounds, baseline)
    if baseline is not None:
        subprocess.run(["git", "worktree", "remove", "--force", baseline], check=False)


if __name__ == "__main__":
    main()
