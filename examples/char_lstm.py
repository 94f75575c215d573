"""A character-level LSTM language model, trained with `fit` on Python's own source code (nothing downloads).

Run: python examples/char_lstm.py   (or --hidden 64 --steps 150, the size CI runs: about 15 s)

It reads the source of a few standard-library modules, learns to predict each next character,
prints the loss per character before and after training, and continues a prompt greedily and by
sampling, one character at a time, with the LSTM's carry as the only state.
"""

import argparse
import inspect
import json
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import funcgrad as fg
from funcgrad import losses, nn

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--hidden", type=int, default=256, help="LSTM width")
parser.add_argument("--steps", type=int, default=2000, help="training steps")
parser.add_argument("--seq-len", type=int, default=64, help="characters per training window")
parser.add_argument("--batch-size", type=int, default=32)
parser.add_argument("--prompt", default="def ")
args = parser.parse_args()

# The text: Python source that every Python installation ships.
text = "".join(inspect.getsource(m) for m in (textwrap, json.decoder, json.encoder, argparse))
chars = sorted(set(text))
char_id = {c: i for i, c in enumerate(chars)}
ids = np.array([char_id[c] for c in text], np.int32)

# Windows of seq_len + 1 characters, every seq_len/2 characters; the last tenth is held out.
starts = np.arange(0, len(ids) - args.seq_len - 1, args.seq_len // 2)
windows = np.stack([ids[s : s + args.seq_len + 1] for s in starts])
split = int(0.9 * len(windows))
train = (windows[:split, :-1], windows[:split, 1:])
held_out = (windows[split:, :-1], windows[split:, 1:])
print(f"{len(text)} characters, {len(chars)} distinct, {len(windows)} windows of {args.seq_len}")

model = nn.serial(
    nn.Embedding(len(chars), 64), nn.recurrent(nn.LSTMCell(args.hidden)), nn.Dense(len(chars))
)
params = model.init(jax.random.key(0), train[0][:1])


def loss_fn(params, batch):
    inputs, targets = batch
    logits = model.apply(params, inputs)
    return losses.softmax_cross_entropy(logits.reshape(-1, len(chars)), targets.reshape(-1))


held_out_loss = jax.jit(lambda p: loss_fn(p, held_out))
before = float(held_out_loss(params))

start = time.perf_counter()
result = fg.train.fit(
    loss_fn,
    optax.adam(3e-3),
    params,
    train,
    key=jax.random.key(1),
    batch_size=args.batch_size,
    steps=args.steps,
    hooks=[],  # no progress bar
)
params = result.params
after = float(held_out_loss(params))
print(f"trained {args.steps} steps in {time.perf_counter() - start:.1f} s")
print(f"held-out loss per character: {before:.3f} before, {after:.3f} after")


@jax.jit
def continue_text(params, prompt, key, temperature):
    """Read ``prompt`` (ids) with the model, then emit 200 characters one at a time.

    Temperature 0 is greedy. The LSTM's carry is the model's state: ``init_carry`` makes it,
    each ``apply(..., state=state)`` starts from it and returns the carry after its characters.
    """
    logits, state = model.apply(params, prompt[None], state=model.init_carry(1))

    def step(carry, key):
        state, logits = carry
        last = logits[:, -1]
        greedy = jnp.argmax(last, axis=-1)
        sampled = jax.random.categorical(key, last / jnp.maximum(temperature, 1e-6))
        char = jnp.where(temperature == 0, greedy, sampled)
        logits, state = model.apply(params, char[:, None], state=state)
        return (state, logits), char[0]

    _, out = jax.lax.scan(step, (state, logits[:, -1:]), jax.random.split(key, 200))
    return out


prompt = jnp.array([char_id[c] for c in args.prompt if c in char_id], jnp.int32)
for label, temperature in (("greedy", 0.0), ("sampled at 0.8", 0.8)):
    out = continue_text(params, prompt, jax.random.key(2), temperature)
    print(f"--- {label} ---")
    print(args.prompt + "".join(chars[i] for i in np.asarray(out)))
