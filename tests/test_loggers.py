"""Experiment tracking: a short run with --logger tensorboard / mlflow, read back."""

from __future__ import annotations

import json

import pytest

from pyro_vae import ConfigError
from pyro_vae.cli import main as cli_main

FAST = ["--dataset", "moons", "--hidden", "8", "--max-train", "64", "--max-test", "16",
        "--epochs", "3", "--batch-size", "32", "--no-progress"]


def test_tensorboard_event_files_hold_every_epochs_metrics_and_the_figures(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert cli_main(["train", *FAST, "--logger", "tensorboard", "--out", str(out)]) == 0
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    history = json.loads((out / "metrics.json").read_text())
    test_elbo = events.Scalars("test_elbo")
    assert [e.step for e in test_elbo] == [1, 2, 3]
    assert [e.value for e in test_elbo] == pytest.approx([h["test_elbo"] for h in history])
    assert {"train_elbo", "test_kl", "lr"} <= set(events.Tags()["scalars"])
    assert "figures/elbo" in events.Tags()["images"]
    assert "config/text_summary" in events.Tags()["tensors"]


def test_mlflow_file_store_holds_params_metrics_and_figures(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "run"
    assert cli_main(["train", *FAST, "--logger", "mlflow", "--out", str(out)]) == 0
    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("pyro-vae")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.params["dataset"] == "moons" and run.data.params["epochs"] == "3"
    history = client.get_metric_history(run.info.run_id, "test_elbo")
    expected = [h["test_elbo"] for h in json.loads((out / "metrics.json").read_text())]
    assert [m.step for m in history] == [1, 2, 3]
    assert [m.value for m in history] == pytest.approx(expected)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert "figures/elbo.png" in artifacts
    assert run.info.status == "FINISHED"


def test_an_unknown_logger_is_a_one_line_error(capsys):
    assert cli_main(["train", *FAST, "--logger", "wandb"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    from pyro_vae.loggers import make_logger

    with pytest.raises(ConfigError, match="unknown --logger"):
        make_logger("wandb", None)
