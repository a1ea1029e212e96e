"""Hostile input through every command and the Python API: each case must end in the library's
one-line error — exit status 2, one line on stderr naming the problem and the fix, no
traceback, no warning before it, nothing written. The command line runs in-process
(``pyro_vae.cli.main``), so hundreds of cases take seconds; hypothesis generates the bad numbers.
"""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyro_vae import Config, ConfigError, DataError, PyroVAEError, load_dataset
from pyro_vae.cli import main as cli_main
from pyro_vae.runs import load_run, train_run
from tests.common import make_batch, small_vae

FAST = ["--dataset", "moons", "--hidden", "8", "--max-train", "64", "--max-test", "16",
        "--epochs", "1", "--batch-size", "32", "--no-progress", "--no-figures"]


def refused(capsys, argv, out=None, code=2):
    """Run the CLI; assert the one-line refusal, and that ``out`` was not created."""
    result = cli_main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert result == code, (argv, err)
    assert len(lines) == 1, (argv, err)
    assert "Traceback" not in err and lines[0].startswith(("pyro-vae", "usage")), err
    assert "; " in lines[0], f"no fix in: {lines[0]}"
    if out is not None:
        assert not os.path.exists(out), f"{argv} wrote {out}"
    return lines[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from tests.common import tiny_moons_run

    return tiny_moons_run(tmp_path_factory.mktemp("hostile") / "run")


# --------------------------------------------------------------------------- CLI: numbers
INT_OPTIONS = ["--epochs", "--batch-size", "--latent-dim", "--num-particles", "--max-train",
               "--max-test", "--image-size", "--seed", "--split-seed", "--flow-length",
               "--num-groups", "--checkpoint-every", "--cycles", "--warmup-epochs",
               "--eval-samples"]
#: options whose huge values are absurd (a huge --max-train or --batch-size just means "all")
HUGE_IS_ABSURD = ["--epochs", "--latent-dim", "--num-particles", "--image-size", "--seed",
                  "--split-seed", "--flow-length", "--eval-samples"]
FLOAT_OPTIONS = ["--lr", "--beta", "--obs-scale", "--clip-norm", "--test-fraction",
                 "--lr-decay", "--cycle-ramp", "--ciwae-beta"]
BAD_INT = st.one_of(st.integers(max_value=-1),
                    st.sampled_from(["", "1.5", "nan", "inf", "1e400", "ten", "0x10", "--", "½"]))
HUGE = st.integers(min_value=2**40, max_value=2**80)
BAD_FLOAT = st.one_of(st.floats(max_value=-1e-9), st.sampled_from(
    ["nan", "inf", "-inf", "", "abc", "1e400", "-0.5", "1,5"]))


SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@settings(max_examples=150, **SETTINGS)
@given(option=st.sampled_from(INT_OPTIONS), value=BAD_INT)
def test_malformed_or_negative_integer_options_are_refused(capsys, tmp_path, option, value):
    out = tmp_path / "never"
    refused(capsys, ["train", *FAST, option, str(value), "--out", str(out)], out)


@settings(max_examples=60, **SETTINGS)
@given(option=st.sampled_from(HUGE_IS_ABSURD), value=HUGE)
def test_absurdly_large_options_are_refused_before_allocating(capsys, tmp_path, option, value):
    out = tmp_path / "never"
    refused(capsys, ["train", *FAST, option, str(value), "--out", str(out)], out)


@settings(max_examples=120, **SETTINGS)
@given(option=st.sampled_from(FLOAT_OPTIONS), value=BAD_FLOAT)
def test_absurd_real_options_are_refused_before_anything_runs(capsys, tmp_path, option, value):
    out = tmp_path / "never"
    refused(capsys, ["train", *FAST, option, str(value), "--out", str(out)], out)


@pytest.mark.parametrize("extra", [
    ["--latent-dim", "2000000"], ["--hidden", "2000000"], ["--hidden", "60000,60000,60000"],
    ["--num-particles", "100000000"], ["--batch-size", "100000", "--num-particles", "100000"],
    ["--image-size", "100000"], ["--seed", str(2**32)], ["--split-seed", str(2**64)],
    ["--test-fraction", "5"], ["--test-fraction", "0"], ["--test-fraction", "1"],
    ["--hidden", "0"], ["--hidden", "8,-1"], ["--hidden", "a,b"],
    ["--dataset", "nope"], ["--likelihood", "poisson"], ["--guide", "flow"],
    ["--objective", "vimco"], ["--estimator", "magic"], ["--elbo", "renyi"],
    ["--optimizer", "sgd"], ["--lr-schedule", "cyclic"], ["--kl-schedule", "sine"],
    ["--arch", "resnet"], ["--binarize", "maybe"], ["--activation", "swish2"],
    ["--strategy", "fsdp"], ["--devices", "2"], ["--label-column", "0"],
    ["--objective", "iwae", "--estimator", "score"], ["--num-groups", "3"],
    ["--elbo", "meanfield", "--objective", "iwae"], ["--binarize", "dynamic"],
    ["--device", "tpu"], ["--device", "cuda:99"], ["--resume"],
])
def test_bad_training_options_are_one_line_errors(capsys, tmp_path, extra):
    out = tmp_path / "never"
    argv = ["train", *FAST, *extra] + ([] if "--resume" in extra else ["--out", str(out)])
    refused(capsys, argv, out)


def test_an_empty_out_path_is_refused(capsys):
    refused(capsys, ["train", *FAST, "--out", ""])


# --------------------------------------------------------------------------- CLI: data files
def _npy(path, array):
    np.save(path, array)
    return path


def _csv(path, text):
    path.write_text(text)
    return path


DATA_CASES = {
    "missing": lambda d: d / "missing.npy",
    "complex": lambda d: _npy(d / "c.npy", np.ones((20, 3), dtype=np.complex64)),
    "strings": lambda d: _npy(d / "s.npy", np.array([["a", "b"]] * 20)),
    "one-dimensional": lambda d: _npy(d / "one.npy", np.ones(20)),
    "rank 5": lambda d: _npy(d / "r5.npy", np.ones((4, 1, 1, 2, 2))),
    "nan": lambda d: _npy(d / "nan.npy", np.full((20, 3), np.nan)),
    "inf": lambda d: _npy(d / "inf.npy", np.full((20, 3), np.inf)),
    "empty": lambda d: _npy(d / "empty.npy", np.ones((0, 3))),
    "no features": lambda d: _npy(d / "nofeat.npy", np.ones((20, 0))),
    "images above one": lambda d: _npy(d / "img.npy", np.full((20, 4, 4), 3.0)),
    "truncated": lambda d: (d / "t.npy").write_bytes(b"\x93NUMPY\x01\x00") or d / "t.npy",
    "text as npy": lambda d: _csv(d / "x.npy", "not numpy"),
    "unknown suffix": lambda d: _csv(d / "x.parquet", "1,2"),
    "csv of words": lambda d: _csv(d / "w.csv", "a,b\nc,d\n"),
    "ragged csv": lambda d: _csv(d / "r.csv", "1,2\n3\n"),
    "npz without x": lambda d: (np.savez(d / "z.npz", q=np.ones((3, 2))), d / "z.npz")[1],
    "folder without images": lambda d: (d / "folder").mkdir() or d / "folder",
}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_unusable_data_files_are_one_line_errors(capsys, tmp_path, case):
    path = DATA_CASES[case](tmp_path)
    out = tmp_path / "never"
    refused(capsys, ["train", *FAST[2:], "--dataset", "file", "--data", str(path), "--out",
                     str(out)], out)


LABEL_CASES = [
    ("1,2,3\n4,5,6\n" * 10, "7", "out of range"),
    ("1,2,3\n4,5,6\n" * 10, "-9", "out of range"),
    ("a,b,label\n1,2,x\n3,4,y\n", "label", "cannot read"),
    ("a,b,label\n" + "1,2,1000000000\n" * 10, "label", "0..99999"),
    ("a,b,label\n" + "1,2,0.5\n" * 10, "label", "integers"),
    ("a,b,label\n" + "1,2,-1\n" * 10, "label", "0..99999"),
    ("a,b\n" + "1,2\n" * 10, "nope", "not found"),
    ("a\n" + "1\n" * 10, "a", "one column"),
]


@pytest.mark.parametrize("text, column, match", LABEL_CASES)
def test_label_columns_that_do_not_fit_the_data_are_refused(capsys, tmp_path, text, column,
                                                            match):
    path = _csv(tmp_path / "d.csv", text)
    line = refused(capsys, ["train", *FAST[2:], "--dataset", "file", "--data", str(path),
                            "--label-column", column, "--out", str(tmp_path / "never")],
                   tmp_path / "never")
    assert match in line


def test_label_column_with_an_npy_file_is_refused(capsys, tmp_path):
    path = _npy(tmp_path / "x.npy", np.random.rand(20, 3).astype(np.float32))
    line = refused(capsys, ["train", *FAST[2:], "--dataset", "file", "--data", str(path),
                            "--label-column", "0", "--out", str(tmp_path / "never")])
    assert ".csv" in line


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_named_pipe_as_data_is_refused_not_read(capsys, tmp_path):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    line = refused(capsys, ["train", *FAST[2:], "--dataset", "file", "--data", str(fifo),
                            "--out", str(tmp_path / "never")])
    assert "not a regular file" in line


def test_a_decompression_bomb_image_is_refused(capsys, tmp_path, monkeypatch):
    from PIL import Image

    folder = tmp_path / "imgs" / "a"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.new("L", (64, 64)).save(folder / f"{i}.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # every 64×64 image is now a "bomb"
    line = refused(capsys, ["train", *FAST[2:], "--dataset", "file", "--data",
                            str(tmp_path / "imgs"), "--image-size", "8", "--out",
                            str(tmp_path / "never")])
    assert "decompression-bomb" in line


# --------------------------------------------------------------------------- CLI: other commands
@pytest.mark.parametrize("argv", [
    ["evaluate", "{run}", "--iw-samples", "0"], ["evaluate", "{run}", "--max-points", "0"],
    ["evaluate", "{run}", "--method", "ais", "--ais-steps", "0"],
    ["evaluate", "{run}", "--method", "ais", "--ais-chains", "10000000000"],
    ["evaluate", "{run}", "--method", "hmc"], ["evaluate", "{missing}"],
    ["evaluate", "{run}", "--batch-size", "-3"], ["evaluate", "{run}", "--device", "gpu"],
    ["sample", "{run}", "--num", "0"], ["sample", "{run}", "--num", "1000000000000"],
    ["sample", "{run}", "--out", "{tmp}/x.gif"], ["sample", "{run}", "--label", "3"],
    ["gap", "{run}", "--num-points", "0"], ["gap", "{run}", "--ais-steps", "-1"],
    ["gap", "{run}", "--iw-samples", "abc"], ["plot", "{missing}"],
    ["variance", "{run}", "--estimators", "magic"], ["variance", "{run}", "--samples", "0"],
    ["variance", "{run}", "--kl", "exact"], ["variance", "{missing}"],
    ["train", "--resume", "--out", "{missing}"],
])
def test_bad_arguments_to_every_command_are_one_line_errors(capsys, tmp_path, run_dir, argv):
    argv = [a.format(run=run_dir, missing=tmp_path / "absent", tmp=tmp_path) for a in argv]
    refused(capsys, argv)


# --------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("damage", ["truncate", "flip", "zero", "json", "empty"])
def test_damaged_checkpoints_are_refused_by_every_command(capsys, tmp_path, run_dir, damage):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    path = copy / "checkpoint.pt"
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 3]
    elif damage == "flip":
        for at in range(len(data) // 2, len(data) // 2 + 64, 8):
            data[at] ^= 0xFF
    elif damage == "zero":
        data[len(data) // 2: len(data) // 2 + 256] = bytes(256)
    elif damage == "json":
        data = bytearray(b'{"format": "pyro-vae-checkpoint"}')
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    for command in (["evaluate", str(copy)], ["sample", str(copy), "--out",
                                              str(tmp_path / "s.npy")],
                    ["plot", str(copy)], ["gap", str(copy), "--num-points", "2"]):
        refused(capsys, command)


# --------------------------------------------------------------------------- Python API
@pytest.mark.parametrize("bad, error, match", [
    (lambda x: x.tolist(), DataError, "torch.Tensor"),
    (lambda x: (x > 0.5).long(), DataError, "floating-point"),
    (lambda x: x.double(), DataError, "float64"),
    (lambda x: x[:0], DataError, "empty"),
    (lambda x: x.new_full(x.shape, float("nan")), DataError, "NaN"),
    (lambda x: x.new_full(x.shape, float("inf")), DataError, "NaN or infinite"),
    (lambda x: x[:, :3], DataError, "shape"),
    (lambda x: x.unsqueeze(0), DataError, "shape"),
])
@pytest.mark.parametrize("program", ["model", "guide"])
def test_the_model_and_guide_validate_x(program, bad, error, match):
    vae, x = small_vae(), make_batch(4)
    with pytest.raises(error, match=match):
        getattr(vae, program)(bad(x))


@pytest.mark.parametrize("kwargs, match", [
    (dict(indices=torch.tensor([0, 1, 2, 99])), "indices must lie"),
    (dict(indices=torch.tensor([0.0, 1.0, 2.0, 3.0])), "integer tensor"),
    (dict(indices=torch.tensor([0, 1])), "indices for a batch"),
    (dict(indices=torch.tensor([-1, 0, 1, 2])), "indices must lie"),
    (dict(beta=-1.0), "beta"), (dict(beta=float("nan")), "beta"),
    (dict(beta=float("inf")), "beta"), (dict(beta=torch.tensor([1.0, 2.0])), "beta"),
    (dict(beta="1"), "beta"),
])
def test_the_model_validates_indices_and_beta(kwargs, match):
    vae, x = small_vae(), make_batch(4)
    vae.num_data = 10
    with pytest.raises(PyroVAEError, match=match):
        vae.model(x, **kwargs)


def test_conditional_labels_are_validated():
    vae, x = small_vae(num_classes=3), make_batch(4)
    for y, match in ((torch.tensor([0, 1, 2, 99]), "must lie in"),
                     (torch.tensor([0.0, 1.0, 0.5, 1.0]), "integers"),
                     (torch.tensor([-1, 0, 1, 0]), "must lie in")):
        with pytest.raises(DataError, match=match):
            vae.model(x, y)


@pytest.mark.parametrize("changes, match", [
    (dict(latent_dim=0), "latent-dim"), (dict(test_fraction=5.0), "test-fraction"),
    (dict(max_train=True), "max-train"), (dict(max_train=0), "max-train"),
    (dict(seed=-1), "seed"), (dict(seed=2**40), "seed"), (dict(hidden=(0,)), "hidden"),
    (dict(batch_size=2.5), "batch-size"), (dict(lr=float("nan")), "lr"),
    (dict(beta=-0.1), "beta"), (dict(image_size=10**6), "image-size"),
    (dict(label_column=3), "label-column"),
])
def test_config_validates_every_field(changes, match):
    with pytest.raises(ConfigError, match=match):
        Config(dataset="moons", **changes).resolved()


@pytest.mark.parametrize("d, match", [
    ([1, 2], "JSON object"), ({"nope": 1}, "unknown configuration keys"),
    ({"hidden": "64"}, "list of integers"), ({"hidden": [1.5]}, "list of integers"),
    ({"epochs": "10"}, "epochs"), ({"dataset": 3}, "dataset"),
])
def test_config_from_dict_refuses_malformed_dicts(d, match):
    with pytest.raises(ConfigError, match=match):
        Config.from_dict(d)


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="nope"), "dataset"), (dict(name="file"), "--data"),
    (dict(name="file", data_path="/dev/null"), "not a regular file"),
    (dict(name="moons", max_train=0), "max"),
])
def test_load_dataset_refuses_bad_arguments(kwargs, match):
    with pytest.raises(PyroVAEError, match=match):
        load_dataset(**kwargs)


