"""Mini-batches for training: `batches` and `num_examples` (which live in `funcgrad.data`), and the
stream `fit` draws from any iterable of batches, whose position a checkpoint saves and restores.

`parallel.process_batches` uses the same code as `batches`, so that sits below both `train` and
`parallel`.
"""

from __future__ import annotations

import base64
import copy
import json
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcgrad.data import batches, num_examples
from funcgrad.errors import CheckpointError, ConfigError, DTypeError, InputTypeError, ShapeError
from funcgrad.paths import leaves_with_paths

__all__ = ["Skipping", "Stream", "batches", "is_stream", "num_examples", "resume_by_skipping"]


def is_stream(data: Any) -> bool:
    """True when ``data`` is an iterable of batches, False for a pytree of arrays.

    A dict, list or tuple is a pytree (a list of batches streams as ``iter(batches)``); an
    array is an array; anything else with ``__iter__`` that is a leaf of no pytree (a
    generator, a grain dataset or `DataLoader`) is a stream.

    Example:
      >>> import numpy as np
      >>> from funcgrad.train.data import is_stream
      >>> is_stream({"x": np.zeros((4, 2))}), is_stream(iter([np.zeros(2)]))
      (False, True)
    """
    if isinstance(data, (dict, list, tuple, np.ndarray, jax.Array)) or hasattr(data, "shape"):
        return False
    if not hasattr(type(data), "__iter__"):
        return False
    with warnings.catch_warnings():  # JAX warns that it treats an iterable as a leaf
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            leaves = jax.tree.leaves(data)
        except Exception:  # a later JAX refuses iterable leaves: then surely not a pytree
            return True
    return len(leaves) == 1 and leaves[0] is data


class Skipping:
    """An iterator over ``iterable`` that counts its batches and resumes by skipping: see
    `resume_by_skipping`."""

    def __init__(self, iterable: Iterable[Any]) -> None:
        self._it, self.drawn = iter(iterable), 0

    def __iter__(self) -> Skipping:
        return self

    def __next__(self) -> Any:
        batch = next(self._it)
        self.drawn += 1
        return batch

    def get_state(self) -> dict[str, int]:
        """The number of batches drawn."""
        return {"batches": self.drawn}

    def set_state(self, state: dict[str, int]) -> None:
        """Draw and discard batches until ``state["batches"]`` have been drawn."""
        target = int(state["batches"])
        if target < self.drawn:
            raise ConfigError(
                f"resume_by_skipping: cannot go back to batch {target}: {self.drawn} are drawn"
            )
        while self.drawn < target:
            try:
                next(self)
            except StopIteration:
                raise ConfigError(
                    f"resume_by_skipping: the data ran out after {self.drawn} batches while "
                    f"skipping the {target} a checkpoint had consumed"
                ) from None


def resume_by_skipping(iterable: Iterable[Any]) -> Skipping:
    """Let `fit` resume from a checkpoint by drawing and discarding the batches it had consumed.

    For data that cannot report its position (a plain generator): a resumed `fit` skips as
    many batches as the checkpoint's run consumed, so it continues from the same example
    when the iterable yields the same sequence again. A grain dataset or loader saves and
    restores its position itself, without this.

    Example:
      >>> import funcgrad as fg
      >>> it = fg.train.resume_by_skipping(x * 10 for x in range(5))
      >>> it.set_state({"batches": 2})
      >>> next(it), it.get_state()
      (20, {'batches': 3})
    """
    return Skipping(iterable)


def _name(obj: Any) -> str:
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


def _spec(batch: Any) -> tuple[Any, list[tuple[tuple[int, ...], Any]]]:
    return jax.tree.structure(batch), [
        (np.shape(a), np.result_type(a)) for a in jax.tree.leaves(batch)
    ]


def _describe(batch: Any) -> str:
    parts = [
        f"{name or 'batch'}: {np.result_type(a).name}{list(np.shape(a))}"
        for name, a in leaves_with_paths(batch)
    ]
    return "{" + ", ".join(parts) + "}"


