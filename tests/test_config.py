"""The configuration: one dataclass per component, their flat composition ``Config``, the
resolution of defaults (for the library's VAE and for a user's own model), and runs read from
TOML, YAML and JSON files. Nothing here trains (``tests/test_cli_config.py`` does)."""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest

from pyro_vae.config import (
    COMPONENTS,
    OPTION_COMPONENT,
    Config,
    DataConfig,
    EvaluationConfig,
    ModelConfig,
    ObjectiveConfig,
    OptimizationConfig,
    RunConfig,
    read_config_file,
)
from pyro_vae.errors import ConfigError


def one_line_error(call, match):
    with pytest.raises(ConfigError, match=match) as err:
        call()
    assert "\n" not in str(err.value) and "; " in str(err.value), str(err.value)  # problem; fix
    return str(err.value)


# --------------------------------------------------------------------------- the components
def test_config_is_the_disjoint_union_of_its_components_fields():
    names = [f.name for cls in COMPONENTS.values() for f in dataclasses.fields(cls)]
    assert len(names) == len(set(names))  # no option in two components
    assert [f.name for f in dataclasses.fields(Config)] == names  # in component order
    assert "extra" not in names
    assert OPTION_COMPONENT["lr"] == "optimization" and OPTION_COMPONENT["binarize"] == "data"
    assert OPTION_COMPONENT["eval_samples"] == "evaluation" and OPTION_COMPONENT["seed"] == "run"


def test_components_and_from_components_round_trip():
    config = Config(dataset="moons", latent_dim=3, beta=0.5, lr=2e-3, eval_samples=4, seed=7)
    parts = config.components()
    assert list(parts) == ["data", "model", "objective", "optimization", "evaluation", "run"]
    assert isinstance(parts["optimization"], OptimizationConfig)
    assert parts["optimization"].lr == 2e-3
    assert parts["model"].latent_dim == 3 and parts["objective"].beta == 0.5
    assert parts["evaluation"] == EvaluationConfig(eval_samples=4)
    assert Config.from_components(*parts.values()) == config
    parts["run"].seed = 99  # a copy: the configuration keeps its value
    assert config.seed == 7
    built = Config.from_components(DataConfig(dataset="circle"), OptimizationConfig(epochs=5),
                                   epochs=6)
    assert (built.dataset, built.epochs, built.seed) == ("circle", 6, 0)  # keywords win
    one_line_error(lambda: Config.from_components(DataConfig(), DataConfig()), "two DataConfig")
    one_line_error(lambda: Config.from_components(Config()), "takes DataConfig")


def test_default_components_validate_with_their_unset_options():
    for cls in COMPONENTS.values():
        cls().validate()  # None = unset (the data set's default), not an error


@pytest.mark.parametrize("component, options, match", [
    (DataConfig, dict(test_fraction=2.0), "--test-fraction must lie strictly between 0 and 1"),
    (DataConfig, dict(label_column="y"), "--label-column applies to --dataset file"),
    (DataConfig, dict(download="yes"), "--download is a switch"),
    (DataConfig, dict(split_seed=-1), "--split-seed must be an integer in 0"),
    (ModelConfig, dict(latent="categorical", categories=1), "--categories must be ≥ 2"),
    (ModelConfig, dict(hidden=(8, 0)), "--hidden sizes must be positive"),
    (ModelConfig, dict(likelihood="poisson"), "unknown --likelihood 'poisson'"),
    (ModelConfig, dict(aux_weight=-1.0), "--aux-weight must be a finite number ≥ 0"),
    (ObjectiveConfig, dict(num_groups=3), "--num-groups applies to --objective miwae"),
    (ObjectiveConfig, dict(elbo="meanfield", objective="iwae"), "--elbo meanfield"),
    (ObjectiveConfig, dict(cycle_ramp=0.0), r"--cycle-ramp must be in \(0, 1\]"),
    (ObjectiveConfig, dict(temperature=0.0), "--temperature must be a positive"),
    (OptimizationConfig, dict(lr=-1.0), "--lr must be a positive finite number"),
    (OptimizationConfig, dict(lr_decay="fast"), r"--lr-decay must be in \(0, 1\]"),
    (OptimizationConfig, dict(jit="yes"), "jit must be True, False or None"),
    (OptimizationConfig, dict(epochs=2_000_000), "--epochs must be at most"),
    (EvaluationConfig, dict(eval_samples=0), "--eval-samples must be an integer ≥ 1"),
    (RunConfig, dict(devices=2), "--devices / --num-nodes above 1 need --strategy ddp"),
    (RunConfig, dict(logger="wandb"), "unknown --logger 'wandb'"),
])
def test_each_component_validates_its_own_fields(component, options, match):
    one_line_error(lambda: component(**options).validate(), match)
    # the composition refuses the same value with the same message
    one_line_error(lambda: Config(dataset="moons", **options).resolved(), match)