def test_load_run_of_a_folder_without_a_run(tmp_path):
    with pytest.raises(PyroVAEError, match="no checkpoint"):
        load_run(tmp_path)


@pytest.mark.parametrize("call, match", [
    (lambda: small_vae(latent_dim=0), "latent_dim"),
    (lambda: small_vae(hidden=(-1,)), "hidden width"),
    (lambda: small_vae(event_shape=(0,)), "data dimension"),
    (lambda: __import__("pyro_vae").Trainer(small_vae(), "data"), "DataSet"),
    (lambda: __import__("pyro_vae").Trainer(small_vae(), load_dataset("moons"), {"lr": 1}),
     "Config"),
    (lambda: __import__("pyro_vae").prior_predictive(small_vae(), num_samples=0), "num_samples"),
    (lambda: __import__("pyro_vae").posterior_predictive(small_vae(), make_batch(2),
                                                         num_samples=-1), "num_samples"),
    (lambda: __import__("pyro_vae").binarize("x"), "floating tensor"),
    (lambda: __import__("pyro_vae").make_likelihood("gaussian", -1.0), "obs-scale"),
    (lambda: __import__("pyro_vae").evaluate_elbo(small_vae(num_classes=3), make_batch(4),
                                                  torch.tensor([0.0, 1.0, 2.0, 1.0])),
     "integers"),
])
def test_api_entry_points_raise_the_librarys_errors(call, match):
    with pytest.raises(PyroVAEError, match=match):
        call()


