"""The packages import only downward: results ← trainable ← search_spaces ← tuner.

Each package's `__init__` says its place in one sentence; this test holds the code to it,
from the imports written in every module (at the top or inside a function alike).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("results", "trainable", "search_spaces", "tuner")  # bottom first
OURS = (*LAYERS, "benchmarks")
# Libraries a layer must not reach, whatever it imports of ours.
FORBIDDEN = {
    "results": {"torch", "ray", "segmentation_models_pytorch", "albumentations", "cv2"},
    "search_spaces": {"torch", "ray"},
}
RAY_ADAPTER = "trainable/tune_adapter.py"  # the trainable's one door to Ray


def imported(path: Path) -> set[str]:
    """Every absolute module name `path` imports (relative imports are ours: none)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: a relative import; write it absolute"
            names.add(node.module)
    return names


def problems(path: Path, package: str, root: Path = ROOT) -> list[str]:
    allowed = set(LAYERS[: LAYERS.index(package) + 1])
    where = path.relative_to(root).as_posix()
    found = []
    for name in sorted(imported(path)):
        top = name.split(".")[0]
        if top in OURS and top not in allowed:
            found.append(f"{where} imports {name}: above {package}")
        if top in FORBIDDEN.get(package, ()):
            found.append(f"{where} imports {name}: {package} never does")
        if package == "trainable" and top == "ray" and where != RAY_ADAPTER:
            found.append(f"{where} imports {name}: Ray only in {RAY_ADAPTER}")
    return found


@pytest.mark.parametrize("package", LAYERS)
def test_each_package_imports_only_downward(package):
    modules = sorted((ROOT / package).rglob("*.py"))
    assert modules
    assert [p for path in modules for p in problems(path, package)] == []


@pytest.mark.parametrize("package", LAYERS)
def test_each_package_says_its_place(package):
    docstring = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text()))
    assert docstring and "import" in docstring, f"{package}/__init__.py: say what it imports"


def test_an_upward_import_is_caught(tmp_path):
    module = tmp_path / "results" / "upward.py"
    module.parent.mkdir()
    module.write_text("import torch\n\n\ndef f():\n    from tuner import cli\n")
    assert problems(module, "results", tmp_path) == [
        "results/upward.py imports torch: results never does",
        "results/upward.py imports tuner: above results",
    ]
    adapter_elsewhere = tmp_path / "trainable" / "engine.py"
    adapter_elsewhere.parent.mkdir()
    adapter_elsewhere.write_text("from ray import tune\nfrom search_spaces import SPACES\n")
    assert problems(adapter_elsewhere, "trainable", tmp_path) == [
        "trainable/engine.py imports ray: Ray only in trainable/tune_adapter.py",
        "trainable/engine.py imports search_spaces: above trainable",
    ]


CONSOLE = "tuner/console.py"  # the one module that writes to the terminal


def terminal_writes(path: Path, root: Path = ROOT) -> list[str]:
    """Every print() and sys.stdout/sys.stderr write in `path`."""
    where = path.relative_to(root).as_posix()
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        call = ast.unparse(node.func)
        if call == "print" or call in ("sys.stdout.write", "sys.stderr.write"):
            found.append(f"{where}:{node.lineno} {call}")
    return found


def test_only_the_console_writes_to_the_terminal():
    """Library code logs; what a person reads is written by tuner.console alone (the
    benchmarks are scripts with their own output, the tests print in Ray workers)."""
    modules = sorted(p for package in LAYERS for p in (ROOT / package).rglob("*.py"))
    found = [w for path in modules for w in terminal_writes(path)]
    assert [w for w in found if not w.startswith(f"{CONSOLE}:")] == []
    assert found  # the console itself does


def test_a_print_elsewhere_is_caught(tmp_path):
    module = tmp_path / "tuner" / "chatty.py"
    module.parent.mkdir()
    module.write_text("import sys\n\n\ndef f():\n    print('x')\n    sys.stderr.write('y')\n")
    assert terminal_writes(module, tmp_path) == [
        "tuner/chatty.py:5 print",
        "tuner/chatty.py:6 sys.stderr.write",
    ]


def test_the_inference_commands_need_no_ray():
    """tuner.inference imports no Ray, no Ray adapter and nothing of the tuner outside
    itself (sweep, cluster and progress start or import Ray); below the tuner, only
    trainable.tune_adapter imports Ray (above)."""
    modules = sorted((ROOT / "tuner" / "inference").glob("*.py"))
    assert modules
    found = [
        f"{path.name} imports {name}"
        for path in modules
        for name in sorted(imported(path))
        if name.split(".")[0] == "ray"
        or name == RAY_ADAPTER.removesuffix(".py").replace("/", ".")
        or (name.split(".")[0] == "tuner" and not name.startswith("tuner.inference"))
    ]
    assert found == []


def _module_path(module: str) -> Path | None:
    path = ROOT / Path(*module.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def _top_level_names(path: Path) -> set[str]:
    """What a module defines or imports at its top level (and in its top-level if/try
    blocks): not a name bound inside a function or class."""
    names = set()
    pending = list(ast.parse(path.read_text(), str(path)).body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, ast.If | ast.Try):
            pending += [*node.body, *node.orelse, *getattr(node, "finalbody", [])]
            pending += [s for handler in getattr(node, "handlers", []) for s in handler.body]
    return names


def test_every_name_imported_from_our_modules_is_there():
    """A name moved to another module leaves no import behind, in a function's body or a
    benchmark too (which no fast test runs)."""
    missing = []
    for path in sorted(p for package in OURS for p in (ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom) or node.module.split(".")[0] not in OURS:
                continue
            source = _module_path(node.module)
            assert source is not None, f"{path}: imports {node.module}, which is not there"
            names = _top_level_names(source)
            for alias in node.names:
                submodule = _module_path(f"{node.module}.{alias.name}")
                if alias.name not in names and submodule is None:
                    missing.append(f"{path.relative_to(ROOT)}: {node.module}.{alias.name}")
    assert missing == []
