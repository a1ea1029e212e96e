"""The configuration of a run: one dataclass per component, their composition :class:`Config`,
the per-data-set defaults, validation, and runs read from files.

A run is configured by six components, each a dataclass that checks its own fields
(``validate()``):

- :class:`DataConfig`: the data set, its split, its size and its binarization;
- :class:`ModelConfig`: the networks, the likelihood, the code z and the guide family;
- :class:`ObjectiveConfig`: the objective, its gradient estimator and the β schedule;
- :class:`OptimizationConfig`: epochs, batch size, optimizer, learning rate, compilation;
- :class:`EvaluationConfig`: the per-epoch test evaluation;
- :class:`RunConfig`: seed, device, data-parallel workers, checkpoints and logging.

:class:`Config` is their composition: it has every component's fields as flat attributes
(``config.lr``, ``Config(epochs=3)``), :meth:`Config.components` returns the components and
:meth:`Config.from_components` puts them together; the checks that involve several components
are its own. Each option is defined once, on its field (:func:`option`): its default, help
text, choices, command-line parser and check. ``pyro-vae train`` builds its options from these
fields, one argument group per component.

A :class:`Config` is plain data (JSON-serializable): it is written to ``config.json`` in the run
folder and stored in every checkpoint, so a run can be resumed or a model rebuilt from it alone.
Options left ``None`` take the data set's default from :data:`DATASET_DEFAULTS` when the config is
:meth:`~Config.resolved`. A run is also a file: :meth:`Config.from_file` (``pyro-vae train
--config FILE``) reads a TOML, YAML or JSON file of options, flat or grouped per component.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from pyro_vae.data.datasets import DATASETS
from pyro_vae.distributions.guides import GUIDE_FAMILIES
from pyro_vae.distributions.likelihoods import LIKELIHOODS
from pyro_vae.errors import ConfigError
from pyro_vae.nn.networks import ACTIVATIONS

OPTIMIZERS = ("adam", "clipped-adam")
LR_SCHEDULES = ("constant", "exponential", "cosine")
KL_SCHEDULES = ("constant", "linear", "cyclical")
ARCHS = ("mlp", "conv")
STRATEGIES = ("single", "ddp")
BINARIZE = ("none", "dynamic", "threshold")
LOGGERS = ("none", "tensorboard", "mlflow")
#: ``vae``: the (conditional) VAE of --latent; ``m2``: the semi-supervised VAE of Kingma et al.
MODELS = ("vae", "m2")
#: the estimator of a discrete code when none is given: NVIL (unbiased, one sample, cheap)
DEFAULT_DISCRETE = "score-nn"

#: Per-data-set defaults for options left unset. ``digits`` (the default data) trains in about a
#: minute on 2 CPU cores; ``circle`` follows the source material's architecture and σ = 0.1.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": dict(arch="mlp", hidden=(256, 128), latent_dim=2, likelihood="bernoulli",
                   binarize="dynamic", epochs=200, batch_size=128, lr=3e-3),
    "moons": dict(arch="mlp", hidden=(128, 128, 128), latent_dim=2,
                  likelihood="gaussian-learned", epochs=200, batch_size=128, lr=1e-3),
    "circle": dict(arch="mlp", hidden=(20, 20), latent_dim=1, likelihood="gaussian",
                   obs_scale=0.1, epochs=500, batch_size=1000, lr=3e-3),
    "fashion-mnist": dict(arch="mlp", hidden=(400,), latent_dim=20, likelihood="bernoulli",
                          binarize="dynamic", epochs=20, batch_size=128, lr=1e-3),
    "mnist": dict(arch="mlp", hidden=(400,), latent_dim=20, likelihood="bernoulli",
                  binarize="dynamic", epochs=20, batch_size=128, lr=1e-3),
    "celeba": dict(arch="conv", hidden=(), latent_dim=128, likelihood="gaussian-learned",
                   epochs=10, batch_size=128, lr=1e-3),
    "file": dict(arch="mlp", hidden=(256, 128), latent_dim=2, likelihood="gaussian-learned",
                 epochs=100, batch_size=128, lr=1e-3),
}

#: the most values of a discrete code ``--estimator enum`` sums over per point (2^16: the
#: enumerated log-densities of a batch of 128 points then take 32 MiB)
MAX_ENUM_STATES = 2**16
#: the largest seed every generator the library seeds accepts (NumPy's and scikit-learn's: 2³²−1)
MAX_SEED = 2**32 - 1
#: the largest --latent-dim and --hidden width (memory is checked as well)
MAX_WIDTH = 2**20
#: the largest --image-size
MAX_IMAGE_SIZE = 4096
#: the most --refine-steps (each is a forward and backward pass per training step)
MAX_REFINE_STEPS = 1000
#: the most --epochs (a run that would outlive its machine is a typo)
MAX_EPOCHS = 1_000_000
#: the most --flow-length steps
MAX_FLOW_LENGTH = 1000
#: an example of a sensible value per real option, for the errors' "; fix" half
EXAMPLES = {"lr": "1e-3", "clip-norm": "10", "obs-scale": "0.1"}


# ------------------------------------------------------------ parsers of command-line text
def parse_int(text: str) -> int:
    """An integer option's text (the command line's parser)."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def parse_float(text: str) -> float:
    """A real option's text (the command line's parser)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def parse_path(text: str) -> str:
    """A path option: not empty, no NUL byte."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    if "\x00" in text:
        raise argparse.ArgumentTypeError("a path cannot contain a NUL byte")
    return text


def parse_hidden(text: str) -> tuple[int, ...]:
    """``"400,200"`` → ``(400, 200)``; ``""`` or ``"none"`` → ``()`` (no hidden layer)."""
    text = text.strip()
    if text.lower() in ("", "none"):
        return ()
    try:
        sizes = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise ConfigError(f"--hidden takes comma-separated layer sizes like 400,200, got "
                          f"{text!r}; give whole numbers separated by commas") from None
    if any(s < 1 for s in sizes):
        raise ConfigError(f"--hidden sizes must be positive, got {text!r}; e.g. --hidden 400,200")
    return sizes


# ------------------------------------------------------------ checks of one value
def _choice(option: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"unknown --{option} {value!r}; choose one of: {', '.join(allowed)}")


