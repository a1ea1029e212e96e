"""Stochastic variational inference for a :class:`~pyro_vae.vae.VAE`, epoch by epoch.

The trainer keeps the data as tensors on the chosen device and cuts each mini-batch by
indexing a random permutation; the batch's indices go to the ``"data"`` plate so that each
step's loss estimates ``-ELBO`` of the whole training set (scale N/B). Every step it evaluates
the KL schedule β(t) and passes it to model and guide.

One step is what ``pyro.infer.SVI.step`` does, driven more cheaply:

1. ``loss = elbo.differentiable_loss(model, guide, x, y, indices, β)``: Pyro's own ELBO
   (``Trace_ELBO``, ``TraceMeanField_ELBO`` or their JIT versions) on the unchanged ``model``
   and ``guide``, returning the surrogate whose gradient is the ELBO gradient estimate;
2. ``loss.backward()``;
3. a finiteness check of the loss and of every gradient entry: a NaN or infinite value
   never reaches the parameters (the run stops with :class:`TrainingDivergedError` naming the
   epoch and step or, with ``skip_nonfinite``, the step is skipped and counted);
4. one ``torch.optim`` optimizer step over every trainable tensor (network weights and the
   unconstrained ``pyro.param`` values) at once.

With ``config.compile`` (``--compile``; by default for CPU runs of at least
:data:`COMPILE_MIN_STEPS` steps) every full mini-batch after the first runs steps 1–4 as one
TorchInductor program instead (:mod:`pyro_vae.infer.compiled`): the same ELBO on the same
``model`` and ``guide``, traced with its gradient, the finiteness flag and Adam's update. The
trainer falls back to the steps above, for good, if the step cannot be traced or compiled.

Distribution and trace validation (``pyro.enable_validation``) runs on the first step of a
trainer, which checks every site's arguments and support once; later steps run with it off,
since the same code meets tensors of the same kind. Training ``vae.model`` / ``vae.guide``
with ``pyro.infer.SVI`` directly gives the same updates, only slower
(``benchmarks/train_speed.py`` measures both against hand-written PyTorch).
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import pyro
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
from pyro_vae.errors import CheckpointError, ConfigError, TrainingDivergedError
from pyro_vae.infer.annealing import KLSchedule
from pyro_vae.infer.compiled import AdamUpdate, CompiledStep, NotCompilableError
from pyro_vae.infer.discrete import DiscreteObjective, TemperatureSchedule
from pyro_vae.infer.elbo import make_elbo
from pyro_vae.infer.estimators import SCORE_FAMILY, mean_integrand, svi_objective
from pyro_vae.infer.evaluation import evaluate_elbo
from pyro_vae.infer.importance import ImportanceWeightedELBO
from pyro_vae.infer.optim import build_optimizer
from pyro_vae.infer.problem import ProtocolProgram, describe
from pyro_vae.models.builder import build_vae
from pyro_vae.models.discrete_vae import DiscreteVAE
from pyro_vae.models.vae import VAE, evaluating
from pyro_vae.resources import FLOAT_BYTES, check_memory, per_sample_elements
from pyro_vae.sites import OBS_SCALE_PARAM

#: Fewest training steps (epochs × steps per epoch) for which ``compile=None`` compiles the step
#: on CPU: compiling takes 8–15 s on a 2-core machine (Inductor's on-disk cache empty or warm)
#: and saves 1–2.5 ms per step on the benchmark cases (BENCHMARKS.md), so shorter runs finish
#: sooner on the JIT path.
COMPILE_MIN_STEPS = 8000


class NonFiniteStepError(Exception):
    """A step's loss or gradient was NaN or infinite; ``args[0]`` is the loss."""


def all_finite(loss: float, grads: list[torch.Tensor]) -> bool:
    """True when ``loss`` and every gradient entry are finite.

    The gradients are scanned in one pass by the kernel ``torch.amp.GradScaler`` uses to skip
    steps with inf/NaN gradients (``torch._amp_foreach_non_finite_check_and_unscale_``, with a
    scale of exactly 1, which leaves them unchanged): about 10 µs for a small network, against
    60 µs for a total norm. Gradients on several devices or of mixed dtypes, which that kernel
    rejects, are checked through their total 2-norm (finite exactly when every entry is, short
    of overflow past 3e38).
    """
    if not math.isfinite(loss):
        return False
    if not grads:
        return True
    device = grads[0].device
    found_inf = torch.zeros(1, device=device)
    try:
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf,
                                                         torch.ones(1, device=device))
    except RuntimeError:
        return bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))
    return not found_inf.item()


