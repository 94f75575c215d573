"""fg.interop: safetensors files of parameter trees, and PyTorch state_dicts checked against PyTorch itself."""

import tracemalloc

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors
import safetensors.numpy
import safetensors.torch
import torch

import funcgrad as fg
from funcgrad import nn
from funcgrad.errors import ConfigError, MissingFileError, ParamsError, ShapeError

torch.set_num_threads(1)  # the CI machine is small and shared


def tree():
    return {
        "serial_0": {
            "dense_0": {"w": jnp.arange(6.0, dtype=jnp.float32).reshape(2, 3), "b": jnp.ones(3)},
            "norm": {"scale": jnp.array([1.5, -2.25], jnp.bfloat16)},
        },
        "half": jnp.array([0.5, 3.0], jnp.float16),
        "ids": jnp.arange(4, dtype=jnp.int32),
        "f64": jnp.array([1 / 3], jnp.float64),
    }


def same(a, b):
    return jax.tree.map(lambda x, y: (x.shape, x.dtype) == (y.shape, y.dtype) and bool(jnp.all(x == y)), a, b)  # fmt: skip


# -- safetensors ------------------------------------------------------------------------------


@pytest.mark.x64
def test_round_trip_keeps_values_dtypes_and_nesting(tmp_path):
    path = fg.interop.save_safetensors(tmp_path / "p.safetensors", tree())
    loaded = fg.interop.load_safetensors(path)
    assert all(jax.tree.leaves(same(tree(), loaded)))
    assert jax.tree.structure(loaded) == jax.tree.structure(tree())
    assert [p.name for p in tmp_path.iterdir()] == ["p.safetensors"]  # no temporary file left


@pytest.mark.x64
def test_files_open_in_pytorch_and_numpy_readers_under_dotted_keys(tmp_path):
    path = fg.interop.save_safetensors(tmp_path / "p.safetensors", tree())
    in_torch = safetensors.torch.load_file(path)
    assert sorted(in_torch) == [
        "f64", "half", "ids", "serial_0.dense_0.b", "serial_0.dense_0.w", "serial_0.norm.scale",
    ]  # fmt: skip
    assert in_torch["serial_0.norm.scale"].dtype == torch.bfloat16
    assert in_torch["serial_0.norm.scale"].float().tolist() == [1.5, -2.25]
    assert in_torch["serial_0.dense_0.w"].tolist() == [[0, 1, 2], [3, 4, 5]]
    # NumPy has no bfloat16, so its reader gets a file without one.
    no_bf16 = {k: v for k, v in tree().items() if k != "serial_0"}
    path = fg.interop.save_safetensors(tmp_path / "n.safetensors", no_bf16)
    in_numpy = safetensors.numpy.load_file(path)
    assert in_numpy["half"].dtype == np.float16 and in_numpy["f64"].tolist() == [1 / 3]


def test_reads_a_file_pytorch_wrote(tmp_path):
    tensors = {"a.w": torch.arange(6.0).reshape(2, 3).to(torch.bfloat16), "a.b": torch.ones(3)}
    safetensors.torch.save_file(tensors, tmp_path / "t.safetensors")
    loaded = fg.interop.load_safetensors(tmp_path / "t.safetensors")
    assert loaded["a"]["w"].dtype == jnp.bfloat16
    assert loaded["a"]["w"].astype(jnp.float32).tolist() == [[0, 1, 2], [3, 4, 5]]


def test_like_lists_every_missing_extra_misshaped_and_mistyped_path(tmp_path):
    path = fg.interop.save_safetensors(tmp_path / "p.safetensors", tree())
    like = tree()
    del like["ids"]  # extra in the file
    like["serial_0"]["dense_0"]["w"] = jnp.zeros((3, 2), jnp.float32)  # shape
    like["half"] = jnp.zeros(2, jnp.float32)  # dtype
    like["new"] = {"k": jnp.zeros(1)}  # missing from the file
    with pytest.raises(ParamsError) as err:
        fg.interop.load_safetensors(path, like=like)
    message = str(err.value)
    for text in ("missing from the file: ['new.k']", "not in `like`: ['ids']",
                 "serial_0.dense_0.w: expected (3, 2), file has (2, 3)",
                 "half: expected float32 (F32), file has F16"):  # fmt: skip
        assert text in message


