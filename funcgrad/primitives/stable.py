"""The built-in primitives: numerically stable forms with hand-written backward rules, gathered.

Each is registered through the public `primitive` decorator, exactly as a user's would be; they live by
idea in `logspace`, `reductions`, `cross_entropy`, `linear_cross_entropy` and `gradients`, and are
importable from here.
"""

from funcgrad.primitives.cross_entropy import sigmoid_binary_cross_entropy, softmax_cross_entropy
from funcgrad.primitives.gradients import clip_gradient, scale_gradient, straight_through
from funcgrad.primitives.linear_cross_entropy import linear_softmax_cross_entropy
from funcgrad.primitives.logspace import (
    log1mexp,
    log1pexp,
    log_sigmoid,
    logaddexp,
    sigmoid,
    xlogy,
)
from funcgrad.primitives.reductions import log_softmax, logsumexp, safe_norm, softmax

__all__ = [
    "clip_gradient", "linear_softmax_cross_entropy", "log1mexp", "log1pexp", "log_sigmoid",
    "log_softmax", "logaddexp",
    "logsumexp", "safe_norm", "scale_gradient", "sigmoid", "sigmoid_binary_cross_entropy",
    "softmax", "softmax_cross_entropy", "straight_through", "xlogy",
]  # fmt: skip
