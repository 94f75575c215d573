"""Sharded checkpoints (orbax): saved from 8 devices, restored onto 4 and 1; fit on a mesh resumes
bitwise; bad directories, templates and files are refused by name."""

import runpy
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from funcgrad import losses, nn, parallel, train
from funcgrad.errors import MissingToolError

F64 = {"param_dtype": jnp.float64}
MODEL = nn.serial(nn.Dense(32, **F64), nn.relu, nn.Dense(10, **F64))
X = jax.random.normal(jax.random.key(1), (64, 16))
Y = jnp.arange(64) % 10
PARAMS = MODEL.init(jax.random.key(0), X)


def loss(p, batch):
    return losses.softmax_cross_entropy(MODEL.apply(p, batch[0]), batch[1])


def fsdp(n):
    cpus = jax.devices("cpu")[:n]  # the simulated devices, whatever the default backend is
    return parallel.plan(parallel.mesh(cpus, data=n), parallel.fsdp(min_size=64))


def spec(array):
    entries = list(array.sharding.spec)
    while entries and entries[-1] is None:
        entries.pop()
    return P(*entries)


def equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def state_tree(plan):
    opt = optax.adam(1e-2)
    params = jax.tree.map(lambda x: x + 1.0, PARAMS)
    tree = {"params": params, "opt_state": opt.init(params), "key": jax.random.key(7)}
    placed = {
        "params": plan.place(tree["params"]),
        "opt_state": plan.place(tree["opt_state"]),
        "key": plan.place(tree["key"], replicated=True),
    }
    return tree, placed


def test_saved_on_eight_devices_restores_onto_four_and_one(tmp_path):
    eight = fsdp(8)
    tree, placed = state_tree(eight)
    assert placed["params"]["dense_0"]["w"].addressable_shards[0].data.shape == (16, 4)
    train.save_sharded(tmp_path, 3, placed)
    assert train.sharded_steps(tmp_path) == [3]
    folder = tmp_path / "sharded_000000003"
    assert (folder / "ocdbt.process_0").is_dir()  # this process's shards, in its own store
    assert not list(tmp_path.glob("*.npz"))

    abstract = jax.eval_shape(lambda: tree)
    step, four = train.restore_sharded(tmp_path, abstract, mesh=fsdp(4))
    assert step == 3
    w = four["params"]["dense_0"]["w"]
    assert len(w.sharding.device_set) == 4 and spec(w) == P(None, "data")
    assert w.addressable_shards[0].data.shape == (16, 8)  # 32 columns over 4 devices
    assert len(four["key"].sharding.device_set) == 4  # keys replicated
    assert jax.random.key_impl(four["key"]) == jax.random.key_impl(tree["key"])
    equal(jax.random.key_data(four["key"]), jax.random.key_data(tree["key"]))
    equal(four["params"], tree["params"])
    equal(four["opt_state"], tree["opt_state"])

    _, one = train.restore_sharded(tmp_path, tree)  # plain arrays: one device
    assert {len(x.sharding.device_set) for x in jax.tree.leaves(one)} == {1}
    equal(one["params"], tree["params"])
    equal(one["opt_state"], tree["opt_state"])
    # plain restore and load_params read a directory of sharded checkpoints too
    equal(train.restore(tmp_path, tree)[1]["params"], tree["params"])
    equal(train.load_params(tmp_path), tree["params"])
    equal(train.load_params(tmp_path, PARAMS), tree["params"])


def test_fit_on_a_mesh_resumes_bitwise_and_a_finished_run_stays_on_the_mesh(tmp_path):
    data = (X, Y)
    opt = optax.adam(1e-2)
    plan = fsdp(8)
    kwargs = dict(key=jax.random.key(0), batch_size=16, mesh=plan)
    log = train.LogMetrics(every=4)
    saving = [log, train.Checkpoint(tmp_path, 4)]
    whole = train.fit(loss, opt, PARAMS, data, steps=12, hooks=[log], **kwargs)
    first = train.fit(loss, opt, PARAMS, data, steps=8, hooks=saving, **kwargs)
    assert first.step == 8
    assert train.sharded_steps(tmp_path) == train.steps(tmp_path) == [4, 8]
    assert not list(tmp_path.glob("ckpt_*.npz"))
    resumed = train.fit(loss, opt, PARAMS, data, steps=12, hooks=saving, **kwargs)
    equal(resumed.params, whole.params)
    equal(resumed.opt_state, whole.opt_state)
    assert resumed.history.rows == whole.history.rows
    assert sorted(p.name for p in tmp_path.glob("history_*.json")) == [
        f"history_{s:09d}.json" for s in train.sharded_steps(tmp_path)
    ]
    # Resuming a run that has already finished: no step runs, the state is still on the mesh.
    again = train.fit(loss, opt, PARAMS, data, steps=12, hooks=saving, **kwargs)
    assert again.step == 12
    w = again.params["dense_0"]["w"]
    assert len(w.sharding.device_set) == 8 and spec(w) == P(None, "data")
    equal(again.params, whole.params)
    assert again.history.rows == whole.history.rows


