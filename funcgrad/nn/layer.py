"""The Layer value: ``init(key, x) -> params`` and ``apply(params, x) -> y`` over plain dict pytrees.

One import for layer authors: the protocol (`protocol`), leaf layers (`param_layer`), input checks
(`checks`), the compiled initialiser (`compiled_init`) and the shared type names (`types`).
"""

from funcgrad.nn.checks import (
    as_spec,
    check_key,
    compute_dtype,
    path_key,
    require_float,
    require_rank,
)
from funcgrad.nn.compiled_init import compiled_init
from funcgrad.nn.param_layer import INIT_PARAM_CAST, ParamLayer, ParamSpec, check_params
from funcgrad.nn.protocol import (
    Context,
    Layer,
    SlotRequest,
    Wrapper,
    apply_child,
    shared_names,
)
from funcgrad.nn.recording import Recorder, recording
from funcgrad.nn.types import Array, Cache, Initializer, Params, Path, Spec, State

__all__ = [
    "INIT_PARAM_CAST",
    "Array",
    "Cache",
    "Context",
    "Initializer",
    "Layer",
    "ParamLayer",
    "ParamSpec",
    "Params",
    "Path",
    "Recorder",
    "SlotRequest",
    "Spec",
    "State",
    "Wrapper",
    "apply_child",
    "as_spec",
    "check_key",
    "check_params",
    "compiled_init",
    "compute_dtype",
    "path_key",
    "recording",
    "require_float",
    "require_rank",
    "shared_names",
]
