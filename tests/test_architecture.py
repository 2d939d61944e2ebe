"""The dependency rule of docs/architecture.md, checked on the source: layers import downwards only,
no import cycles, and no gm/tune import hidden inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGES = ("gm", "tune", "pipelines")

# Bottom to top. A module may import modules of its own layer (without cycles) and of layers below.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("gm.core",)),
    ("data", ("gm.data",)),
    ("layers", ("gm.nn", "gm.flows")),
    ("models", ("gm.models",)),
    ("inference", ("gm.inference", "gm.baselines")),
    ("metrics", ("gm.metrics", "gm.featurizer")),
    ("training", ("gm.training",)),
    ("evaluation", ("gm.evaluation",)),
    ("tracking", ("gm.tracking", "gm.serving", "gm.server")),
    ("tune", ("tune",)),
    ("assembly", ("gm.params",)),
    ("stages", ("gm.stages", "gm.stage", "gm.figures", "gm.report", "gm.cli", "gm.bench", "gm.profiles", "gm",
                "pipelines", "gm.chaos")),
]

# Imports of our own modules inside a function, each with its reason. Keep it short.
INNER_ALLOWED: dict[tuple[str, str], str] = {
    # gm.serving subclasses mlflow.pyfunc.PythonModel: importing it loads MLflow's model machinery,
    # which only registering a version needs (every stage imports gm.tracking for its config).
    ("gm.tracking", "gm.serving"): "mlflow.pyfunc is heavy",
    # the same for `gm models sample`: gm.cli builds every subcommand's parser from gm.catalog
    ("gm.catalog", "gm.serving"): "mlflow.pyfunc is heavy",
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_modules(root: Path) -> dict[str, Path]:
    return {module_name(p, root): p for pkg in PACKAGES for p in sorted((root / pkg).rglob("*.py"))}


def imported(node: ast.Import | ast.ImportFrom, name: str, path: Path, known) -> set[str]:
    """The modules of `known` that one import statement of module `name` (file `path`) loads."""
    if isinstance(node, ast.Import):
        candidates = [a.name for a in node.names]
    else:
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        if node.level:
            package = package[:len(package) - node.level + 1]
            base = ".".join(package + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        candidates = [f"{base}.{a.name}" for a in node.names] + [base]
    out = set()
    for c in candidates:
        while c and c not in known:
            c = c.rpartition(".")[0]
        if c:
            out.add(c)
    out.discard(name)
    return out


def import_graph(root: Path) -> tuple[dict[str, set[str]], list[tuple[str, str, int]]]:
    """({module: modules it imports at module level}, [(module, imported, line) inside functions])."""
    modules = source_modules(root)
    graph: dict[str, set[str]] = {}
    inner: list[tuple[str, str, int]] = []
    for name, path in modules.items():
        graph[name] = set()

        def visit(node, in_function: bool, name=name, path=path):
            for child in ast.iter_child_nodes(node):
                nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    targets = imported(child, name, path, modules)
                    if in_function:
                        inner.extend((name, t, child.lineno) for t in sorted(targets))
                    else:
                        graph[name] |= targets
                visit(child, nested)

        visit(ast.parse(path.read_text(), str(path)), False)
    return graph, inner


def layer_of(module: str) -> int:
    """Index in LAYERS of the longest prefix matching `module`."""
    best, length = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > length:
                best, length = i, len(p)
    if best is None:
        raise AssertionError(f"{module} belongs to no layer: add it to LAYERS in tests/test_architecture.py")
    return best


def violations(root: Path) -> list[str]:
    graph, inner = import_graph(root)
    problems = []
    for module, targets in sorted(graph.items()):
        for t in sorted(targets):
            if layer_of(t) > layer_of(module):
                problems.append(f"upward import: {module} ({LAYERS[layer_of(module)][0]}) imports "
                                f"{t} ({LAYERS[layer_of(t)][0]})")
    for module, t, line in inner:
        if (module, t) not in INNER_ALLOWED:
            problems.append(f"import inside a function: {module}:{line} imports {t}")
    problems += [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(cycle_through(sorted(comp)[0], set(comp), graph))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def cycle_through(start: str, component: set[str], graph: dict[str, set[str]]) -> list[str]:
    """An actual import path from `start` back to itself inside a strongly connected component."""
    path, seen = [start], {start}
    while True:
        nxt = sorted(graph[path[-1]] & component)
        if start in nxt and len(path) > 1:
            return path + [start]
        step = next((m for m in nxt if m not in seen), None)
        if step is None:  # every successor seen: close the loop where it re-enters the path
            back = next(m for m in nxt if m in seen)
            return path[path.index(back):] + [back]
        path.append(step)
        seen.add(step)


def test_every_module_belongs_to_a_layer():
    for module in source_modules(REPO):
        layer_of(module)


def test_imports_go_down_the_layers_without_cycles_or_hidden_imports():
    problems = violations(REPO)
    assert not problems, "\n".join(problems)


# The only modules that may import MLflow (at any depth, inside functions too).
# gm.chaos reads a store after injecting a fault (what was lost or duplicated), from outside the pipeline
MLFLOW_MODULES = ("gm.tracking", "gm.serving", "gm.chaos")


def importers_of(package: str, root: Path) -> dict[str, list[int]]:
    """{module: lines} of our modules that import `package` or one of its submodules, anywhere in the file."""
    out: dict[str, list[int]] = {}
    for name, path in source_modules(root).items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            if any(n == package or n.startswith(package + ".") for n in names):
                out.setdefault(name, []).append(node.lineno)
    return out


def test_only_tracking_and_serving_import_mlflow():
    stray = {m: lines for m, lines in importers_of("mlflow", REPO).items() if m not in MLFLOW_MODULES}
    assert not stray, f"MLflow is imported outside {MLFLOW_MODULES} (call gm.tracking instead): {stray}"


def test_the_mlflow_rule_catches_an_import_inside_a_function(tmp_path):
    root = _package(tmp_path, {"gm/stages/t.py": "def f():\n    import mlflow.pyfunc\n",
                               "gm/tracking.py": "import mlflow\n"})
    assert importers_of("mlflow", root) == {"gm.stages.t": [2], "gm.tracking": [1]}


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir(exist_ok=True)
        (tmp_path / pkg / "__init__.py").touch()
    return tmp_path


@pytest.mark.parametrize("files, expected", [
    ({"gm/core/__init__.py": "", "gm/core/a.py": "from gm.training import loop\n",
      "gm/training/__init__.py": "", "gm/training/loop.py": ""}, "upward import: gm.core.a (core) imports gm.training"),
    ({"gm/core/__init__.py": "", "gm/core/a.py": "import gm.core.b\n", "gm/core/b.py": "from gm.core import a\n"},
     "import cycle: gm.core.a -> gm.core.b -> gm.core.a"),
    ({"gm/data/__init__.py": "", "gm/data/a.py": "def f():\n    from gm.core import b\n", "gm/core/__init__.py": "",
      "gm/core/b.py": ""}, "import inside a function: gm.data.a:2 imports gm.core.b"),
    ({"gm/models/__init__.py": "", "gm/models/x.py": "from ..data import io\n", "gm/data/__init__.py": "",
      "gm/data/io.py": "from gm.models import x\n"}, "upward import: gm.data.io (data) imports gm.models.x"),
])
def test_the_rule_catches_upward_imports_cycles_and_hidden_imports(tmp_path, files, expected):
    problems = violations(_package(tmp_path, files))
    assert any(expected in p for p in problems), problems


def test_a_clean_layering_passes(tmp_path):
    root = _package(tmp_path, {"gm/core/__init__.py": "", "gm/core/a.py": "import numpy\n",
                               "gm/models/__init__.py": "from gm.core import a\n",
                               "pipelines/train.py": "from gm.models import x\n", "gm/models/x.py": ""})
    assert violations(root) == []
