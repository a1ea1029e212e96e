"""Stochastic variational inference, epoch by epoch: the library's one training loop.

:class:`Trainer` trains a ``model`` / ``guide`` pair with any Pyro ELBO — Pyro's own, the
library's gradient estimators (:mod:`~pyro_vae.infer.estimators`, :mod:`~pyro_vae.infer.binary`,
:mod:`~pyro_vae.infer.discrete`), the importance-weighted objectives
(:mod:`~pyro_vae.infer.importance`), M2's semi-supervised objective — and one torch optimizer
over every trainable tensor (from a Pyro optimizer such as ``pyro.optim.Adam({"lr": 1e-3})`` or
from the configuration). It owns epochs, batching (:mod:`~pyro_vae.infer.batches`), the KL
weight β(t) and the relaxation temperature per step, non-finite steps, learning-rate schedules,
evaluation, checkpoints (``state_dict``) and :attr:`~Trainer.history`. Semi-supervised
training and the Lightning/DDP module (:mod:`~pyro_vae.infer.distributed`) run this loop's
objective and step; nothing is written twice.

One step (:mod:`~pyro_vae.infer.steps`) is what ``pyro.infer.SVI.step`` does, with a
finiteness check before the update; it runs eagerly, through Pyro's JIT ELBO (``config.jit``,
the default for the library's VAE) or as one compiled TorchInductor program (``config.compile``:
by default for CPU runs of the library's VAE of at least :data:`COMPILE_MIN_STEPS` steps). The
traced strategies check before every step that no Python value they froze has changed (the
model's attributes, closure cells, globals) and re-trace when one has.

Each step's mini-batch indices go to the model's data plate, so its loss estimates −ELBO of the
whole training set (scale N/B); ``train_loss`` in the history is that loss per point (the
model's own plate size read off a trace).

Parameters belong to modules: a second instance of a model that registers its networks with
plain ``pyro.module`` under the same names finds the first instance's tensors in Pyro's param
store, and ``SVI`` would step those while the forward pass uses its own
(:func:`~pyro_vae.nn.module.shadowed_module_params`). The trainer makes each module's own
tensors the store's before training (with a one-line warning), so the model that is trained is
the one that runs.
"""

from __future__ import annotations

import contextlib
import time
import types
import warnings
from collections.abc import Callable
from typing import Any

import pyro
import pyro.infer
import pyro.optim
import torch
from pyro import poutine
from torch import nn

from pyro_vae.checkpoint import (
    checkpoint_payload,
    data_description,
    guide_module,
    restore_model,
    set_rng_state,
)
from pyro_vae.config import Config
from pyro_vae.data.datasets import DataSet
from pyro_vae.data.preparation import binarize, preprocess_data, train_eval_subset
from pyro_vae.distributions.likelihoods import LIKELIHOODS
from pyro_vae.errors import (
    CheckpointError,
    ConfigError,
    ModelError,
    PyroVAEError,
    TrainingDivergedError,
)
from pyro_vae.infer.annealing import KLSchedule
from pyro_vae.infer.batches import Batch, MiniBatches
from pyro_vae.infer.discrete import DiscreteObjective, TemperatureSchedule
from pyro_vae.infer.elbo import make_elbo
from pyro_vae.infer.estimators import SCORE_FAMILY, mean_integrand, svi_objective
from pyro_vae.infer.evaluation import evaluate_elbo
from pyro_vae.infer.importance import ImportanceWeightedELBO
from pyro_vae.infer.optim import build_optimizer
from pyro_vae.infer.problem import PROGRAM_ERRORS, ProtocolProgram, describe, program_failure
from pyro_vae.infer.semi_supervised import LabelledBatches, SemiSupervisedELBO
from pyro_vae.infer.steps import CompiledWholeStep, EagerStep, JitStep, NonFiniteStepError
from pyro_vae.models.builder import build_guide, build_vae
from pyro_vae.models.discrete_vae import DiscreteVAE
from pyro_vae.models.m2 import SemiSupervisedVAE
from pyro_vae.models.vae import VAE, evaluating
from pyro_vae.nn.module import adopt_module_params, shadowed_module_params
from pyro_vae.resources import FLOAT_BYTES, check_memory, per_sample_elements
from pyro_vae.sites import OBS_SCALE_PARAM

