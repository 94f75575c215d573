import hashlib
import io
import json
import pathlib
import runpy
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import funcgrad as fg
from funcgrad.train import CheckpointError


def tree():
    params = {"dense_0": {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.zeros(3)}}
    return {"params": params, "opt_state": optax.adam(1e-3).init(params), "key": jax.random.key(3)}


def test_round_trip_is_exact_including_prng_keys(tmp_path):
    original = tree()
    fg.train.save(tmp_path, 5, original)
    step, loaded = fg.train.restore(tmp_path, tree())
    assert step == 5
    for a, b in zip(jax.tree.leaves(original), jax.tree.leaves(loaded), strict=True):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(a, b)


def test_keeps_the_newest_n(tmp_path):
    for step in range(1, 6):
        fg.train.save(tmp_path, step, tree(), keep=2)
    assert fg.train.steps(tmp_path) == [4, 5]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt_000000004.json", "ckpt_000000004.npz", "ckpt_000000005.json", "ckpt_000000005.npz",
    ]  # fmt: skip


def test_truncated_or_bit_flipped_file_is_refused(tmp_path):
    path = fg.train.save(tmp_path, 1, tree())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        fg.train.restore(tmp_path, tree())
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0x01
    path.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        fg.train.restore(tmp_path, tree())


def test_checkpoint_of_another_model_names_the_first_difference(tmp_path):
    fg.train.save(tmp_path, 1, tree())
    other = tree()
    other["params"]["dense_0"]["w"] = jnp.zeros((4, 3))
    with pytest.raises(
        CheckpointError,
        match=r"params\.dense_0\.w \(saved float\d+\[2, 3\], expected float\d+\[4, 3\]\)",
    ):
        fg.train.restore(tmp_path, other)
    renamed = tree()
    renamed["params"] = {"dense_1": renamed["params"]["dense_0"]}
    with pytest.raises(CheckpointError, match=r"no leaf params\.dense_1\.b, params\.dense_1\.w"):
        fg.train.restore(tmp_path, renamed)


def test_a_pickle_payload_is_never_loaded(tmp_path):
    path = fg.train.save(tmp_path, 1, {"w": jnp.ones(2)})

    class Boom:
        def __reduce__(self):
            return (print, ("code ran",))

    evil = np.array([Boom()], dtype=object)  # np.savez stores object arrays as a pickle
    buffer = io.BytesIO()
    np.savez(buffer, **{"w": evil})
    path.write_bytes(buffer.getvalue())
    manifest = json.loads(path.with_suffix(".json").read_text())
    manifest["sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()
    path.with_suffix(".json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="other than plain arrays"):
        fg.train.restore(tmp_path, {"w": jnp.ones(2)})


def test_directory_that_cannot_be_made_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(CheckpointError, match="cannot create checkpoint directory"):
        fg.train.save(blocker / "ckpt", 1, tree())


def test_full_disk_fails_loudly_and_keeps_older_checkpoints(tmp_path, monkeypatch):
    fg.train.save(tmp_path, 1, {"w": jnp.ones(2)}, keep=1)

    def no_space(self, data):
        raise OSError(28, "No space left on device")

    # Every atomic write fills its temporary file through Path.write_bytes (funcgrad.io).
    monkeypatch.setattr(pathlib.Path, "write_bytes", no_space)
    with pytest.raises(
        CheckpointError, match="No space left on device.*earlier checkpoints are intact"
    ):
        fg.train.save(tmp_path, 2, {"w": jnp.zeros(2)}, keep=1)
    monkeypatch.undo()
    assert fg.train.steps(tmp_path) == [1]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert fg.train.restore(tmp_path, {"w": jnp.zeros(2)})[1]["w"].tolist() == [1.0, 1.0]


SAVE_AND_DIE = """
import sys, os, jax.numpy as jnp, funcgrad as fg
from funcgrad.train.checkpoint import npz
real = npz.write_atomic
def dying(path, data):
    if path.suffix == ".npz":
        # write half of the new file to its temporary name, then die as a killed process would
        fd = os.open(path.parent / ".partial.tmp", os.O_WRONLY | os.O_CREAT)
        os.write(fd, data[: len(data) // 2])
        os._exit(9)
    real(path, data)
npz.write_atomic = dying
fg.train.save(sys.argv[1], 2, {"w": jnp.full(3, 2.0)})
"""


def test_a_save_killed_midway_leaves_the_previous_checkpoint(tmp_path):
    fg.train.save(tmp_path, 1, {"w": jnp.full(3, 1.0)})
    proc = subprocess.run([sys.executable, "-c", SAVE_AND_DIE, str(tmp_path)], timeout=120)
    assert proc.returncode == 9
    assert fg.train.steps(tmp_path) == [1]
    step, loaded = fg.train.restore(tmp_path, {"w": jnp.zeros(3)})
    assert step == 1 and loaded["w"].tolist() == [1.0, 1.0, 1.0]


SAVE_FOREVER = """
import sys, jax.numpy as jnp, funcgrad as fg
step = 0
while True:
    step += 1
    fg.train.save(sys.argv[1], step, {"w": jnp.full((256, 256), float(step))}, keep=2)
    print(step, flush=True)
"""


@pytest.mark.parametrize("delay", [0.05, 0.3, 0.7, 1.1, 1.6])
def test_saves_killed_at_random_points_never_leave_a_broken_newest(tmp_path, delay):
    import random
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-c", SAVE_FOREVER, str(tmp_path)], stdout=subprocess.PIPE
    )
    try:
        proc.stdout.readline()  # at least one save completed
        time.sleep(delay * random.uniform(0.5, 1.5))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    available = fg.train.steps(tmp_path)
    assert available
    step, loaded = fg.train.restore(tmp_path, {"w": jnp.zeros((256, 256), jnp.float32)})
    assert step == available[-1]
    assert bool(jnp.all(loaded["w"] == float(step)))


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path):
    for step in range(1, 5):
        fg.train.save(tmp_path, step, {"params": {"w": jnp.full(3, float(step))}}, keep=None)
    truncate(tmp_path / "ckpt_000000004.npz")
    like = {"params": {"w": jnp.zeros(3)}}
    with pytest.warns(RuntimeWarning, match=r"ckpt_000000004\.npz is corrupted or truncated"):
        step, tree = fg.train.restore(tmp_path, like)
    assert step == 3 and tree["params"]["w"].tolist() == [3.0] * 3
    with pytest.warns(RuntimeWarning, match=r"ckpt_000000004\.npz"):
        assert fg.train.load_params(tmp_path)["w"].tolist() == [3.0] * 3


