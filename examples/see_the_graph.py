"""See the backward pass: seed 2's weight fans out into the loss and the penalty; seed 1's Torch chain.

Writes forward and backward graphs as SVG (with Graphviz or graphviz-pure installed; else DOT text) and prints them as text.
Usage: python examples/see_the_graph.py [OUTPUT_DIR]   (default docs/images)
"""

import sys
from pathlib import Path

import jax
import numpy as np

# As a script, float64 before the seeds make their arrays; imported, the caller's mode.
if __name__ == "__main__":
    jax.config.update("jax_enable_x64", True)

import seed1_torch_chain as seed1
import seed2_logistic_least_squares as seed2

from funcgrad import inspect
from funcgrad.inspect.graph import dot_program

# Seed 2 with the seed's numbers: w = 0.7, b = −0.3, x = 1.5, t = 1, λ = 0.1.
seed2_loss = seed2.loss
# NumPy constants, as in seed 1: float64 as a script, the caller's mode when imported.
seed2_params = {"dense_0": {"w": np.array([[0.7]]), "b": np.array([-0.3])}}
SEED2_ARGS = (seed2_params, 1.5, 1.0, 0.1)

# Seed 1: Linear → Sigmoid → Mul → MSECriterion, cost as a function of the parameters.
seed1_cost = seed1.cost
SEED1_ARGS = (seed1.params,)


def draw(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    suffix = ".svg" if dot_program() else ".dot"
    pictures = {
        "seed2_forward": inspect.graph(seed2_loss, *SEED2_ARGS),
        "seed2_backward": inspect.graph(seed2_loss, *SEED2_ARGS, backward=True),
        "seed1_backward": inspect.graph(seed1_cost, *SEED1_ARGS, backward=True),
    }
    for name, g in pictures.items():
        print(g.to_text(), end="\n\n")
        print(f"wrote {g.save(out / (name + suffix))}\n")
    w = "in1"  # params.dense_0.w, the second input (the tree's keys are sorted)
    forward = pictures["seed2_forward"]
    print(f"seed 2: {forward.node(w).op} is used {forward.fan_out()[w]} times")


if __name__ == "__main__":
    draw(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent.parent / "docs/images")
