"""Architecture rules: the core library never imports Ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import sbir


def test_core_library_does_not_import_ray():
    root = Path(sbir.__file__).parent
    modules = sorted(
        ".".join(p.relative_to(root.parent).with_suffix("").parts)
        for p in root.rglob("*.py")
        if p.name != "__init__.py" or p.parent != root
    )
    modules = [m.removesuffix(".__init__") for m in modules]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_no_pickle_loading_in_the_core():
    root = Path(sbir.__file__).parent
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert "import pickle" not in text, path
        assert "weights_only=False" not in text, path
