"""Interrupted runs (real subprocesses, really killed) and property-based hostile inputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyro_vae import ConfigError, DataError, make_likelihood
from pyro_vae.data.datasets import _from_arrays
from pyro_vae.nn.networks import MLPDecoder, MLPEncoder

ARGS = ["--dataset", "moons", "--hidden", "16", "--max-train", "400", "--max-test", "100",
        "--batch-size", "20", "--epochs", "8", "--no-progress", "--no-figures"]


def train(out, *extra, wait=True):
    cmd = [sys.executable, "-m", "pyro_vae", "train", *ARGS, "--out", str(out), *extra]
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def metrics(out):
    rows = json.loads((out / "metrics.json").read_text())
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    assert train(out).returncode == 0
    return metrics(out)


@pytest.mark.parametrize("delay", [0.0, 1.3])
def test_sigkill_at_any_moment_then_resume_loses_nothing(tmp_path, reference, delay):
    out = tmp_path / "run"
    proc = train(out, wait=False)
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(delay)  # somewhere in a later epoch, possibly inside a checkpoint write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = train(out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert metrics(out) == reference


def test_sigint_writes_a_checkpoint_and_exits_cleanly(tmp_path, reference):
    out = tmp_path / "run"
    proc = train(out, wait=False)
    while not (out / "checkpoint.pt").exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:  # the run finished before the signal arrived
        return
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    assert train(out, "--resume").returncode == 0
    assert metrics(out) == reference
    assert not [p for p in os.listdir(out) if ".tmp" in p]


finite = st.floats(allow_nan=True, allow_infinity=True, width=32)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.lists(st.integers(0, 5), min_size=0, max_size=5), fill=finite,
       dtype=st.sampled_from(["float32", "float64", "int64", "uint8", "bool"]))
def test_array_loader_gives_a_clean_error_or_a_valid_data_set(shape, fill, dtype):
    arr = np.full(shape, fill if dtype.startswith("float") else 1, dtype=dtype)
    try:
        data = _from_arrays("hyp", arr, None, 0, 0.2)
    except (DataError, ConfigError) as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 400
        return
    assert data.x_train.shape[0] >= 1 and data.x_test.shape[0] >= 1
    assert np.isfinite(data.x_train.numpy()).all()


@settings(max_examples=60, deadline=None)
@given(event=st.lists(st.integers(1, 4), min_size=1, max_size=3),
       latent=st.integers(1, 4), hidden=st.lists(st.integers(1, 8), max_size=2),
       lik=st.sampled_from(["bernoulli", "gaussian", "gaussian-predicted", "laplace"]))
def test_model_constructors_on_random_shapes(event, latent, hidden, lik):
    import torch

    from pyro_vae import VAE

    likelihood = make_likelihood(lik)
    vae = VAE(MLPEncoder(event, latent, hidden), MLPDecoder(event, latent, hidden,
                                                             num_params=likelihood.num_params),
              likelihood, latent, event)
    x = torch.bernoulli(torch.rand(3, *event))
    z = vae.guide(x)
    assert z.shape == (3, latent)
    with pytest.raises(DataError, match="data must have shape"):
        vae.guide(torch.rand(3, *event, 2))
