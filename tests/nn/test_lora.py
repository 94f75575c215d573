"""LoRA: lora_init's factors leave the model unchanged, lora_merge is W + (alpha/rank)·A·B on
Dense and attention weights (wo with two input axes), per copy for nn.repeat's stacks, training the factors leaves the base
alone, and the merge agrees with peft's merge_and_unload on a tiny transformers Llama."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import funcgrad as fg
from funcgrad import errors, nn

D, HEADS, KV_HEADS, OUT = 8, 2, 1, 6


def model():
    return nn.serial(
        nn.Dense(D), nn.MultiHeadAttention(HEADS, num_kv_heads=KV_HEADS), nn.LayerNorm(),
        nn.Dense(OUT),
    )  # fmt: skip


@pytest.fixture(scope="module")
def base():
    x = jax.random.normal(jax.random.key(0), (2, 3, 4))
    return x, model().init(jax.random.key(1), x)


APPLY = jax.jit(model().apply)  # one compile per input tree, not one per eager op
MERGE = jax.jit(nn.lora_merge, static_argnames="alpha")


def random_factors(lora, seed=2):
    """The factor tree with B drawn too, so the update is not zero."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: rng.standard_normal(x.shape, np.float32), lora)


def test_default_targets_are_dense_w_and_attention_projections(base):
    _, params = base
    lora = nn.lora_init(jax.random.key(3), params, rank=3)
    shapes = jax.tree.map(jnp.shape, lora)
    hd = D // HEADS
    assert shapes == {
        "dense_0": {"w": {"a": (4, 3), "b": (3, D)}},
        "attention_1": {
            "wq": {"a": (D, 3), "b": (3, HEADS, hd)},
            "wk": {"a": (D, 3), "b": (3, KV_HEADS, hd)},
            "wv": {"a": (D, 3), "b": (3, KV_HEADS, hd)},
            "wo": {"a": (HEADS, hd, 3), "b": (3, D)},
        },
        "dense_3": {"w": {"a": (D, 3), "b": (3, OUT)}},
    }
    bs = [v["b"] for v in jax.tree.leaves(lora, is_leaf=lambda n: "b" in n)]
    assert all(not jnp.any(b) for b in bs)
    # A is uniform in ±1/sqrt(fan_in), as peft draws it; wo's fan-in is heads * head_dim.
    a = lora["attention_1"]["wo"]["a"]
    assert 0.6 / (HEADS * hd) ** 0.5 < float(jnp.max(jnp.abs(a))) <= 1 / (HEADS * hd) ** 0.5


def test_step_zero_output_is_the_base_models_exactly(base):
    x, params = base
    lora = nn.lora_init(jax.random.key(3), params, rank=2)
    merged = MERGE(params, lora, alpha=16)
    jax.tree.map(np.testing.assert_array_equal, merged, params)
    np.testing.assert_array_equal(APPLY(merged, x), APPLY(params, x))


def test_merge_is_w_plus_scaled_a_b_on_dense_and_every_attention_weight(base):
    _, params = base
    rank, alpha = 4, 8.0
    lora = random_factors(nn.lora_init(jax.random.key(3), params, rank=rank))
    merged = MERGE(params, lora, alpha=alpha)
    params = jax.tree.map(np.asarray, params)
    s = alpha / rank
    attn, fa, ma = params["attention_1"], lora["attention_1"], merged["attention_1"]
    want = {
        "wq": attn["wq"] + s * np.einsum("dr,rhk->dhk", fa["wq"]["a"], fa["wq"]["b"]),
        "wk": attn["wk"] + s * np.einsum("dr,rhk->dhk", fa["wk"]["a"], fa["wk"]["b"]),
        "wv": attn["wv"] + s * np.einsum("dr,rhk->dhk", fa["wv"]["a"], fa["wv"]["b"]),
        "wo": attn["wo"] + s * np.einsum("hkr,ro->hko", fa["wo"]["a"], fa["wo"]["b"]),
    }
    for name, w in want.items():
        np.testing.assert_allclose(ma[name], w, rtol=1e-5, atol=1e-5, err_msg=name)
    d = lora["dense_3"]["w"]
    np.testing.assert_allclose(
        merged["dense_3"]["w"], params["dense_3"]["w"] + s * d["a"] @ d["b"], rtol=1e-5, atol=1e-5
    )
    # alpha left out is alpha = rank: a scale of 1.
    np.testing.assert_allclose(
        MERGE(params, lora)["dense_3"]["w"], params["dense_3"]["w"] + d["a"] @ d["b"],
        rtol=1e-5, atol=1e-5,
    )  # fmt: skip


