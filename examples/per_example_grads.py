"""Per-example gradient norms, and one DP-SGD step (clip each example's gradient, add noise, average).

The clipping and noise come from optax's differentially_private_aggregate; funcgrad supplies the
per-example gradients (vmap of grad over the batch axis).
"""

import jax
import jax.numpy as jnp
import optax

import funcgrad as fg
from funcgrad import losses, nn

model = nn.serial(nn.Dense(32), nn.relu, nn.Dense(3))
x = jax.random.normal(jax.random.key(0), (8, 5))
y = jnp.arange(8) % 3
x = x.at[0].multiply(50.0)  # one outlier whose gradient dominates the batch
params = model.init(jax.random.key(1), x)


def loss_fn(params, batch):
    inputs, labels = batch
    return losses.softmax_cross_entropy(model.apply(params, inputs), labels)


grads = fg.train.per_example_grads(loss_fn)(params, (x, y))
norms = fg.train.global_norms(grads)
print("per-example gradient norms:", [round(float(v), 3) for v in norms])

clip, noise = 1.0, 0.5
optimizer = optax.chain(
    optax.contrib.differentially_private_aggregate(clip, noise, key=jax.random.key(2)),
    optax.sgd(0.1),
)
updates, _ = optimizer.update(grads, optimizer.init(params), params)
new_params = optax.apply_updates(params, updates)
clipped = fg.train.global_norms(fg.train.per_example_grads(loss_fn, clip_norm=clip)(params, (x, y)))
print("after clipping to", clip, ":", [round(float(v), 3) for v in clipped])
print(
    f"DP-SGD step: loss {float(loss_fn(params, (x, y))):.4f} -> {float(loss_fn(new_params, (x, y))):.4f}"
)
