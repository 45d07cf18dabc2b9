"""The layout a newcomer reads, enforced over uniad/, plugins/ and dags/: packages in layers without import cycles,
no Airflow in the domain package, one owner for the plan's JSON and for every file name of a work dir, and the
training-side modules valid in UniAD's Python 3.8 with nothing of the pipeline. Each rule is a function of the
sources, and each has a test that plants a violation and sees it fail."""

from __future__ import annotations

import ast
import dataclasses
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from support import REPO
from uniad import workdir
from uniad.run import plan as plan_module
from uniad.run.params import PipelineParams
from uniad.trainside import uniad_workdir

ROOTS = ("uniad", "plugins", "dags")
# Lower layers never import higher ones: a table of contents that reads top-down. uniad/ is the domain package;
# plugins/ holds the Airflow adapters (importable as uniad_airflow), dags/ the DAG files.
LAYERS = [
    {
        "uniad.errors",
        "uniad.stages",
        "uniad.trainside",
        "uniad.workdir",
        "uniad.metrics",
        "uniad.vocabulary",
        "uniad.tracking",
    },
    {"uniad.mini", "uniad.artifacts"},
    {"uniad.health", "uniad.registry"},
    {"uniad.train"},
    {"uniad.run"},
    {"uniad.views"},
    {"uniad.cli", "uniad.__main__"},
    {
        "uniad_airflow.names",
        "uniad_airflow.settings",
        "uniad_airflow.celery_config",
        "uniad_airflow.admin",
        "uniad_airflow.provider_info",
        "uniad_airflow.policy",
    },
    {"uniad_airflow.alerts"},
    {"uniad_airflow.triggers"},
    {"uniad_airflow.operators"},
    {"uniad_airflow.notify", "uniad_airflow.dashboard"},
    {"uniad_airflow.plugin"},
    {"dags"},
]
# What the training interpreter has: the standard library, UniAD's stack, and the other trainside modules.
TRAINSIDE_ALLOWED = {"torch", "mmcv", "numpy"} | set(sys.stdlib_module_names)


def _sources() -> dict[str, str]:
    return {
        p.relative_to(REPO).as_posix(): p.read_text()
        for root in ROOTS
        for p in (REPO / root).rglob("*.py")
        if "skeleton" not in p.parts
    }


SOURCES = _sources()