#: Fewest training steps (epochs × steps per epoch) for which ``compile=None`` compiles the step
#: on CPU: compiling takes 7–15 s on a 2-core machine with Inductor's on-disk cache empty (3–4 s
#: from it) and saves 1–2.5 ms per step on the benchmark cases (BENCHMARKS.md), so shorter runs
#: finish sooner on the JIT path. The rule assumes the empty cache: the path a command takes (and
#: so its numbers, to float rounding) never depends on what earlier runs left on the machine.
COMPILE_MIN_STEPS = 8000


def trainable_params(model: Callable[..., Any], guide: Callable[..., Any], x: torch.Tensor,
                     y: torch.Tensor | None = None, owners: tuple[nn.Module, ...] = ()
                     ) -> dict[str, torch.Tensor]:
    """Every tensor SVI on ``model`` / ``guide`` trains, by param-store name, in a fixed
    (sorted) order.

    Runs guide and model once on the few points ``x`` (labels ``y`` for a conditional model),
    so that ``pyro.module`` registers the networks and each ``pyro.param`` is created; the
    random state is restored after, the ``owners`` modules are in eval mode (batch-norm
    statistics untouched) and no graph is built. For constrained params the tensor is the
    unconstrained one, as ``SVI`` optimizes it. A module registered with ``pyro.module`` whose
    name the store held with another instance's tensors gets its own tensors adopted by the
    store (module docstring).
    """
    idx = torch.arange(x.shape[0], device=x.device)
    devices = [x.device] if x.device.type == "cuda" else []
    with evaluating(*owners), torch.random.fork_rng(devices=devices), \
            poutine.trace(param_only=True) as capture:
        guide(x, y, idx)
        model(x, y, idx)
    shadowed = shadowed_module_params(capture.trace)
    if shadowed:
        modules = sorted({name.split("$$$")[0] for name in shadowed})
        warnings.warn(f"pyro.module {', '.join(map(repr, modules))}: Pyro's param store held "
                      "another instance's tensors under these names, which SVI would have "
                      "trained instead of this model's; this model's own tensors now are the "
                      "store's (register with pyro_vae.register_module, or call "
                      "pyro.clear_param_store() before building a second instance, to say so)",
                      stacklevel=3)
        adopt_module_params(shadowed)
        return trainable_params(model, guide, x, y, owners)
    found = {name: site["value"].unconstrained() for name, site in capture.trace.nodes.items()}
    return dict(sorted(found.items()))


def epoch_metrics(vae: Any, data: DataSet, x_train: torch.Tensor,
                  y_train: torch.Tensor | None, num_samples: int,
                  guide: Callable[..., Any] | None = None,
                  problems: dict[str, Any] | None = None) -> dict[str, float]:
    """``train_elbo`` / ``train_recon`` / ``train_kl`` on ``x_train`` (the subset of
    :func:`~pyro_vae.data.train_eval_subset`), ``test_*`` on the test set, each with its
    ``*_se``; ``problems`` keeps the model's description across epochs
    (:func:`~pyro_vae.infer.evaluation.evaluate_elbo`)."""
    out: dict[str, float] = {}
    conditional = getattr(vae, "conditional", False)
    y_test = data.y_test if conditional else None
    y_train = y_train if conditional else None
    for split, x, y in (("train", x_train, y_train), ("test", data.x_test, y_test)):
        # each split in as few chunks as memory allows (evaluate_elbo caps the chunk): one run
        # of model and guide per chunk is the evaluation's overhead
        for key, est in evaluate_elbo(vae, x, y, batch_size=max(1, x.shape[0]),
                                      num_samples=num_samples, guide=guide,
                                      problems=problems, key=split).items():
            out[f"{split}_{key}"] = est.mean
            out[f"{split}_{key}_se"] = est.stderr
    return out


class ModelGuide(nn.Module):
    """A user's ``model`` and ``guide`` functions as the object the trainer and the evaluation
    tools take (``.model``, ``.guide``, ``.conditional``). Modules the functions use should be
    passed as ``modules`` so that train/eval mode, devices and checkpoints reach them.

    The functions keep the signature they have — ``fn(x)`` as in Pyro's examples, ``fn(x, y)``,
    or the library's ``fn(x, y, indices, beta)`` — and are called through
    :class:`~pyro_vae.infer.problem.ProtocolProgram`, which passes what each takes.
    """

    def __init__(self, model: Callable[..., Any], guide: Callable[..., Any],
                 conditional: bool = False, modules: dict[str, nn.Module] | None = None):
        super().__init__()
        self.model, self.guide = ProtocolProgram.pair(model, guide)
        self.conditional = conditional
        self.nets = nn.ModuleDict(modules or {})


