"""Training-loop speed: `make_step` against hand-written JAX, the NaN guard's cost, `fit` against the
loop over `make_step` it replaces, and the fused loop.

Same model, data, batching and optimizer for every variant; interleaved rounds, medians, ratios to the
pure-JAX loop measured in the same round. "make_step" is the documented `step(state, batch)` loop
without a guard; "make_step.arrays" the array form; "+guard" over `nan_guard(adam)`. `fit` runs its
default hooks (history, progress bar; "no bar": history only) and its NaN guard ("no guard": off), and
is compared with the make_step loop *without* a guard; its per-step time is (t(2N) − t(N)) / N, so
that its compilation cancels out. ``--baseline COMMIT`` also times make_step, make_step+guard and fit
of that commit, each in a fresh process, inside the same interleaved rounds.

Usage: .venv/bin/python scripts/bench_train.py [--rounds 7] [--only NAME] [--baseline COMMIT]
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


def _epochs(data: Any, batch: int, steps: int) -> Any:
    """The batches a user's hand loop slices: NumPy shuffle each epoch, fancy indexing."""
    n = len(data[0])
    done, epoch = 0, 0
    while done < steps:
        order = np.random.default_rng(epoch).permutation(n)
        for b in range(n // batch):
            if done == steps:
                return
            idx = order[b * batch : (b + 1) * batch]
            yield data[0][idx], data[1][idx]
            done += 1
        epoch += 1


def loop(
    step: Callable[..., Any], params: Any, opt_state: Any, data: Any, batch: int, steps: int
) -> float:
    """The loop a user writes by hand over the arrays: shuffle each epoch, slice, step."""
    start = time.perf_counter()
    for xy in _epochs(data, batch, steps):
        params, opt_state, metrics = step(params, opt_state, xy)
    jax.block_until_ready((params, metrics))
    return (time.perf_counter() - start) / steps


def state_loop(step: Any, state: Any, data: Any, batch: int, steps: int) -> float:
    """The same loop over make_step's documented form, ``state, metrics = step(state, batch)``."""
    start = time.perf_counter()
    for xy in _epochs(data, batch, steps):
        state, metrics = step(state, xy)
    jax.block_until_ready((state, metrics))
    return (time.perf_counter() - start) / steps


def fit_time(
    loss_fn: Any,
    params: Any,
    data: Any,
    batch: int,
    steps: int,
    *,
    bar: bool,
    guard: bool,
    **extra: Any,
) -> float:
    """``fit`` with its default hooks (``bar``: the progress bar too) and NaN guard (``guard``)."""
    new_api = hasattr(fg.train, "default_hooks")  # --baseline runs this in an older tree

    def run(n: int) -> float:
        if new_api:
            hooks = fg.train.default_hooks() if bar else [fg.train.LogMetrics()]
            options: dict[str, Any] = {"hooks": hooks, "nan_guard": guard}
        else:
            options = {"progress": bar, "nan_guard": guard}
        options.update(extra)
        start = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):
            result = fg.train.fit(loss_fn, optax.adam(1e-3), params, data, key=jax.random.key(0),
                                  batch_size=batch, steps=n, **options)  # fmt: skip
        jax.block_until_ready(result.params)
        return time.perf_counter() - start

    return (run(2 * steps) - run(steps)) / steps


def make_step_time(
    loss_fn: Any, params: Any, data: Any, batch: int, steps: int, guard: bool
) -> float:
    opt = fg.train.nan_guard(optax.adam(1e-3)) if guard else optax.adam(1e-3)
    step = fg.train.make_step(loss_fn, opt)
    fresh = lambda: fg.train.TrainState.create(
        jax.tree.map(jnp.copy, params), opt, key=jax.random.key(0)
    )
    state_loop(step, fresh(), data, batch, 10)  # compile
    return state_loop(step, fresh(), data, batch, steps)


def worker(name: str, variant: str, steps_: str) -> None:
    """Print one variant's seconds per step as JSON; run in a subprocess over another tree's funcgrad."""
    sizes, batch, _ = WORKLOADS[name]
    steps = int(steps_)
    loss_fn = models.funcgrad_model_loss(sizes)
    params = loss_fn.model.init(jax.random.key(0), jnp.zeros((1, sizes[0])))  # type: ignore[attr-defined]
    data = dataset(sizes, batch)
    if variant.startswith("make_step"):
        seconds = make_step_time(loss_fn, params, data, batch, steps, "guard" in variant)
    else:
        seconds = fit_time(loss_fn, params, data, batch, steps, bar="no bar" not in variant,
                           guard="no guard" not in variant)  # fmt: skip
    print(json.dumps(seconds))


