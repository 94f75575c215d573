"""``python -m funcgrad``: graph, summary and cost from the command line, and its errors."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from funcgrad.inspect.cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SEEDS = f"{EXAMPLES / 'see_the_graph.py'}"


@pytest.mark.x64
def test_graph_prints_text_and_writes_files(capsys, tmp_path):
    assert main(["graph", f"{SEEDS}:seed2_loss", "--args", "SEED2_ARGS"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("graph loss:") and "params.dense_0.w  f64[1,1]  fan-out ×2" in out
    assert main(["graph", f"{SEEDS}:seed2_loss", "--args", "SEED2_ARGS", "--backward",
                 "--out", str(tmp_path / "g.dot")]) == 0  # fmt: skip
    assert "wrote" in capsys.readouterr().out
    assert "subgraph cluster_backward" in (tmp_path / "g.dot").read_text()


def test_graph_of_a_function_of_shapes(capsys):
    assert main(["graph", "jax.numpy:tanh", "--arg", "f32[4,3]", "--backward"]) == 2
    assert "must return one float scalar" in capsys.readouterr().err
    assert main(["graph", "jax.numpy:dot", "--arg", "f32[3]", "--arg", "f32[3]"]) == 0
    out = capsys.readouterr().out
    assert "dot_general" in out and "input  a  f32[3]" in out


def test_summary_and_cost(capsys):
    assert (
        main(["summary", f"{EXAMPLES / 'seed1_torch_chain.py'}:chain", "--input", "f64[1,2]"]) == 0
    )
    out = capsys.readouterr().out
    assert "dense_0" in out and "sigmoid_1" in out and "scale_2" in out
    assert out.strip().splitlines()[-1].startswith("total: 4 parameters")
    assert main(["cost", "jax.numpy:matmul", "--arg", "f32[8,16]", "--arg", "f32[16,4]"]) == 0
    out = capsys.readouterr().out
    assert "flops" in out and f"({2 * 8 * 16 * 4:,})" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["graph", "nocolon"], "expected MODULE:NAME"),
        (
            ["graph", "no_such_module_xyz:f", "--arg", "f32[2]"],
            "No module named 'no_such_module_xyz'",
        ),
        (["graph", "jax.numpy:no_such_fn", "--arg", "f32[2]"], "has no attribute 'no_such_fn'"),
        (["graph", "jax.numpy:sin"], "needs example arguments"),
        (["graph", "jax.numpy:sin", "--arg", "q7[2]"], "unknown dtype 'q7'"),
        (["graph", "jax.numpy:sin", "--arg", "f32(2)"], "expected an array shape like f32[4,3]"),
        (["graph", "jax.numpy:sin", "--args", "undefined_name"], "name 'undefined_name' is not"),
        (
            ["summary", "jax.numpy:sin", "--input", "f32[2]"],
            "is a PjitFunction, not a funcgrad Layer",
        ),
        (["graph", "missing.py:f", "--arg", "f32[2]"], "no such file: missing.py"),
    ],
)
def test_bad_input_exits_2_with_a_message(capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_module_entry_point_runs():
    done = subprocess.run(
        [sys.executable, "-m", "funcgrad", "graph", "jax.numpy:sin", "--arg", "f32[2]"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "sin  f32[2]  ← in0" in done.stdout


def test_module_help_lists_every_command():
    done = subprocess.run(
        [sys.executable, "-m", "funcgrad", "--help"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "{graph,cost,summary,export}" in done.stdout
    assert re.search(r"\n\s+export\s+save the model", done.stdout), done.stdout


def test_a_command_run_elsewhere_points_there(capsys):
    assert main(["export"], elsewhere={"export": "save a model"}) == 2
    assert "python -m funcgrad export --help" in capsys.readouterr().err
