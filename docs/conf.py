"""Sphinx configuration of the pyro-vae documentation.

Build: ``pip install -c constraints.txt -e ".[docs]" && sphinx-build -W docs docs/_build``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))
os.environ.setdefault("MPLBACKEND", "Agg")

import pyro_vae  # noqa: E402

project = "pyro-vae"
author = "the pyro-vae developers"
copyright = "2026, the pyro-vae developers"
release = version = pyro_vae.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_nb",
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints", "estimator_variance.md"]
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

# Notebooks are executed by the test suite (tests/test_docs.py) and stored with their outputs;
# the site renders the stored outputs.
nb_execution_mode = "off"

autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_preserve_defaults = True
autodoc_inherit_docstrings = False  # not Lightning's docstrings on overridden hooks

# Cross-references to Pyro, PyTorch and NumPy. Each project's own inventory is fetched when the
# network allows; offline (as on the project's build machines) the inventory shipped in
# _inventories/ — made by _inventories/make_inventories.py from the installed packages' public
# names and the upstream URL schemes — is used instead.
INVENTORIES = DOCS / "_inventories"
intersphinx_mapping = {
    "pyro": ("https://docs.pyro.ai/en/stable/", (None, str(INVENTORIES / "pyro.inv"))),
    "torch": ("https://docs.pytorch.org/docs/stable/", (None, str(INVENTORIES / "torch.inv"))),
    "numpy": ("https://numpy.org/doc/stable/", (None, str(INVENTORIES / "numpy.inv"))),
}
intersphinx_timeout = 5

html_theme = "furo"
html_title = f"pyro-vae {release}"
html_static_path: list[str] = []
