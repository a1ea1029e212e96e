"""The full configuration of a run, its per-data-set defaults, and its validation.

A :class:`Config` is plain data (JSON-serializable): it is written to ``config.json`` in the run
folder and stored in every checkpoint, so a run can be resumed or a model rebuilt from it alone.
Options left ``None`` take the data set's default from :data:`DATASET_DEFAULTS` when the config is
:meth:`~Config.resolved`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any

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


@dataclass
class Config:
    """Everything that defines a run. See ``pyro-vae train --help`` for each option's meaning."""

    # data
    dataset: str = "digits"
    data: str | None = None
    data_root: str | None = None
    download: bool = False
    split_seed: int = 0
    test_fraction: float = 0.2
    image_size: int = 64
    label_column: str | None = None
    max_train: int | None = None
    max_test: int | None = None
    binarize: str | None = None
    # model
    arch: str | None = None
    hidden: tuple[int, ...] | None = None
    activation: str = "relu"
    latent_dim: int | None = None
    likelihood: str | None = None
    obs_scale: float | None = None
    allow_greyscale: bool = False
    conditional: bool = False
    guide: str = "diag"
    flow_length: int = 2
    latent: str = "gaussian"
    categories: int = 10
    model: str = "vae"
    labels: int = 100
    aux_weight: float = 0.1
    # inference
    elbo: str = "trace"
    jit: bool | None = None
    compile: bool | None = None
    num_particles: int = 1
    objective: str = "elbo"
    estimator: str | None = None
    temperature: float = 1.0
    temperature_min: float = 0.5
    temperature_decay: float = 1e-4
    num_groups: int = 1
    ciwae_beta: float = 0.5
    optimizer: str = "adam"
    lr: float | None = None
    clip_norm: float = 10.0
    lr_schedule: str = "constant"
    lr_decay: float = 0.99
    beta: float = 1.0
    kl_schedule: str = "constant"
    warmup_epochs: int = 10
    cycles: int = 4
    cycle_ramp: float = 0.5
    # loop
    epochs: int | None = None
    batch_size: int | None = None
    seed: int = 0
    device: str = "cpu"
    strategy: str = "single"
    devices: int = 1
    num_nodes: int = 1
    eval_samples: int = 1
    checkpoint_every: int = 1
    skip_nonfinite: bool = False
    logger: str = "none"
    extra: dict[str, Any] = field(default_factory=dict)

    # -------------------------------------------------------------------- (de)serialization
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["hidden"] is not None:
            d["hidden"] = list(d["hidden"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """A configuration from a dict (a run's ``config.json``), every value validated."""
        if not isinstance(d, dict):
            raise ConfigError(f"a configuration must be a JSON object of options, got "
                              f"{type(d).__name__}; pass a dict such as a run's config.json")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known, key=str)
        if unknown:
            raise ConfigError(f"unknown configuration keys {unknown}; remove them")
        d = dict(d)
        hidden = d.get("hidden")
        if hidden is not None:
            if not isinstance(hidden, (list, tuple)) or not all(
                    isinstance(h, int) and not isinstance(h, bool) for h in hidden):
                raise ConfigError(f"configuration key 'hidden' must be a list of integers, got "
                                  f"{hidden!r}; e.g. [400, 200]")
            d["hidden"] = tuple(hidden)
        config = cls(**d)
        config.resolved()  # type and range of every value, with the option's own message
        return config

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    # -------------------------------------------------------------------- defaults, checks
    def resolved(self) -> Config:
        """Fill unset options from the data set's defaults and validate every value."""
        _choice("dataset", self.dataset, DATASETS)
        changes = {k: v for k, v in DATASET_DEFAULTS[self.dataset].items()
                   if getattr(self, k) is None}
        if self.binarize is None and (self.likelihood or changes.get("likelihood")) \
                != "bernoulli":
            changes["binarize"] = "none"  # the data set's binarization is for Bernoulli only
        if self.estimator is None:  # the pathwise gradient, or NVIL for a discrete code
            changes["estimator"] = "reparam" if self.latent == "gaussian" else DEFAULT_DISCRETE
        cfg = dataclasses.replace(self, **changes)
        if cfg.binarize is None:
            cfg.binarize = "none"
        if cfg.jit is None:  # the faster path, as measured in benchmarks/train_speed.py
            cfg.jit = not cfg.may_use_batch_norm() and not cfg.uses_custom_objective() \
                and cfg.guide == "diag"  # flows and Cholesky layers run eagerly
        cfg.validate()
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
        if self.estimator not in (None, "reparam", "stl", "dreg", "score", "score-nn"):
            return (f"--estimator {self.estimator} keeps its baseline's running average in "
                    "Python, outside the step")
        if self.strategy != "single":
            return "--strategy ddp runs Lightning's own training step"
        if self.may_use_batch_norm():
            return "conv nets for 64×64 images have batch norm, whose statistics it cannot update"
        return None

    def _validate_m2(self) -> None:
        _positive_int("labels", self.labels)
        if isinstance(self.aux_weight, bool) or not isinstance(self.aux_weight, (int, float)) \
                or not 0 <= self.aux_weight < math.inf:
            raise ConfigError(f"--aux-weight must be a finite number ≥ 0, got "
                              f"{self.aux_weight!r}; e.g. 0.1 (the paper's α = 0.1·N)")
        for option, value, default in (("latent", self.latent, "gaussian"),
                                       ("objective", self.objective, "elbo"),
                                       ("estimator", self.estimator, "reparam"),
                                       ("guide", self.guide, "diag"),
                                       ("elbo", self.elbo, "trace"),
                                       ("arch", self.arch, "mlp"),
                                       ("strategy", self.strategy, "single")):
            if value != default:
                raise ConfigError(f"--model m2 takes --{option} {default} (its y is summed out "
                                  f"by TraceEnum_ELBO), got --{option} {value}; drop it")
        if self.conditional:
            raise ConfigError("--model m2 models the label itself; drop --conditional")

    def _validate_discrete(self, estimators: tuple[str, ...]) -> None:
        if self.estimator not in estimators:
            raise ConfigError(f"--estimator {self.estimator} needs a pathwise gradient, which a "
                              f"{self.latent} code has not; choose one of: "
                              f"{', '.join(estimators)}")
        _positive_int("categories", self.categories)
        if self.latent == "categorical" and self.categories < 2:
            raise ConfigError(f"--categories must be ≥ 2, got {self.categories}; e.g. 10")
        for option, value in (("temperature", self.temperature),
                              ("temperature-min", self.temperature_min)):
            _positive_float(option, value, "e.g. 0.5")
        if isinstance(self.temperature_decay, bool) \
                or not isinstance(self.temperature_decay, (int, float)) \
                or not 0 <= self.temperature_decay < math.inf:
            raise ConfigError(f"--temperature-decay must be a finite number ≥ 0, got "
                              f"{self.temperature_decay!r}; e.g. 1e-4 (0 keeps τ constant)")
        from pyro_vae.infer.discrete import BINARY_ONLY

        if self.estimator in BINARY_ONLY and self.latent != "bernoulli":
            raise ConfigError(f"--estimator {self.estimator} is defined for binary codes; use "
                              "--latent bernoulli, or rloo / vimco / score-avg for a "
                              f"{self.latent} code")
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
        for option, value, default in (("objective", self.objective, "elbo"),
                                       ("guide", self.guide, "diag"),
                                       ("elbo", self.elbo, "trace"),
                                       ("arch", self.arch, "mlp")):
            if value != default:
                raise ConfigError(f"--{option} {value} is for Gaussian codes; a {self.latent} "
                                  f"code takes --{option} {default} (its estimator sets the "
                                  "objective: vimco for the importance-weighted bound)")

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad option and its allowed values."""
        _choice("dataset", self.dataset, DATASETS)
        _choice("likelihood", self.likelihood, LIKELIHOODS)
        from pyro_vae.infer.elbo import ELBOS  # the registry sits above the configuration

        _choice("elbo", self.elbo, ELBOS)
        from pyro_vae.infer.estimators import SCORE_FAMILY
        from pyro_vae.infer.importance import IW_ESTIMATORS, OBJECTIVES

        _choice("objective", self.objective, OBJECTIVES)
        _choice("guide", self.guide, GUIDE_FAMILIES)
        _positive_int("flow-length", self.flow_length, allow_zero=True)
        from pyro_vae.infer.discrete import DISCRETE_ESTIMATORS
        from pyro_vae.models.discrete_vae import LATENTS

        _choice("latent", self.latent, LATENTS)
        _choice("model", self.model, MODELS)
        if self.model == "m2":
            self._validate_m2()
        _positive_int("num-groups", self.num_groups)
        if self.latent == "gaussian":
            _choice("estimator", self.estimator, IW_ESTIMATORS + SCORE_FAMILY)
        else:
            self._validate_discrete(DISCRETE_ESTIMATORS)
        if self.estimator in SCORE_FAMILY and self.objective != "elbo":
            raise ConfigError(f"--estimator {self.estimator} trains the ELBO only; use --objective "
                              "elbo, or a pathwise estimator (reparam, stl, dreg) for "
                              f"--objective {self.objective}")
        if self.num_groups > 1 and self.objective not in ("miwae", "piwae"):
            raise ConfigError(f"--num-groups applies to --objective miwae or piwae, not "
                              f"{self.objective}; drop --num-groups or use --objective miwae")
        if isinstance(self.ciwae_beta, bool) or not isinstance(self.ciwae_beta, (int, float)) \
                or not 0 <= self.ciwae_beta <= 1:
            raise ConfigError(f"--ciwae-beta must lie in [0, 1], got {self.ciwae_beta!r}; e.g. 0.5")
        if self.elbo == "meanfield" and self.objective != "elbo":
            raise ConfigError(f"--elbo meanfield (analytic KL) applies to --objective elbo; "
                              f"{self.objective} weights sampled log-densities: drop --elbo")
        if self.compile is not None and not isinstance(self.compile, bool):
            raise ConfigError(f"compile must be True, False or None (automatic), got "
                              f"{self.compile!r}")
        if self.compile and self.compile_unsupported():
            raise ConfigError(f"--compile cannot train this configuration: "
                              f"{self.compile_unsupported()}; drop --compile")
        if self.jit and self.uses_custom_objective():
            raise ConfigError("--jit compiles Pyro's own ELBO; with --objective "
                              f"{self.objective} --estimator {self.estimator} drop --jit")
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("logger", self.logger, ("none", "tensorboard", "mlflow"))
        _choice("strategy", self.strategy, STRATEGIES)
        _positive_int("devices", self.devices)
        _positive_int("num-nodes", self.num_nodes)
        if self.strategy == "single" and (self.devices > 1 or self.num_nodes > 1):
            raise ConfigError("--devices / --num-nodes above 1 need --strategy ddp; add it")
        _choice("lr-schedule", self.lr_schedule, LR_SCHEDULES)
        _choice("kl-schedule", self.kl_schedule, KL_SCHEDULES)
        _choice("arch", self.arch, ARCHS)
        _choice("binarize", self.binarize, BINARIZE)
        _choice("activation", self.activation, tuple(ACTIVATIONS))
        _positive_int("epochs", self.epochs, allow_zero=True)
        _positive_int("batch-size", self.batch_size)
        _positive_int("latent-dim", self.latent_dim)
        _positive_int("num-particles", self.num_particles)
        _positive_int("eval-samples", self.eval_samples)
        _positive_int("checkpoint-every", self.checkpoint_every)
        _positive_int("cycles", self.cycles)
        _positive_int("image-size", self.image_size)
        if self.image_size > MAX_IMAGE_SIZE:
            raise ConfigError(f"--image-size must be at most {MAX_IMAGE_SIZE}, got "
                              f"{self.image_size}; images are resized to this square size")
        _bounded_int("latent-dim", self.latent_dim, MAX_WIDTH)
        _bounded_int("epochs", self.epochs, MAX_EPOCHS)
        _bounded_int("flow-length", self.flow_length, MAX_FLOW_LENGTH)
        for h in self.hidden or ():
            _bounded_int("hidden", h, MAX_WIDTH)
        for option, value in (("seed", self.seed), ("split-seed", self.split_seed)):
            if not isinstance(value, int) or isinstance(value, bool) \
                    or not 0 <= value <= MAX_SEED:
                raise ConfigError(f"--{option} must be an integer in 0..{MAX_SEED} (what torch, "
                                  f"NumPy and scikit-learn all accept), got {value!r}; e.g. 0")
        if isinstance(self.test_fraction, bool) or not isinstance(self.test_fraction,
                                                                  (int, float)) \
                or not 0 < self.test_fraction < 1:
            raise ConfigError(f"--test-fraction must lie strictly between 0 and 1, got "
                              f"{self.test_fraction!r}; e.g. 0.2 keeps a fifth for testing")
        for option, value in (("max-train", self.max_train), ("max-test", self.max_test)):
            if value is not None:
                _positive_int(option, value)
        if self.label_column is not None and not isinstance(self.label_column, str):
            raise ConfigError(f"--label-column must be a column name or index as text, got "
                              f"{self.label_column!r}; e.g. \"label\" or \"0\"")
        if self.label_column is not None and self.dataset != "file":
            raise ConfigError(f"--label-column applies to --dataset file, not {self.dataset}; "
                              "drop it")
        _positive_int("warmup-epochs", self.warmup_epochs, allow_zero=True)
        for h in self.hidden or ():
            if not isinstance(h, int) or h < 1:
                raise ConfigError(f"--hidden sizes must be positive integers, got {h!r}; "
                                  "e.g. --hidden 400,200")
        _positive_float("lr", self.lr)
        if isinstance(self.beta, bool) or not isinstance(self.beta, (int, float)) \
                or not 0 <= self.beta < math.inf:
            raise ConfigError(f"--beta must be a finite number ≥ 0, got {self.beta!r}; it is the "
                              "KL weight (1 for the ELBO, 0 drops the KL term)")
        _positive_float("clip-norm", self.clip_norm)
        if self.obs_scale is not None:
            _positive_float("obs-scale", self.obs_scale)
        if not 0 < self.lr_decay <= 1:
            raise ConfigError(f"--lr-decay must be in (0, 1], got {self.lr_decay}; e.g. 0.99")
        if not 0 < self.cycle_ramp <= 1:
            raise ConfigError(f"--cycle-ramp must be in (0, 1], got {self.cycle_ramp}; e.g. 0.5")
        if self.binarize != "none" and self.likelihood != "bernoulli":
            raise ConfigError(f"--binarize {self.binarize} only applies to --likelihood "
                              f"bernoulli, not {self.likelihood}; drop --binarize")


def _choice(option: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"unknown --{option} {value!r}; choose one of: {', '.join(allowed)}")


#: the largest seed every generator the library seeds accepts (NumPy's and scikit-learn's: 2³²−1)
MAX_SEED = 2**32 - 1
#: the largest --latent-dim and --hidden width (memory is checked as well)
MAX_WIDTH = 2**20
#: the largest --image-size
MAX_IMAGE_SIZE = 4096
#: the most --epochs (a run that would outlive its machine is a typo)
MAX_EPOCHS = 1_000_000
#: the most --flow-length steps
MAX_FLOW_LENGTH = 1000


def _bounded_int(option: str, value: Any, maximum: int) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and value > maximum:
        raise ConfigError(f"--{option} must be at most {maximum:,}, got {value:,}; "
                          "give a smaller value")


def _positive_int(option: str, value: Any, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"--{option} must be an integer ≥ {low}, got {value!r}; give a whole "
                          f"number such as {max(low, 1)}")


#: an example of a sensible value per real option, for the errors' "; fix" half
EXAMPLES = {"lr": "1e-3", "clip-norm": "10", "obs-scale": "0.1"}


def _positive_float(option: str, value: Any, hint: str = "") -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) and value > 0
    if not ok:
        hint = hint or f"e.g. --{option} {EXAMPLES.get(option, '1')}"
        raise ConfigError(f"--{option} must be a positive finite number, got {value!r}; {hint}")


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
