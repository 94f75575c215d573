import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcgrad import errors, nn


def reference_conv1d(x, w, b):
    """Valid cross-correlation, written out: x (n, length, cin), w (k, cin, cout)."""
    k = w.shape[0]
    out = np.zeros((x.shape[0], x.shape[1] - k + 1, w.shape[2]))
    for t in range(out.shape[1]):
        out[:, t] = np.einsum("nkc,kco->no", x[:, t : t + k], w)
    return out + b


@pytest.mark.x64
def test_conv1d_matches_a_written_out_correlation():
    x = np.random.default_rng(0).normal(size=(2, 8, 3))
    conv = nn.Conv(4, (3,), padding="VALID")
    params = jax.tree.map(lambda p: p.astype(jnp.float64), conv.init(jax.random.key(0), x))
    expected = reference_conv1d(x, np.asarray(params["w"]), np.asarray(params["b"]))
    np.testing.assert_allclose(conv.apply(params, jnp.asarray(x)), expected, rtol=1e-12)


def test_depthwise_conv_is_one_filter_per_channel():
    x = jax.random.normal(jax.random.key(0), (1, 6, 6, 3), jnp.float64)
    conv = nn.Conv(3, (3, 3), groups=3, use_bias=False)
    params = jax.tree.map(lambda p: p.astype(jnp.float64), conv.init(jax.random.key(1), x))
    y = conv.apply(params, x)
    single = nn.Conv(1, (3, 3), use_bias=False)
    for c in range(3):
        yc = single.apply({"w": params["w"][..., c : c + 1]}, x[..., c : c + 1])
        np.testing.assert_allclose(y[..., c : c + 1], yc, rtol=1e-12)


def test_conv_transpose_is_the_adjoint_of_a_strided_conv():
    # <conv(x), y> == <x, conv_transpose(y)> with the kernel flipped and in/out swapped.
    x = jax.random.normal(jax.random.key(0), (1, 4, 4, 2), jnp.float64)
    conv = nn.Conv(3, (2, 2), strides=2, padding="VALID", use_bias=False)
    w = jax.random.normal(jax.random.key(1), (2, 2, 2, 3), jnp.float64)
    y = jax.random.normal(jax.random.key(2), (1, 2, 2, 3), jnp.float64)
    _, vjp = jax.vjp(lambda v: conv.apply({"w": w}, v), x)
    up = nn.ConvTranspose(2, (2, 2), strides=2, padding="VALID", use_bias=False)
    w_t = jnp.flip(w, (0, 1)).swapaxes(2, 3)
    np.testing.assert_allclose(up.apply({"w": w_t}, y), vjp(y)[0], rtol=1e-12)


def test_conv_wrong_rank_names_the_layer():
    model = nn.serial(nn.Dense(3), nn.Conv(4, (3, 3)))
    with pytest.raises(errors.ShapeError, match=r"Conv at conv_1: .*rank 4.*\(28, 28, 3\)"):
        model.init(jax.random.key(0), jnp.zeros((28, 28, 1)))


def test_conv_groups_must_divide_channels():
    with pytest.raises(errors.ConfigError, match="groups=2"):
        nn.Conv(4, (3,), groups=2).init(jax.random.key(0), jnp.zeros((1, 5, 3)))


def test_conv_bad_padding_string():
    with pytest.raises(errors.ConfigError, match="padding"):
        nn.Conv(4, (3,), padding="FULL").init(jax.random.key(0), jnp.zeros((1, 5, 3)))


@pytest.mark.parametrize("layer", [nn.Conv(8, (3, 3)), nn.ConvTranspose(8, (3, 3))])
def test_a_channels_first_input_is_named_as_such(layer):
    nhwc = jnp.zeros((2, 28, 28, 3))
    params = layer.init(jax.random.key(0), nhwc)
    nchw = jnp.zeros((2, 3, 28, 28))
    with pytest.raises(
        errors.ShapeError, match=r"channels-last \(N, H, W, C\).*transpose\(0, 2, 3, 1\)"
    ):
        layer.apply(params, nchw)
    with pytest.raises(errors.ShapeError, match=r"at conv_0: .*3 input channels.*axis 1"):
        nn.serial(nn.Conv(8, (3, 3))).apply({"conv_0": params}, nchw)


def test_a_wrong_channel_count_elsewhere_gets_no_channel_order_hint():
    layer = nn.Conv(8, (3, 3))
    params = layer.init(jax.random.key(0), jnp.zeros((2, 28, 28, 3)))
    with pytest.raises(errors.ParamsError) as info:
        layer.apply(params, jnp.zeros((2, 28, 28, 4)))
    assert "channels-last" not in str(info.value)