def test_like_gives_its_structure_and_placement(tmp_path):
    mesh = jax.make_mesh((8,), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    params = {"w": jax.device_put(jnp.arange(16.0, dtype=jnp.float32), sharding), "empty": {}}
    path = fg.interop.save_safetensors(tmp_path / "p.safetensors", params)
    loaded = fg.interop.load_safetensors(path, like=jax.eval_shape(lambda: params) | {"w": params["w"]})  # fmt: skip
    assert loaded["empty"] == {} and loaded["w"].sharding == sharding
    assert loaded["w"].tolist() == list(range(16))


@pytest.mark.parametrize("cut", [0, 5, 40, -3])
def test_a_truncated_file_gets_a_clear_error(tmp_path, cut):
    path = fg.interop.save_safetensors(tmp_path / "p.safetensors", tree())
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    with pytest.raises(ParamsError, match=r"p\.safetensors .* not a complete safetensors file.*truncated"):  # fmt: skip
        fg.interop.load_safetensors(path)


def test_bad_trees_are_refused_before_writing(tmp_path):
    path = fg.interop.save_safetensors(tmp_path / "p.safetensors", tree())
    before = path.read_bytes()
    with pytest.raises(ParamsError, match=r"key 'a\.b' under 'x'.*without '\.'"):
        fg.interop.save_safetensors(path, {"x": {"a.b": jnp.zeros(1)}})
    with pytest.raises(ParamsError, match="'k' is a PRNG key array"):
        fg.interop.save_safetensors(path, {"k": jax.random.key(0)})
    with pytest.raises(ParamsError, match=r"'x' holds a list"):
        fg.interop.save_safetensors(path, {"x": [jnp.zeros(1)]})
    assert path.read_bytes() == before


def test_float8_round_trips_and_reads_from_pytorch(tmp_path):
    values = [0.0, 1.0, -2.0, 448.0]
    params = {"e4m3": jnp.array(values, jnp.float8_e4m3fn), "e5m2": jnp.array(values, jnp.float8_e5m2)}  # fmt: skip
    path = fg.interop.save_safetensors(tmp_path / "f8.safetensors", params)
    loaded = fg.interop.load_safetensors(path, like=params)
    assert all(jax.tree.leaves(same(params, loaded)))
    in_torch = safetensors.torch.load_file(path)
    assert in_torch["e4m3"].dtype == torch.float8_e4m3fn
    assert in_torch["e5m2"].float().tolist() == values
    safetensors.torch.save_file({"w": torch.tensor(values).to(torch.float8_e4m3fn)}, tmp_path / "t.safetensors")  # fmt: skip
    assert fg.interop.load_safetensors(tmp_path / "t.safetensors")["w"].astype(jnp.float32).tolist() == values  # fmt: skip


def test_bfloat16_reads_where_the_packages_numpy_reader_cannot(tmp_path, monkeypatch):
    # safetensors' NumPy reader learnt bfloat16 late; where it refuses, a mapped view stands in.
    real = safetensors.safe_open

    class WithoutBfloat16:
        def __init__(self, *args, **kwargs):
            self.file = real(*args, **kwargs)

        def __enter__(self):
            self.file.__enter__()
            return self

        def __exit__(self, *exc):
            return self.file.__exit__(*exc)

        def get_tensor(self, key):
            if self.file.get_slice(key).get_dtype() == "BF16":
                raise TypeError("data type 'bfloat16' not understood")
            return self.file.get_tensor(key)

        def __getattr__(self, name):
            return getattr(self.file, name)

    path = fg.interop.save_safetensors(tmp_path / "p.safetensors", tree())
    monkeypatch.setattr(safetensors, "safe_open", WithoutBfloat16)
    assert all(jax.tree.leaves(same(tree(), fg.interop.load_safetensors(path))))


def test_a_large_file_is_memory_mapped_not_read_into_python_memory(tmp_path):
    # 8 tensors of 4 MB: the old reader held the whole file as bytes (and a copy per tensor);
    # the safetensors package maps it, so Python-side allocations stay below its size (JAX
    # may still hold a few tensors' host copies while it transfers them).
    arrays = {f"layer_{i}.w": np.full((1024, 1024), i, np.float32) for i in range(8)}
    path = tmp_path / "big.safetensors"
    safetensors.numpy.save_file(arrays, path)
    size = path.stat().st_size
    tracemalloc.start()
    try:
        loaded = fg.interop.load_safetensors(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < size, (peak, size)  # the old reader: about 3 * size
    assert [float(loaded[f"layer_{i}"]["w"][3, 5]) for i in range(8)] == list(range(8))


def test_a_missing_file_is_a_missing_file_error(tmp_path):
    with pytest.raises(MissingFileError, match=r"load_safetensors: no file at .*nope\.safetensors"):
        fg.interop.load_safetensors(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError):  # the builtin it stands for
        fg.interop.load_safetensors(tmp_path / "nope.safetensors")


def test_the_old_dotted_key_spellings_are_deprecated_aliases_of_funcgrad_paths():
    from funcgrad import paths

    nested = {"a": {"b": jnp.zeros(1)}}
    with pytest.deprecated_call(match="funcgrad.paths.flatten"):
        flat = fg.interop.flatten_dotted(nested)
    assert list(flat) == list(paths.flatten(nested)) == ["a.b"]
    with pytest.deprecated_call(match="funcgrad.paths.unflatten"):
        assert jax.tree.structure(fg.interop.unflatten_dotted(flat)) == jax.tree.structure(nested)


# -- PyTorch state_dicts ----------------------------------------------------------------------


def close(ours, ref, tol=1e-5):
    """Largest error relative to the largest reference value (float32 on both sides)."""
    ours, ref = np.asarray(ours), ref.detach().numpy()
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    err = np.max(np.abs(ours - ref)) / np.max(np.abs(ref))
    assert err <= tol, err


def data(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_mlp():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16), torch.nn.ReLU(),
        torch.nn.Linear(16, 3),
    ).eval()  # fmt: skip
    model = nn.serial(nn.Dense(16), nn.tanh, nn.Dense(16), nn.relu, nn.Dense(3))
    x = data(5, 6)
    params, state = fg.interop.from_torch(model, x, net.state_dict())
    assert state == {}
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, model.init(jax.random.key(0), x))  # fmt: skip
    close(model.apply(params, x), net(torch.from_numpy(x)))


