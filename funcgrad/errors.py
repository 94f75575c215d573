"""Every error funcgrad raises on purpose: one family under `FuncgradError`.

Each class also derives from the builtin it stands for (``except ValueError`` still works), and
each message names the layer, argument or primitive at fault, what was expected and what came.
"""

from __future__ import annotations


class FuncgradError(Exception):
    """Base class of every error funcgrad raises on purpose."""


class ShapeError(FuncgradError, ValueError):
    """An array has the wrong rank or size for the layer or function it reached."""


class ParamsError(FuncgradError, ValueError):
    """A parameter or state tree does not match the layer: missing, extra or misshapen leaves."""


class DTypeError(FuncgradError, TypeError):
    """An array has a dtype the layer or function cannot use (say, int where float is needed)."""


class PrimitiveError(FuncgradError, TypeError):
    """A registered primitive or its derivative rule is used or written wrongly."""


class ConfigError(FuncgradError, ValueError):
    """A constructor or function received an out-of-range or inconsistent setting."""


class InputTypeError(FuncgradError, TypeError):
    """An argument is of the wrong kind altogether: not a Layer, not a PRNG key, not an array."""


class TraceError(FuncgradError, TypeError):
    """A function cannot be traced by JAX (Python control flow on a traced value, say)."""


class MissingToolError(FuncgradError, RuntimeError):
    """An optional outside program or package (Graphviz's ``dot``, say) is not installed."""


class ToolFailedError(FuncgradError, RuntimeError):
    """An outside program funcgrad ran (Graphviz's ``dot``, say) failed; its own message follows."""


class DonatedError(FuncgradError, ValueError):
    """An array was used again after a step donated it (its buffer now holds the step's result)."""


class IdRangeError(FuncgradError, IndexError):
    """An integer id lies outside the range a layer accepts (an `Embedding` id ≥ its vocabulary)."""


class CheckFailedError(FuncgradError, AssertionError):
    """A check of `funcgrad.testing` failed: a derivative, dtype, ``jit`` or ``vmap`` disagrees.

    An AssertionError, so that test runners report it as a failed test, not a crash.
    """


class CheckpointError(FuncgradError, OSError):
    """A checkpoint cannot be written, found or trusted: missing, damaged or not matching ``like``."""


class MissingFileError(FuncgradError, FileNotFoundError):
    """A file funcgrad was asked to read (an exported model, a module to inspect) is not there."""


class UnknownNameError(FuncgradError, KeyError):
    """A name was looked up that does not exist (a metric in `History`, a node in a graph).

    The message lists the names that do exist.
    """

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint's files are corrupted or truncated: its checksum or its store says so.

    `restore`, `load_params` and a resuming `fit` fall back to the newest intact checkpoint
    (with a warning) rather than raise this, unless that exact step was asked for.
    """
