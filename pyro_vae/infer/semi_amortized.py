"""Semi-amortized inference (SA-VAE, Kim et al. 2018): an amortized guide whose output is refined
per data point by K steps of stochastic variational inference, in training and at test time.

**The refined guide.** The amortized guide q_φ gives each local latent site of point n a
Normal; its parameters, unconstrained, are the point's initial variational parameters
λ_0(x_n) = (μ, log σ) of every local site (the encoder's output, a function of φ).
:class:`SemiAmortizedGuide` takes K gradient-ascent steps on the point's ELBO of the *model*
under the mean-field Normal q_λ over all its local sites (SGD with momentum γ and step α, as in
Kim et al.'s Algorithm 1)::

    ELBO(λ; θ, x_n) = E_{q_λ}[log p_θ(x_n | z)] + β · (E_{q_λ}[log p_θ(z)] + H[q_λ])

    v_{k+1} = γ v_k + ∇_λ ELBO(λ_k; θ, x_n),    λ_{k+1} = λ_k + α v_{k+1},    v_0 = 0

with the expectation estimated by
``num_samples`` fresh reparameterized draws z = μ + σ ε per step and the entropy H[q_λ] in
closed form; log p_θ(x_n, z) is the model's own trace, replayed with z (the per-point tools'
unscaled densities: no N/B and β only as written above; β is the KL weight the model and guide
are called with, 1 by default). The points of a mini-batch are refined together: their ELBOs
are independent, so the gradient of their sum gives each point its own gradient. The guide
then samples every site from q_{λ_K}, inside the amortized guide's own plates, scale (N/B, β)
and mask, so that Pyro's ``Trace_ELBO`` and the library's evaluation score it as any guide.

**Training: what trains φ (the encoder) and θ (the decoder).** Write L(λ, θ) for the ELBO of
a batch (scaled to the data set as Pyro scales it). The outer ELBO that SVI maximizes is
L(λ_K, θ), estimated at draws from q_{λ_K}; the two variants of Kim et al. differ in how φ is
trained:

* ``differentiable=True`` (SA-VAE). λ_K is a differentiable function of λ_0(φ) and θ: the K
  steps are unrolled with ``torch.autograd.grad(..., create_graph=True)``. The gradients are the
  total derivatives of the refined ELBO::

      ∇_φ = (∂λ_0/∂φ)ᵀ (∂λ_K/∂λ_0)ᵀ ∂L/∂λ_K
      ∇_θ = ∂L/∂θ (at λ_K fixed) + (∂λ_K/∂θ)ᵀ ∂L/∂λ_K

  where each factor ∂λ_{k+1}/∂λ_k = I + α ∇²_λ ELBO (plus the momentum terms) brings a
  Hessian-vector product per step; autograd evaluates them exactly (Kim et al. use finite
  differences). The encoder learns an initialization that K steps of SVI turn into a good
  posterior, not a posterior itself. The graph of all K steps is kept until the backward pass:
  memory grows with K.

* ``differentiable=False`` (the stop-gradient variant, "VAE + SVI" in Kim et al.; Hjelm et al.
  2016, Krishnan et al. 2018). λ_K is detached; θ is trained by the ELBO at the refined
  parameters, ∇_θ = ∂L(λ_K, θ)/∂θ (λ_K held fixed), which is the generative model's gradient
  at a better posterior approximation than the encoder's. The refined sample carries no
  gradient to φ, so the encoder needs an objective of its own, chosen by
  ``encoder_objective``:

  - ``"elbo"`` (default): the encoder's own ELBO, ∇_φ = (∂λ_0/∂φ)ᵀ ∇_λ L(λ_0, θ). The gradient
    ∇_λ L(λ_0, θ) is exactly the first refinement step's, so it costs nothing extra; it does
    not reach θ (θ learns from the refined ELBO only).
  - ``"kl"``: regress the encoder onto the refinement, ∇_φ of KL(q_{λ_K} ‖ q_{λ_0(φ)}) (λ_K
    fixed; Kim et al.'s "VAE + SVI + KL").

  Both enter the loss through one ``pyro.factor`` site of the guide,
  ``"_semi_amortized_encoder"`` (``has_rsample=True``, Pyro's way for a guide to add a
  reparameterized term to the ELBO), whose *value is 0* and whose gradient is the encoder
  term's: ``Trace_ELBO``'s loss stays −L(λ_K, θ), and ``SVI(model, guide, optim,
  Trace_ELBO())`` trains both variants with no ELBO of the library's. Only a ``pyro.factor``
  lets the guide itself carry the term: an ELBO subclass would tie the guide to one loss, and
  the refined sample alone cannot give the encoder a gradient that its value does not depend
  on. The site is left out where no gradient is taken (evaluation) and is observed, so the
  per-point tools, which score the unobserved sites, never see it.

**The refined family.** q_{λ_K} is mean-field over the local sites, whatever the amortized
guide's structure: a hierarchical guide q(z2 | x) q(z1 | x, z2) gives λ_0 of z1 at its own draw
of z2, and the refinement then optimizes both sites' parameters freely, as SA-VAE's λ is the full
set of local variational parameters. The guide's dependence between sites is lost: where the
structured guide beats every mean-field one, refining it lowers the ELBO (the tests' two-layer
linear-Gaussian hierarchy: −5.11 nats per point for a structured guide near its optimum, −5.45
for the best mean-field Gaussian). Every local site of the guide must be a Normal —
``Normal``, ``Normal(...).to_event(n)``, ``Independent(Normal)``, expanded by plates — on a
real-valued site of the model; any other family is refused with :class:`ModelError`.

**When to use which.** The refinement closes part of the amortization gap (Cremer et al. 2018)
at test time with either variant (an encoder trained without refinement can be refined at test
time too: wrap it only for evaluation). The stop-gradient variant costs K forward/backward
passes of the model per training step (the digits example's 64-128-8 MLP VAE, batch 128, 4
draws per step: 5 ms of CPU for a VAE step, 16 ms with K = 5, 31 ms with K = 10); the
differentiable one 1.4 to 1.8 times that (27 and 45 ms) and memory for K unrolled steps, and
trains an encoder for the refinement (Kim et al. found it avoids posterior collapse on text).

**Step size and noise.** The steps are plain gradient steps of a constant size: ``lr`` must stay
below 2 / (the largest curvature of the per-point ELBO in μ), which is 1 + ‖W‖² / σ² for a
linear decoder of slope W and noise σ. With few draws per step the iterate settles in a noise
floor around the optimum, so K one-draw steps can *lower* the ELBO of an encoder that is already
close to it (by 0.1 to 0.2 nats per point on the tests' small linear models after training);
more draws (``num_samples``) or a smaller ``lr`` lower the floor: 300 steps of 0.05 with 1024
draws end within 0.005 nats of the closed-form optimum (``tests/infer/test_semi_amortized.py``).

References: Y. Kim, S. Wiseman, A. C. Miller, D. Sontag, A. M. Rush, "Semi-Amortized
Variational Autoencoders", ICML 2018; J. Marino, Y. Yue, S. Mandt, "Iterative Amortized
Inference", ICML 2018; R. D. Hjelm et al., "Iterative Refinement of the Approximate Posterior
for Directed Belief Networks", NeurIPS 2016; R. G. Krishnan, D. Liang, M. D. Hoffman, "On the
challenges of learning with inference networks on sparse, high-dimensional data", AISTATS 2018.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import nn
from torch.distributions import constraints, kl_divergence

from pyro_vae.errors import ConfigError, ModelError
from pyro_vae.infer.problem import PROTOCOL, Problem, ProtocolProgram, describe, site_log_prob
from pyro_vae.nn.module import module_of

__all__ = ["ENCODER_SITE", "Refinement", "SemiAmortizedGuide"]

#: The guide's zero-valued factor site that carries the stop-gradient variant's encoder term.
ENCODER_SITE = "_semi_amortized_encoder"

_HALF_LOG_2PI_E = 0.5 * math.log(2 * math.pi * math.e)
_OBJECTIVES = ("elbo", "kl")


@dataclass
class Refinement:
    """One refinement of a batch: per local site, the amortized guide's Normal q_{λ_0}
    (:attr:`initial`) and the refined q_{λ_K} (:attr:`refined`), each with the site's event
    dims, batch-shaped as the guide's site."""

    initial: dict[str, dist.TorchDistribution]
    refined: dict[str, dist.TorchDistribution]

    def params(self, which: str = "refined") -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """(loc, scale) per site of ``which`` (``"initial"`` or ``"refined"``)."""
        return {name: _loc_scale(q) for name, q in getattr(self, which).items()}


