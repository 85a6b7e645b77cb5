"""The docs say what the code does: README/docs code blocks and every docstring example run here."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import jaxprune

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _modules() -> list[str]:
    names = ["jaxprune"]
    for info in pkgutil.walk_packages(jaxprune.__path__, prefix="jaxprune."):
        names.append(info.name)
    # The studies' helpers have examples too (experiments/ is a package beside jaxprune/).
    names += sorted(f"experiments.{p.stem}" for p in (ROOT / "experiments").glob("[!_]*.py"))
    names += sorted(f"experiments.{p.stem}" for p in (ROOT / "experiments").glob("_[!_]*.py"))
    return names


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.name)
def test_markdown_python_blocks_run(path: Path, tmp_path, monkeypatch) -> None:
    blocks = FENCE.findall(path.read_text())
    monkeypatch.chdir(tmp_path)  # guides that write files write them here
    namespace: dict = {"__name__": f"doc_{path.stem}"}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"{path.name}[block {i}]", "exec"), namespace)
        except Exception as err:  # pragma: no cover - the message is the point
            raise AssertionError(f"{path.name} block {i} failed: {err!r}\n{block}") from err


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(
        module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
