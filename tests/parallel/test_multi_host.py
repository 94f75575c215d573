"""Two real processes on loopback, two CPU devices each, training together: examples/multi_host.py.

They run on CPU (JAX_PLATFORMS=cpu) whatever the machine has, and the one-process reference
on CPU too (tests/parallel/conftest.py).

Their parameters must equal a one-process run's. Every process is killed after 240 s at most.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import multi_host
import numpy as np
import optax

from funcgrad import train

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "multi_host.py"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_as_one(tmp_path):
    port, steps = free_port(), 12
    command = [sys.executable, str(EXAMPLE), "--coordinator", f"127.0.0.1:{port}",
               "--num-processes", "2", "--steps", str(steps), "--checkpoint-dir", str(tmp_path),
               "--sharded-dir", str(tmp_path / "sharded")]  # fmt: skip
    procs = [
        subprocess.Popen(
            [*command, "--process-id", str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            # On CPU on every machine: two processes on one GPU is not a multi-host setup.
            env={**os.environ, "JAX_PLATFORMS": "cpu"},
        )
        for i in range(2)
    ]
    outputs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=240)
            outputs.append(out)
    finally:
        for p in procs:
            p.kill()
    for i, (p, out) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, out[-3000:]
        assert f"process {i} of 2: 2 local devices, 4 in all" in out
        assert f"process {i}: sharded checkpoint restored, equal: True" in out
    finals = [next(line for line in out.splitlines() if "final loss" in line) for out in outputs]
    assert finals[0].split(":", 1)[1] == finals[1].split(":", 1)[1]  # both report the same

    loss_fn, _, params, data = multi_host.build()
    one = train.fit(loss_fn, optax.adam(1e-3), params, data, key=jax.random.key(1), batch_size=64,
                    steps=steps, hooks=[])  # fmt: skip
    step, together = train.restore(tmp_path, params)
    assert step == steps
    for a, b in zip(jax.tree.leaves(together), jax.tree.leaves(one.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)
    assert f"final loss {one.history['loss'][-1]:.4f}" in finals[0]

    # fit's sharded checkpoint: each process wrote its own shards, into its own store
    assert train.sharded_steps(tmp_path / "sharded") == [steps]
    folder = tmp_path / "sharded" / f"sharded_{steps:09d}"
    for i in range(2):
        assert any(f.is_file() for f in (folder / f"ocdbt.process_{i}").rglob("*")), i
    assert not list((tmp_path / "sharded").glob("*.npz"))
    # and it restores here, on one process of 8 devices, equal to what process 0 gathered
    restored = train.load_params(tmp_path / "sharded", params)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(together), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
