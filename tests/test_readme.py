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
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        exec(compile(code[1], "README.md", "exec"), {})  # our own README, not untrusted input
    finally:
        os.chdir(cwd)
    printed = capsys.readouterr().out
    assert "['ep00000050-t1', 'ep00000075-t1', 'ep00000100-t1']" in printed
    assert "stale fencing token 1: superseded by token 2" in printed
