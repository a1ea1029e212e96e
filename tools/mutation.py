"""A small mutation-testing driver for the numerical core (issue 28).

A *mutant* is a copy of one module with one small change: ``+`` ↔ ``-``, ``*`` ↔ ``/``, a
comparison flipped (``<`` ↔ ``<=``, ``>`` ↔ ``>=``, ``==`` ↔ ``!=``), a number changed
(n → n + 1), a unary minus removed, ``.sum`` ↔ ``.mean``, ``max`` ↔ ``min``, a ``dim=``
argument moved to another axis, ``keepdim`` flipped. The selected tests are run against each
mutant; a mutant is *killed* when they fail (or error, or time out) and *survives* when they
pass. The score is killed / total; every survivor is then either killed by a new test or
explained as equivalent (docs/testing.md).

The module file is never written to. Each mutant is compiled from its source text into a
module object by an import hook installed in a forked child process, which then runs
``pytest.main`` on the selected tests: the working tree (which other people may be editing, or
running tests from) never sees a mutant, and an interrupted run leaves nothing to restore. The
parent imports torch, Pyro and pytest once and forks a fresh child per mutant (no
``pyro_vae`` module is imported in the parent), which saves the interpreter start-up per mutant.
The module's SHA-256 is checked at the end to show it is untouched.

Usage::

    python tools/mutation.py --module pyro_vae/distributions/likelihoods.py \\
        --tests tests/distributions/test_likelihoods.py \\
        tests/distributions/test_mutants_likelihoods.py --max-mutants 60 --seed 0 \\
        --json survivors.json

``--list`` prints the mutants without running anything; ``--only 3 17`` runs those ids.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import hashlib
import importlib
import importlib.abc
import importlib.machinery
import json
import os
import random
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BINOP_SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
              ast.FloorDiv: ast.Mult, ast.Pow: ast.Mult}
CMP_SWAP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
            ast.Eq: ast.NotEq, ast.NotEq: ast.Eq}
SYMBOL = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//",
          ast.Pow: "**", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==",
          ast.NotEq: "!="}
METHOD_SWAP = {"sum": "mean", "mean": "sum", "max": "min", "min": "max", "amax": "amin",
               "amin": "amax", "argmax": "argmin", "argmin": "argmax"}
DIM_KEYWORDS = {"dim", "axis"}
LOG_METHODS = {"debug", "info", "warning", "warn", "error", "exception"}


@dataclass
class Mutant:
    id: int
    line: int
    col: int
    kind: str
    description: str
    source_line: str


@dataclass
class Result:
    id: int
    line: int
    kind: str
    description: str
    source_line: str
    outcome: str  # killed | survived | timeout | error
    killed_by: str
    seconds: float


class _Collector(ast.NodeVisitor):
    """Walks a module in a fixed order and records every mutation point as (node, action).

    Not mutated: docstrings and other strings, f-strings, ``raise`` statements (error
    messages), ``assert`` statements, annotations, and logging / ``warnings.warn`` calls.
    """

    def __init__(self) -> None:
        self.points: list[tuple[ast.AST, str, str]] = []  # node, kind, action key

    # ---- skipped subtrees -------------------------------------------------------------
    def visit_JoinedStr(self, node):
        return

    def visit_Raise(self, node):
        return

    def visit_Assert(self, node):
        return

    def visit_AnnAssign(self, node):
        if node.value is not None:
            self.visit(node.value)

    def visit_FunctionDef(self, node):
        for d in node.decorator_list:
            self.visit(d)
        for default in [*node.args.defaults, *[d for d in node.args.kw_defaults if d]]:
            self.visit(default)
        for stmt in node.body:
            self.visit(stmt)

    visit_AsyncFunctionDef = visit_FunctionDef  # noqa: N815

    def visit_Call(self, node):
        f = node.func
        if isinstance(f, ast.Attribute) and f.attr in LOG_METHODS:
            return
        if isinstance(f, ast.Name) and f.id in {"print"}:
            return
        self.visit(node.func)
        for a in node.args:
            self.visit(a)
        for kw in node.keywords:
            if kw.arg in DIM_KEYWORDS and _int_literal(kw.value) is not None:
                self.points.append((kw, "dim", "dim"))
                continue
            if kw.arg == "keepdim" and isinstance(kw.value, ast.Constant) \
                    and isinstance(kw.value.value, bool):
                self.points.append((kw, "keepdim", "keepdim"))
                continue
            if kw.arg in {"min", "max"}:
                self.points.append((kw, "keyword", "minmax"))
            self.visit(kw.value)

    # ---- mutation points -------------------------------------------------------------
    def visit_BinOp(self, node):
        if type(node.op) in BINOP_SWAP and not (_is_str(node.left) or _is_str(node.right)):
            self.points.append((node, "binop", "binop"))
        self.generic_visit(node)

    def visit_AugAssign(self, node):
        if type(node.op) in BINOP_SWAP:
            self.points.append((node, "binop", "binop"))
        self.generic_visit(node)

    def visit_Compare(self, node):
        for i, op in enumerate(node.ops):
            if type(op) in CMP_SWAP:
                self.points.append((node, "compare", f"compare:{i}"))
        self.generic_visit(node)

    def visit_UnaryOp(self, node):
        if isinstance(node.op, ast.USub):
            self.points.append((node, "unary", "unary"))
        self.generic_visit(node)

    def visit_Constant(self, node):
        if isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            self.points.append((node, "constant", "constant"))

    def visit_Attribute(self, node):
        if node.attr in METHOD_SWAP and isinstance(node.ctx, ast.Load):
            self.points.append((node, "method", "method"))
        self.generic_visit(node)

    def visit_Name(self, node):
        if node.id in {"max", "min"} and isinstance(node.ctx, ast.Load):
            self.points.append((node, "builtin", "builtin"))


def _is_str(node: ast.AST) -> bool:
    return (isinstance(node, ast.Constant) and isinstance(node.value, str)) or \
        isinstance(node, ast.JoinedStr)


def _int_literal(node: ast.AST) -> int | None:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) \
            and isinstance(node.operand, ast.Constant) and type(node.operand.value) is int:
        return -node.operand.value
    return None


def _apply(node: ast.AST, action: str) -> str:
    """Mutate ``node`` in place; return a description."""
    if action == "binop":
        old = type(node.op)
        node.op = BINOP_SWAP[old]()
        return f"{SYMBOL[old]} -> {SYMBOL[type(node.op)]}"
    if action.startswith("compare:"):
        i = int(action.split(":")[1])
        old = type(node.ops[i])
        node.ops[i] = CMP_SWAP[old]()
        return f"{SYMBOL[old]} -> {SYMBOL[type(node.ops[i])]}"
    if action == "unary":
        return "remove unary minus"  # the caller replaces the node by its operand
    if action == "constant":
        old = node.value
        node.value = old + 1
        return f"{old!r} -> {node.value!r}"
    if action == "method":
        old = node.attr
        node.attr = METHOD_SWAP[old]
        return f".{old} -> .{node.attr}"
    if action == "builtin":
        old = node.id
        node.id = "min" if old == "max" else "max"
        return f"{old}() -> {node.id}()"
    if action == "dim":
        old = _int_literal(node.value)
        new = 0 if old != 0 else -1
        node.value = ast.Constant(new) if new >= 0 else ast.UnaryOp(ast.USub(), ast.Constant(1))
        return f"{node.arg}={old} -> {node.arg}={new}"
    if action == "keepdim":
        node.value = ast.Constant(not node.value.value)
        return f"keepdim={not node.value.value} -> keepdim={node.value.value}"
    if action == "minmax":
        old = node.arg
        node.arg = "max" if old == "min" else "min"
        return f"{old}= -> {node.arg}="
    raise ValueError(action)


class _Unwrap(ast.NodeTransformer):
    def __init__(self, target: ast.AST) -> None:
        self.target = target

    def visit_UnaryOp(self, node):
        if node is self.target:
            return node.operand
        return self.generic_visit(node)


def _points(tree: ast.Module) -> list[tuple[ast.AST, str, str]]:
    collector = _Collector()
    collector.visit(tree)
    return collector.points


def enumerate_mutants(source: str) -> list[Mutant]:
    lines = source.splitlines()
    mutants = []
    for i, (node, kind, action) in enumerate(_points(ast.parse(source))):
        probe = copy.deepcopy(node)
        desc = _apply(probe, action)
        line = getattr(node, "lineno", 0)
        mutants.append(Mutant(i, line, getattr(node, "col_offset", 0), kind, desc,
                              lines[line - 1].strip() if line else ""))
    return mutants


def mutant_source(source: str, mutant_id: int) -> str:
    tree = ast.parse(source)
    node, _, action = _points(tree)[mutant_id]
    _apply(node, action)
    if action == "unary":
        tree = _Unwrap(node).visit(tree)
    ast.fix_missing_locations(tree)
    return ast.unparse(tree)


# ---- running -------------------------------------------------------------------------------

class _SourceHook(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``name`` from the given source text instead of its file (``__file__`` stays the
    real path)."""

    def __init__(self, name: str, origin: str, source: str) -> None:
        self.name, self.origin, self.source = name, origin, source

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        spec = importlib.machinery.ModuleSpec(fullname, self, origin=self.origin)
        spec.has_location = True
        return spec

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        module.__file__ = self.origin
        exec(compile(self.source, self.origin, "exec"), module.__dict__)


