"""The README's Python example runs as printed and learns."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs():
    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    samples = namespace["samples"]
    assert samples["z"].shape == (16, 1, 2) and samples["x"].shape == (16, 1, 1, 8, 8)
    svi, x = namespace["svi"], namespace["x"]
    loss_per_point = svi.evaluate_loss(x, indices=torch.arange(x.shape[0])) / x.shape[0]
    assert loss_per_point < 30.0  # an untrained model scores about 44 nats per digit