def test_checks_across_components_are_the_compositions():
    ModelConfig(model="m2").validate()
    ObjectiveConfig(objective="iwae").validate()
    one_line_error(lambda: Config(model="m2", objective="iwae").resolved(),
                   "--model m2 takes --objective elbo")
    DataConfig(binarize="dynamic").validate()
    one_line_error(lambda: Config(dataset="moons", binarize="dynamic").resolved(),
                   "--binarize dynamic only applies to --likelihood bernoulli")
    one_line_error(lambda: Config(latent="bernoulli", estimator="dreg").resolved(),
                   "needs a pathwise gradient")


# --------------------------------------------------------------------------- the flat API
def test_the_flat_api_is_unchanged():
    config = Config(epochs=3, likelihood="gaussian", dataset="moons", hidden=(16,))
    assert (config.epochs, config.likelihood, config.lr) == (3, "gaussian", None)
    assert config == Config(epochs=3, likelihood="gaussian", dataset="moons", hidden=(16,))
    assert config != config.replace(epochs=4)
    assert dataclasses.replace(config, jit=False).jit is False
    resolved = config.resolved()
    assert (resolved.lr, resolved.batch_size, resolved.binarize) == (1e-3, 128, "none")
    assert resolved.resolved() == resolved  # idempotent
    assert not resolved.uses_custom_objective() and resolved.compile_unsupported() is None
    assert not resolved.may_use_batch_norm()
    d = resolved.to_dict()
    assert set(d) == {f.name for f in dataclasses.fields(Config)} and d["hidden"] == [16]
    assert json.loads(json.dumps(d)) == d
    assert Config.from_dict(d) == resolved


def test_old_run_folders_config_json_with_the_dead_extra_field_still_loads():
    d = {**Config(dataset="moons").resolved().to_dict(), "extra": {}}
    assert Config.from_dict(d) == Config(dataset="moons").resolved()
    one_line_error(lambda: Config.from_dict({"nope": 1}), "unknown configuration keys")


def test_grouped_dicts_round_trip():
    config = Config(dataset="moons", latent_dim=3, lr=2e-3).resolved()
    grouped = config.to_dict(grouped=True)
    assert grouped["optimization"]["lr"] == 2e-3 and grouped["data"]["dataset"] == "moons"
    assert "lr" not in grouped["model"]
    assert Config.from_dict(grouped) == config


# --------------------------------------------------------------------------- a user's own model
def test_a_user_model_gets_no_model_defaults_but_the_optimization_ones():
    library = Config(epochs=1).resolved()  # digits: the library's Bernoulli VAE
    assert (library.likelihood, library.binarize, library.latent_dim) == ("bernoulli", "dynamic",
                                                                          2)
    user = Config(epochs=1).resolved(for_user_model=True)
    assert (user.likelihood, user.arch, user.hidden, user.latent_dim, user.obs_scale) == \
        (None, None, None, None, None)
    assert user.binarize == "none"
    assert (user.epochs, user.lr, user.batch_size) == (1, 3e-3, 128)  # digits' optimization
    assert user.estimator == "reparam"
    assert user.resolved(for_user_model=True) == user
    circle = Config(dataset="circle").resolved(for_user_model=True)
    assert circle.obs_scale is None and (circle.lr, circle.batch_size) == (3e-3, 1000)


def test_a_user_model_config_still_validates_what_is_given():
    # binarizing is the user's call; an unset likelihood is not held against it
    assert Config(binarize="dynamic").resolved(for_user_model=True).binarize == "dynamic"
    one_line_error(lambda: Config(binarize="dynamic", likelihood="gaussian")
                   .resolved(for_user_model=True), "only applies to --likelihood bernoulli")
    one_line_error(lambda: Config(latent_dim=0).resolved(for_user_model=True), "--latent-dim")
    one_line_error(lambda: Config(lr=0.0).resolved(for_user_model=True), "--lr")
    d = Config(epochs=2).resolved(for_user_model=True).to_dict()
    assert Config.from_dict(d, for_user_model=True).likelihood is None
    # the library's validation still wants the model's options
    one_line_error(lambda: Config(epochs=2).resolved(for_user_model=True).validate(),
                   "unknown --likelihood None")


# --------------------------------------------------------------------------- a run is a file
TOML_GROUPED = """\
[data]
dataset = "moons"
max-train = 200

[model]
hidden = [32, 16]
latent_dim = 3

[optimization]
lr = 2e-3
epochs = 4

[run]
seed = 5
"""

TOML_FLAT = """\
dataset = "moons"
max_train = 200
hidden = [32, 16]
latent_dim = 3
lr = 2e-3
epochs = 4
seed = 5
"""

EXPECTED = Config(dataset="moons", max_train=200, hidden=(32, 16), latent_dim=3, lr=2e-3,
                  epochs=4, seed=5)


@pytest.mark.parametrize("text", [TOML_GROUPED, TOML_FLAT], ids=["grouped", "flat"])
def test_toml_grouped_or_flat(tmp_path, text):
    path = tmp_path / "run.toml"
    path.write_text(text)
    assert Config.from_file(path) == EXPECTED
    assert read_config_file(path)["hidden"] == (32, 16)


