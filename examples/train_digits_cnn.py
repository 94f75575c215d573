"""Train a small CNN on scikit-learn's 8×8 digits (shipped with scikit-learn; nothing downloads).

Run: .venv/bin/python examples/train_digits_cnn.py
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import funcgrad as fg
from funcgrad import losses, nn

digits = load_digits()
x = (digits.images / 16.0).astype(np.float32)[..., None]  # (1797, 8, 8, 1): channels last
y = digits.target.astype(np.int32)
x_train, x_test, y_train, y_test = train_test_split(
    x, y, test_size=0.25, random_state=0, stratify=y
)

model = nn.serial(
    nn.Conv(32, (3, 3)), nn.relu,
    nn.Conv(32, (3, 3)), nn.relu, nn.max_pool((2, 2)),  # 4×4
    nn.Conv(64, (3, 3)), nn.relu, nn.max_pool((2, 2)),  # 2×2
    nn.Flatten(), nn.Dropout(0.2), nn.Dense(128), nn.relu, nn.Dense(10),
)  # fmt: skip
params = model.init(jax.random.key(0), x_train[:1])


def loss_fn(params, batch, *, key):
    images, labels = batch
    return losses.softmax_cross_entropy(model.apply(params, images, key=key), labels)


def accuracy(params, batch):
    images, labels = batch
    return jnp.mean(jnp.argmax(model.apply(params, images), axis=-1) == labels)


start = time.perf_counter()
result = fg.train.fit(
    loss_fn, optax.adam(2e-3), params, (x_train, y_train), key=jax.random.key(1),
    batch_size=32, epochs=25, with_key=True,
    hooks=[*fg.train.default_hooks(), fg.train.Evaluate((x_test, y_test), {"accuracy": accuracy})],
)  # fmt: skip
print(f"trained in {time.perf_counter() - start:.1f} s")
print(f"test accuracy: {result.history['accuracy'][-1]:.4f}")
