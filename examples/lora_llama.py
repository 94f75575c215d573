"""Fine-tune a Hugging Face Llama with LoRA, then hand it back to `transformers`.

A tiny random Llama (a `transformers.LlamaConfig`, saved with `save_pretrained`) stands in for a
downloaded checkpoint; it is read with `fg.interop.from_hf`. Its byte-level vocabulary (256
tokens) models the source of Python's own `textwrap` module (shipped with Python, no download).
`nn.lora_init` adds rank-8 factors to every weight matrix of every layer (`model=` tells it
which weights `nn.repeat` stacks); `fg.train.fit` trains only the factors
(`trainable=`: the base is closed over inside the step, never differentiated, no optimizer
state), with each batch split into two microbatches (`microbatches=2`: gradient
accumulation). The factors are merged into the weights (`nn.lora_merge`), the model is written
with `fg.interop.to_hf`, loaded again by `transformers.AutoModelForCausalLM.from_pretrained`,
and its logits are compared with funcgrad's.

Needs the test extra's `transformers` and `torch` (only to make the random checkpoint and to
check the written one; `from_hf`/`to_hf` need neither).

Run: python examples/lora_llama.py [--steps 300] [--rank 8]
  prints the held-out loss before and after, a greedy sample, and
  "transformers reads it back: max |logit difference| ..." (under 1e-4).
"""

import argparse
import tempfile
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import transformers

import funcgrad as fg
from funcgrad import nn

ALPHA = 16.0  # the LoRA scale is ALPHA / rank


def windows(data: np.ndarray, context: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and next-byte targets of every ``context``-byte window, ``stride`` bytes apart."""
    starts = np.arange(0, len(data) - context - 1, stride)
    rows = np.stack([data[s : s + context + 1] for s in starts]).astype(np.int32)
    return rows[:, :-1], rows[:, 1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--context", type=int, default=64)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp())
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )  # fmt: skip
    transformers.LlamaForCausalLM(config).save_pretrained(work / "base")
    model, base = fg.interop.from_hf(work / "base")

    text = np.frombuffer(Path(textwrap.__file__).read_bytes(), np.uint8)
    split = int(0.9 * len(text))
    train = windows(text[:split], args.context, 16)
    held_out = windows(text[split:], args.context, args.context)

    lora = nn.lora_init(jax.random.key(0), base, rank=args.rank, model=model)

    def loss(params, batch):
        x, y = batch
        weights = nn.lora_merge(params["base"], params["lora"], alpha=ALPHA)
        return fg.losses.softmax_cross_entropy(model.apply(weights, x), y)

    evaluate = jax.jit(loss)
    before = float(evaluate({"base": base, "lora": lora}, held_out))
    result = fg.train.fit(
        loss, optax.adam(3e-3), {"base": base, "lora": lora}, train,
        key=jax.random.key(1), batch_size=32, steps=args.steps,
        trainable=lambda path: path.startswith("lora."), microbatches=2,
    )  # fmt: skip
    after = float(evaluate(result.params, held_out))
    print(f"held-out loss: before {before:.3f}, after {after:.3f} (nats per byte)")
    same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), result.params["base"], base)
    print("base weights unchanged:", all(jax.tree.leaves(same)))

    tuned = nn.lora_merge(base, result.params["lora"], alpha=ALPHA)
    prompt = jnp.asarray(np.frombuffer(b"def wrap(text", np.uint8).astype(np.int32))[None]
    sample = nn.generate(model, tuned, prompt, 60, key=jax.random.key(2), temperature=0)
    print("greedy sample:", bytes(np.asarray(sample[0]).astype(np.uint8)).decode(errors="replace"))

    out = fg.interop.to_hf(model, tuned, work / "tuned")
    theirs_model = transformers.AutoModelForCausalLM.from_pretrained(out)
    x = held_out[0][:2]
    with torch.no_grad():
        theirs = theirs_model(torch.from_numpy(x.astype(np.int64))).logits.numpy()
    ours = np.asarray(model.apply(tuned, x))
    print(f"transformers reads it back: max |logit difference| {np.abs(ours - theirs).max():.2e}")


if __name__ == "__main__":
    main()