def in_tree(tree: str, name: str, variant: str, steps: int) -> Callable[[], float]:
    """A variant timed in a fresh process that imports funcgrad from ``tree`` (another commit)."""

    def run() -> float:
        env = {**os.environ, "PYTHONPATH": tree}
        out = subprocess.run(
            [sys.executable, __file__, "--worker", name, variant, str(steps)],
            env=env, check=True, capture_output=True, text=True,
        )  # fmt: skip
        return float(json.loads(out.stdout.strip().splitlines()[-1]))

    return run


PAIRS = [
    ("make_step", "pure JAX"),
    ("make_step.arrays", "pure JAX"),
    ("make_step+guard", "make_step"),
    ("fit", "make_step"),
    ("fit no bar", "make_step"),
    ("fit no guard", "make_step"),
    ("fit fused=100", "make_multistep k=100"),
    ("make_step (before)", "pure JAX"),
    ("make_step+guard (before)", "make_step (before)"),
    ("fit (before)", "make_step (before)"),
    ("fit", "fit (before)"),
    ("make_step+guard", "make_step+guard (before)"),
]


def bench_workload(
    name: str, sizes: tuple[int, ...], batch: int, steps: int, rounds: int, baseline: str | None
) -> None:
    """Time every variant on one workload, interleaved round by round; print medians and ratios.

    "make_step" is the documented state-form loop; "fit" has its default hooks (history and
    progress bar) and NaN guard, and is compared with the make_step loop *without* a guard.
    """
    opt = optax.adam(1e-3)
    loss_fn = models.funcgrad_model_loss(sizes)
    params = loss_fn.model.init(jax.random.key(0), jnp.zeros((1, sizes[0])))  # type: ignore[attr-defined]
    data = dataset(sizes, batch)
    arrays = fg.train.make_step(loss_fn, opt, donate=True).arrays
    steps_jax = models.pure_jax_step(sizes, opt)
    copy = lambda t: jax.tree.map(jnp.array, t)
    fit_ = lambda **kw: lambda: fit_time(loss_fn, params, data, batch, steps, **kw)
    variants: dict[str, Callable[[], float]] = {
        "pure JAX": lambda: loop(steps_jax, copy(params), opt.init(params), data, batch, steps),
        "make_step": lambda: make_step_time(loss_fn, params, data, batch, steps, False),
        "make_step.arrays": lambda: loop(
            arrays, copy(params), opt.init(params), data, batch, steps
        ),
        "make_step+guard": lambda: make_step_time(loss_fn, params, data, batch, steps, True),
        "fit": fit_(bar=True, guard=True),
        "fit no bar": fit_(bar=False, guard=True),
        "fit no guard": fit_(bar=True, guard=False),
    }
    if sizes[0] == 2:
        k = 100
        guarded = fg.train.nan_guard(opt)
        multi = fg.train.make_multistep(loss_fn, guarded, k)
        x, y = data
        block = (np.stack([x[:batch]] * k), np.stack([y[:batch]] * k))

        def fused(multi: Any = multi, block: Any = block) -> float:
            state = fg.train.TrainState.create(params, guarded, key=jax.random.key(0))
            start = time.perf_counter()
            for _ in range(steps // k):
                state, m = multi(state, block)
            jax.block_until_ready((state, m))
            return (time.perf_counter() - start) / (steps // k * k)

        variants["make_multistep k=100"] = fused
        variants["fit fused=100"] = lambda: fit_time(
            loss_fn, params, data, batch, steps, bar=True, guard=True, fused=k
        )
    if baseline is not None:
        for variant in ("make_step", "make_step+guard", "fit"):
            variants[f"{variant} (before)"] = in_tree(baseline, name, variant, steps)
    med = interleaved_medians(variants, rounds)
    base = med["pure JAX"]
    print(f"{name}: " + ", ".join(f"{k} {v * 1e6:.1f} ({v / base:.3f})" for k, v in med.items()))
    for a, b in PAIRS:
        if a in med and b in med:
            print(f"  {a} / {b}: {med[a] / med[b]:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--only", metavar="NAME", help="one workload (a key of WORKLOADS)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the steps timed")
    parser.add_argument(
        "--baseline", metavar="COMMIT", help="also time make_step and fit of this commit (git)"
    )
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
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
        if args.only and args.only != name:
            continue
        bench_workload(name, sizes, batch, int(steps * args.scale), args.rounds, baseline)
    if baseline is not None:
        subprocess.run(["git", "worktree", "remove", "--force", baseline], check=False)


if __name__ == "__main__":
    main()
