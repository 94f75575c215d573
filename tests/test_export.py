"""fg.export: the forward pass as serialized StableHLO plus safetensors weights, run without the model's code."""

import json
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcgrad as fg
from funcgrad import nn
from funcgrad.errors import DTypeError, MissingFileError, ShapeError


def data(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def mlp():
    return nn.serial(nn.Dense(32), nn.gelu, nn.Dropout(0.5), nn.Dense(10)), data(1, 12)


def cnn():
    model = nn.serial(
        nn.Conv(8, (3, 3)), nn.relu, nn.max_pool((2, 2)), nn.Conv(4, (3, 3), strides=2),
        nn.Flatten(), nn.Dense(5),
    )  # fmt: skip
    return model, data(1, 8, 8, 3)


def batch_norm():
    return nn.serial(nn.Conv(6, (3, 3)), nn.BatchNorm(), nn.relu, nn.Flatten(), nn.Dense(3)), data(1, 6, 6, 2)  # fmt: skip


def attention():
    block = nn.serial(
        nn.residual(nn.LayerNorm(), nn.MultiHeadAttention(4, causal=True)),
        nn.residual(nn.LayerNorm(), nn.Dense(32), nn.gelu, nn.Dense(16)),
    )
    return block, data(1, 7, 16)


def trained_state(model, params, state, example):
    """Batch-norm statistics after a few training batches, so evaluation mode uses real ones."""
    for i in range(3):
        x = data(8, *example.shape[1:], seed=20 + i) * 3 + 1
        _, state = model.apply(params, x, state=state, train=True)
    return state


@pytest.mark.parametrize("build", [mlp, cnn, batch_norm, attention])
def test_outputs_equal_jit_apply_bitwise_on_any_batch_size(tmp_path, build):
    model, example = build()
    params, state = model.init_with_state(jax.random.key(0), example)
    if state:
        state = trained_state(model, params, state, example)
        reference = jax.jit(lambda p, s, x: model.apply(p, x, state=s, train=False)[0])
        folder = fg.export.save(tmp_path, model, params, example, model_state=state)
    else:
        reference = jax.jit(lambda p, s, x: model.apply(p, x))
        folder = fg.export.save(tmp_path, model, params, example)
    f = fg.export.load(folder)
    for batch in (1, 3, 17):
        x = data(batch, *example.shape[1:], seed=batch)
        np.testing.assert_array_equal(f(x), reference(params, state, x))


def test_the_folder_describes_itself_and_keeps_the_weights_outside_the_function(tmp_path):
    model = nn.serial(nn.Dense(256), nn.relu, nn.Dense(256), nn.relu, nn.Dense(10))
    params = model.init(jax.random.key(0), data(1, 64))
    folder = fg.export.save(tmp_path / "out", model, params, data(1, 64))
    assert sorted(p.name for p in folder.iterdir()) == [
        "export.json", "forward.jaxexport", "params.safetensors", "state.safetensors",
    ]  # fmt: skip
    info = json.loads((folder / "export.json").read_text())
    assert info["input"] == {"shape": ["batch", 64], "dtype": "float32"}
    assert info["outputs"] == [{"shape": ["batch", 10], "dtype": "float32"}]
    assert info["platforms"] == [jax.default_backend()]
    assert info["jax_version"] == jax.__version__ and info["funcgrad_version"] == fg.__version__
    # 85k float32 weights are 340 kB; the function without them is a few kB.
    assert (folder / "forward.jaxexport").stat().st_size < 20_000
    assert (folder / "params.safetensors").stat().st_size > 4 * 85_000
    weights = fg.interop.load_safetensors(folder / "params.safetensors")
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), weights, params)))


def test_one_file_for_cpu_and_cuda(tmp_path):
    model, example = attention()
    params = model.init(jax.random.key(1), example)
    f = fg.export.load(fg.export.save(tmp_path, model, params, example, platforms=("cpu", "cuda")))
    assert f.info["platforms"] == ["cpu", "cuda"] and f.exported.platforms == ("cpu", "cuda")
    x = data(2, 7, 16)
    np.testing.assert_array_equal(f(x), jax.jit(model.apply)(params, x))


def test_wrong_input_names_what_the_export_expects(tmp_path):
    model, example = cnn()
    params = model.init(jax.random.key(0), example)
    f = fg.export.load(fg.export.save(tmp_path / "poly", model, params, example))
    with pytest.raises(ShapeError, match=r"expects input float32\[batch, 8, 8, 3\] \(any batch size\); got shape \(2, 8, 9, 3\)"):  # fmt: skip
        f(data(2, 8, 9, 3))
    with pytest.raises(ShapeError, match=r"got shape \(8, 8, 3\)"):
        f(data(8, 8, 3))
    with pytest.raises(DTypeError, match=r"expects input float32\[batch, 8, 8, 3\]; got dtype float64"):  # fmt: skip
        f(np.zeros((2, 8, 8, 3)))
    fixed = fg.export.load(fg.export.save(tmp_path / "fixed", model, params, data(4, 8, 8, 3), batch_polymorphic=False))  # fmt: skip
    assert fixed(data(4, 8, 8, 3)).shape == (4, 5)
    with pytest.raises(ShapeError, match=r"expects input float32\[4, 8, 8, 3\]; got shape \(5, 8, 8, 3\)"):  # fmt: skip
        fixed(data(5, 8, 8, 3))