def test_numpy_arrays_from_a_safetensors_file_and_bfloat16_tensors_work_too(tmp_path):
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    model = nn.serial(nn.Dense(8), nn.relu, nn.Dense(2))
    x = data(3, 4)
    safetensors.torch.save_file(net.state_dict(), tmp_path / "net.safetensors")
    arrays = safetensors.numpy.load_file(tmp_path / "net.safetensors")
    params, _ = fg.interop.from_torch(model, x, arrays)
    close(model.apply(params, x), net(torch.from_numpy(x)))
    half = {k: v.to(torch.bfloat16) for k, v in net.state_dict().items()}
    params, _ = fg.interop.from_torch(model, x, half)
    assert params["dense_0"]["w"].dtype == jnp.float32
    np.testing.assert_array_equal(params["dense_0"]["w"], half["0.weight"].float().numpy().T)


class TorchCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = torch.nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.permute(0, 2, 3, 1).flatten(1))  # channels last before flattening


def test_cnn_with_batch_norm_in_eval_mode():
    torch.manual_seed(2)
    net = TorchCNN().train()
    with torch.no_grad():  # a few training batches, so the running statistics are not 0 and 1
        for i in range(3):
            net(torch.from_numpy(data(8, 3, 16, 16, seed=10 + i)) * 2 + 1)
    net.eval()
    model = nn.serial(
        nn.Conv(8, (3, 3), padding=1), nn.BatchNorm(), nn.relu, nn.max_pool((2, 2), strides=2),
        nn.Conv(8, (3, 3), strides=2, padding=1, groups=2, use_bias=False), nn.BatchNorm(),
        nn.relu, nn.Flatten(), nn.Dense(10),
    )  # fmt: skip
    x = data(4, 16, 16, 3)
    params, state = fg.interop.from_torch(model, x, net.state_dict())
    np.testing.assert_array_equal(state["batch_norm_1"]["var"], net.bn1.running_var.numpy())
    y, _ = model.apply(params, x, state=state)
    close(y, net(torch.from_numpy(x.transpose(0, 3, 1, 2))))


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_conv_and_conv_transpose_in_every_dimension(nd):
    torch.manual_seed(3)
    conv = getattr(torch.nn, f"Conv{nd}d")(4, 6, 3, stride=2, padding=1, dilation=1)
    up = getattr(torch.nn, f"ConvTranspose{nd}d")(6, 5, 3, stride=2)
    model = nn.serial(
        nn.Conv(6, (3,) * nd, strides=2, padding=1), nn.ConvTranspose(5, (3,) * nd, strides=2, padding="VALID")
    )  # fmt: skip
    x = data(2, *(7,) * nd, 4)
    params, _ = fg.interop.from_torch(model, x, {f"c.{k}": v for k, v in conv.state_dict().items()} | {f"u.{k}": v for k, v in up.state_dict().items()})  # fmt: skip
    channels_first = torch.from_numpy(np.moveaxis(x, -1, 1))
    close(model.apply(params, x), torch.movedim(up(conv(channels_first)), 1, -1))


