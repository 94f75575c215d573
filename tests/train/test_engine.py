"""One engine: TrainState through make_step/make_multistep, fit as a loop over them with hooks."""

import io
import json
import time
from contextlib import redirect_stderr

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import funcgrad as fg
from funcgrad import errors, losses, nn
from funcgrad.train import CheckpointError, TrainState

MODEL = nn.serial(nn.Dense(16), nn.Dropout(0.1), nn.relu, nn.Dense(3))


def data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.5)
    return x, y.astype(np.int32)


def loss_fn(params, batch, *, key):
    x, y = batch
    return losses.softmax_cross_entropy(MODEL.apply(params, x, key=key), y)


def init():
    return MODEL.init(jax.random.key(0), jnp.zeros((1, 4), jnp.float32))


def run(*hooks, **kwargs):
    options = {"key": jax.random.key(1), "batch_size": 16, "with_key": True, "hooks": list(hooks)}
    return fg.train.fit(loss_fn, optax.adam(1e-2), init(), data(), **{**options, **kwargs})


def assert_same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_a_step_on_a_train_state_equals_the_step_on_arrays():
    opt = optax.adam(1e-2)
    step = fg.train.make_step(loss_fn, opt, with_key=True)
    state = TrainState.create(init(), opt, key=jax.random.key(7))
    params, opt_state = init(), opt.init(init())
    batches = list(fg.train.batches(jax.random.key(2), data(), 16))
    for t, batch in enumerate(batches):
        state, m1 = step(state, batch)
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(7), 1), t)
        params, opt_state, m2 = step.arrays(params, opt_state, batch, key)
        assert float(m1["loss"]) == float(m2["loss"])
    assert_same(state.params, params)
    assert_same(state.opt_state, opt_state)
    assert int(state.step) == len(batches) == int(state.sums["count"])
    assert float(state.sums["loss"]) > 0


def test_multistep_on_a_train_state_equals_single_steps():
    opt = optax.sgd(0.1, momentum=0.9)
    batches = list(fg.train.batches(jax.random.key(2), data(), 16))[:4]
    block = jax.tree.map(lambda *xs: np.stack(xs), *batches)
    single = fg.train.make_step(loss_fn, opt, with_key=True)
    state = TrainState.create(init(), opt, key=jax.random.key(3))
    for batch in batches:
        state, _ = single(state, batch)
    multi = fg.train.make_multistep(loss_fn, opt, 4, with_key=True)
    fused, metrics = multi(TrainState.create(init(), opt, key=jax.random.key(3)), block)
    assert metrics["loss"].shape == (4,)
    np.testing.assert_allclose(fused.params["dense_0"]["w"], state.params["dense_0"]["w"], 1e-6)
    assert int(fused.step) == 4 and int(fused.sums["count"]) == 4


def test_nan_guard_is_an_optax_transformation_that_works_in_make_step():
    def exploding(w, batch):
        return jnp.mean(jnp.sqrt(3.0 - w) + 0 * batch)

    opt = fg.train.nan_guard(optax.sgd(1.0))
    step = fg.train.make_step(exploding, opt)
    state = TrainState.create(jnp.zeros(()), opt, key=jax.random.key(0))
    for _ in range(30):
        state, _ = step(state, jnp.zeros(4))
    bad = int(fg.train.nonfinite_step(state.opt_state))
    assert 0 < bad < 30
    assert bool(jnp.isfinite(state.params)) and float(state.params) > 3
    assert int(state.sums["count"]) == bad  # only the finite steps are summed
    assert fg.train.nonfinite_step(optax.sgd(1.0).init(jnp.zeros(()))) is None


def test_reusing_a_donated_state_says_so():
    opt = optax.sgd(0.1)
    step = fg.train.make_step(lambda p, b: jnp.sum(p * b), opt)
    state = TrainState.create(jnp.ones(3), opt, key=jax.random.key(0))
    step(state, jnp.ones(3))
    with pytest.raises(errors.DonatedError, match="donated to an earlier call.*returned"):
        step(state, jnp.ones(3))
    with pytest.raises(errors.DonatedError, match="state.params"):
        TrainState.create(state.params, opt, key=jax.random.key(0))


