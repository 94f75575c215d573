"""Every ```python block of README.md and docs/*.md runs: a page's blocks in order, in one
namespace, in JAX's default 32-bit mode, in a temporary working directory.

A block that must not run here (it needs a GPU, several hosts or a download, or is wrong on
purpose) says so on the line right before its fence, with a reason::

    <!-- no-run: needs two hosts -->

Blocks written as a console session (``>>>`` prompts) run their code; the output shown is the
documentation's (often measured on another machine) and is not compared.
"""

from __future__ import annotations

import re
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path

import backends
import jax
import pytest

from funcgrad.primitives import registry

ROOT = Path(__file__).resolve().parents[1]
NO_RUN = re.compile(r"<!--\s*no-run:\s*(\S.*?)\s*-->")
FENCE = re.compile(r"^(`{3,})python\s*$")
# Pages whose meshes need this many devices: the 8 that tests/conftest.py simulates on CPU (a
# machine whose default backend has fewer, one GPU say, skips them).
NEEDS_DEVICES = {"scaling.md": 8}
PAGE_CPU_SECONDS = 120  # a guide whose blocks take longer shrinks its numbers (CPU time: the
# machine may be shared, wall time is not the page's own)


@dataclass(frozen=True)
class Block:
    line: int  # of the first code line, 1-based
    code: str
    skip_reason: str | None


def python_blocks(text: str) -> list[Block]:
    """The ```python blocks of a Markdown page, each with the no-run reason before it, if any."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == m.group(1))
        before = lines[i - 1].strip() if i else ""
        reason = NO_RUN.fullmatch(before)
        blocks.append(
            Block(i + 2, "\n".join(lines[i + 1 : end]), reason.group(1) if reason else None)
        )
        i = end + 1
    return blocks


def runnable(code: str) -> str:
    """The code of a block; a console session (``>>>``) keeps its input lines only."""
    lines = code.splitlines()
    if not any(ln.lstrip().startswith(">>>") for ln in lines):
        return code
    kept = []
    for ln in lines:
        stripped = ln.lstrip()
        if stripped.startswith((">>> ", "... ")) or stripped in (">>>", "..."):
            kept.append(stripped[4:])
    return "\n".join(kept)


PAGES = [
    p
    for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    if python_blocks(p.read_text())
]


@pytest.fixture(scope="module")
def cheap_compiles():
    """XLA's cheapest settings while the pages run. Their blocks run mostly op by op, each op a
    small XLA program compiled on first use, and compile in about a third less CPU time so (what
    a block computes is the same; it runs slower, and only that it runs, with the blocks' own
    asserts, is checked here). The programs so compiled are dropped after this module, so no
    later test reuses them; pages share them with each other."""
    with backends.cheap_compiles():
        yield


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_block_of_the_page_runs(page, tmp_path, monkeypatch, cheap_compiles):
    if len(jax.devices()) < NEEDS_DEVICES.get(page.name, 1):
        pytest.skip(f"{page.name} needs {NEEDS_DEVICES[page.name]} devices")
    monkeypatch.chdir(tmp_path)
    x64 = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", False)  # the mode users run
    # a module of its own, as a script is: dataclasses look their class's module up
    module = types.ModuleType(f"docs_{page.stem}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    # primitives a page registers are gone after it, as in a fresh interpreter
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    start = time.process_time()
    try:
        for block in python_blocks(page.read_text()):
            if block.skip_reason is None:
                name = f"{page.relative_to(ROOT)}:{block.line}"
                exec(compile(runnable(block.code), name, "exec"), vars(module))
    finally:
        jax.config.update("jax_enable_x64", x64)
    seconds = time.process_time() - start
    assert seconds < PAGE_CPU_SECONDS, (
        f"{page.name} took {seconds:.0f} s of CPU; shrink its numbers"
    )


def test_no_run_is_rare_and_says_why():
    skipped = [
        (p.name, b.line, b.skip_reason)
        for p in PAGES
        for b in python_blocks(p.read_text())
        if b.skip_reason is not None
    ]
    assert all(reason for _, _, reason in skipped)
    total = sum(len(python_blocks(p.read_text())) for p in PAGES)
    assert len(skipped) <= total // 5, f"too many blocks left out: {skipped}"


def test_the_reader_finds_blocks_markers_and_sessions():
    page = (
        "text\n```python\nx = 1\n```\n<!-- no-run: needs two hosts -->\n```python\nboom()\n```\n"
        "```bash\nls\n```\n```python\n>>> y = x + 1\n>>> print(y)\n2\n```\n"
    )
    blocks = python_blocks(page)
    assert [(b.line, b.skip_reason) for b in blocks] == [(3, None), (7, "needs two hosts"), (13, None)]  # fmt: skip
    assert runnable(blocks[2].code) == "y = x + 1\nprint(y)"
