"""scripts/bench_lm.py at a very small size: every training variant is timed and costed, and its
hand-written pure-JAX decoder gives nn.generate's greedy tokens (the benchmark's own check)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import backends
import jax
import jax.numpy as jnp
import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
sys.path.append(str(SCRIPTS))  # bench_lm and its interleave.py
bench_lm = importlib.import_module("bench_lm")

MICRO = dict(vocab=64, d=32, inter=48, layers=2, heads=4, kv=2, batch=4, length=8,
             contexts=(12,), new=4, steps=1)  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def cheap_compiles():
    """XLA's cheapest settings: these tests are nearly all compiling (every variant at a micro size,
    run once), which then takes about a quarter less CPU time; the figures are only checked for
    being reported, and both decoders are compiled alike. The programs so compiled are dropped
    after this module, so no later test reuses them."""
    with backends.cheap_compiles():
        yield


def test_every_training_variant_is_timed_and_costed() -> None:
    rows = bench_lm.bench_train(MICRO, rounds=1)
    assert [r["variant"] for r in rows] == [
        "full fine-tune", "microbatches=4", "LoRA rank 8", "blocked loss"
    ]  # fmt: skip
    assert rows[0]["ratio"] == 1.0
    assert all(r["tokens/s"] > 0 and r["temp"] is not None for r in rows)
    text = bench_lm.table("micro", MICRO, 1, rows, [])
    assert "| blocked loss |" in text and "Greedy" not in text


def test_pure_jax_decoder_matches_generate() -> None:
    c = bench_lm.config(MICRO)
    model = bench_lm.Llama(c)
    prompt = jnp.array([[3, 1, 4, 1, 5, 9, 2, 6]])
    params = model.init(jax.random.key(0), prompt)
    # Larger weights than init's, so that greedy tokens vary and a wrong step would show.
    params = jax.tree.map(lambda a: a * 3 if a.ndim > 1 else a, params)
    ours = bench_lm.nn.generate(model, params, prompt, 4, key=jax.random.key(1), temperature=0)
    pure = bench_lm.pure_jax_decode(c, 4, 12)(params, prompt)
    assert pure.tolist() == ours.tolist()
    assert len(set(ours[0, 8:].tolist())) > 1  # not one token repeated


def test_decode_rows_and_table() -> None:
    rows = bench_lm.bench_decode(MICRO, rounds=1)
    assert [r["context"] for r in rows] == [12] and rows[0]["same"]
    assert all(rows[0][k] > 0 for k in ("generate", "pure", "generate prefill", "pure prefill"))
    text = bench_lm.table("micro", MICRO, 1, [], rows)
    assert "| 12 | 8 | 4 |" in text and "| yes |" in text
