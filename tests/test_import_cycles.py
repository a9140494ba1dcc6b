"""No import cycles inside the `fednode` namespace.

The graph is built statically from every `.py` file of the four top-level packages with `ast`:
every `import` and `from ... import` statement counts wherever it stands, at module level, inside
a function (a "lazy" import still couples the two modules: it only moves the failure to run time)
and under `if TYPE_CHECKING:` (a type-only import still makes the two modules one unit to read
and to change). An edge goes to the module named, or to the submodule when `from package import
name` names one; importing `a.b.c` does not add edges to the packages `a` and `a.b` (their
`__init__` re-exporting a submodule is not a cycle of design).

Written here rather than taken from grimp/import-linter: the package-dir mapping (`fednode.node`
is the folder `node/`) and the counting rules above fit in sixty lines, with no extra dependency.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"fednode.node": "node", "fednode.aggregators": "aggregators", "fednode.cli": "cli", "fednode.proto": "proto"}


def source_modules(root: Path = ROOT) -> dict[str, Path]:
    """{dotted module name: file} for every source file of the package (generated code included)."""
    modules: dict[str, Path] = {}
    for package, folder in PACKAGES.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = list(path.relative_to(root / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


def _imports(tree: ast.AST, module: str, is_package: bool, modules: dict[str, Path]) -> Iterator[str]:
    """The fednode modules the import statements of this module load."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                yield submodule if submodule in modules else base


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """{module: the fednode modules it imports}."""
    modules = source_modules(root)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for target in _imports(tree, name, path.name == "__init__.py", modules):
            if target in modules and target != name:
                graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _describe(graph: dict[str, set[str]], component: list[str]) -> str:
    members = set(component)
    edges = [f"  {a} -> {b}" for a in component for b in sorted(graph[a]) if b in members]
    return "\n".join(edges)


def test_the_graph_sees_module_level_function_level_and_type_only_imports(tmp_path: Path) -> None:
    package = tmp_path / "node"
    (package / "sub").mkdir(parents=True)
    for folder in ("aggregators", "cli", "proto"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from .b import B\n")
    (package / "a.py").write_text("from fednode.node.sub import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from fednode.node import a\nB = 1\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import d\n")
    (package / "d.py").write_text("from .c import x\n")
    (package / "e.py").write_text("import fednode.node.sub\n")
    graph = import_graph(tmp_path)
    assert graph["fednode.node.a"] == {"fednode.node.sub.b"}  # a submodule, not its package
    assert graph["fednode.node.sub.b"] == {"fednode.node.a"}  # function-level import
    assert graph["fednode.node.sub"] == {"fednode.node.sub.b"}
    assert graph["fednode.node.c"] == {"fednode.node.d"}  # type-only import
    assert graph["fednode.node.e"] == {"fednode.node.sub"}
    assert sorted(cycles(graph)) == [["fednode.node.a", "fednode.node.sub.b"], ["fednode.node.c", "fednode.node.d"]]


def test_no_import_cycles_in_fednode() -> None:
    graph = import_graph()
    assert len(graph) > 100, "the source tree was not found"
    found = cycles(graph)
    assert not found, "import cycles (break each with a narrow interface or a shared module):\n" + "\n\n".join(
        _describe(graph, c) for c in found)
