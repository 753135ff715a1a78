"""List techbench's modules over 400 lines and functions over 60 lines (the project's limits).

    python3 scripts/size_report.py [PACKAGE_DIR ...]   # default: suite/techbench

Lines are physical lines of the file; a function's length runs from its ``def`` (decorators
excluded) to its last line, nested functions counted inside their parent and on their own.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULE_LIMIT = 400
FUNCTION_LIMIT = 60


def report(package: Path) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    modules, functions = [], []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package.parent).as_posix()
        text = path.read_text()
        n = len(text.splitlines())
        if n > MODULE_LIMIT:
            modules.append((n, rel))
        for node in ast.walk(ast.parse(text, rel)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > FUNCTION_LIMIT:
                    functions.append((length, f"{rel}:{node.lineno} {node.name}"))
    return sorted(modules, reverse=True), sorted(functions, reverse=True)


def main(argv: list[str]) -> int:
    for arg in argv or [str(ROOT / "suite" / "techbench")]:
        modules, functions = report(Path(arg))
        print(f"modules over {MODULE_LIMIT} lines: {len(modules)}")
        for n, name in modules:
            print(f"  {n:5}  {name}")
        print(f"functions over {FUNCTION_LIMIT} lines: {len(functions)}")
        for n, name in functions:
            print(f"  {n:5}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
