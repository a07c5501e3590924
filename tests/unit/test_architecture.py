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


METHOD_NAMES = ("zse", "clip_at")
_NAMES = "|".join(METHOD_NAMES)
COMPARISON = re.compile(rf"""(==|!=|\bin\b)\s*\(?\s*["']({_NAMES})["']|["']({_NAMES})["']\s*(==|!=)""")


def test_only_the_registry_and_the_config_schema_compare_method_names():
    """Everything method-specific lives in a family (sbir/methods); nobody else asks `method == "zse"`."""
    allowed = {*(ROOT / "config").rglob("*.py"), *(ROOT / "methods").rglob("*.py")}
    places = [REPO / d for d in ("sbir", "pipelines", "tune", "serve", "bench")]
    offences = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for base in places
        for path in base.rglob("*.py")
        if path not in allowed
        for n, line in enumerate(path.read_text().splitlines(), start=1)
        if COMPARISON.search(line)
    ]
    assert not offences, "\n".join(offences)
