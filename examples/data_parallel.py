"""Data-parallel and FSDP training on every device there is; on a CPU, 8 simulated devices.

The same steps as on one device: the script trains both ways and prints the losses side by side.
Run: python examples/data_parallel.py   (on a GPU or TPU host it uses the real devices;
JAX_PLATFORMS=cpu python examples/data_parallel.py simulates 8 CPU devices there too)
"""

import os
import time

# Simulated CPU devices must be asked for before JAX starts; GPUs and TPUs ignore this flag.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax
import numpy as np
import optax
from sklearn.datasets import load_digits

from funcgrad import losses, nn, parallel, train

digits = load_digits()
x = (digits.data / 16.0).astype(np.float32)
y = digits.target.astype(np.int32)
model = nn.serial(nn.Dense(256), nn.relu, nn.Dense(256), nn.relu, nn.Dense(10))
params = model.init(jax.random.key(0), x[:1])


def loss_fn(params, batch):
    images, labels = batch
    return losses.softmax_cross_entropy(model.apply(params, images), labels)


devices = jax.devices()
print(f"{len(devices)} {devices[0].platform} devices")
layouts = {
    "one device": None,
    "data parallel": parallel.mesh(data=-1),  # parameters replicated, batch split
    "fsdp": parallel.plan(parallel.mesh(data=-1), "fsdp"),  # parameters and Adam state split too
}
optimizer = optax.adam(1e-3)
batch = 128 if 128 % len(devices) == 0 else 16 * len(devices)  # the batch divides over devices
for name, mesh in layouts.items():
    step = train.make_step(loss_fn, optimizer, mesh=mesh)
    state = train.TrainState.create(params, optimizer, key=jax.random.key(0))
    losses_seen, start = [], None
    for i, b in enumerate(train.batches(jax.random.key(1), (x, y), batch)):
        if i == 2:
            jax.block_until_ready(state)
            start = time.perf_counter()  # after compiling
        state, metrics = step(state, b)
        losses_seen.append(metrics["loss"])
    jax.block_until_ready(state)
    per_step = (time.perf_counter() - start) / (len(losses_seen) - 2) * 1e3
    w = state.params["dense_2"]["w"]
    print(f"{name:>13}: losses {[round(float(v), 5) for v in losses_seen[:3]]} ... "
          f"{float(losses_seen[-1]):.5f}; {per_step:.2f} ms/step; dense_2/w on "
          f"{len(w.sharding.device_set)} device(s), {w.addressable_shards[0].data.shape} each")  # fmt: skip
print("(simulated CPU devices share this machine's cores: their step times say nothing of speed)")