def _is_loss(obj: Any) -> bool:
    """A Pyro ELBO, or an object that computes a loss as one does."""
    return isinstance(obj, pyro.infer.ELBO) or (
        not isinstance(obj, (types.FunctionType, types.MethodType, nn.Module))
        and (hasattr(obj, "differentiable_loss") or hasattr(obj, "loss_and_grads")))


def _sort_arguments(model: Any, args: tuple, given: dict[str, Any]) -> dict[str, Any]:
    """The trainer's arguments by kind, from positional ones in any order after the model
    (a DataSet, a Config, a Pyro ELBO, a Pyro optimizer, a guide) and keywords."""
    out = dict(given)
    for arg in args:
        if isinstance(arg, DataSet):
            kind = "data"
        elif isinstance(arg, Config):
            kind = "config"
        elif isinstance(arg, pyro.optim.PyroOptim):
            kind = "optim"
        elif _is_loss(arg):
            kind = "loss"
        elif callable(arg):
            kind = "guide"
        else:
            raise ConfigError(f"Trainer got an argument of type {type(arg).__name__} it does not "
                              "take; pass Trainer(model, guide, loss, optim, data, config) "
                              "(a guide function, a Pyro ELBO, a pyro.optim optimizer, a "
                              "pyro_vae.DataSet, a pyro_vae.Config)")
        if out.get(kind) is not None:
            raise ConfigError(f"Trainer got two {kind} arguments; pass one")
        out[kind] = arg
    return out


def torch_optimizer(optim: pyro.optim.PyroOptim, params: list[torch.Tensor]
                    ) -> torch.optim.Optimizer:
    """One torch optimizer over every trainable tensor, of the class and options a Pyro
    optimizer (``pyro.optim.Adam({"lr": 1e-3})``) would give each parameter: the same updates
    as ``SVI`` with it, one call per step instead of one per parameter."""
    if isinstance(optim, pyro.optim.PyroLRScheduler):
        raise ConfigError("the trainer schedules the learning rate itself: pass a plain Pyro "
                          "optimizer and Config(lr_schedule=...) instead of a scheduler")
    options = optim.pt_optim_args
    if callable(options):
        raise ConfigError("the trainer steps every parameter with one optimizer: give the Pyro "
                          "optimizer one dict of options, not a function of the parameter")
    return optim.pt_optim_constructor(params, **options)


