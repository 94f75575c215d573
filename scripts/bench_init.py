"""First ``init`` of the digits CNN in a fresh process: funcgrad against Flax Linen, same run.

Each sample starts a new Python process (imports not timed) that builds the network, times its
first ``init`` and a second one with another key. Libraries alternate, order reversed on alternate
rounds; the table gives medians. "eager (before)" is funcgrad with each initializer run on its own, as before
one compiled program drew them all. The network is examples/train_digits_cnn.py's: three 3×3
convolutions and two dense layers on 8×8×1 images. Flax comes with the ``bench`` extra.

Usage: .venv/bin/python scripts/bench_init.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

FUNCGRAD = """
import jax, jax.numpy as jnp
from funcgrad import nn
model = nn.serial(
    nn.Conv(32, (3, 3)), nn.relu,
    nn.Conv(32, (3, 3)), nn.relu, nn.max_pool((2, 2)),
    nn.Conv(64, (3, 3)), nn.relu, nn.max_pool((2, 2)),
    nn.Flatten(), nn.Dropout(0.2), nn.Dense(128), nn.relu, nn.Dense(10),
)
x = jnp.zeros((1, 8, 8, 1), jnp.float32)
init = lambda key: model.init(key, x)
"""

FLAX = """
import jax, jax.numpy as jnp
import flax.linen as ln
class CNN(ln.Module):
    @ln.compact
    def __call__(self, v, train=False):
        v = ln.relu(ln.Conv(32, (3, 3))(v))
        v = ln.max_pool(ln.relu(ln.Conv(32, (3, 3))(v)), (2, 2), (2, 2))
        v = ln.max_pool(ln.relu(ln.Conv(64, (3, 3))(v)), (2, 2), (2, 2))
        v = v.reshape(v.shape[0], -1)
        v = ln.Dropout(0.2, deterministic=not train)(v)
        return ln.Dense(10)(ln.relu(ln.Dense(128)(v)))
model = CNN()
x = jnp.zeros((1, 8, 8, 1), jnp.float32)
init = lambda key: model.init(key, x)
"""

TIMER = """
import json, time
t = time.perf_counter(); jax.block_until_ready(init(jax.random.key(0))); first = time.perf_counter() - t
t = time.perf_counter(); jax.block_until_ready(init(jax.random.key(1))); second = time.perf_counter() - t
print(json.dumps({"first": first, "second": second}))
"""

# The same network initialised eagerly, parameter by parameter, as funcgrad did before.
EAGER = (
    FUNCGRAD
    + """
from funcgrad.nn import layer
layer._compiled_init = layer._init_tree
"""
)

VARIANTS = {"funcgrad": FUNCGRAD, "funcgrad eager (before)": EAGER, "Flax Linen": FLAX}


def sample(source: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", source + TIMER], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    times: dict[str, list[dict[str, float]]] = {k: [] for k in VARIANTS}
    for r in range(args.rounds):
        for name in list(VARIANTS) if r % 2 == 0 else reversed(list(VARIANTS)):
            times[name].append(sample(VARIANTS[name]))
    print(f"{args.rounds} fresh processes each, interleaved, medians")
    print("| library | first init (s) | second init (s) | first / Flax's |")
    print("| --- | ---: | ---: | ---: |")
    flax_first = statistics.median(s["first"] for s in times["Flax Linen"])
    for name, samples in times.items():
        first = statistics.median(s["first"] for s in samples)
        second = statistics.median(s["second"] for s in samples)
        print(f"| {name} | {first:.3f} | {second:.3f} | {first / flax_first:.2f} |")


if __name__ == "__main__":
    main()
