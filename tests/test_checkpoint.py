"""Checkpoints: atomic writes, and a clear error for every kind of bad file."""

from __future__ import annotations

import os

import pytest
import torch

from pyro_vae import CheckpointError, Config, load_run, train_run
from pyro_vae.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint

CFG = dict(dataset="moons", hidden=(16,), max_train=200, max_test=50, batch_size=50)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "run"
    train_run(Config(epochs=2, **CFG), out, progress=False, figures=False)
    return out


def test_a_crash_while_writing_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"epoch": 1, "x": torch.ones(3)}, path)

    def exploding_save(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", exploding_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # no temporary file left behind


def test_truncated_checkpoint(run_dir, tmp_path):
    data = (run_dir / "checkpoint.pt").read_bytes()
    for cut in (10, len(data) // 2, len(data) - 5):
        (tmp_path / "checkpoint.pt").write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="not a readable checkpoint"):
            load_checkpoint(tmp_path)


def test_checkpoint_from_another_version(run_dir, tmp_path):
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    state["format_version"] = FORMAT_VERSION + 1
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="format"):
        load_checkpoint(tmp_path)


def resign(state, path):
    """Write an edited payload as a consistent checkpoint (with a fresh checksum)."""
    save_checkpoint({k: v for k, v in state.items() if k != "checksum"}, path)


def test_checkpoint_whose_weights_do_not_fit_its_configuration(run_dir, tmp_path):
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    state["config"]["hidden"] = [64]
    resign(state, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="does not fit"):
        load_run(tmp_path, load_data=False)


def test_a_pickle_with_code_is_not_loaded(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo hacked",))

    torch.save({"format": "pyro-vae-checkpoint", "evil": Evil()}, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path)


def test_loaded_run_reproduces_the_trained_models_outputs(run_dir):
    run = load_run(run_dir)
    x = run.data.x_test[:5]
    loc, scale = run.vae.encode(x)
    assert loc.shape == (5, 2) and torch.isfinite(scale).all()
    # the learned obs_scale came back: the module's parameter is pyro.param("obs_scale")
    import pyro

    assert float(run.vae.obs_scale().detach()) == pytest.approx(run.history[-1]["obs_scale"])
    assert pyro.param("obs_scale") is not None


def test_a_format_2_checkpoint_still_loads_with_the_same_weights(run_dir, tmp_path):
    """Version 2 kept the networks under ``modules`` and the learned σ among ``params``."""
    state = load_checkpoint(run_dir)
    model = state.pop("model")
    old = {k: v for k, v in state.items() if k not in ("guide", "param_constraints")}
    old["format_version"] = 2
    old["modules"] = {net: {k.split(".", 1)[1]: v for k, v in model.items()
                            if k.startswith(net + ".")} for net in ("encoder", "decoder")}
    old["params"] = {"obs_scale": model["obs_scale_unconstrained"]}
    torch.save(old, tmp_path / "checkpoint.pt")
    new, converted = load_run(run_dir), load_run(tmp_path)
    for (name, a), b in zip(new.vae.state_dict().items(), converted.vae.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name


def test_nan_weights_in_a_checkpoint_are_refused_in_one_line(run_dir, tmp_path):
    state = load_checkpoint(run_dir)
    state["model"]["decoder.net.0.weight"][0, 0] = float("nan")
    resign(state, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="NaN") as err:
        load_run(tmp_path)
    assert "\n" not in str(err.value)


def test_a_flipped_byte_in_a_tensor_is_corrupt_not_a_number(run_dir, tmp_path):
    """torch's zip reader does not check CRCs: before the checksum, a flipped byte inside a
    tensor loaded and evaluated to an ELBO of −10²³."""
    data = bytearray((run_dir / "checkpoint.pt").read_bytes())
    weight = load_checkpoint(run_dir)["model"]["decoder.net.0.weight"]
    at = bytes(data).find(weight.contiguous().numpy().tobytes()[:64])
    assert at > 0
    for offset in (3, 40):
        damaged = bytearray(data)
        damaged[at + offset] ^= 0x40
        (tmp_path / "checkpoint.pt").write_bytes(bytes(damaged))
        with pytest.raises(CheckpointError, match="corrupt: its content does not match") as err:
            load_run(tmp_path)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("field, value, match", [
    ("epoch", "3", "'epoch' should be an integer"), ("epoch", -1, "'epoch'"),
    ("global_step", 2.5, "'global_step'"), ("config", [1, 2], "'config' should be a dict"),
    ("data", None, "'data' should be a dict"), ("history", None, "'history'"),
    ("history", [{"epoch": "x"}], "'history'"), ("model", [1], "'model'"),
    ("params", {"a": 1}, "'params'"), ("optimizer", "adam", "'optimizer'"),
    ("rng", 7, "'rng'"),
])
def test_checkpoint_fields_of_the_wrong_type_are_one_line_errors(run_dir, tmp_path, field,
                                                                 value, match):
    state = load_checkpoint(run_dir)
    state[field] = value
    resign(state, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=match) as err:
        load_run(tmp_path)
    assert "\n" not in str(err.value) and "re-train" in str(err.value)


@pytest.mark.parametrize("event_shape", ["784", [0], [-1, 2], [1.5]])
def test_a_damaged_data_description_is_a_one_line_error(run_dir, tmp_path, event_shape):
    state = load_checkpoint(run_dir)
    state["data"]["event_shape"] = event_shape
    resign(state, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=r"data\.event_shape"):
        load_run(tmp_path)


def test_a_format_3_checkpoint_without_checksum_still_loads(run_dir, tmp_path):
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    state.pop("checksum")
    state["format_version"] = 3
    torch.save(state, tmp_path / "checkpoint.pt")
    assert load_run(tmp_path, load_data=False).vae is not None


def test_a_run_written_before_new_options_existed_still_resumes(run_dir, tmp_path):
    """Options added later (the discrete code's, M2's) are absent from an older checkpoint's
    configuration; their defaults reproduce the old behaviour, so the run resumes."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    state = torch.load(old / "checkpoint.pt", weights_only=True)
    for key in ("latent", "categories", "model", "labels", "aux_weight", "temperature",
                "temperature_min", "temperature_decay"):
        state["config"].pop(key)
    resign(state, old / "checkpoint.pt")
    config = Config.from_dict(torch.load(run_dir / "checkpoint.pt", weights_only=True)["config"])
    result = train_run(config.replace(epochs=state["epoch"] + 1), old, resume=True,
                       progress=False, figures=False)
    assert result.history[-1]["epoch"] == state["epoch"] + 1
