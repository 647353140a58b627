"""The house rules of ``docs/architecture.md``: layers, no import cycle, imports at the top.

* the import-linter contracts of ``pyproject.toml`` hold (``lint-imports``, as ``make lint``);
* no import cycle among hpasc's modules, function-level imports included (grimp sees them);
* imports sit at the top of modules: fewer than :data:`MAX_FUNCTION_IMPORTS` inside functions in
  all of ``src/``, each with a comment saying why it is lazy;
* ``hpasc --help`` (and a group's help) imports no command module, hence no torch.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"

#: acceptance of issue 14: function-level imports in all of src/hpasc
MAX_FUNCTION_IMPORTS = 40


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_import_contracts_hold():
    lint = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, env=_env(), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def strongly_connected(edges: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of a directed graph (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                components.append(component)
    return components


def test_strongly_connected_finds_a_cycle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert sorted(map(sorted, strongly_connected(edges))) == [["a", "b", "c"], ["d"]]


def test_no_import_cycle():
    graph = grimp.build_graph("hpasc", cache_dir=None)
    assert "hpasc.runconfig.image_level" in graph.modules  # the graph of this checkout
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    cycles = [sorted(c) for c in strongly_connected(edges) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles}"


def function_level_imports(path: Path) -> list[tuple[int, str]]:
    """(line, statement) of every import inside a function of ``path``."""
    tree = ast.parse(path.read_text())
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import | ast.ImportFrom):
                    found[inner.lineno] = ast.unparse(inner)
    return sorted(found.items())


def _commented(lines: list[str], lineno: int) -> bool:
    """A comment on the import's line or on the line above it."""
    here, above = lines[lineno - 1], lines[lineno - 2] if lineno > 1 else ""
    return "#" in here or above.strip().startswith("#") or "#" in above


def test_function_level_imports_are_few_and_commented():
    package = SRC / "hpasc"
    files = sorted(package.rglob("*.py"))
    checked = list(files)
    total, silent = 0, []
    for path in checked:
        lines = path.read_text().splitlines()
        for lineno, statement in function_level_imports(path):
            total += 1
            if not _commented(lines, lineno):
                silent.append(f"{path.relative_to(SRC)}:{lineno}: {statement}")
    assert not silent, "function-level imports without a comment saying why:\n" + "\n".join(silent)
    assert total < MAX_FUNCTION_IMPORTS, f"{total} function-level imports in src/"


def test_counter_sees_nested_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        "import os\n\n\ndef f():\n    if True:\n        import json\n    return json\n"
    )
    assert function_level_imports(module) == [(6, "import json")]


def _modules_after(argv: list[str]) -> set[str]:
    code = (
        "import sys\nfrom hpasc.cli import main\ntry:\n    main(sys.argv[1:])\n"
        "except SystemExit:\n    pass\nprint(' '.join(sorted(sys.modules)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv], env=_env(), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.strip().splitlines()[-1].split())


def test_help_imports_no_command_module_and_no_torch():
    for argv in (["--help"], ["train", "--help"], []):
        loaded = _modules_after(argv)
        assert "hpasc.cli" in loaded
        assert "torch" not in loaded, argv
        assert not any(m.startswith("hpasc.commands.") for m in loaded), argv
    # asking for one command's help imports that command's module, and only it
    loaded = _modules_after(["folds", "--help"])
    assert "hpasc.commands.labels" in loaded and "hpasc.commands.submit" not in loaded
