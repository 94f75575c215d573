"""`fit` on an iterable of batches: grain pipelines and generators, exact resume from a checkpoint
(the saved data position), prefetch, and the clear errors for bad streams."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import funcgrad as fg
from funcgrad.errors import CheckpointError, ConfigError, DTypeError, InputTypeError, ShapeError

grain = pytest.importorskip("grain")

X = np.random.default_rng(0).normal(size=(96, 3)).astype(np.float32)
Y = X @ np.array([1.0, -2.0, 0.5], np.float32)


def loss_fn(w, batch):
    return jnp.mean((batch["x"] @ w - batch["y"]) ** 2)


def pipeline(seed=0):
    """96 examples, shuffled, mapped, in 12 batches of 8."""
    source = grain.MapDataset.source(np.arange(len(X)))
    return source.shuffle(seed=seed).map(lambda i: {"x": X[i] * 2, "y": Y[i] * 2}).batch(8)


def generator(stop=12):
    for i in range(stop):
        yield {"x": X[8 * i : 8 * i + 8], "y": Y[8 * i : 8 * i + 8]}


def run(data, directory=None, **options):
    hooks = [] if directory is None else [fg.train.Checkpoint(directory, 4)]
    options.setdefault("steps", 10)
    return fg.train.fit(
        loss_fn, optax.adam(0.05), jnp.zeros(3), data, key=jax.random.key(0), hooks=hooks,
        **options,
    )  # fmt: skip


def same(a, b):
    np.testing.assert_array_equal(np.asarray(a.params), np.asarray(b.params))


def test_a_grain_pipeline_resumes_from_the_same_example_bitwise(tmp_path):
    straight = run(pipeline().to_iter_dataset())
    first = run(pipeline().to_iter_dataset(), tmp_path, steps=6)
    assert first.step == 6
    resumed = run(pipeline().to_iter_dataset(), tmp_path, prefetch=3)
    assert resumed.step == 10
    same(resumed, straight)
    # The saved position is the one after the last batch a step consumed, not the prefetched one.
    assert '"next_index": 8' in (tmp_path / "data_000000008.json").read_text()


def test_epochs_reiterate_the_dataset_and_resume_mid_epoch_with_fused_steps(tmp_path):
    straight = run(pipeline(), epochs=2, steps=None)
    assert straight.step == 24  # len(pipeline()) = 12 batches an epoch

    class Interrupt(fg.train.Hook):
        every = 15

        def after_step(self, run):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fg.train.fit(
            loss_fn, optax.adam(0.05), jnp.zeros(3), pipeline(), key=jax.random.key(0),
            epochs=2, fused=3, hooks=[fg.train.Checkpoint(tmp_path, 3), Interrupt()],
        )  # fmt: skip
    assert '"epoch": 1' in (tmp_path / "data_000000015.json").read_text()
    resumed = run(pipeline(), tmp_path, epochs=2, steps=None, fused=3, prefetch=2)
    assert resumed.step == 24
    same(resumed, straight)


def test_a_grain_data_loader_resumes_bitwise(tmp_path):
    def loader():
        sampler = grain.samplers.IndexSampler(len(X), shuffle=True, seed=1, num_epochs=1)
        pairs = [{"x": x, "y": y} for x, y in zip(X, Y, strict=True)]
        batch = [grain.transforms.Batch(8, drop_remainder=True)]
        return grain.DataLoader(data_source=pairs, sampler=sampler, operations=batch)

    straight = run(loader())
    run(loader(), tmp_path, steps=4)
    same(run(loader(), tmp_path), straight)


def test_a_generator_resumes_by_skipping_only_when_asked(tmp_path):
    straight = run(generator())
    run(generator(), tmp_path, steps=4, prefetch=2)
    with pytest.raises(ConfigError, match=r"step 4 .*cannot restore its position.*resume_by_skip"):
        run(generator(), tmp_path)
    resumed = run(fg.train.resume_by_skipping(generator()), tmp_path, prefetch=2)
    same(resumed, straight)


def test_a_batch_of_another_structure_names_the_step_and_both():
    def changing(bad):
        yield from generator(3)
        yield bad

    with pytest.raises(
        ShapeError, match=r"step 4 differs .*x: float32\[8, 3\].*x: float32\[5, 3\]"
    ):
        run(changing({"x": X[:5], "y": Y[:5]}), steps=4)
    with pytest.raises(DTypeError, match=r"step 4 differs .*float32\[8\].*int32\[8\]"):
        run(changing({"x": X[:8], "y": np.zeros(8, np.int32)}), steps=4)
    with pytest.raises(InputTypeError, match=r"step 4 differs .*got \{x: float32\[8, 3\]\}"):
        run(changing({"x": X[:8]}), steps=4)


def test_running_out_says_how_many_steps_ran():
    with pytest.raises(ConfigError, match=r"ran out after 3 batches: 3 steps ran of the 10"):
        run(generator(3), prefetch=2)
    with pytest.raises(ConfigError, match=r"data \(generator\) yielded no batches"):
        run(generator(0))
    with pytest.raises(ConfigError, match="epochs= with an iterator"):
        run(generator(), epochs=1, steps=None)
    with pytest.raises(ShapeError, match="batch_size=16"):
        run(generator(), batch_size=16)


def test_a_checkpoint_whose_data_position_does_not_fit_is_refused(tmp_path):
    run(pipeline().to_iter_dataset(), tmp_path, steps=4)
    with pytest.raises(CheckpointError, match=r"step 4 .*PrefetchDatasetIterator.*cannot restore"):
        run(generator(), tmp_path)  # a generator, where the checkpoint holds a grain position
    other = grain.experimental.WindowShuffleIterDataset(
        pipeline().to_iter_dataset(), window_size=4, seed=0
    )
    with pytest.raises(CheckpointError, match=r"step 4 .*another pipeline"):
        run(other, tmp_path)
    with pytest.raises(CheckpointError, match=r"step 4 .*in-memory arrays"):
        run({"x": X, "y": Y}, tmp_path, batch_size=8)


def test_a_checkpoint_of_in_memory_arrays_does_not_resume_a_stream(tmp_path):
    run({"x": X, "y": Y}, tmp_path, steps=4, batch_size=8)
    with pytest.raises(CheckpointError, match=r"step 4 .*holds no data position"):
        run(pipeline().to_iter_dataset(), tmp_path)
