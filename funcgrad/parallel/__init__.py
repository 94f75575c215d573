"""Data-parallel and sharded training over every device JAX sees, one host or many.

The engine is XLA's partitioner through `jax.sharding`; funcgrad supplies the mesh, the layout rules and the loader.
"""

from funcgrad.parallel.hosts import initialize, process_batches
from funcgrad.parallel.plan import Plan, Rule, by_path, fsdp, mesh, path_name, plan, replicate

__all__ = [
    "Plan", "Rule", "by_path", "fsdp", "initialize", "mesh", "path_name", "plan",
    "process_batches", "replicate",
]  # fmt: skip
