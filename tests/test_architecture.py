"""The import graph: dependencies flow one way (format <- export, format <- runtime), runtime never
imports export, nothing in the library imports the training scripts, and there are no cycles."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = {"phi4edge": "phi4edge", "export": "export", "runtime": "runtime", "quant": "quant", "models": "models"}
# Which part may import which. "core" is phi4edge/ without its entry points (the CLI and
# phi4edge.load, which sit on top of everything).
ALLOWED = {
    "core": {"core"},
    "models": {"core", "models"},
    "quant": {"core", "quant"},
    "export": {"core", "models", "quant", "export"},
    "runtime": {"core", "runtime"},
    "entry": {"core", "models", "quant", "export", "runtime", "entry"},
}
ENTRY_POINTS = {"phi4edge/cli.py", "phi4edge/__init__.py"}


def part_of(path: Path) -> str:
    rel = path.relative_to(ROOT).as_posix()
    if rel in ENTRY_POINTS:
        return "entry"
    top = rel.split("/")[0]
    return "core" if top == "phi4edge" else top


def module_name(path: Path) -> str:
    """phi4edge/x.py -> phi4edge.x; export/families/phi3.py -> phi4edge.export.families.phi3."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    name = ".".join(["phi4edge"] + (parts[1:] if parts[0] == "phi4edge" else parts))
    return name.removesuffix(".__init__")


def imports(path: Path) -> list[tuple[str, int]]:
    """(absolute module name, line) of every import in a module, function-level ones included."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            out += [(f"{target}.{a.name}", node.lineno) for a in node.names] + [(target, node.lineno)]
        elif isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
    return out


def imported_parts(path: Path) -> set[tuple[str, int]]:
    """(part, line) of every phi4edge (or scripts) import in a module."""
    found = set()
    for name, line in imports(path):
        bits = name.split(".")
        if bits[0] == "scripts":
            found.add(("scripts", line))
        elif bits[0] == "phi4edge" and len(bits) > 1:
            if bits[1] in ("export", "runtime", "quant", "models"):
                found.add((bits[1], line))
            else:
                found.add(("entry" if bits[1] == "cli" else "core", line))
    return found


def library_modules() -> list[Path]:
    return sorted(p for part in PARTS.values() for p in (ROOT / part).rglob("*.py"))


def test_dependencies_flow_one_way():
    bad = []
    for path in library_modules():
        part = part_of(path)
        for target, line in imported_parts(path):
            if target not in ALLOWED[part]:
                bad.append(f"{path.relative_to(ROOT)}:{line} ({part}) imports {target}")
    assert not bad, "\n".join(bad)


def test_no_import_cycles_between_modules():
    """Module-level graph (function-level imports included): no cycles."""
    modules = {module_name(p): p for p in library_modules()}
    graph = {name: {m for m, _ in imports(path) if m in modules and m != name} for name, path in modules.items()}
    # phi4edge/__init__ imports runtime lazily for load(); it is an entry point, not a dependency
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if nxt == "phi4edge":
                continue
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2
    for node in graph:
        if node not in state:
            visit(node, [node])


def test_training_code_is_not_in_the_wheel():
    import tomllib
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "scripts" not in config["package-dir"].values()
    assert not list((ROOT / "models").glob("train*.py"))
