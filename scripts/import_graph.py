"""Print the import graph between techbench's subpackages, its circles and private crossings.

Each module of ``suite/techbench`` belongs to a room: its first subpackage (``plan``, ``engine``,
...) or, for a top-level module, the module itself (``schema``, ``errors``). Imports inside
functions count too: a lazy import is still a dependency; imports under ``if TYPE_CHECKING:``
do not (they never run; a type named in an annotation is not a dependency of the flow). Exit status 1 when the room graph has a
circle or a private name (``_x``) is imported from another room, so CI can run it.

    python3 scripts/import_graph.py            # rooms
    python3 scripts/import_graph.py --modules  # module-level circles as well
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "suite" / "techbench"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "techbench"


def resolve(module: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_pkg:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def scan() -> tuple[dict[str, set[str]], list[tuple[str, str, str]], set[str]]:
    """Return module -> imported techbench modules, private crossings, and all module names."""
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    edges: dict[str, set[str]] = defaultdict(set)
    private: list[tuple[str, str, str]] = []
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), str(path))
        typing_only = {
            id(n)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and ast.unparse(block.test).endswith("TYPE_CHECKING")
            for stmt in block.body
            for n in ast.walk(stmt)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                targets = [(a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                src = resolve(mod, is_pkg, node)
                targets = []
                for a in node.names:
                    sub = f"{src}.{a.name}"
                    targets.append((sub, None) if sub in modules else (src, a.name))
            else:
                continue
            for target, name in targets:
                if not target.startswith("techbench"):
                    continue
                while target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target == mod:
                    continue
                edges[mod].add(target)
                if name and name.startswith("_") and not name.startswith("__"):
                    private.append((mod, target, name))
    return edges, private, set(modules)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main() -> int:
    edges, private, modules = scan()
    rooms: dict[str, set[str]] = defaultdict(set)
    for mod in modules:
        rooms[room(mod)]
    for mod, targets in edges.items():
        for t in targets:
            if room(t) != room(mod) and room(t) != "techbench":
                rooms[room(mod)].add(room(t))
    print("rooms (a -> what a imports):")
    for r in sorted(rooms, key=lambda r: (len(rooms[r]), r)):
        print(f"  {r:14} -> {', '.join(sorted(rooms[r])) or '-'}")
    bad = 0
    room_cycles = cycles(rooms)
    print("room circles:", room_cycles or "none")
    bad += len(room_cycles)
    if "--modules" in sys.argv:
        mod_cycles = cycles(edges)
        print("module circles:", mod_cycles or "none")
    crossing = [p for p in private if room(p[0]) != room(p[1])]
    print("private names imported across rooms:", len(crossing) or "none")
    for mod, target, name in sorted(crossing):
        print(f"  {mod} imports {target}.{name}")
    bad += len(crossing)
    if "--modules" in sys.argv:
        print("private names imported across modules:", len(private) or "none")
        for mod, target, name in sorted(private):
            print(f"  {mod} imports {target}.{name}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
