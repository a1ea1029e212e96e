"""The pyro-vae command end to end, and its one-line errors with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from pyro_vae.cli import main

FAST = ["--hidden", "32", "--max-train", "200", "--max-test", "50", "--batch-size", "50",
        "--no-progress"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--epochs", "3", "--out", str(out), *FAST]) == 0
    return out


def test_train_writes_a_complete_run_folder(digits_run):
    for name in ("config.json", "environment.json", "metrics.csv", "metrics.json",
                 "checkpoint.pt"):
        assert (digits_run / name).exists(), name
    for fig in ("elbo.png", "reconstructions.png", "samples.png", "latent.png", "manifold.png",
                "interpolation.png", "interpolation.gif"):
        assert (digits_run / "figures" / fig).stat().st_size > 1000, fig
    metrics = json.loads((digits_run / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    env = json.loads((digits_run / "environment.json").read_text())
    assert env["packages"]["pyro-ppl"] and env["seed"] == 0


def test_evaluate_json(digits_run, capsys):
    assert main(["evaluate", str(digits_run), "--iw-samples", "50", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_points"] == 50
    assert result["test_log_likelihood"] >= result["test_elbo"] - 3 * result["test_elbo_se"]
    assert result["test_elbo"] < 0 and result["test_log_likelihood"] < 0


def test_sample_and_plot(digits_run, tmp_path, capsys):
    assert main(["sample", str(digits_run), "--num", "16", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 500
    assert main(["sample", str(digits_run), "--num", "5", "--out", str(tmp_path / "s.npy")]) == 0
    samples = np.load(tmp_path / "s.npy")
    assert samples.shape == (5, 1, 8, 8) and samples.min() >= 0 and samples.max() <= 1
    assert main(["plot", str(digits_run), "--out", str(tmp_path / "figs")]) == 0
    assert (tmp_path / "figs" / "manifold.png").exists()


def test_points_data_and_conditional_models(tmp_path):
    out = tmp_path / "moons"
    assert main(["train", "--dataset", "moons", "--epochs", "2", "--out", str(out), *FAST]) == 0
    assert (out / "figures" / "overview.png").exists()
    out = tmp_path / "cvae"
    assert main(["train", "--conditional", "--epochs", "2", "--out", str(out), *FAST]) == 0
    assert main(["sample", str(out), "--label", "3", "--num", "4",
                 "--out", str(tmp_path / "c.npy")]) == 0


def test_console_script_runs_as_a_new_user_would(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pyro_vae", "train", "--epochs", "1", "--out", str(tmp_path / "r"),
         "--no-figures", *FAST], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "test ELBO" in proc.stdout


def _bad(tmp_path):
    nan = tmp_path / "nan.npy"
    np.save(nan, np.array([[0.0, np.nan]] * 10))
    grey = tmp_path / "grey.npy"
    np.save(grey, np.full((10, 8, 8), 0.5))
    big = tmp_path / "big.npy"
    np.save(big, np.full((10, 8, 8), 2.0))
    empty = tmp_path / "empty.npy"
    np.save(empty, np.zeros((0, 4)))
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "checkpoint.pt").write_bytes(b"not a checkpoint")
    other = tmp_path / "other"
    other.mkdir()
    torch.save({"weights": torch.ones(2)}, other / "checkpoint.pt")
    f = ["--dataset", "file", "--data"]
    return [
        (["train", *f, str(nan)], "NaN or infinite"),
        (["train", *f, str(grey), "--likelihood", "bernoulli"], "--binarize dynamic"),
        (["train", *f, str(big), "--likelihood", "bernoulli", "--binarize", "dynamic"],
         r"in \[0, 1\]"),
        (["train", *f, str(empty)], "empty"),
        (["train", *f, str(tmp_path / "missing.npy")], "does not exist"),
        (["train", "--beta", "-1"], "--beta must be a finite number ≥ 0"),
        (["train", "--latent-dim", "0"], "--latent-dim must be an integer ≥ 1"),
        (["train", "--batch-size", "100000"], "exceeds"),
        (["train", "--obs-scale", "-1", "--likelihood", "gaussian", "--dataset", "moons"],
         "obs-scale"),
        (["train", "--binarize", "dynamic", "--likelihood", "gaussian"], "only applies"),
        (["train", "--arch", "conv", "--dataset", "moons"], "convolutional"),
        (["train", "--device", "cuda:0"] if not torch.cuda.is_available()
         else ["train", "--device", "tpu"], "device"),
        (["train", "--resume"], "--resume needs --out"),
        (["evaluate", str(tmp_path / "nowhere")], "no checkpoint"),
        (["evaluate", str(corrupt)], "not a readable checkpoint"),
        (["evaluate", str(other)], "not a pyro-vae checkpoint"),
    ]


def test_bad_inputs_get_one_line_errors_and_exit_2(tmp_path, capsys):
    cases = _bad(tmp_path)
    for argv, match in cases:
        out = tmp_path / "out"
        code = main([*argv, "--out", str(out)] if argv[0] == "train" and "--resume" not in argv
                    else argv)
        err = capsys.readouterr().err.strip()
        assert code == 2, (argv, err)
        assert err.startswith("pyro-vae: error: ") and "\n" not in err, (argv, err)
        assert __import__("re").search(match, err), (argv, err)
        assert not out.exists(), f"{argv} left output behind"


def test_bad_arguments_to_the_other_commands(digits_run, tmp_path, capsys):
    """Hostile arguments after training: one line, exit 2, nothing written."""
    run = str(digits_run)
    cases = [
        (["sample", run, "--label", "3"], "needs a model of the label"),
        (["sample", run, "--out", str(tmp_path / "s.xyz")], "unknown extension"),
        (["sample", run, "--out", "/proc/no/such/dir/s.png"], "check the path"),
        (["evaluate", run, "--device", "tpu"], "unknown --device"),
        (["evaluate", str(digits_run / "config.json")], "not a readable checkpoint"),
        (["gap", str(tmp_path / "none")], "no checkpoint"),
        (["variance", run, "--estimators", "magic"], "unknown estimator"),
        (["variance", run, "--kl", "exact"], "unknown --kl"),
        (["variance", str(tmp_path / "absent.json")], "no checkpoint"),
        (["plot", str(tmp_path / "nothing")], "no checkpoint"),
    ]
    before = sorted(p.name for p in tmp_path.iterdir())
    for argv, match in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("pyro-vae: error: ") and "\n" not in err, (argv, err)
        assert match in err, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_argparse_rejects_unknown_options_with_exit_2(capsys):
    for argv in (["train", "--dataset", "cifar"], ["train", "--elbo", "renyi"],
                 ["train", "--epochs", "many"], ["train", "--frobnicate"],
                 ["evaluate", "run", "--batch-size", "0"],
                 ["evaluate", "run", "--max-points", "-1"],
                 ["sample", "run", "--num", "0"], ["gap", "run", "--refine-steps", "0"],
                 ["variance", "run", "--repeats", "0"]):
        assert main(argv) == 2  # in-process: a return code, not SystemExit
        err = capsys.readouterr().err
        assert "error:" in err and len(err.strip().splitlines()) == 1


def copy_of(run, tmp_path):
    """A copy of the shared run for a test that trains on: the others see it as trained."""
    import shutil

    return shutil.copytree(run, tmp_path / "run")


def test_resume_with_another_configuration_is_refused(digits_run, tmp_path, capsys):
    code = main(["train", "--epochs", "4", "--latent-dim", "3", "--resume", "--out",
                 str(copy_of(digits_run, tmp_path)), *FAST])
    err = capsys.readouterr().err
    assert code == 2 and "another configuration" in err and "latent_dim" in err


def test_training_again_into_a_finished_run_is_refused(digits_run, tmp_path, capsys):
    assert main(["train", "--epochs", "3", "--out", str(copy_of(digits_run, tmp_path)),
                 *FAST]) == 2
    assert "--resume" in capsys.readouterr().err


def test_resume_continues_a_run(digits_run, tmp_path):
    run = copy_of(digits_run, tmp_path)
    assert main(["train", "--epochs", "4", "--resume", "--out", str(run), "--no-figures",
                 *FAST]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4]


def test_a_run_refused_at_its_first_step_leaves_no_folder(tmp_path, capsys):
    """A combination only the model's trace reveals (STL with a flow that has no inverse) is
    refused at the first step: one line, and no run folder left behind."""
    out = tmp_path / "refused"
    code = main(["train", "--guide", "planar", "--estimator", "stl", "--epochs", "1",
                 "--max-train", "64", "--max-test", "32", "--batch-size", "32", "--hidden", "8",
                 "--no-progress",
                 "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "detached draw" in err[0]
    assert not out.exists()
