"""The sequence layers, GroupNorm, InstanceNorm and adaptive pooling give PyTorch's numbers.

Same weights, float32, forward and gradient with respect to inputs and weights.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from funcgrad import nn

TOL = {"rtol": 2e-4, "atol": 2e-5}
CELLS = {"lstm": (torch.nn.LSTM, nn.LSTMCell), "gru": (torch.nn.GRU, nn.GRUCell)}


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def from_torch(module, layer, suffix=""):
    """A cell's parameters from ``torch.nn.LSTM``/``GRU``: the weights transposed, biases as they are."""
    t = {k: v.detach().numpy() for k, v in module.named_parameters()}
    return {
        "wi": jnp.asarray(t[f"weight_ih_l{layer}{suffix}"].T),
        "wh": jnp.asarray(t[f"weight_hh_l{layer}{suffix}"].T),
        "bi": jnp.asarray(t[f"bias_ih_l{layer}{suffix}"]),
        "bh": jnp.asarray(t[f"bias_hh_l{layer}{suffix}"]),
    }


def torch_grads(module, layer, suffix=""):
    g = {k: v.grad.numpy() for k, v in module.named_parameters()}
    return {
        "wi": g[f"weight_ih_l{layer}{suffix}"].T,
        "wh": g[f"weight_hh_l{layer}{suffix}"].T,
        "bi": g[f"bias_ih_l{layer}{suffix}"],
        "bh": g[f"bias_hh_l{layer}{suffix}"],
    }


# Each cell with one and two layers, one way and both ways, with and without lengths; not every
# combination (each compiles four scans and their gradients).
STACKS = [
    ("lstm", 1, False, False),
    ("lstm", 2, True, True),
    ("lstm", 1, True, False),
    ("gru", 1, False, True),
    ("gru", 2, False, False),
    ("gru", 2, True, True),
]


@pytest.mark.parametrize("kind, num_layers, bidirectional, with_lengths", STACKS)
def test_recurrent_stack_matches_torch(kind, num_layers, bidirectional, with_lengths):
    torch_cls, cell_cls = CELLS[kind]
    batch, time, features, hidden = 3, 5, 4, 6
    torch.manual_seed(0)
    module = torch_cls(features, hidden, num_layers, batch_first=True, bidirectional=bidirectional)
    x = rand(batch, time, features)
    lengths = np.array([5, 2, 4]) if with_lengths else np.full(batch, time)
    weights = rand(batch, time, hidden * (2 if bidirectional else 1), seed=1)

    xt = torch.tensor(x, requires_grad=True)
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        xt, torch.tensor(lengths), batch_first=True, enforce_sorted=False
    )
    out, _ = module(packed)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=time)
    (out * torch.tensor(weights)).sum().backward()

    if bidirectional:
        layers = [nn.bidirectional(cell_cls(hidden), cell_cls(hidden)) for _ in range(num_layers)]
        params = {
            f"bidirectional_{k}": {
                "forward": from_torch(module, k),
                "backward": from_torch(module, k, "_reverse"),
            }
            for k in range(num_layers)
        }
    else:
        layers = [nn.recurrent(cell_cls(hidden)) for _ in range(num_layers)]
        params = {f"recurrent_{k}": from_torch(module, k) for k in range(num_layers)}
    model = nn.serial(*layers)
    # Shapes only: traced, not run.
    init_shapes = jax.eval_shape(model.init, jax.random.key(0), (x, lengths))
    assert jax.tree.map(jnp.shape, init_shapes) == jax.tree.map(jnp.shape, params)

    def loss(p, v):
        y, _ = model.apply(p, (v, jnp.asarray(lengths)))
        return jnp.sum(y * weights), y

    # One program for the forward pass and both gradients, not one per eager op.
    (_, y), (gp, gx) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
        params, jnp.asarray(x)
    )
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y, out.detach().numpy(), **TOL)
    np.testing.assert_allclose(gx, xt.grad.numpy(), **TOL)
    for k in range(num_layers):
        if bidirectional:
            pairs = [(gp[f"bidirectional_{k}"]["forward"], torch_grads(module, k)),
                     (gp[f"bidirectional_{k}"]["backward"], torch_grads(module, k, "_reverse"))]  # fmt: skip
        else:
            pairs = [(gp[f"recurrent_{k}"], torch_grads(module, k))]
        for ours, theirs in pairs:
            for name in ours:
                np.testing.assert_allclose(ours[name], theirs[name], **TOL, err_msg=name)


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_final_carry_and_initial_carry_match_torch(kind):
    torch_cls, cell_cls = CELLS[kind]
    torch.manual_seed(1)
    module = torch_cls(3, 4, 1, batch_first=True)
    x, lengths = rand(2, 6, 3), np.array([6, 3])
    h0, c0 = rand(1, 2, 4, seed=2), rand(1, 2, 4, seed=3)
    start = (torch.tensor(h0), torch.tensor(c0)) if kind == "lstm" else torch.tensor(h0)
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        torch.tensor(x), torch.tensor(lengths), batch_first=True, enforce_sorted=False
    )
    _, final = module(packed, start)
    layer = nn.recurrent(cell_cls(4))
    ours_start = (h0[0], c0[0]) if kind == "lstm" else h0[0]
    _, state = jax.jit(layer.apply)(
        from_torch(module, 0), (x, lengths), state={"carry": ours_start}
    )
    carry = state["carry"]
    theirs = [final[0][0], final[1][0]] if kind == "lstm" else [final[0]]
    for a, b in zip(jax.tree.leaves(carry), theirs, strict=True):
        np.testing.assert_allclose(a, b.detach().numpy(), **TOL)