def test_the_arrays_a_user_passes_stay_valid():
    """TrainState.create copies; the array form donates only when asked to."""
    params = init()
    opt = optax.adam(1e-2)
    step = fg.train.make_step(loss_fn, opt, with_key=True)
    state = TrainState.create(params, opt, key=jax.random.key(0))
    state, _ = step(state, data(16))
    assert MODEL.apply(params, data(4)[0]).shape == (4, 3)  # was "Array has been deleted"
    opt_state = opt.init(params)
    step.arrays(params, opt_state, data(16), jax.random.key(1))
    assert MODEL.apply(params, data(4)[0]).shape == (4, 3)
    donating = fg.train.make_step(loss_fn, opt, with_key=True, donate=True)
    donating.arrays(params, opt_state, data(16), jax.random.key(1))
    with pytest.raises(errors.DonatedError, match="donated"):
        donating.arrays(params, opt_state, data(16), jax.random.key(1))
    with pytest.raises(errors.DonatedError, match="state the step returned"):
        fg.train.fit(loss_fn, opt, params, data(), key=jax.random.key(0), batch_size=16, steps=1,
                     with_key=True, hooks=[])  # fmt: skip


def test_fit_is_the_loop_a_user_writes_over_make_step():
    """The 20-line loop of docs/training.md gives fit's parameters bitwise."""
    key, opt = jax.random.key(1), fg.train.nan_guard(optax.adam(1e-2))
    step = fg.train.make_step(loss_fn, opt, with_key=True)
    state = TrainState.create(init(), opt, key=key)
    for epoch in range(3):
        epoch_key = jax.random.fold_in(jax.random.fold_in(key, 0), epoch)
        for batch in fg.train.batches(epoch_key, data(), 16):
            state, _ = step(state, batch)
    result = run(epochs=3)
    assert_same(result.params, state.params)
    assert result.step == int(state.step) == 18


def test_fused_fit_matches_make_multistep():
    key, opt = jax.random.key(1), fg.train.nan_guard(optax.adam(1e-2))
    multi = fg.train.make_multistep(loss_fn, opt, 6, with_key=True)
    state = TrainState.create(init(), opt, key=key)
    for epoch in range(2):
        epoch_key = jax.random.fold_in(jax.random.fold_in(key, 0), epoch)
        block = jax.tree.map(lambda *xs: np.stack(xs), *fg.train.batches(epoch_key, data(), 16))
        state, _ = multi(state, block)
    result = run(steps=12, fused=6)
    assert_same(result.params, state.params)


def test_resumed_history_equals_the_uninterrupted_runs(tmp_path):
    """The issue's case: a run of 25 steps, then the same run extended to 60."""
    evaluate = fg.train.Evaluate(data(32, seed=1), every=20)
    straight = run(evaluate, steps=60)
    first = run(evaluate, fg.train.Checkpoint(tmp_path, 10), steps=25)
    assert first.history.steps("loss")[-1] == 25 and first.history.steps("eval_loss") == [20, 25]
    resumed = run(evaluate, fg.train.Checkpoint(tmp_path, 10), steps=60)
    assert resumed.history.rows == straight.history.rows
    assert straight.history.steps("eval_loss") == [20, 40, 60]
    assert straight.history.steps("loss") == [10, 20, 30, 40, 50, 60]
    assert_same(resumed.params, straight.params)


def test_an_interrupted_run_resumes_to_the_same_history(tmp_path):
    class Interrupt(fg.train.Hook):
        every = 1

        def after_step(self, run):
            if run.step == 37:
                raise KeyboardInterrupt

    straight = run(steps=60)
    with pytest.raises(KeyboardInterrupt):
        run(fg.train.Checkpoint(tmp_path, 5), Interrupt(), steps=60)
    assert fg.train.steps(tmp_path)[-1] == 35
    resumed = run(fg.train.Checkpoint(tmp_path, 5), steps=60)
    assert resumed.history.rows == straight.history.rows
    assert_same(resumed.params, straight.params)


def test_checkpoints_of_the_earlier_fit_still_resume(tmp_path):
    straight = run(steps=40)
    run(fg.train.Checkpoint(tmp_path, 10), steps=20)
    for extra in tmp_path.glob("loop_*.json"):  # what the earlier fit did not write
        extra.unlink()
    resumed = run(fg.train.Checkpoint(tmp_path, 10), steps=40)
    assert_same(resumed.params, straight.params)


def test_load_params_gives_the_trained_weights_of_a_fit_checkpoint(tmp_path):
    result = run(fg.train.Checkpoint(tmp_path, 0), steps=12)
    assert_same(fg.train.load_params(tmp_path), result.params)
    assert_same(fg.train.load_params(tmp_path, like=init()), result.params)
    logits = MODEL.apply(fg.train.load_params(tmp_path, like=init()), data()[0])
    assert logits.shape == (96, 3)
    other = nn.serial(nn.Dense(8), nn.relu, nn.Dense(3)).init(jax.random.key(0), jnp.zeros((1, 4)))
    with pytest.raises(CheckpointError) as err:
        fg.train.load_params(tmp_path, like={**other, "extra": {"w": jnp.ones(2)}})
    message = str(err.value)
    assert "dense_0.w (saved float32[4, 16], expected float32[4, 8])" in message
    assert "dense_2.b" in message and "dense_3.w" in message
    assert "the checkpoint has no leaf" in message and "extra.w" in message


