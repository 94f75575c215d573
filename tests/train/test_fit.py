import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import funcgrad as fg
from funcgrad import errors, losses, nn

MODEL = nn.serial(nn.Dense(16), nn.Dropout(0.1), nn.relu, nn.Dense(3))


def data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.5)
    return x, y.astype(np.int32)


def loss_fn(params, batch, *, key):
    x, y = batch
    return losses.softmax_cross_entropy(MODEL.apply(params, x, key=key), y)


def accuracy(params, batch):
    x, y = batch
    return jnp.mean(jnp.argmax(MODEL.apply(params, x), -1) == y)


def init():
    return MODEL.init(jax.random.key(0), jnp.zeros((1, 4), jnp.float32))


def run(*hooks, **kwargs):
    options = {"key": jax.random.key(1), "batch_size": 16, "with_key": True, "hooks": list(hooks)}
    params = kwargs.pop("params", None)
    params = init() if params is None else params
    return fg.train.fit(loss_fn, optax.adam(1e-2), params, data(), **{**options, **kwargs})


def test_fit_trains_evaluates_and_records_history():
    result = run(
        fg.train.LogMetrics(6),
        fg.train.Evaluate(data(48, seed=1), {"accuracy": accuracy}),
        epochs=10,
    )
    assert result.step == 60 and result.stopped is None
    assert result.history.steps("loss") == list(range(6, 61, 6))
    assert result.history["loss"][-1] < result.history["loss"][0]
    assert result.history.steps("accuracy") == [60]
    assert result.history["accuracy"][-1] > 0.8


def test_resuming_from_a_checkpoint_is_bitwise_identical(tmp_path):
    straight = run(steps=40)
    first = run(fg.train.Checkpoint(tmp_path, 10), steps=20)
    assert first.step == 20 and fg.train.steps(tmp_path) == [10, 20]
    resumed = run(fg.train.Checkpoint(tmp_path, 10), steps=40)
    assert resumed.step == 40
    for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert resumed.history.steps("loss")[0] < 20  # the history before the interruption came back


