"""No import cycles between the project's modules, counting imports inside functions too (a
deferred import hides a cycle from Python, not from the reader: launcher.entrypoint and
launcher.ray_torchrun once imported each other that way)."""

import ast
from pathlib import Path

PACKAGES = ("lamamba", "launcher", "data_pipeline", "cluster")
REPO = Path(__file__).resolve().parents[2]


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path, modules: set[str]) -> set[str]:
    """The project modules ``path`` imports anywhere in its body, with the packages above them
    that this module is not itself part of (importing a.b runs a's __init__ first)."""
    this = module_name(path, root)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            names += [f"{base}.{alias.name}" for alias in node.names]  # trimmed below if not a module
    found = set()
    for name in names:
        while name and name not in modules:  # "lamamba.storage.sha256" -> "lamamba.storage"
            name = name.rpartition(".")[0]
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            dep = ".".join(parts[:i])
            if dep in modules and dep != this and not (this + ".").startswith(dep + "."):
                found.add(dep)
    return found


def import_graph(root: Path, packages) -> dict[str, set[str]]:
    files = [p for pkg in packages for p in (root / pkg).rglob("*.py")]
    modules = {module_name(p, root) for p in files}
    return {module_name(p, root): imported_modules(p, root, modules) for p in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of ``graph`` as a path [a, b, ..., a], or [] (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for start in sorted(graph):
        if start in state:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return []


def test_a_deferred_import_cycle_is_found(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from pkg.z import h\n")  # a package importing its module: no cycle
    (pkg / "x.py").write_text("from pkg.y import g\n")
    (pkg / "y.py").write_text("def g():\n    from pkg.x import f\n")
    (pkg / "z.py").write_text("from . import y\n")
    graph = import_graph(tmp_path, ["pkg"])
    assert graph["pkg.z"] == {"pkg.y"} and graph["pkg.y"] == {"pkg.x"}
    cycle = find_cycle(graph)
    assert cycle[0] == cycle[-1] and set(cycle) == {"pkg.x", "pkg.y"}, cycle
    (pkg / "y.py").write_text("def g():\n    pass\n")
    assert find_cycle(import_graph(tmp_path, ["pkg"])) == []


def test_the_project_has_no_import_cycle():
    cycle = find_cycle(import_graph(REPO, PACKAGES))
    assert not cycle, "import cycle: " + " -> ".join(cycle)