def test_conv_transpose_padding_recipe_of_the_docs():
    # PyTorch's padding p and output_padding q are funcgrad's (k - 1 - p, k - 1 - p + q).
    torch.manual_seed(8)
    up = torch.nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1)
    model = nn.ConvTranspose(4, (3, 3), strides=2, padding=[(1, 2), (1, 2)])
    x = data(2, 5, 5, 3)
    params, _ = fg.interop.from_torch(model, x, up.state_dict())
    ref = torch.movedim(up(torch.from_numpy(x.transpose(0, 3, 1, 2))), 1, -1)
    close(model.apply(params, x), ref)


class TorchTokens(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(11, 8)
        self.norm = torch.nn.RMSNorm(8, eps=1e-6)
        self.head = torch.nn.Linear(8, 11, bias=False)
        self.ln = torch.nn.LayerNorm(11, bias=False)

    def forward(self, ids):
        return self.ln(self.head(self.norm(self.emb(ids))))


def test_embedding_norms_and_a_bias_free_linear():
    torch.manual_seed(4)
    net = TorchTokens().eval()
    with torch.no_grad():
        net.norm.weight.uniform_(0.5, 2)
        net.ln.weight.uniform_(0.5, 2)
    model = nn.serial(nn.Embedding(11, 8), nn.RMSNorm(), nn.Dense(11, use_bias=False), nn.LayerNorm(use_bias=False))  # fmt: skip
    ids = np.random.default_rng(0).integers(0, 11, (3, 5)).astype(np.int32)
    params, _ = fg.interop.from_torch(model, ids, net.state_dict())
    close(model.apply(params, ids), net(torch.from_numpy(ids).long()))


def encoder(norm_first):
    attention, mlp = nn.MultiHeadAttention(4), (nn.Dense(32), nn.gelu, nn.Dense(16))
    if norm_first:
        return nn.serial(nn.residual(nn.LayerNorm(), attention), nn.residual(nn.LayerNorm(), *mlp))
    return nn.serial(nn.residual(attention), nn.LayerNorm(), nn.residual(*mlp), nn.LayerNorm())


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_encoder_layer(norm_first):
    torch.manual_seed(5)
    net = torch.nn.TransformerEncoderLayer(
        16, 4, 32, dropout=0.0, activation="gelu", batch_first=True, norm_first=norm_first
    ).eval()
    with torch.no_grad():  # non-zero biases everywhere, so a misplaced one shows
        for name, p in net.named_parameters():
            if name.endswith("bias"):
                p.uniform_(-0.5, 0.5)
    model = encoder(norm_first)
    x = data(2, 7, 16)
    params, _ = fg.interop.from_torch(model, x, net.state_dict())
    close(model.apply(params, x), net(torch.from_numpy(x)))


def test_cross_attention_with_other_key_and_value_widths():
    torch.manual_seed(6)
    mha = torch.nn.MultiheadAttention(16, 2, kdim=6, vdim=6, batch_first=True).eval()
    model = nn.MultiHeadAttention(2)
    x, context = data(2, 3, 16), data(2, 5, 6, seed=1)
    params, _ = fg.interop.from_torch(model, (x, context), mha.state_dict())
    ref, _ = mha(torch.from_numpy(x), torch.from_numpy(context), torch.from_numpy(context))
    close(model.apply(params, (x, context)), ref)


class Reordered(torch.nn.Module):
    """Modules declared in another order than they run: matching by order needs a mapping."""

    def __init__(self):
        super().__init__()
        self.out = torch.nn.Linear(8, 2)
        self.hidden = torch.nn.Linear(4, 8)

    def forward(self, x):
        return self.out(torch.relu(self.hidden(x)))


def test_mapping_overrides_the_order():
    torch.manual_seed(7)
    net = Reordered()
    model = nn.serial(nn.Dense(8), nn.relu, nn.Dense(2))
    x = data(3, 4)
    with pytest.raises(ShapeError, match=r"PyTorch 'out' → funcgrad Dense at dense_0: '[wb]' should have shape"):  # fmt: skip
        fg.interop.from_torch(model, x, net.state_dict())
    params, _ = fg.interop.from_torch(model, x, net.state_dict(), mapping={"out": "dense_2"})
    close(model.apply(params, x), net(torch.from_numpy(x)))


def test_a_state_dict_of_another_architecture_lists_both_sides():
    model = nn.serial(nn.Dense(8), nn.relu, nn.Dense(10))
    with pytest.raises(ParamsError) as err:
        fg.interop.from_torch(model, data(1, 48), TorchCNN().state_dict())
    message = str(err.value)
    for text in ("'conv1' (Conv/ConvTranspose: weight[8, 3, 3, 3], bias[8])", "'bn2' (BatchNorm",
                 "funcgrad layers left over: ['Dense at dense_2']", "mapping="):  # fmt: skip
        assert text in message


def test_wrong_shape_and_missing_key_name_the_place():
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    model = nn.serial(nn.Dense(8), nn.relu, nn.Dense(2))
    with pytest.raises(ShapeError, match=r"PyTorch '0' → funcgrad Dense at dense_0: 'w' should have shape \(5, 8\); .* \(4, 8\)"):  # fmt: skip
        fg.interop.from_torch(model, data(1, 5), net.state_dict())
    weights = net.state_dict()
    del weights["2.bias"]
    with pytest.raises(ParamsError, match=r"Dense at dense_2: the state_dict lacks '2\.bias'"):
        fg.interop.from_torch(model, data(1, 4), weights)
    with pytest.raises(ParamsError, match=r"mapping names PyTorch module 'nope'.*\['0', '2'\]"):
        fg.interop.from_torch(model, data(1, 4), net.state_dict(), mapping={"nope": "dense_0"})
    with pytest.raises(ParamsError, match=r"no place for \['0\.bias'\]"):
        fg.interop.from_torch(nn.Dense(8, use_bias=False), data(1, 4), {"0.weight": net[0].weight, "0.bias": net[0].bias})  # fmt: skip


def test_bias_free_weights_pair_in_order_else_by_mapping():
    model = nn.serial(nn.Embedding(8, 8), nn.Dense(8, use_bias=False))
    table, kernel = data(8, 8), np.eye(8, dtype=np.float32) * 2 + np.tri(8, dtype=np.float32)
    ids = np.zeros((1, 2), np.int32)
    params, _ = fg.interop.from_torch(model, ids, {"a.weight": table, "b.weight": kernel})
    assert params["embedding_0"]["embedding"].tolist() == table.tolist()
    assert params["dense_1"]["w"].tolist() == kernel.T.tolist()
    swapped = {"a": "dense_1", "b": "embedding_0"}
    params, _ = fg.interop.from_torch(model, ids, {"a.weight": table, "b.weight": kernel}, mapping=swapped)  # fmt: skip
    assert params["dense_1"]["w"].tolist() == table.T.tolist()
    three = {"a.weight": table, "b.weight": kernel, "c.weight": kernel}
    with pytest.raises(ParamsError, match="'a' .* could be an Embedding or a bias-free Linear"):
        fg.interop.from_torch(model, ids, three)


class Tied(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.block = torch.nn.Linear(4, 4)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.block(torch.tanh(self.block(x))))


def test_a_shared_layer_takes_one_module():
    torch.manual_seed(9)
    net = Tied()
    tied = nn.shared(nn.Dense(4), name="block")
    model = nn.serial(tied, nn.tanh, tied, nn.Dense(2))
    x = data(3, 4)
    params, _ = fg.interop.from_torch(model, x, net.state_dict())
    assert sorted(params) == ["block", "dense_3"]
    close(model.apply(params, x), net(torch.from_numpy(x)))


def test_stacked_parameters_of_repeat_are_refused_with_advice():
    with pytest.raises(
        fg.errors.ConfigError, match=r"nn\.repeat .* import into the unrolled model"
    ):
        fg.interop.from_torch(nn.repeat(nn.Dense(4), 2), data(1, 4), {})


# -- recurrent layers and group norms ---------------------------------------------------------


class TorchTagger(torch.nn.Module):
    def __init__(self, hidden=6):
        super().__init__()
        self.rnn = torch.nn.LSTM(4, hidden, num_layers=2, batch_first=True, bidirectional=True)
        self.head = torch.nn.Linear(2 * hidden, 3)

    def forward(self, x, lengths):
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)  # fmt: skip
        y, _ = self.rnn(packed)
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])
        return self.head(y)