def test_bad_directory_template_and_files_are_refused(tmp_path):
    with pytest.raises(train.CheckpointError, match="no sharded checkpoint in"):
        train.restore_sharded(tmp_path / "absent", PARAMS)
    tree, placed = state_tree(fsdp(8))
    train.save_sharded(tmp_path, 1, placed)
    with pytest.raises(train.CheckpointError, match=r"for step 5 .* have \[1\]"):
        train.restore_sharded(tmp_path, tree, step=5)

    wrong = {**tree, "params": {**tree["params"], "dense_9": {"w": jnp.zeros(2)}}}
    wrong["params"]["dense_0"] = {"w": jnp.zeros((16, 8)), "b": tree["params"]["dense_0"]["b"]}
    del wrong["key"]
    with pytest.raises(train.CheckpointError) as err:
        train.restore_sharded(tmp_path, wrong)
    message = str(err.value)
    assert "the checkpoint has no leaf params.dense_9.w" in message
    assert "like= has no leaf key" in message
    assert "params.dense_0.w (saved float32[16, 32], expected float32[16, 8])" in message

    train.save_sharded(tmp_path, 2, placed)
    (tmp_path / "sharded_000000002" / "_METADATA").write_text('{"tree": ')
    with pytest.warns(RuntimeWarning, match=r"_METADATA\) is missing or unreadable"):
        assert train.restore_sharded(tmp_path, tree)[0] == 1  # the newest intact one
    with pytest.raises(train.CheckpointError, match=r"_METADATA\) is missing or unreadable"):
        train.restore_sharded(tmp_path, tree, step=2)


def test_a_missing_orbax_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "orbax.checkpoint", None)  # import fails
    with pytest.raises(MissingToolError, match=r"pip install 'funcgrad\[orbax\]'"):
        train.save_sharded(tmp_path, 0, PARAMS)


def test_only_committed_checkpoints_count(tmp_path):
    # orbax writes into "<name>.orbax-checkpoint-tmp-<n>" and renames it when every process is
    # done; what a crash leaves behind (that folder, or one without orbax's commit record) is
    # not a checkpoint, and the earlier ones still load.
    tree, placed = state_tree(fsdp(8))
    train.save_sharded(tmp_path, 1, placed)
    (tmp_path / "sharded_000000002.orbax-checkpoint-tmp-17" / "d").mkdir(parents=True)
    (tmp_path / "sharded_000000003" / "d").mkdir(parents=True)
    assert train.sharded_steps(tmp_path) == [1]
    step, back = train.restore_sharded(tmp_path, tree)
    assert step == 1
    equal(back["params"], tree["params"])


# orbax stops at the first failed read; the others finish later and call back into its closed
# event loop, which Python reports as an unraisable RuntimeError (harmless, orbax's own).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_truncated_files_are_refused(tmp_path):
    tree, placed = state_tree(fsdp(8))
    train.save_sharded(tmp_path, 1, placed)
    for data in (tmp_path / "sharded_000000001").rglob("d/*"):
        content = data.read_bytes()
        data.write_bytes(content[: len(content) // 2])
    with pytest.raises(train.CheckpointError, match="corrupted or truncated"):
        train.restore_sharded(tmp_path, tree)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax's, as below
def test_a_damaged_newest_sharded_checkpoint_falls_back_to_the_one_before(tmp_path):
    tree, placed = state_tree(fsdp(8))
    for step in (1, 2, 3):
        train.save(tmp_path, step, placed, mesh=fsdp(8), keep=None)
    (tmp_path / "sharded_000000003" / "_METADATA").write_text('{"tree": ')
    with pytest.warns(RuntimeWarning, match=r"sharded_000000003: its metadata"):
        step, back = train.restore(tmp_path, tree, mesh=fsdp(4))
    assert step == 2
    equal(back["params"], tree["params"])
    with pytest.raises(train.CheckpointError, match=r"intact checkpoints .* are steps \[1, 2\]"):
        train.load_params(tmp_path, step=3)


def test_the_newest_step_wins_whichever_format_holds_it(tmp_path):
    tree, placed = state_tree(fsdp(8))
    train.save(tmp_path, 1, placed, mesh=fsdp(8))
    newer = jax.tree.map(lambda x: x * 2 if x.dtype == jnp.float64 else x, tree["params"])
    train.save(tmp_path, 2, {**tree, "params": newer})
    assert train.steps(tmp_path) == [1, 2] and train.sharded_steps(tmp_path) == [1]
    for mesh in (None, fsdp(8)):
        step, back = train.restore(tmp_path, tree, mesh=mesh)
        assert step == 2
        equal(back["params"], newer)
    equal(train.load_params(tmp_path, step=1), tree["params"])


FIXTURES = Path(__file__).resolve().parents[1] / "data" / "checkpoints"


def test_sharded_checkpoints_of_the_earlier_layout_still_load():
    expected = runpy.run_path(str(FIXTURES / "make_v1.py"))["fit_tree"]()
    step, back = train.restore(
        FIXTURES / "sharded_v1", jax.eval_shape(lambda: expected), mesh=fsdp(8)
    )
    assert step == 4
    equal(back["params"], expected["params"])
    equal(back["opt_state"], expected["opt_state"])
    equal(jax.random.key_data(back["key"]), jax.random.key_data(expected["key"]))
    equal(train.load_params(FIXTURES / "sharded_v1"), expected["params"])


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax's, as above
def test_truncated_newest_sharded_files_fall_back_to_the_one_before(tmp_path):
    tree, placed = state_tree(fsdp(8))
    train.save(tmp_path, 1, placed, mesh=fsdp(8))
    train.save(tmp_path, 2, placed, mesh=fsdp(8))
    for data in (tmp_path / "sharded_000000002").rglob("d/*"):
        content = data.read_bytes()
        data.write_bytes(content[: len(content) // 2])
    with pytest.warns(RuntimeWarning, match=r"sharded_000000002.*corrupted or truncated"):
        assert train.load_params(tmp_path, tree["params"])["dense_0"]["w"].shape == (16, 32)