def _bounded_int(option: str, value: Any, maximum: int) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and value > maximum:
        raise ConfigError(f"--{option} must be at most {maximum:,}, got {value:,}; "
                          "give a smaller value")


def _positive_int(option: str, value: Any, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"--{option} must be an integer ≥ {low}, got {value!r}; give a whole "
                          f"number such as {max(low, 1)}")


def _positive_float(option: str, value: Any, hint: str = "") -> None:
    if not (_is_real(value) and math.isfinite(value) and value > 0):
        hint = hint or f"e.g. --{option} {EXAMPLES.get(option, '1')}"
        raise ConfigError(f"--{option} must be a positive finite number, got {value!r}; {hint}")


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _whole(low: int = 1, maximum: int | None = None) -> Callable[[str, Any], None]:
    """The check of an integer option ≥ ``low`` (and ≤ ``maximum``)."""
    def check(option: str, value: Any) -> None:
        _positive_int(option, value, allow_zero=low == 0)
        if maximum is not None:
            _bounded_int(option, value, maximum)
    return check


def _positive(hint: str = "") -> Callable[[str, Any], None]:
    """The check of a positive finite real option."""
    return lambda option, value: _positive_float(option, value, hint)


def _nonnegative(fix: str) -> Callable[[str, Any], None]:
    """The check of a finite real option ≥ 0; ``fix`` ends its error."""
    def check(option: str, value: Any) -> None:
        if not (_is_real(value) and 0 <= value < math.inf):
            raise ConfigError(f"--{option} must be a finite number ≥ 0, got {value!r}; {fix}")
    return check


def _in_interval(low: float, high: float, *, open_low: bool, open_high: bool,
                 wording: str, fix: str) -> Callable[[str, Any], None]:
    """The check of a real option in an interval, e.g. (0, 1]; ``wording`` names it."""
    def check(option: str, value: Any) -> None:
        ok = _is_real(value) and (low < value if open_low else low <= value) \
            and (value < high if open_high else value <= high)
        if not ok:
            raise ConfigError(f"--{option} must {wording}, got {value!r}; {fix}")
    return check