def test_merge_returns_a_new_tree_and_leaves_other_leaves_as_they_are():
    params = {"dense": {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}, "norm": {"scale": jnp.ones(2)}}
    lora = {"dense": {"w": {"a": jnp.ones((3, 1)), "b": jnp.ones((1, 2))}}}
    merged = nn.lora_merge(params, lora)
    assert merged["dense"]["b"] is params["dense"]["b"]
    assert merged["norm"]["scale"] is params["norm"]["scale"]
    assert not jnp.any(params["dense"]["w"])  # the input tree is not changed
    np.testing.assert_array_equal(merged["dense"]["w"], np.ones((3, 2)))
    twice = nn.lora_merge(params, lora, alpha=np.float32(2.0))  # alpha / rank = 2 / 1
    np.testing.assert_array_equal(twice["dense"]["w"], np.full((3, 2), 2.0))


def test_bfloat16_weights_get_bfloat16_factors_and_merge():
    params = {"w": jnp.ones((4, 3), jnp.bfloat16)}
    lora = nn.lora_init(jax.random.key(0), params, rank=2)
    assert {x.dtype for x in jax.tree.leaves(lora)} == {jnp.dtype(jnp.bfloat16)}
    lora["w"]["b"] = jnp.ones((2, 3), jnp.bfloat16)
    merged = nn.lora_merge(params, lora)["w"]
    assert merged.dtype == jnp.bfloat16
    want = 1 + lora["w"]["a"].astype(jnp.float32).sum(1, keepdims=True)
    np.testing.assert_allclose(merged.astype(jnp.float32), np.broadcast_to(want, (4, 3)), rtol=1e-2)


@pytest.mark.parametrize(
    ("targets", "adapted"),
    [
        ("*.wq", ["attention_1.wq"]),
        (
            ("*attention*.w[kv]", "dense_3.w"),
            [
                "attention_1.wk",
                "attention_1.wv",
                "dense_3.w",
            ],
        ),
        (
            lambda path, leaf: path.startswith("dense") and leaf.ndim == 2,
            ["dense_0.w", "dense_3.w"],
        ),
    ],
    ids=["pattern", "patterns", "predicate"],
)
def test_targets_by_pattern_and_predicate(base, targets, adapted):
    _, params = base
    lora = nn.lora_init(jax.random.key(3), params, rank=2, targets=targets)
    got = sorted({p.rsplit(".", 1)[0] for p, _ in fg.paths.leaves_with_paths(lora)})
    assert got == adapted


def _bad_init_cases(params):
    init = nn.lora_init
    k = jax.random.key(0)
    return {
        "rank 0": (lambda: init(k, params, rank=0), errors.ConfigError, "rank must be a positive"),
        "rank 1.5": (lambda: init(k, params, rank=1.5), errors.ConfigError, "rank"),
        "matches nothing": (
            lambda: init(k, params, rank=2, targets="*.w_q"),
            errors.ConfigError,
            r"no leaf of params matches targets \['\*\.w_q'\]; its paths include: attention_1\.wk, attention_1\.wo",
        ),
        "a bias": (
            lambda: init(k, params, rank=2, targets="dense_0.b"),
            errors.ShapeError,
            r"'dense_0\.b' of shape \(8,\), which is not a weight matrix",
        ),
        "bad targets": (
            lambda: init(k, params, rank=2, targets=3),
            errors.InputTypeError,
            "targets must be",
        ),
        "not a key": (lambda: init(0, params, rank=2), errors.InputTypeError, "lora_init"),
    }


@pytest.mark.parametrize(
    "case", ["rank 0", "rank 1.5", "matches nothing", "a bias", "bad targets", "not a key"]
)
def test_lora_init_refuses_bad_input(base, case):
    call, error, match = _bad_init_cases(base[1])[case]
    with pytest.raises(error, match=match):
        call()


def test_lora_init_refuses_conv_kernels_and_integer_leaves():
    conv_layer = nn.Conv(4, (3, 3))
    conv = {"conv": {"w": jnp.zeros((3, 3, 2, 4))}}
    # Without model= a 4-d `w` may be a stacked Dense or a kernel; with it, it is a kernel.
    with pytest.raises(errors.ShapeError, match=r"'conv\.w' of shape \(3, 3, 2, 4\).*pass model="):
        nn.lora_init(jax.random.key(0), conv, rank=2)
    with pytest.raises(errors.ConfigError, match="default targets"):
        nn.lora_init(jax.random.key(0), conv["conv"], rank=2, model=conv_layer)
    with pytest.raises(errors.ShapeError, match=r"'w' of shape \(3, 3, 2, 4\), which is not a"):
        nn.lora_init(jax.random.key(0), conv["conv"], rank=2, targets="*", model=conv_layer)
    with pytest.raises(errors.DTypeError, match=r"'ids' of dtype int32"):
        nn.lora_init(jax.random.key(0), {"ids": jnp.zeros((2, 2), jnp.int32)}, rank=1, targets="*")


