"""``pyro-vae train --config FILE``: a run is a file, the command line overrides it, and a run
folder's own config.json trains the same run again; the options are built from the
configuration's fields, one group per component."""

from __future__ import annotations

import json

import pytest

from pyro_vae.cli import _config_from_args, build_parser, main
from pyro_vae.config import COMPONENTS, Config, flag

TINY = ["--dataset", "moons", "--hidden", "16", "--max-train", "120", "--max-test", "40",
        "--batch-size", "40", "--no-progress", "--no-figures"]


def config_of(argv):
    return _config_from_args(build_parser().parse_args(["train", *argv]))


def test_options_not_given_take_the_fields_defaults():
    assert config_of([]) == Config()
    assert config_of(["--lr", "0.01", "--no-jit", "--conditional"]) == \
        Config(lr=0.01, jit=False, conditional=True)


def test_the_command_line_overrides_the_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[optimization]\nlr = 2e-3\nepochs = 5\njit = false\n[run]\nseed = 4\n')
    config = config_of(["--config", str(path), "--epochs", "7", "--jit", "--beta", "0.5"])
    assert (config.epochs, config.jit, config.beta) == (7, True, 0.5)  # the command line's
    assert (config.lr, config.seed) == (2e-3, 4)  # the file's
    assert (config.dataset, config.batch_size) == ("digits", None)  # neither: the defaults


def test_train_help_lists_every_option_in_its_components_group(capsys):
    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    for name, component in COMPONENTS.items():
        section = text.split(f"\n{name}:\n", 1)[1].split("\n\n", 2)[1]
        for field in component.__dataclass_fields__:
            assert flag(field) in section, (name, field)
    assert "--config FILE" in text and "(default digits:" in text and "(default 0.2)" in text


@pytest.mark.parametrize("text, match", [
    ("[optimization]\nlrate = 1\n", r"unknown key 'lrate' in \[optimization\]"),
    ("[optimization]\nlr = -1.0\n", "--lr must be a positive finite number"),
    ("lr = \n", "is not valid TOML"),
])
def test_bad_config_files_are_one_line_errors_and_write_nothing(tmp_path, capsys, text, match):
    path, out = tmp_path / "run.toml", tmp_path / "out"
    path.write_text(text)
    assert main(["train", "--config", str(path), "--out", str(out), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pyro-vae: error: ") and "\n" not in err, err
    assert __import__("re").search(match, err) and str(path) in err, err
    assert not out.exists()


def test_a_missing_config_file_is_a_one_line_error(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["train", "--config", str(tmp_path / "nope.toml"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "nope.toml does not exist; check the path" in err and "\n" not in err
    assert not out.exists()


def test_a_run_folders_config_json_reproduces_the_run(tmp_path):
    first, again, other = tmp_path / "first", tmp_path / "again", tmp_path / "other"
    assert main(["train", "--epochs", "2", "--seed", "3", "--beta", "0.5", "--out", str(first),
                 *TINY]) == 0
    assert main(["train", "--config", str(first / "config.json"), "--out", str(again),
                 "--no-progress", "--no-figures"]) == 0
    assert json.loads((again / "config.json").read_text()) == \
        json.loads((first / "config.json").read_text())

    def history(run):
        rows = json.loads((run / "metrics.json").read_text())
        return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]

    assert [row["epoch"] for row in history(first)] == [1, 2]
    assert history(again) == history(first)  # same seed, same numbers, exactly
    # and a command-line option over the file changes the run
    assert main(["train", "--config", str(first), "--seed", "4", "--out", str(other),
                 "--no-progress", "--no-figures"]) == 0
    assert json.loads((other / "config.json").read_text())["seed"] == 4
    assert history(other) != history(first)
