"""The layering the architecture promises, read from the source: algorithm packages import no Ray or
MLflow, a family's spec module imports no family code (validating a spec imports no torch code), and
the files of a family import each other without circles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "platform" / "otu"
ALGORITHMS = ["ot", "classifiers", "llm", "vision", "tabular", "generative"]
FAMILIES = ["llm", "vision", "tabular", "generative"]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, top_level_only: bool) -> set[str]:
    """Modules ``path`` imports (at module level only, outside ``if TYPE_CHECKING``, when asked)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return found


@pytest.mark.parametrize("package", ALGORITHMS)
def test_algorithms_import_no_ray_or_mlflow(package):
    for path in (PACKAGE / package).rglob("*.py"):
        bad = {m for m in imports(path, top_level_only=False) if m.split(".")[0] in ("ray", "mlflow")}
        assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"


@pytest.mark.parametrize("family", FAMILIES)
def test_spec_modules_import_no_family_code(family):
    """``spec.py`` and the family's other spec modules (``*_spec.py``, which it may import) import only
    the platform's spec layer."""
    allowed = ("otu.sections", "otu.family", "otu.paths", "otu.errors")
    for path in [PACKAGE / family / "spec.py", *(PACKAGE / family).glob("*_spec.py")]:
        own = [m for m in imports(path, top_level_only=False) if m.startswith("otu.")]
        bad = [m for m in own if not m.startswith(allowed) and not _spec_module(m, family)]
        assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"


def _spec_module(module: str, family: str) -> bool:
    """``otu.<family>.<name>_spec`` (or a name imported from it)."""
    parts = module.split(".")
    return parts[:2] == ["otu", family] and len(parts) >= 3 and parts[2].endswith("_spec")


@pytest.mark.parametrize("family", FAMILIES)
def test_no_import_circles_inside_a_family(family):
    files = {module_name(p): p for p in (PACKAGE / family).rglob("*.py")}
    graph = {
        name: {m for m in imports(path, top_level_only=True) if m in files and m != name}
        for name, path in files.items()
    }
    done: set[str] = set()

    def visit(name: str, stack: list[str]) -> None:
        assert name not in stack, f"import circle: {' → '.join([*stack[stack.index(name) :], name])}"
        if name in done:
            return
        for target in sorted(graph[name]):
            visit(target, [*stack, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
