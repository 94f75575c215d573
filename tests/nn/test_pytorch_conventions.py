"""The two conventions that differ from PyTorch, and the mappings docs/pytorch.md gives, checked against torch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from funcgrad import nn


def torch_conv_transpose_as_funcgrad(conv, k, stride, padding, output_padding, dilation):
    """docs/pytorch.md's mapping: flip the kernel, (in, out, kh, kw) -> (kh, kw, in, out), and
    padding p -> (d(k-1) - p, d(k-1) - p + output_padding) on each side."""
    w = jnp.asarray(conv.weight.detach().numpy()[:, :, ::-1, ::-1].transpose(2, 3, 0, 1))
    b = jnp.asarray(conv.bias.detach().numpy())
    lo = dilation * (k - 1) - padding
    layer = nn.ConvTranspose(
        w.shape[-1], (k, k), strides=stride, dilation=dilation,
        padding=[(lo, lo + output_padding)] * 2,
    )  # fmt: skip
    return layer, {"w": w, "b": b}


@pytest.mark.x64
@pytest.mark.parametrize(
    "k, stride, padding, output_padding, dilation",
    [(3, 2, 1, 1, 1), (4, 2, 1, 0, 1), (3, 1, 0, 0, 1), (3, 3, 2, 1, 2), (5, 2, 2, 0, 1)],
)
def test_conv_transpose_matches_torch_through_the_documented_mapping(
    k, stride, padding, output_padding, dilation
):
    torch.manual_seed(0)
    conv = torch.nn.ConvTranspose2d(3, 4, k, stride, padding, output_padding, dilation=dilation)
    conv = conv.double()
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 6))
    want = conv(torch.from_numpy(x)).detach().numpy().transpose(0, 2, 3, 1)
    layer, params = torch_conv_transpose_as_funcgrad(
        conv, k, stride, padding, output_padding, dilation
    )
    got = layer.apply(params, jnp.asarray(x.transpose(0, 2, 3, 1)))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_an_integer_padding_is_lax_conv_transposes_not_torchs():
    # padding=p pads the stride-dilated input by p on each side, as lax.conv_transpose does:
    # out = (in - 1) * stride + 1 + 2p - (k - 1); PyTorch's padding=p gives (in - 1) * stride - 2p + k.
    x = jnp.zeros((1, 5, 5, 1))
    for p in (0, 1, 2):
        layer = nn.ConvTranspose(1, (3, 3), strides=2, padding=p)
        y = layer.apply(layer.init(jax.random.key(0), x), x)
        assert y.shape[1] == (5 - 1) * 2 + 1 + 2 * p - 2
        torch_out = torch.nn.ConvTranspose2d(1, 1, 3, 2, p)(torch.zeros(1, 1, 5, 5)).shape[2]
        assert torch_out == (5 - 1) * 2 - 2 * p + 3
        # They agree only where p = d(k - 1) - p, here p = 1.
        assert (torch_out == y.shape[1]) == (p == 1)


@pytest.mark.x64
def test_batch_norm_keeps_the_biased_running_variance_and_torchs_momentum_maps_to_1_minus():
    x = np.random.default_rng(1).standard_normal((6, 3)) * 2 + 1
    bn = nn.BatchNorm(momentum=0.9, param_dtype=jnp.float64)  # PyTorch's momentum=0.1
    params, state = bn.init_with_state(jax.random.key(0), jnp.asarray(x))
    _, state = bn.apply(params, jnp.asarray(x), state=state, train=True)
    tbn = torch.nn.BatchNorm1d(3, momentum=0.1).double().train()
    tbn(torch.from_numpy(x))
    biased, unbiased = x.var(0), x.var(0, ddof=1)
    np.testing.assert_allclose(state["var"], 0.9 * 1 + 0.1 * biased, rtol=1e-12)
    np.testing.assert_allclose(tbn.running_var.numpy(), 0.9 * 1 + 0.1 * unbiased, rtol=1e-12)
    np.testing.assert_allclose(state["mean"], tbn.running_mean.numpy(), rtol=1e-12)
    # Both normalise the batch itself by the biased variance in training mode.
    y, _ = bn.apply(params, jnp.asarray(x), state=state, train=True)
    np.testing.assert_allclose(y, tbn(torch.from_numpy(x)).detach().numpy(), rtol=1e-9, atol=1e-9)
    # PyTorch's trained statistics load unchanged; evaluation then agrees.
    loaded = {
        "mean": jnp.asarray(tbn.running_mean.numpy()),
        "var": jnp.asarray(tbn.running_var.numpy()),
    }
    y, _ = bn.apply(params, jnp.asarray(x), state=loaded, train=False)
    np.testing.assert_allclose(
        y, tbn.eval()(torch.from_numpy(x)).detach().numpy(), rtol=1e-9, atol=1e-9
    )