class Trainer:
    """Trains a model / guide pair on ``data`` with mini-batch SVI (module docstring).

    Forms::

        Trainer(model, guide, loss, optim, data, config)  # any order after the model
        Trainer(vae, data, config)                          # an object with .model / .guide
        Trainer.from_config(config, data)                   # the library's VAE, as the CLI

    :param model: a model function (then ``guide`` is required), a
        :class:`~pyro_vae.models.vae.VAE`, or any object with ``.model`` and ``.guide``. Model
        and guide keep their own signatures: ``fn(x)``, ``fn(x, y)`` or the library's
        ``fn(x, y, indices, beta)`` (:class:`~pyro_vae.infer.problem.ProtocolProgram`).
    :param guide: a guide to train instead of the object's ``.guide``.
    :param loss: any Pyro ELBO instance; default: the objective and estimator of ``config``.
    :param optim: a Pyro optimizer (:func:`torch_optimizer`); default: ``config``'s
        ``optimizer`` / ``lr`` / ``clip_norm``.
    :param data: the :class:`~pyro_vae.data.DataSet` (prepared:
        :func:`~pyro_vae.data.prepare_data`).
    :param config: epochs, batch size, KL schedule, JIT / compile, evaluation, ...; unset
        options take the defaults of ``config.dataset`` (default ``Config(dataset="file")``).
        A user's model gets no model defaults (likelihood, binarization) it does not read; a
        VAE's likelihood replaces ``config.likelihood``.
    :param device: where the data and the model go.

    :attr:`history` holds one dict per completed epoch with ``train_loss`` (the optimized
    objective per point, β-weighted), ``train_elbo`` / ``train_recon`` / ``train_kl`` (on up to
    :data:`~pyro_vae.data.TRAIN_EVAL_POINTS` training points, β = 1), ``test_elbo`` /
    ``test_recon`` / ``test_kl`` with standard errors, ``beta``, ``lr``, ``seconds``,
    ``skipped_steps`` and ``step_path``.
    """

    #: TorchInductor, or ``"aten"`` (the traced graph run op by op: for tests)
    compile_backend = "inductor"

    def __init__(self, model: Any, *args: Any, guide: Callable[..., Any] | None = None,
                 loss: Any = None, optim: pyro.optim.PyroOptim | None = None,
                 data: DataSet | None = None, config: Config | None = None,
                 device: torch.device | str = "cpu") -> None:
        if isinstance(model, Config):
            raise ConfigError("Trainer takes the model first: Trainer(vae, data, config); to "
                              "build the model from a configuration use "
                              "Trainer.from_config(config, data)")
        given = _sort_arguments(model, args, dict(guide=guide, loss=loss, optim=optim,
                                                  data=data, config=config))
        guide, loss, optim, data, config = (given[k] for k in
                                            ("guide", "loss", "optim", "data", "config"))
        vae = model
        if not hasattr(vae, "model"):
            if not callable(vae) or guide is None:
                raise ConfigError("Trainer needs a VAE (or an object with .model and .guide), "
                                  "or a model function together with a guide; pass one of those")
            vae = ModelGuide(vae, guide)
            guide = None
        elif not isinstance(vae, (VAE, DiscreteVAE, ModelGuide)):
            # a user's object with .model / .guide of their own signatures
            vae = ModelGuide(vae.model, vae.guide, bool(getattr(vae, "conditional", False)),
                             {"model": vae} if isinstance(vae, nn.Module) else None)
        if not isinstance(data, DataSet):
            raise ConfigError(f"Trainer takes its data as a pyro_vae.DataSet, got "
                              f"{type(data).__name__}; build one with pyro_vae.load_dataset(...) "
                              "or DataSet(name, x_train, x_test, y_train, y_test, kind)")
        if config is not None and not isinstance(config, Config):
            raise ConfigError(f"Trainer's config must be a pyro_vae.Config, got "
                              f"{type(config).__name__}; use Config(...) or Config.from_dict(d)")
        self.config = config = self._resolve(vae, config, loss, guide)
        self.device = torch.device(device)
        self.data = preprocess_data(data, config).to(self.device)
        n = data.x_train.shape[0]
        if isinstance(vae, VAE):
            if vae.num_data is None:
                vae.num_data = n
            elif vae.num_data != n:
                raise ConfigError(f"the model was built for num_data={vae.num_data} points but "
                                  f"the training data has {n}; build it with num_data={n}")
            vae.check_shape(data.x_train[:1])
            if vae.conditional and data.y_train is None:
                raise ConfigError("the model is conditional but the data has no labels; "
                                  "give labelled data or an unconditional model")
        self.batches = self._batch_plan(vae, data)
        self.vae = vae.to(self.device) if isinstance(vae, nn.Module) else vae
        self.batches.to(self.data)
        self.user_guide, self.user_loss, self.user_optim = guide, loss, optim
        #: the guide the run is evaluated with beside the model's own: the user's, or the
        #: semi-amortized one of ``--refine-steps`` (None: ``vae.guide``)
        self.eval_guide = guide if guide is not None else self._refined_guide(vae, config)
        self.guide_fn = self.eval_guide if self.eval_guide is not None else vae.guide
        owner = guide_module(guide)
        if owner is not None:
            owner.to(self.device)
        self.owners = tuple(m for m in (self.vae, owner) if isinstance(m, nn.Module))
        self.conditional = bool(getattr(vae, "conditional", False))
        self.model_fn = vae.model
        #: the discrete code's objective (:class:`~pyro_vae.infer.discrete.DiscreteObjective`)
        self.discrete: DiscreteObjective | None = None
        self.temperature_schedule = TemperatureSchedule(
            config.temperature, config.temperature_min, config.temperature_decay)
        if loss is not None:
            self.elbo = loss
        else:
            self.elbo, self.guide_fn = self._objective()
        self.steps_per_epoch = self.batches.steps_per_epoch
        self._full_batch = min(config.batch_size, n)
        self._compile_wanted = self._wants_compiled()
        self.params = self._discover_params()
        self._build_step()
        self.kl_schedule = KLSchedule.for_run(config, self.steps_per_epoch)
        self.epoch = 0
        #: the epoch of the last checkpoint written (by ``train_run``) or loaded, if any
        self.checkpoint_epoch: int | None = None
        self.global_step = 0
        self.history: list[dict[str, Any]] = []
        self._plate_sizes: dict[int, int] = {}  # batch size → the data plate's full size
        self._problems: dict[str, Any] = {}  # the evaluation's model descriptions, per split
        self._x_eval_train, self._y_eval_train = train_eval_subset(config, self.data)

    @staticmethod
    def _refined_guide(vae: Any, config: Config) -> Callable[..., Any] | None:
        if not config.refine_steps:
            return None
        if type(vae) is not VAE:
            raise ConfigError("--refine-steps refines the library VAE's guide; for a model of "
                              "your own pass guide=SemiAmortizedGuide(model, guide, steps=K)")
        return build_guide(config, vae)

    @staticmethod
    def _resolve(vae: Any, config: Config | None, loss: Any, guide: Any) -> Config:
        """The configuration resolved for this model: the library's VAE brings its likelihood
        and code; a user's model takes no model-component defaults it does not read. JIT is
        the default only for the library's own model, guide and objective (a user's program
        may not trace: a semi-amortized guide differentiates inside itself)."""
        given = config if config is not None else Config(dataset="file")
        library = isinstance(vae, VAE)
        if given.jit is None and (not library or loss is not None or guide is not None):
            given = given.replace(jit=False)
        if isinstance(vae, SemiSupervisedVAE):
            given = given.replace(jit=False, model="m2")
        if isinstance(vae, DiscreteVAE) and given.latent != vae.latent:
            given = given.replace(latent=vae.latent, categories=vae.categories or
                                  given.categories)  # the model's code decides the estimators
        if library and vae.likelihood.name in LIKELIHOODS:
            # the model's own likelihood decides binarization and the data checks
            given = given.replace(likelihood=vae.likelihood.name)
        return given.resolved(for_user_model=not library)

    def _batch_plan(self, vae: Any, data: DataSet) -> Any:
        cfg = self.config
        dynamic = cfg.binarize == "dynamic"
        if isinstance(vae, SemiSupervisedVAE):
            return LabelledBatches(vae, data, cfg.labels, cfg.split_seed, cfg.batch_size, dynamic)
        return MiniBatches(data, cfg.batch_size, bool(getattr(vae, "conditional", False)),
                           dynamic, drop_last=cfg.estimator == "score-avg")

    @classmethod
    def from_config(cls, config: Config, data: DataSet,
                    device: torch.device | str = "cpu") -> Trainer:
        """The trainer of the VAE that ``config`` describes (what ``pyro-vae train`` runs)."""
        config = config.resolved()
        pyro.clear_param_store()
        vae = build_vae(config, data.event_shape, num_data=data.x_train.shape[0],
                        num_classes=data.num_classes)
        draws = min(config.batch_size, data.x_train.shape[0]) * config.num_particles \
            * config.num_groups
        # activations forward and backward, twice the decoder's (the encoder mirrors it)
        check_memory(f"one training step ({draws:,} draws of z: --batch-size × "
                     "--num-particles)", draws * per_sample_elements(vae) * FLOAT_BYTES * 6,
                     "lower --batch-size or --num-particles")
        check_memory(f"--eval-samples {config.eval_samples} (per test point)",
                     config.eval_samples * per_sample_elements(vae) * FLOAT_BYTES * 3,
                     "lower --eval-samples")
        return cls(vae, data, config, device=device)

    # ------------------------------------------------------------------ objective and step
    def _objective(self) -> tuple[Any, Callable[..., Any]]:
        """The loss and the guide that ``config`` trains: Pyro's ELBO (JIT-compiled by
        default); an importance-weighted objective with a pathwise estimator
        (:class:`~pyro_vae.infer.importance.ImportanceWeightedELBO`); a score-function
        estimator (:func:`~pyro_vae.infer.estimators.svi_objective`); a discrete code's
        estimator (:class:`~pyro_vae.infer.discrete.DiscreteObjective`); or M2's
        semi-supervised objective."""
        cfg = self.config
        if isinstance(self.vae, SemiSupervisedVAE):
            return SemiSupervisedELBO(self.vae), self.guide_fn
        if cfg.estimator in SCORE_FAMILY or cfg.latent != "gaussian":
            kl = "analytic" if cfg.elbo == "meanfield" else "mc"
            offset = 0.0
            if cfg.estimator == "score-nn" and isinstance(self.vae, VAE) \
                    and self.user_guide is None:
                # TraceGraph's costs carry the plate's N/B: start b_ψ(x) near N/B · E_q[f]
                x, n = self.data.x_train[:cfg.batch_size], self.data.x_train.shape[0]
                x = binarize(x) if cfg.binarize == "dynamic" else x
                y = self.data.y_train[:cfg.batch_size] if self.conditional else None
                with evaluating(self.vae):
                    offset = mean_integrand(self.vae, x, y, kl) * n / x.shape[0]
            if cfg.latent != "gaussian":
                self.discrete = DiscreteObjective(
                    self.vae, cfg.estimator, cfg.num_particles, self.temperature_schedule(0),
                    baseline_offset=offset, guide=self.user_guide)
                self.model_fn = self.discrete.model
                return self.discrete.elbo, self.discrete.guide
            guide, elbo = svi_objective(self.vae, cfg.estimator, kl, cfg.num_particles,
                                        baseline_offset=offset, guide=self.user_guide)
            return elbo, guide
        if cfg.uses_custom_objective():
            return ImportanceWeightedELBO(cfg.objective, cfg.num_particles, cfg.num_groups,
                                          cfg.estimator, cfg.ciwae_beta), self.guide_fn
        return make_elbo(cfg.elbo, cfg.num_particles, jit=False), self.guide_fn

    def _discover_params(self) -> dict[str, torch.Tensor]:
        # a full batch: a guide that sizes its parameters from its first call (an autoguide over
        # a data plate that is not subsampled) sees the batch it will be trained on
        b = self._full_batch
        y = self.data.y_train[:b] if self.conditional else None
        x = self.data.x_train[:b]
        if self.config.binarize == "dynamic":
            # in the model's support, for a guide that scores it (semi-amortized refinement);
            # by threshold, which leaves the random stream of training as it was
            x = (x > 0.5).to(x.dtype)
        try:
            params = trainable_params(self.model_fn, self.guide_fn, x, y, self.owners)
        except PyroVAEError:
            raise
        except PROGRAM_ERRORS as exc:
            raise program_failure(exc, x, "a training batch") from exc
        if not params:
            raise ModelError("the model and guide have no parameters to train (no pyro.param, "
                             "no pyro.module of a network with parameters); register them, e.g. "
                             "pyro.module('decoder', decoder) inside the model")
        return params

    def _build_optimizer(self) -> None:
        params = list(self.params.values())
        if self.user_optim is not None:
            self.optimizer, self.scheduler = torch_optimizer(self.user_optim, params), None
        else:
            self.optimizer, self.scheduler = build_optimizer(self.config, params)

    def _build_step(self) -> None:
        """The optimizer over :attr:`params` and the step strategy (:mod:`~pyro_vae.infer.steps`):
        eager, JIT (``config.jit``) or compiled whole with the other as its fallback."""
        self._build_optimizer()
        cfg, params = self.config, list(self.params.values())
        model, guide = self.model_fn, self.guide_fn
        if cfg.jit:
            def fresh_jit_elbo() -> Any:
                return make_elbo(cfg.elbo, cfg.num_particles, jit=True)

            base: EagerStep | JitStep = JitStep(fresh_jit_elbo, model, guide, params,
                                                self.optimizer, self.owners)
        else:
            base = EagerStep(self.elbo, model, guide, params, self.optimizer)
        #: the step strategy every mini-batch goes through
        self.step: Any = base
        if self._compile_wanted:
            self.step = CompiledWholeStep(self.elbo, model, guide, params, self.optimizer,
                                          base, self._full_batch, self.owners,
                                          warn=bool(cfg.compile), backend=self.compile_backend)

    def loss(self, *args: Any) -> torch.Tensor:
        """The differentiable loss of one mini-batch (a :class:`~pyro_vae.infer.batches.Batch`'s
        ``args`` and β) — the trained objective, what the distributed module backpropagates."""
        base = self.step.fallback if isinstance(self.step, CompiledWholeStep) else self.step
        return base.loss(*args)

    def _wants_compiled(self) -> bool:
        """``config.compile``, or for ``None``: compile a long enough CPU run
        (:data:`COMPILE_MIN_STEPS`) of the library's own VAE with its diagonal guide."""
        cfg = self.config
        if cfg.compile is not None:
            return cfg.compile
        total = cfg.epochs * self.steps_per_epoch
        return cfg.compile_unsupported() is None and self.device.type == "cpu" \
            and type(self.vae) is VAE and self.user_guide is None and self.user_loss is None \
            and cfg.guide == "diag" and total >= COMPILE_MIN_STEPS

    @property
    def step_path(self) -> str:
        """How full mini-batches are stepped now: ``"compiled"``, ``"jit"`` or ``"eager"``."""
        step = self.step
        while step.failure if isinstance(step, (CompiledWholeStep, JitStep)) else False:
            step = step.fallback
        return step.name

    @property
    def compile_failure(self) -> str | None:
        """Why the compiled step was given up, if it was (training went on without it)."""
        return self.step.failure if isinstance(self.step, CompiledWholeStep) else None

    # ------------------------------------------------------------------ the loop
    def train_epoch(self) -> dict[str, Any]:
        """One pass over the training data in random mini-batches; returns the epoch's metrics."""
        cfg = self.config
        start = time.perf_counter()
        total, points, skipped = 0.0, 0, 0
        for m in self.owners:
            m.train()
        if isinstance(self.step, (JitStep, CompiledWholeStep)):
            self.step.check()  # a Python value the traced step froze changed since: re-trace
        for step, batch in enumerate(self.batches.epoch()):
            beta = self.schedule(self.global_step)
            try:
                with self._trusted():
                    loss = self.step(*batch.args, beta)
            except NonFiniteStepError as bad:
                if not cfg.skip_nonfinite:
                    raise self.diverged(bad.args[0], step + 1) from None
                skipped += 1
            else:
                total += loss / self.full_size(batch) * batch.points
                points += batch.points
            self.global_step += 1
        metrics = self._end_epoch(total, points, skipped, time.perf_counter() - start)
        metrics["step_path"] = self.step_path
        if self.discrete is not None and self.discrete.temperature is not None:
            metrics["temperature"] = self.discrete.temperature
        metrics.update(self.evaluate())
        self.history.append(metrics)
        return metrics

    def _trusted(self) -> contextlib.AbstractContextManager[Any]:
        """The library VAE's :meth:`~pyro_vae.models.vae.VAE.trusted_inputs` (its per-call value
        checks of x, indices and β skipped: the trainer's data was validated once), for the
        steps and the per-epoch evaluation; nothing for a user's model."""
        return self.vae.trusted_inputs() if isinstance(self.vae, VAE) \
            else contextlib.nullcontext()

    def schedule(self, global_step: int, kl_schedule: KLSchedule | None = None) -> float:
        """The per-step schedules at optimization step ``global_step``: sets the relaxation
        temperature of a discrete code's objective and returns the KL weight β (from
        ``kl_schedule``, default the trainer's own)."""
        if self.discrete is not None and self.discrete.temperature is not None:
            self.discrete.set_temperature(self.temperature_schedule(global_step))
        return (kl_schedule or self.kl_schedule)(global_step)

    def diverged(self, value: float, step: int) -> TrainingDivergedError:
        """The error of a non-finite step (the loss ``value``) at ``step`` of this epoch."""
        kept = (f"the last checkpoint (epoch {self.checkpoint_epoch}) is kept"
                if self.checkpoint_epoch else "no checkpoint had been written")
        return TrainingDivergedError(
            f"the loss or a gradient became {value} at epoch {self.epoch + 1}, step {step}; "
            f"{kept}: lower --lr, use --optimizer clipped-adam, or pass --skip-nonfinite")

    def full_size(self, batch: Batch) -> int:
        """The full size of the model's data plate for this batch (read off a trace once per
        batch size: N for a subsampled plate, B for a plate over the batch as it is)."""
        if batch.full_size is not None:
            return batch.full_size
        x, y, idx = batch.args
        if x.shape[0] not in self._plate_sizes:
            plate = describe(self.model_fn, None, x, y, idx).plate
            self._plate_sizes[x.shape[0]] = plate.full_size
        return self._plate_sizes[x.shape[0]]

    def use_data(self, data: DataSet) -> None:
        """Train and evaluate on ``data`` (the same data set, moved: a distributed worker's
        copy on its device)."""
        self.data = data
        self.batches.to(data)
        self._x_eval_train, self._y_eval_train = train_eval_subset(self.config, data)

    def _end_epoch(self, total: float, points: int, skipped: int, seconds: float
                   ) -> dict[str, Any]:
        """Step the LR schedule, count the epoch, and its training metrics: ``total`` is the
        sum over steps of loss / N · B (the mean loss per point once divided by ``points``)."""
        if self.scheduler is not None:
            self.scheduler.step()
        self.epoch += 1
        return {"epoch": self.epoch, "train_loss": total / points if points else float("nan"),
                "beta": self.kl_schedule(self.global_step - 1), "lr": self.current_lr(),
                "seconds": seconds, "skipped_steps": skipped}

    def fit(self, epochs: int | None = None) -> list[dict[str, Any]]:
        """Train until ``epochs`` (default ``config.epochs``) epochs are done; returns history."""
        target = self.config.epochs if epochs is None else epochs
        while self.epoch < target:
            self.train_epoch()
        return self.history

    def evaluate(self) -> dict[str, float]:
        """ELBO, reconstruction and KL per point on the test set and a training subset, the
        batch plan's own metrics (M2's accuracies) and a learned observation scale.

        :raises TrainingDivergedError: when the networks' outputs are no longer finite (torch's
            distributions refuse NaN parameters), which ``--skip-nonfinite`` cannot skip."""
        try:
            with self._trusted():
                metrics = epoch_metrics(self.vae, self.data, self._x_eval_train,
                                        self._y_eval_train, self.config.eval_samples,
                                        guide=self.eval_guide, problems=self._problems)
        except ValueError as exc:
            if "constraint" not in str(exc) and "invalid values" not in str(exc):
                raise
            kept = (f"the last checkpoint (epoch {self.checkpoint_epoch}) is kept"
                    if self.checkpoint_epoch else "no checkpoint had been written")
            raise TrainingDivergedError(
                f"the model's outputs became NaN or infinite by epoch {self.epoch} (found while "
                f"evaluating it); {kept}: lower --lr or use --optimizer clipped-adam") from None
        metrics.update(self.batches.metrics())
        scale = self.vae.obs_scale() if isinstance(self.vae, VAE) else None
        if scale is not None:
            metrics["obs_scale"] = float(scale.detach())
        elif OBS_SCALE_PARAM in pyro.get_param_store():
            metrics["obs_scale"] = float(pyro.param(OBS_SCALE_PARAM).detach())
        return metrics

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The checkpoint payload (:mod:`pyro_vae.checkpoint`) of the model, guide, optimizer,
        random state and history."""
        built_in = isinstance(self.vae, VAE) and self.user_guide is None \
            and self.user_loss is None
        return checkpoint_payload(
            self.vae, config=self.config if built_in else None, guide=self.user_guide,
            data=data_description(self.vae, self.data.x_train.shape[0], self.data.num_classes),
            epoch=self.epoch, global_step=self.global_step, optimizer=self.optimizer,
            trained=list(self.params), scheduler=self.scheduler, history=self.history)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the model, params, optimizer, RNG and history from a checkpoint, in place."""
        restore_model(self.vae, state, self.user_guide)
        self.params = self._discover_params()
        saved = state["optimizer"]
        if saved is None or saved["params"] != list(self.params):
            raise CheckpointError(
                f"the checkpoint's optimizer trains {None if saved is None else saved['params']},"
                f" this model {list(self.params)}: it was written for another configuration; "
                "use the same options, or train afresh"
            )
        self._build_step()
        self.optimizer.load_state_dict(saved["state"])
        if self.scheduler is not None and saved["scheduler"] is not None:
            self.scheduler.load_state_dict(saved["scheduler"])
        set_rng_state(state["rng"])
        self.epoch = int(state["epoch"])
        self.checkpoint_epoch = self.epoch
        self.global_step = int(state["global_step"])
        self.history = list(state["history"])
