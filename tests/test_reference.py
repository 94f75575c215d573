"""The API reference site: every public name has a docstring, and `mkdocs build --strict`
(what scripts/docs runs) succeeds with an anchor for each of them."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "scripts/gen_reference.py")
assert _spec is not None and _spec.loader is not None
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)
BUILD_SECONDS = 90  # the build takes ~10 s on a shared 2-core machine; keep it cheap


@pytest.fixture(scope="module")
def package():
    return ref.load()


def test_every_public_name_has_a_docstring(package):
    missing = ref.undocumented(package, ref.modules(package))
    assert not missing, f"public names without a docstring: {', '.join(missing)}"


def test_the_reference_lists_what_python_exports(package):
    # griffe reads __all__ statically; it must agree with the package Python imports
    for path in ref.modules(package):
        exported = getattr(importlib.import_module(path), "__all__", None)
        if exported is not None:
            assert ref.public_names(ref.member(package, path)) == list(exported), path
    # a function imported over its own submodule is the function, as at run time
    assert ref.member(package, "funcgrad.nn")["generate"].final_target.is_function


def test_the_check_names_each_public_name_without_a_docstring(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg/__init__.py").write_text(
        '"""A package."""\n__all__ = ["f", "g", "C"]\n'
        'def f():\n    """Documented."""\ndef g():\n    pass\nclass C:\n    pass\ndef h():\n    pass\n'
    )
    package = ref.load("pkg", tmp_path)
    assert ref.undocumented(package, ["pkg"]) == ["pkg.g", "pkg.C"]


def test_the_home_page_is_the_readme_with_links_from_docs():
    page = ref.home_page("[a](docs/training.md#fit) [b](examples/x.py) [c](https://x.org/docs/y)")
    assert page == "[a](training.md#fit) [b](repo/examples/x.py) [c](https://x.org/docs/y)"


def test_the_site_builds_strict_with_an_anchor_per_public_name(package, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stdout + done.stderr
    assert seconds < BUILD_SECONDS, f"the site took {seconds:.0f} s to build"
    assert "A one-screen tour" in (tmp_path / "index.html").read_text()
    documented = ref.modules(package)
    missing = []
    for path in documented:
        page = tmp_path / ref.page_name(path).removesuffix(".md") / "index.html"
        ids = set(re.findall(r'\sid="([^"]+)"', page.read_text()))
        missing += [path] * (path not in ids)
        for name in ref.public_names(ref.member(package, path)):
            full = f"{path}.{name}"
            if full not in documented and full not in ids:  # a module's anchor is its page's
                missing.append(full)
    assert not missing, f"no anchor in the site for: {', '.join(missing)}"
