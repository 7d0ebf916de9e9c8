"""The import graph of zoo/ and converters/, read from the source with `ast` (nothing is imported)."""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("zoo", "converters")


@dataclass
class Imports:
    """Every module of the packages, what each imports, and the private names it reaches for."""

    files: dict[str, Path] = field(default_factory=dict)
    edges: dict[str, set[str]] = field(default_factory=dict)
    # (importer, module, name): `from module import _name`, or `module._name` on an imported module
    private: list[tuple[str, str, str]] = field(default_factory=list)

    def importers(self, target: str) -> set[str]:
        return {m for m, targets in self.edges.items() if target in targets}

    def circles(self, ignore_inside: tuple[str, ...] = ()) -> list[list[str]]:
        """Strongly connected groups of two or more modules (Tarjan), leaving out the edges that
        stay inside one of the `ignore_inside` packages."""

        def inside(module: str, package: str) -> bool:
            return module == package or module.startswith(package + ".")

        edges = {
            m: {t for t in targets
                if not any(inside(m, p) and inside(t, p) for p in ignore_inside)}
            for m, targets in self.edges.items()
        }
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        stack: list[str] = []
        on_stack: set[str] = set()
        found: list[list[str]] = []

        def visit(v: str) -> None:
            index[v] = low[v] = len(index)
            stack.append(v)
            on_stack.add(v)
            for w in sorted(edges.get(v, ())):
                if w not in index:
                    visit(w)
                    low[v] = min(low[v], low[w])
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
            if low[v] == index[v]:
                group = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    group.append(w)
                    if w == v:
                        break
                if len(group) > 1:
                    found.append(sorted(group))

        for v in sorted(edges):
            if v not in index:
                visit(v)
        return found


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST):
    """Every node except those under `if TYPE_CHECKING:` (imports for type checkers never run)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                todo.extend(child.orelse)
                continue
            todo.append(child)


def read_imports(packages: tuple[str, ...] = PACKAGES) -> Imports:
    graph = Imports()
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            graph.files[_module_name(path)] = path
    known = set(graph.files)

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    for module, path in graph.files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        tree = ast.parse(path.read_text(), filename=str(path))
        targets: set[str] = set()
        aliases: dict[str, str] = {}  # local name -> imported module
        for node in _runtime_nodes(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    target = resolve(alias.name)
                    if target:
                        targets.add(target)
                        aliases[alias.asname or alias.name] = target if alias.asname else alias.name
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    if submodule in known:
                        targets.add(submodule)
                        aliases[alias.asname or alias.name] = submodule
                    elif resolve(source):
                        targets.add(resolve(source))
                        if alias.name.startswith("_") and not alias.name.startswith("__"):
                            graph.private.append((module, source, alias.name))
            elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                  and node.value.id in aliases and node.attr.startswith("_")
                  and not node.attr.startswith("__")):
                graph.private.append((module, aliases[node.value.id], node.attr))
        targets.discard(module)
        graph.edges[module] = targets
    return graph