def test_fused_steps_give_the_same_result():
    single = run(fg.train.LogMetrics(8), steps=24)
    fused = run(steps=24, fused=8)
    for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(fused.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(single.history["loss"], fused.history["loss"], rtol=1e-5)


def test_nan_guard_stops_naming_the_step_and_keeps_finite_params():
    def exploding(w, batch):
        return jnp.mean(jnp.sqrt(3.0 - w) + 0 * batch)  # NaN once w passes 3

    with pytest.warns(RuntimeWarning, match="not finite at step"):
        result = fg.train.fit(
            exploding, optax.sgd(1.0), jnp.zeros(()), np.zeros(8, np.float32),
            key=jax.random.key(0), batch_size=4, steps=100, hooks=[],
        )  # fmt: skip
    assert result.stopped is not None and "non-finite" in result.stopped
    assert f"step {result.step}" in result.stopped
    assert bool(
        jnp.isfinite(result.params)
    )  # the last finite ones (the step that made w > 3 was finite)
    assert all(np.isfinite(result.history["loss"]))
    assert result.step < 100


def test_early_stopping_on_a_metric_that_stops_improving():
    stop = fg.train.EarlyStopping(monitor="eval_loss", patience=2, min_delta=10.0)
    result = run(fg.train.Evaluate(data(32), every=4), stop, steps=200)
    assert result.stopped is not None and "early stopping" in result.stopped
    assert result.step == 12


def test_history_exports(tmp_path):
    result = run(fg.train.LogMetrics(4), steps=8)
    result.history.to_csv(tmp_path / "h.csv")
    assert (tmp_path / "h.csv").read_text().splitlines()[0] == "step,loss"
    again = fg.train.History.from_json(result.history.to_json())
    assert again.rows == result.history.rows
    assert result.history.plot(tmp_path / "h.png").stat().st_size > 1000


def test_bad_arguments():
    with pytest.raises(errors.ConfigError, match="exactly one of steps= and epochs="):
        run(steps=4, epochs=1)
    with pytest.raises(errors.ConfigError, match=r"batch_size must be in \[1, 96\]"):
        run(steps=4, batch_size=200)
    with pytest.raises(errors.ConfigError, match="monitors 'accuracy'"):
        run(fg.train.Evaluate(data(16)), fg.train.EarlyStopping(monitor="accuracy"), steps=4)
    with pytest.raises(errors.ConfigError, match="no Evaluate hook comes before it"):
        run(fg.train.EarlyStopping(), steps=4)


def test_batch_norm_state_in_fit():
    model = nn.serial(nn.Dense(8), nn.BatchNorm(), nn.Dense(3))
    params, state = model.init_with_state(jax.random.key(0), jnp.zeros((1, 4)))

    def bn_loss(p, s, batch):
        y, s = model.apply(p, batch[0], state=s, train=True)
        return losses.softmax_cross_entropy(y, batch[1]), s

    result = fg.train.fit(bn_loss, optax.adam(1e-2), params, data(), model_state=state,
                          key=jax.random.key(0), batch_size=16, steps=12, hooks=[])  # fmt: skip
    assert not np.allclose(result.model_state["batch_norm_1"]["mean"], 0)


def test_fit_leaves_the_callers_arrays_alive():
    params = init()
    run(steps=2, params=params)
    assert float(jnp.sum(params["dense_0"]["w"])) == float(jnp.sum(init()["dense_0"]["w"]))


def test_prefetch_gives_the_same_result():
    plain = run(steps=12)
    prefetched = run(steps=12, prefetch=3)
    for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(prefetched.params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_plot_without_matplotlib_says_how_to_get_it(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(fg.errors.MissingToolError, match=r"pip install 'funcgrad\[examples\]'"):
        fg.train.History([{"step": 1, "loss": 1.0}]).plot(tmp_path / "h.png")


def test_the_old_keywords_still_work_with_a_deprecation_warning(tmp_path):
    with pytest.deprecated_call(match=r"eval_data= → fg\.train\.Evaluate"):
        result = run(steps=12, eval_data=data(16), log_every=6, progress=False)
    assert result.history.steps("loss") == [6, 12] and result.history.steps("eval_loss") == [12]
    with pytest.deprecated_call(match=r"checkpoint_dir= → fg\.train\.Checkpoint"):
        run(steps=4, checkpoint_dir=tmp_path, progress=False)
    assert fg.train.steps(tmp_path) == [4]
    with pytest.raises(TypeError, match="unexpected keyword"):
        run(steps=4, log_evry=2)


def test_fit_changes_no_hook_it_is_given():
    stop = fg.train.EarlyStopping(patience=100)
    evaluate = fg.train.Evaluate(data(16), every=6)
    log = fg.train.LogMetrics()
    before = (vars(stop).copy(), evaluate.every, evaluate.batch_size, log.every)
    run(log, evaluate, stop, steps=12)
    assert stop.every is None and (evaluate.every, evaluate.batch_size, log.every) == before[1:]
    assert {k: v for k, v in vars(stop).items() if not k.startswith("_")} == {
        k: v for k, v in before[0].items() if not k.startswith("_")
    }


def test_fit_result_holds_each_value_once():
    result = run(steps=6)
    fields = {f.name for f in __import__("dataclasses").fields(result)}
    assert fields == {"state", "history", "stopped"}
    assert result.params is result.state.params and result.step == 6
    assert result.model_state is None


def test_a_nan_in_the_data_stops_with_a_warning_naming_the_step_and_the_batch():
    x, y = data()
    x = x.copy()
    x[5] = np.nan  # in some batch of the first epoch
    with pytest.warns(RuntimeWarning, match=r"not finite at step \d+: the batch of that step holds non-finite inputs"):  # fmt: skip
        result = fg.train.fit(loss_fn, optax.adam(1e-2), init(), (x, y), key=jax.random.key(1),
                              batch_size=4, steps=24, with_key=True, hooks=[])  # fmt: skip
    assert result.stopped is not None and f"step {result.step}" in result.stopped
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(result.params))


def test_a_diverging_run_warns_that_its_data_was_finite():
    def exploding(w, batch):
        return jnp.mean(jnp.sqrt(3.0 - w) + 0 * batch)

    with pytest.warns(RuntimeWarning, match="the batch of that step is finite"):
        fg.train.fit(exploding, optax.sgd(1.0), jnp.zeros(()), np.zeros(8, np.float32),
                     key=jax.random.key(0), batch_size=4, steps=100, hooks=[])  # fmt: skip


def test_fit_with_an_int_key_says_what_a_key_is():
    with pytest.raises(errors.InputTypeError, match=r"fit\(key=\): expected a PRNG key"):
        run(steps=2, key=0)


def with_timeout(seconds, fn):
    """Run ``fn`` in a thread; fail instead of hanging if it has not returned in time."""
    import threading

    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("value", fn()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"did not return within {seconds}s (a hang)"
    return out["value"]


def test_history_is_a_read_only_mapping_of_metric_names():
    history = fg.train.History([{"step": 5, "loss": 1.0}, {"step": 10, "loss": 0.5, "acc": 0.9}])
    assert with_timeout(5, lambda: "loss" in history)  # used to loop forever
    assert with_timeout(5, lambda: "eval_loss" not in history)
    assert with_timeout(5, lambda: "step" not in history)
    assert with_timeout(5, lambda: list(history)) == ["loss", "acc"] == list(history.keys())
    assert len(history) == 2 and history.names() == ["loss", "acc"]
    assert dict(history.items()) == {"loss": [1.0, 0.5], "acc": [0.9]}
    with pytest.raises(errors.UnknownNameError, match=r"'eval_loss'.*\['loss', 'acc'\]"):
        history["eval_loss"]
    assert history.get("eval_loss") is None
    assert not hasattr(history, "__setitem__")