def test_asking_for_the_damaged_step_lists_the_intact_ones(tmp_path):
    for step in range(1, 5):
        fg.train.save(tmp_path, step, {"w": jnp.full(3, float(step))}, keep=None)
    truncate(tmp_path / "ckpt_000000004.npz")
    truncate(tmp_path / "ckpt_000000002.npz")
    with pytest.raises(CheckpointError, match=r"corrupted or truncated.*intact .* steps \[1, 3\]"):
        fg.train.load_params(tmp_path, step=4)
    assert fg.train.load_params(tmp_path, step=3)["w"].tolist() == [3.0] * 3


def test_only_damaged_checkpoints_is_an_error_naming_each(tmp_path):
    for step in (1, 2):
        fg.train.save(tmp_path, step, {"w": jnp.ones(2)}, keep=None)
        truncate(tmp_path / f"ckpt_00000000{step}.npz")
    with pytest.warns(RuntimeWarning), pytest.raises(CheckpointError) as err:
        fg.train.restore(tmp_path, {"w": jnp.ones(2)})
    assert "every checkpoint" in str(err.value) and "ckpt_000000001.npz" in str(err.value)


def test_a_resuming_fit_skips_a_damaged_newest_checkpoint(tmp_path):
    x = jnp.linspace(-1, 1, 32)[:, None]

    def loss(w, batch):
        return jnp.mean((batch[0] * w - 3 * batch[0]) ** 2)

    def run(steps):
        return fg.train.fit(
            loss, optax.sgd(0.1), jnp.zeros(()), (x,), key=jax.random.key(0), batch_size=8,
            steps=steps, hooks=[fg.train.Checkpoint(tmp_path, 4, keep=4)],
        )  # fmt: skip

    straight = fg.train.fit(
        loss, optax.sgd(0.1), jnp.zeros(()), (x,), key=jax.random.key(0), batch_size=8,
        steps=20, hooks=[],
    )  # fmt: skip
    run(16)
    assert fg.train.steps(tmp_path) == [4, 8, 12, 16]
    truncate(tmp_path / "ckpt_000000016.npz")
    with pytest.warns(RuntimeWarning, match=r"ckpt_000000016\.npz is corrupted"):
        resumed = run(20)
    assert resumed.step == 20 and float(resumed.params) == float(straight.params)


def test_keys_are_dotted_paths(tmp_path):
    fg.train.save(tmp_path, 1, tree())
    manifest = json.loads((tmp_path / "ckpt_000000001.json").read_text())
    assert manifest["format"] == "funcgrad-checkpoint-2"
    assert (
        "params.dense_0.w" in manifest["leaves"]
        and "opt_state.0.mu.dense_0.b" in manifest["leaves"]
    )
    assert set(manifest["prng_keys"]) == {"key"}


def test_template_is_the_deprecated_name_of_like(tmp_path):
    fg.train.save(tmp_path, 2, {"w": jnp.ones(2)})
    with pytest.deprecated_call(match="like="):
        step, loaded = fg.train.restore(tmp_path, template={"w": jnp.zeros(2)})
    assert step == 2 and loaded["w"].tolist() == [1.0, 1.0]


FIXTURES = Path(__file__).resolve().parents[1] / "data" / "checkpoints"
OLD = runpy.run_path(str(FIXTURES / "make_v1.py"))  # how the fixtures were written


def same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_checkpoints_of_the_keystr_layout_still_load():
    expected = OLD["fit_tree"]()
    like = jax.eval_shape(OLD["fit_tree"])
    step, loaded = fg.train.restore(FIXTURES / "npz_v1", like)
    assert step == 4
    same(loaded, expected)
    assert jax.random.key_impl(loaded["key"]) == jax.random.key_impl(expected["key"])
    same(fg.train.load_params(FIXTURES / "npz_v1"), expected["params"])
    same(fg.train.load_params(FIXTURES / "npz_v1", like["params"]), expected["params"])
    assert fg.train.load_params(FIXTURES / "npz_v1_bare").tolist() == [0.0, 1.0, 2.0]
