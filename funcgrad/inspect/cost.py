"""What a compiled program costs, in XLA's own figures: FLOPs, bytes accessed, and memory.

`cost` compiles a function for the default backend and reads ``cost_analysis`` and ``memory_analysis``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax

from funcgrad.inspect._format import human_bytes, human_count, trace


@dataclasses.dataclass(frozen=True)
class Cost:
    """XLA's analysis of one compiled program; a figure the backend does not report is ``None``.

    Attributes:
      flops: floating-point operations of one call (a multiply-add counts 2).
      transcendentals: exp, log, tanh and the like.
      bytes_accessed: bytes read and written by all operations, as XLA models it.
      argument_bytes, output_bytes, alias_bytes: buffers of the arguments and results;
        ``alias_bytes`` is what outputs reuse of donated arguments.
      temp_bytes: the scratch buffers XLA allocates for the program (activations kept for
        the backward pass live here).
      peak_bytes: the peak of live memory, where the backend reports it (GPU, TPU).
      code_bytes: the size of the generated code.
      backend: ``cpu``, ``gpu`` or ``tpu``; device: the device kind.
      memory_note: ``None`` when every memory figure came back; otherwise which ones the
        backend did not report, and why (a peak some backends do not track, or no memory
        analysis at all from some plugins). A missing figure is ``None``, never a guess.
    """

    flops: float | None
    transcendentals: float | None
    bytes_accessed: float | None
    argument_bytes: int | None
    output_bytes: int | None
    alias_bytes: int | None
    temp_bytes: int | None
    peak_bytes: int | None
    code_bytes: int | None
    backend: str
    device: str
    memory_note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The figures as a plain dict, for JSON."""
        return dataclasses.asdict(self)

    def to_text(self) -> str:
        """The figures, one per line, with units."""
        rows = [
            ("backend", f"{self.backend} ({self.device})"),
            ("flops", human_count(self.flops)),
            ("transcendentals", human_count(self.transcendentals)),
            ("bytes accessed", human_bytes(self.bytes_accessed)),
            ("arguments", human_bytes(self.argument_bytes)),
            ("outputs", human_bytes(self.output_bytes)),
            ("aliased (donated)", human_bytes(self.alias_bytes)),
            ("temporaries", human_bytes(self.temp_bytes)),
            ("peak", human_bytes(self.peak_bytes)),
            ("generated code", human_bytes(self.code_bytes)),
        ]
        if self.memory_note:
            rows.append(("note", self.memory_note))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)

    def __str__(self) -> str:
        return self.to_text()


def cost(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Cost:
    """Compile ``fn(*args, **kwargs)`` with `jax.jit` (or its own jit) and report XLA's cost figures.

    A function that is already jitted (a `make_step` step, a ``jax.jit`` result) is lowered
    as it is, so its donation and shardings count. Arguments may be arrays or
    `jax.ShapeDtypeStruct`; nothing runs.

    Memory figures are those XLA's ``memory_analysis`` gives for the backend; one it does
    not give is ``None`` and ``memory_note`` says which and why (a peak of 0 means none).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcgrad import inspect
      >>> x = jnp.ones((64, 256))
      >>> c = inspect.cost(lambda w, x: x @ w, jnp.ones((256, 128)), x)
      >>> c.flops == 2 * 64 * 256 * 128
      True
      >>> c.output_bytes in (64 * 128 * x.dtype.itemsize, None)  # None: see memory_note
      True
    """
    name = getattr(fn, "__name__", type(fn).__name__)
    jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
    lowered = trace(lambda: jitted.lower(*args, **kwargs), name, "inspect.cost")
    compiled = lowered.compile()
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jaxlibs return one dict per program
        analysis = analysis[0] if analysis else {}
    analysis = analysis or {}
    device = jax.devices()[0]
    why = f"the {device.platform} backend"
    try:
        memory = compiled.memory_analysis()
    except Exception as e:  # some backends and plugins have none: say so, do not fail
        memory, why = None, f"memory_analysis failed on {why} ({type(e).__name__}: {e})"
    if memory is None and not why.startswith("memory_analysis"):
        why = f"{why} gives no memory_analysis"

    def mem(field: str) -> int | None:
        value = getattr(memory, field, None)
        return None if value is None else int(value)

    peak = mem("peak_memory_in_bytes") or None  # 0 from a backend that tracks no peak
    figures = {
        "arguments": mem("argument_size_in_bytes"),
        "outputs": mem("output_size_in_bytes"),
        "temporaries": mem("temp_size_in_bytes"),
        "peak": peak,
    }
    missing = [k for k, v in figures.items() if v is None]
    note = None
    if missing:
        reason = why if memory is None else f"{why} does not report them"
        note = f"not reported: {', '.join(missing)} ({reason})"
    return Cost(
        flops=_get(analysis, "flops"),
        transcendentals=_get(analysis, "transcendentals"),
        bytes_accessed=_get(analysis, "bytes accessed"),
        argument_bytes=mem("argument_size_in_bytes"),
        output_bytes=mem("output_size_in_bytes"),
        alias_bytes=mem("alias_size_in_bytes"),
        temp_bytes=mem("temp_size_in_bytes"),
        peak_bytes=peak,
        code_bytes=mem("generated_code_size_in_bytes"),
        backend=device.platform,
        device=device.device_kind,
        memory_note=note,
    )


def _get(analysis: dict[str, Any], key: str) -> float | None:
    value = analysis.get(key)
    return None if value is None or value < 0 else float(value)
