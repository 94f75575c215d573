"""inspect.summary (the parameter table) and inspect.cost (XLA's own figures)."""

import math

import jax
import jax.numpy as jnp
import optax
import pytest

from funcgrad import inspect, losses, nn, train
from funcgrad.errors import InputTypeError, ParamsError, TraceError


def test_summary_of_an_mlp_lists_every_layer_with_counts_that_add_up():
    model = nn.serial(nn.Dense(32), nn.relu, nn.Dense(32), nn.gelu, nn.Dense(10))
    x = jnp.zeros((16, 8), jnp.float32)
    params = model.init(jax.random.key(0), x)
    s = inspect.summary(model, params, x)
    assert [r.path for r in s.rows] == ["", "dense_0", "relu_1", "dense_2", "gelu_3", "dense_4"]
    assert [r.layer for r in s.rows] == ["Serial", "Dense", "relu", "Dense", "gelu", "Dense"]
    assert [r.output for r in s.rows[1:]] == ["f32[16,32]"] * 4 + ["f32[16,10]"]
    assert [r.params for r in s.rows[1:]] == [8 * 32 + 32, 0, 32 * 32 + 32, 0, 32 * 10 + 10]
    assert s.total_params == sum(r.params for r in s.rows[1:]) == s.rows[0].params
    assert s.total_bytes == 4 * s.total_params
    assert s.dtypes == {"float32": s.total_params}
    assert [r.depth for r in s.rows] == [0, 1, 1, 1, 1, 1]
    text = str(s)
    assert text.splitlines()[0].split() == ["layer", "type", "output", "params", "bytes", "dtype"]
    lines = text.splitlines()
    assert lines[5].split() == ["dense_2", "Dense", "f32[16,32]", "1,056", "4.12", "KiB", "float32"]
    assert lines[5].startswith("  dense_2")  # indented under the model
    assert lines[-1] == "total: 1,674 parameters, 6.54 KiB (float32: 1,674)"


def test_summary_counts_shared_parameters_once_and_repeat_stacked():
    tied = nn.shared(nn.Dense(8), name="tied")
    model = nn.serial(nn.Dense(8), tied, nn.relu, tied, nn.repeat(nn.Dense(8), 4))
    x = jnp.zeros((2, 3), jnp.float32)
    params = model.init(jax.random.key(0), x)
    s = inspect.summary(model, params, x)
    tied_rows = [r for r in s.rows if r.path == "tied"]
    assert [r.shared for r in tied_rows] == [False, True]  # the second use is marked
    assert s.total_params == 3 * 8 + 8 + 72 + 4 * 72
    assert s.rows[0].params == s.total_params
    (rep,) = [r for r in s.rows if r.layer == "Repeat ×4"]
    (inner,) = [r for r in s.rows if r.path == rep.path and r.layer == "Dense"]
    assert (rep.params, inner.params) == (4 * 72, 72)
    assert inner.depth == rep.depth + 1


def test_summary_of_a_cnn_with_batch_norm_and_mixed_dtypes():
    model = nn.serial(
        nn.Conv(4, (3, 3), dtype=jnp.bfloat16), nn.BatchNorm(), nn.max_pool((2, 2)), nn.Flatten(),
        nn.Dense(10),
    )  # fmt: skip
    x = jnp.zeros((2, 8, 8, 1), jnp.float32)
    params = model.init(jax.random.key(0), x)
    s = inspect.summary(model, params, x)
    conv, bn, pool, flat, dense = s.rows[1:]
    assert conv.output == "bf16[2,8,8,4]" and conv.params == 3 * 3 * 4 + 4
    assert pool.output.endswith("[2,4,4,4]") and flat.output.endswith("[2,64]")
    assert bn.params == 8 and dense.params == 64 * 10 + 10


def test_summary_runs_no_computation_and_accepts_specs():
    model = nn.serial(nn.Dense(4096), nn.Dense(4096))
    spec = jax.ShapeDtypeStruct((1, 4096), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), spec)
    s = inspect.summary(model, params, spec)
    assert s.total_params == 2 * (4096 * 4096 + 4096)
    assert s.total_bytes == 4 * s.total_params


def test_summary_bad_input():
    model = nn.serial(nn.Dense(4))
    x = jnp.zeros((2, 3))
    params = model.init(jax.random.key(0), x)
    with pytest.raises(InputTypeError, match="expected a funcgrad Layer; got function"):
        inspect.summary(lambda p, x: x, params, x)
    bad = {"dense_0": {"w": jnp.zeros((5, 4)), "b": jnp.zeros(4)}}
    with pytest.raises(ParamsError, match=r"Dense at dense_0: "):
        inspect.summary(model, bad, x)


