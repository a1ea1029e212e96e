"""The package's house rules: no import cycle between modules, a docstring stating each module's
job, no pyplot backend chosen at import, and the public API importable from the top."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pyro_vae

PACKAGE = Path(pyro_vae.__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module → pyro_vae modules it imports at module level (an import of ``a.b.c`` also runs
    the packages ``a.b`` and ``a``), not counting its own parent packages."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        targets: set[str] = set()
        for node in tree.body:  # module level only; TYPE_CHECKING blocks never run
            if isinstance(node, ast.ImportFrom) and node.module and \
                    node.module.startswith("pyro_vae"):
                targets.add(node.module)
                targets |= {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith("pyro_vae")}
        expanded = set()
        for t in targets:
            parts = t.split(".")
            expanded |= {".".join(parts[:i]) for i in range(2, len(parts) + 1)}
        # a submodule's own parent packages are already being imported when it runs
        ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        graph[name] = {t for t in expanded if t in modules and t != name and t not in ancestors}
    return graph


def test_no_import_cycle_between_modules():
    graph = import_graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    # the top-level package re-exports everything: it may import anything, nothing imports it
    for name in sorted(graph):
        if name not in state and name != "pyro_vae":
            visit(name, [name])
    assert not cycles, f"import cycles: {cycles}"
    assert not any("pyro_vae" in deps for name, deps in graph.items() if name != "pyro_vae")


def test_every_module_says_its_job():
    missing = [module_name(p) for p in PACKAGE.rglob("*.py")
               if not ast.get_docstring(ast.parse(p.read_text())) and p.name != "__main__.py"]
    assert not missing


def test_importing_the_library_selects_no_matplotlib_backend():
    code = ("import sys, pyro_vae, pyro_vae.plots, pyro_vae.lab.gap, pyro_vae.lab.variance, "
            "pyro_vae.cli; print('matplotlib.pyplot' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"PATH": "", "MPLBACKEND": ""})
    assert out.stdout.strip() == "False"


def test_the_public_api_is_importable_from_the_top():
    for name in pyro_vae.__all__:
        assert getattr(pyro_vae, name) is not None
