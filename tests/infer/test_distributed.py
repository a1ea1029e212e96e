"""Data-parallel training on PyTorch Lightning: two real CPU processes (gloo) train the same
model/guide, end in sync, and match a single-process run's ELBO within noise."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pyro_vae import ConfigError, TrainingDivergedError, load_run
from pyro_vae.config import Config
from tests.common import forked_run

# find_spec, not importorskip: importing Lightning costs every test process 5 s at collection
if importlib.util.find_spec("lightning") is None:
    pytest.skip("needs lightning", allow_module_level=True)

COMMON = ["--dataset", "digits", "--max-train", "512", "--max-test", "256", "--hidden", "64",
          "--latent-dim", "2", "--likelihood", "gaussian-learned", "--epochs", "30",
          "--batch-size", "32", "--lr", "3e-3", "--no-progress", "--no-figures"]


def train(out, *extra: str, forked: bool = False) -> None:
    """``python -m pyro_vae train`` in a new interpreter (Lightning's DDP launcher starts its
    second worker by running that command line again), or, ``forked``, in a new process forked
    from one that has imported the library (tests.common.ForkedRun: no 3 s of imports)."""
    argv = ["train", *COMMON, "--out", str(out), *extra]
    if forked:
        proc = forked_run(argv, Path(f"{out}.logs"), timeout=600)
    else:
        proc = subprocess.run([sys.executable, "-m", "pyro_vae", *argv], capture_output=True,
                              text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_two_ddp_workers_stay_in_sync_and_match_a_single_process_run(tmp_path):
    # 2 workers × 16 points per step against 1 × 32: the same expected step, as many steps
    train(tmp_path / "ddp", "--strategy", "ddp", "--devices", "2", "--batch-size", "16")
    train(tmp_path / "single", forked=True)
    summary = json.loads((tmp_path / "ddp" / "distributed.json").read_text())
    assert summary["workers"] == 2
    # every network weight and the learned σ (a pyro.param, all-reduced by hand) agree
    assert summary["max_parameter_difference_between_workers"] == 0.0
    ddp, single = load_run(tmp_path / "ddp"), load_run(tmp_path / "single")
    a, b = ddp.history[-1], single.history[-1]
    # the library's checkpoint format: the DDP run loads like any other
    assert len(ddp.history) == 30 and ddp.config.strategy == "ddp"
    tolerance = 4 * (a["test_elbo_se"] ** 2 + b["test_elbo_se"] ** 2) ** 0.5
    assert abs(a["test_elbo"] - b["test_elbo"]) < tolerance, (a["test_elbo"], b["test_elbo"])
    assert a["test_elbo"] > ddp.history[0]["test_elbo"] + 5


def test_ddp_options_are_validated():
    with pytest.raises(ConfigError, match="--strategy ddp"):
        Config(devices=2).resolved()
    with pytest.raises(ConfigError, match="strategy"):
        Config(strategy="horovod").resolved()


def test_a_one_worker_ddp_run_of_the_default_model_evaluates_like_the_trainer(tmp_path):
    """Digits defaults: Bernoulli with dynamic binarization, whose per-epoch training ELBO is
    scored on a fixed binarized subset, as in the single-process trainer."""
    # one worker: Lightning starts no second process, so a fork of the imported library runs it
    proc = forked_run(["train", "--max-train", "256", "--max-test", "64", "--epochs", "2",
                       "--strategy", "ddp", "--devices", "1", "--no-progress", "--out",
                       str(tmp_path / "run")], tmp_path / "logs", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = load_run(tmp_path / "run")
    assert [h["epoch"] for h in run.history] == [1, 2]
    assert (tmp_path / "run" / "figures" / "samples.png").exists()


def test_missing_nodes_stop_the_run_after_the_rendezvous_timeout(monkeypatch):
    """--num-nodes 2 with no second node: a one-line error after RENDEZVOUS_SECONDS, never a
    wait forever (torch's own default is 30 minutes)."""
    import time

    from pyro_vae.data import prepare_data
    from pyro_vae.infer import distributed

    monkeypatch.setattr(distributed, "RENDEZVOUS_SECONDS", 3)
    monkeypatch.setenv("MASTER_PORT", "29517")
    config = Config(dataset="digits", max_train=64, max_test=32, hidden=(8,), epochs=1,
                    batch_size=32, strategy="ddp", num_nodes=2).resolved()
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"did not all join within 3 s.*--num-nodes 1"):
        distributed.train_distributed(config, prepare_data(config), progress=False)
    assert time.perf_counter() - start < 60


def test_more_devices_than_cores_are_refused_before_starting():
    import os

    from pyro_vae.data import prepare_data
    from pyro_vae.infer import distributed

    n = (os.cpu_count() or 1) + 1
    config = Config(dataset="digits", max_train=64, max_test=32, hidden=(8,), epochs=1,
                    batch_size=32, strategy="ddp", devices=n).resolved()
    with pytest.raises(ConfigError, match=f"--devices {n} asks for more CPU worker processes"):
        distributed.train_distributed(config, prepare_data(config), progress=False)


def test_ddp_skips_and_counts_non_finite_steps(monkeypatch):
    """The trainer's finiteness guard on Lightning: with --skip-nonfinite two poisoned steps of
    one worker are skipped and counted (a constant 0 before), the parameters stay finite."""
    import torch

    from pyro_vae.data import prepare_data
    from pyro_vae.infer import distributed
    from pyro_vae.infer.trainer import Trainer

    real = Trainer.loss
    calls = {"n": 0}

    def poisoned(self, *args):
        calls["n"] += 1
        loss = real(self, *args)
        return loss * float("inf") if calls["n"] in (1, 3) else loss

    monkeypatch.setattr(Trainer, "loss", poisoned)
    monkeypatch.setenv("MASTER_PORT", "29518")
    config = Config(dataset="digits", max_train=128, max_test=32, hidden=(8,), epochs=1,
                    batch_size=32, strategy="ddp", skip_nonfinite=True).resolved()
    result = distributed.train_distributed(config, prepare_data(config), progress=False)
    assert result.payload["history"][0]["skipped_steps"] == 2
    assert all(torch.isfinite(t).all() for t in result.payload["model"].values())
    # the run's process group is gone with it: a later run in this process starts its own
    assert not torch.distributed.is_initialized()
    with pytest.raises(TrainingDivergedError, match="became inf at epoch 1, step 1"):
        calls["n"] = 0
        distributed.train_distributed(config.replace(skip_nonfinite=False),
                                      prepare_data(config), progress=False)
