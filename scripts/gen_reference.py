"""MkDocs hook (mkdocs.yml `hooks:`) that generates the site's home page and API reference.

The home page is README.md with its links made relative to docs/; the reference has one page per
public module listing each public name (``__all__``, else what griffe calls public) under its own
heading, so names added later appear without editing a page. A public name without a docstring
is logged as a warning, which `mkdocs build --strict` turns into a failed build.
"""

from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path
from typing import Any

import griffe

ROOT = Path(__file__).resolve().parents[1]
MODULES = [
    "funcgrad",
    "funcgrad.nn",
    "funcgrad.losses",
    "funcgrad.train",
    "funcgrad.primitives",
    "funcgrad.inspect",
    "funcgrad.parallel",
    "funcgrad.interop",
    "funcgrad.export",
    "funcgrad.testing",
    "funcgrad.data",
    "funcgrad.errors",
]
OPTIONAL_MODULES = ["funcgrad.models"]  # documented when it exists
REPO_FILES = "repo"  # site folder for repository files the guides link to (examples/...)
LINK = re.compile(r"(\]\()([^)\s#]+)")

EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)

log = logging.getLogger("mkdocs.plugins.funcgrad_reference")


class FuncgradDocs(griffe.Extension):
    """Griffe extension (mkdocs.yml) that makes griffe's funcgrad the one Python imports.

    A docstring's ``Example:`` becomes its examples section (Google style allows both spellings;
    griffe reads only ``Examples:`` as doctests, and would render the other as prose). A
    function imported over its own submodule (``from .generate import generate`` in
    ``funcgrad/nn/__init__.py``) is the package's member, as at run time, not the submodule.
    """

    def on_instance(self, *, obj: griffe.Object, **_: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = EXAMPLE.sub(r"\1Examples:", obj.docstring.value)

    def on_package(self, *, pkg: griffe.Module, **_: Any) -> None:
        modules = [pkg]
        while modules:
            module = modules.pop()
            for name, sub in list(module.members.items()):
                if not isinstance(sub, griffe.Module):
                    continue
                target = module.imports.get(name)
                if target is not None and target != sub.path:
                    module.set_member(name, griffe.Alias(name, target, parent=module))
                else:
                    modules.append(sub)


def load(name: str = "funcgrad", root: Path = ROOT) -> griffe.Module:
    """A package as griffe reads it (statically, as mkdocstrings renders it)."""
    extensions = griffe.load_extensions(FuncgradDocs)
    package = griffe.load(name, search_paths=[str(root)], extensions=extensions)
    assert isinstance(package, griffe.Module)
    return package


def modules(package: griffe.Module) -> list[str]:
    """The documented modules: MODULES and those of OPTIONAL_MODULES that exist."""
    optional = [m for m in OPTIONAL_MODULES if m.split(".", 1)[1] in package.members]
    return MODULES + optional


def member(package: griffe.Module, path: str) -> griffe.Object | griffe.Alias:
    """The griffe object at a dotted path (``funcgrad.nn.Dense``)."""
    return package if path == package.path else package[path.removeprefix(package.path + ".")]


def public_names(module: griffe.Object | griffe.Alias) -> list[str]:
    """A module's public names: its ``__all__``, else the public names it defines itself."""
    if module.exports is not None:
        return [str(name) for name in module.exports]
    return [
        name
        for name, obj in module.members.items()
        if obj.is_public and not obj.is_alias and not obj.is_module
    ]


def undocumented(package: griffe.Module, paths: list[str]) -> list[str]:
    """The public names of the modules at ``paths`` whose object has no docstring."""
    missing = []
    for path in paths:
        module = member(package, path)
        for name in public_names(module):
            obj = module[name]
            target = obj.final_target if obj.is_alias else obj
            if not (target.docstring and target.docstring.value.strip()):
                missing.append(f"{path}.{name}")
    return missing


def page_name(module: str) -> str:
    """The reference page of a module: ``reference/nn.md``; funcgrad's own is ``reference/funcgrad.md``."""
    return f"reference/{module.removeprefix('funcgrad.')}.md"


def reference_page(package: griffe.Module, path: str) -> str:
    """Markdown for one module: its docstring, then one mkdocstrings entry per public name."""
    module = member(package, path)
    lines = [f"::: {path}", "    options:", "      heading_level: 1", "      members: false", ""]
    for name in public_names(module):
        obj = module[name]
        target = obj.final_target if obj.is_alias else obj
        if target.is_module:  # a submodule has its own page; the entry links there
            full = f"{path}.{name}"
            link = posixpath.basename(page_name(full))
            lines += [f"## `{full}`", "", f"See [{full}]({link}).", ""]
        else:
            lines += [f"::: {path}.{name}", ""]
    return "\n".join(lines)


def home_page(readme: str) -> str:
    """README.md as the site's index: docs/ links lose the prefix, other files go to repo/."""

    def fix(m: re.Match[str]) -> str:
        url = m.group(2)
        if "://" in url or url.startswith(("/", "mailto:")):
            return m.group(0)
        if url.startswith("docs/"):
            return m.group(1) + url.removeprefix("docs/")
        return m.group(1) + f"{REPO_FILES}/{url}"

    return LINK.sub(fix, readme)


def pages_in(nav: Any) -> set[str]:
    """Every page a navigation (mkdocs.yml's ``nav``) names."""
    if isinstance(nav, str):
        return {nav}
    items = nav.values() if isinstance(nav, dict) else nav
    return set().union(*(pages_in(item) for item in items))


def on_config(config: Any) -> Any:
    """Complete the navigation: guides mkdocs.yml does not name yet, then the reference pages."""
    nav = list(config["nav"] or [])
    docs = Path(config["docs_dir"])
    named = pages_in(nav)
    unnamed = [p.relative_to(docs).as_posix() for p in sorted(docs.glob("*.md"))]
    nav += [page for page in unnamed if page not in named]
    nav.append({"Reference": [page_name(m) for m in modules(load())]})
    config["nav"] = nav
    return config


def on_files(files: Any, config: Any) -> Any:
    """Add the home page, the reference pages and the repository files the guides link to."""
    from mkdocs.structure.files import File

    package = load()
    home = home_page((ROOT / "README.md").read_text())
    files.append(File.generated(config, "index.md", content=home))
    for path in modules(package):
        files.append(File.generated(config, page_name(path), content=reference_page(package, path)))
    linked = set()
    for page in [*Path(config["docs_dir"]).glob("*.md"), ROOT / "README.md"]:
        for m in LINK.finditer(page.read_text()):
            target = (page.parent / m.group(2)).resolve()
            docs = Path(config["docs_dir"]).resolve()
            if target.is_file() and ROOT in target.parents and docs not in target.parents:
                linked.add(target.relative_to(ROOT).as_posix())
    for rel in sorted(linked - {"README.md"}):
        files.append(File.generated(config, f"{REPO_FILES}/{rel}", abs_src_path=str(ROOT / rel)))
    for name in undocumented(package, modules(package)):
        log.warning(f"{name} is public but has no docstring")
    return files


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """A guide's link to a repository file outside docs/ (``../examples/x.py``) goes to its copy."""
    if page.file.src_uri.count("/") or page.file.src_uri == "index.md":
        return markdown
    return LINK.sub(
        lambda m: (
            m.group(1) + f"{REPO_FILES}/{m.group(2)[3:]}"
            if m.group(2).startswith("../")
            else m.group(0)
        ),
        markdown,
    )
