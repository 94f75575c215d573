"""The record of a training run: one row per logging or evaluation point, saved as CSV or JSON, plotted as PNG.

Rows are plain dicts of floats keyed by metric name, with the step under ``"step"``.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from funcgrad.errors import MissingToolError, UnknownNameError


class History(Mapping[str, list[float]]):
    """Metrics over a run, as a read-only mapping from metric name to its values in order.

    ``history["loss"]`` (the values), ``"loss" in history``, ``history.keys()`` (the metric
    names, in order of first appearance; ``history.names()`` too), ``len(history)`` (how
    many metrics), iteration over the names; ``history.rows`` holds the rows themselves
    (dicts with the step under ``"step"``), ``history.steps(name)`` the steps of a metric.
    An unknown name raises `UnknownNameError` listing the known ones.

    Example:
      >>> from funcgrad.train import History
      >>> h = History()
      >>> h.append(10, loss=0.5)
      >>> h.append(20, loss=0.25, accuracy=0.9)
      >>> h["loss"], h.steps("accuracy"), "accuracy" in h, list(h), len(h)
      ([0.5, 0.25], [20], True, ['loss', 'accuracy'], 2)
    """

    def __init__(self, rows: list[dict[str, float]] | None = None) -> None:
        self.rows: list[dict[str, float]] = list(rows or [])

    def append(self, step: int, **metrics: float) -> None:
        """Add a row for ``step``; values are converted to Python floats."""
        self.rows.append({"step": step, **{k: float(v) for k, v in metrics.items()}})

    def __getitem__(self, name: str) -> list[float]:
        if name not in self:
            raise UnknownNameError(
                f"History: no metric named {name!r}; it records {self.names()} "
                "(plus 'step' in each of history.rows)"
            )
        return [row[name] for row in self.rows if name in row]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __contains__(self, name: object) -> bool:
        return any(name in row for row in self.rows) and name != "step"

    def steps(self, name: str) -> list[int]:
        """The steps at which ``name`` was recorded."""
        self[name]  # the error for an unknown name
        return [int(row["step"]) for row in self.rows if name in row]

    def names(self) -> list[str]:
        """Every metric name recorded, in order of first appearance (the mapping's keys)."""
        seen: dict[str, None] = {}
        for row in self.rows:
            seen.update(dict.fromkeys(k for k in row if k != "step"))
        return list(seen)

    def __repr__(self) -> str:
        return f"History({len(self.rows)} rows: {', '.join(self.names())})"

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """The rows as JSON (non-finite values as null); written to ``path`` if given."""
        clean = [
            {k: (v if math.isfinite(v) else None) for k, v in row.items()} for row in self.rows
        ]
        text = json.dumps(clean, indent=1)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, text: str) -> History:
        """Rows written by `to_json`."""
        rows = json.loads(text)
        return cls([{k: (math.nan if v is None else v) for k, v in row.items()} for row in rows])

    def to_csv(self, path: str | os.PathLike[str]) -> None:
        """One column per metric, one row per record; empty cells where a metric was not recorded."""
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["step", *self.names()])
            writer.writeheader()
            writer.writerows(self.rows)

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Write loss and metric curves against the step as a PNG (needs matplotlib)."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise MissingToolError(
                "History.plot needs matplotlib: pip install 'funcgrad[examples]' (or matplotlib)"
            ) from None
        names = self.names()
        fig, axes = plt.subplots(
            len(names), 1, figsize=(6, 2.2 * max(len(names), 1)), squeeze=False
        )
        for ax, name in zip(axes[:, 0], names, strict=True):
            ax.plot(self.steps(name), self[name], marker="." if len(self[name]) < 50 else None)
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
        axes[-1, 0].set_xlabel("step")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return Path(path)
