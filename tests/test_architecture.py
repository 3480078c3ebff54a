"""The architecture's rules, read from the code itself (docs/architecture.md explains them).

The import graph comes from the AST of every module, imports inside functions included: it must have
no cycle, and no edge that points up the layers (the torch-free core imports nothing else of edgekit;
runtime, bench, report and the emulated target import no training code; the training loop imports
none of the stages that use it). Task names appear only in their task's spec file.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "edgekit"

# The torch-free core: what every other layer may import, and which imports nothing else of edgekit.
CORE = {
    "edgekit",
    "edgekit.errors",
    "edgekit.artifacts",
    "edgekit.records",
    "edgekit.resources",
    "edgekit.registry",
    "edgekit.layout",
    "edgekit.processes",
    "edgekit.tasks",
    "edgekit.tasks.base",
    "edgekit.tasks.classification",
    "edgekit.tasks.text2text",
}
TRAINING = (
    "edgekit.train",
    "edgekit.distill",
    "edgekit.compress",
    "edgekit.export",
    "edgekit.models",
    "edgekit.stages",
    "edgekit.pipeline",
    "edgekit.sweep",
)
# layer prefix -> prefixes it must never import
FORBIDDEN = {
    "edgekit.runtime": TRAINING + ("edgekit.bench", "edgekit.report", "edgekit.cli"),
    "edgekit.bench": TRAINING + ("edgekit.report", "edgekit.cli"),
    "edgekit.report": TRAINING + ("edgekit.cli",),
    "edgekit.emulate": TRAINING + ("edgekit.report", "edgekit.cli"),
    "edgekit.targets": TRAINING + ("edgekit.report", "edgekit.cli"),
    "edgekit.data": TRAINING + ("edgekit.runtime", "edgekit.bench", "edgekit.report", "edgekit.cli"),
    "edgekit.recipe": TRAINING + ("edgekit.runtime", "edgekit.bench", "edgekit.report", "edgekit.cli"),
    "edgekit.metrics": TRAINING + ("edgekit.runtime", "edgekit.bench", "edgekit.report", "edgekit.cli"),
    "edgekit.models": (
        "edgekit.train",
        "edgekit.distill",
        "edgekit.compress",
        "edgekit.export",
        "edgekit.stages",
        "edgekit.pipeline",
        "edgekit.cli",
    ),
    "edgekit.train": (
        "edgekit.distill",
        "edgekit.compress",
        "edgekit.export",
        "edgekit.stages",
        "edgekit.pipeline",
        "edgekit.sweep",
        "edgekit.report",
        "edgekit.cli",
    ),
    "edgekit.compress": ("edgekit.distill", "edgekit.export", "edgekit.stages", "edgekit.pipeline", "edgekit.cli"),
    "edgekit.distill": ("edgekit.export", "edgekit.stages", "edgekit.pipeline", "edgekit.cli"),
    "edgekit.export": (
        "edgekit.distill",
        "edgekit.compress",
        "edgekit.train",
        "edgekit.stages",
        "edgekit.pipeline",
        "edgekit.cli",
    ),
}
TORCH = {"torch", "torchvision", "transformers", "peft", "bitsandbytes", "accelerate", "onnx", "onnxscript"}
TORCH_FREE_AT_IMPORT = (
    "edgekit.runtime",
    "edgekit.bench",
    "edgekit.report",
    "edgekit.emulate",
    "edgekit.targets",
    "edgekit.data",
    "edgekit.recipe",
    "edgekit.metrics",
    "edgekit.cli",
    "edgekit.stages",
    "edgekit.pipeline",
    "edgekit.sweep",
)


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import statement of the module."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(n) for n in tree.body}
    for node in tree.body:  # `if TYPE_CHECKING:` / try blocks at module level count as module level
        for child in ast.walk(node):
            top.add(id(child)) if isinstance(node, (ast.If, ast.Try)) else None
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            for a in node.names:
                candidate = f"{base}.{a.name}"
                out.append((candidate if candidate in MODULES else base, node.lineno, id(node) in top))
    return out


def _edgekit_module(imported: str) -> str | None:
    while imported and imported not in MODULES:
        imported = imported.rpartition(".")[0]
    return imported or None


def _graph() -> dict[str, dict[str, int]]:
    graph: dict[str, dict[str, int]] = {}
    for name, path in MODULES.items():
        edges = {}
        for imported, line, _ in _imports(name, path):
            if imported.split(".")[0] != "edgekit":
                continue
            target = _edgekit_module(imported)
            if target and target != name:
                edges.setdefault(target, line)
        graph[name] = edges
    return graph


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_the_import_graph_has_no_cycle():
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_no_import_points_up_the_layers():
    graph = _graph()
    bad = []
    for name, edges in graph.items():
        for target, line in edges.items():
            if name in CORE and target not in CORE:
                bad.append(f"{name}:{line} (core) imports {target}")
            for layer, banned in FORBIDDEN.items():
                if _within(name, layer) and any(_within(target, b) for b in banned):
                    bad.append(f"{name}:{line} imports {target}")
    assert not bad, "forbidden imports:\n" + "\n".join(bad)


def test_the_core_and_the_device_path_are_torch_free():
    bad = []
    for name, path in MODULES.items():
        for imported, line, top_level in _imports(name, path):
            heavy = imported.split(".")[0] in TORCH
            if heavy and name in CORE:
                bad.append(f"{name}:{line} (core) imports {imported}")
            elif (
                heavy
                and top_level
                and any(_within(name, p) for p in TORCH_FREE_AT_IMPORT)
                and name != "edgekit.bench.torch_latency"
            ):
                bad.append(f"{name}:{line} imports {imported} at module level")
    assert not bad, "\n".join(bad)


def _string_constants(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
        and n.body
        and isinstance(n.body[0], ast.Expr)
        and isinstance(n.body[0].value, ast.Constant)
    }
    return [
        (n.value, n.lineno)
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
    ]


def test_task_names_live_in_their_spec_files_alone():
    from edgekit import registry

    tasks = set(registry.names("task"))
    bad = [
        f"{path.relative_to(REPO)}:{line} names {value!r}"
        for name, path in MODULES.items()
        if not _within(name, "edgekit.tasks")
        for value, line in _string_constants(path)
        if value in tasks
    ]
    assert not bad, "task names outside edgekit/tasks/ (use task_spec(...) facts or jobs):\n" + "\n".join(bad)


def test_no_print_outside_the_cli():
    bad = []
    for name, path in MODULES.items():
        if _within(name, "edgekit.cli"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        bad += [
            f"{path.relative_to(REPO)}:{n.lineno}"
            for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "print"
        ]
    assert not bad, "print() outside edgekit/cli (use logging via edgekit.log):\n" + "\n".join(bad)


def test_comments_cite_papers_by_title_not_by_missing_files():
    # a comment such as "see 2403.1234.pdf" or "seeds/foo.pdf" points at a file users do not have
    pattern = re.compile(r"\b[\w.-]+\.pdf\b|\bseeds/")
    bad = [
        f"{path.relative_to(REPO)}:{i}"
        for path in MODULES.values()
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_says_what_it_is(name):
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    if not tree.body:  # an empty __init__ is a namespace
        return
    assert ast.get_docstring(tree), f"{name} has no module docstring"


def test_ruff_lint_and_format_pass():
    """The linter and formatter configured in pyproject.toml (run here, so CI's one test command runs them)."""
    import shutil
    import subprocess
    import sys

    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    for args in (["check", "."], ["format", "--check", "."]):
        proc = subprocess.run([ruff, *args], cwd=REPO, capture_output=True, text=True)
        assert proc.returncode == 0, f"ruff {' '.join(args)}:\n{proc.stdout[-3000:]}{proc.stderr[-1000:]}"
