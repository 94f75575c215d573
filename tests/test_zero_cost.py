"""A funcgrad training step compiles to the same XLA program as the hand-written JAX one."""

import collections
import re
import sys

import jax
import optax
import pytest

import funcgrad as fg

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent / "scripts"))
import bench_overhead as bench


def opcode_histogram(step, *args):
    text = step.lower(*args).compile().as_text()
    return collections.Counter(m.group(1) for m in re.finditer(r"= \S+ ([a-z][\w-]*)\(", text))


@pytest.mark.parametrize("name", sorted(bench.WORKLOADS))
def test_funcgrad_step_compiles_to_the_pure_jax_program(name):
    sizes, batch_size = bench.WORKLOADS[name]
    optimizer = optax.adam(1e-3)
    _, params = bench.funcgrad_step(sizes, optimizer)
    batch = bench.make_data(sizes, batch_size)
    pure = bench.pure_jax_step(sizes, optimizer)
    model_loss = bench.funcgrad_model_loss(sizes, loss="optax")
    ours = fg.train.make_step(model_loss, optimizer, donate=True)  # the arrays donated, as there
    args = (params, optimizer.init(params), batch)
    theirs_ops, ours_ops = opcode_histogram(pure, *args), opcode_histogram(ours, *args)
    assert ours_ops["dot"] > 0
    assert ours_ops == theirs_ops


@pytest.mark.parametrize("name", sorted(bench.WORKLOADS))
def test_funcgrad_losses_keep_the_matmul_count(name):
    sizes, batch_size = bench.WORKLOADS[name]
    optimizer = optax.adam(1e-3)
    step, params = bench.funcgrad_step(sizes, optimizer)
    args = (params, optimizer.init(params), bench.make_data(sizes, batch_size))
    ours = opcode_histogram(step, *args)
    theirs = opcode_histogram(bench.pure_jax_step(sizes, optimizer), *args)
    assert ours["dot"] == theirs["dot"] > 0
    assert ours["fusion"] <= theirs["fusion"]


def donates(lowered):
    return "tf.aliasing_output" in lowered.as_text() or "jax.buffer_donor" in lowered.as_text()


def test_step_is_a_plain_jit_function_with_donation():
    opt = optax.sgd(0.1)
    step = fg.train.make_step(lambda p, b: (p * b).sum(), opt)
    # The step is a plain jax.jit function per form; Step calls it (and explains donation).
    assert isinstance(step.on_arrays, type(jax.jit(lambda x: x)))
    assert isinstance(step.on_state, type(jax.jit(lambda x: x)))
    ones = jax.numpy.ones(3)
    state = fg.train.TrainState.create(ones, opt, key=jax.random.key(0))
    assert donates(step.lower(state, ones))  # the state's buffers are the library's copies
    assert not donates(step.lower(ones, opt.init(ones), ones))  # the arrays are the caller's
    donating = fg.train.make_step(lambda p, b: (p * b).sum(), opt, donate=True)
    assert donates(donating.lower(ones, opt.init(ones), ones))
