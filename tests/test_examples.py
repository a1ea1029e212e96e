"""Every example script runs end to end in its seconds-long smoke mode."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from tests.common import forked_run

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"
EXAMPLES = sorted(p for p in EXAMPLES_DIR.glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.stem)
def test_example_smoke(script, tmp_path):
    """``python examples/NAME.py --smoke --out DIR`` in a new process, forked from one that has
    imported the libraries (tests.common.ForkedRun): most smoke runs are mostly imports."""
    out = tmp_path / "out"
    out.mkdir()
    try:
        run = forked_run(["--smoke", "--out", str(out)], tmp_path / "logs", script=script)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{script.name} ran past 300 s")
    assert run.returncode == 0, (run.stdout + run.stderr)[-2000:]
    assert any(out.iterdir()), "the example wrote nothing"


def test_images_example_trains_the_celeba_model_on_generated_files(tmp_path, monkeypatch):
    """The CelebA branch (64×64 conv VAE with batch norm) through torchvision's real CelebA
    loader, on a few generated JPEGs; run in-process so the MD5 check can be bypassed."""
    import torchvision

    from tests.common import make_celeba_files

    make_celeba_files(tmp_path / "data")
    monkeypatch.setattr(torchvision.datasets.CelebA, "_check_integrity", lambda self: True)
    script = next(p for p in EXAMPLES if p.stem == "images")
    monkeypatch.syspath_prepend(str(EXAMPLES_DIR))  # what running the script by path does
    monkeypatch.setattr(sys, "argv", [str(script), "--dataset", "celeba", "--data-root",
                                      str(tmp_path / "data"), "--smoke", "--out",
                                      str(tmp_path / "out")])
    runpy.run_path(str(script), run_name="__main__")
    figures = tmp_path / "out" / "celeba-conv" / "figures"
    assert (figures / "reconstructions.png").exists() and (figures / "samples.png").exists()
    assert "celeba-conv" in (tmp_path / "out" / "results.md").read_text()