def _keys(state: Any) -> Any:
    """The shape of a saved iterator state: its dict keys, recursively (values do not matter)."""
    if isinstance(state, dict):
        return {k: _keys(v) for k, v in state.items()}
    return None


def _encode(state: Any, where: str) -> Any:
    if isinstance(state, bytes):
        return {"bytes": base64.b64encode(state).decode()}
    try:
        json.dumps(state)
    except (TypeError, ValueError) as err:
        raise CheckpointError(
            f"{where}: the data iterator's get_state() returned {type(state).__name__}, which "
            f"cannot be saved as JSON ({err})"
        ) from None
    return {"json": state}


def _decode(saved: dict[str, Any]) -> Any:
    return base64.b64decode(saved["bytes"]) if "bytes" in saved else saved["json"]


class Stream:
    """`fit`'s batches drawn from an iterable, each with the position after it.

    ``epochs``: an epoch is one pass over ``iter(data)``; at its end `iter` is called again
    (``data`` must be re-iterable and have a ``len``). Without, running out is an error.
    The first batch fixes the tree structure, shapes and dtypes; `position` is the data's
    position after the last batch a step consumed (`done`), as `Checkpoint` saves it, and
    `restore` goes back to a saved one.
    """

    def __init__(self, data: Any, *, epochs: bool, where: str = "fit") -> None:
        self.data, self.epochs, self.where = data, epochs, where
        self.it = iter(data)
        self.reiterable = self.it is not data
        if epochs and not self.reiterable:
            raise ConfigError(
                f"{where}: epochs= with an iterator ({type(data).__name__}) needs data that "
                "iter() restarts (a grain dataset, not its iterator; a generator function's "
                "result cannot restart); give steps= instead"
            )
        self.epoch, self.drawn, self.in_epoch = 0, 0, 0
        self.last: dict[str, Any] = {"epoch": 0, "batches": 0, "iterator": _name(self.it)}
        self.pending: list[tuple[Any, dict[str, Any]]] = []
        self.first: Any = None
        self.spec: Any = None
        self.pending.append(self._next(0, 0))
        self.first = self.pending[0][0]

    def per_epoch(self) -> int:
        """``len(data)``: the batches in one epoch."""
        try:
            return len(self.data)
        except TypeError:
            raise ConfigError(
                f"{self.where}: epochs= with an iterable needs len(data), the batches in an "
                f"epoch, and {type(self.data).__name__} has none; give steps= instead"
            ) from None

    def _draw(self, step: int, total: int) -> tuple[Any, dict[str, Any], Any]:
        """The next batch, the position after it, and the iterator's raw state."""
        while True:
            try:
                batch = next(self.it)
                break
            except StopIteration:
                if self.drawn == 0:
                    raise ConfigError(
                        f"{self.where}: the data ({type(self.data).__name__}) yielded no batches"
                    ) from None
                if not self.epochs:
                    raise ConfigError(
                        f"{self.where}: the data ran out after {self.drawn} batches: {step} "
                        f"steps ran of the {total} asked for; give steps= at most that, or "
                        "epochs= with data that iter() restarts"
                    ) from None
                if self.in_epoch == 0:
                    raise ConfigError(
                        f"{self.where}: an epoch of the data yielded no batches"
                    ) from None
                self.epoch, self.in_epoch, self.it = self.epoch + 1, 0, iter(self.data)
        self.drawn, self.in_epoch = self.drawn + 1, self.in_epoch + 1
        position: dict[str, Any] = {
            "epoch": self.epoch, "batches": self.drawn, "iterator": _name(self.it),
        }  # fmt: skip
        raw = None
        if hasattr(self.it, "get_state"):
            raw = self.it.get_state()
            raw = raw if isinstance(raw, bytes) else copy.deepcopy(raw)
        return batch, position, raw

    def _next(self, step: int, total: int) -> tuple[Any, dict[str, Any]]:
        if self.pending:
            return self.pending.pop()
        batch, position, raw = self._draw(step, total)
        if raw is not None:
            position["state"] = _encode(raw, self.where)
        spec = _spec(batch)
        if self.spec is None:
            self.spec = spec
        elif spec != self.spec:
            kind: type[Exception] = InputTypeError if spec[0] != self.spec[0] else ShapeError
            if kind is ShapeError and [s for s, _ in spec[1]] == [s for s, _ in self.spec[1]]:
                kind = DTypeError
            raise kind(
                f"{self.where}: the batch for step {step + 1} differs from the first batch: "
                f"expected {_describe(self.first)}, got {_describe(batch)}; every batch needs "
                "the same tree structure, shapes and dtypes (else the step would compile again "
                "for each; a last, smaller batch? drop it: grain's .batch(n, drop_remainder=True))"
            )
        return batch, position

    def calls(self, start: int, total: int, fused: int) -> Iterator[tuple[int, Any, Any]]:
        """``(k, batch, position)`` for each compiled call from ``start`` to ``total``: ``fused``
        batches stacked while that many steps remain, then single ones."""
        step = start
        while step < total:
            k = fused if fused > 1 and total - step >= fused else 1
            got = [self._next(step + i, total) for i in range(k)]
            if k == 1:
                batch = got[0][0]
            else:
                stack = lambda *xs: (np if isinstance(xs[0], np.ndarray) else jnp).stack(xs)
                batch = jax.tree.map(stack, *(b for b, _ in got))
            yield k, batch, got[-1][1]
            step += k

    def done(self, position: dict[str, Any]) -> None:
        """A step consumed the batches up to ``position``."""
        self.last = position

    def position(self) -> dict[str, Any]:
        """The position after the last batch a step consumed, JSON-ready."""
        return self.last

    def restore(self, saved: dict[str, Any] | None, step: int, where: str) -> None:
        """Continue after the batches the checkpoint at ``step`` (file ``where``) had consumed."""
        here = f"{self.where}: the checkpoint at step {step} ({where})"
        if saved is None:
            raise CheckpointError(
                f"{here} holds no data position: it was written by a fit on in-memory arrays, "
                f"but this fit streams from {type(self.data).__name__}"
            )
        count = int(saved["batches"])
        if count == 0:
            return
        if isinstance(self.it, Skipping):
            if "state" in saved and saved["iterator"] != _name(self.it):
                raise CheckpointError(
                    f"{here} holds the position of a {saved['iterator']}, which "
                    "resume_by_skipping cannot restore; pass that pipeline again"
                )
            self.it.set_state({"batches": count})
        elif not hasattr(self.it, "set_state"):
            if "state" in saved:
                raise CheckpointError(
                    f"{here} holds the position of a {saved['iterator']}, but this fit's data "
                    f"({type(self.data).__name__}) cannot restore a position: pass the same "
                    "pipeline as the run that wrote it"
                )
            raise ConfigError(
                f"{here} continues after {count} batches, but this data "
                f"({type(self.data).__name__}) cannot restore its position: it has no "
                "get_state()/set_state(); pass fg.train.resume_by_skipping(data) to draw and "
                f"discard the {count} batches consumed (the same ones if it yields the same "
                "sequence again), or data that saves its position (a grain dataset)"
            )
        else:
            if "state" not in saved or saved["iterator"] != _name(self.it):
                raise CheckpointError(
                    f"{here} holds the position of {saved['iterator']}"
                    f"{'' if 'state' in saved else ' (which cannot report one)'}, but this "
                    f"fit's data iterator is a {_name(self.it)}: was it written by another pipeline? "
                    "Pass the same one"
                )
            it = iter(self.data) if self.reiterable else self.it
            state = _decode(saved["state"])
            if _keys(state) != _keys(it.get_state()):
                raise CheckpointError(
                    f"{here}: its data position {state} does not fit this pipeline, whose "
                    f"position looks like {it.get_state()}; was it written by another pipeline?"
                )
            try:
                it.set_state(state)
            except Exception as err:
                raise CheckpointError(
                    f"{here}: this pipeline's set_state() refused its data position {state}: "
                    f"{type(err).__name__}: {err}; was it written by another pipeline?"
                ) from err
            self.it = it
        self.pending.clear()
        self.epoch, self.drawn, self.last = int(saved["epoch"]), count, saved
        self.in_epoch = count  # not 0: the restored epoch has yielded batches
