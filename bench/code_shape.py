"""The code's shape: functions longer than a limit, and parameters, returns and variables
annotated with a bare ``Any`` (issue 36's measures of code a newcomer can change).

    python bench/code_shape.py                 # src, tests and bench; functions over 80 lines
    python bench/code_shape.py --over 40 src   # functions over 40 lines in src
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def long_functions(folder: Path, over: int) -> list[tuple[int, str]]:
    """(lines, "path:line:name") of every function longer than ``over`` lines."""
    rows = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > over:
                    rows.append((lines, f"{path.relative_to(ROOT)}:{node.lineno}:{node.name}"))
    return sorted(rows, reverse=True)


def bare_any(folder: Path) -> int:
    """How many annotations are exactly ``Any``."""
    count = 0
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            count += sum(isinstance(a, ast.Name) and a.id == "Any" for a in _annotations(node))
    return count


def _annotations(node: ast.AST) -> list[ast.expr | None]:
    if isinstance(node, ast.AnnAssign):
        return [node.annotation]
    if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        return []
    a = node.args
    args = a.posonlyargs + a.args + a.kwonlyargs + [x for x in (a.vararg, a.kwarg) if x]
    return [x.annotation for x in args] + [node.returns]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", default=["src", "tests", "bench"])
    parser.add_argument("--over", type=int, default=80, help="list functions over this many lines")
    args = parser.parse_args()
    for name in args.folders:
        rows = long_functions(ROOT / name, args.over)
        print(f"{name}: {len(rows)} functions over {args.over} lines; "
              f"{bare_any(ROOT / name)} bare Any annotations")
        for lines, where in rows:
            print(f"  {lines:4d}  {where}")


if __name__ == "__main__":
    main()