def _loc_scale(q: dist.TorchDistribution) -> tuple[torch.Tensor, torch.Tensor]:
    base = q.base_dist if isinstance(q, dist.Independent) else q
    return base.loc, base.scale


@dataclass
class _Site:
    """A local site of the amortized guide: its trace node and λ_0 = (loc, log scale), each of
    the site's full shape (batch dims then event dims)."""

    node: dict[str, Any]
    event_dim: int
    loc: torch.Tensor
    log_scale: torch.Tensor

    @property
    def name(self) -> str:
        return self.node["name"]


class _SiteFrame(Messenger):
    """Gives the sample site ``node["name"]`` the plates, scale and mask the amortized guide's
    site had: the refined site is scored as the guide's own (subsample scale N/B, β, mask)."""

    def __init__(self, node: dict[str, Any]) -> None:
        super().__init__()
        self.node = node

    def _pyro_sample(self, msg: dict[str, Any]) -> None:
        if msg["name"] != self.node["name"]:
            return
        msg["cond_indep_stack"] = tuple(self.node["cond_indep_stack"]) + \
            tuple(msg["cond_indep_stack"])
        msg["scale"] = self.node["scale"] * msg["scale"]
        mask = self.node["mask"]
        if mask is not None:
            msg["mask"] = mask if msg["mask"] is None else msg["mask"] & mask


