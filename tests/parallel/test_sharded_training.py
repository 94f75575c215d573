"""The same training, sharded: make_step, make_multistep and fit on a mesh equal one device to rounding."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from backends import cpu_devices
from jax.sharding import PartitionSpec as P

from funcgrad import inspect, losses, nn, parallel, train

CPU8 = cpu_devices(8)  # the simulated devices, whatever the default backend is

pytestmark = pytest.mark.x64  # the mesh equals one device to float64 rounding (rtol 1e-12)

F64 = {"param_dtype": jnp.float64}
MODEL = nn.serial(nn.Dense(32, **F64), nn.relu, nn.Dense(32, **F64), nn.relu, nn.Dense(10, **F64))
with jax.enable_x64(True):  # made at import, before the mark turns 64-bit mode on for the tests
    X = jax.random.normal(jax.random.key(1), (32, 24))
    Y = jnp.arange(32) % 10
    PARAMS = MODEL.init(jax.random.key(0), X)


def loss(p, batch):
    return losses.softmax_cross_entropy(MODEL.apply(p, batch[0]), batch[1])


PLANS = {
    "data parallel": lambda: parallel.mesh(CPU8, data=8),
    "fsdp": lambda: parallel.plan(parallel.mesh(CPU8, data=8), parallel.fsdp(min_size=64)),
    "tensor parallel": lambda: parallel.plan(
        parallel.mesh(CPU8, data=4, model=2),
        parallel.by_path((r"dense_0\.w$", P(None, "model")), (r"dense_2\.w$", P("model", None))),
    ),
}


def spec(array):
    """The partition spec without trailing Nones (JAX drops them from results)."""
    entries = list(array.sharding.spec)
    while entries and entries[-1] is None:
        entries.pop()
    return P(*entries)


def close(a, b, rtol=1e-12):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=1e-13)


def run_steps(mesh, n=4):
    opt = optax.adam(1e-2)
    step = train.make_step(loss, opt, mesh=mesh)
    params = jax.tree.map(jnp.copy, PARAMS)
    opt_state = opt.init(params)
    for _ in range(n):
        params, opt_state, metrics = step.arrays(params, opt_state, (X, Y))
    return params, opt_state, metrics


@pytest.mark.parametrize("name", list(PLANS))
def test_make_step_on_a_mesh_equals_one_device(name):
    reference = run_steps(None)
    params, opt_state, metrics = run_steps(PLANS[name]())
    close(params, reference[0])
    close(opt_state, reference[1])
    np.testing.assert_allclose(float(metrics["loss"]), float(reference[2]["loss"]), rtol=1e-12)
    devices = {len(leaf.sharding.device_set) for leaf in jax.tree.leaves(params)}
    assert devices == {8}


def test_layouts_are_kept_step_after_step():
    plan = PLANS["tensor parallel"]()
    params, opt_state, _ = run_steps(plan)
    assert spec(params["dense_0"]["w"]) == P(None, "model")
    assert spec(params["dense_2"]["w"]) == P("model")
    assert spec(params["dense_4"]["w"]) == P()
    mu = opt_state[0].mu
    assert spec(mu["dense_0"]["w"]) == P(None, "model")  # the optimizer's copy follows
    fsdp_params, fsdp_state, _ = run_steps(PLANS["fsdp"]())
    assert fsdp_params["dense_2"]["w"].addressable_shards[0].data.shape == (4, 32)
    assert spec(fsdp_state[0].nu["dense_2"]["w"]) == P("data")


def test_sharded_step_reports_cost_and_rejects_bad_batches():
    opt = optax.sgd(0.1)
    step = train.make_step(loss, opt, mesh=parallel.mesh(CPU8, data=8))
    c = inspect.cost(step, PARAMS, opt.init(PARAMS), (X, Y))
    single = inspect.cost(train.make_step(loss, opt), PARAMS, opt.init(PARAMS), (X, Y))
    # XLA reports the per-device program: each device does 1/8 of the batch's matmuls.
    assert c.flops < single.flops / 4
    with pytest.raises(
        Exception, match="a batch of 30 examples does not divide over the 8 devices"
    ):
        step.arrays(PARAMS, opt.init(PARAMS), (X[:30], Y[:30]))


def test_multistep_on_a_mesh_equals_one_device():
    opt = optax.adam(1e-2)
    block = (jnp.stack([X] * 3), jnp.stack([Y] * 3))
    ref = train.make_multistep(loss, opt, 3).arrays(PARAMS, opt.init(PARAMS), block)
    sharded = train.make_multistep(loss, opt, 3, mesh=PLANS["fsdp"]())
    got = sharded.arrays(PARAMS, opt.init(PARAMS), block)
    close(got[0], ref[0])
    np.testing.assert_allclose(np.asarray(got[2]["loss"]), np.asarray(ref[2]["loss"]), rtol=1e-12)


def test_batch_norm_statistics_span_the_whole_sharded_batch():
    model = nn.serial(nn.Dense(16, **F64), nn.BatchNorm(), nn.relu, nn.Dense(10, **F64))
    params, state = model.init_with_state(jax.random.key(0), X)

    def bn_loss(p, s, batch):
        out, s = model.apply(p, batch[0], state=s, train=True)
        return losses.softmax_cross_entropy(out, batch[1]), s

    opt = optax.sgd(0.1)
    results = []
    for mesh in (None, parallel.mesh(CPU8, data=8)):
        step = train.make_step(bn_loss, opt, has_state=True, mesh=mesh)
        p, s, o = jax.tree.map(jnp.copy, (params, state, opt.init(params)))
        for _ in range(3):
            p, s, o, _ = step.arrays(p, s, o, (X, Y))
        results.append((p, s))
    close(results[1], results[0])


def test_fit_on_a_mesh_equals_one_device_and_its_checkpoints_restore_onto_the_mesh(tmp_path):
    data = (jax.random.normal(jax.random.key(3), (128, 24)), jnp.arange(128) % 10)
    opt = optax.adam(1e-2)
    kwargs = dict(key=jax.random.key(0), batch_size=32, steps=12)
    one = train.fit(loss, opt, PARAMS, data, hooks=[], **kwargs)
    plan = PLANS["fsdp"]()
    many = train.fit(
        loss,
        opt,
        PARAMS,
        data,
        mesh=plan,
        hooks=[train.Checkpoint(tmp_path, 6, mesh=plan)],
        **kwargs,
    )
    fused = train.fit(loss, opt, PARAMS, data, mesh=plan, fused=4, hooks=[], **kwargs)
    close(many.params, one.params)
    close(fused.params, one.params)
    assert many.history["loss"] == pytest.approx(one.history["loss"], rel=1e-12)
    assert spec(many.params["dense_2"]["w"]) == P("data")
    template = {
        "params": PARAMS,
        "opt_state": opt.init(PARAMS),
        "model_state": None,
        "key": jax.random.key(0),
    }
    step, on_mesh = train.restore(tmp_path, template, mesh=plan)
    assert step == 12
    w = on_mesh["params"]["dense_2"]["w"]
    assert spec(w) == P("data") and len(w.sharding.device_set) == 8
    close(on_mesh["params"], many.params)
    # A sharded template is enough: leaves land where the template's are.
    _, like = train.restore(tmp_path, on_mesh)
    assert like["params"]["dense_2"]["w"].sharding == w.sharding