@pytest.mark.parametrize("b, a, c", [(32, 64, 16), (128, 784, 512)])
def test_cost_of_a_dense_layer_is_two_b_a_c_flops(b, a, c):
    layer = nn.Dense(c)
    x = jnp.zeros((b, a), jnp.float32)
    params = layer.init(jax.random.key(0), x)
    found = inspect.cost(layer.apply, params, x)
    expected = 2 * b * a * c
    assert found.flops == pytest.approx(expected, rel=0.10)
    assert found.argument_bytes == 4 * (a * c + c + b * a)
    assert found.output_bytes == 4 * b * c
    assert found.backend == jax.default_backend()
    assert found.bytes_accessed >= found.argument_bytes


def test_cost_of_a_training_step_counts_forward_and_backward():
    model = nn.serial(nn.Dense(256), nn.relu, nn.Dense(10))
    x = jnp.zeros((64, 128), jnp.float32)
    y = jnp.zeros((64,), jnp.int32)
    params = model.init(jax.random.key(0), x)

    def loss(p, batch):
        xb, yb = batch
        return losses.softmax_cross_entropy(model.apply(p, xb), yb)

    opt = optax.sgd(0.1)
    step = train.make_step(loss, opt)
    c = inspect.cost(step, params, opt.init(params), (x, y))
    matmuls = 2 * 64 * (128 * 256 + 256 * 10)
    # forward + weight gradients + the input gradient of the second layer (not the first)
    expected = matmuls + matmuls + 2 * 64 * 256 * 10
    assert c.flops == pytest.approx(expected, rel=0.10)
    assert c.as_dict()["flops"] == c.flops
    text = c.to_text()
    assert text.splitlines()[0].startswith("backend") and "flops" in text


def test_cost_bad_input():
    def f(x):
        return x if x.sum() > 0 else -x

    with pytest.raises(TraceError, match=r"inspect.cost: f cannot be traced"):
        inspect.cost(f, jnp.ones(2))


def test_cost_accepts_specs_and_runs_nothing():
    spec = jax.ShapeDtypeStruct((2048, 2048), jnp.float32)
    c = inspect.cost(lambda a, b: a @ b, spec, spec)
    assert c.flops == pytest.approx(2 * 2048**3, rel=0.01)
    if jax.default_backend() == "cpu":  # XLA:CPU reports these; other backends may not
        assert c.output_bytes == 4 * math.prod(spec.shape) and c.memory_note is None
    elif c.output_bytes is None:
        assert "outputs" in c.memory_note and c.backend in c.memory_note
    else:
        assert c.output_bytes == 4 * math.prod(spec.shape)


@pytest.mark.parametrize("failure", ["none", "raises"])
def test_cost_without_memory_analysis_says_so(monkeypatch, failure):
    def memory_analysis(self):
        if failure == "raises":
            raise NotImplementedError("no memory stats on this plugin")

    monkeypatch.setattr(jax.stages.Compiled, "memory_analysis", memory_analysis)
    c = inspect.cost(lambda a: a * 2, jnp.ones((4, 4), jnp.float32))
    assert c.flops == pytest.approx(16, rel=0.5)  # the cost analysis still comes back
    assert c.output_bytes is None and c.temp_bytes is None and c.peak_bytes is None
    assert c.memory_note.startswith("not reported: arguments, outputs, temporaries, peak")
    assert (
        "no memory stats on this plugin" if failure == "raises" else "gives no"
    ) in c.memory_note
    assert f"note  {c.memory_note}" in c.to_text() or c.memory_note in c.to_text()


def test_summary_shows_storage_and_compute_dtypes_under_mixed_precision():
    """A residual transformer block, each branch in bfloat16 over float32 parameters."""
    mp = nn.mixed_precision
    block = nn.serial(
        nn.residual(mp(nn.serial(nn.LayerNorm(), nn.MultiHeadAttention(2)))),
        nn.residual(mp(nn.serial(nn.LayerNorm(), nn.Dense(16), nn.relu, nn.Dense(8)))),
    )
    x = jnp.zeros((2, 4, 8), jnp.float32)
    s = inspect.summary(block, block.init(jax.random.key(0), x), x)
    inner = [r for r in s.rows if r.layer in ("LayerNorm", "MultiHeadAttention", "Dense")]
    assert len(inner) == 5
    for r in inner:
        assert (r.dtype, r.compute_dtype) == ("float32", "bfloat16"), r
        assert r.bytes == 4 * r.params and r.output.startswith("bf16[")
    assert s.total_bytes == 4 * s.total_params
    assert "float32 (computes in bfloat16)" in s.to_text()
