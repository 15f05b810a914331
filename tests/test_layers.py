"""The package's modules form layers without import cycles (read from the source with ``ast``; nothing is imported).

A node is a top-level module (``r1lab.rollout``) or a top-level package (``r1lab.tasks``, all its modules together).
Every import of an r1lab module counts, at module level or inside a function, and the graph between nodes must have
no cycle, so the dependencies point one way:

    pipeline, side_by_side, report, cli -> train -> rollout / evaluate / data / policy / stage
        -> rewards -> tasks -> models / engine / templates / encoding -> losses / advantages / logprobs / config

Besides: a trainer (a module of ``r1lab/train/``) never imports another one (what two trainers share lives in a lower
layer), and an r1lab module is imported inside a function only where ``LAZY_IMPORTS`` says why.

``pytest -s tests/test_layers.py`` prints the graph, one line per node.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "r1lab"
PACKAGE_DIR = ROOT / PACKAGE

# (importing file, imported module) -> why it is imported inside a function. Only optional heavy dependencies belong
# here: an r1lab module that pulls in a large third-party library that most runs never need.
LAZY_IMPORTS = {
    ("r1lab/rewards/registry.py", "r1lab.rewards.reward_model"):
        "a trained reward model needs torch and transformers, loaded only when a recipe names 'reward_model:...'",
    ("r1lab/cli.py", "r1lab.commands"):
        "the commands need torch and transformers (seconds to import); `r1lab --help` and `--version` do not",
}


@dataclass(frozen=True)
class Import:
    file: str  # path relative to the repository root, e.g. "r1lab/rollout.py"
    line: int
    importer: str  # dotted module name of the importing file
    module: str  # dotted name of the imported r1lab module
    in_function: bool

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _source_files() -> list[Path]:
    return sorted(path for path in PACKAGE_DIR.rglob("*.py") if "__pycache__" not in path.parts)


def _known_modules() -> set[str]:
    return {module_name(path) for path in _source_files()}


def _resolve_from(node: ast.ImportFrom, importer: str, is_package: bool, known: set[str]) -> list[str]:
    """The r1lab modules a ``from X import a, b`` names: X itself, or X.a where that is a module (``from r1lab
    import tasks``, ``from . import checks``)."""
    if node.level:
        package = importer if is_package else importer.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{node.module}" if node.module else package
    else:
        base = node.module or ""
    if base != PACKAGE and not base.startswith(PACKAGE + "."):
        return []
    submodules = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known]
    names_only = [alias for alias in node.names if f"{base}.{alias.name}" not in known]
    return submodules + ([base] if names_only or not submodules else [])


def _imports_of(path: Path, known: set[str]) -> list[Import]:
    importer = module_name(path)
    is_package = path.name == "__init__.py"
    file = path.relative_to(ROOT).as_posix()
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=file)
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    found.append(Import(file, node.lineno, importer, alias.name, in_function))
        elif isinstance(node, ast.ImportFrom):
            for module in _resolve_from(node, importer, is_package, known):
                found.append(Import(file, node.lineno, importer, module, in_function))
        inside = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    visit(tree, False)
    return found


def all_imports() -> list[Import]:
    known = _known_modules()
    return [found for path in _source_files() for found in _imports_of(path, known)]


def node_of(module: str) -> str:
    """r1lab.tasks.checks -> r1lab.tasks; r1lab.rollout -> r1lab.rollout; r1lab -> r1lab."""
    return ".".join(module.split(".")[:2])


def graph(imports: list[Import]) -> dict[str, dict[str, list[Import]]]:
    """node -> {node it imports: the imports that make that edge}; every node appears, also one without edges."""
    edges: dict[str, dict[str, list[Import]]] = {node_of(module): {} for module in _known_modules()}
    for found in imports:
        source, target = node_of(found.importer), node_of(found.module)
        if source != target:
            edges[source].setdefault(target, []).append(found)
    return edges


def _strongly_connected(edges: dict[str, dict[str, list[Import]]]) -> list[list[str]]:
    """Tarjan's algorithm: the groups of nodes that reach each other (only groups of two or more)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, {})):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return groups