def test_bad_arguments_are_refused(tmp_path):
    model, example = mlp()
    params = model.init(jax.random.key(0), example)
    with pytest.raises(fg.errors.InputTypeError, match="expected a funcgrad Layer"):
        fg.export.save(tmp_path, model.apply, params, example)
    with pytest.raises(ShapeError, match="batch_polymorphic needs a batch axis"):
        fg.export.save(tmp_path, nn.relu, {}, np.float32(1.0))
    with pytest.raises(FileNotFoundError, match="not an exported model"):
        fg.export.load(tmp_path)


# The loader a user copies from docs/interop.md: jax and safetensors only.
STANDALONE = """
import sys
import jax, numpy as np, safetensors.flax

path, x = sys.argv[1], np.load(sys.argv[2])
exported = jax.export.deserialize(open(f"{path}/forward.jaxexport", "rb").read())
params = safetensors.flax.load_file(f"{path}/params.safetensors")
state = safetensors.flax.load_file(f"{path}/state.safetensors")
y = exported.call(params, state, x)

assert not [m for m in sys.modules if m.startswith("funcgrad")], "funcgrad was imported"
np.save(sys.argv[3], np.asarray(y))

import funcgrad.export  # funcgrad's loader, in a process that never saw the model's code
np.save(sys.argv[4], np.asarray(funcgrad.export.load(path)(x)))
assert not [m for m in sys.modules if "test_export" in m or "conftest" in m]
"""


def test_runs_in_a_fresh_process_without_the_models_code_or_funcgrad(tmp_path):
    model, example = batch_norm()
    params, state = model.init_with_state(jax.random.key(2), example)
    state = trained_state(model, params, state, example)
    folder = fg.export.save(tmp_path / "model", model, params, example, model_state=state)
    x = data(5, 6, 6, 2, seed=3)
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "run.py").write_text(STANDALONE)
    args = [str(tmp_path / n) for n in ("model", "x.npy", "plain.npy", "fg.npy")]
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "run.py"), *args], capture_output=True, text=True,
        cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = jax.jit(lambda p, s, v: model.apply(p, v, state=s))(params, state, x)[0]
    np.testing.assert_array_equal(np.load(tmp_path / "plain.npy"), expected)
    np.testing.assert_array_equal(np.load(tmp_path / "fg.npy"), expected)
    assert folder.name == "model"


def test_command_line_export(tmp_path):
    (tmp_path / "mymodel.py").write_text(
        textwrap.dedent("""
        from funcgrad import nn
        model = nn.serial(nn.Dense(8), nn.relu, nn.Dense(3))
        """)
    )
    model = nn.serial(nn.Dense(8), nn.relu, nn.Dense(3))
    params = model.init(jax.random.key(5), data(1, 4))
    fg.interop.save_safetensors(tmp_path / "w.safetensors", params)
    command = [sys.executable, "-m", "funcgrad", "export", f"{tmp_path}/mymodel.py:model",
               "--input", "f32[1,4]", "--params", str(tmp_path / "w.safetensors"),
               "--out", str(tmp_path / "out")]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"wrote {tmp_path / 'out'}: float32[batch, 4] -> float32[batch, 3] on cpu" in proc.stdout
    x = data(6, 4)
    np.testing.assert_array_equal(fg.export.load(tmp_path / "out")(x), jax.jit(model.apply)(params, x))  # fmt: skip


def test_command_line_errors_name_the_problem(tmp_path, capsys):
    (tmp_path / "m.py").write_text(
        "from funcgrad import nn\nmodel = nn.Dense(3)\nnot_a_layer = 1\n"
    )
    fg.interop.save_safetensors(tmp_path / "w.safetensors", {"w": jnp.zeros((5, 3))})
    target = f"{tmp_path}/m.py"
    assert fg.export.main([f"{target}:not_a_layer", "--input", "f32[1,4]", "--out", "o"]) == 2
    assert "not_a_layer is a int, not a funcgrad Layer" in capsys.readouterr().err
    argv = [f"{target}:model", "--input", "f32[1,4]", "--params", str(tmp_path / "w.safetensors"), "--out", str(tmp_path / "o")]  # fmt: skip
    assert fg.export.main(argv) == 2
    err = capsys.readouterr().err
    assert "missing from the file: ['b']" in err and "w: expected (4, 3), file has (5, 3)" in err


def test_loading_a_folder_without_an_export_is_a_missing_file_error(tmp_path):
    with pytest.raises(MissingFileError, match=r"export\.load: .* is not an exported model \(no export\.json"):  # fmt: skip
        fg.export.load(tmp_path)
