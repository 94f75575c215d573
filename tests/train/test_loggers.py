"""The loggers of funcgrad/train/loggers.py: TensorBoard and JSON lines agree with the history (at
its steps, with the learning rate and step time), resume appends, Profile traces, bad inputs."""

import io
import json
import math
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import funcgrad as fg
from funcgrad import errors

X = np.linspace(-1, 1, 64, dtype=np.float32)[:, None]
DATA = (X, 3 * X)
SCHEDULE = optax.linear_schedule(0.4, 0.1, 8)


def loss_fn(w, batch):
    x, y = batch
    return jnp.mean((x * w - y) ** 2)


def fit(*hooks, steps=8, opt=None):
    return fg.train.fit(
        loss_fn, opt or optax.sgd(0.3), jnp.zeros(()), DATA, key=jax.random.key(0),
        batch_size=16, steps=steps, hooks=list(hooks),
    )  # fmt: skip


def scalars(logdir):
    from tbparse import SummaryReader

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tbparse's own pandas deprecations
        frame = SummaryReader(str(logdir)).scalars
    return {tag: (group.step.tolist(), group.value.tolist()) for tag, group in frame.groupby("tag")}


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


class NaNMetric(fg.train.Hook):
    every = 4

    def after_step(self, run):
        run.history.append(run.step, odd=math.nan)


def test_tensorboard_json_lines_and_history_agree(tmp_path):
    bar = io.StringIO()
    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=SCHEDULE)
    result = fit(
        fg.train.LogMetrics(2), fg.train.Evaluate(DATA, every=4), NaNMetric(),
        fg.train.TensorBoard(tmp_path / "tb"), fg.train.JsonLines(tmp_path / "run.jsonl"),
        fg.train.Progress(file=bar), opt=opt,
    )  # fmt: skip
    history = result.history
    tb, js = scalars(tmp_path / "tb"), lines(tmp_path / "run.jsonl")

    assert [r["step"] for r in js] == [2, 4, 6, 8]  # one object per logged step
    for name in ("loss", "eval_loss"):
        steps = history.steps(name)
        assert tb[name][0] == steps == [r["step"] for r in js if name in r]
        np.testing.assert_allclose(tb[name][1], history[name], rtol=1e-6)  # float32 in events
        assert [r[name] for r in js if name in r] == history[name]  # exact
    assert history.steps("eval_loss") == [4, 8]
    assert [r["odd"] for r in js if "odd" in r] == [None, None]  # NaN is null: valid JSON
    assert all(math.isnan(v) for v in tb["odd"][1])

    # The rate each logged step's update used: the schedule at the step before it.
    expected = [float(SCHEDULE(s - 1)) for s in (2, 4, 6, 8)]
    assert tb["learning_rate"][0] == [2, 4, 6, 8]
    np.testing.assert_allclose(tb["learning_rate"][1], expected, rtol=1e-6)
    np.testing.assert_allclose([r["learning_rate"] for r in js], expected, rtol=1e-6)
    assert len(set(expected)) == 4

    assert tb["step_time"][0] == [2, 4, 6, 8]
    assert all(t > 0 for t in tb["step_time"][1] + [r["step_time"] for r in js])
    assert "fit: step 8/8" in bar.getvalue()