def _cycle_through(start: str, group: set[str], edges: dict[str, dict[str, list[Import]]]) -> list[str]:
    """A shortest path start -> ... -> start inside one strongly connected group (breadth first)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(edges[node]):
                if target not in group:
                    continue
                if target == start:
                    chain = [node]  # node, the node before it, ..., start
                    while chain[-1] != start:
                        chain.append(previous[chain[-1]])
                    return chain[::-1] + [start]
                if target not in previous:
                    previous[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {sorted(group)}")


def _describe_edge(source: str, target: str, edges: dict[str, dict[str, list[Import]]], limit: int = 3) -> str:
    imports = edges[source][target]
    places = ", ".join(f"{found.where} imports {found.module}" + (" (in a function)" if found.in_function else "")
                       for found in imports[:limit])
    more = f", and {len(imports) - limit} more" if len(imports) > limit else ""
    return f"  {source} -> {target}: {places}{more}"


def test_no_import_cycle_between_modules_and_packages():
    edges = graph(all_imports())
    problems = []
    for group in _strongly_connected(edges):
        path = _cycle_through(group[0], set(group), edges)
        lines = [_describe_edge(a, b, edges) for a, b in zip(path, path[1:])]
        problems.append(f"cycle {' -> '.join(path)} (nodes that reach each other: {', '.join(group)}):\n"
                        + "\n".join(lines))
    assert not problems, ("import cycles between r1lab modules/packages; make the lower one stop importing the "
                          "higher one (move what both need down a layer):\n" + "\n".join(problems))


def test_no_trainer_imports_another_trainer():
    trainers = f"{PACKAGE}.train."
    problems = [f"  {found.where}: {found.importer} imports {found.module}" for found in all_imports()
                if found.importer.startswith(trainers) and found.module.startswith(trainers)
                and found.module != found.importer]
    assert not problems, ("a trainer imports another trainer; move what they share to a lower layer (policy, "
                          "losses, data, ...):\n" + "\n".join(problems))


def test_no_r1lab_import_inside_a_function_except_optional_heavy_ones():
    lazy = [found for found in all_imports() if found.in_function]
    problems = [f"  {found.where}: imports {found.module}" for found in lazy
                if (found.file, found.module) not in LAZY_IMPORTS]
    assert not problems, ("r1lab modules imported inside a function; move each import to the top of its module (a "
                          "lazy import of an optional heavy dependency needs an entry in LAZY_IMPORTS with its "
                          "reason):\n" + "\n".join(problems))
    stale = [key for key in LAZY_IMPORTS if not any((found.file, found.module) == key for found in lazy)]
    assert not stale, f"LAZY_IMPORTS entries that no longer match a lazy import (remove them): {stale}"


def test_layer_graph_summary():
    """Prints one line per node: the nodes it imports (``pytest -s`` shows it)."""
    edges = graph(all_imports())
    lines = [f"{node} -> {', '.join(sorted(targets)) or '(nothing of r1lab)'}"
             for node, targets in sorted(edges.items())]
    print("\nr1lab import graph (node -> the nodes it imports):\n" + "\n".join(lines))
    assert f"{PACKAGE}.tasks" in edges and f"{PACKAGE}.rewards" in edges
    assert f"{PACKAGE}.rewards" not in edges[f"{PACKAGE}.tasks"], "the tasks must not import the rewards"


def test_the_graph_reader_resolves_every_form_of_import(tmp_path, monkeypatch):
    """The parser itself, on a throwaway package: absolute, from-package, relative and in-function imports."""
    package = tmp_path / PACKAGE
    (package / "tasks").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "config.py").write_text("")
    (package / "tasks" / "__init__.py").write_text("from . import checks\nfrom .checks import x\n")
    (package / "tasks" / "checks.py").write_text("from .. import config\nimport r1lab.config as c\n")
    (package / "rollout.py").write_text("from r1lab import tasks, config\n"
                                        "def f():\n    from r1lab.tasks.checks import x\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    monkeypatch.setitem(globals(), "PACKAGE_DIR", package)
    found = {(i.file, i.line, i.module, i.in_function) for i in all_imports()}
    assert found == {
        ("r1lab/tasks/__init__.py", 1, "r1lab.tasks.checks", False),
        ("r1lab/tasks/__init__.py", 2, "r1lab.tasks.checks", False),
        ("r1lab/tasks/checks.py", 1, "r1lab.config", False),
        ("r1lab/tasks/checks.py", 2, "r1lab.config", False),
        ("r1lab/rollout.py", 1, "r1lab.tasks", False),
        ("r1lab/rollout.py", 1, "r1lab.config", False),
        ("r1lab/rollout.py", 3, "r1lab.tasks.checks", True),
    }
    edges = graph(all_imports())
    assert set(edges["r1lab.rollout"]) == {"r1lab.tasks", "r1lab.config"}
    assert set(edges["r1lab.tasks"]) == {"r1lab.config"} and edges["r1lab.config"] == {}


def test_a_cycle_is_reported_with_its_path_and_lines(tmp_path, monkeypatch):
    package = tmp_path / PACKAGE
    for sub in ("tasks", "rewards"):
        (package / sub).mkdir(parents=True)
        (package / sub / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "tasks" / "verifiers.py").write_text("def code():\n    from r1lab.rewards.code import run\n")
    (package / "rewards" / "code.py").write_text("from r1lab.tasks.verifiers import verify\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    monkeypatch.setitem(globals(), "PACKAGE_DIR", package)
    with pytest.raises(AssertionError) as failure:
        test_no_import_cycle_between_modules_and_packages()
    message = str(failure.value)
    assert "cycle r1lab.rewards -> r1lab.tasks -> r1lab.rewards" in message
    assert "r1lab/rewards/code.py:1 imports r1lab.tasks.verifiers" in message
    assert "r1lab/tasks/verifiers.py:2 imports r1lab.rewards.code (in a function)" in message
