"""Recurrent cells and the layers that run them: equations, lengths, reverse, bidirectional, serial stacks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcgrad as fg
from funcgrad import errors, nn

KEY = jax.random.key(0)


def normal(*shape, seed=0):
    # NumPy draws: jax.random.normal would compile a sampler for every new shape and mode.
    rng = np.random.default_rng(seed + sum(shape))
    return jnp.asarray(rng.standard_normal(shape), jnp.float64 if jax.enable_x64.value else None)


def init64(layer, x):
    # Jitted: one program, not one compile per eager op (the casts included).
    return jax.jit(lambda k, v: jax.tree.map(lambda p: p.astype(jnp.float64), layer.init(k, v)))(
        KEY, x
    )


def sigmoid(v):
    return 1 / (1 + np.exp(-v))


@pytest.mark.x64
def test_lstm_cell_follows_torch_equations():
    cell = nn.LSTMCell(3)
    x, h, c = normal(2, 4), normal(2, 3, seed=1), normal(2, 3, seed=2)
    p = {k: v + 0.1 * normal(*v.shape, seed=3) for k, v in init64(cell, x).items()}
    (h1, c1), y = cell.apply(p, ((h, c), x))
    z = np.asarray(x @ p["wi"] + p["bi"] + h @ p["wh"] + p["bh"])
    i, f, g, o = sigmoid(z[:, :3]), sigmoid(z[:, 3:6]), np.tanh(z[:, 6:9]), sigmoid(z[:, 9:])
    c_expected = f * np.asarray(c) + i * g
    np.testing.assert_allclose(c1, c_expected, rtol=1e-12)
    np.testing.assert_allclose(h1, o * np.tanh(c_expected), rtol=1e-12)
    np.testing.assert_array_equal(y, h1)


@pytest.mark.x64
def test_gru_cell_resets_the_hidden_projection_with_its_bias():
    cell = nn.GRUCell(3)
    x, h = normal(2, 4), normal(2, 3, seed=1)
    p = {k: v + 0.1 * normal(*v.shape, seed=3) for k, v in init64(cell, x).items()}
    h1, y = cell.apply(p, (h, x))
    xi, hh = np.asarray(x @ p["wi"] + p["bi"]), np.asarray(h @ p["wh"] + p["bh"])
    r = sigmoid(xi[:, :3] + hh[:, :3])
    z = sigmoid(xi[:, 3:6] + hh[:, 3:6])
    n = np.tanh(xi[:, 6:] + r * hh[:, 6:])
    np.testing.assert_allclose(h1, (1 - z) * n + z * np.asarray(h), rtol=1e-12)
    np.testing.assert_array_equal(y, h1)


@pytest.mark.parametrize("cell", [nn.LSTMCell(3), nn.GRUCell(3)], ids=["lstm", "gru"])
def test_cell_parameter_shapes_and_zero_carry(cell):
    x = jnp.zeros((2, 5))
    params = cell.init(KEY, jax.ShapeDtypeStruct((2, 5), jnp.float32))
    g = cell.gates
    assert jax.tree.map(jnp.shape, params) == {
        "wi": (5, g * 3), "wh": (3, g * 3), "bi": (g * 3,), "bh": (g * 3,)
    }  # fmt: skip
    from_zero = cell.apply(params, x)
    explicit = cell.apply(params, (cell.initial_carry(2), x))
    for a, b in zip(jax.tree.leaves(from_zero), jax.tree.leaves(explicit), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.x64
@pytest.mark.parametrize("cell", [nn.LSTMCell(3), nn.GRUCell(3)], ids=["lstm", "gru"])
def test_cell_gradients_jit_and_vmap(cell):
    x = normal(2, 4)
    carry = jax.tree.map(lambda c: c + normal(*c.shape, seed=5), cell.initial_carry(2, jnp.float64))
    params = init64(cell, x)

    def f(p, c, v):
        new, y = cell.apply(p, (c, v))
        return jnp.sum(y * normal(*y.shape, seed=9)) + sum(
            jnp.sum(a**2) for a in jax.tree.leaves(new)
        )

    fg.testing.check_grads(f, (params, carry, x))
    np.testing.assert_allclose(jax.jit(f)(params, carry, x), f(params, carry, x), rtol=1e-12)
    stacked = jnp.stack([x, -x])
    mapped = jax.vmap(lambda v: cell.apply(params, (carry, v))[1])(stacked)
    np.testing.assert_allclose(mapped[1], cell.apply(params, (carry, -x))[1], rtol=1e-12)


def run_by_hand(cell, params, x, carry=None):
    carry = cell.initial_carry(x.shape[0], x.dtype) if carry is None else carry
    ys = []
    for t in range(x.shape[1]):
        carry, y = cell.apply(params, (carry, x[:, t]))
        ys.append(y)
    return carry, jnp.stack(ys, axis=1)


@pytest.mark.x64
def test_recurrent_equals_a_python_loop_over_steps_and_returns_the_carry():
    cell = nn.LSTMCell(3)
    layer = nn.recurrent(cell)
    x = normal(2, 5, 4)
    params = init64(layer, x)
    start = jax.tree.map(lambda c: c + 0.5, layer.init_carry(2, dtype=jnp.float64))
    y, state = layer.apply(params, x, state=start)
    carry = state["carry"]
    start = start["carry"]
    carry_loop, y_loop = run_by_hand(cell, params, x, start)
    np.testing.assert_allclose(y, y_loop, rtol=1e-12)
    for a, b in zip(carry, carry_loop, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.x64
def test_reverse_reads_the_sequence_backwards_and_keeps_outputs_aligned():
    cell = nn.GRUCell(3)
    x = normal(2, 5, 4)
    params = init64(nn.recurrent(cell), x)
    y = nn.recurrent(cell, reverse=True).apply(params, x)
    _, y_loop = run_by_hand(cell, params, x[:, ::-1])
    np.testing.assert_allclose(y, y_loop[:, ::-1], rtol=1e-12)


@pytest.mark.x64
@pytest.mark.parametrize("reverse", [False, True])
def test_padding_steps_change_nothing_and_output_zero(reverse):
    cell = nn.LSTMCell(3)
    layer = nn.recurrent(cell, reverse=reverse)
    x = normal(3, 6, 2)
    lengths = jnp.array([6, 2, 4])
    params = init64(layer, x)
    padded = x + 100 * (jnp.arange(6)[None, :, None] >= lengths[:, None, None])
    apply = jax.jit(layer.apply)  # one program per shape, not one per eager op
    (y, same), state = apply(
        params, (padded, lengths), state=layer.init_carry(3, dtype=jnp.float64)
    )
    assert same is lengths or bool((same == lengths).all())
    carry = state["carry"]
    for b, n in enumerate(lengths.tolist()):
        y_b, s_b = apply(params, x[b : b + 1, :n], state=layer.init_carry(1, dtype=jnp.float64))
        c_b = s_b["carry"]
        np.testing.assert_allclose(y[b, :n], y_b[0], rtol=1e-12)
        np.testing.assert_array_equal(y[b, n:], 0.0)
        for a, e in zip(carry, c_b, strict=True):
            np.testing.assert_allclose(a[b], e[0], rtol=1e-12)


def test_pair_input_passes_lengths_through_serial():
    model = nn.serial(
        nn.recurrent(nn.LSTMCell(4)),
        nn.bidirectional(nn.GRUCell(3), nn.GRUCell(3)),
        nn.elementwise(lambda pair: pair[0], "take_outputs"),
        nn.Dense(2),
    )
    # jax.random's draw: at rtol=1e-6 in float32 the check is sensitive to the data it gets.
    x, lengths = jax.random.normal(jax.random.key(10), (2, 5, 3)), jnp.array([5, 3])
    params = jax.jit(model.init)(KEY, (x, lengths))
    assert sorted(params) == ["bidirectional_1", "dense_3", "recurrent_0"]
    assert sorted(params["bidirectional_1"]) == ["backward", "forward"]
    apply = jax.jit(model.apply)  # one program per shape, not one per eager op
    y = apply(params, (x, lengths))
    assert y.shape == (2, 5, 2)
    # Padding past a sequence's length does not reach its real steps.
    y_short = apply(params, (x[1:, :3], lengths[1:]))
    np.testing.assert_allclose(y[1, :3], y_short[0], rtol=1e-6)


def test_bidirectional_concatenates_a_forward_and_a_reversed_pass():
    fwd, bwd = nn.LSTMCell(3), nn.GRUCell(2)
    bi = nn.bidirectional(fwd, bwd)
    x, lengths = normal(2, 5, 4), jnp.array([5, 3])
    params = init64(bi, x)
    (y, _), state = bi.apply(params, (x, lengths), state=bi.init_carry(2, dtype=jnp.float64))
    cf, cb = state["carry"]
    forward, backward = nn.recurrent(fwd), nn.recurrent(bwd, reverse=True)
    (yf, _), sf = forward.apply(
        params["forward"], (x, lengths), state=forward.init_carry(2, dtype=jnp.float64)
    )
    (yb, _), sb = backward.apply(
        params["backward"], (x, lengths), state=backward.init_carry(2, dtype=jnp.float64)
    )
    cf1, cb1 = sf["carry"], sb["carry"]
    np.testing.assert_allclose(y, jnp.concatenate([yf, yb], -1), rtol=1e-12)
    np.testing.assert_allclose(cb, cb1, rtol=1e-12)
    np.testing.assert_allclose(cf[0], cf1[0], rtol=1e-12)


def test_recurrent_gradients_with_lengths_match_finite_differences():
    layer = nn.recurrent(nn.LSTMCell(2), reverse=True)
    x, lengths = normal(2, 4, 3), jnp.array([4, 2])
    params = init64(layer, x)
    w = normal(2, 4, 2, seed=7)
    # Jitted once, so the finite differences do not retrace the scans at every evaluation.
    f = jax.jit(lambda p, v: jnp.sum(w * layer.apply(p, (v, lengths))[0]))
    fg.testing.check_grads(f, (params, x))


def test_stacking_in_serial_is_two_scans_of_recurrent():
    model = nn.serial(nn.recurrent(nn.GRUCell(4)), nn.recurrent(nn.GRUCell(3)))
    x = normal(2, 5, 3)
    params = init64(model, x)
    h = nn.recurrent(nn.GRUCell(4)).apply(params["recurrent_0"], x)
    np.testing.assert_allclose(
        model.apply(params, x), nn.recurrent(nn.GRUCell(3)).apply(params["recurrent_1"], h)
    )


@pytest.mark.x64
def test_float32_sequence_stays_float32_and_the_carry_keeps_its_dtype():
    layer = nn.recurrent(nn.LSTMCell(3))
    x = jnp.ones((2, 4, 3), jnp.float32)
    params = layer.init(KEY, x)
    y, state = layer.apply(params, x, state=layer.init_carry(2, dtype=jnp.float64))
    h, c = state["carry"]
    assert y.dtype == jnp.float32 and h.dtype == c.dtype == jnp.float64
    assert layer.init_carry(2)["carry"][0].dtype == jnp.float32  # the cell's param_dtype


@pytest.mark.x64
def test_a_sequence_in_pieces_equals_the_whole_through_the_carry():
    model = nn.serial(nn.Dense(3), nn.recurrent(nn.LSTMCell(4)), nn.Dense(2))
    x = normal(2, 6, 3)
    params = init64(model, x)
    state = model.init_carry(2, dtype=jnp.float64)
    assert sorted(state) == ["recurrent_1"]
    apply = jax.jit(model.apply)  # one program per shape, not one per eager op
    first, state = apply(params, x[:, :4], state=state)
    second, state = apply(params, x[:, 4:], state=state)
    whole = apply(params, x)
    np.testing.assert_allclose(jnp.concatenate([first, second], 1), whole, rtol=1e-12)


def test_init_carry_merges_into_a_model_state():
    model = nn.serial(nn.recurrent(nn.GRUCell(4)), nn.BatchNorm())
    x = normal(2, 5, 3)
    params, bn = model.init_with_state(KEY, x)
    state = model.init_carry(2, state=bn)
    assert sorted(state) == ["batch_norm_1", "recurrent_0"]
    _, new = model.apply(params, x, state=state, train=True)
    assert jax.tree.structure(new) == jax.tree.structure(state)


def test_the_old_carry_spellings_still_work_with_a_warning():
    cell = nn.LSTMCell(3)
    x, lengths = normal(2, 5, 4), jnp.array([5, 3])
    with pytest.deprecated_call(match=r"init_carry"):
        old = nn.recurrent(cell, return_carry=True)
    params = init64(old, x)
    start = cell.initial_carry(2, jnp.float64)
    with pytest.deprecated_call(match=r"state=\{'carry': c\}"):
        carry, y = old.apply(params, x, initial_carry=start)
    with pytest.deprecated_call(match=r"lengths are data"):
        _, y_l = old.apply(params, x, lengths=lengths)
    new = nn.recurrent(cell)
    y_new, state = new.apply(params, x, state={"carry": start})
    np.testing.assert_allclose(y, y_new)
    np.testing.assert_allclose(carry[0], state["carry"][0])
    (y_pair, _), state = new.apply(params, (x, lengths), state=new.init_carry(2))
    np.testing.assert_allclose(y_l, y_pair)
    with pytest.deprecated_call():
        np.testing.assert_allclose(new.apply(params, x, lengths=lengths), y_pair)
    with pytest.deprecated_call():
        nn.bidirectional(cell, cell, return_carry=True)


def test_bad_inputs_name_the_layer():
    layer = nn.recurrent(nn.LSTMCell(3))
    x = jnp.ones((2, 4, 3))
    params = layer.init(KEY, x)
    with pytest.raises(errors.ShapeError, match=r"recurrent\(LSTMCell\).*rank 3"):
        layer.apply(params, jnp.ones((2, 3)))
    with pytest.raises(errors.ShapeError, match=r"lengths should have shape \(batch,\) = \(2,\)"):
        layer.apply(params, (x, jnp.array([1, 2, 3])))
    with pytest.raises(errors.DTypeError, match="lengths must be integers"):
        layer.apply(params, (x, jnp.array([1.0, 2.0])))
    with pytest.raises(errors.ShapeError, match=r"LSTMCell at \(top\): expected a carry like"):
        layer.apply(params, x, state={"carry": jnp.zeros((2, 3))})
    with pytest.raises(errors.ParamsError, match=r"its state is \{\} or \{'carry': c\}"):
        layer.apply(params, x, state={"h": jnp.zeros((2, 3))})
    with pytest.raises(errors.InputTypeError, match="not both"):
        layer.apply(params, (x, jnp.array([1, 2])), lengths=jnp.array([1, 2]))
    with pytest.raises(
        errors.InputTypeError, match=r"unexpected keyword argument\(s\) \['lenghts'\]"
    ):
        layer.apply(params, x, lenghts=jnp.array([1, 2]))
    with pytest.raises(errors.ConfigError, match="LSTMCell: hidden must be a positive int"):
        nn.LSTMCell(0)
    with pytest.raises(errors.InputTypeError, match="bidirectional: expected a recurrent cell"):
        nn.bidirectional(nn.Dense(3), nn.GRUCell(3))
    bi = nn.bidirectional(nn.GRUCell(3), nn.GRUCell(3))
    with pytest.raises(errors.ParamsError, match=r"bidirectional\(GRUCell, GRUCell\).*forward"):
        bi.apply({"forward": {}}, x)
    with pytest.raises(errors.InputTypeError, match=r"its carry must be a pair"):
        bi.apply(bi.init(KEY, x), x, state={"carry": jnp.zeros((2, 3))})
