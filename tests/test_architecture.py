"""The package layout: the data path reads downward (cli -> analyses -> backends/runs/report -> core), no circles."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "deval"
# Each package's layer; a module may import its own package and any package on a lower layer, nothing else.
LAYERS = {"cli": 4, "analyses": 3, "backends": 2, "runs": 2, "report": 2, "core": 1}
BASE = {"errors", "version", "jsonio"}  # one-job modules every layer may use; they import only each other
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every deval module a file imports, at module level or inside functions."""
    found: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "deval")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "deval":
                continue
            for alias in node.names:  # `from deval.x import y` may name a module y
                candidate = f"{base}.{alias.name}"
                found.add(candidate if module_path(candidate) else base)
    return {m for m in found if m != "deval"}


def module_path(name: str) -> Path | None:
    rel = Path(*name.split(".")[1:])
    for path in (PACKAGE / rel.with_suffix(".py"), PACKAGE / rel / "__init__.py"):
        if path.is_file():
            return path
    return None


def top(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py") if "_data" not in p.parts}


def test_every_import_runs_down_the_data_path():
    bad = []
    for mod, deps in graph().items():
        if mod == "deval":
            continue  # the public API at the top may import anything
        src = top(mod)
        for dep in deps:
            dst = top(dep)
            if src in BASE:
                ok = dst in BASE
            elif dst in BASE or dst == src:
                ok = True
            else:
                ok = src in LAYERS and dst in LAYERS and LAYERS[dst] < LAYERS[src]
            if not ok:
                bad.append(f"{mod} -> {dep}")
    assert not bad, "imports against the data path:\n" + "\n".join(sorted(bad))


def test_core_imports_nothing_but_core_and_report_no_backend():
    g = graph()
    assert not [(m, d) for m, ds in g.items() if top(m) == "core" for d in ds if top(d) not in {"core", *BASE}]
    assert not [(m, d) for m, ds in g.items() if top(m) == "report" for d in ds if top(d) == "backends"]


def test_no_import_circle():
    g = graph()
    seen: dict[str, int] = {}  # 1 on the stack, 2 done
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        seen[node] = 1
        for dep in sorted(g.get(node, ())):
            if dep not in g:
                continue
            if seen.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in seen:
                visit(dep, stack + [dep])
        seen[node] = 2

    for mod in sorted(g):
        if mod not in seen:
            visit(mod, [mod])
    assert not cycles, "import circles:\n" + "\n".join(cycles)


def test_modules_stay_small():
    long = {module_name(p): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