# --------------------------------------------------------------------------- API: arguments
def _user_program(to_event: bool = True, with_params: bool = True):
    """A plain Pyro model/guide pair as a user writes it (x: (N, 3)), for Trainer."""
    import pyro
    import pyro.distributions as dist

    from pyro_vae.infer.trainer import ModelGuide

    decoder = torch.nn.Linear(2, 3)

    def model(x, y=None, indices=None):
        if with_params:
            pyro.module("hostile_decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
            loc = decoder(z) if with_params else z.sum(-1, keepdim=True).expand(-1, 3)
            obs = dist.Normal(loc, 1.0)
            pyro.sample("x", obs.to_event(1) if to_event else obs, obs=x)

    def guide(x, y=None, indices=None):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))

    return ModelGuide(model, guide)


def _vector_data(n=32, width=3, scale=1.0):
    from pyro_vae.data import DataSet

    x = torch.randn(n, width) * scale
    return DataSet("user", x[: n // 2], x[n // 2:], None, None, "vector")


@pytest.mark.parametrize("call, error, match", [
    # data sets are checked where they are made
    (lambda: __import__("pyro_vae").data.DataSet("d", torch.zeros(4, 3), torch.zeros(2, 2),
                                                  None, None, "vector"), DataError,
     "the test points"),
    (lambda: __import__("pyro_vae").data.DataSet("d", torch.zeros(4, 3), torch.zeros(2, 3),
                                                  None, None, "tabular"), DataError,
     "unknown data kind"),
    (lambda: _vector_data(scale=1e30), DataError, "squares overflow"),
    (lambda: __import__("pyro_vae").data.DataSet("d", [[1.0]], torch.zeros(2, 1), None, None,
                                                  "vector"), DataError, "torch.Tensor"),
    (lambda: __import__("pyro_vae").evaluate_elbo(small_vae(), [[0.0] * 6]), DataError,
     "torch.Tensor"),
    # a user's program that cannot be trained as written
    (lambda: __import__("pyro_vae").Trainer(_user_program(with_params=False), _vector_data(),
                                            Config(batch_size=8)),
     PyroVAEError, "no parameters to train"),
    (lambda: __import__("pyro_vae.infer.ais", fromlist=["_"]).ais_log_likelihood(
        _user_program(), torch.randn(4, 5), num_steps=2), PyroVAEError,
     r"fail on a batch of shape \(4, 5\).*not broadcastable"),
    (lambda: load_dataset("file", data_path=3), ConfigError, "data_path must be a string"),
    (lambda: __import__("pyro_vae").make_likelihood("gaussian", "x"), ConfigError,
     "obs-scale"),
    # runs
    (lambda: train_run({"epochs": 1}, "out"), ConfigError, "takes a Config"),
    (lambda: load_run(3), ConfigError, "a run folder is a path"),
])
def test_api_inputs_are_refused_where_they_enter(call, error, match):
    with pytest.raises(error, match=match):
        call()


def _vem(**kw):
    from pyro_vae.infer.vem import VariationalEM

    return VariationalEM(small_vae(num_data=8), **{"num_data": 8, **kw})


@pytest.mark.parametrize("kw, match", [
    (dict(kl="nope"), "unknown kl"), (dict(e_lr=-1.0), "e_lr must be a finite number > 0"),
    (dict(e_lr=float("nan")), "e_lr"), (dict(m_lr=0.0), "m_lr"),
    (dict(num_particles=0), "num_particles"), (dict(num_data=0), "num_data"),
])
def test_variational_em_options_are_validated(kw, match):
    with pytest.raises(ConfigError, match=match):
        _vem(**kw)


def test_variational_em_refuses_data_of_another_size_than_num_data():
    """It used to train with the plate scaled to num_data and rows for points that never come
    (train ELBO −19.7 instead of −6.0 on 32 points told num_data=100)."""
    vem = _vem()
    with pytest.raises(ConfigError, match=r"made for num_data=8.*num_data=12"):
        vem.fit(make_batch(12), None, epochs=1, batch_size=4)
    with pytest.raises(ConfigError, match="epochs"):
        vem.fit(make_batch(8), None, epochs=0, batch_size=4)


#: values that are invalid for a count (an integer ≥ 1) and for a positive real, each
BAD_COUNTS = st.sampled_from([0, -1, 2.5, float("nan"), "3", True, None])
BAD_POSITIVE = st.sampled_from([0.0, -1.0, float("nan"), float("inf"), "3", True, None])


def _api_calls():
    """(function, keyword, kind) for the public functions' size and step arguments."""
    from pyro_vae import evaluate_elbo, iwae_log_likelihood
    from pyro_vae.infer.ais import ais_log_likelihood, bdmc
    from pyro_vae.infer.vem import fit_local
    from pyro_vae.lab.gap import amortization_gap

    x = make_batch(4)

    def with_vae(fn, **fixed):
        return lambda **kw: fn(small_vae(), x, **fixed, **kw)

    return [
        (with_vae(evaluate_elbo), "num_samples", "count"),
        (with_vae(evaluate_elbo), "batch_size", "count"),
        (with_vae(iwae_log_likelihood), "num_samples", "count"),
        (with_vae(iwae_log_likelihood), "batch_size", "count"),
        (with_vae(ais_log_likelihood, num_steps=2), "num_chains", "count"),
        (with_vae(ais_log_likelihood, num_steps=2), "leapfrog_steps", "count"),
        (with_vae(ais_log_likelihood, num_steps=2), "step_size", "positive"),
        (lambda **kw: bdmc(small_vae(), num_points=2, num_steps=2, **kw), "step_size",
         "positive"),
        (with_vae(fit_local, max_steps=2), "lr", "positive"),
        (with_vae(fit_local), "max_steps", "count"),
        (with_vae(fit_local, max_steps=2), "num_samples", "count"),
        (with_vae(fit_local, max_steps=2), "check_every", "count"),
        (with_vae(amortization_gap, iw_samples=4, eval_samples=2), "ais_chains", "count"),
        (with_vae(amortization_gap, eval_samples=2), "iw_samples", "count"),
    ]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.integers(0, 13), count=BAD_COUNTS, positive=BAD_POSITIVE)
def test_every_size_and_step_argument_of_the_api_is_validated(case, count, positive):
    """A property-based sweep: any invalid size or step given to a public function is the
    library's one-line error naming the argument, never a raw exception or a silent run."""
    fn, name, kind = _api_calls()[case]
    value = count if kind == "count" else positive
    with pytest.raises(ConfigError, match=name):
        fn(**{name: value})
