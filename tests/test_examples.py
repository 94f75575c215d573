"""Every example script runs as a newcomer would run it, and prints what its docstring promises."""

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import backends
import pytest

from funcgrad.inspect.graph import dot_program

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


# Most examples spend their time compiling (small programs, many of them op by op): XLA's cheapest
# settings compile them in about a quarter less CPU time, and what they compute is the same (the
# programs run slower). The digits trainers run a thousand steps or so and are faster as they are.


def environment(extra: dict[str, str] | None = None, cheap: bool = True) -> dict[str, str]:
    return {**os.environ, **(backends.CHEAP_COMPILES_ENV if cheap else {}), **(extra or {})}


def run(name: str, *args: str, env: dict[str, str] | None = None, cheap: bool = True) -> str:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=environment(env, cheap),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_every_example_is_listed_here():
    listed = set(re.findall(r'"(\w+\.py)"', Path(__file__).read_text()))
    assert {p.name for p in EXAMPLES.glob("*.py")} <= listed


@pytest.mark.parametrize(
    "name, threshold", [("train_digits_mlp.py", 0.97), ("train_digits_cnn.py", 0.98)]
)
def test_digits_examples_reach_their_accuracy(name, threshold):
    out = run(name, cheap=False)
    accuracy = float(re.search(r"test accuracy: ([\d.]+)", out).group(1))
    assert accuracy >= threshold
    assert float(re.search(r"trained in ([\d.]+) s", out).group(1)) < 60


def test_seed1_prints_the_seed_numbers():
    out = run("seed1_torch_chain.py")
    for number in (
        "0.8807970779778823",
        "17.615941559557648",
        "58.00256583859738",
        "13.416198143417384",
    ):
        assert number in out


def test_custom_primitive_prints_value_and_derivative():
    out = run("custom_primitive.py")
    assert "4.511047744848594" in out and "0.9890130573694068" in out
    assert "naive inf" in out


@pytest.mark.parametrize(
    "name, expected",
    [
        ("seed2_logistic_least_squares.py", "by hand"),
        ("seed3_multivariate_chain_rule.py", "2.49843231939396"),
        ("softmax_regression.py", "training accuracy"),
        ("seed6_traditional_network.py", "loss before the step"),
        ("seed7_caffe_nodes.py", "agree with finite differences"),
        ("per_example_grads.py", "DP-SGD step"),
        ("custom_layer.py", "gradients agree with finite differences, forward and reverse mode"),
    ],
)
def test_example_runs(name, expected):
    assert expected in run(name)