def _seed(option: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SEED:
        raise ConfigError(f"--{option} must be an integer in 0..{MAX_SEED} (what torch, NumPy "
                          f"and scikit-learn all accept), got {value!r}; e.g. 0")


def _switch(option: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"--{option} is a switch: it must be true or false, got {value!r}; "
                          f"give {option.replace('-', '_')} = true (or leave it out)")


def _automatic_switch(option: str, value: Any) -> None:
    if value is not None and not isinstance(value, bool):
        raise ConfigError(f"{option} must be True, False or None (automatic), got {value!r}; "
                          f"pass --{option} or --no-{option}, or leave it out")


def _path(option: str, value: Any) -> None:
    if not isinstance(value, (str, os.PathLike)):
        raise ConfigError(f"--{option} must be a path, got {value!r}; give it as text, e.g. "
                          "\"data/x.npy\"")


def _text(example: str) -> Callable[[str, Any], None]:
    def check(option: str, value: Any) -> None:
        if not isinstance(value, str):
            raise ConfigError(f"--{option} must be text, got {value!r}; e.g. {example}")
    return check


def _label_column(option: str, value: Any) -> None:
    if not isinstance(value, str):
        raise ConfigError(f"--label-column must be a column name or index as text, got "
                          f"{value!r}; e.g. \"label\" or \"0\"")


def _image_size(option: str, value: Any) -> None:
    _positive_int(option, value)
    if value > MAX_IMAGE_SIZE:
        raise ConfigError(f"--image-size must be at most {MAX_IMAGE_SIZE}, got "
                          f"{value}; images are resized to this square size")


def _hidden(option: str, value: Any) -> None:
    if not isinstance(value, (tuple, list)):
        raise ConfigError(f"--hidden must be a sequence of layer sizes, got {value!r}; "
                          "e.g. (400, 200), or --hidden 400,200")
    for h in value:
        _bounded_int("hidden", h, MAX_WIDTH)
        if not isinstance(h, int) or isinstance(h, bool) or h < 1:
            raise ConfigError(f"--hidden sizes must be positive integers, got {h!r}; "
                              "e.g. --hidden 400,200")


# ------------------------------------------------------------ choices kept by other modules
# (the registries of objectives, estimators and codes sit above the configuration: imported
# when first asked for)
def _elbos() -> tuple[str, ...]:
    from pyro_vae.infer.elbo import ELBOS

    return tuple(ELBOS)


def _objectives() -> tuple[str, ...]:
    from pyro_vae.infer.importance import OBJECTIVES

    return tuple(OBJECTIVES)


def _latents() -> tuple[str, ...]:
    from pyro_vae.models.discrete_vae import LATENTS

    return tuple(LATENTS)


def train_estimators() -> tuple[str, ...]:
    """Every gradient estimator ``--estimator`` accepts: the pathwise and score-function ones of
    a Gaussian code, then those only a discrete code has."""
    from pyro_vae.infer.discrete import DISCRETE_ESTIMATORS
    from pyro_vae.infer.estimators import SCORE_FAMILY
    from pyro_vae.infer.importance import IW_ESTIMATORS

    gaussian = tuple(IW_ESTIMATORS) + tuple(e for e in SCORE_FAMILY if e not in IW_ESTIMATORS)
    return gaussian + tuple(e for e in DISCRETE_ESTIMATORS if e not in gaussian)


# ------------------------------------------------------------ one definition per option
def option(default: Any, help: str, *,
           choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None,
           parse: Callable[[str], Any] | None = None,
           check: Callable[[str, Any], None] | None = None,
           negatable: bool = False) -> Any:
    """A configuration field with everything about its option, stated once.

    :param default: the value when neither a file nor the command line gives one; ``None`` is
        "unset": filled in by :meth:`Config.resolved` (or decided automatically).
    :param help: the ``--help`` text (``%(default)s`` is replaced by the default).
    :param choices: the allowed values, or a function returning them (registries imported late).
    :param parse: the command line's parser of the option's text (``str`` when not given).
    :param check: ``check(option, value)`` raises :class:`ConfigError` for a bad value on its
        own (``option`` as on the command line, e.g. ``"batch-size"``); ``choices`` are
        checked before it. An unset value (``None`` where the default is ``None``) is not
        checked.
    :param negatable: a ``--flag`` / ``--no-flag`` pair (a boolean whose default is automatic);
        a field whose default is ``False`` is a ``--flag`` switch.
    """
    return field(default=default, metadata={"help": help, "choices": choices, "parse": parse,
                                            "check": check, "negatable": negatable})


def option_choices(f: dataclasses.Field) -> tuple[str, ...] | None:
    """The allowed values of the option of field ``f``, or None when any value of its type is."""
    choices = f.metadata.get("choices")
    return tuple(choices()) if callable(choices) else choices


def flag(name: str) -> str:
    """The command-line spelling of option ``name``: ``batch_size`` → ``--batch-size``."""
    return "--" + name.replace("_", "-")


def _check_value(f: dataclasses.Field, value: Any, *, required: bool = False) -> None:
    if value is None and f.default is None and not required:
        return  # unset: the data set's default, or decided automatically
    option_name = f.name.replace("_", "-")
    choices = option_choices(f)
    if choices is not None:
        _choice(option_name, value, choices)
    check = f.metadata.get("check")
    if check is not None:
        check(option_name, value)


def _check_fields(component: Any) -> None:
    for f in fields(component):
        _check_value(f, getattr(component, f.name))


# ------------------------------------------------------------ the components
@dataclass
class DataConfig:
    """The data: which set, where it lives, its train/test split, its size and binarization."""

    dataset: str = option("digits", "data set (default %(default)s: scikit-learn's 8x8 digits, "
                          "embedded)", choices=DATASETS)
    data: str | None = option(None, "path of a .npy/.npz/.csv file or image folder (with "
                              "--dataset file)", parse=parse_path, check=_path)
    data_root: str | None = option(None, "folder holding torchvision data sets (default: "
                                   "$PYRO_VAE_DATA or ~/.cache/pyro-vae; Debian's Fashion-MNIST "
                                   "is found automatically)", parse=parse_path, check=_path)
    download: bool = option(False, "let torchvision download missing data (needs internet)",
                            check=_switch)
    split_seed: int = option(0, "seed of the train/test split and of generated data (default "
                             "%(default)s)", parse=parse_int, check=_seed)
    test_fraction: float = option(
        0.2, "test share for data sets without an official split (default %(default)s)",
        parse=parse_float, check=_in_interval(
            0, 1, open_low=True, open_high=True, wording="lie strictly between 0 and 1",
            fix="e.g. 0.2 keeps a fifth for testing"))
    image_size: int = option(64, "side of CelebA / image-folder images after resizing "
                             "(default %(default)s)", parse=parse_int, check=_image_size)
    label_column: str | None = option(None, "CSV column (name or 0-based index) holding labels",
                                      check=_label_column)
    max_train: int | None = option(None, "use only the first N training points",
                                   parse=parse_int, check=_whole())
    max_test: int | None = option(None, "use only the first N test points", parse=parse_int,
                                  check=_whole())
    binarize: str | None = option(None, "for --likelihood bernoulli on grey images: 'dynamic' "
                                  "draws pixels ~ Bernoulli(intensity) per mini-batch, "
                                  "'threshold' uses x > 0.5 (default with Bernoulli on image "
                                  "data sets: dynamic)", choices=BINARIZE)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad data option."""
        _check_fields(self)
        if self.label_column is not None and self.dataset != "file":
            raise ConfigError(f"--label-column applies to --dataset file, not {self.dataset}; "
                              "drop it")


@dataclass
class ModelConfig:
    """The model: its networks, the likelihood p(x|z), the code z and the guide family."""

    arch: str | None = option(None, "mlp or conv (28x28 / 64x64 images)", choices=ARCHS)
    hidden: tuple[int, ...] | None = option(
        None, "comma-separated hidden layer sizes of the encoder; the decoder mirrors them "
        "(e.g. 400 or 512,256)", parse=parse_hidden, check=_hidden)
    activation: str = option("relu", "hidden activation of the MLPs (default %(default)s)",
                             choices=tuple(ACTIVATIONS))
    model: str = option("vae", "vae, or m2: the semi-supervised VAE of Kingma et al. (2014), "
                        "with y summed out by TraceEnum_ELBO where it is not given (default "
                        "%(default)s)", choices=MODELS)
    labels: int = option(100, "--model m2: labelled training points, equally many per class; "
                         "the rest lose their labels (default %(default)s)", parse=parse_int,
                         check=_whole())
    aux_weight: float = option(0.1, "--model m2: weight of the classification term, α / N "
                               "(default %(default)s, the paper's α = 0.1·N)", parse=parse_float,
                               check=_nonnegative("e.g. 0.1 (the paper's α = 0.1·N)"))
    latent: str = option("gaussian", "the code z: gaussian (L dims), bernoulli (L binary units) "
                         "or categorical (L groups of --categories classes) (default "
                         "%(default)s)", choices=_latents)
    latent_dim: int | None = option(None, "dimension L of z (units of a bernoulli code, groups "
                                    "of a categorical)", parse=parse_int,
                                    check=_whole(maximum=MAX_WIDTH))
    categories: int = option(10, "classes C per group of --latent categorical (default "
                             "%(default)s)", parse=parse_int, check=_whole())
    likelihood: str | None = option(None, "observation model p(x|z)", choices=LIKELIHOODS)
    obs_scale: float | None = option(None, "fixed σ of --likelihood gaussian (b of laplace), or "
                                     "the starting value of a learned one", parse=parse_float,
                                     check=_positive())
    allow_greyscale: bool = option(False, "let bernoulli score grey values (cross-entropy, not a "
                                   "density)", check=_switch)
    conditional: bool = option(False, "conditional VAE: encoder and decoder also see the label "
                               "y", check=_switch)
    guide: str = option("diag", "posterior family q(z|x): diag (factorized Gaussian), full (full "
                        "covariance), iaf (inverse autoregressive flow), planar (planar flow) "
                        "(default %(default)s)", choices=GUIDE_FAMILIES)
    flow_length: int = option(2, "flow steps K of --guide iaf / planar (default %(default)s)",
                              parse=parse_int, check=_whole(0, MAX_FLOW_LENGTH))
    refine_steps: int = option(
        0, "semi-amortized inference (SA-VAE, Kim et al. 2018): refine each point's Gaussian q "
        "by K SVI steps of its ELBO, in training and in every evaluation (default %(default)s: "
        "amortized)", parse=parse_int, check=_whole(0, MAX_REFINE_STEPS))
    refine_lr: float = option(0.02, "step size of the --refine-steps steps (default "
                              "%(default)s)", parse=parse_float, check=_positive())
    refine_through: bool = option(
        False, "back-propagate through the --refine-steps steps into the encoder (SA-VAE); "
        "without it the encoder is trained on its own ELBO", check=_switch)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad model option."""
        _check_fields(self)
        if self.latent == "categorical" and self.categories < 2:
            raise ConfigError(f"--categories must be ≥ 2, got {self.categories}; e.g. 10")


@dataclass
class ObjectiveConfig:
    """What training maximizes: the bound, its gradient estimator, particles and the β schedule."""

    elbo: str = option("trace", "trace: Trace_ELBO (Monte Carlo KL); meanfield: "
                       "TraceMeanField_ELBO (analytic KL) (default %(default)s)", choices=_elbos)
    num_particles: int = option(1, "samples of z per data point per step, vectorized: K of the "
                                "importance-weighted objectives (default %(default)s)",
                                parse=parse_int, check=_whole())
    objective: str = option("elbo", "elbo, or an importance-weighted bound: iwae (K samples), "
                            "miwae (M groups of K), ciwae (β-mixture of ELBO and IWAE), piwae "
                            "(decoder on IWAE, encoder on MIWAE) (default %(default)s)",
                            choices=_objectives)
    estimator: str | None = option(
        None, "the encoder's gradient estimator: reparam (pathwise), stl (sticking the landing), "
        "dreg (doubly reparameterized), or for the ELBO score, score-avg, score-nn (REINFORCE "
        "without / with a decaying-average / a learned baseline); for a discrete code also "
        "vimco and rloo (K ≥ 2 samples), arm, disarm, rebar, relax (binary codes), relaxed, "
        "relaxed-st (Concrete / Gumbel-softmax, straight-through; biased) and enum (exact) "
        "(default: reparam; score-nn for a discrete code)", choices=train_estimators)
    temperature: float = option(1.0, "starting temperature τ₀ of --estimator relaxed / "
                                "relaxed-st (default %(default)s)", parse=parse_float,
                                check=_positive("e.g. 0.5"))
    temperature_min: float = option(0.5, "the lowest τ of the schedule τ = max(τ_min, τ₀ "
                                    "exp(-r·step)) (default %(default)s)", parse=parse_float,
                                    check=_positive("e.g. 0.5"))
    temperature_decay: float = option(1e-4, "r of the temperature schedule, per step; 0 keeps "
                                      "τ₀ (default %(default)s)", parse=parse_float,
                                      check=_nonnegative("e.g. 1e-4 (0 keeps τ constant)"))
    num_groups: int = option(1, "M, groups of K particles of miwae and piwae (default "
                             "%(default)s)", parse=parse_int, check=_whole())
    ciwae_beta: float = option(0.5, "weight of the ELBO in ciwae, in [0, 1] (default "
                               "%(default)s)", parse=parse_float, check=_in_interval(
                                   0, 1, open_low=False, open_high=False, wording="lie in [0, 1]",
                                   fix="e.g. 0.5"))
    beta: float = option(1.0, "KL weight β ≥ 0 on site z, in model and guide (default "
                         "%(default)s; 0 drops the KL term)", parse=parse_float,
                         check=_nonnegative("it is the KL weight (1 for the ELBO, 0 drops the "
                                            "KL term)"))
    kl_schedule: str = option("constant", "β schedule: constant, linear warm-up, or cyclical "
                              "(default %(default)s)", choices=KL_SCHEDULES)
    warmup_epochs: int = option(10, "epochs of the linear β warm-up (default %(default)s)",
                                parse=parse_int, check=_whole(0))
    cycles: int = option(4, "cycles of the cyclical schedule", parse=parse_int, check=_whole())
    cycle_ramp: float = option(0.5, "share of each cycle during which β rises (default "
                               "%(default)s)", parse=parse_float, check=_in_interval(
                                   0, 1, open_low=True, open_high=False, wording="be in (0, 1]",
                                   fix="e.g. 0.5"))

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad objective option."""
        _check_fields(self)
        if self.num_groups > 1 and self.objective not in ("miwae", "piwae"):
            raise ConfigError(f"--num-groups applies to --objective miwae or piwae, not "
                              f"{self.objective}; drop --num-groups or use --objective miwae")
        if self.elbo == "meanfield" and self.objective != "elbo":
            raise ConfigError(f"--elbo meanfield (analytic KL) applies to --objective elbo; "
                              f"{self.objective} weights sampled log-densities: drop --elbo")


@dataclass
class OptimizationConfig:
    """How the objective is optimized: epochs, batches, optimizer, learning rate, compilation."""

    epochs: int | None = option(None, "number of passes over the training data",
                                parse=parse_int, check=_whole(0, MAX_EPOCHS))
    batch_size: int | None = option(None, "mini-batch size", parse=parse_int, check=_whole())
    optimizer: str = option("adam", "pyro.optim Adam or ClippedAdam (default %(default)s)",
                            choices=OPTIMIZERS)
    lr: float | None = option(None, "learning rate", parse=parse_float, check=_positive())
    clip_norm: float = option(10.0, "gradient norm clip of clipped-adam (default %(default)s)",
                              parse=parse_float, check=_positive())
    lr_schedule: str = option("constant", "per-epoch learning-rate schedule (default "
                              "%(default)s)", choices=LR_SCHEDULES)
    lr_decay: float = option(0.99, "factor per epoch of --lr-schedule exponential (default "
                             "%(default)s)", parse=parse_float, check=_in_interval(
                                 0, 1, open_low=True, open_high=False, wording="be in (0, 1]",
                                 fix="e.g. 0.99"))
    jit: bool | None = option(None, "JIT-compile the ELBO, or --no-jit for Pyro's eager ELBO "
                              "(default: the faster one measured in BENCHMARKS.md: JIT, except "
                              "eager for conv nets that may meet 64x64 images, which have batch "
                              "norm)", negatable=True, check=_automatic_switch)
    compile: bool | None = option(None, "compile the whole training step (the ELBO, its "
                                  "gradient and the finiteness check) with TorchInductor; "
                                  "--no-compile never does (default: compile long CPU runs of "
                                  "pathwise Gaussian VAEs, where it pays for its compile time; "
                                  "see BENCHMARKS.md)", negatable=True, check=_automatic_switch)
    skip_nonfinite: bool = option(False, "skip steps whose loss or gradient is NaN/inf instead "
                                  "of stopping", check=_switch)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad optimization option."""
        _check_fields(self)


@dataclass
class EvaluationConfig:
    """How each epoch's model is evaluated."""

    eval_samples: int = option(1, "samples of z for the per-epoch test ELBO (default "
                               "%(default)s)", parse=parse_int, check=_whole())

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad evaluation option."""
        _check_fields(self)


@dataclass
class RunConfig:
    """Where and how the run executes: seed, device, workers, checkpoints and logging."""

    seed: int = option(0, "random seed of the run (default %(default)s)", parse=parse_int,
                       check=_seed)
    device: str = option("cpu", "cpu, cuda, cuda:N or auto (default %(default)s)",
                         check=_text("cpu, cuda, cuda:0 or auto"))
    strategy: str = option("single", "single: the library's trainer (default); ddp: PyTorch "
                           "Lightning data-parallel training (needs pyro-vae[lightning])",
                           choices=STRATEGIES)
    devices: int = option(1, "workers per node for --strategy ddp: CPU processes or GPUs",
                          parse=parse_int, check=_whole())
    num_nodes: int = option(1, "machines for --strategy ddp (launch one command per node)",
                            parse=parse_int, check=_whole())
    checkpoint_every: int | None = option(
        None, "write the checkpoint and metrics every N epochs (default: after the first epoch, "
        "then after any epoch that ends 10 s or more after the last write, and after the last: "
        "an interrupted run loses at most the last ~10 s of training)", parse=parse_int,
        check=_whole())
    threads: int | None = option(None, "torch threads of the run (default: 1 for MLP networks "
                                 "on CPU, whose small matrix products gain nothing from more "
                                 "and slow down many times on a busy machine; torch's own count "
                                 "otherwise)", parse=parse_int, check=_whole(maximum=1024))
    logger: str = option("none", "mirror the per-epoch metrics, configuration and figures to "
                         "TensorBoard (RUN/tensorboard) or MLflow (RUN/mlruns or "
                         "$MLFLOW_TRACKING_URI) (default %(default)s: the run folder only)",
                         choices=LOGGERS)
    max_minutes: float = option(60.0, "refuse a run whose first epoch projects it past this "
                                "many minutes (default %(default)s)", parse=parse_float,
                                check=_positive("e.g. --max-minutes 240"))

    def torch_threads(self, arch: str | None) -> int:
        """The thread count a run of networks ``arch`` uses: ``threads``, or by default one
        for MLPs on CPU (measured on this project's 2-core machine with two other processes
        busy: the digits run's epochs took 0.03–0.26 s with one thread, 0.4–11 s with two) and
        torch's own count otherwise."""
        if self.threads is not None:
            return self.threads
        if arch == "mlp" and not self.device.startswith("cuda"):
            return 1
        return torch.get_num_threads()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad run option."""
        _check_fields(self)
        if self.strategy == "single" and (self.devices > 1 or self.num_nodes > 1):
            raise ConfigError("--devices / --num-nodes above 1 need --strategy ddp; add it")


#: The components of a run's configuration by name, in the order of ``pyro-vae train --help``
#: (the names of a configuration file's tables: ``[optimization]``).
COMPONENTS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "objective": ObjectiveConfig,
    "optimization": OptimizationConfig,
    "evaluation": EvaluationConfig,
    "run": RunConfig,
}
#: the component each option belongs to: ``OPTION_COMPONENT["lr"] == "optimization"``
OPTION_COMPONENT: dict[str, str] = {f.name: name for name, cls in COMPONENTS.items()
                                    for f in fields(cls)}
_FIELDS: dict[str, dataclasses.Field] = {f.name: f for cls in COMPONENTS.values()
                                         for f in fields(cls)}
#: options :meth:`Config.resolved` always sets, which a validated configuration must have
_RESOLVED = ("likelihood", "arch", "latent_dim", "binarize", "estimator", "epochs", "batch_size",
             "lr")
#: options whose data-set default is for the library's own networks and likelihood: left unset
#: by ``Config.resolved(for_user_model=True)``
USER_MODEL_UNSET = frozenset(f.name for f in fields(ModelConfig)) | {"binarize"}
#: keys of old run folders' config.json that are read and dropped (``extra`` was never used)
_LEGACY_KEYS = frozenset({"extra"})


# ------------------------------------------------------------ the composition
@dataclass
class Config(RunConfig, EvaluationConfig, OptimizationConfig, ObjectiveConfig, ModelConfig,
             DataConfig):
    """Everything that defines a run: the fields of all its components (:data:`COMPONENTS`),
    flat. See ``pyro-vae train --help`` for each option's meaning.

    The bases are listed last component first so that the fields run in :data:`COMPONENTS`
    order (data first), as ``config.json`` and the ``--help`` groups do.
    """

    # -------------------------------------------------------------------- components
    def components(self) -> dict[str, Any]:
        """The component configurations by name (:data:`COMPONENTS`: ``data``, ``model``,
        ``objective``, ``optimization``, ``evaluation``, ``run``), each a new object holding
        this configuration's values of its fields: changing one leaves this configuration as it
        is (build a new one with :meth:`from_components` or :meth:`replace`)."""
        return {name: cls(**{f.name: getattr(self, f.name) for f in fields(cls)})
                for name, cls in COMPONENTS.items()}

    @classmethod
    def from_components(cls, *components: Any, **options: Any) -> Config:
        """A configuration from component configurations (at most one of each kind; the others
        take their defaults) and flat options, which win over the components' values:
        ``Config.from_components(DataConfig(dataset="moons"), OptimizationConfig(epochs=5),
        seed=1)``. Not validated: call :meth:`resolved`."""
        values: dict[str, Any] = {}
        seen: set[type] = set()
        kinds = tuple(COMPONENTS.values())
        for component in components:
            kind = type(component)
            if kind not in kinds:
                names = ", ".join(k.__name__ for k in kinds)
                raise ConfigError(f"Config.from_components takes {names}, got "
                                  f"{kind.__name__}; pass flat options as keywords")
            if kind in seen:
                raise ConfigError(f"Config.from_components got two {kind.__name__}s; pass one")
            seen.add(kind)
            values.update({f.name: getattr(component, f.name) for f in fields(kind)})
        return cls(**{**values, **options})

    # -------------------------------------------------------------------- (de)serialization
    def to_dict(self, *, grouped: bool = False) -> dict[str, Any]:
        """The options as plain JSON data: flat (``config.json``), or with ``grouped`` one dict
        per component (``{"optimization": {"lr": ...}, ...}``); :meth:`from_dict` reads both."""
        d = dataclasses.asdict(self)
        if d["hidden"] is not None:
            d["hidden"] = list(d["hidden"])
        if grouped:
            return {name: {f.name: d[f.name] for f in fields(kind)}
                    for name, kind in COMPONENTS.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, for_user_model: bool = False) -> Config:
        """A configuration from a dict (a run's ``config.json``), every value validated. Keys
        are the options, flat, or grouped per component (``{"optimization": {"lr": 1e-3}}``).
        With ``for_user_model``, validated as :meth:`resolved` does for a user's own model."""
        if not isinstance(d, dict):
            raise ConfigError(f"a configuration must be a JSON object of options, got "
                              f"{type(d).__name__}; pass a dict such as a run's config.json")
        flat = _flatten(d)
        unknown = sorted(set(flat) - set(_FIELDS), key=str)
        if unknown:
            raise ConfigError(f"unknown configuration keys {unknown}; remove them"
                              f"{_did_you_mean(unknown[0])}")
        if flat.get("hidden") is not None:
            flat["hidden"] = _hidden_tuple(flat["hidden"])
        config = cls(**flat)
        # type and range of every value, with the option's own message
        config.resolved(for_user_model=for_user_model)
        return config

    @classmethod
    def from_file(cls, path: str | os.PathLike, **options: Any) -> Config:
        """A run read from a file (``pyro-vae train --config FILE``): TOML, YAML (with PyYAML
        installed) or JSON, whose keys are the options, flat or grouped per component
        (:func:`read_config_file`); a run folder stands for its ``config.json``, which
        reproduces that run. ``options`` (flat) win over the file's values; options neither
        gives take their defaults. Validated like :meth:`from_dict`."""
        return cls.from_dict({**read_config_file(path), **options})

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    # -------------------------------------------------------------------- defaults, checks
    def resolved(self, *, for_user_model: bool = False) -> Config:
        """Fill unset options from the data set's defaults and validate every value.

        :param for_user_model: resolve for training a model of the user's own (a model function
            and guide, or any model the library did not build), which reads none of the options
            of :class:`ModelConfig`: their data-set defaults (likelihood, arch, hidden,
            latent_dim, obs_scale) are not filled in and stay ``None`` unless given, ``binarize``
            defaults to ``"none"`` (the data-set default serves the library's Bernoulli
            likelihood), and an unset likelihood is not checked against ``binarize``. The
            defaults of the other components (``lr``, ``epochs``, ``batch_size``, the
            estimator, ``jit``) are filled in as usual. Options that are given are validated
            either way.
        """
        _choice("dataset", self.dataset, DATASETS)
        defaults = DATASET_DEFAULTS[self.dataset]
        if for_user_model:
            defaults = {k: v for k, v in defaults.items() if k not in USER_MODEL_UNSET}
        changes = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        if self.binarize is None and (self.likelihood or changes.get("likelihood")) \
                != "bernoulli":
            changes["binarize"] = "none"  # the data set's binarization is for Bernoulli only
        if self.estimator is None:  # the pathwise gradient, or NVIL for a discrete code
            changes["estimator"] = "reparam" if self.latent == "gaussian" else DEFAULT_DISCRETE
        cfg = dataclasses.replace(self, **changes)
        if cfg.binarize is None:
            cfg.binarize = "none"
        if cfg.jit is None:  # the faster path, as measured in benchmarks/train_speed.py
            # flows and Cholesky layers run eagerly, as does a refinement (it differentiates
            # inside the guide)
            cfg.jit = not cfg.may_use_batch_norm() and not cfg.uses_custom_objective() \
                and cfg.guide == "diag" and not cfg.refine_steps
        cfg.validate(for_user_model=for_user_model)
        return cfg

    def may_use_batch_norm(self) -> bool:
        """True for conv nets that can meet 64×64 images (CelebA, or image folders with
        ``--image-size 64``), whose networks have batch norm. The default ``jit`` is off for
        them and on otherwise: eager took 1.09–1.38× the JIT time on the MLPs, JIT 0–10 % less
        than eager on the 28×28 conv net, about the same on the 64×64 one
        (``benchmarks/train_speed.py``, BENCHMARKS.md), and a
        traced graph updates batch norm's running statistics but not its
        ``num_batches_tracked`` counter (unused with the default momentum)."""
        return self.arch == "conv" and self.dataset in ("celeba", "file") \
            and self.image_size == 64

    def uses_custom_objective(self) -> bool:
        """True when training needs more than Pyro's ELBO with pathwise gradients: an
        importance-weighted objective (:mod:`pyro_vae.infer.importance`), groups of particles,
        or another gradient estimator (these run eagerly)."""
        return self.objective != "elbo" or self.estimator not in (None, "reparam") \
            or self.num_groups > 1 or self.latent != "gaussian" or self.model != "vae"

    def compile_unsupported(self) -> str | None:
        """Why ``--compile`` (:mod:`pyro_vae.infer.compiled`) cannot train this configuration,
        or None when it can: it compiles the objective of a Gaussian code — Pyro's ELBOs, the
        importance-weighted ones (reparam / stl / dreg), or ``TraceGraph_ELBO``'s
        score-function estimator without a baseline or with the neural one — for the
        single-process trainer, on networks without batch norm."""
        if self.latent != "gaussian" or self.model != "vae":
            return "discrete codes and --model m2 are trained with enumeration or score terms"
        if self.refine_steps:
            return "--refine-steps differentiates inside the guide, which cannot be traced"
        if self.estimator not in (None, "reparam", "stl", "dreg", "score", "score-nn"):
            return (f"--estimator {self.estimator} keeps its baseline's running average in "
                    "Python, outside the step")
        if self.strategy != "single":
            return "--strategy ddp runs Lightning's own training step"
        if self.guide in ("iaf", "planar"):
            # issue 29's measurements: IAF still compiling after 60 s, planar 54 s per epoch of
            # 128 points compiled against 6 s eager
            return (f"--guide {self.guide} unrolls its flow into a graph that compiles for minutes "
                    "and steps slower than eager")
        if self.may_use_batch_norm():
            return "conv nets for 64×64 images have batch norm, whose statistics it cannot update"
        return None

    def _require(self, who: str, needs: tuple[tuple[str, str], ...], why: str) -> None:
        """:class:`ConfigError` for the first option of ``needs`` (name, required value) that
        is set to another value: "``who`` takes --NAME VALUE (``why``)"."""
        for name, required in needs:
            value = getattr(self, name)
            if value is not None and value != required:
                raise ConfigError(f"{who} takes --{name} {required} ({why}), got --{name} "
                                  f"{value}; drop it")

    def _validate_refinement(self) -> None:
        """--refine-steps refines the library VAE's Gaussian guide
        (:class:`~pyro_vae.infer.semi_amortized.SemiAmortizedGuide`) under Pyro's ELBO, in the
        single-process trainer's eager step."""
        self._require("--refine-steps",
                      (("model", "vae"), ("latent", "gaussian"), ("guide", "diag"),
                       ("objective", "elbo"), ("estimator", "reparam"), ("strategy", "single")),
                      "it refines the diagonal Gaussian guide of --model vae under the ELBO, on "
                      "one process")
        if self.jit:
            raise ConfigError("--refine-steps differentiates inside the guide, which --jit "
                              "cannot trace; drop --jit")

    def _validate_m2(self) -> None:
        self._require("--model m2",
                      (("latent", "gaussian"), ("objective", "elbo"), ("estimator", "reparam"),
                       ("guide", "diag"), ("elbo", "trace"), ("arch", "mlp"),
                       ("strategy", "single")),
                      "its y is summed out by TraceEnum_ELBO")
        if self.conditional:
            raise ConfigError("--model m2 models the label itself; drop --conditional")

    def _validate_discrete(self) -> None:
        from pyro_vae.infer.discrete import BINARY_ONLY, DISCRETE_ESTIMATORS

        if self.estimator not in DISCRETE_ESTIMATORS:
            raise ConfigError(f"--estimator {self.estimator} needs a pathwise gradient, which a "
                              f"{self.latent} code has not; choose one of: "
                              f"{', '.join(DISCRETE_ESTIMATORS)}")
        if self.estimator in BINARY_ONLY and self.latent != "bernoulli":
            raise ConfigError(f"--estimator {self.estimator} is defined for binary codes; use "
                              "--latent bernoulli, or rloo / vimco / score-avg for a "
                              f"{self.latent} code")
        if self.estimator == "enum" and self.latent_dim is not None:
            per_unit = 2 if self.latent == "bernoulli" else self.categories
            states = per_unit ** self.latent_dim  # the code is one site: its joint support
            if states > MAX_ENUM_STATES:
                raise ConfigError(f"--estimator enum sums over all {per_unit}^{self.latent_dim} = "
                                  f"{states:.3g} values of the code per point, more than "
                                  f"{MAX_ENUM_STATES:,}; use a smaller --latent-dim or an "
                                  "unbiased estimator (disarm, rloo, vimco)")
        if self.estimator == "rloo" and self.num_particles < 2:
            raise ConfigError("--estimator rloo needs K ≥ 2 samples per point (each draw's "
                              "baseline is the others' mean); e.g. --num-particles 4")
        if self.estimator == "vimco" and self.num_particles < 2:
            raise ConfigError("--estimator vimco needs K ≥ 2 samples per point (each draw's "
                              f"baseline is built from the others), got --num-particles "
                              f"{self.num_particles}; use --num-particles 4")
        if self.estimator == "enum" and self.num_particles != 1:
            raise ConfigError("--estimator enum is exact and draws no samples; drop "
                              "--num-particles")
        for option_name, value, default in (("objective", self.objective, "elbo"),
                                            ("guide", self.guide, "diag"),
                                            ("elbo", self.elbo, "trace"),
                                            ("arch", self.arch, "mlp")):
            if value is not None and value != default:
                raise ConfigError(f"--{option_name} {value} is for Gaussian codes; a "
                                  f"{self.latent} code takes --{option_name} {default} (its "
                                  "estimator sets the objective: vimco for the "
                                  "importance-weighted bound)")

    def validate(self, *, for_user_model: bool = False) -> None:
        """Raise :class:`ConfigError` naming the first bad option and its allowed values: each
        component's own checks (:meth:`DataConfig.validate`, ...), then the options that
        :meth:`resolved` sets (with ``for_user_model``, those of :class:`ModelConfig` may stay
        unset), then the checks across components."""
        for component in self.components().values():
            component.validate()
        for name in _RESOLVED:
            if not (for_user_model and name in USER_MODEL_UNSET):
                _check_value(_FIELDS[name], getattr(self, name), required=True)
        from pyro_vae.infer.estimators import SCORE_FAMILY
        from pyro_vae.infer.importance import IW_ESTIMATORS

        if self.model == "m2":
            self._validate_m2()
        if self.latent == "gaussian":
            _choice("estimator", self.estimator, IW_ESTIMATORS + SCORE_FAMILY)
        else:
            self._validate_discrete()
        if self.estimator in SCORE_FAMILY and self.objective != "elbo":
            raise ConfigError(f"--estimator {self.estimator} trains the ELBO only; use --objective "
                              "elbo, or a pathwise estimator (reparam, stl, dreg) for "
                              f"--objective {self.objective}")
        if self.compile and self.compile_unsupported():
            raise ConfigError(f"--compile cannot train this configuration: "
                              f"{self.compile_unsupported()}; drop --compile")
        if self.refine_steps:
            self._validate_refinement()
        if self.jit and self.uses_custom_objective():
            raise ConfigError("--jit compiles Pyro's own ELBO; with --objective "
                              f"{self.objective} --estimator {self.estimator} drop --jit")
        if self.binarize != "none" and self.likelihood != "bernoulli" \
                and not (for_user_model and self.likelihood is None):
            raise ConfigError(f"--binarize {self.binarize} only applies to --likelihood "
                              f"bernoulli, not {self.likelihood}; drop --binarize")


# ------------------------------------------------------------ a run is a file
#: the file types a run is read from (:func:`read_config_file`)
CONFIG_FILE_TYPES = (".toml", ".yaml", ".yml", ".json")


def _hidden_tuple(hidden: Any) -> tuple[int, ...]:
    if not isinstance(hidden, (list, tuple)) or not all(
            isinstance(h, int) and not isinstance(h, bool) for h in hidden):
        raise ConfigError(f"configuration key 'hidden' must be a list of integers, got "
                          f"{hidden!r}; e.g. [400, 200]")
    return tuple(hidden)


def _did_you_mean(key: Any) -> str:
    match = difflib.get_close_matches(str(key), list(_FIELDS), n=1)
    return f" (did you mean {match[0]!r}, in [{OPTION_COMPONENT[match[0]]}]?)" if match else ""


def _flatten(d: dict[Any, Any], source: str | None = None) -> dict[str, Any]:
    """The options of a flat or grouped dict, flat. A component's table (a dict under its name)
    may hold only that component's options. With ``source`` (a file), keys may be spelt with
    ``-`` for ``_`` and an unknown key is an error here; without, it is the caller's."""
    def name_of(key: Any) -> Any:
        return key.replace("-", "_") if source is not None and isinstance(key, str) else key

    flat: dict[str, Any] = {}
    where: dict[str, str] = {}
    at = f"{source}: " if source is not None else ""

    def put(name: Any, value: Any, place: str) -> None:
        if name in flat:
            raise ConfigError(f"{at}option {name!r} is given twice ({where[name]} and {place}); "
                              "keep one")
        flat[name], where[name] = value, place

    for key, value in d.items():
        name = name_of(key)
        if name in _LEGACY_KEYS:
            continue
        if isinstance(value, dict):  # a component's table (never the value of an option)
            if name not in COMPONENTS:
                raise ConfigError(f"{at}unknown section {key!r}; the sections are the "
                                  f"components: {', '.join(COMPONENTS)}")
            known = [f.name for f in fields(COMPONENTS[name])]
            for sub, sub_value in value.items():
                sub_name = name_of(sub)
                if sub_name not in known:
                    raise ConfigError(f"{at}unknown key {sub!r} in [{name}]; its keys are: "
                                      f"{', '.join(known)}")
                put(sub_name, sub_value, f"in [{name}]")
            continue
        if source is not None and name not in _FIELDS:
            raise ConfigError(f"{at}unknown option {key!r}{_did_you_mean(name)}; give options "
                              "of 'pyro-vae train' (_ for -), flat or under "
                              f"{', '.join(f'[{c}]' for c in COMPONENTS)}")
        put(name, value, "at the top level")
    return flat


def _parse_text(text: str, suffix: str, path: Path) -> Any:
    def broken(kind: str, exc: Exception) -> ConfigError:
        detail = " ".join(str(exc).split())[:200]
        return ConfigError(f"{path} is not valid {kind} ({detail}); fix the file where the "
                           "parser stopped")

    if suffix == ".json":
        try:
            return json.loads(text)
        except ValueError as exc:
            raise broken("JSON", exc) from None
    if suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            try:
                import tomli as tomllib  # type: ignore[no-redef]
            except ModuleNotFoundError:
                raise ConfigError(f"reading {path} needs Python ≥ 3.11 (tomllib) or the tomli "
                                  "package: pip install tomli, or write the run as JSON") \
                    from None
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise broken("TOML", exc) from None
    try:
        import yaml
    except ModuleNotFoundError:
        raise ConfigError(f"{path} is YAML, which needs PyYAML; pip install pyyaml, or write the "
                          "run as TOML or JSON") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise broken("YAML", exc) from None


def _yaml_real(text: str) -> float | str:
    """YAML reads ``1e-3`` (no dot) as text: a real option's number, or the text (refused)."""
    try:
        return float(text)
    except ValueError:
        return text


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The options a configuration file gives, flat: ``{"lr": 0.001, ...}``.

    The file is TOML (``.toml``), YAML (``.yaml`` / ``.yml``, with PyYAML installed) or JSON
    (``.json``, e.g. a run folder's ``config.json``; a run folder stands for it). Its keys are
    options, flat (``lr = 1e-3``) or in one table per component (``[optimization]`` then
    ``lr = 1e-3``; see :data:`COMPONENTS`), spelt with ``_`` or ``-``. Each value is checked on
    its own, with the option's message prefixed by the file's path; the checks across options
    wait for the whole configuration (:meth:`Config.resolved`). In YAML, a real option's value
    may be written ``1e-3``, which YAML reads as text. Every problem — a missing or unreadable
    file, a syntax error, an unknown key, a bad value — is one :class:`ConfigError` line.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"{path} is a folder without a config.json; give a run folder or a "
                              f"{', '.join(CONFIG_FILE_TYPES)} file")
        path = path / "config.json"
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist; check the path (a .toml, .yaml or "
                          ".json file, or a run folder's config.json)")
    suffix = path.suffix.lower()
    if suffix not in CONFIG_FILE_TYPES:
        raise ConfigError(f"{path} is not a configuration file; give a .toml, .yaml / .yml or "
                          ".json file (a run folder's config.json reproduces that run)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"cannot read config file {path} ({reason}); check the path and its "
                          "permissions") from None
    d = _parse_text(text, suffix, path)
    if d is None and suffix != ".json":  # an empty YAML document
        d = {}
    if not isinstance(d, dict):
        raise ConfigError(f"{path} must hold a table of options, got {type(d).__name__}; e.g. "
                          "lr = 1e-3, or [optimization] then lr = 1e-3")
    flat = _flatten(d, str(path))
    if flat.get("hidden") is not None:
        try:
            flat["hidden"] = _hidden_tuple(flat["hidden"])
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    for name, value in flat.items():
        if suffix in (".yaml", ".yml") and isinstance(value, str) \
                and _FIELDS[name].metadata.get("parse") is parse_float:
            value = flat[name] = _yaml_real(value)
        try:
            _check_value(_FIELDS[name], value)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return flat
