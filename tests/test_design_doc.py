"""docs/design.md stays true: the sections docstrings cite exist, and the modules it names exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DESIGN = ROOT / "docs" / "design.md"
SRC = ROOT / "src"


def _headings() -> set[str]:
    return {line[3:].strip() for line in DESIGN.read_text().splitlines() if line.startswith("## ")}


def test_every_section_a_docstring_cites_exists() -> None:
    cited: dict[str, list[str]] = {}
    for path in sorted((SRC / "trainguard").rglob("*.py")):
        text = path.read_text()
        # docs/design.md, "The commit protocol" [and "Recovery"]
        for match in re.finditer(r'docs/design\.md,\s+((?:"[^"]+"(?:\s+and\s+)?)+)', text):
            for section in re.findall(r'"([^"]+)"', match[1]):
                cited.setdefault(" ".join(section.split()), []).append(str(path.relative_to(SRC)))
    assert cited, "no docstring cites docs/design.md - the check below would prove nothing"
    missing = {section: where for section, where in cited.items() if section not in _headings()}
    assert not missing, f"cited sections missing from docs/design.md: {missing}"


def test_every_module_the_design_names_exists() -> None:
    names = re.findall(r"`([\w/.]+\.py|trainguard/[\w/]+/)`", DESIGN.read_text())
    assert len(names) > 30
    files = {p.name for p in (SRC / "trainguard").rglob("*.py")}

    def exists(name: str) -> bool:
        if name.startswith("trainguard/"):
            return (SRC / name).exists()
        return (ROOT / name).exists() if "/" in name else name in files

    missing = [name for name in names if not exists(name)]
    assert not missing, f"docs/design.md names modules that do not exist: {missing}"