def trainable_params(model: Callable[..., Any], guide: Callable[..., Any], x: torch.Tensor,
                     y: torch.Tensor | None = None, owners: tuple[nn.Module, ...] = ()
                     ) -> dict[str, torch.Tensor]:
    """Every tensor SVI on ``model`` / ``guide`` trains, by param-store name, in a fixed
    (sorted) order.

    Runs guide and model once on the few points ``x`` (labels ``y`` for a conditional model),
    so that ``pyro.module`` registers the networks and each ``pyro.param`` is created; the
    random state is restored after, the ``owners`` modules are in eval mode (batch-norm
    statistics untouched) and no graph is built. For constrained params the tensor is the
    unconstrained one, as ``SVI`` optimizes it.
    """
    idx = torch.arange(x.shape[0], device=x.device)
    devices = [x.device] if x.device.type == "cuda" else []
    with evaluating(*owners), torch.random.fork_rng(devices=devices), \
            poutine.trace(param_only=True) as capture:
        guide(x, y, idx)
        model(x, y, idx)
    found = {name: site["value"].unconstrained() for name, site in capture.trace.nodes.items()}
    return dict(sorted(found.items()))


def epoch_metrics(vae: Any, data: DataSet, x_train: torch.Tensor,
                  y_train: torch.Tensor | None, num_samples: int,
                  guide: Callable[..., Any] | None = None) -> dict[str, float]:
    """``train_elbo`` / ``train_recon`` / ``train_kl`` on ``x_train`` (the subset of
    :func:`~pyro_vae.data.train_eval_subset`), ``test_*`` on the test set, each with its
    ``*_se``."""
    out: dict[str, float] = {}
    conditional = getattr(vae, "conditional", False)
    y_test = data.y_test if conditional else None
    y_train = y_train if conditional else None
    for split, x, y in (("train", x_train, y_train), ("test", data.x_test, y_test)):
        for key, est in evaluate_elbo(vae, x, y, num_samples=num_samples, guide=guide).items():
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
        self.model, self.guide = ProtocolProgram.of(model), ProtocolProgram.of(guide)
        self.conditional = conditional
        self.nets = nn.ModuleDict(modules or {})


