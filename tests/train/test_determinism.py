"""The same seed gives bitwise-identical parameters after 100 training steps, in two separate processes."""

import subprocess
import sys

TRAIN = """
import hashlib, jax, jax.numpy as jnp, numpy as np, optax
import funcgrad as fg
from funcgrad import losses, nn
model = nn.serial(nn.Dense(32), nn.Dropout(0.2), nn.relu, nn.Dense(4))
rng = np.random.default_rng(0)
x = rng.normal(size=(256, 8)).astype(np.float32)
y = (x[:, :4].argmax(1)).astype(np.int32)
def loss_fn(p, b, *, key):
    return losses.softmax_cross_entropy(model.apply(p, b[0], key=key), b[1])
params = model.init(jax.random.key(0), x[:1])
result = fg.train.fit(loss_fn, optax.adam(1e-2), params, (x, y), key=jax.random.key(1),
                      batch_size=32, steps=100, with_key=True, hooks=[])
digest = hashlib.sha256()
for leaf in jax.tree.leaves(result.params):
    digest.update(np.asarray(leaf).tobytes())
print(digest.hexdigest())
"""


def test_same_seed_same_bits_in_separate_processes():
    digests = [
        subprocess.run(
            [sys.executable, "-c", TRAIN], capture_output=True, text=True, timeout=300, check=True
        ).stdout.strip()
        for _ in range(2)
    ]
    assert len(digests[0]) == 64
    assert digests[0] == digests[1]
