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
from tqdm import tqdm

import funcgrad as fg
from funcgrad import losses, nn

# 1797 8×8 images of the digits 0–9; a fixed split so every run sees the same test set.
digits = load_digits()
x = (digits.data / 16.0).astype(np.float32)
y = digits.target.astype(np.int32)
x_train, x_test, y_train, y_test = train_test_split(
    x, y, test_size=0.25, random_state=0, stratify=y
)

model = nn.serial(nn.Dense(128), nn.relu, nn.Dense(128), nn.relu, nn.Dense(10))
key = jax.random.key(0)
params = model.init(key, x_train[:1])


def loss_fn(params, batch):
    images, labels = batch
    return losses.softmax_cross_entropy(model.apply(params, images), labels)


optimizer = optax.adam(1e-3)
opt_state = optimizer.init(params)
step = fg.train.make_step(loss_fn, optimizer)

epochs, batch_size = 40, 32
start = time.perf_counter()
with tqdm(total=epochs * (len(x_train) // batch_size), desc="training", unit="step") as bar:
    for epoch in range(epochs):
        epoch_key = jax.random.fold_in(key, epoch)
        for batch in fg.train.batches(epoch_key, (x_train, y_train), batch_size):
            params, opt_state, metrics = step(params, opt_state, batch)
            bar.update()
        bar.set_postfix(epoch=epoch + 1, loss=f"{float(metrics['loss']):.4f}")

predictions = jnp.argmax(jax.jit(model.apply)(params, x_test), axis=-1)
accuracy = float(jnp.mean(predictions == y_test))
print(f"trained in {time.perf_counter() - start:.1f} s")
print(f"test accuracy: {accuracy:.4f}")
