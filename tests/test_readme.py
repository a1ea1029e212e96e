"""The README's Python examples run as printed, in order, and do what they say."""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)  # the examples write under runs/
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    samples = namespace["samples"]
    assert samples["z"].shape == (16, 1, 2) and samples["x"].shape == (16, 1, 1, 8, 8)
    svi, x = namespace["svi"], namespace["x"]
    loss_per_point = svi.evaluate_loss(x, indices=torch.arange(x.shape[0])) / x.shape[0]
    assert loss_per_point < 30.0  # an untrained model scores about 44 nats per digit

    exec(compile(blocks[1], "README.md", "exec"), namespace)
    assert namespace["new"]["x"].shape == (4, 16, 1, 8, 8)
    assert namespace["rec"]["x"].shape == (4, 16, 1, 8, 8)
    assert namespace["z_true"].shape == (100, 1, 2)
    assert (tmp_path / "runs" / "readme.pt").exists()

    exec(compile(blocks[2], "README.md", "exec"), namespace)
    elbo, log_px = namespace["elbo"], namespace["log_px"]
    assert math.isfinite(elbo.mean) and float(log_px.mean()) > elbo.mean - 0.5
    assert (namespace["gap"].amortization_gap >= 0).all()
    assert namespace["snr"].groups["encoder"].mean_norm > 0


def test_every_command_line_in_the_readme_parses():
    """Every concrete ``pyro-vae ...`` line of the README's bash blocks (and every
    ``python examples/...`` line's script) still exists with those options: documentation
    cannot drift from the command line."""
    import shlex

    from pyro_vae.cli import build_parser

    text = README.read_text()
    lines = [line.split(" #")[0].strip() for block in re.findall(r"```bash\n(.*?)```", text, re.S)
             for line in block.splitlines()]
    commands = [shlex.split(line)[1:] for line in lines
                if line.startswith("pyro-vae ") and "[" not in line and "|" not in line]
    assert len(commands) >= 10
    parser = build_parser()
    for argv in commands:
        parser.parse_args(argv)  # a renamed or removed option raises SystemExit here
    scripts = {m for m in re.findall(r"python (examples/\w+\.py|benchmarks/\w+\.py)", text)}
    root = README.parent
    assert scripts and all((root / s).exists() for s in scripts), scripts
