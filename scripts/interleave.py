"""Interleaved timing for the benchmark scripts: every variant once per round, order reversed on
alternate rounds, medians over the rounds; so a noisy, shared machine affects all variants alike."""

from __future__ import annotations

import statistics
from collections.abc import Callable


def interleaved_medians(variants: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Call each variant once to compile and warm up, then ``rounds`` times interleaved.

    Each variant returns the time it measured; the result is each variant's median.
    """
    for run in variants.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds):
        for name in list(variants) if r % 2 == 0 else list(reversed(variants)):
            times[name].append(variants[name]())
    return {name: statistics.median(values) for name, values in times.items()}
