"""The bad-input battery: each wrong call raises a funcgrad error (a ValueError or TypeError subclass)
whose message names the layer or function, what it expected and what came — never an XLA error, a
bare IndexError, or a silent broadcast to a wrong result."""

import jax
import jax.numpy as jnp
import optax
import pytest

import funcgrad as fg
from funcgrad import errors, losses, nn

KEY = jax.random.key(0)
F = jnp.float32

# name -> (layer, a good input)
LAYERS = {
    "Dense": (nn.Dense(3), jnp.ones((2, 4), F)),
    "Scale": (nn.Scale(), jnp.ones((2, 4), F)),
    "Conv": (nn.Conv(3, (3, 3)), jnp.ones((2, 5, 5, 2), F)),
    "ConvTranspose": (nn.ConvTranspose(3, (2, 2)), jnp.ones((2, 5, 5, 2), F)),
    "LayerNorm": (nn.LayerNorm(), jnp.ones((2, 4), F)),
    "RMSNorm": (nn.RMSNorm(), jnp.ones((2, 4), F)),
    "MultiHeadAttention": (nn.MultiHeadAttention(2), jnp.ones((2, 3, 4), F)),
    "GroupNorm": (nn.GroupNorm(2), jnp.ones((2, 3, 4), F)),
    "InstanceNorm": (nn.InstanceNorm(), jnp.ones((2, 3, 4), F)),
    "LSTMCell": (nn.recurrent(nn.LSTMCell(3)), jnp.ones((2, 3, 4), F)),
    "GRUCell": (nn.recurrent(nn.GRUCell(3), reverse=True), jnp.ones((2, 3, 4), F)),
}
# name -> an input of the wrong rank
WRONG_RANK = {
    "Dense": jnp.ones((), F),
    "Conv": jnp.ones((5, 5, 2), F),
    "ConvTranspose": jnp.ones((2, 5, 2), F),
    "LayerNorm": jnp.ones((), F),
    "RMSNorm": jnp.ones((), F),
    "MultiHeadAttention": jnp.ones((3, 4), F),
    "max_pool": jnp.ones((4, 4), F),
    "Flatten": jnp.ones((), F),
    "Reshape": jnp.ones((), F),
    "GroupNorm": jnp.ones((4,), F),
    "InstanceNorm": jnp.ones((2, 4), F),
    "recurrent": jnp.ones((2, 4), F),
    "bidirectional": jnp.ones((2, 3, 4, 1), F),
    "adaptive_avg_pool": jnp.ones((4, 4), F),
}
RANKED = {
    **{k: v[0] for k, v in LAYERS.items()},
    "max_pool": nn.max_pool((2, 2)),
    "Flatten": nn.Flatten(),
    "Reshape": nn.Reshape((-1,)),
    "recurrent": nn.recurrent(nn.LSTMCell(3)),
    "bidirectional": nn.bidirectional(nn.GRUCell(2), nn.GRUCell(2)),
    "adaptive_avg_pool": nn.adaptive_avg_pool((2, 2)),
}


def named(layer_name):
    return rf"{layer_name}|{layer_name.lower()}"


@pytest.mark.parametrize("name", sorted(WRONG_RANK))
def test_wrong_rank(name):
    layer = RANKED[name]
    with pytest.raises(errors.ShapeError, match=named(name)):
        layer.init(KEY, WRONG_RANK[name])


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_wrong_trailing_size(name):
    layer, x = LAYERS[name]
    params = nn.serial(layer).init(KEY, x)
    wider = jnp.concatenate([x, x], axis=-1)
    with pytest.raises(errors.ParamsError, match=rf"{name} at \w+_0: .*should have shape"):
        nn.serial(layer).apply(params, wider)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_integer_input_where_float_is_needed(name):
    layer, x = LAYERS[name]
    with pytest.raises(errors.DTypeError, match=rf"{name}.*floating-point.*int32"):
        layer.init(KEY, x.astype(jnp.int32))


@pytest.mark.parametrize(
    "fn",
    [fg.log1pexp, fg.log_sigmoid, fg.sigmoid, fg.log1mexp, fg.logsumexp, fg.softmax,
     fg.log_softmax, fg.safe_norm, lambda x: fg.logaddexp(x, x), lambda x: fg.xlogy(x, x),
     nn.max_pool((1,)), lambda x: fg.clip_gradient(x, 0, 1)],
)  # fmt: skip
def test_integer_input_to_functions(fn):
    with pytest.raises(errors.DTypeError, match="floating-point"):
        fn(jnp.ones((1, 3, 1), jnp.int32))


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_empty_batch_gives_an_empty_result(name):
    layer, x = LAYERS[name]
    params = layer.init(KEY, x)
    assert layer.apply(params, x[:0]).shape[0] == 0