def test_lora_merge_refuses_factors_that_do_not_fit():
    params = {"dense": {"w": jnp.zeros((3, 2))}}
    a, b = jnp.ones((3, 1)), jnp.ones((1, 2))
    cases = [
        (
            {"dense": {"v": {"a": a, "b": b}}},
            errors.ParamsError,
            r"adapts 'dense\.v', which params lacks",
        ),
        ({"dense": {"w": {"a": a}}}, errors.ParamsError, r"lora at 'dense\.w' holds \['a'\]"),
        ({"dense": {"w": {"a": a, "b": b, "c": b}}}, errors.ParamsError, "exactly"),
        (
            {"dense": {"w": {"a": a, "b": jnp.ones((1, 3))}}},
            errors.ShapeError,
            r"weight is \(3, 2\)",
        ),
        ({"dense": {"w": {"a": a, "b": jnp.ones((2, 2))}}}, errors.ShapeError, "rank"),
        ([a, b], errors.ParamsError, "nested dict"),
    ]
    for lora, error, match in cases:
        with pytest.raises(error, match=match):
            nn.lora_merge(params, lora)
    with pytest.raises(errors.ConfigError, match="alpha must be a positive number"):
        nn.lora_merge(params, {"dense": {"w": {"a": a, "b": b}}}, alpha=0)


def test_training_the_factors_leaves_the_base_alone_and_lowers_the_loss(base):
    x, params = base
    y = jax.random.normal(jax.random.key(5), (2, 3, OUT))
    frozen = jax.tree.map(np.array, params)
    lora = nn.lora_init(jax.random.key(3), params, rank=2, targets=("*.wq", "*.wv", "dense_3.w"))

    def loss_fn(lora, batch):
        x, y = batch
        return jnp.mean((model().apply(nn.lora_merge(params, lora, alpha=4), x) - y) ** 2)

    opt = optax.adam(1e-2)
    step = fg.train.make_step(loss_fn, opt)
    state = fg.train.TrainState.create(lora, opt, key=jax.random.key(0))
    base_loss = float(jnp.mean((APPLY(params, x) - y) ** 2))
    losses = []
    for _ in range(10):
        state, metrics = step(state, (x, y))
        losses.append(float(metrics["loss"]))
    assert losses[0] == pytest.approx(base_loss, rel=1e-6)  # step 0 is the base model
    assert losses[-1] < 0.9 * losses[0]
    jax.tree.map(np.testing.assert_array_equal, params, frozen)
    assert jax.tree.structure(state.params) == jax.tree.structure(lora)
    assert jnp.any(state.params["dense_3"]["w"]["b"])


def test_merge_matches_peft_merge_and_unload_on_a_tiny_llama():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    d, heads, kv_heads, rank, alpha = 32, 4, 2, 4, 8
    hd = d // heads
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=d, intermediate_size=64, num_hidden_layers=1, num_attention_heads=heads,
        num_key_value_heads=kv_heads, vocab_size=64,
    )  # fmt: skip
    hf = transformers.LlamaForCausalLM(config)
    attn = hf.model.layers[0].self_attn
    w = {n: getattr(attn, f"{n}_proj").weight.detach().numpy().copy() for n in "qv"}

    wrapped = peft.get_peft_model(
        hf,
        peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=["q_proj", "v_proj"]),
    )
    factors = {}
    with torch.no_grad():
        for n in "qv":
            module = getattr(wrapped.base_model.model.model.layers[0].self_attn, f"{n}_proj")
            module.lora_B["default"].weight.normal_()
            a = module.lora_A["default"].weight.numpy().copy()  # (rank, in)
            b = module.lora_B["default"].weight.numpy().copy()  # (out, rank)
            assert np.abs(a).max() <= 1 / d**0.5  # peft's A: uniform in ±1/sqrt(fan_in), as ours
            factors[n] = (a, b)
    merged_attn = wrapped.merge_and_unload().model.layers[0].self_attn
    peft_merged = {n: getattr(merged_attn, f"{n}_proj").weight.detach().numpy() for n in "qv"}

    # torch Linear weights are (out, in); funcgrad's wq/wv are (d, heads, head_dim).
    def to_fg(weight_t, h):
        return jnp.asarray(weight_t.T.reshape(d, h, hd))

    params = {"attn": {"wq": to_fg(w["q"], heads), "wv": to_fg(w["v"], kv_heads)}}
    lora = {
        "attn": {
            f"w{n}": {"a": jnp.asarray(a.T), "b": jnp.asarray(b.T.reshape(rank, h, hd))}
            for n, (a, b), h in (("q", factors["q"], heads), ("v", factors["v"], kv_heads))
        }
    }
    merged = nn.lora_merge(params, lora, alpha=alpha)
    for n, h in (("q", heads), ("v", kv_heads)):
        want = to_fg(peft_merged[n], h)
        assert not np.allclose(want, params["attn"][f"w{n}"], atol=1e-3)  # the delta is not zero
        np.testing.assert_allclose(merged["attn"][f"w{n}"], want, rtol=0, atol=1e-6)