def tensorboard_scalars(logdir, tag):
    """What TensorBoard itself shows: its reader honours ``purge_step``, unlike tbparse."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir))
    events.Reload()
    return [e.step for e in events.Scalars(tag)], [e.value for e in events.Scalars(tag)]


def test_resume_appends_each_step_once(tmp_path):
    ckpt, tb, path = tmp_path / "ckpt", tmp_path / "tb", tmp_path / "run.jsonl"

    def hooks():
        return [
            fg.train.LogMetrics(1), fg.train.Checkpoint(ckpt, 2), fg.train.TensorBoard(tb),
            fg.train.JsonLines(path),
        ]  # fmt: skip

    fit(*hooks(), steps=4)
    # Interrupted after logging steps 3 and 4 but before checkpointing step 4, with a line cut
    # short: the run resumes from step 2, and the loggers drop (or hide) what came after it.
    for file in ckpt.glob("*000000004*"):
        file.unlink()
    with open(path, "a") as f:
        f.write('{"step": 5, "lo')
    result = fit(*hooks(), steps=8)
    steps = list(range(1, 9))
    js = lines(path)
    assert [r["step"] for r in js] == steps
    assert [r["loss"] for r in js] == result.history["loss"]
    assert all("learning_rate" not in r for r in js)  # a plain optax.sgd exposes none
    tb_steps, tb_loss = tensorboard_scalars(tb, "loss")
    assert tb_steps == steps
    np.testing.assert_allclose(tb_loss, result.history["loss"], rtol=1e-6)
    assert len(list(tb.glob("events.out.tfevents.*"))) == 2
    assert scalars(tb)["loss"][0] == [1, 2, 3, 3, 4, 4, 5, 6, 7, 8]  # tbparse ignores the purge

    # Listed before the Checkpoint that resumes the run, a logger cannot tell old rows from
    # new: it says so instead of writing them twice.
    hook = fg.train.JsonLines(path)
    with pytest.raises(errors.ConfigError, match="list it after Checkpoint"):
        fit(hook, fg.train.LogMetrics(1), fg.train.Checkpoint(ckpt, 2), steps=10)
    assert [r["step"] for r in lines(path)] == steps


@pytest.mark.parametrize(
    "make", [fg.train.TensorBoard, fg.train.JsonLines, lambda p: fg.train.Profile(p, (1, 2))]
)
def test_an_unwritable_destination_fails_at_the_start(tmp_path, make):
    blocker = tmp_path / "file"
    blocker.write_text("")
    hook = make(blocker / "logs")
    calls = []

    class Count(fg.train.Hook):
        every = 1

        def after_step(self, run):
            calls.append(run.step)

    with pytest.raises(errors.ConfigError, match=type(hook).__name__) as info:
        fit(Count(), hook)
    assert str(blocker / "logs") in str(info.value) and calls == []


@pytest.mark.parametrize("steps", [(3, 3), (5, 2), (-1, 2), (1,), (1.0, 2), [1, 2]])
def test_profile_refuses_a_bad_window(steps):
    with pytest.raises(errors.ConfigError, match="Profile: steps must be"):
        fg.train.Profile("runs", steps=steps)


def test_tensorboard_names_its_extra_when_tensorboardx_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(errors.MissingToolError, match=r"funcgrad\[tensorboard\]"):
        fg.train.TensorBoard("runs")


def test_profile_traces_its_window_and_stops_at_an_early_end(tmp_path):
    hook = fg.train.Profile(tmp_path / "a", steps=(2, 4))
    fit(hook, steps=6)
    assert hook.traced == (2, 4)
    assert list((tmp_path / "a").glob("plugins/profile/*/*.xplane.pb"))
    late = fg.train.Profile(tmp_path / "b", steps=(4, 100))
    fit(late, steps=6)
    assert late.traced == (4, 6)
    assert list((tmp_path / "b").glob("plugins/profile/*/*.xplane.pb"))


def test_an_early_stop_closes_the_writer_and_a_raise_loses_nothing_logged(tmp_path):
    class StopAt(fg.train.Hook):
        every = 1

        def __init__(self, step, error=False):
            self.step, self.error = step, error

        def after_step(self, run):
            if run.step == self.step:
                if self.error:
                    raise errors.ConfigError("boom")
                run.stop("enough")

    tb = fg.train.TensorBoard(tmp_path / "a")
    result = fit(fg.train.LogMetrics(3), tb, StopAt(4))
    assert result.stopped == "enough" and tb._writer is None
    assert scalars(tmp_path / "a")["loss"][0] == [3, 4]  # the end row of the stopped run too

    tb, js = fg.train.TensorBoard(tmp_path / "b"), fg.train.JsonLines(tmp_path / "b.jsonl")
    with pytest.raises(errors.ConfigError, match="boom"):
        fit(fg.train.LogMetrics(2), tb, js, StopAt(5, error=True))
    assert [r["step"] for r in lines(tmp_path / "b.jsonl")] == [2, 4]  # each line flushed
    assert tb._writer is None  # fit closes every hook, also when the run raised
    assert scalars(tmp_path / "b")["loss"][0] == [2, 4]
