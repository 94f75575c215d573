"""A character-level (byte-level) transformer language model trained from a grain pipeline over
text files on disk, with checkpoints that resume from the same example.

The data never sits in memory as a whole: a grain `RandomAccessDataSource` reads each window of
`--context` + 1 bytes from the files through `mmap` when it is asked for, and the pipeline
shuffles the windows (a new order each epoch), repeats and batches them. `fg.train.fit` trains
the model of examples/char_transformer.py on it, with a `Checkpoint` hook that saves the
pipeline's position (grain's `get_state()`) beside the parameters, and a progress bar.

The files are a few modules of Python's own standard library (nothing to download), copied into
`--dir`/texts the first time. Checkpoints go to `--dir`/checkpoints: run the script again with the
same `--dir` and a larger `--steps` and it continues where it stopped. `--demo-resume` shows it
exact: it trains half the steps, stops, resumes in a fresh `fit` to `--steps`, then trains the
same run without a break in another folder and compares the parameters bitwise.

Sizes and times (CPU, 2 cores): the default (--width 64 --layers 2 --context 64, 300 steps of
32 windows) takes about half a minute, the loss falling from ln(256) = 5.5 to about 1.5;
`--steps 20 --width 32 --layers 1 --heads 2 --context 32 --batch 8` (what the tests run) takes
seconds.

Run: python examples/char_grain.py [--dir char_grain_run] [--steps 300] [--demo-resume]
"""

import argparse
import bisect
import inspect
import json
import mmap
import os
import tempfile
import textwrap
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
from char_transformer import transformer  # the model of examples/char_transformer.py

import funcgrad as fg
from funcgrad import losses

MODULES = [argparse, textwrap, json.decoder, json.encoder, inspect, tempfile]


class FileWindows(grain.sources.RandomAccessDataSource):
    """Every ``stride``-th window of ``length`` bytes of each file, read from disk when asked for."""

    def __init__(self, paths: list[Path], length: int, stride: int) -> None:
        self.paths, self.length, self.stride = paths, length, stride
        counts = [max(0, (p.stat().st_size - length) // stride + 1) for p in paths]
        self.starts = np.cumsum([0, *counts]).tolist()  # window index where each file begins
        self.maps: dict[int, mmap.mmap] = {}

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, index: int) -> np.ndarray:
        file = bisect.bisect_right(self.starts, index) - 1
        if file not in self.maps:
            with open(self.paths[file], "rb") as f:
                self.maps[file] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        offset = (index - self.starts[file]) * self.stride
        return np.frombuffer(self.maps[file][offset : offset + self.length], np.uint8)


def pipeline(paths: list[Path], context: int, batch: int) -> grain.IterDataset:
    """Windows of ``context + 1`` bytes as int32 tokens, shuffled anew each epoch, in batches."""
    windows = FileWindows(paths, context + 1, max(1, context // 2))
    dataset = grain.MapDataset.source(windows).shuffle(seed=0).repeat()
    dataset = dataset.map(lambda w: w.astype(np.int32)).batch(batch, drop_remainder=True)
    return dataset.to_iter_dataset()


class StopAt(fg.train.Hook):
    """Stop the run after ``every`` steps, as an interruption would (the checkpoint saves it)."""

    def __init__(self, step: int) -> None:
        self.every = step

    def after_step(self, run: fg.train.Run) -> None:
        run.stop(f"interrupted at step {run.step}")


def train(args: argparse.Namespace, paths: list[Path], checkpoints: Path, stop: int = 0):
    model = transformer(256, args.width, args.layers, args.heads)  # over the 256 byte values
    params = model.init(jax.random.key(0), jnp.zeros((1, args.context), jnp.int32))

    def loss_fn(params, batch):
        logits = model.apply(params, batch[:, :-1])
        return losses.softmax_cross_entropy(logits, batch[:, 1:])

    hooks = [
        fg.train.LogMetrics(max(1, args.steps // 10)),
        fg.train.Checkpoint(checkpoints, max(1, args.steps // 4), keep=2),
        *([StopAt(stop)] if stop else []),
        fg.train.Progress(),
    ]
    result = fg.train.fit(
        loss_fn, optax.adamw(3e-3), params, pipeline(paths, args.context, args.batch),
        key=jax.random.key(1), steps=args.steps, hooks=hooks, prefetch=2,
    )  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Train a byte-level transformer from a grain pipeline over files on disk, "
        "with checkpoints that resume from the same example.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--dir", type=Path, default=Path("char_grain_run"),
                        help="the texts and checkpoints; rerun with the same --dir to continue")  # fmt: skip
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps in all")
    parser.add_argument("--batch", type=int, default=32, help="windows per step")
    parser.add_argument("--context", type=int, default=64, help="bytes the model reads at once")
    parser.add_argument("--width", type=int, default=64, help="features per position")
    parser.add_argument("--layers", type=int, default=2, help="transformer blocks")
    parser.add_argument("--heads", type=int, default=2, help="attention heads; divide --width")
    parser.add_argument("--demo-resume", action="store_true",
                        help="stop halfway, resume, and compare with an unbroken run")  # fmt: skip
    args = parser.parse_args()

    texts = args.dir / "texts"
    texts.mkdir(parents=True, exist_ok=True)
    paths = []
    for module in MODULES:
        path = texts / f"{module.__name__}.py"
        if not path.exists():
            path.write_bytes(inspect.getsource(module).encode())
        paths.append(path)
    size = sum(p.stat().st_size for p in paths)
    windows = len(FileWindows(paths, args.context + 1, max(1, args.context // 2)))
    print(f"{len(paths)} files, {size:,} bytes on disk, {windows:,} windows")

    if args.demo_resume:
        first = train(args, paths, args.dir / "checkpoints", stop=args.steps // 2)
        print(f"stopped: {first.stopped}")
    result = train(args, paths, args.dir / "checkpoints")
    losses_logged = result.history["loss"]
    print(f"final loss after {result.step} steps: {losses_logged[-1]:.3f} "
          f"(first logged {losses_logged[0]:.3f})")  # fmt: skip
    if args.demo_resume:
        with tempfile.TemporaryDirectory() as other:
            straight = train(args, paths, Path(other))
        same = all(
            np.array_equal(a, b)
            for a, b in zip(
                jax.tree.leaves(result.params), jax.tree.leaves(straight.params), strict=True
            )
        )
        print(f"resumed run equals the unbroken run bitwise: {same}")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
