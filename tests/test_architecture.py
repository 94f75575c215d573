"""The package's import graph, read from the source with `ast`, against the table in
docs/architecture.md: allowed arrows only, no import cycle between any two files, no private name
used across modules, and no layer that overrides ``Layer.apply``.

Nothing here imports funcgrad or matches source text: every check reads the syntax tree, so a
comment or a string that happens to spell an import or a method changes nothing.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "funcgrad"
FILES = sorted(PACKAGE.rglob("*.py"))

# part -> the parts it may import (besides itself). The same table, in prose, is in
# docs/architecture.md; `test_the_docs_table_is_this_table` keeps the two equal.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "io": {"errors"},
    "paths": {"errors"},
    "data": {"errors", "paths"},
    "primitives": {"errors", "paths"},
    "testing": {"errors", "paths", "primitives"},
    "nn": {"errors", "paths", "primitives"},
    "losses": {"errors", "paths", "primitives"},
    "parallel": {"errors", "paths", "data"},
    "inspect": {"errors", "paths", "io", "primitives", "nn"},
    "train": {"errors", "paths", "io", "data", "primitives", "nn", "losses", "parallel"},
    "models": {"errors", "paths", "nn"},
    "interop": {"errors", "paths", "io", "nn", "models"},
    "export": {"errors", "paths", "io", "nn", "interop", "inspect"},
}
PACKAGE_ROOT = "funcgrad"  # the package's own __init__ and __main__: may import everything

# Cross-module private uses still allowed (none).
PENDING: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Import:
    """One funcgrad import: the module it loads, the name taken from it (``from m import name``;
    ``None`` for ``import m``) and its line."""

    module: str
    name: str | None
    line: int


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(f) for f in FILES}  # every funcgrad module, packages included


def part_of(module: str) -> str:
    """``funcgrad.nn.conv`` → ``nn``; the package's own ``__init__``/``__main__`` → ``funcgrad``."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "__main__":
        return PACKAGE_ROOT
    return parts[1]


def imports_in(
    source: str, module: str, is_package: bool, modules: set[str] = MODULES
) -> list[Import]:
    """Every funcgrad import in ``source`` (the text of ``module``), at any depth.

    Relative imports are resolved against the module's package; ``from pkg import name`` loads
    ``pkg.name`` when that is a module of its own, else ``pkg``.
    """
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Import(a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}".rstrip(".")
            for a in node.names:
                sub = f"{base}.{a.name}"
                target = sub if sub in modules else base
                found.append(Import(target, a.name, node.lineno))
    return [i for i in found if i.module == PACKAGE_ROOT or i.module.startswith("funcgrad.")]


def import_graph(sources: dict[str, tuple[str, bool]]) -> dict[str, set[str]]:
    """``module -> funcgrad modules it imports``, from ``module -> (source, is_package)``.

    Every import counts: at the top, under ``if TYPE_CHECKING:``, or deferred inside a function
    (a deferred import is how a cycle is usually hidden, not removed).
    """
    modules = MODULES | set(sources)
    return {
        m: {i.module for i in imports_in(src, m, pkg, modules) if i.module != m}
        for m, (src, pkg) in sources.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph``: its strongly connected components of two or more modules
    (Tarjan's algorithm), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def private_uses(source: str, module: str, is_package: bool) -> list[tuple[str, int]]:
    """Private names reached from another funcgrad module: imported, or as ``module._x``."""
    own_package = module if is_package else module.rpartition(".")[0]
    uses = []
    modules: dict[str, str] = {}  # local name -> funcgrad module it is bound to
    for imp in imports_in(source, module, is_package):
        if imp.name is None:
            continue
        if imp.module.rsplit(".", 1)[-1] == imp.name and imp.module in MODULES:
            modules[imp.name] = imp.module  # `from pkg import module`
            continue
        if imp.name.startswith("_") and imp.module != module:
            uses.append((f"{imp.module}.{imp.name}", imp.line))
        last = imp.module.rsplit(".", 1)[-1]
        if (
            last.startswith("_")
            and not last.startswith("__")
            and imp.module.rpartition(".")[0] != own_package
        ):
            uses.append((imp.module, imp.line))
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            uses.append((f"{modules[node.value.id]}.{node.attr}", node.lineno))
    return uses


def forbidden_imports(source: str, module: str, is_package: bool) -> list[str]:
    """The imports of ``module`` that ALLOWED does not allow, at any depth (a lazy import inside
    a function is an arrow too)."""
    part = part_of(module)
    if part == PACKAGE_ROOT:
        return []
    bad = []
    for imp in imports_in(source, module, is_package):
        if imp.module == PACKAGE_ROOT:
            bad.append(f"line {imp.line}: {part} imports the package root")
        elif part_of(imp.module) not in ALLOWED.get(part, set()) | {part}:
            bad.append(f"line {imp.line}: {part} imports {imp.module}")
    return bad


def layers_defining_apply(sources: dict[str, str]) -> list[str]:
    """Subclasses of ``Layer`` (direct or not, by their base names in the source) whose class body
    defines ``apply``, as ``module.Class``."""
    classes: dict[str, list[tuple[str, ast.ClassDef]]] = {}
    for module, source in sources.items():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef):
                classes.setdefault(node.name, []).append((module, node))

    def base_names(node: ast.ClassDef) -> list[str]:
        names = []
        for b in node.bases:
            b = b.value if isinstance(b, ast.Subscript) else b  # Generic[...] style bases
            if isinstance(b, ast.Name):
                names.append(b.id)
            elif isinstance(b, ast.Attribute):
                names.append(b.attr)
        return names

    layer_like = {"Layer"}
    changed = True
    while changed:
        changed = False
        for name, defs in classes.items():
            if name not in layer_like and any(set(base_names(d)) & layer_like for _, d in defs):
                layer_like.add(name)
                changed = True
    return sorted(
        f"{module}.{node.name}"
        for name, defs in classes.items()
        if name in layer_like and name != "Layer"
        for module, node in defs
        if any(
            isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef) and s.name == "apply"
            for s in node.body
        )
    )


