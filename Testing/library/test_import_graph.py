"""No module of AmyloidKDLib (or Training) imports one that imports it back, however indirectly.

The graph is read statically from the source (``ast``), so it needs no dependency installed
and sees every import a module can run:

- every ``import`` and ``from ... import`` statement, including those inside functions and
  methods (deferred imports still run, and a cycle through them fails at the first call that
  closes it, not at start-up, which is worse), and relative imports;
- except those under ``if TYPE_CHECKING:``, which never run;
- an edge goes to the module named: ``from a.b import c`` is an edge to ``a.b.c`` when that is
  a module, else to the package ``a.b`` (whose ``__init__`` defines ``c``). The implicit
  initialisation of parent packages (importing ``a.b.c`` first runs ``a/__init__``) is not an
  edge: it is how packages work, and a package's ``__init__`` importing its own submodules would
  otherwise be a "cycle" with each of them.

Capability checks of the machine live in ``AmyloidKDLib/capability.py``, below
``skullstrip``, ``inference`` and ``models``, so that none of them imports another for them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def module_files(root: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``) for every .py under ``root``."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        modules[".".join(parts)] = (path, is_package)
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_statements(tree: ast.AST):
    """Every Import/ImportFrom node, at any depth, skipping ``if TYPE_CHECKING:`` bodies."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        children = list(ast.iter_child_nodes(node))
        if isinstance(node, ast.If) and _is_type_checking(node):
            children = list(node.orelse)
        stack.extend(children)


def import_graph(modules: dict[str, tuple[Path, bool]]) -> dict[str, set[str]]:
    """Module -> the modules of ``modules`` it imports (see the module docstring for the rules)."""
    graph = {}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        targets = set()
        for node in _import_statements(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
                continue
            if node.level:  # relative: strip (level - 1) trailing parts of the package
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                targets.add(submodule if submodule in modules else source)
        graph[name] = {target for target in targets if target in modules and target != name}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each import cycle once, as the modules along it (first module repeated at the end)."""
    cycles, seen_members = [], set()
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target]
                if frozenset(cycle) not in seen_members:
                    seen_members.add(frozenset(cycle))
                    cycles.append(cycle)
            elif target not in state:
                visit(target, path)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return cycles


@pytest.mark.parametrize("package", ["AmyloidKDLib", "Training"])
def test_no_module_imports_one_that_imports_it_back(package):
    modules = module_files(REPO / package, package)
    graph = import_graph(modules)
    cycles = find_cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)
    assert len(graph) > 10
    if package == "AmyloidKDLib":  # the walk sees deferred imports and the capability module
        assert "AmyloidKDLib.pipeline" in graph["AmyloidKDLib.inference"]  # inside Predictor.predict
        assert "AmyloidKDLib.capability" in graph["AmyloidKDLib.skullstrip"]
        assert graph["AmyloidKDLib.capability"] == {"AmyloidKDLib.errors"}


def test_the_walk_finds_a_cycle_through_a_function_level_import(tmp_path):
    """The finder is not blind: the cycle this issue removed (skullstrip imported a CPU helper
    from inference inside a function; inference imports pipeline, which imports skullstrip),
    rebuilt in a throwaway package, is reported; the same package without it is not."""
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "sub" / "__init__.py").write_text("from pkg.sub.pipeline import prepare\n")
    (root / "sub" / "pipeline.py").write_text("from . import skullstrip\n\ndef prepare(): ...\n")
    (root / "inference.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import capability\n\n"
        "def predict():\n    from pkg.sub.pipeline import prepare\n")
    (root / "capability.py").write_text("def native(): return False\n")
    skullstrip = root / "sub" / "skullstrip.py"
    skullstrip.write_text("def strip():\n    from pkg.inference import native\n")
    modules = module_files(root, "pkg")
    graph = import_graph(modules)
    assert graph["pkg.sub.pipeline"] == {"pkg.sub.skullstrip"}  # relative import resolved
    assert graph["pkg.inference"] == {"pkg.sub.pipeline"}       # TYPE_CHECKING import skipped
    assert graph["pkg.sub"] == {"pkg.sub.pipeline"}             # parent package is no edge
    assert find_cycles(graph) == [["pkg.inference", "pkg.sub.pipeline", "pkg.sub.skullstrip",
                                   "pkg.inference"]]
    skullstrip.write_text("def strip():\n    from pkg.capability import native\n")
    assert find_cycles(import_graph(modules)) == []