def _normal_of(node: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(loc, scale) of a guide site's Normal, broadcast to the site's full shape, or
    :class:`ModelError` naming the site and the families supported."""
    fn = node["fn"]
    base = fn
    while isinstance(base, (dist.Independent, torch.distributions.Independent,
                            dist.ExpandedDistribution)):
        base = base.base_dist
    if not isinstance(base, torch.distributions.Normal):
        inner = f" of {type(base).__name__}" if base is not fn else ""
        raise ModelError(f"SemiAmortizedGuide refines Normal sites (Normal, Normal(...)"
                         f".to_event(n), Independent(Normal)), but guide site {node['name']!r} "
                         f"is a {type(fn).__name__}{inner}; give that site a Normal "
                         "(reparameterize it through a real-valued one), or refine another "
                         "family with pyro_vae.infer.vem.fit_local")
    shape = fn.batch_shape + fn.event_shape
    return torch.broadcast_to(base.loc, shape), torch.broadcast_to(base.scale, shape)


def _is_real(support: Any) -> bool:
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support is constraints.real


def _allocated_dims() -> int:
    """How many batch dims the plates active around this call hold (an outer particle plate's
    included), so that the refinement's own draws go to the left of every one of them."""
    try:
        from pyro.poutine.runtime import _DIM_ALLOCATOR
        return len(_DIM_ALLOCATOR._stack)
    except (ImportError, AttributeError):  # pragma: no cover - another Pyro's internals
        return 0


def _protocol(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """x, y, indices and beta of a call with the library's protocol ``(x, y, indices, beta)``,
    from positional or keyword arguments."""
    found = dict(zip(PROTOCOL, args, strict=False))
    found.update({k: v for k, v in kwargs.items() if k in PROTOCOL})
    found.setdefault("beta", 1.0)
    if found.get("beta") is None:
        found["beta"] = 1.0
    return found


#: the per-point gradient norm at which Kim et al. (2018) clip the refinement steps: what the
#: gap report and ``pyro-vae train --refine-steps`` use (the class's own default is no clip)
CLIP_NORM = 5.0


class SemiAmortizedGuide(nn.Module):
    """The amortized ``guide`` of ``model``, refined per data point by ``steps`` SVI steps
    (module docstring): a guide for ``pyro.infer.SVI``, the library's
    :class:`~pyro_vae.infer.trainer.Trainer` and every evaluation tool::

        sa_guide = SemiAmortizedGuide(model, guide, steps=10, lr=0.02, momentum=0.5)
        svi = pyro.infer.SVI(model, sa_guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
        Trainer(model, sa_guide, Trace_ELBO(), pyro.optim.Adam({"lr": 1e-3}), data, config)
        evaluate_elbo(vae, x_test, guide=sa_guide)       # the refined ELBO at test time

    Model and guide keep their signatures (``fn(x)``, ``fn(x, y)`` or the library's
    ``fn(x, y, indices, beta)``, :class:`~pyro_vae.infer.problem.ProtocolProgram`); the wrapper
    takes whatever arguments SVI passes and hands them on.

    :param model: the model p_θ(x, z), whose ELBO the refinement ascends.
    :param guide: the amortized guide; every local latent site a Normal (module docstring).
    :param steps: K, refinement steps per point (0: the amortized Normal itself).
    :param lr: α, the step size of gradient ascent on (μ, log σ).
    :param momentum: γ ∈ [0, 1), heavy-ball momentum of the steps.
    :param num_samples: draws of z per step and point for the ELBO's gradient.
    :param differentiable: back-propagate through the K steps (SA-VAE); ``False``: stop the
        gradient at λ_K and train the encoder by ``encoder_objective``.
    :param encoder_objective: with ``differentiable=False``, ``"elbo"`` (the encoder's own
        ELBO) or ``"kl"`` (KL(q_{λ_K} ‖ q_{λ_0})).
    :param max_grad_norm: each point's gradient is clipped to this norm before its step
        (``None``, the default: plain gradient steps). Kim et al. (2018) clip at 5; without it
        the default step of 0.02 on a high-curvature ELBO (784 Bernoulli pixels through a
        200-200 decoder) overflowed σ into an invalid Normal in one step.

    The defaults (10 steps of 0.02 with momentum 0.5, 4 draws each) raise the test ELBO of a VAE
    of the digits example's architecture, trained 15 epochs, from −25.29 to −25.18 nats; choose
    ``lr`` for your model (module docstring). The guide differentiates inside itself, which a
    JIT-traced ELBO cannot record: under one it raises :class:`ConfigError` (train with
    ``Config(jit=False)``, or pass the trainer a loss).
    """

    def __init__(self, model: Callable[..., Any], guide: Callable[..., Any], steps: int = 10,
                 lr: float = 0.02, momentum: float = 0.5, num_samples: int = 4,
                 differentiable: bool = False, encoder_objective: str = "elbo",
                 max_grad_norm: float | None = None) -> None:
        super().__init__()
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ConfigError(f"steps must be an integer ≥ 0, got {steps!r}; e.g. 10")
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ConfigError(f"lr must be a finite number > 0, got {lr!r}; e.g. 0.02")
        if not (isinstance(momentum, (int, float)) and 0 <= momentum < 1):
            raise ConfigError(f"momentum must lie in [0, 1), got {momentum!r}; e.g. 0.5")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ConfigError(f"num_samples must be an integer ≥ 1, got {num_samples!r}")
        if max_grad_norm is not None and not (
                isinstance(max_grad_norm, (int, float)) and not isinstance(max_grad_norm, bool)
                and 0 < max_grad_norm < math.inf):
            raise ConfigError(f"max_grad_norm must be a finite number > 0 or None, got "
                              f"{max_grad_norm!r}; e.g. 5")
        if encoder_objective not in _OBJECTIVES:
            raise ConfigError(f"unknown encoder_objective {encoder_objective!r}; use elbo or kl")
        self.steps, self.lr, self.momentum = steps, float(lr), float(momentum)
        self.num_samples = num_samples
        self.differentiable = bool(differentiable)
        self.encoder_objective = encoder_objective
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        # a plain tuple: the programs' modules are not submodules of the wrapper (the model's
        # belong to the model), except the guide's own module below
        self._programs = (ProtocolProgram.of(model), ProtocolProgram.of(guide))
        owner, model_owner = module_of(guide), module_of(model)
        #: the amortized guide's module, when it has one of its own (devices, eval mode and
        #: checkpoints of the trainer reach it through the wrapper)
        self.amortized = owner if owner is not None and owner is not model_owner else None
        self._problem: Problem | None = None
        self.__name__ = f"semi_amortized_{getattr(guide, '__name__', 'guide')}"

    @property
    def model(self) -> Callable[..., Any]:
        return self._programs[0]

    @property
    def guide(self) -> Callable[..., Any]:
        return self._programs[1]

    def extra_repr(self) -> str:
        return (f"steps={self.steps}, lr={self.lr}, momentum={self.momentum}, "
                f"num_samples={self.num_samples}, differentiable={self.differentiable}, "
                f"max_grad_norm={self.max_grad_norm}")

    # ------------------------------------------------------------------ the guide
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The guide: refine the amortized guide's Normals on this batch and sample every local
        site from the refined ones (with the stop-gradient variant's encoder term while a
        gradient is being taken)."""
        if torch.jit.is_tracing():
            raise ConfigError("SemiAmortizedGuide takes gradients inside the guide, which a "
                              "JIT-traced ELBO cannot record; train it eagerly: "
                              "Config(jit=False), or give the trainer a loss such as "
                              "Trace_ELBO()")
        train = torch.is_grad_enabled()
        inner, sites, problem = self._amortized(args, kwargs, hide_subsample=False)
        lam, first = self._refine(sites, inner, args, kwargs, self.steps)
        value = None
        for site, (loc, log_scale) in zip(sites, lam, strict=True):
            q = dist.Normal(loc, log_scale.exp()).to_event(site.event_dim)
            with _SiteFrame(site.node):
                value = pyro.sample(site.name, q, infer=dict(site.node["infer"]))
        if train and not self.differentiable:
            term = self._encoder_term(sites, lam, first, inner, args, kwargs)
            pyro.factor(ENCODER_SITE, self._plate_scale(sites[0], problem) * term,
                        has_rsample=True)
        return value

    def refine(self, *args: Any, steps: int | None = None, **kwargs: Any) -> Refinement:
        """The amortized Normals of the batch and their refinement by ``steps`` (default
        :attr:`steps`) SVI steps, without sampling any site (nothing reaches an enclosing trace).
        With ``differentiable=True`` and gradients enabled the refined parameters carry the
        graph of the steps."""
        steps = self.steps if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ConfigError(f"steps must be an integer ≥ 0, got {steps!r}")
        with poutine.block():
            inner, sites, _ = self._amortized(args, kwargs, hide_subsample=True)
            lam, _ = self._refine(sites, inner, args, kwargs, steps)
        initial = {s.name: dist.Normal(s.loc, s.log_scale.exp()).to_event(s.event_dim)
                   for s in sites}
        refined = {s.name: dist.Normal(loc, log_scale.exp()).to_event(s.event_dim)
                   for s, (loc, log_scale) in zip(sites, lam, strict=True)}
        return Refinement(initial, refined)

    # ------------------------------------------------------------------ the amortized start
    def _describe(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Problem:
        """The pair described once (data plate, local sites; refusals of
        :func:`~pyro_vae.infer.problem.describe`), and the sites' supports checked."""
        if self._problem is None:
            call = _protocol(args, kwargs)
            other = {k: v for k, v in kwargs.items() if k not in PROTOCOL}
            model, guide = self._programs
            if other:
                model, guide = (functools.partial(model, **other),
                                functools.partial(guide, **other))
            problem = describe(model, guide, call.get("x"), call.get("y"), call.get("indices"))
            for site in problem.latents:
                if not _is_real(site.support):
                    raise ModelError(f"model site {site.name!r} has support {site.support}, "
                                     "but the refined Normal puts mass on all of ℝ; give the "
                                     "model a real-valued site (a TransformedDistribution of "
                                     "a Normal) to refine it")
            self._problem = problem
        return self._problem

    def _amortized(self, args: tuple[Any, ...], kwargs: dict[str, Any], hide_subsample: bool
                   ) -> tuple[poutine.Trace, list[_Site], Problem]:
        """The amortized guide traced on the batch, its sample sites hidden from enclosing
        handlers (its params and, unless ``hide_subsample``, its plates' subsample sites reach
        them, so that SVI trains the encoder and the model's plates replay the guide's), and
        λ_0 of each local site."""
        problem = self._describe(args, kwargs)

        def hidden(msg: dict[str, Any]) -> bool:
            return msg["type"] == "sample" and (hide_subsample or not site_is_subsample(msg))

        with poutine.block(hide_fn=hidden):
            inner = poutine.trace(self.guide).get_trace(*args, **kwargs)
        latents = set(problem.latent_names)
        sites = []
        for node in inner.nodes.values():
            if node["type"] != "sample" or site_is_subsample(node) or node["is_observed"]:
                continue
            if node["infer"].get("is_auxiliary") or node["name"] not in latents:
                raise ModelError(f"SemiAmortizedGuide refines the guide's local latent sites, "
                                 f"but guide site {node['name']!r} is auxiliary (not a site of "
                                 "the model); use a guide with one Normal site per latent of "
                                 "the model (AutoNormal, or your own)")
            loc, scale = _normal_of(node)
            sites.append(_Site(node, len(node["fn"].event_shape), loc, scale.log()))
        if not sites:
            raise ModelError("SemiAmortizedGuide found no local latent site in the guide; it "
                             "refines the Normal sites of an amortized guide")
        return inner, sites, problem

    @staticmethod
    def _plate_scale(site: _Site, problem: Problem) -> float:
        """N/B of the data plate (1 without subsampling): the scale Pyro gives the batch."""
        for frame in site.node["cond_indep_stack"]:
            if frame.name == problem.plate.name and frame.full_size:
                return frame.full_size / frame.size
        return 1.0

    # ------------------------------------------------------------------ the refinement
    def _refine(self, sites: list[_Site], inner: poutine.Trace, args: tuple[Any, ...],
                kwargs: dict[str, Any], steps: int
                ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[torch.Tensor] | None]:
        """λ_K per site, and ∇_λ ELBO at λ_0 (the first step's gradient; ``None`` for K = 0).
        Differentiable through the steps when :attr:`differentiable` and a gradient is being
        taken; else λ_K is detached."""
        track = self.differentiable and torch.is_grad_enabled()
        lam = [t for s in sites for t in (s.loc, s.log_scale)]
        first = None
        with torch.enable_grad():
            lam = [t if (track and t.requires_grad) else t.detach().requires_grad_()
                   for t in lam]
            velocity: list[torch.Tensor] | None = None
            for k in range(steps):
                objective = self._elbo(sites, lam, inner, args, kwargs)
                grads = list(torch.autograd.grad(objective, lam, create_graph=track))
                if k == 0:
                    first = [g.detach() for g in grads]
                grads = self._clipped(grads, sites)
                velocity = grads if velocity is None else \
                    [self.momentum * v + g for v, g in zip(velocity, grads, strict=True)]
                lam = [p + self.lr * v for p, v in zip(lam, velocity, strict=True)]
                if not track:
                    lam = [p.detach().requires_grad_() for p in lam]
                    velocity = [v.detach() for v in velocity]
        if not track:
            lam = [p.detach() for p in lam]
        return [(lam[2 * i], lam[2 * i + 1]) for i in range(len(sites))], first

    def _clipped(self, grads: list[torch.Tensor], sites: list[_Site]) -> list[torch.Tensor]:
        """Each point's gradient (over all its sites' μ and log σ) scaled down to norm
        :attr:`max_grad_norm` where it is longer (Kim et al. 2018 clip at 5): a step of a
        curvature the step size was not chosen for then moves a point by at most lr · norm
        instead of overflowing σ. Differentiable (SA-VAE's variant back-propagates through
        it)."""
        if self.max_grad_norm is None:
            return grads
        squares = None
        for i, site in enumerate(sites):
            events = tuple(range(-site.event_dim, 0))
            for g in grads[2 * i:2 * i + 2]:
                sq = g.pow(2).sum(events) if events else g.pow(2)
                squares = sq if squares is None else squares + sq
        assert squares is not None
        factor = (self.max_grad_norm / squares.sqrt().clamp_min(1e-12)).clamp(max=1.0)
        return [g * factor.reshape(factor.shape + (1,) * site.event_dim).expand_as(g)
                for i, site in enumerate(sites) for g in grads[2 * i:2 * i + 2]]

    def _elbo(self, sites: list[_Site], lam: list[torch.Tensor], inner: poutine.Trace,
              args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
        """Σ over the batch's points of ELBO(λ; θ, x_n) (module docstring), by ``num_samples``
        reparameterized draws per point and the closed-form entropy of the Normals."""
        beta = _protocol(args, kwargs)["beta"]
        num = self.num_samples
        problem = self._problem
        rank = max(problem.max_plate_nesting, _allocated_dims(),
                   *(s.loc.dim() - s.event_dim for s in sites))
        values, entropy = {}, 0.0
        for i, site in enumerate(sites):
            loc, log_scale = lam[2 * i], lam[2 * i + 1]
            batch_rank = loc.dim() - site.event_dim
            shape = ((num,) + (1,) * (rank - batch_rank) if num > 1 else ()) + tuple(loc.shape)
            eps = torch.randn(shape, dtype=loc.dtype, device=loc.device)
            values[site.name] = loc + log_scale.exp() * eps
            h = log_scale + _HALF_LOG_2PI_E
            mask = site.node["mask"]
            if isinstance(mask, torch.Tensor):  # masked batch elements: no entropy either
                h = h * mask.reshape(mask.shape + (1,) * site.event_dim)
            entropy = entropy + h.sum()
        # the model's latents conditioned on the draws, its plates' subsamples replayed from the
        # guide's; blocked, so nothing of it reaches the guide's trace
        model = poutine.replay(poutine.condition(self.model, data=values), trace=inner)
        with poutine.block():  # the draws' plate is made inside: its subsample site too
            draws = pyro.plate("_semi_amortized_draws", num, dim=-(rank + 1)) if num > 1 \
                else contextlib.nullcontext()
            with draws:
                trace = poutine.trace(model).get_trace(*args, **kwargs)
        log_lik, log_prior = 0.0, 0.0
        for node in trace.nodes.values():
            if node["type"] != "sample" or site_is_subsample(node):
                continue
            lp = site_log_prob(node).sum()
            if node["name"] in values:
                log_prior = log_prior + lp
            else:
                log_lik = log_lik + lp
        return log_lik / num + beta * (log_prior / num + entropy)

    def _encoder_term(self, sites: list[_Site], lam: list[tuple[torch.Tensor, torch.Tensor]],
                      first: list[torch.Tensor] | None, inner: poutine.Trace,
                      args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
        """The stop-gradient variant's encoder term, valued 0: its gradient is −∇_φ L(λ_0) for
        ``"elbo"`` (by the first step's ∇_λ L(λ_0), θ untouched) or ∇_φ KL(q_{λ_K} ‖ q_{λ_0})
        for ``"kl"``, summed over the batch's points (the plate's N/B applied by the caller)."""
        if self.encoder_objective == "kl":
            kl = 0.0
            for site, (loc, log_scale) in zip(sites, lam, strict=True):
                q_k = dist.Normal(loc.detach(), log_scale.detach().exp())
                q_0 = dist.Normal(site.loc, site.log_scale.exp())
                kl = kl + kl_divergence(q_k, q_0).sum()
            return kl - kl.detach()
        if first is None:  # K = 0: the encoder's ELBO gradient, taken here
            with torch.enable_grad():
                lam0 = [t.detach().requires_grad_() for s in sites for t in (s.loc, s.log_scale)]
                first = list(torch.autograd.grad(self._elbo(sites, lam0, inner, args, kwargs),
                                                 lam0))
        lam0 = [t for s in sites for t in (s.loc, s.log_scale)]
        surrogate = sum((t * g).sum() for t, g in zip(lam0, first, strict=True))
        return -(surrogate - surrogate.detach())
