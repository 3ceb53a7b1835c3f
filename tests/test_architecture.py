"""The shape of the package, checked from its source with ``ast``: no import cycles, layers that only import
downward (docs/design.md, "Layers"), small modules, and nobody outside a package reaching into its private
modules."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "trainguard"

# docs/design.md, "Layers": a module may import its own layer (if that makes no cycle) and the ones below.
LAYERS: dict[str, int] = {
    "trainguard.errors": 0,
    "trainguard.names": 0,
    "trainguard._os": 0,
    "trainguard.config": 1,
    "trainguard.budget": 1,
    "trainguard.fingerprint": 1,
    "trainguard.notify": 1,
    "trainguard.registry": 2,
    "trainguard.checkpoints": 3,
    "trainguard.promotion": 4,
    "trainguard.guard": 5,
    "trainguard.supervise": 6,
    "trainguard.integrations": 6,
    "trainguard.distributed": 6,
    "trainguard": 7,  # the package's own __init__: the public names
    "trainguard.cli": 8,
    "trainguard.__main__": 9,
}
MAX_LINES = 420  # "modules <= ~400 lines, one concept each"


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        dotted = path.relative_to(SRC).with_suffix("").as_posix().replace("/", ".")
        found[dotted.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import that runs (module level or inside a function); not those under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            yield from (n for branch in node.orelse for n in _runtime_imports(branch))
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _runtime_imports(node)


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """The trainguard modules an import statement executes."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module if MODULES[module].name == "__init__.py" else module.rsplit(".", 1)[0]
            for _ in range(node.level - 1):
                package = package.rsplit(".", 1)[0]
            base = f"{package}.{base}" if base else package
        # `from pkg import name`: the submodule pkg.name if there is one, else pkg itself.
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    for name in names:
        if not (name == PACKAGE or name.startswith(PACKAGE + ".")):
            continue
        # Importing a.b.c runs the __init__ of a.b first - unless the importer lives in a.b already.
        parts = name.split(".")
        for depth in range(2, len(parts)):
            parent = ".".join(parts[:depth])
            if not module.startswith(parent + ".") and parent in MODULES:
                yield parent
        if name in MODULES:
            yield name


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        edges = {target for node in _runtime_imports(tree) for target in _targets(module, node)}
        graph[module] = edges - {module}
    return graph


GRAPH = _graph()


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each a cycle of imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _layer(module: str) -> int:
    best = max((prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")), key=len)
    return LAYERS[best]


def test_the_graph_sees_the_imports() -> None:
    # The checks below are only as good as the graph: it must see module-level, relative and function-level
    # imports (a lazy import inside a function still closes a cycle).
    assert "trainguard.registry._core" in GRAPH["trainguard.registry._leases"]
    assert "trainguard.checkpoints.store" in GRAPH["trainguard.checkpoints.adopt"]
    assert "trainguard.supervise" in GRAPH["trainguard.cli.watchdog"]  # imported inside cmd_watchdog
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    cycles = _cycles(GRAPH)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_layers_only_import_downward() -> None:
    upward = [
        f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})"
        for module, targets in GRAPH.items()
        for target in targets
        if _layer(target) > _layer(module)
    ]
    assert not upward, "\n".join(upward)


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        _layer(module)  # raises ValueError (empty max) for a module outside every layer


def test_private_modules_stay_inside_their_package() -> None:
    # `_name` modules are a package's internals: another package uses what the package exports.
    # (trainguard._os is the shared private floor every layer stands on.)
    reaches = []
    for module, targets in GRAPH.items():
        for target in targets:
            parts = target.split(".")
            private = next((i for i, part in enumerate(parts) if part.startswith("_") and i > 0), None)
            if private is None or parts[private] == "_os":
                continue
            owner = ".".join(parts[:private])
            if not (module == owner or module.startswith(owner + ".")):
                reaches.append(f"{module} imports {target}")
    assert not reaches, "\n".join(reaches)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_small(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines (house rule: about 400, one concept each)"


# The public names before the package was organised by defence (issue 9): each keeps working.
PUBLIC_BEFORE = [
    "CheckpointNotFound",
    "CheckpointRecord",
    "CheckpointRejected",
    "CheckpointStore",
    "CheckpointWriteError",
    "CommitFenced",
    "CommitRefused",
    "ConfigError",
    "CorruptCheckpoint",
    "FingerprintMismatch",
    "Guard",
    "InvalidName",
    "Lease",
    "LeaseHeld",
    "LeaseLost",
    "LoadedCheckpoint",
    "Registry",
    "RegistryError",
    "Stop",
    "StopReason",
    "TrainguardError",
    "UnsafeCheckpoint",
    "VerifyReport",
    "__version__",
    "live",
    "retention",
]


def test_public_names_keep_working() -> None:
    # (ruff's RUF022 keeps every __all__ sorted.)
    import trainguard

    assert set(PUBLIC_BEFORE) <= set(trainguard.__all__)
    assert all(hasattr(trainguard, name) for name in trainguard.__all__)
    assert callable(trainguard.live.load) and callable(trainguard.retention.keep_last)