class Trainer:
    """Trains a model / guide pair on ``data`` with mini-batch SVI.

    :param vae: a :class:`~pyro_vae.models.vae.VAE`, or any object with ``.model`` and
        ``.guide`` that follows the protocol (module docstring), or a model function (then
        ``guide`` is required).
    :param data: the :class:`~pyro_vae.data.DataSet` (already prepared:
        :func:`~pyro_vae.data.prepare_data`).
    :param config: the training options (``lr``, ``batch_size``, ``epochs``, ``elbo``,
        ``num_particles``, KL schedule, ``binarize``, ...); options left unset take the defaults
        of ``config.dataset`` (default ``Config(dataset="file")``). Its model options are not
        used: the model is the one given, and a VAE's likelihood replaces ``config.likelihood``
        (so binarization follows the model). JIT is off for a model that is not a
        :class:`~pyro_vae.models.vae.VAE` unless ``config.jit`` is ``True``. The data goes
        through :func:`~pyro_vae.data.preprocess_data` (binarization of the test set, support
        checks), which leaves prepared data unchanged.
    :param guide: a guide to train instead of ``vae.guide`` (same protocol).
    :param device: where the data and the model go.

    :attr:`history` holds one dict per completed epoch with ``train_loss`` (the optimized
    objective per point, β-weighted), ``train_elbo`` / ``train_recon`` / ``train_kl`` (on up to
    :data:`~pyro_vae.data.TRAIN_EVAL_POINTS` training points, β = 1), ``test_elbo`` /
    ``test_recon`` / ``test_kl`` with standard errors, ``beta``, ``lr``, ``seconds`` and
    ``skipped_steps``. :meth:`from_config` builds the model from a configuration, as the CLI does.
    """

    def __init__(self, vae: Any, data: DataSet, config: Config | None = None, *,
                 guide: Callable[..., Any] | None = None,
                 device: torch.device | str = "cpu") -> None:
        if isinstance(vae, Config):
            raise ConfigError("Trainer takes the model first: Trainer(vae, data, config); to "
                              "build the model from a configuration use "
                              "Trainer.from_config(config, data)")
        if not hasattr(vae, "model"):
            if not callable(vae) or guide is None:
                raise ConfigError("Trainer needs a VAE (or an object with .model and .guide), "
                                  "or a model function together with guide=...; pass one of those")
            vae = ModelGuide(vae, guide)
        if not isinstance(data, DataSet):
            raise ConfigError(f"Trainer takes its data as a pyro_vae.DataSet, got "
                              f"{type(data).__name__}; build one with pyro_vae.load_dataset(...) "
                              "or DataSet(name, x_train, x_test, y_train, y_test, kind)")
        if config is not None and not isinstance(config, Config):
            raise ConfigError(f"Trainer's config must be a pyro_vae.Config, got "
                              f"{type(config).__name__}; use Config(...) or Config.from_dict(d)")
        given = config if config is not None else Config(dataset="file")
        if given.jit is None and not isinstance(vae, VAE):
            given = given.replace(jit=False)
        if isinstance(vae, DiscreteVAE) and given.latent != vae.latent:
            given = given.replace(latent=vae.latent, categories=vae.categories or
                                  given.categories)  # the model's code decides the estimators
        if isinstance(vae, VAE) and vae.likelihood.name in LIKELIHOODS:
            # the model's own likelihood decides binarization and the data checks
            given = given.replace(likelihood=vae.likelihood.name)
        self.config = config = given.resolved()
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
        self.vae = vae.to(self.device) if isinstance(vae, nn.Module) else vae
        self.user_guide = guide
        self.guide_fn = guide if guide is not None else vae.guide
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
        self.elbo, self.guide_fn = self._objective()
        self.model, self.guide = self._programs()
        self.params = self._discover_params()
        self.optimizer, self.scheduler = build_optimizer(config, self.params.values())
        self._validated = False
        self._compiled: set[int] = set()  # batch sizes the JIT ELBO is compiled for
        self.steps_per_epoch = math.ceil(n / config.batch_size)
        self._full_batch = min(config.batch_size, n)
        #: the whole-step program (:class:`~pyro_vae.infer.compiled.CompiledStep`) once built
        self.compiled_step: CompiledStep | None = None
        #: why compiling was given up, if it was (training went on on the uncompiled path)
        self.compile_failure: str | None = None
        self._compile_wanted = self._wants_compiled()
        self.kl_schedule = KLSchedule.for_run(config, self.steps_per_epoch)
        self.epoch = 0
        #: the epoch of the last checkpoint written (by ``train_run``) or loaded, if any
        self.checkpoint_epoch: int | None = None
        self.global_step = 0
        self.history: list[dict[str, Any]] = []
        self._plate_sizes: dict[int, int] = {}  # batch size → the data plate's full size
        self._x_eval_train, self._y_eval_train = train_eval_subset(config, self.data)

    @classmethod
    def from_config(cls, config: Config, data: DataSet,
                    device: torch.device | str = "cpu") -> Trainer:
        """The trainer of the VAE that ``config`` describes (what ``pyro-vae train`` runs)."""
        config = config.resolved()
        pyro.clear_param_store()
        if config.model == "m2":
            from pyro_vae.infer.semi_supervised import semi_supervised_trainer

            return semi_supervised_trainer(config, data, device)
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

    # ------------------------------------------------------------------ programs for SVI
    def _objective(self) -> tuple[Any, Callable[..., Any]]:
        """The loss and the guide that training uses: Pyro's ELBO (JIT-compiled by default);
        an importance-weighted objective with a pathwise estimator
        (:class:`~pyro_vae.infer.importance.ImportanceWeightedELBO`); or, for a
        score-function estimator, ``TraceGraph_ELBO`` with the guide's ``"z"`` made
        non-reparameterized (:func:`~pyro_vae.infer.estimators.svi_objective`)."""
        cfg = self.config
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
        return make_elbo(cfg.elbo, cfg.num_particles, cfg.jit), self.guide_fn

    def _programs(self):
        """Model and guide as SVI sees them. With JIT, every positional argument must be a
        tensor and the batch size is a keyword, so each batch size compiles once."""
        vae_model, vae_guide = self.model_fn, self.guide_fn
        if not self.config.jit:
            return vae_model, vae_guide
        if self.conditional:
            def model(x, y, indices, beta, batch_size=None):
                return vae_model(x, y, indices, beta)

            def guide(x, y, indices, beta, batch_size=None):
                return vae_guide(x, y, indices, beta)
        else:
            def model(x, indices, beta, batch_size=None):
                return vae_model(x, None, indices, beta)

            def guide(x, indices, beta, batch_size=None):
                return vae_guide(x, None, indices, beta)
        return model, guide

    def _discover_params(self) -> dict[str, torch.Tensor]:
        y = self.data.y_train[:2] if self.conditional else None
        return trainable_params(self.vae.model, self.guide_fn, self.data.x_train[:2], y,
                                self.owners)

    def _loss(self, args: tuple, kwargs: dict) -> torch.Tensor:
        if not self.config.jit:
            return self.elbo.differentiable_loss(self.model, self.guide, *args, **kwargs)
        # Run the traced graph op by op, so that autograd differentiates it as in eager mode:
        # on CPU that is faster than the graph executor's own symbolic autodiff.
        with torch.jit.optimized_execution(False):
            return self.elbo.differentiable_loss(self.model, self.guide, *args, **kwargs)

    def _compile(self, args: tuple, kwargs: dict) -> None:
        """Compile the JIT ELBO for this batch size ahead of the real step, with the random
        state and the networks' buffers (batch-norm statistics) restored afterwards: compiling
        runs model and guide several times, and a resumed run, which compiles again, must draw
        the same numbers as an uninterrupted one."""
        buffers = [b for m in self.owners for b in m.buffers()]
        saved = [b.clone() for b in buffers]
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            self._loss(args, kwargs)
        with torch.no_grad():
            for b, v in zip(buffers, saved, strict=True):
                b.copy_(v)
        self._compiled.add(kwargs["batch_size"])

    def _step(self, args: tuple, kwargs: dict) -> float:
        """One optimization step on a mini-batch; returns the loss (-ELBO estimate, scaled to
        the full data set). Raises :class:`NonFiniteStepError` without touching parameters."""
        checking = contextlib.nullcontext() if not self._validated \
            else pyro.validation_enabled(False)
        with checking:
            try:
                if self.config.jit and kwargs["batch_size"] not in self._compiled:
                    self._compile(args, kwargs)
                loss = self._loss(args, kwargs)
            except ValueError as exc:
                # Distribution validation rejects NaN/inf parameters (e.g. logits of a decoder
                # whose weights diverged, or an overflowing encoder scale): a divergence.
                if "invalid values" not in str(exc):
                    raise
                raise NonFiniteStepError(float("nan")) from None
        self._validated = True
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        value = float(loss.detach())
        if not all_finite(value, [p.grad for p in self.params.values() if p.grad is not None]):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteStepError(value)
        self.optimizer.step()
        return value

    # ------------------------------------------------------------------ compiled whole step
    def _wants_compiled(self) -> bool:
        """``config.compile``, or for ``None``: compile a long enough CPU run
        (:data:`COMPILE_MIN_STEPS`) of the library's own VAE with its diagonal guide."""
        cfg = self.config
        if cfg.compile is not None:
            return cfg.compile
        total = cfg.epochs * self.steps_per_epoch
        return cfg.compile_unsupported() is None and self.device.type == "cpu" \
            and type(self.vae) is VAE and self.user_guide is None and cfg.guide == "diag" \
            and total >= COMPILE_MIN_STEPS

    @property
    def step_path(self) -> str:
        """How full mini-batches are stepped now: ``"compiled"``
        (:mod:`~pyro_vae.infer.compiled`), ``"jit"`` (Pyro's JIT ELBO) or ``"eager"``."""
        if self._compile_wanted:
            return "compiled"
        return "jit" if self.config.jit else "eager"

    def _build_compiled_step(self) -> CompiledStep:
        """The objective the uncompiled path uses — Pyro's eager ``Trace_ELBO`` /
        ``TraceMeanField_ELBO`` (the graph JIT would trace) or the importance-weighted ELBO — on
        the same model and guide, as one compiled step."""
        cfg = self.config
        elbo = self.elbo if cfg.uses_custom_objective() \
            else make_elbo(cfg.elbo, cfg.num_particles, jit=False)
        model, guide = self.model_fn, self.guide_fn
        if self.conditional:
            def loss_fn(x, y, indices, beta):
                return elbo.differentiable_loss(model, guide, x, y, indices, beta)
        else:
            def loss_fn(x, indices, beta):
                return elbo.differentiable_loss(model, guide, x, None, indices, beta)
        params = list(self.params.values())
        adam = AdamUpdate.of(self.optimizer)
        if adam is not None and adam.state(self.optimizer, params) is None:
            adam = None  # a param without Adam state yet: the optimizer steps it
        return CompiledStep(loss_fn, params, modules=self.owners, adam=adam)

    def _compiled_step(self, x, y, idx, beta: float) -> float:
        """One optimization step through the compiled program; like :meth:`_step`. If the step
        cannot be compiled, training goes on on the uncompiled path (with a warning when
        ``--compile`` was asked for)."""
        b = torch.tensor(beta, device=self.device)
        args = (x, y, idx, b) if self.conditional else (x, idx, b)
        params = list(self.params.values())
        try:
            if self.compiled_step is None:
                self.compiled_step = self._build_compiled_step()
            adam = self.compiled_step.adam
            state = adam.state(self.optimizer, params) if adam is not None else ()
            loss, finite, grads = self.compiled_step(params, *args, state=state)
        except NotCompilableError as exc:
            self._compile_wanted, self.compile_failure = False, str(exc)
            if self.config.compile:
                warnings.warn(f"--compile: {exc}; training goes on without it", stacklevel=2)
            return self._step(*self._step_args(x, y, idx, beta))
        value = float(loss)
        if not bool(finite):  # nothing was updated
            raise NonFiniteStepError(value)
        if adam is not None:  # the update ran inside the program
            return value
        unused = self.compiled_step.unused_params(args)
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            p.grad = None if i in unused else g  # as autograd leaves it: Adam skips it
        self.optimizer.step()
        return value

    def _step_args(self, x, y, idx, beta: float) -> tuple[tuple, dict]:
        if not self.config.jit:
            return (x, y, idx, beta), {}
        b = torch.tensor(beta, device=self.device)
        args = (x, y, idx, b) if self.conditional else (x, idx, b)
        return args, {"batch_size": int(x.shape[0])}

    # ------------------------------------------------------------------ the loop
    def train_epoch(self) -> dict[str, Any]:
        """One pass over the training data in random mini-batches; returns the epoch's metrics."""
        cfg = self.config
        x_all, y_all = self.data.x_train, self.data.y_train
        n = x_all.shape[0]
        start = time.perf_counter()
        perm = torch.randperm(n).to(self.device)
        total, points, skipped = 0.0, 0, 0
        for m in self.owners:
            m.train()
        batches = list(perm.split(cfg.batch_size))
        if cfg.estimator == "score-avg" and len(batches) > 1 \
                and batches[-1].shape[0] < cfg.batch_size:
            # Pyro's decaying-average baseline keeps one average per batch slot, of the
            # batch's shape: a smaller last batch cannot use it, so it is left out (its points
            # fall into full batches in other epochs)
            batches.pop()
        trusted = self.vae.trusted_inputs if isinstance(self.vae, VAE) \
            else contextlib.nullcontext
        for step, idx in enumerate(batches):
            x = x_all[idx]
            if cfg.binarize == "dynamic":
                x = binarize(x)
            y = None if y_all is None else y_all[idx]
            beta = self.kl_schedule(self.global_step)
            if self.discrete is not None and self.discrete.temperature is not None:
                self.discrete.set_temperature(self.temperature_schedule(self.global_step))
            y_step = y if self.conditional else None
            try:
                with trusted():
                    if self._compile_wanted and self._validated \
                            and x.shape[0] == self._full_batch:
                        loss = self._compiled_step(x, y_step, idx, beta)
                    else:
                        loss = self._step(*self._step_args(x, y_step, idx, beta))
            except NonFiniteStepError as bad:
                if not cfg.skip_nonfinite:
                    kept = (f"the last checkpoint (epoch {self.checkpoint_epoch}) is kept"
                            if self.checkpoint_epoch else "no checkpoint had been written")
                    raise TrainingDivergedError(
                        f"the loss or a gradient became {bad.args[0]} at epoch {self.epoch + 1}, "
                        f"step {step + 1}; {kept}: lower --lr, use --optimizer clipped-adam, or "
                        "pass --skip-nonfinite"
                    ) from None
                skipped += 1
                loss = float("nan")
            else:
                # the loss estimates -(objective summed over the data plate's full size, N for
                # a subsampled plate, the batch for a model whose plate is the batch): per
                # point, loss / full size
                total += loss / self._plate_size(x, y_step, idx) * x.shape[0]
                points += x.shape[0]
            self.global_step += 1
        metrics = self._end_epoch(total, points, skipped, time.perf_counter() - start)
        metrics["step_path"] = self.step_path
        if self.discrete is not None and self.discrete.temperature is not None:
            metrics["temperature"] = self.discrete.temperature
        metrics.update(self.evaluate())
        scale = self.vae.obs_scale() if isinstance(self.vae, VAE) else None
        if scale is not None:
            metrics["obs_scale"] = float(scale.detach())
        elif OBS_SCALE_PARAM in pyro.get_param_store():
            metrics["obs_scale"] = float(pyro.param(OBS_SCALE_PARAM).detach())
        self.history.append(metrics)
        return metrics

    def _plate_size(self, x: torch.Tensor, y: torch.Tensor | None, idx: torch.Tensor) -> int:
        """The full size of the model's data plate for a batch of this size (read off a trace
        once per batch size: N for the library's subsampled plate, B for a plate over the
        batch as it is)."""
        if x.shape[0] not in self._plate_sizes:
            plate = describe(self.vae.model, None, x, y, idx).plate
            self._plate_sizes[x.shape[0]] = plate.full_size
        return self._plate_sizes[x.shape[0]]

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
        """ELBO, reconstruction and KL per point on the test set and a training subset.

        :raises TrainingDivergedError: when the networks' outputs are no longer finite (torch's
            distributions refuse NaN parameters), which ``--skip-nonfinite`` cannot skip."""
        try:
            return epoch_metrics(self.vae, self.data, self._x_eval_train, self._y_eval_train,
                                 self.config.eval_samples, guide=self.user_guide)
        except ValueError as exc:
            if "constraint" not in str(exc) and "invalid values" not in str(exc):
                raise
            kept = (f"the last checkpoint (epoch {self.checkpoint_epoch}) is kept"
                    if self.checkpoint_epoch else "no checkpoint had been written")
            raise TrainingDivergedError(
                f"the model's outputs became NaN or infinite by epoch {self.epoch} (found while "
                f"evaluating it); {kept}: lower --lr or use --optimizer clipped-adam") from None

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The checkpoint payload (:mod:`pyro_vae.checkpoint`) of the model, guide, optimizer,
        random state and history."""
        built_in = isinstance(self.vae, VAE) and self.user_guide is None
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
        self.optimizer, self.scheduler = build_optimizer(self.config, self.params.values())
        self.optimizer.load_state_dict(saved["state"])
        if self.scheduler is not None and saved["scheduler"] is not None:
            self.scheduler.load_state_dict(saved["scheduler"])
        set_rng_state(state["rng"])
        self.epoch = int(state["epoch"])
        self.checkpoint_epoch = self.epoch
        self.global_step = int(state["global_step"])
        self.history = list(state["history"])