# -- weights stacked by nn.repeat --------------------------------------------------------------

LAYERS, VOCAB = 3, 16


def stacked_model():
    block = nn.serial(
        nn.residual(nn.MultiHeadAttention(HEADS, num_kv_heads=KV_HEADS, causal=True)),
        nn.residual(nn.serial(nn.Dense(12), nn.relu, nn.Dense(D))),
    )
    return nn.serial(nn.Embedding(VOCAB, D), nn.repeat(block, LAYERS), nn.Dense(VOCAB))


APPLY_STACKED = jax.jit(stacked_model().apply)


@pytest.fixture(scope="module")
def stacked():
    tokens = jax.random.randint(jax.random.key(0), (2, 5), 0, VOCAB)
    return tokens, stacked_model().init(jax.random.key(1), tokens)


def _weights(tree):
    """``{path of a weight: {"a": A, "b": B}}`` of a factor tree."""
    flat = fg.paths.flatten(tree)
    return {p[:-2]: {"a": flat[p], "b": flat[p[:-1] + "b"]} for p in flat if p.endswith(".a")}


def test_model_gives_each_repeated_layer_its_own_factors(stacked):
    tokens, params = stacked
    rank, hd = 2, D // HEADS
    lora = nn.lora_init(jax.random.key(3), params, rank=rank, model=stacked_model())
    shapes = {p: jax.tree.map(jnp.shape, f) for p, f in _weights(lora).items()}
    attn, mlp = "repeat_1.residual_0.attention_0", "repeat_1.residual_1.serial_0"
    assert shapes == {
        "dense_2.w": {"a": (D, rank), "b": (rank, VOCAB)},  # outside the repeat: not stacked
        f"{attn}.wq": {"a": (LAYERS, D, rank), "b": (LAYERS, rank, HEADS, hd)},
        f"{attn}.wk": {"a": (LAYERS, D, rank), "b": (LAYERS, rank, KV_HEADS, hd)},
        f"{attn}.wv": {"a": (LAYERS, D, rank), "b": (LAYERS, rank, KV_HEADS, hd)},
        f"{attn}.wo": {"a": (LAYERS, HEADS, hd, rank), "b": (LAYERS, rank, D)},
        f"{mlp}.dense_0.w": {"a": (LAYERS, D, rank), "b": (LAYERS, rank, 12)},
        f"{mlp}.dense_2.w": {"a": (LAYERS, 12, rank), "b": (LAYERS, rank, D)},
    }
    for path, f in _weights(lora).items():
        assert not jnp.any(f["b"]), path
        if path != "dense_2.w":  # every copy draws its own A, within peft's bound
            a = np.asarray(f["a"])
            assert all(not np.array_equal(a[0], a[i]) for i in range(1, LAYERS)), path
            fan_in = np.prod(a.shape[1:-1])
            assert 0.5 / fan_in**0.5 < np.abs(a).max() <= 1 / fan_in**0.5, path
    # Step 0 is the base model, bit for bit.
    merged = MERGE(params, lora, alpha=4)
    np.testing.assert_array_equal(APPLY_STACKED(merged, tokens), APPLY_STACKED(params, tokens))


