"""One calling convention for every layer and combinator: ``apply(params, x) -> y``, and
``(y, new_state)`` exactly when ``state=`` is given, in every mode (plain, with state, training
with a key, decoding with a cache, running with a recurrent carry)."""

import inspect

import jax
import jax.numpy as jnp
import pytest

from funcgrad import nn

KEY = jax.random.key(0)
SEQ = jnp.ones((2, 4, 8))  # (batch, time, features)
IMG = jnp.ones((2, 6, 6, 3))  # (batch, height, width, channels)
VEC = jnp.ones((2, 8))
TOKENS = jnp.array([[1, 2, 3, 4], [5, 6, 7, 8]])


def attn():
    return nn.MultiHeadAttention(2, causal=True)


def tied_model():
    tied = nn.shared(nn.Dense(8), name="tied")
    return nn.serial(tied, nn.relu, tied)


# name -> (layer, example input, modes beyond plain/state/train): "decode" (attention caches),
# "carry" (recurrent carries)
CASES = {
    "Dense": (nn.Dense(3), VEC, ()),
    "Scale": (nn.Scale(), VEC, ()),
    "Conv": (nn.Conv(4, (3, 3)), IMG, ()),
    "ConvTranspose": (nn.ConvTranspose(4, (3, 3)), IMG, ()),
    "max_pool": (nn.max_pool((2, 2)), IMG, ()),
    "avg_pool": (nn.avg_pool((2, 2)), IMG, ()),
    "adaptive_avg_pool": (nn.adaptive_avg_pool((2, 2)), IMG, ()),
    "adaptive_max_pool": (nn.adaptive_max_pool((2, 2)), IMG, ()),
    "Flatten": (nn.Flatten(), IMG, ()),
    "Reshape": (nn.Reshape((2, 4)), VEC, ()),
    "Dropout": (nn.Dropout(0.5), VEC, ()),
    "Embedding": (nn.Embedding(10, 8), TOKENS, ()),
    "PositionEmbedding": (nn.PositionEmbedding(8), SEQ, ()),
    "Unembed": (nn.Unembed(10, 8), SEQ, ()),
    "LayerNorm": (nn.LayerNorm(), VEC, ()),
    "RMSNorm": (nn.RMSNorm(), VEC, ()),
    "BatchNorm": (nn.BatchNorm(), VEC, ()),
    "GroupNorm": (nn.GroupNorm(3), IMG, ()),
    "InstanceNorm": (nn.InstanceNorm(), IMG, ()),
    "relu": (nn.relu, VEC, ()),
    "sigmoid": (nn.sigmoid, VEC, ()),
    "tanh": (nn.tanh, VEC, ()),
    "gelu": (nn.gelu, VEC, ()),
    "softplus": (nn.softplus, VEC, ()),
    "softmax": (nn.softmax, VEC, ()),
    "log_softmax": (nn.log_softmax, VEC, ()),
    "elementwise": (nn.elementwise(jnp.abs), VEC, ()),
    "MultiHeadAttention": (attn(), SEQ, ("decode",)),
    "MultiHeadAttention(cross)": (nn.MultiHeadAttention(2), (SEQ, SEQ), ()),
    "LSTMCell": (nn.LSTMCell(4), VEC, ()),
    "GRUCell": (nn.GRUCell(4), VEC, ()),
    "recurrent": (nn.recurrent(nn.LSTMCell(4)), SEQ, ("carry",)),
    "recurrent(x, lengths)": (nn.recurrent(nn.GRUCell(4)), (SEQ, jnp.array([4, 2])), ("carry",)),
    "bidirectional": (nn.bidirectional(nn.GRUCell(4), nn.LSTMCell(3)), SEQ, ("carry",)),
    "serial": (nn.serial(nn.Dense(8), nn.BatchNorm(), nn.Dropout(0.1), attn()), SEQ, ("decode",)),
    "parallel": (nn.parallel(attn(), nn.recurrent(nn.LSTMCell(8))), SEQ, ("decode", "carry")),
    "residual": (nn.residual(nn.LayerNorm(), attn()), SEQ, ("decode",)),
    "shared": (tied_model(), SEQ, ()),
    "repeat": (nn.repeat(nn.residual(attn()), 2), SEQ, ("decode",)),
    "remat": (nn.remat(nn.serial(attn(), nn.recurrent(nn.GRUCell(8)))), SEQ, ("decode", "carry")),
    "mixed_precision": (nn.mixed_precision(nn.serial(attn(), nn.Dense(8))), SEQ, ("decode",)),
}