def docs_table() -> dict[str, set[str]]:
    """``part -> parts it may import``, read from the table in docs/architecture.md."""
    table: dict[str, set[str]] = {}
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        m = re.fullmatch(r"\| `(\w+)`[^|]*\|([^|]*)\|", line.strip())
        if m:
            table[m.group(1)] = set(re.findall(r"`(\w+)`", m.group(2)))
    return table


def _sources() -> dict[str, tuple[str, bool]]:
    return {module_name(f): (f.read_text(), f.name == "__init__.py") for f in FILES}


# -- the package -------------------------------------------------------------------------------


def test_the_docs_table_is_this_table():
    docs = docs_table()
    assert docs.pop(PACKAGE_ROOT, None) is not None, "docs/architecture.md lacks the package row"
    assert docs == ALLOWED, "docs/architecture.md and ALLOWED in this file disagree"


def test_the_table_names_every_part_and_has_no_cycle():
    parts = {part_of(module_name(f)) for f in FILES} - {PACKAGE_ROOT}
    assert parts <= set(ALLOWED), f"parts missing from the table: {parts - set(ALLOWED)}"
    assert not cycles(ALLOWED), f"the allowed imports form a cycle: {cycles(ALLOWED)}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_table(path):
    bad = forbidden_imports(path.read_text(), module_name(path), path.name == "__init__.py")
    assert not bad, f"{path.relative_to(ROOT)} breaks docs/architecture.md:\n" + "\n".join(bad)


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_no_import_cycle_between_files(part):
    """No two files import each other, directly or around a loop: at the top, type-only (under
    ``if TYPE_CHECKING:``) or deferred inside a function, the dependency is there either way."""
    found = [c for c in cycles(import_graph(_sources())) if any(part_of(m) == part for m in c)]
    assert not found, f"import cycles through {part}: " + "; ".join(" ↔ ".join(c) for c in found)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_name_crosses_modules(path):
    rel = str(path.relative_to(ROOT))
    uses = private_uses(path.read_text(), module_name(path), path.name == "__init__.py")
    bad = [f"line {line}: {name}" for name, line in uses if (rel, name) not in PENDING]
    assert not bad, f"{rel} uses private names of other modules:\n" + "\n".join(bad)


def test_no_layer_defines_apply():
    """``Layer.apply`` alone states the return convention (``y``, or ``(y, new_state)`` with
    ``state=``); layers implement the hooks it calls and never define ``apply`` themselves."""
    sources = {m: src for m, (src, _) in _sources().items()}
    overriding = layers_defining_apply(sources)
    assert not overriding, f"layers that define apply: {overriding}"


# -- the checks can fail -----------------------------------------------------------------------

PROBE = "funcgrad.parallel._architecture_probe"


def test_the_checker_sees_forbidden_arrows_and_private_names():
    """A planted file with a bad import and a private use trips both checks."""
    source = (
        "from funcgrad.train import loop\n"
        "from funcgrad.nn.conv import _SPATIAL\n"
        "from .. import nn\n"
        "x = loop._x\n"
        "def later():\n"
        "    from funcgrad import losses\n"
    )
    bad = forbidden_imports(source, PROBE, False)
    assert [b.split(": ", 1)[1] for b in bad] == [
        "parallel imports funcgrad.train.loop",
        "parallel imports funcgrad.nn.conv",
        "parallel imports funcgrad.nn",
        "parallel imports funcgrad.losses",
    ]
    names = {n for n, _ in private_uses(source, PROBE, False)}
    assert names == {"funcgrad.nn.conv._SPATIAL", "funcgrad.train.loop._x"}


def test_the_checker_sees_cycles_between_files():
    """Two planted files that import each other (one relatively, the other type-only, or deferred
    inside a function) form a cycle; one-way arrows form none."""
    a = "from . import b\n"
    b = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from funcgrad.inspect.a import X\n"
    lazy = "def f():\n    from funcgrad.inspect.a import X\n"
    ab = import_graph({"funcgrad.inspect.a": (a, False), "funcgrad.inspect.b": (b, False)})
    assert ab == {"funcgrad.inspect.a": {"funcgrad.inspect.b"}, "funcgrad.inspect.b": {"funcgrad.inspect.a"}}  # fmt: skip
    assert cycles(ab) == [["funcgrad.inspect.a", "funcgrad.inspect.b"]]
    assert cycles(import_graph({"funcgrad.inspect.a": (a, False), "funcgrad.inspect.b": (lazy, False)})) == [["funcgrad.inspect.a", "funcgrad.inspect.b"]]  # fmt: skip
    assert cycles(import_graph({"funcgrad.inspect.a": (a, False), "funcgrad.inspect.b": ("", False)})) == []  # fmt: skip
    assert cycles({"x": {"y"}, "y": {"z"}, "z": {"x"}, "w": {"x"}}) == [["x", "y", "z"]]


def test_the_checker_sees_a_layer_that_defines_apply():
    """A subclass of a subclass of Layer that defines ``apply`` is found; a non-layer is not."""
    sources = {
        "funcgrad.nn.probe": "class Base(Layer):\n    def forward(self): ...\n"
        "class Leaf(nn.layer.Base):\n    def apply(self, params, x): ...\n"
        "class Other:\n    def apply(self): ...\n"
    }
    assert layers_defining_apply(sources) == ["funcgrad.nn.probe.Leaf"]
