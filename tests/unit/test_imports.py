"""Import structure: no cycles between sellarec's modules (module level or inside functions), every module imports
alone in a fresh interpreter, and the layers point one way (Ray, Optuna and MLflow only in the platform layer)."""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLATFORM = ("sellarec.experiment", "sellarec.tuning", "sellarec.ablation")


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / "sellarec").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path) -> list[str]:
    """Every absolute import target named in the file, wherever the statement sits."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return names


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {t for t in _imports(path) if t in modules and t != name} for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path of module names, or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles() -> None:
    assert _cycle(_graph()) is None


def test_the_two_planners_never_import_each_other() -> None:
    graph = _graph()
    for source, target in (("sellarec.tuning", "sellarec.ablation"), ("sellarec.ablation", "sellarec.tuning")):
        crossing = {m: sorted(t for t in graph[m] if t.startswith(target)) for m in graph if m.startswith(source)}
        assert not {m: t for m, t in crossing.items() if t}, crossing


def test_ray_optuna_mlflow_only_in_the_platform_layer() -> None:
    for name, path in _modules().items():
        if name.startswith(PLATFORM):
            continue
        heavy = [t for t in _imports(path) if t.split(".")[0] in {"ray", "optuna", "mlflow"}]
        assert not heavy, f"{name} imports {heavy}"


@pytest.mark.slow
def test_every_module_imports_alone_in_a_fresh_interpreter() -> None:
    names = [n for n in _modules() if n != "sellarec.__main__"]   # __main__ runs the CLI on import

    def alone(name: str) -> tuple[str, int, str]:
        done = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=ROOT, capture_output=True, text=True,
                              timeout=300)
        return name, done.returncode, done.stderr[-500:]

    with ThreadPoolExecutor(max_workers=2) as pool:
        failed = [(n, err) for n, rc, err in pool.map(alone, names) if rc != 0]
    assert not failed, failed