class _FirstFailure:
    """A pytest plugin recording the first failing test's id."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def pytest_runtest_logreport(self, report):
        if report.failed:
            self.failed.append(report.nodeid)

    def pytest_collectreport(self, report):
        if report.failed:
            self.failed.append(f"collection of {report.nodeid}")


def _run_child(module_name: str, origin: str, source: str, pytest_args: list[str],
               result_path: str, log_path: str) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    code = 3
    failed: list[str] = []
    try:
        import pytest

        sys.meta_path.insert(0, _SourceHook(module_name, origin, source))
        recorder = _FirstFailure()
        code = int(pytest.main(pytest_args, plugins=[recorder]))
        failed = recorder.failed
    except BaseException as exc:
        failed = [f"{type(exc).__name__}: {exc}"]
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            Path(result_path).write_text(json.dumps({"code": code, "failed": failed[:3]}))
        finally:
            os._exit(0)


def run_tests(module_name: str, origin: str, source: str, pytest_args: list[str],
              wall_timeout: float, workdir: Path) -> tuple[str, str, float]:
    """(outcome, killed_by, seconds) of the tests against ``source``."""
    result_path, log_path = workdir / "result.json", workdir / "pytest.log"
    result_path.unlink(missing_ok=True)
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child
        os.setpgid(0, 0)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        _run_child(module_name, origin, source, pytest_args, str(result_path), str(log_path))
    try:
        deadline = start + wall_timeout
        while True:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.perf_counter() > deadline:
                _kill_group(pid)
                return "timeout", "", time.perf_counter() - start
            time.sleep(0.05)
    except BaseException:
        _kill_group(pid)
        raise
    seconds = time.perf_counter() - start
    if not result_path.exists():
        return "killed", "child crashed", seconds
    res = json.loads(result_path.read_text())
    code, failed = res["code"], res["failed"]
    if code == 0:
        return "survived", "", seconds
    if code == 1:
        return "killed", failed[0] if failed else "", seconds
    # 2: interrupted / collection error, 3: internal error, 4: usage, 5: no tests
    if failed:
        return "error", failed[0], seconds
    lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    last = next((ln for ln in reversed(lines) if "Error" in ln), lines[-1] if lines else "")
    return "error", f"pytest exit {code}: {last.strip()[:120]}", seconds


def _kill_group(pid: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _preload() -> None:
    """Import, in this (parent) process, every third-party module that importing ``pyro_vae``
    and starting pytest imports (torch, Pyro, the pytest plugins, hypothesis ...), as a fresh
    interpreter lists them: each forked child then starts with them loaded."""
    import subprocess

    probe = ("import sys, importlib.metadata as m, pyro_vae, pytest, pdb\n"
             "for ep in m.entry_points(group='pytest11'):\n"
             "    try: ep.load()\n"
             "    except Exception: pass\n"
             "print('\\n'.join(k for k in sys.modules if not k.startswith(('pyro_vae', 'tests', "
             "'__main__'))))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         cwd=ROOT, check=False).stdout
    for name in out.split():
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except BaseException:
            continue


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--module", required=True, help="path of the module to mutate")
    parser.add_argument("--tests", nargs="+", default=[], help="test files or node ids")
    parser.add_argument("-k", "--keyword", help="pytest -k expression selecting among --tests")
    parser.add_argument("--max-mutants", type=int, default=60,
                        help="a seeded random sample of at most this many (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", type=int, nargs="+", help="run these mutant ids only")
    parser.add_argument("--kinds", nargs="+", help="only these kinds of mutation")
    parser.add_argument("--timeout", type=float, default=120,
                        help="pytest-timeout per test, seconds (the wall limit of one mutant's "
                             "run is max(3 × the unmutated run, this))")
    parser.add_argument("--json", help="write the results (survivors first) here")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = parser.parse_args(argv)

    path = (ROOT / args.module).resolve() if not Path(args.module).is_absolute() \
        else Path(args.module)
    module_name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    digest = _sha256(path)
    source = path.read_text()
    mutants = enumerate_mutants(source)
    total = len(mutants)
    if args.kinds:
        mutants = [m for m in mutants if m.kind in args.kinds]
    if args.only is not None:
        mutants = [m for m in mutants if m.id in set(args.only)]
    elif args.max_mutants and len(mutants) > args.max_mutants:
        pick = sorted(random.Random(args.seed).sample(range(len(mutants)), args.max_mutants))
        mutants = [mutants[i] for i in pick]
    if args.list:
        for m in mutants:
            print(f"#{m.id:3d} L{m.line:<4d} {m.kind:8s} {m.description:24s} | {m.source_line}")
        print(f"{module_name}: {len(mutants)} of {total} mutants listed")
        return 0
    if not args.tests:
        parser.error("--tests is required unless --list")

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    os.chdir(ROOT)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    # Warm the parent with the heavy third-party imports, never with pyro_vae itself.
    import torch

    torch.set_num_threads(1)
    _preload()
    assert not any(m == "pyro_vae" or m.startswith("pyro_vae.") for m in sys.modules)

    pytest_args = [*args.tests, "-x", "-q", "-n", "0", "-p", "no:randomly",
                   "-p", "no:cacheprovider", "--timeout", str(int(args.timeout)),
                   "-W", "ignore"] + (["-k", args.keyword] if args.keyword else [])
    results: list[Result] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        work = Path(tmp)
        outcome, detail, base = run_tests(module_name, str(path), ast.unparse(ast.parse(source)),
                                          pytest_args, 600, work)
        if outcome != "survived":
            print((work / "pytest.log").read_text()[-3000:])
            print(f"the unmutated module fails its tests ({outcome}: {detail}); stopping")
            return 2
        wall = max(3 * base, args.timeout)
        print(f"{module_name}: {total} mutants, running {len(mutants)}; tests: "
              f"{' '.join(args.tests)}" + (f" -k {args.keyword!r}" if args.keyword else "")
              + f"; unmutated run {base:.1f} s", flush=True)
        unmutated = ast.unparse(ast.parse(source))
        for m in mutants:
            for _attempt in range(3):
                outcome, killed_by, seconds = run_tests(
                    module_name, str(path), mutant_source(source, m.id), pytest_args, wall,
                    work)
                if outcome != "error":
                    break
                # pytest could not run the tests (exit 2-5): the mutant breaks the import, or
                # the working tree is broken for a moment (someone else's edit in progress).
                # The unmutated module tells which: if it fails too, wait and try again.
                if run_tests(module_name, str(path), unmutated, pytest_args, wall,
                             work)[0] == "survived":
                    break
                print(f"#{m.id:3d} the unmutated module fails too: retrying in 30 s",
                      flush=True)
                time.sleep(30)
            else:
                outcome, killed_by = "unrun", "the unmutated tests failed as well"
            results.append(Result(m.id, m.line, m.kind, m.description, m.source_line,
                                  outcome, killed_by, round(seconds, 1)))
            mark = {"killed": "KILLED", "survived": "SURVIVED", "timeout": "TIMEOUT",
                    "error": "ERROR", "unrun": "UNRUN"}[outcome]
            print(f"#{m.id:3d} L{m.line:<4d} {m.description:24s} {mark:8s} {seconds:5.1f}s "
                  f"| {m.source_line[:70]}" + (f"  <- {killed_by}" if killed_by else ""),
                  flush=True)
    elapsed = time.perf_counter() - t0
    unrun = [r for r in results if r.outcome == "unrun"]
    results = [r for r in results if r.outcome != "unrun"]
    if unrun:
        print(f"not run (the tests failed without a mutant too): {[r.id for r in unrun]}")
    survivors = [r for r in results if r.outcome == "survived"]
    killed = len(results) - len(survivors)
    score = 100.0 * killed / len(results) if results else 0.0
    untouched = _sha256(path) == digest
    print(f"source untouched: {untouched} (sha256 {digest[:16]}); {elapsed:.0f} s")
    if args.only is not None:
        sampled = f" (the ids given, of {total})"
    elif len(results) < total:
        sampled = f" (sampled {len(results)} of {total}, seed {args.seed})"
    else:
        sampled = ""
    print(f"{module_name}: {killed}/{len(results)} ({score:.1f} %){sampled}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "module": module_name, "sha256": digest, "total_mutants": total, "run": len(results),
            "killed": killed, "score": round(score, 1), "seed": args.seed,
            "tests": args.tests, "keyword": args.keyword, "seconds": round(elapsed),
            "survivors": [asdict(r) for r in survivors],
            "unrun": [r.id for r in unrun],
            "results": [asdict(r) for r in results]}, indent=1))
    return 0 if untouched else 3


if __name__ == "__main__":
    sys.exit(main())
