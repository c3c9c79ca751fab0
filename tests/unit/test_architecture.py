"""The arrows docs/ARCHITECTURE.md forbids, checked by reading every module's imports (ast)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "clipper"

# (importer, imported, why): a module name or a package prefix ending in "."
FORBIDDEN = [
    ("clipper.jobs.", "clipper.queue", "stages never import the queue"),
    ("clipper.jobs.", "redis", "stages never talk to Redis"),
    ("clipper.jobs.", "clipper.entry", "stages never import the loop"),
    ("clipper.media.", "clipper.queue", "media helpers never import the queue"),
    ("clipper.media.", "redis", "media helpers never talk to Redis"),
    ("clipper.sources.", "clipper.queue", "the source cache never imports the queue"),
    ("clipper.sources.", "redis", "the source cache never talks to Redis"),
    ("clipper.queue", "clipper.jobs.", "the queue never imports stages"),
    ("clipper.queue", "clipper.media.", "the queue knows no media"),
    ("clipper.daemon", "redis", "the process module never talks to Redis"),
    ("clipper.daemon", "clipper.queue", "the process module never talks to Redis"),
    ("clipper.daemon", "clipper.entry", "the process module is handed its service"),
    ("clipper.policy", "redis", "the retry policy decides, the loop records"),
    ("clipper.policy", "clipper.queue", "the retry policy decides, the loop records"),
    ("clipper.runner", "redis", "a job runner reports; only the main thread talks to Redis"),
    ("clipper.runner", "clipper.queue", "a job runner reports; only the main thread talks to Redis"),
    ("clipper.metrics", "redis", "metrics read live values through callables, never Redis keys"),
    ("clipper.metrics", "clipper.queue", "metrics read live values through callables, never Redis keys"),
    ("clipper.outbox", "clipper.queue", "the queue owns the outbox, not the other way round"),
    ("clipper.connections", "clipper.queue", "connections know clients, not queue keys"),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function (`from a import b` names a.b too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def matches(name: str, rule: str) -> bool:
    return name.startswith(rule) if rule.endswith(".") else name == rule or name.startswith(rule + ".")


MODULES = {module_name(p): imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


@pytest.mark.parametrize(("importer", "imported", "why"), FORBIDDEN)
def test_forbidden_arrow_is_absent(importer: str, imported: str, why: str) -> None:
    sources = [m for m in MODULES if matches(m, importer)]
    assert sources, f"no module matches {importer}: update the rule with the layout"
    offenders = sorted(f"{m} imports {n}" for m in sources for n in MODULES[m] if matches(n, imported))
    assert not offenders, f"{why}: {offenders}"
