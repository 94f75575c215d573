"""A character-level transformer language model, trained on Python's own `argparse` source (shipped
with Python, nothing to download), then sampled with a key/value cache by `nn.generate`.

The model: token embedding, `--layers` pre-norm blocks (causal self-attention with rotary
positions and grouped-query heads, then an MLP), a final norm and a projection to the
characters. `fg.train.fit` trains it on random windows of the text to predict each next
character. The script prints the loss before and after training and a few samples.

Run: python examples/char_transformer.py [--steps 1500] [--width 128] [--layers 4]
(CI runs it with a few steps and a tiny width.)
"""

import argparse
import inspect
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import funcgrad as fg
from funcgrad import losses, nn


def transformer(vocab: int, width: int, layers: int, heads: int) -> nn.Layer:
    block = nn.serial(
        nn.residual(
            nn.LayerNorm(),
            nn.MultiHeadAttention(heads, num_kv_heads=heads // 2, causal=True, rope=True),
        ),
        nn.residual(nn.LayerNorm(), nn.Dense(4 * width), nn.gelu, nn.Dense(width)),
    )
    return nn.serial(
        nn.Embedding(vocab, width), nn.repeat(block, layers), nn.LayerNorm(), nn.Dense(vocab)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="train a character-level transformer")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()

    # The text and its characters: every distinct character is a token.
    text = inspect.getsource(argparse)
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in text], np.int32)
    # Windows of context + 1 characters: the model reads the first `context`, predicts the next.
    windows = np.lib.stride_tricks.sliding_window_view(ids, args.context + 1)[:: args.context // 2]
    print(f"{len(text)} characters, {len(chars)} distinct, {len(windows)} training windows")

    model = transformer(len(chars), args.width, args.layers, args.heads)
    params = model.init(jax.random.key(0), windows[:1, :-1])

    def loss_fn(params, batch):
        logits = model.apply(params, batch[:, :-1])
        return losses.softmax_cross_entropy(logits, batch[:, 1:])

    probe, evaluate = jnp.asarray(windows[:256]), jax.jit(loss_fn)
    print(f"loss before training: {float(evaluate(params, probe)):.3f}")
    start = time.perf_counter()
    result = fg.train.fit(
        loss_fn, optax.adamw(3e-3), params, windows,
        key=jax.random.key(1), batch_size=args.batch, steps=args.steps, hooks=[],
    )  # fmt: skip
    params = result.params
    print(f"loss after {args.steps} steps: {float(evaluate(params, probe)):.3f} "
          f"({time.perf_counter() - start:.1f} s)")  # fmt: skip

    # Sampling: the prompt fills the cache once, then each new character is one cached step.
    prompt = jnp.asarray([[chars.index(c) for c in "def parse_"]] * 3)
    start = time.perf_counter()
    out = nn.generate(
        model, params, prompt, 200, key=jax.random.key(2), temperature=0.8, top_k=10,
        features=args.width,
    )  # fmt: skip
    print(f"samples (3 x 200 characters in {time.perf_counter() - start:.1f} s):")
    for i, row in enumerate(out):
        print(f"--- sample {i} ---\n" + "".join(chars[int(t)] for t in row))


if __name__ == "__main__":
    main()