def test_every_public_layer_has_a_case():
    """A new public layer or combinator must join the table above."""
    covered = {type(layer) for layer, _, _ in CASES.values()}
    covered |= {type(layer.layers[0]) for layer, _, _ in CASES.values() if hasattr(layer, "layers")}
    public = {
        obj
        for name in nn.__all__
        if inspect.isclass(obj := getattr(nn, name)) and issubclass(obj, nn.Layer)
    }
    abstract = {nn.Layer, nn.ParamLayer, nn.Cell}
    assert public - abstract - covered == set()


def shapes(tree):
    return jax.tree.map(lambda a: (jnp.shape(a), jnp.result_type(a)), tree)


def run(call, *args):
    """What ``call(*args)`` returns, as `jax.eval_shape` sees it (``args`` may be shapes alone):
    the same tree (a y alone, or a ``(y, state)`` pair) with each array's shape and dtype. The
    calling convention is all in that tree; running the layers eagerly would compile each of
    their primitives for each shape (about half of this file's time; the rest is init)."""
    return jax.eval_shape(call, *args)


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    layer, x, modes = CASES[request.param]
    params, state = layer.init_with_state(KEY, x)
    return layer, x, modes, params, state


def test_plain_apply_returns_y_alone(case):
    layer, x, _, params, state = case
    if state:  # batch norm needs its statistics: only the state= form applies
        return
    y = run(lambda: layer.apply(params, x))
    y_state, new = run(lambda: layer.apply(params, x, state=state))
    assert shapes(y) == shapes(y_state) and new == {}


def test_apply_with_state_returns_y_and_a_state_shaped_like_it(case):
    layer, x, _, params, state = case
    out = run(lambda: layer.apply(params, x, state=state))
    assert isinstance(out, tuple) and len(out) == 2
    y, new = out
    assert shapes(new) == shapes(state)
    assert shapes(y) == shapes(run(lambda: layer.apply(params, x, state=state, train=False))[0])


def test_training_with_a_key_keeps_the_convention(case):
    layer, x, _, params, state = case
    y, new = run(lambda: layer.apply(params, x, key=KEY, state=state))
    assert shapes(new) == shapes(state)
    if not state:
        assert shapes(run(lambda: layer.apply(params, x, key=KEY))) == shapes(y)


def test_decoding_with_a_cache_state_returns_y_and_the_new_state(case):
    layer, x, modes, params, state = case
    if "decode" not in modes:
        return
    decoding = layer.init_cache(2, 8, params=params, state=state)
    assert decoding != state
    y, new = run(lambda: layer.apply(params, x, state=decoding, position=0))
    assert shapes(new) == shapes(decoding)
    assert shapes(y) == shapes(run(lambda: layer.apply(params, x, state=state))[0])
    y1, _ = run(lambda new: layer.apply(params, x[:, :1], state=new, position=4), new)
    assert y1.shape[:2] == (2, 1)


def test_running_with_a_carry_returns_y_and_the_final_carry_in_the_state(case):
    layer, x, modes, params, state = case
    if "carry" not in modes:
        return
    running = layer.init_carry(2, state=state)
    y, new = run(lambda: layer.apply(params, x, state=running))
    assert shapes(new) == shapes(running)
    assert shapes(y) == shapes(run(lambda: layer.apply(params, x, state=state))[0])
    assert any("carry" in str(path) for path, _ in jax.tree_util.tree_leaves_with_path(new))
