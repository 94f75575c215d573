"""The primitive registry: forward functions with hand-written backward rules.

A registered primitive works under jit, grad, vmap and forward mode, which is derived by transposing the backward rule.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Hashable
from typing import Any, Literal, overload

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from funcgrad.errors import PrimitiveError

BackwardRule = Callable[..., tuple[Any, ...]]
RuleKind = Literal["backward", "tangent"]
_RULE_KINDS: tuple[RuleKind, ...] = ("backward", "tangent")
_REGISTRY: dict[str, Primitive] = {}


def rule_scope(name: str, rule: RuleKind) -> str:
    """The `jax.named_scope` a primitive's derivative rule runs under: ``sigmoid.backward``.

    Example:
      >>> from funcgrad.primitives.registry import rule_scope
      >>> rule_scope("sigmoid", "backward")
      'sigmoid.backward'
    """
    return f"{name}.{rule}"


def split_rule_scope(scope: str) -> tuple[str, RuleKind | None]:
    """One name-stack part as ``(primitive, rule)``, the inverse of `rule_scope`; ``rule`` is
    None for a part that names no derivative rule.

    Example:
      >>> from funcgrad.primitives.registry import split_rule_scope
      >>> split_rule_scope("sigmoid.backward"), split_rule_scope("dense_0")
      (('sigmoid', 'backward'), ('dense_0', None))
    """
    for rule in _RULE_KINDS:
        if scope.endswith(f".{rule}"):
            return scope.removesuffix(f".{rule}"), rule
    return scope, None


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


class Primitive:
    """A named forward function with a hand-written derivative rule.

    Built by :func:`primitive`; calling it runs the forward function. Positional
    arguments are the differentiable inputs (arrays); keyword arguments are
    static (hashable) settings passed to the forward and the rules alike.

    The backward rule has the signature of a Caffe or Torch node,
    ``backward(inputs, output, output_grad, **static) -> tuple``: one gradient
    per positional input, ``None`` meaning zero. Reverse mode uses it; forward
    mode (``jax.jvp``, ``jax.jacfwd``, ``jax.hessian``) transposes it with
    ``jax.linear_transpose``, which is exact because a true derivative's
    backward rule is linear in ``output_grad``. A rule that is not linear (say
    gradient clipping) must be declared ``reverse_only=True``.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str,
        reverse_only: bool = False,
        has_residuals: bool = False,
    ) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.name = name
        self.reverse_only = reverse_only
        self.has_residuals = has_residuals
        self._backward: BackwardRule | None = None
        self._forward_tangent: Callable[..., Any] | None = None
        self._public: Callable[..., Any] | None = None
        self._impls: dict[tuple[tuple[str, Hashable], ...], Callable[..., Any]] = {}

    def __repr__(self) -> str:
        mode = "reverse-only" if self.reverse_only else "forward and reverse"
        return f"<funcgrad primitive '{self.name}' ({mode})>"

    def backward(self, rule: BackwardRule) -> BackwardRule:
        """Register ``rule(inputs, output, output_grad, **static)`` as the backward rule.

        With ``has_residuals=True`` the rule also receives ``residuals=``, the
        second value the forward function returned.
        """
        self._backward = rule
        self._impls.clear()
        return rule

    def forward_tangent(self, rule: Callable[..., Any]) -> Callable[..., Any]:
        """Register ``rule(inputs, output, tangents, **static) -> output_tangent``.

        Optional: without it the tangent is derived from the backward rule. One
        tangent per positional input; those of integer inputs are ``None``.
        """
        if self.reverse_only:
            raise PrimitiveError(
                f"primitive '{self.name}' is reverse-only; a forward tangent rule contradicts that"
            )
        self._forward_tangent = rule
        self._impls.clear()
        return rule

    def public(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Register ``fn`` as how this primitive is called (decorator; returns ``fn`` itself).

        For a primitive whose forward takes internal arguments (a mask as an array, a static
        axis) behind a friendlier function: calling the primitive, or what `get` returns,
        then calls ``fn``, which reaches the forward through `bind`.

        Example:
          >>> import jax.numpy as jnp, funcgrad as fg
          >>> @fg.primitive(name="doctest_scaled", override=True)
          ... def _scaled(x, *, by):
          ...     return x * by
          >>> @_scaled.backward
          ... def _(inputs, output, output_grad, *, by):
          ...     return (output_grad * by,)
          >>> @_scaled.public
          ... def scaled(x, by=2.0):
          ...     return _scaled.bind(jnp.asarray(x), by=by)
          >>> float(fg.primitives.get("doctest_scaled")(3.0))
          6.0
        """
        self._public = fn
        return fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the primitive as its public function does (see `public`), else as `bind`."""
        if self._public is not None:
            return self._public(*args, **kwargs)
        return self.bind(*args, **kwargs)

    def bind(self, *args: Any, **static: Any) -> Any:
        """Run the registered forward, with its derivative rules: positional arrays, static keywords."""
        if self._backward is None:
            raise PrimitiveError(
                f"primitive '{self.name}' was called before a backward rule was given; "
                f"decorate one with @{self.fn.__name__}.backward"
            )
        key = tuple(sorted(static.items()))
        try:
            impl = self._impls.get(key)
        except TypeError:
            bad = next(k for k, v in static.items() if not _hashable(v))
            raise PrimitiveError(
                f"static keyword argument '{bad}' of primitive '{self.name}' must be hashable; "
                f"got {type(static[bad]).__name__} {static[bad]!r} (use a tuple, or pass arrays "
                "positionally)"
            ) from None
        if impl is None:
            impl = self._impls[key] = self._build(static)
        inputs = tuple(a if isinstance(a, jax.Array) else jnp.asarray(a) for a in args)
        try:
            return impl(*inputs)
        except TypeError as err:
            if self.reverse_only and "forward-mode" in str(err):
                raise PrimitiveError(
                    f"primitive '{self.name}' is reverse-only (its backward rule is not linear "
                    "in output_grad), so forward mode (jax.jvp, jax.jacfwd, jax.hessian, "
                    "jax.linearize) is not available for it"
                ) from None
            raise

    def _forward(self, static: dict[str, Any], *inputs: Any) -> tuple[Any, Any]:
        with jax.named_scope(self.name):
            result = self.fn(*inputs, **static)
        if self.has_residuals:
            if not (isinstance(result, tuple) and len(result) == 2):
                raise PrimitiveError(
                    f"primitive '{self.name}' has has_residuals=True, so its forward must "
                    f"return (output, residuals); it returned {type(result).__name__}"
                )
            return result
        return result, None

    def _gradients(
        self, static: dict[str, Any], inputs: tuple[Any, ...], output: Any, g: Any, res: Any
    ) -> list[Any]:
        """Call the backward rule and check what it returns against the inputs."""
        assert self._backward is not None
        kwargs = dict(static, residuals=res) if self.has_residuals else static
        grads = self._backward(inputs, output, g, **kwargs)
        if not isinstance(grads, (tuple, list)):
            raise PrimitiveError(
                f"backward rule of primitive '{self.name}' must return a tuple with one "
                f"gradient per positional input ({len(inputs)}); it returned "
                f"{type(grads).__name__}"
            )
        if len(grads) != len(inputs):
            raise PrimitiveError(
                f"backward rule of primitive '{self.name}' returned {len(grads)} gradients "
                f"for {len(inputs)} positional inputs; return one per input (None for zero)"
            )
        checked: list[Any] = []
        for i, (x, dx) in enumerate(zip(inputs, grads, strict=True)):
            if dx is None or not _is_float(x):
                checked.append(None)
                continue
            if jnp.shape(dx) != jnp.shape(x) or jnp.result_type(dx) != jnp.result_type(x):
                raise PrimitiveError(
                    f"backward rule of primitive '{self.name}' returned a gradient for input "
                    f"{i} with shape {jnp.shape(dx)} and dtype {jnp.result_type(dx)}; the input "
                    f"has shape {jnp.shape(x)} and dtype {jnp.result_type(x)}, and its "
                    "gradient must match both"
                )
            checked.append(dx)
        return checked

    def _named(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` under the primitive's name, which jaxprs (and so `funcgrad.inspect`) show."""
        fn.__name__ = fn.__qualname__ = self.name
        return fn

    def _build(self, static: dict[str, Any]) -> Callable[..., Any]:
        forward = functools.partial(self._forward, static)
        if self.reverse_only:
            return self._build_vjp(static, forward)

        call = jax.custom_jvp(self._named(lambda *inputs: forward(*inputs)[0]))

        @functools.partial(call.defjvp, symbolic_zeros=True)
        def call_jvp(inputs: tuple[Any, ...], tangents: tuple[Any, ...]) -> tuple[Any, Any]:
            if self.has_residuals:
                output, res = forward(*inputs)
            else:
                # Calling the primitive itself keeps custom rules at every order.
                output, res = call(*inputs), None
            # Inputs that are not being differentiated arrive as symbolic zeros: skip them,
            # so a constant's infinite partial derivative never meets its zero tangent.
            ts = [
                None if isinstance(t, SymbolicZero) or not _is_float(x) else t
                for x, t in zip(inputs, tangents, strict=True)
            ]
            if self._forward_tangent is not None:
                with jax.named_scope(rule_scope(self.name, "tangent")):
                    return output, self._forward_tangent(inputs, output, ts, **static)
            live = [i for i, t in enumerate(ts) if t is not None]
            if not live:
                return output, jax.tree.map(jnp.zeros_like, output)

            def vjp(g: Any) -> tuple[Any, ...]:
                with jax.named_scope(rule_scope(self.name, "backward")):
                    grads = self._gradients(static, inputs, output, g, res)
                return tuple(
                    jnp.zeros_like(inputs[i]) if grads[i] is None else grads[i] for i in live
                )

            spec = jax.tree.map(
                lambda o: jax.ShapeDtypeStruct(jnp.shape(o), jnp.result_type(o)), output
            )
            try:
                transpose = jax.linear_transpose(vjp, spec)
                (tangent,) = transpose(tuple(ts[i] for i in live))
            except PrimitiveError:
                raise
            except Exception as err:
                raise PrimitiveError(
                    f"forward mode of primitive '{self.name}' is derived by transposing its "
                    f"backward rule, which failed ({type(err).__name__}: {err}). A backward rule "
                    "must be linear in output_grad; if yours is not, register the primitive "
                    "with reverse_only=True, or give a rule with @forward_tangent"
                ) from err
            return output, tangent

        return call

    def _build_vjp(self, static: dict[str, Any], forward: Callable[..., Any]) -> Callable[..., Any]:
        call = jax.custom_vjp(self._named(lambda *inputs: forward(*inputs)[0]))

        def call_fwd(*inputs: Any) -> tuple[Any, Any]:
            output, res = forward(*inputs)
            return output, (inputs, output, res)

        def call_bwd(saved: Any, g: Any) -> tuple[Any, ...]:
            inputs, output, res = saved
            with jax.named_scope(rule_scope(self.name, "backward")):
                return tuple(self._gradients(static, inputs, output, g, res))

        call.defvjp(call_fwd, call_bwd)
        return call


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


@overload
def primitive(fn: Callable[..., Any], /) -> Primitive: ...


@overload
def primitive(
    *,
    name: str | None = None,
    override: bool = False,
    reverse_only: bool = False,
    has_residuals: bool = False,
) -> Callable[[Callable[..., Any]], Primitive]: ...


def primitive(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    override: bool = False,
    reverse_only: bool = False,
    has_residuals: bool = False,
) -> Primitive | Callable[[Callable[..., Any]], Primitive]:
    """Register a forward function as a primitive; give its backward rule with ``@prim.backward``.

    Args:
      fn: the forward function. Positional arguments are differentiable arrays,
        keyword arguments static settings.
      name: the registry name (default: the function's name).
      override: replace a primitive already registered under ``name``.
      reverse_only: the backward rule is not linear in ``output_grad`` (it
        clips or otherwise shapes the gradient), so no forward mode.
      has_residuals: the forward returns ``(output, residuals)`` and the
        backward rule receives ``residuals=``, to save work between passes.

    Returns:
      A :class:`Primitive`, callable like ``fn``.

    Example:
      >>> import jax, jax.numpy as jnp, funcgrad as fg
      >>> @fg.primitive(name="doctest_square", override=True)
      ... def square(x):
      ...     return x * x
      >>> @square.backward
      ... def _(inputs, output, output_grad):
      ...     (x,) = inputs
      ...     return (2 * x * output_grad,)
      >>> float(jax.grad(square)(3.0)), float(jax.jacfwd(square)(3.0))
      (6.0, 6.0)
    """

    def register(f: Callable[..., Any]) -> Primitive:
        key = name or f.__name__
        taken = _REGISTRY.get(key)
        same_source = taken is not None and (
            (taken.fn.__module__, taken.fn.__qualname__) == (f.__module__, f.__qualname__)
        )
        if taken is not None and not (override or same_source):
            raise PrimitiveError(
                f"a primitive named '{key}' is already registered ({taken.fn.__module__}."
                f"{taken.fn.__qualname__}); choose another name= or pass override=True"
            )
        prim = Primitive(f, name=key, reverse_only=reverse_only, has_residuals=has_residuals)
        _REGISTRY[key] = prim
        return prim

    return register(fn) if fn is not None else register


def get(name: str) -> Primitive:
    """The primitive registered under ``name``.

    Example:
      >>> import funcgrad as fg
      >>> fg.primitives.get("log1pexp").name
      'log1pexp'
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise PrimitiveError(
            f"no primitive named '{name}'; registered: {', '.join(sorted(_REGISTRY))}"
        ) from None


def names() -> list[str]:
    """The sorted names of every registered primitive.

    Example:
      >>> import funcgrad as fg
      >>> "logsumexp" in fg.primitives.names()
      True
    """
    return sorted(_REGISTRY)


def describe() -> str:
    """A readable table of the registry: name, signature, modes and first docstring line.

    Example:
      >>> import funcgrad as fg
      >>> print(fg.primitives.describe().splitlines()[0])
      name | signature | modes | summary
    """
    rows = ["name | signature | modes | summary"]
    for key in names():
        prim = _REGISTRY[key]
        fn = prim._public or prim.fn
        doc = (inspect.getdoc(fn) or "").split("\n")[0]
        modes = "rev" if prim.reverse_only else "fwd+rev"
        rows.append(f"{key} | {inspect.signature(fn)} | {modes} | {doc}")
    return "\n".join(rows)
