"""Architecture rules: the core library is pure PyTorch, loads no pickles, and compares no method names."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import sbir

ROOT = Path(sbir.__file__).parent
REPO = ROOT.parent
APP_LAYERS = {"ray", "mlflow", "pipelines", "tune", "serve", "infra"}
FRONT_DOOR = ROOT / "cli"  # the CLI package is the one part of sbir that may reach the app layer


def _core_modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if FRONT_DOOR not in p.parents)


def _names_a_module(call: ast.Call) -> bool:
    """`importlib.import_module("x")` or `__import__("x")` with a literal name."""
    name = getattr(call.func, "attr", getattr(call.func, "id", ""))
    first = call.args[0] if call.args else None
    return name in ("import_module", "__import__") and isinstance(first, ast.Constant) and isinstance(first.value, str)


def _imported_roots(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, top-level package) of every import in a module, inside functions and branches too."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
        elif isinstance(node, ast.Call) and _names_a_module(node):
            found.append((node.lineno, node.args[0].value.split(".")[0]))
    return found


def test_the_core_never_imports_the_app_layer_even_lazily():
    offences = [
        f"{path.relative_to(REPO)}:{line} imports {root}"
        for path in _core_modules()
        for line, root in _imported_roots(ast.parse(path.read_text(), str(path)))
        if root in APP_LAYERS
    ]
    assert not offences, "\n".join(offences)


def test_infra_renders_files_and_never_runs_a_workload():
    """infra/ builds manifests from the core's config and serve's config builder; it starts no training or sweep."""
    offences = [
        f"{path.relative_to(REPO)}:{line} imports {root}"
        for path in sorted((REPO / "infra").glob("*.py"))
        for line, root in _imported_roots(ast.parse(path.read_text(), str(path)))
        if root in ("pipelines", "tune")
    ]
    assert not offences, "\n".join(offences)


def test_the_boundary_check_sees_lazy_imports():
    code = (
        "def f():\n    import ray.data\n    from mlflow import MlflowClient\n"
        "    importlib.import_module('pipelines.x')\n"
    )
    assert [root for _, root in _imported_roots(ast.parse(code))] == ["ray", "mlflow", "pipelines"]


def test_importing_every_core_module_loads_no_ray():
    modules = sorted(
        ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for p in _core_modules()
        if p.name != "__main__.py"
    )
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'ray', 'mlflow'})\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_no_pickle_loading_in_the_core():
    for path in ROOT.rglob("*.py"):
        text = path.read_text()
        assert "import pickle" not in text, path
        assert "weights_only=False" not in text, path


NAMES = ("zse", "clip_at", "clip", "rn_rerank", "rn")  # method and mode names
_NAMES = "|".join(NAMES)
COMPARISON = re.compile(rf"""(==|!=|\bin\b)\s*[\(\[{{]?\s*["']({_NAMES})["']|["']({_NAMES})["']\s*(==|!=|\bin\b)""")


def test_only_the_registry_and_the_config_schema_compare_method_or_mode_names():
    """Everything method-specific lives in a family (sbir/methods); nobody else asks `method == "zse"` or
    `mode == "rn_rerank"`: they ask the family (`family.rerank_mode`, `family.exhaustive_modes` …)."""
    allowed = {*(ROOT / "methods").rglob("*.py"), *ROOT.glob("config.py"), *(ROOT / "config").rglob("*.py")}
    places = [REPO / d for d in ("sbir", "pipelines", "tune", "serve", "infra", "bench")]
    offences = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for base in places
        for path in base.rglob("*.py")
        if path not in allowed
        for n, line in enumerate(path.read_text().splitlines(), start=1)
        if COMPARISON.search(line)
    ]
    assert not offences, "\n".join(offences)


def test_the_name_check_sees_comparisons_in_every_form():
    seen = ['if mode == "rn":', 'x = "rn_rerank" in modes', 'if kind != "clip":', "m in ('zse', 'x')", 'a in ["rn"]']
    unseen = ['modes = ("ret", "rn", "rn_rerank")', 'name = "zse"', 'space = {"choice": ["rn_rerank"]}']
    assert all(COMPARISON.search(line) for line in seen)
    assert not any(COMPARISON.search(line) for line in unseen)


# --------------------------------------------------------------------------- the import graph
PROJECT = ("sbir", "pipelines", "tune", "serve", "infra")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(tree: ast.AST, module: str, is_package: bool) -> list[str]:
    """Dotted names a module imports when it runs, lazy imports included, ``if TYPE_CHECKING:`` blocks left out."""
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for other in child.orelse:
                    visit_one(other)
                continue
            visit_one(child)

    def visit_one(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            found.append(source)
            found.extend(f"{source}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
        else:
            visit(node)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """Project module -> the project modules (and the packages around them) it imports at run time."""
    paths = {_module_name(p): p for top in PROJECT for p in (REPO / top).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        targets: set[str] = set()
        for name in _runtime_imports(ast.parse(path.read_text(), str(path)), module, path.name == "__init__.py"):
            parts = name.split(".")
            for end in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b first
                candidate = ".".join(parts[:end])
                if candidate in paths and candidate != module and not module.startswith(candidate + "."):
                    targets.add(candidate)
        graph[module] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (each is an import cycle)."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def strongconnect(node: str) -> None:
        order[node] = low[node] = len(order)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in order:
                strongconnect(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], order[target])
        if low[node] == order[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in order:
            strongconnect(node)
    return found


def test_no_runtime_import_cycles_in_the_whole_project():
    assert not cycles(import_graph()), cycles(import_graph())


def test_the_cycle_check_finds_a_cycle_through_a_lazy_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    code = "import x\nif TYPE_CHECKING:\n    import hidden\ndef f():\n    from . import sibling\n"
    assert _runtime_imports(ast.parse(code), "pkg.mod", False) == ["x", "pkg", "pkg.sibling"]


def test_pipelines_never_import_the_serving_or_tuning_layers():
    """pipelines/ are the workloads tune/ and serve/ build on; they never reach up (lazy imports included)."""
    offences = [
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        if module.split(".")[0] == "pipelines"
        for target in targets
        if target.split(".")[0] in ("serve", "tune")
    ]
    assert not offences, "\n".join(offences)
