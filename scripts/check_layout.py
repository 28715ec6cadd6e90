#!/usr/bin/env python3
"""Measure the package's shape against the limits of docs/architecture.md (issue #12), from the source alone.

    python scripts/check_layout.py            # report
    python scripts/check_layout.py --strict   # exit 1 when a limit is broken (for make lint)

Limits: modules <= 500 lines, functions <= 60 lines, no import cycle between fluxsr modules (imports at module
level and inside functions both count), no private name (``_x``) imported from another module, no function-level
import of a fluxsr module in library code (the command line under ``cli`` may import lazily), argparse only in
the command line.
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "fluxsr"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60


@dataclass
class Module:
    name: str
    path: Path
    lines: int
    tree: ast.Module
    imports: set[str] = field(default_factory=set)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    """Absolute module name of a ``from X import ...`` inside ``module``."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def load_modules() -> dict[str, Module]:
    mods = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        mods[module_name(path)] = Module(module_name(path), path, len(text.splitlines()), ast.parse(text))
    return mods


def is_cli(name: str) -> bool:
    return name == "fluxsr.cli" or name.startswith("fluxsr.cli.") or name == "fluxsr.__main__"


def imported(mods: dict[str, Module], mod: Module):
    """Yield (node, target module, names, inside a function) for every fluxsr import in ``mod``."""
    stack: list[tuple[ast.AST, bool]] = [(mod.tree, False)]
    is_package = mod.path.name == "__init__.py"
    while stack:
        node, in_function = stack.pop()
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.ImportFrom):
                target = resolve(mod.name, child, is_package)
                if target.startswith("fluxsr"):
                    for alias in child.names:  # `from . import x` may name a submodule
                        sub = f"{target}.{alias.name}"
                        yield child, (sub if sub in mods else target), alias.name, inner
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.startswith("fluxsr"):
                        yield child, alias.name, None, inner
            stack.append((child, inner))


def pop_component(stack: list[str], root: str) -> list[str]:
    """Pop Tarjan's stack down to ``root`` (included): one strongly connected component."""
    comp = stack[stack.index(root) :]
    del stack[stack.index(root) :]
    return comp


def find_cycles(mods: dict[str, Module]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in mods[v].imports:
            if w not in mods or w == v:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = pop_component(stack, v)
            if len(comp) > 1:
                cycles.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in mods:
        if v not in index:
            visit(v)
    return cycles


def parents(name: str) -> set[str]:
    """Package __init__ modules that importing ``name`` runs (they are not edges of a cycle)."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def long_functions(mod: Module, rel: Path) -> list[str]:
    """The functions of ``mod`` over MAX_FUNCTION_LINES, as ``path:line name: n lines``."""
    found = []
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            n = node.end_lineno - node.lineno + 1
            if n > MAX_FUNCTION_LINES:
                found.append(f"{rel}:{node.lineno} {node.name}: {n} lines")
    return found


def uses_argparse(mod: Module) -> bool:
    """Whether ``mod`` imports argparse anywhere (``import argparse`` or ``from argparse import ...``)."""
    return any(
        (isinstance(n, ast.Import) and any(a.name == "argparse" for a in n.names))
        or (isinstance(n, ast.ImportFrom) and n.level == 0 and n.module == "argparse")
        for n in ast.walk(mod.tree)
    )


def check(mods: dict[str, Module]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {k: [] for k in ("modules", "functions", "private", "lazy", "argparse")}
    for mod in mods.values():
        rel = mod.path.relative_to(ROOT)
        if mod.lines > MAX_MODULE_LINES:
            found["modules"].append(f"{rel}: {mod.lines} lines")
        found["functions"] += long_functions(mod, rel)
        for node, target, name, lazy in imported(mods, mod):
            if target != mod.name and target not in parents(mod.name):
                mod.imports.add(target)
            if name and name.startswith("_") and not name.startswith("__") and target != mod.name:
                found["private"].append(f"{rel}:{node.lineno} {name} from {target}")
            line = f"{rel}:{node.lineno} {target}"
            if lazy and not is_cli(mod.name) and line not in found["lazy"]:
                found["lazy"].append(line)
        if uses_argparse(mod) and not is_cli(mod.name):
            found["argparse"].append(str(rel))
    found["cycles"] = [" <-> ".join(c) for c in find_cycles(mods)]
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--strict", action="store_true", help="exit 1 when any limit is broken")
    args = ap.parse_args()
    found = check(load_modules())
    for kind, items in found.items():
        print(f"{kind}: {len(items)}")
        for item in items:
            print(f"  {item}")
    broken = sum(len(v) for v in found.values())
    return 1 if (args.strict and broken) else 0


if __name__ == "__main__":
    sys.exit(main())
