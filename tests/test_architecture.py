"""The package's layout rules, checked on its imports (read with ``ast``, so lazy imports
inside functions count too): verbs on top, stage packages below them, imports going
down only."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lvseg_search"
VERBS = {"prepare", "search", "report", "export", "predict", "demo"}
# Shared by every layer: the user-error type, atomic writes, the lazy TensorFlow import,
# the classes of a segmentation.
UTILITIES = {"errors", "atomic", "_tf", "classes"}
STAGES = ("data", "model", "evaluate", "engine", "reporting")
# What each stage may import of the others (besides itself and the utilities).
ALLOWED = {"data": set(), "model": set(), "evaluate": {"data", "model"},
           "engine": {"data", "model", "evaluate"},
           "reporting": {"data", "model", "evaluate", "engine"}}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The ``lvseg_search`` modules a file imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("lvseg_search")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.startswith("lvseg_search"):
            for alias in node.names:
                # `from lvseg_search.data import manifest` imports a module.
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if _exists(candidate) else node.module)
    return found


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").is_file() or (PACKAGE / rel).is_dir()


FILES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {module: _imports(path) for module, path in FILES.items()}


def _place(module: str) -> str:
    """``data``/``model``/``evaluate``/``engine``, ``verb``, ``utility``, ``cli`` or
    ``package``."""
    parts = module.split(".")
    if len(parts) == 1:
        return "package"
    if parts[1] in STAGES:
        return parts[1]
    if parts[1] in VERBS:
        return "verb"
    if parts[1] in UTILITIES:
        return "utility"
    return parts[1]  # cli, __main__


def test_the_tree_has_the_stage_packages_and_only_verbs_and_utilities_on_top():
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top == VERBS | UTILITIES | {"__init__", "__main__", "cli"}
    for stage in STAGES:
        assert (PACKAGE / stage / "__init__.py").is_file()
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"
            } >= set(STAGES)


def test_every_import_resolves_to_a_module_of_the_package():
    for module, imports in GRAPH.items():
        for imported in imports:
            assert imported == "lvseg_search" or _exists(imported), (module, imported)


def test_no_import_circle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for nxt in sorted(GRAPH.get(module, ())):
            if nxt not in GRAPH:
                continue
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt] if nxt in path else [module, nxt]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[module] = 2

    for module in GRAPH:
        if module not in state:
            visit(module, [module])


@pytest.mark.parametrize("stage", [*STAGES, "utility"])
def test_stages_and_utilities_import_downwards_only(stage):
    for module, imports in GRAPH.items():
        if _place(module) != stage:
            continue
        for imported in imports:
            where = _place(imported)
            assert where not in ("verb", "cli"), f"{module} imports the verb {imported}"
            if stage == "utility":
                assert where in ("utility", "package"), f"{module} imports {imported}"
            else:
                assert where in {stage, "utility", "package", *ALLOWED[stage]}, (
                    f"{module} ({stage}) imports {imported} ({where})")


def test_model_imports_nothing_of_data_engine_evaluate_or_the_verbs():
    for module, imports in GRAPH.items():
        if _place(module) == "model":
            assert {_place(i) for i in imports} <= {"model", "utility", "package"}, module


def test_cli_is_imported_by_nothing_but_the_module_entry_point():
    importers = {m for m, imports in GRAPH.items() if "lvseg_search.cli" in imports}
    assert importers <= {"lvseg_search.__main__"}


def test_only_demo_and_cli_compose_other_verbs():
    for module, imports in GRAPH.items():
        if _place(module) == "verb" and module != "lvseg_search.demo":
            others = {i for i in imports if _place(i) == "verb" and i != module}
            assert not others, f"{module} imports the verbs {sorted(others)}"


def test_the_run_folder_schema_lives_in_one_engine_module():
    holders = [m for m, path in FILES.items()
               if '"search.json"' in path.read_text(encoding="utf-8")]
    assert holders == ["lvseg_search.engine.run"]
    for verb in ("search", "report", "export"):
        assert "lvseg_search.engine.run" in GRAPH[f"lvseg_search.{verb}"], verb


def test_the_search_verb_and_the_run_folder_load_no_tensorflow_or_keras():
    # A recycled search's parent prepares the run without them (its children load them).
    code = ("import sys, lvseg_search.search, lvseg_search.engine.run, lvseg_search.cli\n"
            "print(sorted(m for m in ('tensorflow', 'keras', 'keras_tuner') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_an_installed_package_ships_every_sub_package():
    pyproject = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text(encoding="utf-8"))
    shipped = set(pyproject["tool"]["setuptools"]["packages"])
    on_disk = {_module_name(p.parent / "__init__.py") for p in PACKAGE.rglob("__init__.py")}
    assert on_disk <= shipped


def _keras_tuner_private_names() -> set[str]:
    """Every ``_name`` (not dunder) that keras-tuner's own source defines or reaches."""
    import keras_tuner

    names = set()
    for path in (Path(keras_tuner.__file__).parent / "src").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            name = (node.attr if isinstance(node, ast.Attribute)
                    else node.name if isinstance(node, ast.FunctionDef) else "")
            if name.startswith("_") and not name.startswith("__"):
                names.add(name)
    return names


def test_only_the_adapter_touches_keras_tuner_internals():
    private = _keras_tuner_private_names() | {"stub"}  # "stub": its oracle client's
    assert {"_brackets", "_try_build", "_random_values"} <= private
    adapter = "lvseg_search.engine.kt_compat"
    files = dict(FILES)
    files.update({f"benchmarks.{p.stem}": p for p in (PACKAGE.parent / "benchmarks").glob("*.py")})
    for module, path in files.items():
        if module == adapter:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            where = f"{module}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(("keras_tuner.engine", "keras_tuner.src")), where
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith(("keras_tuner.engine", "keras_tuner.src"))
                               for a in node.names), where
            if isinstance(node, ast.Attribute):
                assert node.attr not in private, f"{where} uses keras-tuner's {node.attr}"
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef):
                        assert item.name not in private, f"{where} overrides {item.name}"
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("hasattr", "getattr", "setattr") and len(node.args) > 1
                    and isinstance(node.args[1], ast.Constant)):
                assert node.args[1].value not in private, f"{where} reaches {node.args[1].value}"


def test_the_reports_style_and_script_ship_as_package_data():
    pyproject = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = pyproject["tool"]["setuptools"]["package-data"]["lvseg_search.reporting"]
    assets = sorted((PACKAGE / "reporting" / "assets").iterdir())
    assert [a.name for a in assets] == ["report.css", "report.js"]
    assert all(any(a.match(p) for p in patterns) for a in assets)
