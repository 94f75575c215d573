"""One error family: every error funcgrad raises on purpose is a `FuncgradError` and the builtin it
stands for, and all of them are defined in funcgrad/errors.py.

The bad-input battery (tests/bad_input_cases.py) is run for the classes it raises; the source of
every module is read with `ast` for ``raise ValueError(...)`` and for exception classes defined
elsewhere.
"""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import pytest
from bad_input_cases import cases

from funcgrad import errors

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "funcgrad"
FILES = sorted(PACKAGE.rglob("*.py"))
CASES = cases()

BUILTIN_EXCEPTIONS = {
    name
    for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, BaseException)
}
# Raised on purpose and not errors: the exit status of the command line.
NOT_ERRORS = {"SystemExit"}

# Files allowed, for now, to raise a builtin class (module -> why); none today.
PENDING = {}


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_each_bad_input_raises_a_funcgrad_error_and_its_builtin(case_id):
    case = CASES[case_id]
    with pytest.raises(BaseException) as info:
        case.call()
    err = info.value
    assert isinstance(err, errors.FuncgradError), f"{type(err).__name__}: {err}"
    assert isinstance(err, case.builtin), f"{type(err).__name__} is not a {case.builtin.__name__}"
    assert isinstance(err, case.error), f"{type(err).__name__} is not a {case.error.__name__}"


ERROR_CLASSES = [
    v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, BaseException)
]


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_every_error_class_is_a_funcgrad_error_and_a_builtin(cls):
    """Each class is a FuncgradError and, but for the base itself, a builtin more precise than
    Exception (directly, or through the family member it refines)."""
    assert issubclass(cls, errors.FuncgradError)
    if cls is errors.FuncgradError:
        assert cls.__bases__ == (Exception,)
        return
    builtin = [
        b
        for b in cls.__mro__
        if b.__name__ in BUILTIN_EXCEPTIONS and b not in (Exception, BaseException)
    ]
    assert builtin, f"{cls.__name__} stands for no builtin: {cls.__mro__}"


def builtin_raises(source: str) -> list[tuple[int, str]]:
    """``(line, class)`` of each ``raise Builtin(...)`` or ``raise Builtin`` in ``source``.

    Allowed: a bare ``raise`` or ``raise err`` (re-raises), `SystemExit`, and
    ``raise NotImplementedError`` as the whole body of a method (after its docstring): an
    abstract method.
    """
    tree = ast.parse(source)
    abstract: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                body = body[1:]
            if len(body) == 1 and isinstance(body[0], ast.Raise):
                abstract.add(id(body[0]))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Raise) or node.exc is None:
            continue
        exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
        name = exc.id if isinstance(exc, ast.Name) else None
        if name is None or name not in BUILTIN_EXCEPTIONS or name in NOT_ERRORS:
            continue
        if name == "NotImplementedError" and id(node) in abstract:
            continue
        found.append((node.lineno, name))
    return sorted(found)


def exception_classes(source: str) -> list[tuple[int, str]]:
    """``(line, class)`` of each class in ``source`` whose bases name an exception: a builtin one,
    a class of funcgrad/errors.py, or any name ending in Error, Exception or Warning (another
    package's exception)."""
    family = {c.__name__ for c in ERROR_CLASSES}
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            bases = {
                b.id if isinstance(b, ast.Name) else b.attr
                for b in node.bases
                if isinstance(b, ast.Name | ast.Attribute)
            }
            if bases & (BUILTIN_EXCEPTIONS | family) or any(
                b.endswith(("Error", "Exception", "Warning")) for b in bases
            ):
                found.append((node.lineno, node.name))
    return sorted(found)


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _pending(path: Path) -> object:
    why = PENDING.get(_rel(path))
    marks = [pytest.mark.xfail(strict=True, reason=why)] if why else []
    return pytest.param(path, marks=marks, id=_rel(path))


@pytest.mark.parametrize("path", [_pending(p) for p in FILES])
def test_no_module_raises_a_builtin_exception(path):
    bad = [f"line {line}: raise {name}" for line, name in builtin_raises(path.read_text())]
    assert not bad, f"{_rel(path)} raises builtins; use funcgrad.errors:\n" + "\n".join(bad)


@pytest.mark.parametrize("path", FILES, ids=_rel)
def test_exception_classes_live_in_errors_py(path):
    if path == PACKAGE / "errors.py":
        return
    bad = [f"line {line}: class {name}" for line, name in exception_classes(path.read_text())]
    assert not bad, f"{_rel(path)} defines exceptions outside funcgrad/errors.py:\n" + "\n".join(
        bad
    )


def test_the_source_checks_can_fail():
    source = (
        "class Base:\n"
        "    def apply(self):\n"
        '        """Abstract."""\n'
        "        raise NotImplementedError\n"
        "def f(x):\n"
        "    try:\n"
        "        return g(x)\n"
        "    except KeyError as err:\n"
        "        raise ConfigError('no') from err\n"
        "    except OSError:\n"
        "        raise\n"
        "    if x:\n"
        "        raise NotImplementedError('not yet')\n"
        "    raise ValueError(f'bad {x}')\n"
        "class LocalError(errors.ConfigError):\n    pass\n"
        "class Other(RuntimeError):\n    pass\n"
        "class Fine:\n    pass\n"
        "class Wrapped(safetensors.SafetensorError):\n    pass\n"
    )
    assert builtin_raises(source) == [(13, "NotImplementedError"), (14, "ValueError")]
    assert exception_classes(source) == [(15, "LocalError"), (17, "Other"), (21, "Wrapped")]