def module_name(path: str) -> str:
    """uniad/run/plan.py -> uniad.run.plan; plugins/uniad_airflow/x.py -> uniad_airflow.x; dags/d.py -> dags.d."""
    parts = list(Path(path).with_suffix("").parts)
    if parts[0] == "plugins":
        parts = parts[1:]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: str, text: str) -> set[str]:
    """Every module a file imports, at top level or inside functions, relative imports resolved."""
    module = module_name(path)
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                name = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
            found |= {f"{name}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found


def graph(sources: dict[str, str]) -> dict[str, set[str]]:
    """Module -> the project's modules it imports."""
    modules = {module_name(path): path for path in sources}
    edges = defaultdict(set)
    for module, path in modules.items():
        for target in imports(path, sources[path]):
            while target not in modules and "." in target:  # "uniad.workdir.WorkDir" -> "uniad.workdir"
                target = target.rsplit(".", 1)[0]
            if target in modules and target != module:
                edges[module].add(target)
    return edges


def layer(module: str) -> int:
    for i, tops in enumerate(LAYERS):
        if any(module == top or module.startswith(top + ".") for top in tops):
            return i
    if module in ("uniad", "uniad_airflow"):  # the packages themselves: their lowest layer
        return next(i for i, tops in enumerate(LAYERS) if any(top.startswith(module + ".") for top in tops))
    raise AssertionError(f"{module} is in no layer of tests/unit/test_layout.py: place its package")


# ------------------------------------------------------------------------------------------------------- rules
def layering_violations(sources: dict[str, str]) -> list[str]:
    edges = graph(sources)
    found = [f"{m} imports {t}, a higher layer" for m, ts in edges.items() for t in ts if layer(t) > layer(m)]
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                path = trail + [node]
                found.append("import cycle: " + " -> ".join(path[path.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [])
    return found


def airflow_in_domain(sources: dict[str, str]) -> list[str]:
    """The domain package never imports Airflow or its adapters, not even inside a function."""
    return [
        f"{path} imports {name}"
        for path, text in sources.items()
        if path.startswith("uniad/")
        for name in sorted(imports(path, text))
        if name.split(".")[0] in ("airflow", "uniad_airflow")
    ]


def _plan_keys() -> set[str]:
    """The keys of the plan's JSON: the fields of Plan and of the records only the plan holds, less the names of
    trigger parameters (the form and the params are keyed by them too) and "path" (every provenance has one)."""
    records = (plan_module.Plan, plan_module.GatePlan, plan_module.StoragePlan, plan_module.PublishPlan)
    keys = {f.name for record in records for f in dataclasses.fields(record)} | {"version"}
    return keys - {f.name for f in dataclasses.fields(PipelineParams)} - {"path"}


PLAN_KEYS = _plan_keys()


def plan_keys_outside_the_plan(sources: dict[str, str]) -> list[str]:
    """Only uniad/run/plan.py reads the plan's JSON: nobody else subscripts or .get()s one of its keys."""
    found = []
    for path, text in sources.items():
        if path == "uniad/run/plan.py":
            continue
        for node in ast.walk(ast.parse(text)):
            key = None
            if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
                key = node.slice.value
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                key = node.args[0].value
            if isinstance(key, str) and key in PLAN_KEYS:
                found.append(f"{path}:{node.lineno}: [{key!r}]")
    return found


def _contract_names() -> dict[str, str]:
    """The file and folder names of a work dir, from the contract modules' own constants (name -> constant)."""
    names = {}
    for module in (workdir, uniad_workdir):
        for constant, value in vars(module).items():
            if constant.isupper() and isinstance(value, str) and len(value) > 3:
                names[value] = f"{module.__name__}.{constant}"
    return names


CONTRACT_NAMES = _contract_names()
CONTRACT_OWNERS = {"uniad/workdir.py", "uniad/trainside/uniad_workdir.py"}


def _literal(node: ast.AST) -> str | None:
    """A string literal's text; an f-string's with each replacement field as {} (epoch_{n}.pth -> epoch_{}.pth)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    return None


def work_dir_names_outside_the_contract(sources: dict[str, str]) -> list[str]:
    """Only the contract modules spell a work dir's file names: everyone else uses their constants."""
    found = []
    for path, text in sources.items():
        if path in CONTRACT_OWNERS:
            continue
        for node in ast.walk(ast.parse(text)):
            literal = _literal(node)
            if literal in CONTRACT_NAMES:
                found.append(f"{path}:{node.lineno}: {literal!r} is {CONTRACT_NAMES[literal]}")
    return found


def trainside_outside_python38(sources: dict[str, str]) -> list[str]:
    """The modules UniAD's interpreter runs parse as Python 3.8 and import only what that interpreter has."""
    found = []
    siblings = {Path(p).stem for p in sources if p.startswith("uniad/trainside/")}
    for path, text in sources.items():
        if not path.startswith("uniad/trainside/"):
            continue
        try:
            ast.parse(text, feature_version=(3, 8))
        except SyntaxError as exc:
            found.append(f"{path}:{exc.lineno}: not Python 3.8: {exc.msg}")
            continue
        for name in imports(path, text):
            top = name.split(".")[0]
            if top and top not in TRAINSIDE_ALLOWED | siblings | {"__future__"}:
                found.append(f"{path} imports {name}, which UniAD's interpreter does not have")
    return found


RULES = (
    layering_violations,
    airflow_in_domain,
    plan_keys_outside_the_plan,
    work_dir_names_outside_the_contract,
    trainside_outside_python38,
)


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.__name__)
def test_the_tree_follows_the_rule(rule):
    assert rule(SOURCES) == []


PLANTED = [
    (layering_violations, "uniad/metrics.py", "from .run.plan import Plan\n", "uniad.metrics imports uniad.run.plan"),
    (
        layering_violations,
        "uniad/health/gate.py",
        "def f():\n    from uniad_airflow import settings\n",
        "uniad.health.gate imports uniad_airflow.settings",
    ),
    (
        layering_violations,
        "plugins/uniad_airflow/settings.py",
        "from uniad_airflow.operators import DAG_ID\n",
        "uniad_airflow.settings imports uniad_airflow.operators",
    ),
    (
        layering_violations,
        "uniad/errors.py",
        "from .metrics import HEADLINE\n",
        "import cycle: uniad.errors -> uniad.metrics -> uniad.errors",
    ),
    (airflow_in_domain, "uniad/train/process.py", "def f():\n    import airflow\n", "imports airflow"),
    (airflow_in_domain, "uniad/health/report.py", "from airflow.sdk import Asset\n", "imports airflow.sdk"),
    (plan_keys_outside_the_plan, "uniad/views/dashboard.py", "def f(data):\n    return data['stages']\n", "['stages']"),
    (
        plan_keys_outside_the_plan,
        "plugins/uniad_airflow/operators.py",
        "def f(plan):\n    return plan['publish']\n",
        "['publish']",
    ),
    (
        plan_keys_outside_the_plan,
        "plugins/uniad_airflow/dashboard.py",
        "def f(p):\n    return p.get('gate')\n",
        "['gate']",
    ),
    (
        work_dir_names_outside_the_contract,
        "plugins/uniad_airflow/operators.py",
        "x = 'slurm_jobs.jsonl'\n",
        "'slurm_jobs.jsonl' is uniad.workdir.SLURM_JOBS",
    ),
    (
        work_dir_names_outside_the_contract,
        "uniad/health/gate.py",
        "def f(n):\n    return f'epoch_{n}.pth'\n",
        "'epoch_{}.pth' is uniad.trainside.uniad_workdir.EPOCH_FILE",
    ),
    (work_dir_names_outside_the_contract, "uniad/train/slurm.py", "LINK = 'latest.pth'\n", "'latest.pth'"),
    (
        trainside_outside_python38,
        "uniad/trainside/uniad_slurm_job.py",
        "def f(x):\n    match x:\n        case 1: pass\n",
        "not Python 3.8",
    ),
    (
        trainside_outside_python38,
        "uniad/trainside/uniad_config_facts.py",
        "from uniad.workdir import WorkDir\n",
        "imports uniad.workdir, which UniAD's interpreter does not have",
    ),
]


@pytest.mark.parametrize(
    ("rule", "path", "planted", "expected"), PLANTED, ids=[f"{rule.__name__}:{path}" for rule, path, _, _ in PLANTED]
)
def test_a_planted_violation_fails_the_rule(rule, path, planted, expected):
    sources = {**SOURCES, path: SOURCES[path] + "\n" + planted}
    assert any(expected in offence for offence in rule(sources)), rule(sources)
