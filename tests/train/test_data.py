import jax
import numpy as np
import pytest

import funcgrad as fg
from funcgrad import errors


def data(n=10):
    return {"x": np.arange(n * 2).reshape(n, 2), "y": np.arange(n)}


def test_one_epoch_visits_each_example_at_most_once():
    seen = np.concatenate([b["y"] for b in fg.train.batches(jax.random.key(0), data(), 3)])
    assert len(seen) == 9 and len(set(seen.tolist())) == 9


def test_order_is_drawn_from_the_key():
    a = [b["y"].tolist() for b in fg.train.batches(jax.random.key(0), data(), 5)]
    b = [b["y"].tolist() for b in fg.train.batches(jax.random.key(0), data(), 5)]
    c = [b["y"].tolist() for b in fg.train.batches(jax.random.key(1), data(), 5)]
    assert a == b != c


def test_pairs_stay_together_and_last_batch_kept_on_request():
    batches = list(fg.train.batches(jax.random.key(0), data(), 4, drop_last=False))
    assert [len(b["y"]) for b in batches] == [4, 4, 2]
    for b in batches:
        np.testing.assert_array_equal(b["x"][:, 0], 2 * b["y"])


def test_arrays_that_disagree_on_their_first_axis():
    with pytest.raises(errors.ShapeError, match="same leading"):
        list(fg.train.batches(None, (np.zeros(5), np.zeros(6)), 2, shuffle=False))


def test_data_smaller_than_one_batch():
    with pytest.raises(errors.ConfigError, match="5 examples, fewer than one batch of 8"):
        list(fg.train.batches(jax.random.key(0), np.zeros(5), 8))
