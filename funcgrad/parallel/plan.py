"""Where arrays live on a device mesh: a `Plan` maps every parameter (by key path and shape) to a sharding.

XLA's partitioner does the work (`jax.sharding`); a plan only says which axis of which array goes where.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from funcgrad.errors import ConfigError, InputTypeError, ShapeError
from funcgrad.paths import dotted

P = PartitionSpec
RuleFunction = Callable[[str, tuple[int, ...]], PartitionSpec]


@dataclasses.dataclass(frozen=True)
class Rule:
    """A sharding rule: ``rule(path, shape, n)`` is a leaf's `PartitionSpec`.

    ``n`` is the size of mesh axis ``fsdp_axis`` (0 when the rule has none); ``patterns`` are
    the `by_path` regexes, which ``Plan.shardings(check_rules=True)`` requires to match. Made by
    `replicate`, `fsdp` and `by_path`; `plan` wraps a plain ``(path, shape)`` function in one.

    Example:
      >>> from funcgrad import parallel
      >>> rule = parallel.fsdp(min_size=4)
      >>> rule.fsdp_axis, rule("w", (8, 2), 4)
      ('data', P('data', None))
    """

    spec: Callable[[str, tuple[int, ...], int], PartitionSpec]
    fsdp_axis: str | None = None
    patterns: tuple[str, ...] = ()

    def __call__(self, path: str, shape: tuple[int, ...], n: int = 0) -> PartitionSpec:
        return self.spec(path, shape, n)


def mesh(devices: Sequence[jax.Device] | None = None, **axes: int) -> Mesh:
    """A device mesh with named axes: ``mesh(data=8)``, ``mesh(data=-1, model=2)`` (-1: the rest).

    Spans every device JAX sees (all hosts' after `initialize`) unless ``devices`` is given.

    Example:
      >>> from funcgrad import parallel
      >>> m = parallel.mesh(data=-1)
      >>> m.axis_names, m.devices.size == len(__import__("jax").devices())
      (('data',), True)
    """
    devices = list(jax.devices() if devices is None else devices)
    if not axes:
        axes = {"data": -1}
    sizes = dict(axes)
    free = [k for k, v in sizes.items() if v == -1]
    bad = {k: v for k, v in sizes.items() if not isinstance(v, int) or (v < 1 and v != -1)}
    if bad or len(free) > 1:
        raise ConfigError(
            f"parallel.mesh: axis sizes must be positive ints, with at most one -1; got {axes}"
        )
    fixed = math.prod(v for v in sizes.values() if v != -1)
    if free:
        if len(devices) % fixed:
            raise ConfigError(
                f"parallel.mesh: {len(devices)} devices do not divide into axes {axes} "
                f"({len(devices)} is not a multiple of {fixed})"
            )
        sizes[free[0]] = len(devices) // fixed
    if math.prod(sizes.values()) != len(devices):
        raise ConfigError(
            f"parallel.mesh: axes {sizes} need {math.prod(sizes.values())} devices; "
            f"there are {len(devices)} ({devices[0].platform})"
        )
    grid = np.array(devices, dtype=object).reshape(tuple(sizes.values()))
    return Mesh(grid, tuple(sizes))


def replicate() -> Rule:
    """Every parameter whole on every device: data parallelism."""
    return Rule(lambda path, shape, n: P())


def fsdp(axis: str = "data", *, min_size: int = 1024) -> Rule:
    """Shard each parameter's largest axis that divides evenly over mesh axis ``axis`` (ZeRO-3 / FSDP).

    Parameters with fewer than ``min_size`` elements, or with no divisible axis, are replicated.
    Optimizer state of the same shape is sharded the same way.
    """

    def spec(path: str, shape: tuple[int, ...], n: int) -> PartitionSpec:
        if math.prod(shape) < min_size or n <= 1:
            return P()
        candidates = [d for d in range(len(shape)) if shape[d] % n == 0]
        if not candidates:
            return P()
        best = max(candidates, key=lambda d: (shape[d], -d))
        return P(*[axis if d == best else None for d in range(len(shape))])

    return Rule(spec, fsdp_axis=axis)


def by_path(
    *patterns: tuple[str, PartitionSpec], default: Rule | RuleFunction | str = "replicate"
) -> Rule:
    r"""Rules by key path: the first regex that `re.search`-es a leaf's path gives its spec.

    Paths are dotted (`funcgrad.paths`): ``block_0.attention_1.wq``; an optimizer state's copy
    of that parameter is ``0.mu.block_0.attention_1.wq``, so one pattern covers both. Leaves no
    pattern matches get ``default`` (``"replicate"``, ``"fsdp"`` or a rule). A pattern in the
    earlier ``/`` spelling (``dense_0/w$``) still matches the ``/``-joined path, with a
    `DeprecationWarning` giving its dotted form.

    Example (Megatron-style tensor parallelism over a ``model`` axis):
      >>> from jax.sharding import PartitionSpec as P
      >>> from funcgrad import parallel
      >>> rule = parallel.by_path((r"dense_0\.w$", P(None, "model")), (r"dense_2\.w$", P("model", None)))
      >>> rule("dense_0.w", (64, 256)), rule("dense_0.b", (256,))
      (P(None, 'model'), P())
    """
    compiled = []
    for item in patterns:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], PartitionSpec)):
            raise ConfigError(
                f"parallel.by_path: each rule is (regex, PartitionSpec); got {item!r}"
            )
        if "/" in item[0]:
            spelled = item[0].replace("/", "\\.")
            warnings.warn(
                f"parallel.by_path: pattern {item[0]!r} uses the old '/' spelling of leaf paths; "
                f"paths are dotted now: write {spelled!r}",
                DeprecationWarning,
                stacklevel=2,
            )
        compiled.append((re.compile(item[0]), item[1]))
    fallback = _as_rule(default)

    def spec(path: str, shape: tuple[int, ...], n: int) -> PartitionSpec:
        for pattern, partition in compiled:
            if _matches(pattern, path):
                return partition
        return fallback(path, shape, n)

    patterns_ = tuple(p.pattern for p, _ in compiled)
    return Rule(spec, fsdp_axis=fallback.fsdp_axis, patterns=patterns_)


def _as_rule(rule: Rule | RuleFunction | str) -> Rule:
    if isinstance(rule, Rule):
        return rule
    if callable(rule):
        function = rule
        return Rule(lambda path, shape, n: function(path, shape))
    if rule == "replicate":
        return replicate()
    if rule == "fsdp":
        return fsdp()
    raise ConfigError(
        f"sharding rule must be 'replicate', 'fsdp', parallel.by_path(...) or a function "
        f"(path, shape) -> PartitionSpec; got {rule!r}"
    )


def _matches(pattern: re.Pattern[str] | str, path: str) -> bool:
    """Does ``pattern`` find ``path`` (dotted)? A pattern of the old ``/`` spelling (deprecated)
    is matched against the ``/``-joined path."""
    text = pattern.pattern if isinstance(pattern, re.Pattern) else pattern
    return re.search(pattern, path.replace(".", "/") if "/" in text else path) is not None


def path_name(path: Sequence[Any]) -> str:
    """Deprecated: `funcgrad.paths.dotted`, the one spelling of a leaf path (``block_0.dense_1.w``)."""
    warnings.warn(
        "parallel.path_name is deprecated; use funcgrad.paths.dotted (paths are dotted now: "
        "block_0.dense_1.w)",
        DeprecationWarning,
        stacklevel=2,
    )
    return dotted(path)


@dataclasses.dataclass(frozen=True)
class Plan:
    """A mesh, a rule for parameters (and optimizer and model state), and the batch axis.

    Made by `plan`; handed to `train.make_step`, `train.make_multistep` and `train.fit` as ``mesh=``.
    """

    mesh: Mesh
    rule: Rule
    batch_axis: str | tuple[str, ...] = "data"
    _cache: dict[Any, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Checked once here, not on every batch.
        for a in self.batch_axis if isinstance(self.batch_axis, tuple) else (self.batch_axis,):
            if a not in self.mesh.shape:
                raise ConfigError(
                    f"parallel.plan: batch axis '{a}' is not an axis of the mesh "
                    f"{tuple(self.mesh.axis_names)}"
                )

    def spec(self, path: str, shape: tuple[int, ...]) -> PartitionSpec:
        """The partition spec of one leaf, checked against the mesh and the leaf's shape."""
        fsdp_axis = self.rule.fsdp_axis
        n = self.mesh.shape[fsdp_axis] if fsdp_axis in self.mesh.shape else 0
        if fsdp_axis is not None and fsdp_axis not in self.mesh.shape:
            raise ConfigError(
                f"sharding rule fsdp('{fsdp_axis}'): the mesh has no axis '{fsdp_axis}'; "
                f"its axes are {tuple(self.mesh.axis_names)}"
            )
        spec = self.rule(path, shape, n)
        if not isinstance(spec, PartitionSpec):
            raise ConfigError(
                f"sharding rule returned {type(spec).__name__} for {path}; expected a PartitionSpec"
            )
        if len(spec) > len(shape):
            raise ShapeError(
                f"sharding rule gives {path} (shape {shape}) the spec {spec}, which has more "
                f"entries than the array has axes"
            )
        for dim, names in enumerate(spec):
            if names is None:
                continue
            names = names if isinstance(names, tuple) else (names,)
            for name in names:
                if name not in self.mesh.shape:
                    raise ConfigError(
                        f"sharding rule for {path}: mesh axis '{name}' does not exist; the mesh "
                        f"has {tuple(self.mesh.axis_names)}"
                    )
            size = math.prod(self.mesh.shape[a] for a in names)
            if shape[dim] % size:
                raise ShapeError(
                    f"sharding rule for {path}: axis {dim} of shape {shape} has {shape[dim]} "
                    f"entries, which do not divide over mesh axes {names} ({size} devices)"
                )
        return spec

    def shardings(self, tree: Any, *, check_rules: bool = False) -> Any:
        """A `NamedSharding` per leaf of ``tree`` (parameters, optimizer or model state).

        With ``check_rules``, every `by_path` pattern must match some leaf: a rule that matches
        no parameter is a typo, and it is an error.
        """
        leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
        signature = (treedef, tuple(np.shape(x) for _, x in leaves), check_rules)
        if signature in self._cache:
            return self._cache[signature]
        names = [dotted(p) for p, _ in leaves]
        if check_rules:
            for pattern in self.rule.patterns:
                if not any(_matches(pattern, n) for n in names):
                    raise ConfigError(
                        f"sharding rule {pattern!r} matches no parameter; paths look like "
                        f"{names[:4]}"
                    )
        out = [
            NamedSharding(self.mesh, self.spec(n, tuple(np.shape(x))))
            for n, (_, x) in zip(names, leaves, strict=True)
        ]
        self._cache[signature] = jax.tree.unflatten(treedef, out)
        return self._cache[signature]

    @property
    def replicated(self) -> NamedSharding:
        """The sharding of a value every device holds whole (keys, scalars, metrics)."""
        return NamedSharding(self.mesh, P())

    def place(self, tree: Any, *, replicated: bool = False, check_rules: bool = False) -> Any:
        """Put ``tree`` on the mesh by the rule, or whole on every device (leaves already placed right stay).

        Works across hosts: each process provides the shards it holds from its own full copy.
        """
        if replicated:
            return jax.tree.map(lambda x: put(x, self.replicated), tree)
        return jax.tree.map(put, tree, self.shardings(tree, check_rules=check_rules))

    def batch_sharding(self, batch: Any, axis: int = 0) -> Any:
        """Every leaf of a batch split along its example axis (``axis``) over ``batch_axis``."""

        def spec(x: Any) -> NamedSharding:
            entries: list[Any] = [None] * np.ndim(x)
            entries[axis] = self.batch_axis
            return NamedSharding(self.mesh, P(*entries))

        return jax.tree.map(spec, batch)

    def put_batch(self, batch: Any, axis: int = 0) -> Any:
        """This process's rows of a global batch → one global array per leaf, split over ``batch_axis``.

        On one host the local batch *is* the global batch. With several processes each gives
        its own slice (see `process_batches`); together they form the global batch. ``axis``
        is the example axis (1 for a block of stacked batches, as `make_multistep` takes).
        """
        axes = self.batch_axis if isinstance(self.batch_axis, tuple) else (self.batch_axis,)
        n = math.prod(self.mesh.shape[a] for a in axes)
        procs = jax.process_count()
        shardings = self.batch_sharding(batch, axis)

        def put(x: Any, sharding: NamedSharding) -> Any:
            if _placed(x, sharding):
                return x
            if np.ndim(x) <= axis:
                raise ShapeError(
                    f"a batch leaf of shape {np.shape(x)} has no example axis {axis} to split "
                    f"over mesh axis {self.batch_axis!r}"
                )
            rows = np.shape(x)[axis] * procs
            if rows % n:
                raise ShapeError(
                    f"a batch of {rows} examples does not divide over the {n} devices of mesh "
                    f"axis {self.batch_axis!r}; use a batch size that is a multiple of {n}"
                )
            if procs == 1:
                return jax.device_put(x, sharding)
            return jax.make_array_from_process_local_data(sharding, np.asarray(x))

        return jax.tree.map(put, batch, shardings)

    def constrain(self, tree: Any) -> Any:
        """Inside a jitted function: keep ``tree`` laid out as this plan says."""
        return jax.lax.with_sharding_constraint(tree, self.shardings(tree))


def plan(
    mesh: Mesh,
    rule: Rule | RuleFunction | str = "replicate",
    *,
    batch_axis: str | tuple[str, ...] = "data",
) -> Plan:
    """How to lay a training run over ``mesh``: parameters by ``rule``, batches split over ``batch_axis``.

    ``rule`` is ``"replicate"`` (data parallel), ``"fsdp"`` (parameters and optimizer state
    sharded over ``data``), `by_path` rules (tensor parallel), or any function
    ``(path, shape) -> PartitionSpec``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcgrad import parallel
      >>> p = parallel.plan(parallel.mesh(data=-1), "fsdp")
      >>> params = p.place({"w": jnp.zeros((1024, 8)), "b": jnp.zeros(8)})
      >>> len(params["w"].sharding.device_set) == len(jax.devices())  # split over all of them
      True
      >>> p.spec("b", (8,))  # too small to be worth splitting: replicated
      P()
    """
    if not isinstance(mesh, Mesh):
        raise InputTypeError(
            f"parallel.plan: expected a jax.sharding.Mesh; got {type(mesh).__name__}"
        )
    return Plan(mesh, _as_rule(rule), batch_axis)


def as_plan(mesh: Mesh | Plan | None) -> Plan | None:
    """``mesh=`` as the training functions take it: a Plan, a Mesh (→ data parallel), or None."""
    if mesh is None or isinstance(mesh, Plan):
        return mesh
    if isinstance(mesh, Mesh):
        return plan(mesh, "replicate", batch_axis=mesh.axis_names[0])
    raise InputTypeError(
        f"mesh= expects a jax.sharding.Mesh or a parallel.Plan; got {type(mesh).__name__}"
    )


def _placed(x: Any, sharding: jax.sharding.Sharding) -> bool:
    """Is ``x`` already laid out as ``sharding`` says (``P('d')`` and ``P('d', None)`` alike)?"""
    if not isinstance(x, jax.Array):
        return False
    return x.sharding == sharding or x.sharding.is_equivalent_to(sharding, x.ndim)


def put(x: Any, sharding: jax.sharding.Sharding, *, copy: bool = True) -> Any:
    """``x`` laid out as ``sharding``, on one host or many (each process giving its own shards).

    With ``copy`` (the default), the result never shares a buffer with ``x``: a step donates
    what it is given, and device_put onto a mesh reuses the source buffer for the shard on the
    same device, even with may_alias=False (seen in JAX 0.10).
    """
    if _placed(x, sharding):
        return x
    if jax.process_count() == 1:
        if copy and isinstance(x, jax.Array):
            x = jnp.array(x, copy=True)
        return jax.device_put(x, sharding)
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = put(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
