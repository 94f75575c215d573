"""Train the digits MLP, export it, and run the exported folder in a separate process without funcgrad.

Run: python examples/export_digits.py [FOLDER]   (default: a temporary folder; see docs/interop.md)
"""

import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import funcgrad as fg
from funcgrad import losses, nn

digits = load_digits()
x = (digits.data / 16.0).astype(np.float32)
y = digits.target.astype(np.int32)
x_train, x_test, y_train, y_test = train_test_split(
    x, y, test_size=0.25, random_state=0, stratify=y
)

model = nn.serial(nn.Dense(128), nn.relu, nn.Dropout(0.1), nn.Dense(128), nn.relu, nn.Dense(10))
params = model.init(jax.random.key(0), x_train[:1])


def loss_fn(params, batch, *, key):
    images, labels = batch
    return losses.softmax_cross_entropy(model.apply(params, images, key=key), labels)


result = fg.train.fit(
    loss_fn, optax.adam(1e-3), params, (x_train, y_train), key=jax.random.key(1),
    batch_size=32, epochs=10, with_key=True, hooks=[],
)  # fmt: skip
logits = jax.jit(model.apply)(result.params, x_test)
print(f"test accuracy here: {float(jnp.mean(jnp.argmax(logits, -1) == y_test)):.4f}")

# The export: the forward pass (StableHLO, any batch size) and the weights (safetensors).
folder = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()) / "digits_mlp"
fg.export.save(folder, model, result.params, x_train[:1])
print(f"exported to {folder}: {sorted(p.name for p in folder.iterdir())}")

# A separate process that has neither this file nor funcgrad: run_exported.py uses jax and safetensors.
np.save(folder.parent / "x_test.npy", x_test)
np.save(folder.parent / "y_test.npy", y_test)
runner = Path(__file__).with_name("run_exported.py")
proc = subprocess.run(
    [sys.executable, str(runner), str(folder), str(folder.parent / "x_test.npy"),
     str(folder.parent / "y_test.npy"), str(folder.parent / "logits.npy")],
    capture_output=True, text=True, check=True,
)  # fmt: skip
print(proc.stdout, end="")
same = np.array_equal(np.load(folder.parent / "logits.npy"), np.asarray(logits))
print(f"exported logits equal jax.jit(model.apply) bit for bit: {same}")
