"""Module and function sizes against the project's limits (STYLE.md: files of a few hundred
lines, functions short): prints every module over --max-lines lines and every function over
--max-function lines of code (docstrings, comments and blank lines not counted), then the
median and longest function. Exit 1 when something is over.

    .venv/bin/python scripts/sizes.py [--max-lines 400] [--max-function 50]
"""

from __future__ import annotations

import argparse
import ast
import statistics
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "clipper"


def code_lines(lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    first = node.body[0]
    docstring = set()
    if ast.get_docstring(node) is not None and isinstance(first, ast.Expr):
        docstring = set(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    end = node.end_lineno or node.lineno
    return sum(1 for i in range(node.lineno, end + 1)
               if i not in docstring and lines[i - 1].strip() and not lines[i - 1].strip().startswith("#"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-lines", type=int, default=400)
    parser.add_argument("--max-function", type=int, default=50)
    args = parser.parse_args()
    over, lengths = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        lines = text.splitlines()
        name = path.relative_to(PACKAGE.parent)
        if len(lines) > args.max_lines:
            over.append(f"{name}: {len(lines)} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = code_lines(lines, node)
                lengths.append(n)
                if n > args.max_function:
                    over.append(f"{name}:{node.lineno} {node.name}: {n} lines of code")
    print("\n".join(over) or "nothing over the limits")
    print(f"functions: {len(lengths)}, median {statistics.median(lengths):g}, longest {max(lengths)} lines of code")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
