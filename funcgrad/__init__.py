"""funcgrad: functional differentiable programming on JAX.

Pure functions over parameter pytrees; primitives with hand-written backward rules; plain jit, grad, vmap.
"""

from funcgrad import (
    errors,
    export,
    inspect,
    interop,
    losses,
    models,
    nn,
    parallel,
    primitives,
    testing,
    train,
)
from funcgrad.primitives.registry import Primitive, primitive
from funcgrad.primitives.stable import (
    clip_gradient,
    linear_softmax_cross_entropy,
    log1mexp,
    log1pexp,
    log_sigmoid,
    log_softmax,
    logaddexp,
    logsumexp,
    safe_norm,
    scale_gradient,
    sigmoid,
    sigmoid_binary_cross_entropy,
    softmax,
    softmax_cross_entropy,
    straight_through,
    xlogy,
)

__version__ = "0.1.0"

__all__ = [
    "Primitive", "clip_gradient", "errors", "export", "inspect", "interop",
    "linear_softmax_cross_entropy", "log1mexp", "log1pexp", "log_sigmoid",
    "log_softmax", "logaddexp", "logsumexp", "losses", "models", "nn", "parallel", "primitive", "primitives",
    "safe_norm", "scale_gradient", "sigmoid", "sigmoid_binary_cross_entropy", "softmax",
    "softmax_cross_entropy", "straight_through", "testing", "train", "xlogy",
]  # fmt: skip
