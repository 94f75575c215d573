"""Hints for PyTorch habits: funcgrad is channels-last, so a channels-first input gets the transpose.

The sentence itself lives with the layers' input checks (`funcgrad.nn.checks`), which `nn.Conv`
says too; `from_torch` and any later loader import it from here.
"""

from __future__ import annotations

from funcgrad.nn.checks import channels_last_hint

__all__ = ["channels_last_hint"]
