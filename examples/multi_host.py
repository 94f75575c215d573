"""Train on several processes at once, as on several hosts: each process feeds its rows of every batch.

Two processes on this machine, each with 2 simulated CPU devices (4 devices in all; on a machine
with a GPU, set JAX_PLATFORMS=cpu, or both processes take the same GPU):

    python examples/multi_host.py --coordinator 127.0.0.1:29500 --num-processes 2 --process-id 0 &
    python examples/multi_host.py --coordinator 127.0.0.1:29500 --num-processes 2 --process-id 1

On a cluster, start one process per host with the same coordinator (host 0's address) and each
its own --process-id, or set FUNCGRAD_COORDINATOR, FUNCGRAD_NUM_PROCESSES and FUNCGRAD_PROCESS_ID;
under SLURM or on a TPU pod, give nothing and JAX finds the cluster itself.
"""

import argparse
import os

import numpy as np


def build():
    """The model, its loss, initial parameters and the digits data: the same on every process."""
    import jax
    from sklearn.datasets import load_digits

    from funcgrad import losses, nn

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    model = nn.serial(nn.Dense(128), nn.relu, nn.Dense(128), nn.relu, nn.Dense(10))
    params = model.init(jax.random.key(0), x[:1])

    def loss_fn(params, batch):
        images, labels = batch
        return losses.softmax_cross_entropy(model.apply(params, images), labels)

    def accuracy(params, batch):
        images, labels = batch
        return (model.apply(params, images).argmax(-1) == labels).mean()

    return loss_fn, accuracy, params, (x, y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coordinator", help="host:port of process 0")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)
    parser.add_argument(
        "--local-devices", type=int, default=2, help="simulated CPU devices per process"
    )
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument(
        "--checkpoint-dir", help="save the final parameters here (process 0 writes)"
    )
    parser.add_argument(
        "--sharded-dir", help="checkpoint fit here, sharded: each process writes its own shards"
    )
    args = parser.parse_args()
    # Simulated CPU devices must be asked for before JAX starts; on GPUs and TPUs, drop this.
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.local_devices}"

    import jax
    import jax.numpy as jnp
    import optax

    from funcgrad import parallel, train

    parallel.initialize(args.coordinator, args.num_processes, args.process_id)
    me = jax.process_index()
    print(f"process {me} of {jax.process_count()}: {jax.local_device_count()} local devices, "
          f"{jax.device_count()} in all", flush=True)  # fmt: skip

    loss_fn, accuracy, params, data = build()
    # Parameters and Adam's state sharded over all 4 devices (FSDP); each global batch of 64
    # is split in two, one half per process, then over that process's devices.
    plan = parallel.plan(parallel.mesh(data=-1), "fsdp")
    result = train.fit(
        loss_fn, optax.adam(1e-3), params, data, key=jax.random.key(1), batch_size=64,
        steps=args.steps, mesh=plan,
        hooks=[
            *(train.default_hooks() if me == 0 else [train.LogMetrics()]),
            *([train.Checkpoint(args.sharded_dir, 0, mesh=plan)] if args.sharded_dir else []),
        ],
    )  # fmt: skip
    score = jax.jit(accuracy)(result.params, data)  # every process runs it; all agree
    print(f"process {me}: final loss {result.history['loss'][-1]:.4f}, "
          f"training accuracy {float(score):.4f}", flush=True)  # fmt: skip
    if args.sharded_dir:  # every process reads back the shards it holds
        restored = train.load_params(args.sharded_dir, result.params, mesh=plan)
        same = jax.jit(lambda a, b: jax.tree.reduce(jnp.logical_and, jax.tree.map(
            lambda x, y: (x == y).all(), a, b)))(restored, result.params)  # fmt: skip
        print(f"process {me}: sharded checkpoint restored, equal: {bool(same)}", flush=True)
    if args.checkpoint_dir:
        train.save(args.checkpoint_dir, result.step, result.params)  # collective; process 0 writes
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