def test_char_lstm_learns_and_continues_a_prompt():
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "char_lstm.py"), "--hidden", "64", "--steps", "150"],
        capture_output=True, text=True, timeout=600, check=False, env=environment(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    before, after = map(float, re.search(r"([\d.]+) before, ([\d.]+) after", proc.stdout).groups())
    assert after < 0.6 * before  # from about log(vocabulary) to well below it
    greedy = proc.stdout.split("--- greedy ---\n")[1].split("\n--- sampled")[0]
    assert greedy.startswith("def ") and len(greedy) == len("def ") + 200  # may hold newlines


TINY = ["--steps", "40", "--width", "32", "--layers", "1", "--heads", "2", "--context", "32"]


@pytest.fixture(scope="module")
def tiny_transformer(tmp_path_factory):
    """char_transformer.py trained small once, saved in a temporary folder: (path, stdout)."""
    path = tmp_path_factory.mktemp("char_transformer") / "tiny.safetensors"
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "char_transformer.py"), *TINY, "--save", str(path)],
        capture_output=True, text=True, timeout=600, check=False, env=environment(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return path, proc.stdout


def test_char_grain_trains_from_files_on_disk_and_resumes_bitwise(tmp_path):
    out = run(
        "char_grain.py", "--dir", str(tmp_path), "--demo-resume", "--steps", "12", "--batch", "8",
        "--width", "32", "--layers", "1", "--heads", "2", "--context", "32",
    )  # fmt: skip
    assert "stopped: interrupted at step 6" in out
    final, first = map(
        float, re.search(r"after 12 steps: ([\d.]+) \(first logged ([\d.]+)", out).groups()
    )
    assert final < first - 0.5  # from ln(256) = 5.5 down
    assert "resumed run equals the unbroken run bitwise: True" in out
    assert (tmp_path / "checkpoints" / "data_000000012.json").is_file()


def samples_of(stdout):
    """The sampled texts (which may hold newlines), in order."""
    parts = re.split(r"--- sample \d ---\n", stdout)[1:]
    return [p.removesuffix("\n") for p in parts]


def test_char_transformer_learns_and_samples_with_the_cache(tiny_transformer):
    _, out = tiny_transformer
    before = float(re.search(r"loss before training: ([\d.]+)", out).group(1))
    after = float(re.search(r"loss after 40 steps: ([\d.]+)", out).group(1))
    assert after < before - 1.0  # from about ln(88) = 4.5 down: it learned character frequencies
    samples = samples_of(out)
    assert [s[:10] for s in samples] == ["def parse_"] * 3
    assert all(len(s) == 10 + 200 for s in samples)  # 200 characters by default, 32 in view


def test_char_transformer_loads_what_it_saved_and_skips_training(tiny_transformer):
    path, _ = tiny_transformer
    assert path.with_suffix(".json").is_file()
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "char_transformer.py"), "--load", str(path),
         "--length", "50", "--prompt", "class Help"],  # as long as the first test's prompt:
        # the same shapes, so its sampling programs come from the persistent compilation cache
        capture_output=True, text=True, timeout=600, check=False, env=environment(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"loaded {path}: width 32, 1 layers, context 32, trained 40 steps" in proc.stdout
    assert "loss before training" not in proc.stdout
    samples = samples_of(proc.stdout)
    assert len(samples) == 3 and all(s.startswith("class Help") and len(s) == 60 for s in samples)


@pytest.fixture
def cheap_compiles():
    """`backends.cheap_compiles` for one test that runs in pytest's process."""
    with backends.cheap_compiles():
        yield


def test_char_transformer_never_samples_beyond_its_context(monkeypatch, cheap_compiles):
    import char_transformer
    import jax
    import jax.numpy as jnp

    from funcgrad import nn

    in_view = []
    generate = nn.generate

    def spy(model, params, prompt, n, **kwargs):
        in_view.append(prompt.shape[1] + n)
        return generate(model, params, prompt, n, **kwargs)

    monkeypatch.setattr(nn, "generate", spy)
    model = char_transformer.transformer(11, 16, 1, 2)
    prompt = jnp.array([[1, 2, 3, 4, 5]], jnp.int32)
    params = model.init(jax.random.key(0), prompt)
    out = char_transformer.sample(
        model, params, prompt, 40, context=16, key=jax.random.key(1), features=16
    )
    assert out.shape == (1, 45) and out[0, :5].tolist() == [1, 2, 3, 4, 5]
    assert max(in_view) == 16 and len(in_view) > 1  # the window slid


def test_custom_layers_guide_shows_only_code_the_example_runs():
    doc = (EXAMPLES.parent / "docs" / "custom_layers.md").read_text()
    script = [line.strip() for line in (EXAMPLES / "custom_layer.py").read_text().splitlines()]
    script = [line for line in script if line]
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    assert len(blocks) >= 5
    for block in blocks:
        lines = [line.strip() for line in block.splitlines() if line.strip()]
        starts = [i for i, line in enumerate(script) if line == lines[0]]
        assert any(script[i : i + len(lines)] == lines for i in starts), block


def test_see_the_graph_draws_the_seed_graphs(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "see_the_graph.py"), str(tmp_path)],
        capture_output=True, text=True, timeout=600, check=False, env=environment(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "seed 2: params.dense_0.w is used 2 times" in proc.stdout
    suffix = ".svg" if dot_program() else ".dot"
    names = ["seed1_backward", "seed2_backward", "seed2_forward"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [n + suffix for n in names]
    # The pictures committed under docs/images show what the example draws today.
    if suffix == ".svg":
        committed = EXAMPLES.parent / "docs" / "images"
        for n in names:
            assert svg_texts(committed / (n + ".svg")) == svg_texts(tmp_path / (n + ".svg")), n


def svg_texts(path):
    root = ET.parse(path).getroot()
    return sorted(t.text for t in root.iter("{http://www.w3.org/2000/svg}text") if t.text)


def test_data_parallel_trains_alike_on_one_device_and_on_eight():
    # 8 simulated CPU devices on every machine (a GPU machine has 1 real device, not 8).
    out = run("data_parallel.py", env={"JAX_PLATFORMS": "cpu"})
    assert out.startswith("8 cpu devices")
    lines = [line for line in out.splitlines() if "losses" in line]
    assert [line.split(":")[0].strip() for line in lines] == ["one device", "data parallel", "fsdp"]
    finals = {line.split("...")[1].split(";")[0].strip() for line in lines}
    firsts = {line.split("losses")[1].split("...")[0].strip() for line in lines}
    assert len(finals) == 1 and len(firsts) == 1, out  # the same losses, to 5 decimals
    assert "(32, 256) each" in lines[2]  # fsdp: each of 8 devices holds 1/8 of the weight


# "multi_host.py" is run by tests/parallel/test_multi_host.py (two processes on loopback).


def test_export_digits_runs_the_exported_model_in_a_process_without_funcgrad(tmp_path):
    # "run_exported.py" is the separate script that export_digits.py runs in a subprocess.
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "export_digits.py"), str(tmp_path)],
        capture_output=True, text=True, timeout=600, check=False, env=environment(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    here = float(re.search(r"test accuracy here: ([\d.]+)", out).group(1))
    there = float(re.search(r"test accuracy in a fresh process: ([\d.]+)", out).group(1))
    assert here == there and here >= 0.95
    assert "funcgrad imported: False" in out
    assert "bit for bit: True" in out
    assert (tmp_path / "digits_mlp" / "forward.jaxexport").is_file()


def test_lora_llama_learns_and_transformers_reads_the_result_back():
    out = run("lora_llama.py", "--steps", "60")
    before, after = map(float, re.search(r"before ([\d.]+), after ([\d.]+)", out).groups())
    assert after < before - 1.0  # from ln 256 = 5.5 nats per byte towards the text's statistics
    assert "base weights unchanged: True" in out
    assert float(re.search(r"max \|logit difference\| ([\d.e+-]+)", out).group(1)) < 1e-4
