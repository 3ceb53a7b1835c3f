"""The README's worked example runs as written (in a scratch directory)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest


def test_readme_python_example_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.DOTALL)
    assert code is not None
    _run(code[1], tmp_path)
    printed = capsys.readouterr().out
    assert "['ep00000050-t1', 'ep00000075-t1', 'ep00000100-t1']" in printed
    assert "stale fencing token 1: superseded by token 2" in printed


def test_readme_pytorch_loop_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    loop = next(b for b in blocks if "tg.Guard(" in b)
    _run(loop, tmp_path)
    assert capsys.readouterr().out.strip().endswith("episodes")  # the budget ended it
    _run(loop, tmp_path)  # a second run resumes, and finds the budget already spent
    assert capsys.readouterr().out.strip().endswith("episodes")


def _run(code: str, directory: Path) -> None:
    cwd = Path.cwd()
    os.chdir(directory)
    try:
        exec(compile(code, "README.md", "exec"), {})  # our own README, not untrusted input
    finally:
        os.chdir(cwd)