def test_an_optimizer_state_mismatch_says_optimizer_state(tmp_path):
    run(fg.train.Checkpoint(tmp_path, 0), steps=4)
    template = {
        "params": init(),
        "opt_state": optax.sgd(0.1, momentum=0.9).init(init()),
        "model_state": {},
        "key": jax.random.key(0),
    }
    with pytest.raises(CheckpointError, match="optimizer state") as err:
        fg.train.restore(tmp_path, template)
    assert "parameters" not in str(err.value)
    assert "another model" not in str(err.value)


def test_the_checkpoint_layout_is_the_documented_one(tmp_path):
    run(fg.train.Checkpoint(tmp_path, 0), steps=12)
    manifest = json.loads((tmp_path / "ckpt_000000012.json").read_text())
    assert {name.split(".")[0] for name in manifest["leaves"]} == {"params", "opt_state", "key"}
    loop = json.loads((tmp_path / "loop_000000012.json").read_text())
    assert set(loop) == {"sums", "first_bad"} and loop["first_bad"] == -1
    assert (tmp_path / "history_000000012.json").exists()


def test_hooks_run_as_listed_and_fit_changes_none_of_them():
    class Record(fg.train.Hook):
        every = 4

        def __init__(self):
            self.seen = []

        def start(self, run):
            self.seen.append(("start", run.step))

        def after_step(self, run):
            self.seen.append(("step", run.step))

        def end(self, run):
            self.seen.append(("end", run.step))

    record = Record()
    result = run(record, fg.train.LogMetrics(3), steps=12)
    assert record.seen == [("start", 0), ("step", 4), ("step", 8), ("step", 12), ("end", 12)]
    assert result.history.steps("loss") == [3, 6, 9, 12]


def test_early_stopping_is_a_hook_too():
    stop = fg.train.EarlyStopping(monitor="eval_loss", patience=1, min_delta=10.0)
    result = run(fg.train.Evaluate(data(32), every=5), stop, steps=100)
    assert result.stopped is not None and result.step == 10


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_the_progress_bar_shows_compiling_apart_from_stepping():
    out = Terminal()
    run(fg.train.Progress(file=out), steps=12)
    text = out.getvalue()
    assert "compiling the step" in text and "compile=" in text
    assert "12/12" in text


def test_progress_off_a_terminal_writes_one_line_per_interval():
    out = io.StringIO()
    with redirect_stderr(out):
        run(*fg.train.default_hooks(), steps=48)  # logs every 10 steps here (6 batches an epoch)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert [line.split()[2] for line in lines] == ["10/48", "20/48", "30/48", "40/48", "48/48"]
    assert all("loss=" in line and "compile=" in line for line in lines)


def test_progress_rates_count_from_after_compiling():
    out = io.StringIO()
    bar = fg.train.Progress(file=out)
    state = TrainState.create(jnp.zeros(()), optax.sgd(0.1), key=jax.random.key(0))
    run_ = fg.train.Run(state=state, step=0, total=1000)
    bar.start(run_)
    time.sleep(0.5)  # "compiling"
    run_.step = 1
    bar.first_call_done(run_)
    run_.step = 500
    bar.after_step(run_)
    line = out.getvalue().splitlines()[-1]
    assert "compile=0.5s" in line
    per_step = float(line.split("ms/step")[0].split()[-1])
    assert per_step < 1.0  # not 0.5 s / 500 steps = 1 ms, nor 0.5 s a step
    assert "ETA 0:00:00" in line


def test_fit_returns_the_optimizers_own_state_and_the_whole_train_state():
    result = run(steps=6)
    opt = optax.adam(1e-2)
    assert jax.tree.structure(result.opt_state) == jax.tree.structure(opt.init(init()))
    assert isinstance(result.state, TrainState) and int(result.state.step) == 6
    again = fg.train.make_step(loss_fn, fg.train.nan_guard(opt), with_key=True)(
        result.state, data(16)
    )
    assert int(again[0].step) == 7


def test_a_donated_array_given_to_apply_says_so():
    model = nn.Dense(2)
    x = jnp.ones((1, 3))
    params = model.init(jax.random.key(0), x)
    step = fg.train.make_step(lambda p, b: jnp.sum(model.apply(p, b) ** 2), optax.sgd(0.1))
    state = fg.train.TrainState.create(params, optax.sgd(0.1), key=jax.random.key(1))
    gone = state.params
    state, _ = step(state, x)
    with pytest.raises(fg.errors.DonatedError, match="Dense.apply: an array passed in was donated"):
        model.apply(gone, x)
    assert model.apply(params, x).shape == (1, 2)  # the arrays the user passed stay valid
