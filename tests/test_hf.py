"""fg.interop.from_hf / to_hf against transformers itself: tiny random checkpoints of each family
load to the same logits and greedy tokens, bfloat16 loads, written directories load back bitwise."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import funcgrad as fg
from funcgrad import models, nn
from funcgrad.errors import ConfigError, MissingFileError, ParamsError, ShapeError, UnknownNameError

torch.set_num_threads(1)  # the CI machine is small and shared

SIZES = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, bos_token_id=None, eos_token_id=None,
             pad_token_id=None)  # fmt: skip
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}  # fmt: skip
CASES = {
    # name: (config class, settings, save_pretrained keywords)
    "llama": (transformers.LlamaConfig, {}, {"max_shard_size": "20KB"}),
    "llama3_rope_biases": (
        transformers.LlamaConfig,
        {"rope_theta": 500000.0, "rope_scaling": LLAMA3, "attention_bias": True, "mlp_bias": True},
        {},
    ),
    "llama_tied": (transformers.LlamaConfig, {"tie_word_embeddings": True}, {}),
    "qwen2": (transformers.Qwen2Config, {"use_sliding_window": False}, {}),
    "mistral": (transformers.MistralConfig, {"sliding_window": None, "head_dim": 16}, {}),
    "gpt2": (
        transformers.GPT2Config,
        {"vocab_size": 64, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 32,
         "bos_token_id": None, "eos_token_id": None},
        {},
    ),
}  # fmt: skip
IDS = np.random.default_rng(0).integers(0, 64, (2, 10))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """``name -> (the transformers model, its save_pretrained directory)``, each made once."""
    made = {}

    def get(name):
        if name not in made:
            config_class, settings, save = CASES[name]
            sizes = {} if config_class is transformers.GPT2Config else SIZES
            torch.manual_seed(0)
            hf = transformers.AutoModelForCausalLM.from_config(config_class(**sizes, **settings))
            hf = hf.float().eval()
            folder = tmp_path_factory.mktemp(name)
            hf.save_pretrained(folder, safe_serialization=True, **save)
            made[name] = hf, folder
        return made[name]

    return get


def hf_logits(hf, ids):
    with torch.no_grad():
        return hf(torch.as_tensor(np.asarray(ids))).logits.numpy()


def close(ours, theirs, rtol=1e-4):
    scale = float(np.max(np.abs(theirs)))
    np.testing.assert_allclose(np.asarray(ours), theirs, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_logits_equal_transformers(checkpoints, name):
    hf, folder = checkpoints(name)
    model, params = fg.interop.from_hf(folder)
    assert isinstance(model, models.GPT2 if name == "gpt2" else models.Llama)
    logits = model.apply(params, jnp.asarray(IDS))
    assert logits.shape == (2, 10, 64)
    close(logits, hf_logits(hf, IDS))


@pytest.mark.parametrize("name", ["llama3_rope_biases", "gpt2"])
def test_a_packed_row_gives_each_document_the_logits_it_gets_alone(checkpoints, name):
    model, params = fg.interop.from_hf(checkpoints(name)[1])
    first, second = IDS[0, :6], IDS[1, :4]
    packed = jnp.asarray(np.concatenate([first, second]))[None]
    segments = jnp.asarray([[0] * 6 + [1] * 4])
    logits = model.apply(params, packed, segment_ids=segments)
    alone = [model.apply(params, jnp.asarray(doc)[None])[0] for doc in (first, second)]
    close(logits[0, :6], np.asarray(alone[0]), rtol=1e-5)
    close(logits[0, 6:], np.asarray(alone[1]), rtol=1e-5)
    unpacked = model.apply(params, packed)  # without segment ids the second document sees the first
    assert not np.allclose(np.asarray(unpacked[0, 6:]), np.asarray(alone[1]), atol=1e-4)


def test_the_sharded_checkpoint_has_an_index(checkpoints):
    index = json.loads((checkpoints("llama")[1] / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1


@pytest.mark.parametrize("name", ["llama3_rope_biases", "gpt2"])
def test_greedy_generation_equals_transformers(checkpoints, name):
    hf, folder = checkpoints(name)
    model, params = fg.interop.from_hf(folder)
    prompt = IDS[:1, :4]
    ours = nn.generate(model, params, jnp.asarray(prompt), 6, key=jax.random.key(0), temperature=0)
    with torch.no_grad():
        theirs = hf.generate(
            torch.as_tensor(prompt), max_new_tokens=6, min_new_tokens=6, do_sample=False
        )
    assert np.asarray(ours).tolist() == theirs.numpy().tolist()


@pytest.mark.parametrize("name", ["qwen2", "gpt2"])  # q/k/v-only biases; fused c_attn, tied
def test_to_hf_loads_back_bitwise_in_transformers(checkpoints, name, tmp_path):
    hf, folder = checkpoints(name)
    model, params = fg.interop.from_hf(folder)
    back = transformers.AutoModelForCausalLM.from_pretrained(fg.interop.to_hf(model, params, tmp_path))  # fmt: skip
    back = back.float().eval()
    want, got = hf.state_dict(), back.state_dict()
    assert sorted(got) == sorted(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    close(hf_logits(back, IDS), hf_logits(hf, IDS))
    again, params_again = fg.interop.from_hf(tmp_path)
    assert again == model
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), params, params_again))


def test_a_bfloat16_checkpoint_loads(tmp_path):
    torch.manual_seed(1)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SIZES)).eval()
    hf.to(torch.bfloat16).save_pretrained(tmp_path)
    model, params = fg.interop.from_hf(tmp_path)
    assert {a.dtype for a in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    _, as_f32 = fg.interop.from_hf(tmp_path, dtype=jnp.float32)
    theirs = hf_logits(hf.float(), IDS)  # the bfloat16 weights, computed in float32
    close(model.apply(as_f32, jnp.asarray(IDS)), theirs)


def test_rope_settings_read_in_both_layouts():
    hub = {"model_type": "llama", "vocab_size": 8, "hidden_size": 8, "intermediate_size": 8,
           "num_hidden_layers": 1, "num_attention_heads": 2, "rope_theta": 500000.0,
           "rope_scaling": {"type": "llama3", **{k: v for k, v in LLAMA3.items() if k != "rope_type"}}}  # fmt: skip
    v5 = {k: v for k, v in hub.items() if k not in ("rope_theta", "rope_scaling")}
    v5["rope_parameters"] = {"rope_theta": 500000.0, **LLAMA3}
    a, b = models.LlamaConfig.from_hf_config(hub), models.LlamaConfig.from_hf_config(v5)
    assert a == b and a.rope_scaling == nn.RopeScaling("llama3", 8.0, 1.0, 4.0, 16)
    assert models.LlamaConfig.from_hf_config(a.to_hf_config()) == a


def test_llama3_scaling_is_transformers_frequencies():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = transformers.LlamaConfig(**SIZES, rope_theta=500000.0, rope_scaling=LLAMA3)
    theirs, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    base = 500000.0 ** (-jnp.arange(4, dtype=jnp.float32) * 2 / 8)
    ours = nn.RopeScaling("llama3", 8.0, 1.0, 4.0, 16).frequencies(base)
    np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), rtol=1e-6)
    assert not np.allclose(np.asarray(ours), np.asarray(base))


# -- errors -----------------------------------------------------------------------------------


def write_config(folder, **config):
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


LLAMA_JSON = {"model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
              "num_hidden_layers": 2, "num_attention_heads": 4}  # fmt: skip


def test_a_missing_directory_or_config_is_named(tmp_path):
    with pytest.raises(MissingFileError, match="nowhere"):
        fg.interop.from_hf(tmp_path / "nowhere")
    with pytest.raises(MissingFileError, match="config.json"):
        fg.interop.from_hf(tmp_path)
    with pytest.raises(MissingFileError, match="model.safetensors"):
        fg.interop.from_hf(write_config(tmp_path / "no_weights", **LLAMA_JSON))


@pytest.mark.parametrize(
    "change, error, words",
    [
        ({"model_type": "bert"}, UnknownNameError, "'bert'"),
        ({"model_type": "mistral", "sliding_window": 4}, ConfigError, "sliding_window=4"),
        ({"model_type": "qwen2", "use_sliding_window": True}, ConfigError, "sliding"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}, UnknownNameError, "'yarn'"),
        ({"hidden_act": "gelu"}, ConfigError, "'gelu'"),
    ],
)
def test_unsupported_configs_are_named(tmp_path, change, error, words):
    with pytest.raises(error, match=words):
        fg.interop.from_hf(write_config(tmp_path / "c", **(LLAMA_JSON | change)))


def test_a_missing_shard_and_a_misshapen_weight_are_named(checkpoints, tmp_path):
    folder = checkpoints("llama")[1]
    shutil.copytree(folder, tmp_path / "a")
    shard = sorted((tmp_path / "a").glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(MissingFileError, match=shard.name):
        fg.interop.from_hf(tmp_path / "a")
    shutil.copytree(folder, tmp_path / "b")
    config = json.loads((folder / "config.json").read_text()) | {"intermediate_size": 40}
    (tmp_path / "b" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ShapeError, match=r"gate_proj\.weight.*\(48, 32\).*\(40, 32\)"):
        fg.interop.from_hf(tmp_path / "b")


def test_a_hub_style_gpt2_without_prefix_and_with_mask_buffers_loads(checkpoints, tmp_path):
    """The original Hub gpt2 files name weights without ``transformer.`` and keep ``attn.bias``
    mask buffers; a weight the model has no place for is refused by name."""
    import safetensors.numpy

    folder = checkpoints("gpt2")[1]
    tensors = safetensors.numpy.load_file(folder / "model.safetensors")
    hub = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    hub["h.0.attn.bias"] = np.tril(np.ones((1, 1, 32, 32), np.float32))
    shutil.copy(folder / "config.json", tmp_path / "config.json")
    safetensors.numpy.save_file(hub, tmp_path / "model.safetensors", metadata={"format": "pt"})
    _, params = fg.interop.from_hf(tmp_path)
    _, want = fg.interop.from_hf(folder)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), params, want))
    hub["h.0.mlp.extra.weight"] = np.ones(3, np.float32)
    safetensors.numpy.save_file(hub, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ParamsError, match=r"h\.0\.mlp\.extra\.weight"):
        fg.interop.from_hf(tmp_path)


# -- the nn pieces the models are made of -----------------------------------------------------


def test_position_embedding_positions_in_training_decoding_and_packed_rows():
    pos = nn.PositionEmbedding(8)
    table = jnp.arange(24.0).reshape(8, 3)
    params, x = {"embedding": table}, jnp.zeros((1, 4, 3))
    assert bool(jnp.all(pos.apply(params, x) == table[:4]))
    y, _ = pos.apply(params, x[:, :2], state={}, position=5)
    assert bool(jnp.all(y == table[5:7]))
    packed = pos.apply(params, x, segment_ids=jnp.array([[0, 0, 1, 1]]))
    assert bool(jnp.all(packed == table[jnp.array([[0, 1, 0, 1]])]))
    with pytest.raises(ShapeError, match="max_length=8"):
        pos.apply(params, x, state={}, position=6)


def test_unembed_shares_the_embedding_table_and_both_uses_get_gradients():
    model = nn.serial(nn.shared(nn.Embedding(5, 3), "e"), nn.shared(nn.Unembed(5, 3), "e"))
    ids = jnp.array([[1, 4]])
    params = model.init(jax.random.key(0), ids)
    table = params["e"]["embedding"]
    assert bool(jnp.allclose(model.apply(params, ids), table[ids] @ table.T))
    grad = jax.grad(lambda p: model.apply(p, ids)[0, 0, 2])(params)["e"]["embedding"]
    # d/dT of T[1]·T[2]: row 1 gets T[2], row 2 gets T[1] (input and output use both count)
    assert bool(jnp.allclose(grad[1], table[2])) and bool(jnp.allclose(grad[2], table[1]))


def test_attention_biases_on_some_projections_only():
    x = jax.ShapeDtypeStruct((1, 2, 8), jnp.float32)

    def names(use_bias):
        return sorted(nn.MultiHeadAttention(2, use_bias=use_bias).param_specs(x, ()))

    assert names(("q", "k", "v")) == ["bk", "bq", "bv", "wk", "wo", "wq", "wv"]
    assert names(True) == ["bk", "bo", "bq", "bv", "wk", "wo", "wq", "wv"]
    assert names(False) == ["wk", "wo", "wq", "wv"]
    with pytest.raises(ConfigError, match="use_bias"):
        names(("x",))


def test_rope_scaling_checks_its_settings_and_linear_divides_the_angles():
    with pytest.raises(ConfigError, match="rope_type"):
        nn.RopeScaling("yarn")
    x = jax.random.normal(jax.random.key(0), (1, 3, 2, 4))
    linear = nn.rotary(x, jnp.arange(3.0), scaling=nn.RopeScaling("linear", factor=2.0))
    assert bool(jnp.allclose(linear, nn.rotary(x, jnp.arange(3.0) / 2), atol=1e-6))
