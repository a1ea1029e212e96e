"""Every example script runs end to end in its seconds-long smoke mode."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"
EXAMPLES = sorted(p for p in EXAMPLES_DIR.glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.stem)
def test_example_smoke(script, tmp_path):
    proc = subprocess.run([sys.executable, str(script), "--smoke", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert any(tmp_path.iterdir()), "the example wrote nothing"


def test_images_example_trains_the_celeba_model_on_generated_files(tmp_path, monkeypatch):
    """The CelebA branch (64×64 conv VAE with batch norm) through torchvision's real CelebA
    loader, on a few generated JPEGs; run in-process so the MD5 check can be bypassed."""
    import runpy

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
