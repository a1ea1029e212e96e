"""Interrupted runs (real processes, really killed) and property-based hostile inputs.

Each ``pyro-vae train`` here is a new process forked from one that has imported the library
(:class:`tests.common.ForkedRun`, a fork server): its own pid, signals, lock and files, as a
``python -m pyro_vae`` subprocess has, without 2–3 s of imports per run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyro_vae import ConfigError, DataError, make_likelihood
from pyro_vae.data.datasets import _from_arrays
from pyro_vae.nn.networks import MLPDecoder, MLPEncoder
from tests.common import ForkedRun, forked_run

ARGS = ["--dataset", "moons", "--hidden", "16", "--max-train", "400", "--max-test", "100",
        "--batch-size", "20", "--epochs", "8", "--no-progress", "--no-figures"]


def train(out, *extra, wait=True, logs=None):
    """``python -m pyro_vae train ARGS --out out *extra`` in a new process: its end (wait) or
    the running process. Its stdout and stderr files go to ``logs`` (default: beside out)."""
    argv = ["train", *ARGS, "--out", str(out), *extra]
    logs = Path(logs or f"{out}.logs") if str(out) else Path(tempfile.mkdtemp())
    if wait:
        return forked_run(argv, logs)
    return ForkedRun(argv, logs)


def metrics(out):
    rows = json.loads((out / "metrics.json").read_text())
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def wait_for_checkpoint(out, timeout=120):
    deadline = time.time() + timeout
    while not (out / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.02)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """The uninterrupted run's metrics, and its seconds from the first checkpoint to the end."""
    out = tmp_path_factory.mktemp("ref") / "run"
    proc = train(out, wait=False)
    wait_for_checkpoint(out)
    first = time.time()
    assert proc.wait(300) == 0, proc.stderr
    return metrics(out), time.time() - first


@pytest.fixture(scope="module")
def reference(reference_run):
    return reference_run[0]


@pytest.mark.parametrize("moment", [0.0, 0.5])
def test_sigkill_at_any_moment_then_resume_loses_nothing(tmp_path, reference_run, moment):
    """SIGKILL right after the first checkpoint, or halfway through the rest of the run (the
    reference run's timing: a later epoch, possibly inside a checkpoint write)."""
    reference, rest = reference_run
    out = tmp_path / "run"
    proc = train(out, wait=False)
    wait_for_checkpoint(out)
    time.sleep(moment * rest)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = train(out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert metrics(out) == reference


def test_sigint_writes_a_checkpoint_and_exits_cleanly(tmp_path, reference):
    out = tmp_path / "run"
    proc = train(out, wait=False)
    wait_for_checkpoint(out)
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


def test_a_second_writer_is_refused_while_the_first_holds_the_run_folder(tmp_path, capsys):
    """The lock is a real flock: a second open file description conflicts even in-process."""
    from pyro_vae.cli import main as cli_main
    from pyro_vae.runs import LOCK_NAME, RunLock

    out = tmp_path / "run"
    with RunLock(out):
        assert (out / LOCK_NAME).read_text().strip() == str(os.getpid())
        code = cli_main(["train", *ARGS, "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1
        assert f"is in use by process {os.getpid()}" in err and "another --out" in err
    assert not out.exists()  # nothing was written, and the empty folder went with the lock


def test_a_concurrent_resume_is_refused_and_leftovers_of_a_killed_run_are_cleaned(tmp_path):
    out = tmp_path / "run"
    assert train(out, "--epochs", "1").returncode == 0
    first = train(out, "--resume", "--epochs", "400", wait=False)
    deadline = time.time() + 60
    while not (out / ".lock").exists() and time.time() < deadline:
        time.sleep(0.05)
    second = train(out, "--resume", "--epochs", "400")
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert second.returncode == 2 and f"in use by process {first.pid}" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    (out / ".checkpoint.pt.tmp-99999").write_bytes(b"half a checkpoint")
    (out / ".metrics.csv.tmp-99999").write_text("epoch\n")
    resumed = train(out, "--resume", "--epochs", "3")  # the dead process's lock is no obstacle
    assert resumed.returncode == 0, resumed.stderr
    assert not list(out.glob(".*.tmp*")) and not (out / ".lock").exists()


def test_resume_with_fewer_epochs_than_done_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "run"
    assert train(out, "--epochs", "3").returncode == 0
    before = (out / "config.json").read_text()
    result = train(out, "--resume", "--epochs", "2")
    assert result.returncode == 2 and "already trained 3 epochs" in result.stderr
    assert (out / "config.json").read_text() == before


def test_an_empty_out_is_a_one_line_error(tmp_path):
    result = train("")
    assert result.returncode == 2 and "empty string" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


BOUNDED = """
import json, resource, sys
import torch
from pyro_vae import iwae_log_likelihood, load_run
from pyro_vae.cli import main
run = load_run(sys.argv[1])
with open("/proc/self/status") as f:
    vm = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))
headroom = int(float(sys.argv[2]))
resource.setrlimit(resource.RLIMIT_AS, (vm + headroom, resource.RLIM_INFINITY))
ll = iwae_log_likelihood(run.vae, run.data.x_test[:100], num_samples=50000)
code = main(["evaluate", sys.argv[1], "--method", "ais", "--ais-chains", "1000000000",
             "--max-points", "2"])
print(json.dumps({"finite": bool(torch.isfinite(ll).all()), "ais_code": code}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc")
def test_k_50000_on_moons_runs_within_a_small_address_space_limit(tmp_path):
    """Before chunking by the decoder's activations, K = 50 000 on 100 moons points needed
    4.8 GB; here it runs with 600 MB of address space to spare, and an AIS run whose chains
    cannot fit is refused in one line before it allocates."""
    out = tmp_path / "run"
    assert train(out, "--epochs", "1").returncode == 0
    proc = subprocess.run([sys.executable, "-c", BOUNDED, str(out), "6e8"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"finite": True, "ais_code": 2}
    assert "--ais-chains" in proc.stderr and "Traceback" not in proc.stderr