def nchw(x):
    return torch.tensor(np.moveaxis(x, -1, 1).copy(), requires_grad=True)


def check_against_torch(layer, params, torch_fn, x, torch_params=()):
    """Forward and gradients (input and each param) of ``layer`` against ``torch_fn`` on NCHW."""
    xt = nchw(x)
    out = torch_fn(xt)
    w = rand(*out.shape, seed=4)
    (out * torch.tensor(w)).sum().backward()
    w_last = np.moveaxis(w, 1, -1)

    def loss(p, v):
        return jnp.sum(layer.apply(p, v) * w_last)

    # One program for the output and both gradients, not one per eager op.
    forward_and_grads = jax.jit(lambda p, v: (layer.apply(p, v), jax.grad(loss, (0, 1))(p, v)))
    y, (gp, gx) = forward_and_grads(params, jnp.asarray(x))
    np.testing.assert_allclose(y, np.moveaxis(out.detach().numpy(), 1, -1), **TOL)
    np.testing.assert_allclose(gx, np.moveaxis(xt.grad.numpy(), 1, -1), **TOL)
    for name, tensor in torch_params:
        np.testing.assert_allclose(gp[name], tensor.grad.numpy(), **TOL, err_msg=name)


@pytest.mark.parametrize("shape, groups", [((2, 5, 6, 6), 3), ((2, 7, 4), 2), ((3, 8), 4)])
def test_group_norm_matches_torch(shape, groups):
    x = rand(*shape) * 3 + 1
    c = shape[-1]
    module = torch.nn.GroupNorm(groups, c)
    with torch.no_grad():
        module.weight.copy_(torch.tensor(rand(c, seed=5)))
        module.bias.copy_(torch.tensor(rand(c, seed=6)))
    params = {"scale": jnp.asarray(rand(c, seed=5)), "bias": jnp.asarray(rand(c, seed=6))}
    check_against_torch(
        nn.GroupNorm(groups), params, module, x, [("scale", module.weight), ("bias", module.bias)]
    )


def test_instance_norm_matches_torch():
    x = rand(2, 5, 6, 3) * 2 - 1
    module = torch.nn.InstanceNorm2d(3, affine=True)
    with torch.no_grad():
        module.weight.copy_(torch.tensor(rand(3, seed=5)))
        module.bias.copy_(torch.tensor(rand(3, seed=6)))
    params = {"scale": jnp.asarray(rand(3, seed=5)), "bias": jnp.asarray(rand(3, seed=6))}
    check_against_torch(
        nn.InstanceNorm(), params, module, x, [("scale", module.weight), ("bias", module.bias)]
    )


@pytest.mark.parametrize("reduction", ["avg", "max"])
@pytest.mark.parametrize(
    "shape, size",
    [((2, 7, 10, 3), (3, 4)), ((2, 8, 6, 2), (4, 6)), ((1, 5, 5, 2), (7, 1)), ((2, 11, 3), (4,))],
)
def test_adaptive_pool_matches_torch(reduction, shape, size):
    x = rand(*shape)
    layer = (nn.adaptive_avg_pool if reduction == "avg" else nn.adaptive_max_pool)(size)
    fn = getattr(torch.nn.functional, f"adaptive_{reduction}_pool{len(size)}d")
    check_against_torch(layer, {}, lambda t: fn(t, size), x)
