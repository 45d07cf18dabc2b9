"""The layout a newcomer reads: packages in layers without import cycles, one owner for the plan's JSON and for
every file name of a work dir."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

from support import REPO

PACKAGE = REPO / "uniad"
# Lower layers never import higher ones: a table of contents that reads top-down.
LAYERS = [
    {"uniad.errors", "uniad.stages", "uniad.trainside", "uniad.workdir", "uniad.metrics"},
    {"uniad.mini", "uniad.artifacts"},
    {"uniad.health"},
    {"uniad.train"},
    {"uniad.run"},
    {"uniad.views"},
    {"uniad.cli", "uniad.__main__"},
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The uniad modules a file imports, at top level or inside functions."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            names = [f"{name}.{alias.name}" for alias in node.names]
            found |= {n for n in names if n.startswith("uniad")} or ({name} if name.startswith("uniad") else set())
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("uniad")}
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py") if "skeleton" not in p.parts}
    graph = defaultdict(set)
    for module, path in files.items():
        for target in _imports(path):
            while target not in files and "." in target:  # "uniad.workdir.WorkDir" -> "uniad.workdir"
                target = target.rsplit(".", 1)[0]
            if target in files and target != module:
                graph[module].add(target)
    return graph


def _layer(module: str) -> int:
    for i, layer in enumerate(LAYERS):
        if any(module == top or module.startswith(top + ".") for top in layer):
            return i
    if module == "uniad":
        return 0
    raise AssertionError(f"{module} is in no layer of tests/unit/test_layout.py: place its package")


def test_no_import_cycles_and_packages_only_import_lower_layers():
    graph = _graph()
    for module, targets in graph.items():
        for target in targets:
            assert _layer(target) <= _layer(module), f"{module} imports {target}, a higher layer"
    # No cycle between modules either (within a layer).
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join(trail + [node, nxt])
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for module in list(graph):
        if module not in state:
            visit(module, [])


def _sources() -> dict[Path, str]:
    roots = [PACKAGE, REPO / "plugins", REPO / "dags"]
    return {p: p.read_text() for root in roots for p in root.rglob("*.py") if "skeleton" not in p.parts}


def test_only_the_plan_module_knows_the_plans_json_shape():
    plan_keys = re.compile(
        r"""plan(\.get\(|\[)["'](stages|s3|uniad_root|ckpt_path|strict|stall_timeout_s|profile|gate|storage)"""
    )
    offenders = [str(p) for p, text in _sources().items() if plan_keys.search(text) and p.name != "plan.py"]
    assert offenders == []


def test_only_the_work_dir_contract_spells_file_names():
    names = re.compile(
        r"""["'](latest\.pth|epoch_\{|epoch_%d|\.uniad_run\.json|previous_runs|\*\.log\.json|\*\.log|health/?)["']"""
    )
    owners = {PACKAGE / "workdir.py", PACKAGE / "trainside" / "uniad_workdir.py"}
    offenders = [
        f"{p.relative_to(REPO)}: {m.group(0)}"
        for p, text in _sources().items()
        if p not in owners
        for m in names.finditer(text)
    ]
    assert offenders == []
