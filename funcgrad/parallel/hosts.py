"""Many hosts: `initialize` joins this process to a `jax.distributed` run; `process_batches` feeds it its share.

Every process runs the same program; JAX then sees all hosts' devices, and a mesh spans them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import jax

from funcgrad.data import batches, process_rows
from funcgrad.errors import ConfigError

_ENV = {
    "coordinator": ("FUNCGRAD_COORDINATOR", "JAX_COORDINATOR_ADDRESS"),
    "num_processes": ("FUNCGRAD_NUM_PROCESSES", "JAX_NUM_PROCESSES"),
    "process_id": ("FUNCGRAD_PROCESS_ID", "JAX_PROCESS_ID"),
}


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids: list[int] | None = None,
    timeout_s: int = 300,
) -> None:
    """Join a multi-process run: `jax.distributed.initialize`, with its settings checked first.

    Each setting comes from the argument, else from ``FUNCGRAD_COORDINATOR`` /
    ``FUNCGRAD_NUM_PROCESSES`` / ``FUNCGRAD_PROCESS_ID``, else from JAX's own
    ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``; if none is set
    anywhere, JAX detects the cluster (SLURM, Open MPI, Cloud TPU). Call it before anything
    else touches JAX. On CPU, collectives across processes use Gloo, switched on here.

    Example (two processes on one machine; see examples/multi_host.py):
      >>> from funcgrad import parallel
      >>> parallel.initialize("127.0.0.1:9876", num_processes=2, process_id=7)
      Traceback (most recent call last):
      ...
      funcgrad.errors.ConfigError: parallel.initialize: process_id 7 is out of range for num_processes=2 (ids 0..1)
    """
    values: dict[str, Any] = {
        "coordinator": coordinator,
        "num_processes": num_processes,
        "process_id": process_id,
    }
    for name, envs in _ENV.items():
        if values[name] is None:
            values[name] = next((os.environ[e] for e in envs if os.environ.get(e)), None)
    for name in ("num_processes", "process_id"):
        if values[name] is not None:
            try:
                values[name] = int(values[name])
            except ValueError:
                raise ConfigError(
                    f"parallel.initialize: {name} must be an integer; got {values[name]!r}"
                ) from None
    n, pid = values["num_processes"], values["process_id"]
    if n is not None and n < 1:
        raise ConfigError(f"parallel.initialize: num_processes must be >= 1; got {n}")
    if n is not None and pid is not None and not 0 <= pid < n:
        raise ConfigError(
            f"parallel.initialize: process_id {pid} is out of range for num_processes={n} "
            f"(ids 0..{n - 1})"
        )
    addr = values["coordinator"]
    if addr is not None and (":" not in addr or not addr.rsplit(":", 1)[1].isdigit()):
        raise ConfigError(
            f"parallel.initialize: coordinator must be host:port (like 10.0.0.1:1234); got {addr!r}"
        )
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=addr,
        num_processes=n,
        process_id=pid,
        local_device_ids=local_device_ids,
        initialization_timeout=timeout_s,
    )
    if n is not None and jax.process_count() != n:
        raise ConfigError(
            f"parallel.initialize: asked for {n} processes, but the run has {jax.process_count()}"
        )


def process_batches(
    key: jax.Array,
    data: Any,
    global_batch_size: int,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[Any]:
    """This process's rows of each global batch: every process shuffles alike and takes its own slice.

    Give the same ``key`` and ``data`` on every process. `Plan.put_batch` then joins the
    slices into one global batch, so a run on n hosts takes the same steps as on one.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcgrad import parallel
      >>> data = jnp.arange(8)
      >>> [b.tolist() for b in parallel.process_batches(jax.random.key(0), data, 4, process_index=1, process_count=2)]
      [[5, 6], [2, 7]]
    """
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    stream = batches(key, data, global_batch_size)
    yield from process_rows(stream, global_batch_size, index, count, "process_batches")