def test_stacked_merge_is_each_layers_own_merge(stacked):
    _, params = stacked
    rank, alpha = 2, 6.0
    lora = nn.lora_init(jax.random.key(3), params, rank=rank, model=stacked_model())
    lora = random_factors(lora)
    merged = fg.paths.flatten(MERGE(params, lora, alpha=alpha))
    base = {p: np.asarray(w) for p, w in fg.paths.flatten(params).items()}
    s = alpha / rank
    specs = {"wq": "dr,rhk->dhk", "wk": "dr,rhk->dhk", "wv": "dr,rhk->dhk", "wo": "hkr,ro->hko"}
    for path, f in _weights(lora).items():
        spec = specs.get(path.rsplit(".", 1)[-1], "ir,ro->io")
        if path == "dense_2.w":
            want = base[path] + s * np.einsum(spec, f["a"], f["b"])
        else:
            want = np.stack(
                [base[path][i] + s * np.einsum(spec, f["a"][i], f["b"][i]) for i in range(LAYERS)]
            )
        np.testing.assert_allclose(merged[path], want, rtol=1e-5, atol=1e-5, err_msg=path)


def test_attention_stacks_are_inferred_without_model_but_a_stacked_w_is_ambiguous(stacked):
    _, params = stacked
    qkvo = "*.w[qkvo]"
    inferred = nn.lora_init(jax.random.key(3), params, rank=2, targets=qkvo)
    told = nn.lora_init(jax.random.key(3), params, rank=2, targets=qkvo, model=stacked_model())
    jax.tree.map(np.testing.assert_array_equal, inferred, told)
    wo = inferred["repeat_1"]["residual_0"]["attention_0"]["wo"]
    assert wo["a"].shape == (LAYERS, HEADS, D // HEADS, 2)
    ambiguous = r"'repeat_1\.residual_1\.serial_0\.dense_0\.w' of shape \(3, 8, 12\).*pass model="
    with pytest.raises(errors.ShapeError, match=ambiguous):
        nn.lora_init(jax.random.key(3), params, rank=2)
    with pytest.raises(errors.ShapeError, match=ambiguous):
        nn.lora_init(jax.random.key(3), params, rank=2, targets="*dense_0.w")


def test_nested_repeats_stack_two_axes_through_wrappers():
    model = nn.repeat(nn.remat(nn.repeat(nn.serial(nn.Dense(4), nn.tanh), 2)), 3)
    rng = np.random.default_rng(0)
    params = {
        "dense_0": {"w": rng.standard_normal((3, 2, 4, 4), np.float32), "b": np.zeros((3, 2, 4))}
    }
    spec = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4)))  # no compile
    assert jax.tree.map(jnp.shape, spec) == jax.tree.map(np.shape, params)
    lora = random_factors(nn.lora_init(jax.random.key(1), params, rank=1, model=model))
    f = lora["dense_0"]["w"]
    assert (f["a"].shape, f["b"].shape) == ((3, 2, 4, 1), (3, 2, 1, 4))
    merged = nn.lora_merge(params, lora)["dense_0"]["w"]
    want = np.asarray(params["dense_0"]["w"]) + np.einsum("lcir,lcro->lcio", f["a"], f["b"])
    np.testing.assert_allclose(merged, want, rtol=1e-5, atol=1e-5)


def test_stacked_factors_that_do_not_fit_and_params_of_another_model(stacked):
    _, params = stacked
    with pytest.raises(
        errors.ParamsError, match=r"stacks \(3,\) copies at 'dense_2\.b'.*params do not"
    ):
        nn.lora_init(jax.random.key(0), params, rank=2, model=nn.repeat(stacked_model(), 3))

    class Pair(nn.Layer):  # children, but no keys lora_init knows
        def children(self):
            return (nn.repeat(nn.Dense(4), 2), nn.Dense(4))

    with pytest.raises(errors.ConfigError, match=r"Pair at \(top\), with several children"):
        nn.lora_init(jax.random.key(0), {"w": jnp.zeros((4, 4))}, rank=1, model=Pair())
    with pytest.raises(errors.InputTypeError, match="model must be the funcgrad Layer"):
        nn.lora_init(jax.random.key(0), params, rank=2, model="llama")
    w = {"blocks": {"w": jnp.zeros((3, 4, 5))}}
    a, b = jnp.ones((3, 4, 2)), jnp.ones((3, 2, 5))
    np.testing.assert_array_equal(
        nn.lora_merge(w, {"blocks": {"w": {"a": a, "b": b}}})["blocks"]["w"], np.full((3, 4, 5), 2)
    )
    for bad_a, bad_b in [(jnp.ones((2, 4, 2)), b), (a, jnp.ones((3, 3, 5))), (a[0], b)]:
        shapes = rf"weight is \(3, 4, 5\) but A is {re.escape(str(bad_a.shape))} and B {re.escape(str(bad_b.shape))}"
        with pytest.raises(errors.ShapeError, match=rf"at 'blocks\.w' the {shapes}"):
            nn.lora_merge(w, {"blocks": {"w": {"a": bad_a, "b": bad_b}}})
