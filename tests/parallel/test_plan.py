"""Meshes and layout rules: what goes where, and the errors for layouts that cannot be."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from backends import cpu_devices
from jax.sharding import PartitionSpec as P

from funcgrad import parallel, paths
from funcgrad.errors import ConfigError, InputTypeError, ShapeError

CPU8 = cpu_devices(8)  # the simulated devices, whatever the default backend is


def test_eight_simulated_devices():
    assert len(CPU8) == 8 and {d.platform for d in CPU8} == {"cpu"}  # tests/conftest.py


def test_mesh_axes_and_sizes():
    m = parallel.mesh(CPU8, data=8)
    assert m.axis_names == ("data",) and m.shape["data"] == 8
    m = parallel.mesh(CPU8, data=-1, model=2)
    assert dict(m.shape) == {"data": 4, "model": 2}
    assert parallel.mesh().axis_names == ("data",)
    assert parallel.mesh(CPU8[:2], data=2).devices.size == 2


@pytest.mark.parametrize(
    "axes, message",
    [
        ({"data": 3}, r"axes \{'data': 3\} need 3 devices; there are 8"),
        ({"data": -1, "model": 3}, "8 devices do not divide into axes"),
        ({"data": 0}, "must be positive ints"),
        ({"data": -1, "model": -1}, "at most one -1"),
    ],
)
def test_mesh_errors(axes, message):
    with pytest.raises(ConfigError, match=message):
        parallel.mesh(CPU8, **axes)


def test_fsdp_shards_the_largest_divisible_axis():
    plan = parallel.plan(parallel.mesh(CPU8, data=8), parallel.fsdp(min_size=64))
    tree = {
        "w": jnp.zeros((12, 64)),
        "v": jnp.zeros((16, 8)),
        "b": jnp.zeros(32),
        "s": jnp.zeros((7, 9)),
    }
    specs = jax.tree.map(lambda s: s.spec, plan.shardings(tree))
    assert specs == {"w": P(None, "data"), "v": P("data", None), "b": P(), "s": P()}
    placed = plan.place(tree)
    assert placed["w"].sharding.spec == P(None, "data")
    assert placed["w"].addressable_shards[0].data.shape == (12, 8)


def test_by_path_rules_cover_parameters_and_their_optimizer_copies():
    rule = parallel.by_path((r"attn\.wq$", P(None, "model")), default="fsdp")
    plan = parallel.plan(parallel.mesh(CPU8, data=4, model=2), rule)
    assert plan.spec("attn.wq", (64, 64)) == P(None, "model")
    assert plan.spec("0.mu.attn.wq", (64, 64)) == P(None, "model")
    assert plan.spec("attn.wo", (64, 64)) == P("data", None)  # the fsdp default
    params = {"block_0": {"attn": {"wq": jnp.zeros((8, 8)), "wo": jnp.zeros((8, 8))}}}
    state = optax.adam(1e-3).init(params)
    shardings = plan.shardings({"params": params, "opt_state": state}, check_rules=True)
    assert shardings["params"]["block_0"]["attn"]["wq"].spec == P(None, "model")
    assert shardings["opt_state"][0].mu["block_0"]["attn"]["wq"].spec == P(None, "model")


def test_a_slash_pattern_still_matches_with_a_deprecation_naming_the_dotted_form():
    with pytest.deprecated_call(match=r"write 'attn\\\\.wq\$'"):
        rule = parallel.by_path((r"attn/wq$", P(None, "model")))
    plan = parallel.plan(parallel.mesh(CPU8, data=4, model=2), rule)
    shardings = plan.shardings({"attn": {"wq": jnp.zeros((8, 8))}}, check_rules=True)
    assert shardings["attn"]["wq"].spec == P(None, "model")
    assert plan.spec("0.mu.attn.wq", (64, 64)) == P(None, "model")


def test_path_name_is_the_deprecated_name_of_paths_dotted():
    path = jax.tree_util.tree_flatten_with_path({"a": [{"b": 1}]})[0][0][0]
    with pytest.deprecated_call(match="funcgrad.paths.dotted"):
        assert parallel.path_name(path) == paths.dotted(path) == "a.0.b"


def test_layout_errors_name_the_value():
    m = parallel.mesh(CPU8, data=8)
    with pytest.raises(
        ConfigError, match=r"mesh axis 'model' does not exist; the mesh has \('data',\)"
    ):
        parallel.plan(m, parallel.by_path((r"w$", P("model")))).shardings({"w": jnp.zeros(8)})
    with pytest.raises(
        ShapeError, match=r"w: axis 0 of shape \(12,\) has 12 entries, which do not divide"
    ):
        parallel.plan(m, parallel.by_path((r"w$", P("data")))).shardings({"w": jnp.zeros(12)})
    with pytest.raises(
        ConfigError,
        match=r"rule 'dense_9\\\\.w\$' matches no parameter; paths look like \['dense_0.w'\]",
    ):
        parallel.plan(m, parallel.by_path((r"dense_9\.w$", P("data")))).shardings(
            {"dense_0": {"w": jnp.zeros(8)}}, check_rules=True
        )
    with pytest.raises(ShapeError, match="more entries than the array has axes"):
        parallel.plan(m, parallel.by_path((r"w$", P(None, "data")))).shardings({"w": jnp.zeros(8)})
    with pytest.raises(ConfigError, match="batch axis 'batch' is not an axis of the mesh"):
        parallel.plan(m, batch_axis="batch")
    with pytest.raises(ConfigError, match="must be 'replicate', 'fsdp'"):
        parallel.plan(m, "zero3")
    with pytest.raises(ConfigError, match="fsdp\\('model'\\): the mesh has no axis 'model'"):
        parallel.plan(m, parallel.fsdp("model")).shardings({"w": jnp.zeros((64, 64))})
    with pytest.raises(ConfigError, match="each rule is \\(regex, PartitionSpec\\)"):
        parallel.by_path(("w", "data"))
    with pytest.raises(InputTypeError, match="expected a jax.sharding.Mesh; got dict"):
        parallel.plan({"data": 8})


def test_batches_split_over_the_data_axis_and_must_divide():
    plan = parallel.plan(parallel.mesh(CPU8, data=8))
    x = np.arange(16 * 3.0).reshape(16, 3)
    placed = plan.put_batch({"x": x})
    assert placed["x"].sharding.spec == P("data", None)
    assert [s.data.shape for s in placed["x"].addressable_shards] == [(2, 3)] * 8
    np.testing.assert_array_equal(np.asarray(placed["x"]), x)
    with pytest.raises(
        ShapeError,
        match=r"a batch of 12 examples does not divide over the 8 devices of mesh axis 'data'",
    ):
        plan.put_batch((np.zeros((12, 3)),))
    block = plan.put_batch(np.zeros((5, 16, 3)), axis=1)
    assert block.sharding.spec == P(None, "data", None)


def test_process_batches_slice_each_global_batch():
    data = (jnp.arange(16), jnp.arange(16) * 10)
    key = jax.random.key(3)
    whole = list(parallel.process_batches(key, data, 8, process_index=0, process_count=1))
    parts = [
        list(parallel.process_batches(key, data, 8, process_index=i, process_count=2))
        for i in (0, 1)
    ]
    for w, a, b in zip(whole, *parts, strict=True):
        np.testing.assert_array_equal(np.concatenate([a[0], b[0]]), w[0])
        np.testing.assert_array_equal(np.concatenate([a[1], b[1]]), w[1])
    with pytest.raises(ConfigError, match="global batch size 9 does not divide over 2 processes"):
        next(parallel.process_batches(key, data, 9, process_index=0, process_count=2))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"coordinator": "localhost", "num_processes": 2, "process_id": 0},
            "coordinator must be host:port",
        ),
        (
            {"coordinator": "127.0.0.1:1", "num_processes": 2, "process_id": 2},
            "process_id 2 is out of range for num_processes=2",
        ),
        (
            {"coordinator": "127.0.0.1:1", "num_processes": 0, "process_id": 0},
            "num_processes must be >= 1; got 0",
        ),
        (
            {"coordinator": "127.0.0.1:1", "num_processes": "two", "process_id": 0},
            "num_processes must be an integer; got 'two'",
        ),
    ],
)
def test_initialize_checks_its_settings_before_jax_does(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        parallel.initialize(**kwargs)


def test_initialize_reads_the_environment(monkeypatch):
    monkeypatch.setenv("FUNCGRAD_COORDINATOR", "127.0.0.1:1")
    monkeypatch.setenv("FUNCGRAD_NUM_PROCESSES", "3")
    monkeypatch.setenv("FUNCGRAD_PROCESS_ID", "5")
    with pytest.raises(ConfigError, match="process_id 5 is out of range for num_processes=3"):
        parallel.initialize()