def tagger():
    return nn.serial(
        nn.bidirectional(nn.LSTMCell(6), nn.LSTMCell(6)),
        nn.bidirectional(nn.LSTMCell(6), nn.LSTMCell(6)),
        nn.elementwise(lambda pair: pair[0], "outputs"),
        nn.Dense(3),
    )


def test_two_layer_bidirectional_lstm_with_packed_lengths():
    torch.manual_seed(10)
    net = TorchTagger().eval()
    x, lengths = data(3, 5, 4), np.array([5, 2, 4], np.int32)
    params, state = fg.interop.from_torch(tagger(), (x, lengths), net.state_dict())
    assert state == {}
    # torch's layer k is the k-th bidirectional; `_reverse` is its backward cell.
    w = net.rnn.weight_hh_l1_reverse.detach().numpy()
    np.testing.assert_array_equal(params["bidirectional_1"]["backward"]["wh"], w.T)
    ref = net(torch.from_numpy(x), torch.from_numpy(lengths).long())
    close(tagger().apply(params, (x, lengths)), ref)


class TorchGRU(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(10, 4)
        self.gru = torch.nn.GRU(4, 5)  # time first
        self.out = torch.nn.Linear(5, 10)

    def forward(self, ids):
        return self.out(self.gru(self.emb(ids).transpose(0, 1))[0].transpose(0, 1))


def test_one_layer_gru_between_an_embedding_and_a_linear():
    torch.manual_seed(11)
    net = TorchGRU().eval()
    model = nn.serial(nn.Embedding(10, 4), nn.recurrent(nn.GRUCell(5)), nn.Dense(10))
    ids = np.random.default_rng(1).integers(0, 10, (2, 6)).astype(np.int32)
    params, _ = fg.interop.from_torch(model, ids, net.state_dict())
    np.testing.assert_array_equal(params["recurrent_1"]["bh"], net.gru.bias_hh_l0.detach().numpy())  # fmt: skip
    close(model.apply(params, ids), net(torch.from_numpy(ids).long()))


def test_cells_and_a_bias_free_lstm():
    torch.manual_seed(12)
    cell, x_t = torch.nn.LSTMCell(3, 4), data(2, 3)
    params, _ = fg.interop.from_torch(nn.LSTMCell(4), x_t, cell.state_dict())
    (h, c), _ = nn.LSTMCell(4).apply(params, x_t)
    ref_h, ref_c = cell(torch.from_numpy(x_t))
    close(h, ref_h)
    close(c, ref_c)
    lstm, x = torch.nn.LSTM(3, 4, batch_first=True, bias=False), data(2, 3, 3)
    params, _ = fg.interop.from_torch(nn.recurrent(nn.LSTMCell(4)), x, lstm.state_dict())
    assert params["bi"].tolist() == [0.0] * 16 and params["bh"].tolist() == [0.0] * 16
    close(nn.recurrent(nn.LSTMCell(4)).apply(params, x), lstm(torch.from_numpy(x))[0])


class TorchGroupNormCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.gn = torch.nn.GroupNorm(2, 8)
        self.conv2 = torch.nn.Conv2d(8, 6, 3, stride=2)
        self.inorm = torch.nn.InstanceNorm2d(6, affine=True)
        self.fc = torch.nn.Linear(6, 4)

    def forward(self, x):
        x = torch.relu(self.gn(self.conv1(x)))
        x = torch.relu(self.inorm(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


def test_cnn_with_group_norm_and_instance_norm():
    torch.manual_seed(13)
    net = TorchGroupNormCNN().eval()
    with torch.no_grad():  # not the initial ones and zeros, so a swap would show
        for norm in (net.gn, net.inorm):
            norm.weight.uniform_(0.5, 2)
            norm.bias.uniform_(-1, 1)
    model = nn.serial(
        nn.Conv(8, (3, 3), padding=1), nn.GroupNorm(2), nn.relu,
        nn.Conv(6, (3, 3), strides=2, padding="VALID"), nn.InstanceNorm(), nn.relu,
        nn.adaptive_avg_pool((1, 1)), nn.Flatten(), nn.Dense(4),
    )  # fmt: skip
    x = data(2, 9, 9, 3)
    params, state = fg.interop.from_torch(model, x, net.state_dict())
    assert state == {} and params["group_norm_1"]["bias"].tolist() == net.gn.bias.tolist()
    close(model.apply(params, x), net(torch.from_numpy(x.transpose(0, 3, 1, 2))))


def test_recurrent_mismatches_name_both_sides():
    x, lengths = data(1, 2, 4), np.array([2], np.int32)
    other_size = TorchTagger(hidden=8).state_dict()
    with pytest.raises(ShapeError, match=r"PyTorch 'rnn\.l0' → funcgrad Bidirectional at bidirectional_0 \(forward\): the PyTorch layer has hidden size 8 \('rnn\.weight_hh_l0' is \[32, 8\]\); the funcgrad cell has hidden=6"):  # fmt: skip
        fg.interop.from_torch(tagger(), (x, lengths), other_size)
    with pytest.raises(ShapeError, match=r"'wi' should have shape \(5, 24\); the PyTorch weights give \(4, 24\)"):  # fmt: skip
        fg.interop.from_torch(tagger(), (data(1, 2, 5), lengths), TorchTagger().state_dict())
    one_way = nn.serial(nn.recurrent(nn.LSTMCell(6)), nn.recurrent(nn.LSTMCell(6)), nn.elementwise(lambda p: p[0]), nn.Dense(3))  # fmt: skip
    with pytest.raises(ParamsError, match=r"a bidirectional PyTorch layer goes into an nn\.bidirectional, not an nn\.recurrent"):  # fmt: skip
        fg.interop.from_torch(one_way, (x, lengths), TorchTagger().state_dict())
    gru = {f"rnn.{k}": v for k, v in torch.nn.GRU(4, 6, bidirectional=True).state_dict().items()}
    with pytest.raises(ParamsError) as err:
        fg.interop.from_torch(tagger(), (x, lengths), gru)
    message = str(err.value)
    for text in ("'rnn.l0' (GRU layer: weight_ih[18, 4], weight_hh[18, 6], bias_ih[18], bias_hh[18], weight_ih_reverse[18, 4]",
                 "funcgrad layers left over: ['Bidirectional at bidirectional_0', 'Bidirectional at bidirectional_1', 'Dense at dense_3']"):  # fmt: skip
        assert text in message
    x = data(1, 2, 4)
    with pytest.raises(ParamsError, match=r"one-way PyTorch layer goes into an nn\.recurrent, not an nn\.bidirectional"):  # fmt: skip
        fg.interop.from_torch(nn.bidirectional(nn.GRUCell(6), nn.GRUCell(6)), x, torch.nn.GRU(4, 6).state_dict())  # fmt: skip
    with pytest.raises(ParamsError, match=r"recurrent\(reverse=True\) has no PyTorch counterpart"):
        fg.interop.from_torch(nn.recurrent(nn.GRUCell(6), reverse=True), x, torch.nn.GRU(4, 6).state_dict())  # fmt: skip
    with pytest.raises(
        ParamsError, match=r"left over: \[\"'l0' \(unknown module: weight_ih\[6, 4\]"
    ):
        fg.interop.from_torch(nn.recurrent(nn.GRUCell(6)), x, torch.nn.RNN(4, 6).state_dict())  # fmt: skip
    missing = TorchTagger().state_dict()
    del missing["rnn.bias_hh_l1_reverse"]
    with pytest.raises(ParamsError, match=r"the state_dict lacks 'rnn\.bias_hh_l1_reverse'"):
        fg.interop.from_torch(tagger(), (x, lengths), missing)


# -- the torch module itself: the hyper-parameters its weights do not show -------------------


def biased_encoder_layer(heads=4, **kwargs):
    torch.manual_seed(5)
    options = dict(dropout=0.0, activation="gelu", batch_first=True) | kwargs
    net = torch.nn.TransformerEncoderLayer(16, heads, 32, **options).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("bias"):
                p.uniform_(-0.5, 0.5)
    return net


@pytest.mark.parametrize("norm_first", [False, True])
def test_the_torch_module_itself_converts_like_its_state_dict(norm_first):
    net = biased_encoder_layer(norm_first=norm_first)
    x = data(2, 7, 16)
    params, _ = fg.interop.from_torch(encoder(norm_first), x, net)
    close(encoder(norm_first).apply(params, x), net(torch.from_numpy(x)))


def test_another_head_count_is_refused_naming_both():
    net = biased_encoder_layer(heads=8)
    x = data(2, 7, 16)
    # The weights alone fit a 4-head block shape for shape, and give other outputs:
    params, _ = fg.interop.from_torch(encoder(False), x, net.state_dict())
    ref = net(torch.from_numpy(x)).detach().numpy()
    assert np.max(np.abs(np.asarray(encoder(False).apply(params, x)) - ref)) > 1e-3
    with pytest.raises(ConfigError, match=r"PyTorch 'self_attn' → funcgrad MultiHeadAttention at residual_0\.attention_0.*PyTorch has num_heads=8 \(head_dim 2\), funcgrad has num_heads=4 \(head_dim 4\)"):  # fmt: skip
        fg.interop.from_torch(encoder(False), x, net)
    attention = torch.nn.MultiheadAttention(16, 8, batch_first=True)
    with pytest.raises(ConfigError, match="num_heads=8.*nn.MultiHeadAttention\\(8"):
        fg.interop.from_torch(nn.MultiHeadAttention(4), x, attention)


def test_norm_placement_and_activation_of_a_transformer_layer_are_checked():
    x = data(2, 7, 16)
    with pytest.raises(ConfigError, match=r"'\(top\)' \(TransformerEncoderLayer\) has norm_first=True, but funcgrad's LayerNorm at layer_norm_1 \(its norm1\) runs after"):  # fmt: skip
        fg.interop.from_torch(encoder(False), x, biased_encoder_layer(norm_first=True))
    with pytest.raises(ConfigError, match=r"applies relu between linear1 and linear2; funcgrad applies \['gelu'\]"):  # fmt: skip
        fg.interop.from_torch(encoder(False), x, biased_encoder_layer(activation="relu"))


def test_norm_kind_epsilon_and_conv_settings_are_checked():
    x = data(3, 8)
    with pytest.raises(ConfigError, match=r"PyTorch has eps=0\.001, funcgrad has 1e-05"):
        fg.interop.from_torch(nn.LayerNorm(), x, torch.nn.LayerNorm(8, eps=1e-3))
    with pytest.raises(ConfigError, match=r"PyTorch has a RMSNorm, funcgrad a LayerNorm"):
        fg.interop.from_torch(nn.LayerNorm(use_bias=False), x, torch.nn.RMSNorm(8))
    images = data(2, 8, 8, 3)
    with pytest.raises(ConfigError, match=r"PyTorch has stride=\(2, 2\), funcgrad has 1"):
        fg.interop.from_torch(nn.Conv(4, (3, 3), padding=1), images, torch.nn.Conv2d(3, 4, 3, stride=2, padding=1))  # fmt: skip
    with pytest.raises(ConfigError, match=r"padding.*PyTorch's is \[\(0, 0\), \(0, 0\)\], funcgrad's \[\(1, 1\), \(1, 1\)\]"):  # fmt: skip
        fg.interop.from_torch(nn.Conv(4, (3, 3)), images, torch.nn.Conv2d(3, 4, 3))
    with pytest.raises(ConfigError, match=r"momentum=0\.9"):
        fg.interop.from_torch(nn.BatchNorm(momentum=0.99), images, torch.nn.BatchNorm2d(3))


def test_the_cnn_module_itself_passes_its_checks():
    torch.manual_seed(2)
    net = TorchCNN().eval()
    model = nn.serial(
        nn.Conv(8, (3, 3), padding=1), nn.BatchNorm(), nn.relu, nn.max_pool((2, 2), strides=2),
        nn.Conv(8, (3, 3), strides=2, padding=1, groups=2, use_bias=False), nn.BatchNorm(),
        nn.relu, nn.Flatten(), nn.Dense(10),
    )  # fmt: skip
    x = data(4, 16, 16, 3)
    params, state = fg.interop.from_torch(model, x, net)
    y, _ = model.apply(params, x, state=state)
    close(y, net(torch.from_numpy(x.transpose(0, 3, 1, 2))))


def test_a_channels_first_example_is_told_to_transpose():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1))
    with pytest.raises(ShapeError, match=r"funcgrad is channels-last \(N, H, W, C\) where PyTorch is channels-first \(N, C, H, W\): this input of shape \(2, 3, 16, 16\) looks channels-first; pass x\.transpose\(0, 2, 3, 1\), of shape \(2, 16, 16, 3\)"):  # fmt: skip
        fg.interop.from_torch(nn.Conv(8, (3, 3), padding=1), data(2, 3, 16, 16), net.state_dict())
    with pytest.raises(
        ShapeError
    ) as err:  # a channels-last input of the wrong width gets no such hint
        fg.interop.from_torch(nn.Conv(8, (3, 3), padding=1), data(2, 16, 16, 4), net.state_dict())
    assert "channels-last" not in str(err.value)


def test_a_mapping_to_another_kind_is_refused_before_reading_settings():
    net = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ParamsError, match="a Linear cannot fill a MultiHeadAttention"):
        fg.interop.from_torch(nn.MultiHeadAttention(2), data(1, 3, 4), net, mapping={"0": ""})
