"""The documentation cannot drift from the code: the README's and the user guide's Python
snippets run as printed and do what they say, every ``pyro-vae`` command line in them parses,
the tutorials run top to bottom, and the Sphinx site builds with warnings as errors."""

from __future__ import annotations

import copy
import math
import random
import re
import shlex
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)
NOTEBOOKS = sorted((DOCS / "tutorials").glob("*.ipynb"))


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


def run_blocks(path: Path, namespace: dict) -> dict:
    for block in python_blocks(path):
        exec(compile(block, str(path), "exec"), namespace)
    return namespace


def run_quickstart_then(path: Path, quickstart: Callable[[], dict]) -> dict:
    """The blocks of ``path``, its first (the quickstart) from the shared run's state."""
    blocks = python_blocks(path)
    assert blocks[0] == QUICKSTART, f"{path.name}'s first snippet is no longer the quickstart"
    namespace = quickstart()
    for block in blocks[1:]:
        exec(compile(block, str(path), "exec"), namespace)
    return namespace


#: The README's first snippet (50 epochs of SVI on the digits, 6 s), which the user guide's model
#: page repeats word for word: it runs once per worker (the two tests share an xdist group), and
#: each test continues from a copy of what it left behind.
QUICKSTART = python_blocks(README)[0]


@pytest.fixture(scope="module")
def quickstart() -> Callable[[], dict]:
    """Run :data:`QUICKSTART` as the first thing of a test would (the autouse ``_seeded``
    state: seed 0, an empty param store, validation on), and return a function that gives a
    test the namespace it left, deep-copied (the trained VAE, its SVI and optimizer state, the
    data), with the random number generators where they were after it: each test then runs as
    if it had executed the snippet itself."""
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    pyro.enable_validation(True)
    namespace: dict = {}
    exec(compile(QUICKSTART, str(README), "exec"), namespace)
    rng = torch.get_rng_state(), random.getstate(), np.random.get_state()
    modules = {k: v for k, v in namespace.items() if isinstance(v, types.ModuleType)}
    objects = {k: v for k, v in namespace.items() if k not in modules}
    pyro.clear_param_store()

    def fresh() -> dict:
        torch.set_rng_state(rng[0])
        random.setstate(rng[1])
        np.random.set_state(rng[2])
        return {**modules, **copy.deepcopy(objects)}

    return fresh


@pytest.mark.xdist_group("docs_quickstart")
def test_readme_example_runs(tmp_path, monkeypatch, quickstart):
    monkeypatch.chdir(tmp_path)
    ns = run_quickstart_then(README, quickstart)
    assert ns["samples"]["z"].shape == (16, 1, 2) and ns["samples"]["x"].shape == (16, 1, 1, 8, 8)
    svi, x = ns["svi"], ns["x"]
    loss_per_point = svi.evaluate_loss(x, indices=torch.arange(x.shape[0])) / x.shape[0]
    assert loss_per_point < 30.0  # an untrained model scores about 44 nats per digit


@pytest.mark.xdist_group("docs_quickstart")
def test_user_guide_model_page_runs_and_does_what_it_says(tmp_path, monkeypatch, quickstart):
    monkeypatch.chdir(tmp_path)  # the snippets write under runs/
    ns = run_quickstart_then(DOCS / "user_guide" / "model.md", quickstart)
    assert ns["new"]["x"].shape == (4, 16, 1, 8, 8) and ns["rec"]["x"].shape == (4, 16, 1, 8, 8)
    assert ns["z_true"].shape == (100, 1, 2)
    assert (tmp_path / "runs" / "readme.pt").exists()
    elbo, log_px = ns["elbo"], ns["log_px"]
    assert math.isfinite(elbo.mean) and float(log_px.mean()) > elbo.mean - 0.5
    gap = ns["gap"].summary()["amortization_gap"]  # measured: positive beyond its noise
    assert gap["mean"] > 2 * gap["stderr"]
    assert ns["snr"].groups["encoder"].mean_norm > 0


def test_discrete_and_semi_supervised_pages_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns = run_blocks(DOCS / "user_guide" / "discrete.md", {})
    assert ns["after"] > ns["before"] + 1.0  # VIMCO raised the exact ELBO
    ns = run_blocks(DOCS / "user_guide" / "semi_supervised.md", {})
    assert [h["epoch"] for h in ns["history"]] == [1, 2]
    assert 0 <= ns["history"][-1]["test_accuracy"] <= 1 and math.isfinite(ns["loss"])


def test_every_page_with_python_is_run_by_a_test():
    tested = {"model.md", "discrete.md", "semi_supervised.md"}
    assert {p.name for p in PAGES if python_blocks(p)} <= tested


def test_every_command_line_in_the_docs_parses():
    """Every concrete ``pyro-vae ...`` line of the README's and the docs' bash blocks (and every
    ``python examples/...`` or ``benchmarks/...`` script named) still exists with those options."""
    from pyro_vae.cli import build_parser

    parser = build_parser()
    commands, scripts = [], set()
    for page in [README, *PAGES]:
        text = page.read_text()
        lines = [line.split(" #")[0].strip()
                 for block in re.findall(r"```bash\n(.*?)```", text, re.S)
                 for line in block.splitlines()]
        commands += [shlex.split(line)[1:] for line in lines
                     if line.startswith("pyro-vae ") and "[" not in line and "|" not in line]
        scripts |= set(re.findall(r"python (examples/\w+\.py|benchmarks/\w+\.py)", text))
    assert len(commands) >= 15
    for argv in commands:
        parser.parse_args(argv)  # a renamed or removed option raises SystemExit here
    assert scripts and all((ROOT / s).exists() for s in scripts), scripts


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_tutorial_runs_top_to_bottom(notebook, tmp_path):
    """Each tutorial in a new IPython kernel: a fork of the test process's fork server
    (tests.common.forked_kernel_manager_class), which has imported torch, Pyro and pyro_vae
    and run nothing else, so that a kernel starts without importing them again (two tutorials
    took 31–34 s in new interpreters, 9–12 s in forked kernels, with the same outputs)."""
    import nbformat
    from nbclient import NotebookClient

    from tests.common import forked_kernel_manager_class

    book = nbformat.read(notebook, as_version=4)
    NotebookClient(book, timeout=240, kernel_name="python3",
                   kernel_manager_class=forked_kernel_manager_class(),
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors


def test_sphinx_site_builds_with_warnings_as_errors(tmp_path):
    from sphinx.cmd.build import build_main

    out = tmp_path / "html"
    code = build_main(["-W", "--keep-going", "-q", "-b", "html", "-d", str(tmp_path / "doctrees"),
                       str(DOCS), str(out)])
    assert code == 0
    for page in ("index.html", "getting_started.html", "api/infer.html",
                 "user_guide/discrete.html", "tutorials/plain_pyro_vae.html", "results.html"):
        assert (out / page).stat().st_size > 2000, page
    assert "VIMCO_ELBO" in (out / "api" / "infer.html").read_text()
