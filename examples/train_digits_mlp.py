"""Train an MLP on scikit-learn's handwritten digits (shipped with scikit-learn; nothing downloads).

Run: python examples/train_digits_mlp.py   (the README's `scripts/demo` does this in a fresh venv)
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

# 1797 8×8 images of the digits 0–9; a fixed split so every run sees the same test set.
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


def accuracy(params, batch):
    images, labels = batch
    return jnp.mean(jnp.argmax(model.apply(params, images), axis=-1) == labels)


start = time.perf_counter()
result = fg.train.fit(
    loss_fn,
    optax.adam(1e-3),
    params,
    (x_train, y_train),
    key=jax.random.key(1),
    batch_size=32,
    epochs=40,
    with_key=True,  # loss_fn takes key= (dropout)
    hooks=[
        *fg.train.default_hooks(),  # history and progress bar
        fg.train.Evaluate((x_test, y_test), {"accuracy": accuracy}, every=420),
    ],
)
print(f"trained in {time.perf_counter() - start:.1f} s")
print(f"test accuracy: {result.history['accuracy'][-1]:.4f}")