@pytest.mark.parametrize(
    "loss",
    [losses.mse, losses.squared_error, losses.huber, losses.sigmoid_binary_cross_entropy],
)
def test_empty_batch_to_a_loss(loss):
    with pytest.raises(errors.ShapeError, match="batch is empty"):
        loss(jnp.zeros((0, 2)), jnp.zeros((0, 2)))


def test_empty_batch_to_cross_entropy():
    with pytest.raises(errors.ShapeError, match="softmax_cross_entropy: the batch is empty"):
        losses.softmax_cross_entropy(jnp.zeros((0, 3)), jnp.zeros((0,), jnp.int32))


def test_nan_input_propagates_instead_of_crashing():
    layer, x = LAYERS["Dense"]
    y = layer.apply(layer.init(KEY, x), x.at[0, 0].set(jnp.nan))
    assert bool(jnp.isnan(y[0]).all()) and bool(jnp.isfinite(y[1]).all())


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_mismatched_parameter_trees(name):
    layer, x = LAYERS[name]
    model = nn.serial(layer)
    params = model.init(KEY, x)
    inner = params[next(iter(params))]
    first = sorted(inner)[0]
    missing = {next(iter(params)): {k: v for k, v in inner.items() if k != first}}
    extra = {next(iter(params)): {**inner, "zz": jnp.ones(1)}}
    reshaped = {next(iter(params)): {**inner, first: jnp.ones((1, *inner[first].shape))}}
    for bad, pattern in ((missing, f"missing \\['{first}'\\]"), (extra, "unexpected \\['zz'\\]"),
                         (reshaped, f"'{first}' should have shape")):  # fmt: skip
        with pytest.raises(errors.ParamsError, match=rf"{name} at .*{pattern}"):
            model.apply(bad, x)
    with pytest.raises(errors.ParamsError, match="unexpected parameter key"):
        model.apply({**params, "other_9": {}}, x)


def test_params_that_are_not_a_dict():
    with pytest.raises(errors.ParamsError, match="expected a dict of parameters; got list"):
        nn.Dense(2).apply([1, 2], jnp.ones((1, 3)))


@pytest.mark.parametrize(
    "bad_key", [0, jnp.zeros(3), jnp.zeros((2, 2), jnp.uint32), jax.random.split(KEY, 2)]
)
def test_prng_key_of_the_wrong_kind(bad_key):
    with pytest.raises(errors.InputTypeError, match="PRNG key"):
        nn.Dense(2).init(bad_key, jnp.ones((1, 3)))
    with pytest.raises(errors.InputTypeError, match="PRNG key"):
        nn.Dropout(0.5).apply({}, jnp.ones(3), key=bad_key)


def test_legacy_raw_keys_are_accepted():
    assert nn.Dense(2).init(jax.random.PRNGKey(0), jnp.ones((1, 3)))["w"].shape == (3, 2)


def test_unhashable_static_argument():
    with pytest.raises(errors.PrimitiveError, match="must be hashable"):
        fg.logsumexp(jnp.ones((2, 2)), axis={0: 1})


def test_example_input_that_is_not_an_array():
    with pytest.raises(errors.InputTypeError, match="example input"):
        nn.Dense(2).init(KEY, object())


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda: nn.Dense(0), "features must be a positive int"),
        (lambda: nn.Dropout(1.0), r"rate must be in \[0, 1\)"),
        (lambda: nn.BatchNorm(momentum=2.0), "momentum"),
        (lambda: nn.repeat(nn.Dense(2), 0), "n must be a positive int"),
        (lambda: nn.LSTMCell(0), "LSTMCell: hidden must be a positive int"),
        (lambda: nn.GroupNorm(0), "GroupNorm: num_groups must be a positive int"),
        (lambda: nn.adaptive_max_pool(0), "adaptive_max_pool: output_size"),
        (lambda: nn.parallel(nn.Dense(2), combine="max"), "combine"),
        (lambda: nn.shared(nn.Dense(2), ""), "name"),
        (lambda: fg.straight_through(1.0, "floor"), "fn must be"),
        (lambda: fg.train.make_multistep(lambda p, b: p, optax.sgd(1.0), 0), "k must be"),
        (lambda: losses.huber(jnp.ones(2), jnp.ones(2), delta=0.0), "delta"),
        (lambda: losses.softmax_cross_entropy(jnp.ones((1, 2)), jnp.zeros(1, jnp.int32), label_smoothing=1.0), "label_smoothing"),
    ],
)  # fmt: skip
def test_out_of_range_settings(make, pattern):
    with pytest.raises(errors.ConfigError, match=pattern):
        make()


def test_every_error_type_is_a_value_or_type_error():
    for cls in (errors.ShapeError, errors.ParamsError, errors.DTypeError, errors.PrimitiveError,
                errors.ConfigError, errors.InputTypeError, fg.train.CheckpointError):  # fmt: skip
        assert issubclass(cls, errors.FuncgradError)
        assert issubclass(cls, (ValueError, TypeError))
