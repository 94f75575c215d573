import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

from funcgrad import errors, nn


def test_embedding_looks_up_rows():
    table = jnp.arange(12.0).reshape(4, 3)
    np.testing.assert_array_equal(
        nn.Embedding(4, 3).apply({"embedding": table}, jnp.array([[3, 0]])),
        table[jnp.array([[3, 0]])],
    )


def test_embedding_gradient_accumulates_repeated_ids():
    table = jnp.zeros((4, 2))
    grads = jax.grad(
        lambda t: nn.Embedding(4, 2).apply({"embedding": t}, jnp.array([1, 1, 2])).sum()
    )(table)
    np.testing.assert_array_equal(grads[:, 0], [0, 2, 1, 0])


def test_embedding_refuses_float_ids():
    with pytest.raises(errors.DTypeError, match="integer ids"):
        nn.Embedding(4, 3).init(jax.random.key(0), jnp.zeros((2,)))


TABLE = jnp.arange(12.0).reshape(4, 3)


@pytest.mark.parametrize("ids", [[0, 4], [2, 7], [-1, 1]])
@pytest.mark.parametrize("mode", ["clip", "error"])
def test_out_of_range_concrete_ids_are_a_clear_error(ids, mode):
    # Before: ids >= 4 gave NaN rows and -1 wrapped to the last row, silently.
    emb = nn.Embedding(4, 3, mode=mode)
    bad = [i for i in ids if not 0 <= i < 4]
    pattern = rf"Embedding at \(top\): ids must lie in \[0, 4\).*{min(bad)}.*{max(bad)}"
    with pytest.raises(errors.IdRangeError, match=pattern):
        emb.apply({"embedding": TABLE}, jnp.array(ids))
    with pytest.raises(errors.IdRangeError, match="vocabulary of 4"):
        jax.grad(lambda t: emb.apply({"embedding": t}, jnp.array(ids)).sum())(TABLE)


def test_out_of_range_ids_under_jit_are_clamped_never_nan():
    emb = nn.Embedding(4, 3)
    ids = jnp.array([-1, 0, 3, 4, 100])
    apply = jax.jit(lambda t, i: emb.apply({"embedding": t}, i))
    y = apply(TABLE, ids)
    assert not jnp.isnan(y).any()
    np.testing.assert_array_equal(y, TABLE[jnp.array([0, 0, 3, 3, 3])])
    # Gradients of clamped ids go to the row they were clamped to (the first or the last).
    g = jax.jit(jax.grad(lambda t: apply(t, ids).sum()))(TABLE)
    np.testing.assert_array_equal(g[:, 0], [2, 0, 0, 3])


def test_jit_and_eager_agree_on_valid_ids_in_every_mode():
    ids = jnp.array([[3, 0], [1, 1]])
    for mode in ("clip", "fill", "error"):
        emb = nn.Embedding(4, 3, mode=mode)
        eager = emb.apply({"embedding": TABLE}, ids)
        jitted = jax.jit(checkify.checkify(emb.apply))({"embedding": TABLE}, ids)[1]
        np.testing.assert_array_equal(eager, jitted)
        np.testing.assert_array_equal(eager, TABLE[ids])


def test_fill_mode_gives_zero_rows_and_zero_gradient_eagerly_and_under_jit():
    emb = nn.Embedding(4, 3, mode="fill")
    ids = jnp.array([-1, 2, 4])
    loss = lambda t: (emb.apply({"embedding": t}, ids) * jnp.arange(1.0, 4.0)[:, None]).sum()
    for fn in (lambda f: f, jax.jit):
        y = fn(lambda t: emb.apply({"embedding": t}, ids))(TABLE)
        np.testing.assert_array_equal(y, [[0, 0, 0], TABLE[2], [0, 0, 0]])
        np.testing.assert_array_equal(fn(jax.grad(loss))(TABLE)[:, 0], [0, 0, 2, 0])


def test_error_mode_under_jit_reports_through_checkify():
    emb = nn.Embedding(4, 3, mode="error")
    checked = jax.jit(checkify.checkify(lambda t, i: emb.apply({"embedding": t}, i)))
    err, y = checked(TABLE, jnp.array([1, 2]))
    assert err.get() is None
    np.testing.assert_array_equal(y, TABLE[jnp.array([1, 2])])
    err, _ = checked(TABLE, jnp.array([1, 9, -2]))
    assert "ids must lie in [0, 4)" in err.get() and "-2" in err.get() and "9" in err.get()
    with pytest.raises(ValueError, match="checkify"):  # jit without checkify.checkify
        jax.jit(emb.apply)({"embedding": TABLE}, jnp.array([1, 2]))


def test_embedding_refuses_an_unknown_mode():
    with pytest.raises(errors.ConfigError, match=r"Embedding: mode must be.*'wrap'"):
        nn.Embedding(4, 3, mode="wrap")