def test_toml_mixing_flat_and_grouped_keys(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('dataset = "moons"\nseed = 5\n[optimization]\nlr = 2e-3\nepochs = 4\n'
                    '[model]\nhidden = [32, 16]\nlatent_dim = 3\n[data]\nmax_train = 200\n')
    assert Config.from_file(path) == EXPECTED


def test_options_given_in_code_override_the_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(TOML_GROUPED)
    config = Config.from_file(path, epochs=9, beta=0.5)
    assert config == EXPECTED.replace(epochs=9, beta=0.5)


def test_yaml_file(tmp_path):
    pytest.importorskip("yaml")
    path = tmp_path / "run.yaml"
    # YAML reads 2e-3 (no dot) as text: a real option takes it as the number
    path.write_text("data:\n  dataset: moons\n  max-train: 200\nmodel:\n  hidden: [32, 16]\n"
                    "  latent_dim: 3\noptimization:\n  lr: 2e-3\n  epochs: 4\nseed: 5\n")
    assert Config.from_file(path) == EXPECTED
    (tmp_path / "empty.yml").write_text("")
    assert Config.from_file(tmp_path / "empty.yml") == Config()


def test_yaml_without_pyyaml_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml raises ModuleNotFoundError
    path = tmp_path / "run.yaml"
    path.write_text("lr: 0.001\n")
    one_line_error(lambda: read_config_file(path), "pip install pyyaml")


def test_json_round_trip_of_a_run_folders_config(tmp_path):
    config = Config(dataset="circle", latent_dim=2, lr_schedule="cosine", jit=False,
                    seed=3).resolved()
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    assert Config.from_file(run / "config.json") == config
    assert Config.from_file(run) == config  # a run folder stands for its config.json
    assert Config.from_file(run / "config.json").resolved() == config


@pytest.mark.parametrize("text, match", [
    ("[optimization]\nlrate = 1\n", r"unknown key 'lrate' in \[optimization\]; its keys are: "
                                    "epochs, batch_size, optimizer, lr,"),
    ("[model]\nlr = 1e-3\n", r"unknown key 'lr' in \[model\]; its keys are: arch, hidden"),
    ("batch = 64\n", r"unknown option 'batch' \(did you mean 'batch_size', in "
                     r"\[optimization\]\?\)"),
    ("[training]\nlr = 1e-3\n", "unknown section 'training'; the sections are the components"),
    ("[optimization]\nlr = \"fast\"\n", "--lr must be a positive finite number, got 'fast'"),
    ("[optimization]\nepochs = 2.5\n", "--epochs must be an integer ≥ 0, got 2.5"),
    ("hidden = \"64\"\n", "'hidden' must be a list of integers"),
    ("[run]\ndevice = 3\n", "--device must be text"),
    ("lr = 1e-3\n[optimization]\nlr = 2e-3\n", "option 'lr' is given twice"),
    ("lr = \n", "is not valid TOML"),
])
def test_bad_files_are_one_line_errors_naming_the_key(tmp_path, text, match):
    path = tmp_path / "run.toml"
    path.write_text(text)
    message = one_line_error(lambda: Config.from_file(path), match)
    assert str(path) in message


def test_a_cross_option_problem_in_a_file_gets_the_options_message(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[data]\nbinarize = "dynamic"\n[model]\nlikelihood = "gaussian"\n')
    read_config_file(path)  # each value is fine on its own
    one_line_error(lambda: Config.from_file(path), "--binarize dynamic only applies")
    # and the command line's value may fix it
    assert Config.from_file(path, likelihood="bernoulli").resolved().binarize == "dynamic"


@pytest.mark.parametrize("name, content, match", [
    ("missing.toml", None, "does not exist; check the path"),
    ("run.ini", "lr = 1\n", "is not a configuration file; give a .toml"),
    ("list.json", "[1, 2]", "must hold a table of options, got list"),
    ("broken.json", "{\"lr\": ", "is not valid JSON"),
    ("folder", "dir", "is a folder without a config.json"),
])
def test_missing_or_unreadable_files_are_one_line_errors(tmp_path, name, content, match):
    path = tmp_path / name
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    one_line_error(lambda: Config.from_file(path), match)


def test_thread_count_of_a_run():
    """One thread for MLPs on CPU by default (their epochs ran 10–100× slower with two threads
    on the busy 2-core machine); a given --threads wins; conv nets keep torch's count."""
    import torch

    assert Config().torch_threads("mlp") == 1
    assert Config(threads=2).torch_threads("mlp") == 2
    assert Config().torch_threads("conv") == torch.get_num_threads()
    assert Config(device="cuda").torch_threads("mlp") == torch.get_num_threads()
    with pytest.raises(ConfigError, match="--threads must be an integer"):
        Config(threads=0).resolved()


def test_enumeration_of_a_huge_code_is_refused_up_front():
    with pytest.raises(ConfigError, match=r"enum sums over all 2\^40 = 1.1e\+12 values"):
        Config(latent="bernoulli", latent_dim=40, estimator="enum").resolved()
    with pytest.raises(ConfigError, match=r"10\^5 = 1e\+05 values"):
        Config(latent="categorical", latent_dim=5, categories=10, estimator="enum").resolved()
    Config(latent="bernoulli", latent_dim=16, estimator="enum").resolved()  # 65 536: allowed
