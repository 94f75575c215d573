"""The package's import graph against the table in docs/architecture.md: allowed arrows only,
no cycle, no private name used across modules, one return convention for ``Layer.apply``."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "funcgrad"

# Cross-module private uses still allowed (none).
PENDING: set[tuple[str, str]] = set()


def allowed_table() -> dict[str, set[str]]:
    """``part -> parts it may import``, read from the table in docs/architecture.md."""
    table: dict[str, set[str]] = {}
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        m = re.fullmatch(r"\| `(\w+)`[^|]*\|([^|]*)\|", line.strip())
        if m:
            table[m.group(1)] = set(re.findall(r"`(\w+)`", m.group(2)))
    return table


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part_of(module: str) -> str:
    """``funcgrad.nn.conv`` → ``nn``; the package's own ``__init__``/``__main__`` → ``funcgrad``."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "__main__":
        return "funcgrad"
    return parts[1]


def imports(path: Path) -> list[tuple[str, str | None, int]]:
    """Every funcgrad import in a file, at any depth: ``(module, imported name or None, line)``."""
    tree = ast.parse(path.read_text())
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}".rstrip(".")
            found += [(base, a.name, node.lineno) for a in node.names]
    return [f for f in found if f[0] == "funcgrad" or f[0].startswith("funcgrad.")]


def private_uses(path: Path) -> list[tuple[str, int]]:
    """Private names reached from another funcgrad module: imported, or as ``module._x``."""
    here = module_name(path)
    own_package = here.rpartition(".")[0] if path.name != "__init__.py" else here
    uses = []
    modules: dict[str, str] = {}  # local name -> funcgrad module it is bound to
    for module, name, line in imports(path):
        if name is None:
            continue
        target = f"{module}.{name}"
        if (PACKAGE / Path(*target.split(".")[1:])).with_suffix(".py").exists() or (
            PACKAGE / Path(*target.split(".")[1:]) / "__init__.py"
        ).exists():
            modules[name] = target
            continue
        if name.startswith("_") and module != here:
            uses.append((f"{module}.{name}", line))
        last = module.rsplit(".", 1)[-1]
        if (
            last.startswith("_")
            and not last.startswith("__")
            and module.rpartition(".")[0] != own_package
        ):
            uses.append((module, line))
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            uses.append((f"{modules[node.value.id]}.{node.attr}", node.lineno))
    return uses


FILES = sorted(PACKAGE.rglob("*.py"))


def test_the_table_names_every_part_and_has_no_cycle():
    table = allowed_table()
    parts = {part_of(module_name(f)) for f in FILES}
    assert parts <= set(table), f"parts missing from docs/architecture.md: {parts - set(table)}"
    below = {p: deps for p, deps in table.items() if p != "funcgrad"}

    def reaches(start: str, goal: str, seen: frozenset[str] = frozenset()) -> bool:
        return any(
            d == goal or (d not in seen and reaches(d, goal, seen | {d}))
            for d in below.get(start, ())
        )

    cycles = [p for p in below if reaches(p, p)]
    assert not cycles, f"the allowed imports form a cycle through {cycles}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_table(path):
    table = allowed_table()
    part = part_of(module_name(path))
    if part == "funcgrad":
        return
    bad = [
        f"line {line}: {part} imports {module}"
        for module, _, line in imports(path)
        if module != "funcgrad" and part_of(module) not in table[part] | {part}
    ]
    bad += [
        f"line {line}: {part} imports the package root"
        for m, _, line in imports(path)
        if m == "funcgrad"
    ]
    assert not bad, f"{path.relative_to(ROOT)} breaks docs/architecture.md:\n" + "\n".join(bad)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_name_crosses_modules(path):
    rel = str(path.relative_to(ROOT))
    bad = [
        f"line {line}: {name}" for name, line in private_uses(path) if (rel, name) not in PENDING
    ]
    assert not bad, f"{rel} uses private names of other modules:\n" + "\n".join(bad)


def test_the_checker_sees_forbidden_arrows_and_private_names(tmp_path, monkeypatch):
    """The checks above can fail: a planted file with a bad import and a private use trips both."""
    fake = PACKAGE / "parallel" / "_architecture_probe.py"
    source = "from funcgrad.train import loop\nfrom funcgrad.nn.conv import _SPATIAL\nx = loop._x\n"
    monkeypatch.setattr(
        Path, "read_text", lambda self, *a, **k: source if self == fake else _read(self)
    )
    found = [m for m, _, _ in imports(fake)]
    assert (
        "funcgrad.train" in found and part_of("funcgrad.train") not in allowed_table()["parallel"]
    )
    names = {n for n, _ in private_uses(fake)}
    assert names == {"funcgrad.nn.conv._SPATIAL", "funcgrad.train.loop._x"}


_read = Path.read_text


def test_no_layer_overrides_apply():
    """``Layer.apply`` alone states the return convention: ``y``, or ``(y, new_state)`` with state=.

    A layer may add keywords (the recurrent layers' ``lengths=``) and hand over to it.
    """
    import inspect

    from funcgrad import nn

    seen: set[type] = set()
    stack = [nn.Layer]
    while stack:
        cls = stack.pop()
        seen.add(cls)
        stack.extend(c for c in cls.__subclasses__() if c not in seen)
    overriding = [
        c.__qualname__
        for c in seen
        if c is not nn.Layer
        and "apply" in vars(c)
        and "super().apply(" not in inspect.getsource(vars(c)["apply"])
    ]
    assert not overriding, f"layers that override apply: {overriding}"
