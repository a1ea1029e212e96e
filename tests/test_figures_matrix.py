"""Every data kind × conditional or not, trained for one epoch with figures on: the combination
cannot break unseen (the conditional 2-D figure once crashed after training)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pyro_vae import Config, train_run
from pyro_vae.cli import main as cli_main


def _vectors(root):
    rng = np.random.default_rng(0)
    rows = np.column_stack([rng.normal(size=(40, 5)), rng.integers(0, 3, 40)])
    path = root / "vectors.csv"
    np.savetxt(path, rows, delimiter=",", header="a,b,c,d,e,label", comments="")
    return dict(dataset="file", data=str(path), label_column="label")


def _images28(root):
    rng = np.random.default_rng(0)
    path = root / "images.npz"
    np.savez(path, x=rng.random((40, 28, 28)).astype(np.float32), y=rng.integers(0, 3, 40))
    return dict(dataset="file", data=str(path), likelihood="continuous-bernoulli")


def _images64(root):
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / "folder" / label).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(
                root / "folder" / label / f"{i}.png")
    return dict(dataset="file", data=str(root / "folder"), image_size=64, hidden=(32,),
                likelihood="continuous-bernoulli")


KINDS = {
    "points": lambda root: dict(dataset="moons", max_train=64, max_test=32),
    "vectors": _vectors,
    "images28": _images28,
    "images64": _images64,
}
EXPECTED = {"points": {"elbo.png", "overview.png"}, "vectors": {"elbo.png", "latent.png"},
            "images28": {"elbo.png", "reconstructions.png", "samples.png", "latent.png",
                         "interpolation.png"},
            "images64": {"elbo.png", "reconstructions.png", "samples.png", "latent.png",
                         "interpolation.png"}}


@pytest.mark.parametrize("conditional", [False, True], ids=["plain", "conditional"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_train_with_figures_for_every_data_kind(tmp_path, kind, conditional):
    options = KINDS[kind](tmp_path)
    config = Config(epochs=1, batch_size=8, conditional=conditional, eval_samples=1,
                    **options)
    result = train_run(config, tmp_path / "run", progress=False)
    written = {p.name for p in (tmp_path / "run" / "figures").iterdir()}
    assert EXPECTED[kind] <= written
    assert result.history[-1]["epoch"] == 1
    # and the run folder's figures can be drawn again by the CLI
    assert cli_main(["plot", str(tmp_path / "run")]) == 0


def test_conditional_moons_from_the_command_line_exits_zero(tmp_path):
    code = cli_main(["train", "--dataset", "moons", "--conditional", "--epochs", "1",
                     "--max-train", "64", "--max-test", "32", "--batch-size", "32",
                     "--out", str(tmp_path / "m"), "--no-progress"])
    assert code == 0 and (tmp_path / "m" / "figures" / "overview.png").exists()
