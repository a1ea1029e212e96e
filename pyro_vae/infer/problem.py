"""The inference core: what a (model, guide) pair is, read off its trace, and the per-point
quantities every tool of the library is built on.

Pyro's own tools never ask a model for its attributes; they run it once and read the trace
(``AutoGuide._setup_prototype``, ``pyro.infer.mcmc.util.initialize_model``,
``pyro.infer.importance.vectorized_importance_weights``). :func:`describe` does the same for the
per-data-point tools of this library (ELBO and IWAE evaluation, AIS/BDMC, NUTS, local fits, vEM,
the gap report, the variance labs, predictive draws): it traces the guide on a batch ``x``,
replays the model on it, and returns a :class:`Problem` that says

* how to call model and guide (:class:`Signature`): ``model(x)`` as in Pyro's examples,
  ``model(x, y)``, or the library's ``model(x, y, indices, beta)`` — model and guide take the
  same arguments, as ``SVI`` calls them;
* the **data plate** (:class:`DataPlate`): the outermost plate that holds every observed site
  and whose batch size is the batch's — any name, subsampled or not;
* the **local latent sites** (:class:`LatentSite`): the model's unobserved sample sites, all
  inside the data plate, in the order the model samples them (dependency order), with their
  event shapes, supports and whether the guide reparameterizes them; the guide's auxiliary
  sites (``infer={"is_auxiliary": True}``, as ``AutoNormal`` and ``AutoContinuous`` guides
  write them) are weighted but are not latents of the model;
* the observed sites and the plate nesting.

A latent site outside the data plate (a global latent), a model with no plate over the batch,
a guide site the model does not have, or a model latent the guide does not sample is refused by
:class:`ModelError` in one line that names the site and says what the tool needs.

**Per-point log-weights.** For S draws z_s ~ q(z | x_n), vectorized over a particle plate outside
every plate of the program (as Pyro's vectorized ELBOs do),

    log w_s(x_n) = Σ_{model sites} log p(· | ·) − Σ_{guide sites} log q(· | ·)

summed per data point over every other plate and the event dims. Each term is the site's
*unscaled* ``fn.log_prob(value)`` with its mask applied: neither the plate's subsampling factor
N/B nor a KL weight β enters a per-point number. ``E_q[log w] = ELBO(x_n)`` and
``log (1/S) Σ_s w_s`` is the IWAE bound (Burda et al. 2016).

**The unconstrained joint.** For the continuous local latents, :meth:`Problem.log_joint` is
log p(x_n, T(u_n)) + log abs(det ∂T/∂u) per point, with u_n the flat vector of all of point n's
latents mapped to ℝ^D by ``biject_to(site.support).inv`` (the transform Pyro's HMC and
autoguides use): the potential of AIS, BDMC and NUTS, and the target of the local fits.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch.distributions import biject_to

from pyro_vae.errors import ConfigError, ModelError, PyroVAEError

#: The particle plate of every vectorized draw (outside every plate of the program).
PARTICLE_PLATE = "_pyro_vae_particles"


# --------------------------------------------------------------------------- calling
#: the library's call protocol, by position
PROTOCOL = ("x", "y", "indices", "beta")


@dataclass(frozen=True)
class Signature:
    """How model and guide are called on a batch: ``fn(*args)`` with ``args`` built from the data
    ``x``, the labels ``y``, the subsample ``indices`` and the KL weight ``beta``.

    ``arity`` is the number of those arguments the program takes positionally (1: ``fn(x)``,
    2: ``fn(x, y)``, 4: the library's ``fn(x, y, indices, beta)``); a program taking ``*args``
    gets as many as are given.
    """

    arity: int

    @classmethod
    def of(cls, fn: Callable[..., Any]) -> Signature:
        try:
            params = list(inspect.signature(fn).parameters.values())
        except (TypeError, ValueError):  # builtins, some C callables: assume the protocol
            return cls(4)
        if any(p.kind is p.VAR_POSITIONAL for p in params):
            return cls(4)
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        # required parameters take the data; an optional one takes the protocol's argument
        # only under its name (y, indices, beta), so that model(x, W=W) keeps its W
        arity = 0
        for i, p in enumerate(positional[:4]):
            if p.default is not p.empty and i > 0 and p.name != PROTOCOL[i]:
                break
            arity += 1
        return cls(arity)

    def args(self, x: torch.Tensor | None, y: torch.Tensor | None = None,
             indices: torch.Tensor | None = None, beta: float | torch.Tensor = 1.0,
             who: str = "the model") -> tuple[Any, ...]:
        full = (x, y, indices, beta)
        if self.arity == 0:
            raise ModelError(f"{who} takes no arguments; write it as fn(x) (or fn(x, y)) so the "
                             "data reaches its observed sites")
        if self.arity < 2 and y is not None:
            raise ModelError(f"{who} takes only x, but labels y were given; drop y or write "
                             f"{who.split()[-1]}(x, y)")
        if self.arity < 3 and indices is not None:
            raise ModelError(f"{who} takes no subsample indices; mini-batches of it need "
                             "fn(x, y=None, indices=None, beta=1.0) with pyro.plate(name, N, "
                             "subsample=indices), or run it on the whole data set")
        if self.arity < 4 and not (isinstance(beta, (int, float)) and beta == 1.0):
            raise ModelError(f"{who} takes no KL weight beta; write fn(x, y=None, indices=None, "
                             "beta=1.0) and scale its latent sites by beta, or train with beta 1")
        return full[:self.arity]


class LatentScale(Messenger):
    """Scales the log-density of every *unobserved* sample site by ``weight`` (β ≥ 0): in model
    and guide alike, the ELBO becomes E_q[log p(x|z)] − β·KL(q ‖ p) — a β-VAE or a KL
    warm-up for any model, whatever its latent sites are named."""

    def __init__(self, weight: float | torch.Tensor) -> None:
        super().__init__()
        self.weight = weight

    def _process_message(self, msg: dict[str, Any]) -> None:
        if msg["type"] == "sample" and not msg["is_observed"] and not site_is_subsample(msg):
            msg["scale"] = self.weight * msg["scale"]


class ProtocolProgram:
    """A user's model or guide called with the library's arguments ``(x, y, indices, beta)``:
    it receives those its signature takes (:class:`Signature`); a β ≠ 1 that it cannot take is
    applied by :class:`LatentScale`, and subsample indices it cannot take are dropped (its
    plate then covers the batch as it is, unscaled). Wrapping a program of the protocol
    returns it unchanged."""

    def __init__(self, fn: Callable[..., Any], signature: Signature | None = None) -> None:
        self.fn = fn
        self.signature = signature if signature is not None else Signature.of(fn)
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)
        self.__doc__ = getattr(fn, "__doc__", None)

    @classmethod
    def of(cls, fn: Callable[..., Any]) -> Callable[..., Any]:
        if isinstance(fn, ProtocolProgram) or Signature.of(fn).arity >= 4:
            return fn
        return cls(fn)

    @classmethod
    def pair(cls, model: Callable[..., Any], guide: Callable[..., Any]
             ) -> tuple[Callable[..., Any], Callable[..., Any]]:
        """Model and guide as protocol programs. A guide that takes ``*args`` (an autoguide,
        which passes them on to the model) gets what the model takes, as ``SVI`` gives both
        the same arguments."""
        wrapped = cls.of(model)
        if not isinstance(guide, ProtocolProgram) and takes_varargs(guide) \
                and Signature.of(model).arity < 4:
            return wrapped, cls(guide, Signature.of(model))
        return wrapped, cls.of(guide)


    def __call__(self, x: Any = None, y: Any = None, indices: Any = None,
                 beta: float | torch.Tensor = 1.0, **kwargs: Any) -> Any:
        arity = self.signature.arity
        args = Signature(arity).args(x, y, None, 1.0, "the model or guide")
        if arity >= 3:
            args = (x, y, indices)
        if isinstance(beta, (int, float)) and beta == 1.0:
            return self.fn(*args, **kwargs)
        with LatentScale(beta):
            return self.fn(*args, **kwargs)


def takes_varargs(fn: Callable[..., Any]) -> bool:
    """True when ``fn`` takes ``*args``."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is p.VAR_POSITIONAL for p in params)


def call_args(model: Callable[..., Any], guide: Callable[..., Any], x: torch.Tensor | None,
              y: torch.Tensor | None = None, indices: torch.Tensor | None = None,
              beta: float | torch.Tensor = 1.0) -> tuple[Any, ...]:
    """The positional arguments with which both ``model`` and ``guide`` are called (Pyro calls
    them with the same ones): as many as the model takes; the guide must take them too."""
    args = Signature.of(model).args(x, y, indices, beta, "the model")
    if guide is not None and Signature.of(guide).arity < len(args):
        raise ModelError(f"the guide takes fewer arguments than the model ({len(args)}); give "
                         "both the same signature, as pyro.infer.SVI calls them alike")
    return args


# --------------------------------------------------------------------------- the description
@dataclass(frozen=True)
class DataPlate:
    """The plate over data points: its name, dim, the batch size B and the full size N."""

    name: str
    dim: int
    size: int
    full_size: int


@dataclass(frozen=True)
class LatentSite:
    """A local latent site: inside the data plate, one value per data point.

    ``value_shape`` is the shape of its value for the described batch (batch dims and event
    dims, no particle dim); ``numel`` the number of real numbers per data point.
    """

    name: str
    event_shape: torch.Size
    support: Any
    is_discrete: bool
    has_rsample: bool
    enumerated: bool
    value_shape: torch.Size
    data_dim: int

    @property
    def event_dim(self) -> int:
        return len(self.event_shape)

    @property
    def numel(self) -> int:
        batch = self.value_shape[:len(self.value_shape) - self.event_dim]
        rank = len(batch)
        per_point = [s for i, s in enumerate(batch) if i - rank != self.data_dim]
        return math.prod(per_point) * math.prod(self.event_shape)


def site_log_prob(site: dict[str, Any]) -> torch.Tensor:
    """The site's log-density, unscaled (no plate subsampling factor, no β), masked."""
    lp = site["fn"].log_prob(site["value"])
    return scale_and_mask(lp, mask=site["mask"]) if site["mask"] is not None else lp


def _sample_sites(trace: poutine.Trace) -> list[dict[str, Any]]:
    return [s for s in trace.nodes.values() if s["type"] == "sample" and not site_is_subsample(s)]


def _nesting(*traces: poutine.Trace) -> int:
    dims = [-f.dim for tr in traces for s in _sample_sites(tr) for f in s["cond_indep_stack"]
            if f.vectorized and f.dim is not None]
    return max(dims, default=0)


@dataclass
class Problem:
    """A (model, guide) pair described from its trace on a batch (module docstring).

    :attr:`latents` are the local latent sites in the model's order, :attr:`observed` the
    observed sites, :attr:`auxiliary` the guide's auxiliary sites, :attr:`plate` the data plate
    and :attr:`max_plate_nesting` the number of plate dims the program uses.
    """

    model: Callable[..., Any]
    guide: Callable[..., Any]
    plate: DataPlate
    latents: tuple[LatentSite, ...]
    observed: tuple[str, ...]
    auxiliary: tuple[str, ...]
    max_plate_nesting: int
    params: tuple[str, ...] = ()
    guide_params: tuple[str, ...] = ()
    _transforms: dict[str, Any] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ facts
    @property
    def latent_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.latents)

    @property
    def continuous(self) -> bool:
        return all(not s.is_discrete for s in self.latents)

    @property
    def reparameterized(self) -> bool:
        return all(s.has_rsample for s in self.latents)

    @property
    def dim(self) -> int:
        """D: real numbers per data point over all latent sites (the unconstrained vector)."""
        return sum(s.numel for s in self.latents)

    def require_continuous(self, what: str) -> None:
        """:class:`ModelError` unless every local latent is continuous."""
        for s in self.latents:
            if s.is_discrete:
                raise ModelError(f"{what} needs continuous latents, but site {s.name!r} is "
                                 "discrete; use evaluate (ELBO, IWAE) or the discrete "
                                 "estimators for this model")
            t = self.transform(s.name)
            if tuple(t.inverse_shape(s.value_shape)) != tuple(s.value_shape):
                raise ModelError(f"{what} maps site {s.name!r} to unconstrained space, which "
                                 f"changes its shape ({s.support} support); give it a "
                                 "real-valued parameterization")

    def args(self, x, y=None, indices=None, beta=1.0) -> tuple[Any, ...]:
        return call_args(self.model, self.guide, x, y, indices, beta)

    def transform(self, name: str):
        if name not in self._transforms:
            site = next(s for s in self.latents if s.name == name)
            self._transforms[name] = biject_to(site.support)
        return self._transforms[name]

    def resized(self, batch: int) -> Problem:
        """The same problem on a batch of ``batch`` points (the data plate's size and every
        latent's value shape changed along the data dim)."""
        if batch == self.plate.size:
            return self
        full = self.plate.full_size if self.plate.full_size != self.plate.size else batch
        latents = []
        for s in self.latents:
            shape = list(s.value_shape)
            shape[len(shape) - s.event_dim + s.data_dim] = batch
            latents.append(replace(s, value_shape=torch.Size(shape)))
        return replace(self, plate=replace(self.plate, size=batch, full_size=full),
                       latents=tuple(latents), _transforms=self._transforms)

    # ------------------------------------------------------------------ traces
    def particle_plate(self, num: int) -> pyro.plate:
        return pyro.plate(PARTICLE_PLATE, num, dim=-(self.max_plate_nesting + 1))

    def traces(self, x, y=None, num_particles: int = 1, guide: Callable[..., Any] | None = None
               ) -> tuple[poutine.Trace, poutine.Trace]:
        """(guide trace, model trace) of ``num_particles`` vectorized draws from the guide."""
        guide = self.guide if guide is None else guide
        args = self.args(x, y)
        with self.particle_plate(num_particles):
            guide_tr = poutine.trace(guide).get_trace(*args)
            model_tr = poutine.trace(poutine.replay(self.model, trace=guide_tr)).get_trace(*args)
        return guide_tr, model_tr

    def per_point(self, site: dict[str, Any], value: torch.Tensor, num_particles: int
                  ) -> torch.Tensor:
        """A site's per-element ``value`` (batch-shaped, as its log-density) summed to
        ``(num_particles, B)``: the data plate's dim kept, every other plate dim summed."""
        rank = self.max_plate_nesting + 1
        if value.dim() > rank:
            raise ModelError(f"site {site['name']!r} has batch dims outside the model's plates "
                             f"(log-density shape {tuple(value.shape)}); declare its dependent "
                             "dims with .to_event(n) or put it inside a pyro.plate")
        v = value.reshape((1,) * (rank - value.dim()) + tuple(value.shape))
        v = v.expand(num_particles, *v.shape[1:])
        data_dim = self.plate.dim
        if v.shape[rank + data_dim] == 1 and self.plate.size != 1:
            axis = rank + data_dim
            v = v.expand(*v.shape[:axis], self.plate.size, *v.shape[axis + 1:])
        v = v.movedim(rank + data_dim, -1)
        return v.reshape(num_particles, -1, v.shape[-1]).sum(1)

    def log_weight_terms(self, guide_tr: poutine.Trace, model_tr: poutine.Trace,
                         num_particles: int) -> dict[str, torch.Tensor]:
        """Per particle and point, ``(S, B)``: ``"log_lik"`` (observed sites of the model),
        ``"log_prior"`` (its latent sites) and ``"log_q"`` (every guide site, auxiliary ones
        included)."""
        out = {"log_lik": 0.0, "log_prior": 0.0, "log_q": 0.0}
        for site in _sample_sites(model_tr):
            key = "log_lik" if site["is_observed"] else "log_prior"
            out[key] = out[key] + self.per_point(site, site_log_prob(site), num_particles)
        for site in _sample_sites(guide_tr):
            if not site["is_observed"]:
                out["log_q"] = out["log_q"] + self.per_point(site, site_log_prob(site),
                                                             num_particles)
        shape = (num_particles, self.plate.size)
        return {k: torch.as_tensor(v).expand(shape) if not isinstance(v, torch.Tensor)
                else v.expand(shape) for k, v in out.items()}

    def describes(self, guide_tr: poutine.Trace, model_tr: poutine.Trace) -> bool:
        """True when the traces have the sites this problem was described from (the same
        latent, observed and auxiliary sites): a problem kept from an earlier batch is still
        the problem of these traces."""
        model_sites = list(_sample_sites(model_tr))
        latent = tuple(s["name"] for s in model_sites if not s["is_observed"])
        observed = {s["name"] for s in model_sites if s["is_observed"]}
        guided = {s["name"] for s in _sample_sites(guide_tr) if not s["is_observed"]}
        return latent == self.latent_names and observed == set(self.observed) \
            and guided == set(self.latent_names) | set(self.auxiliary)

    def log_weights(self, x, y=None, num_particles: int = 1,
                    guide: Callable[..., Any] | None = None) -> torch.Tensor:
        """log w = log p(x, z) − log q(z | x) for ``num_particles`` draws per point, ``(S, B)``."""
        guide_tr, model_tr = self.traces(x, y, num_particles, guide)
        t = self.log_weight_terms(guide_tr, model_tr, num_particles)
        return t["log_lik"] + t["log_prior"] - t["log_q"]

    # ------------------------------------------------------------------ unconstrained space
    def pack(self, values: dict[str, torch.Tensor], num: int) -> torch.Tensor:
        """Per-site unconstrained values, each ``(num, *value_shape)`` (particle dim first),
        as one ``(num, B, D)`` tensor."""
        parts = []
        for site in self.latents:
            v = values[site.name]
            batch_rank = len(site.value_shape) - site.event_dim
            v = v.reshape(num, *site.value_shape)
            v = v.movedim(1 + batch_rank + site.data_dim, 1)
            parts.append(v.reshape(num, self.plate.size, -1))
        return torch.cat(parts, -1)

    def unpack(self, u: torch.Tensor) -> dict[str, torch.Tensor]:
        """The inverse of :meth:`pack`: ``(C, B, D)`` to per-site tensors laid out for the
        particle plate, ``(C, 1, …, *value_shape)`` with the particle dim at
        ``-(max_plate_nesting + 1)`` of the batch dims."""
        out, start, num = {}, 0, u.shape[0]
        for site in self.latents:
            batch_rank = len(site.value_shape) - site.event_dim
            moved = list(site.value_shape)
            data_axis = batch_rank + site.data_dim
            b = moved.pop(data_axis)
            piece = u[..., start:start + site.numel].reshape(num, b, *moved)
            start += site.numel
            v = piece.movedim(1, 1 + data_axis)
            pad = self.max_plate_nesting - batch_rank
            out[site.name] = v.reshape(num, *(1,) * pad, *site.value_shape)
        return out

    def constrain(self, u: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Constrained site values of the unconstrained ``u`` (C, B, D) and the log abs(det J) of
        the map, per chain and point ``(C, B)``."""
        values, log_det = {}, torch.zeros(u.shape[:2], dtype=u.dtype, device=u.device)
        unpacked = self.unpack(u)
        for site in self.latents:
            t, v = self.transform(site.name), unpacked[site.name]
            z = t(v)
            values[site.name] = z
            ladj = t.log_abs_det_jacobian(v, z)
            extra = site.event_dim - t.codomain.event_dim  # event dims the transform leaves
            if extra > 0:
                ladj = ladj.sum(tuple(range(-extra, 0)))
            log_det = log_det + self.per_point({"name": site.name}, ladj, u.shape[0])
        return values, log_det

    def unconstrain(self, values: dict[str, torch.Tensor], num: int) -> torch.Tensor:
        """Per-site constrained values ``(num, …)`` to the packed unconstrained ``(num, B, D)``."""
        return self.pack({k: self.transform(k).inv(v) for k, v in values.items()}, num)

    def log_joint(self, x, y, u: torch.Tensor, split: bool = False):
        """log p(x, T(u)) + log abs(det ∂T/∂u) per chain and point ``(C, B)`` for ``u`` of shape
        ``(C, B, D)``; with ``split`` the pair (log prior + log abs(det J), log likelihood)."""
        self.require_continuous("the unconstrained joint")
        values, log_det = self.constrain(u)
        num = u.shape[0]
        with self.particle_plate(num):
            tr = poutine.trace(poutine.condition(self.model, data=values)).get_trace(
                *self.args(x, y))
        log_prior, log_lik = log_det, torch.zeros_like(log_det)
        for site in _sample_sites(tr):
            lp = self.per_point(site, site_log_prob(site), num)
            if site["name"] in values:
                log_prior = log_prior + lp
            else:
                log_lik = log_lik + lp
        return (log_prior, log_lik) if split else log_prior + log_lik

    def prior_draws(self, x, y, num: int) -> dict[str, torch.Tensor]:
        """``num`` joint draws of the local latents from the model's prior (ancestral sampling,
        the observations held at x), per site laid out as :meth:`unpack` gives them."""
        with self.particle_plate(num):
            tr = poutine.trace(self.model).get_trace(*self.args(x, y))
        return {s.name: tr.nodes[s.name]["value"].expand(
            num, *(1,) * (self.max_plate_nesting - (len(s.value_shape) - s.event_dim)),
            *s.value_shape) for s in self.latents}

    def guide_draws(self, x, y, num: int, guide: Callable[..., Any] | None = None
                    ) -> dict[str, torch.Tensor]:
        """``num`` draws of the local latents from the guide, laid out as :meth:`unpack`."""
        guide_tr, _ = self.traces(x, y, num, guide)
        return {s.name: guide_tr.nodes[s.name]["value"].expand(
            num, *(1,) * (self.max_plate_nesting - (len(s.value_shape) - s.event_dim)),
            *s.value_shape) for s in self.latents}


def data_plate(model_tr: poutine.Trace, batch: int | None = None,
               exclude: tuple[str, ...] = ()) -> DataPlate:
    """The data plate of a model trace: the outermost vectorized plate that holds every observed
    site (and, given ``batch``, has that size); ``exclude`` names plates to pass over (a
    particle plate of the caller's)."""
    observed = [s for s in _sample_sites(model_tr) if s["is_observed"]]
    if not observed:
        raise ModelError("the model has no observed site; give it the data with "
                         "pyro.sample(name, dist, obs=x)")
    common = None
    for s in observed:
        frames = [f for f in s["cond_indep_stack"]
                  if f.vectorized and f.dim is not None and f.name not in exclude]
        names = [f.name for f in frames]
        common = names if common is None else [n for n in common if n in names]
    frames = {f.name: f for s in observed for f in s["cond_indep_stack"]}
    candidates = [frames[n] for n in common or []
                  if batch is None or frames[n].size == batch]
    if not candidates:
        raise ModelError(
            "the model has no plate over the data points: the per-point tools need its observed "
            f"sites inside pyro.plate(name, {batch if batch else 'N'}) (vectorized), one entry per "
            "point of x; wrap the observation (and the local latents) in one")
    frame = candidates[0]  # cond_indep_stack lists the outermost plate first
    return DataPlate(frame.name, frame.dim, frame.size, frame.full_size or frame.size)


#: what a user's model or guide raises when it cannot run on a batch (tracing, shapes, dtypes,
#: a distribution's argument checks)
PROGRAM_ERRORS = (RuntimeError, ValueError, TypeError, KeyError, IndexError, NotImplementedError)


def program_failure(exc: BaseException, x: torch.Tensor, what: str = "a batch") -> ModelError:
    """The one-line :class:`ModelError` for a model or guide that raised ``exc`` on ``x``, with
    the likely fix where the message shows it."""
    first = str(exc).strip().split("\n", 1)[0]
    if "Shape mismatch inside plate" in first:
        fix = ("declare the observation's (and each latent's) event dimensions with "
               ".to_event(n), so that only the data dimension meets the plate")
    else:
        fix = "check that the data has the shape, dtype and support the model expects"
    return ModelError(f"model and guide fail on {what} of shape {tuple(x.shape)} ({x.dtype}): "
                      f"{type(exc).__name__}: {first}; {fix}")


def describe(model: Callable[..., Any], guide: Callable[..., Any] | None, x: torch.Tensor,
             y: torch.Tensor | None = None, indices: torch.Tensor | None = None) -> Problem:
    """Trace ``guide`` on the batch ``x`` (labels ``y``), replay ``model`` on it, and describe
    the pair (module docstring); with ``guide=None``, the model alone (its latent sites drawn
    from its prior), for tools that bring their own guide. The random state is left as it was
    and no graph is built."""
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"x must be a torch.Tensor batch, got {type(x).__name__}; convert it "
                          "with torch.as_tensor(x, dtype=torch.float32)")
    args = call_args(model, guide, x, y, indices)
    devices = [x.device] if x.device.type == "cuda" else []
    # blocked: a description made inside another program's trace (a guide's first call) stays
    # out of that trace
    with torch.no_grad(), torch.random.fork_rng(devices=devices), poutine.block():
        try:
            guide_tr = poutine.trace(guide or model).get_trace(*args)
            model_tr = guide_tr if guide is None else \
                poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*args)
            for node in model_tr.nodes.values():  # data the observations cannot score: here
                if node["type"] == "sample" and node["is_observed"]:
                    site_log_prob(node)
        except PyroVAEError:
            raise
        except PROGRAM_ERRORS as exc:
            raise program_failure(exc, x) from exc
    plate = data_plate(model_tr, x.shape[0] if x.dim() else None)
    nesting = _nesting(model_tr, guide_tr)
    model_sites = {s["name"]: s for s in _sample_sites(model_tr)}
    guide_sites = {s["name"]: s for s in _sample_sites(guide_tr) if not s["is_observed"]}
    auxiliary = tuple(n for n, s in guide_sites.items() if s["infer"].get("is_auxiliary"))
    for name, s in guide_sites.items():
        if name in model_sites and not any(f.name == plate.name for f in s["cond_indep_stack"]):
            continue  # a global latent of the model: refused below with the model's site
        if not any(f.name == plate.name for f in s["cond_indep_stack"]):
            raise ModelError(f"guide site {name!r} lies outside the data plate {plate.name!r}, so "
                             "its density is not split per point (AutoDiagonalNormal and other "
                             "AutoContinuous guides draw one joint vector); for per-point tools "
                             "use a guide with one site per latent inside the plate (AutoNormal)")
    for name in guide_sites:
        if name not in model_sites and name not in auxiliary:
            raise ModelError(f"guide site {name!r} is not a site of the model; remove it, or mark "
                             "it infer={'is_auxiliary': True} if its density is accounted for "
                             "by the guide's other sites")
    latents = []
    for name, s in model_sites.items():
        if s["is_observed"]:
            continue
        if name not in guide_sites:
            how = "enumerated in the model" if s["infer"].get("enumerate") else "not sampled"
            raise ModelError(f"model site {name!r} is {how} by the guide; the per-point tools "
                             "need the guide to sample every latent site of the model")
        if not any(f.name == plate.name for f in s["cond_indep_stack"]):
            raise ModelError(f"latent site {name!r} is outside the data plate {plate.name!r} "
                             "(a global latent); the per-point tools need every latent inside "
                             "it — move it into the plate, or make it a pyro.param")
        q = guide_sites[name]
        fn = s["fn"]
        data_dim = next(f.dim for f in s["cond_indep_stack"] if f.name == plate.name)
        value_shape = s["value"].shape
        batch_rank = len(value_shape) - len(fn.event_shape)
        if batch_rank < -data_dim or value_shape[batch_rank + data_dim] != plate.size:
            # a value not expanded over the plate (e.g. drawn from an unexpanded distribution)
            shape = list(fn.batch_shape)
            shape = [1] * (-data_dim - len(shape)) + shape
            shape[len(shape) + data_dim] = plate.size
            value_shape = torch.Size(shape) + fn.event_shape
        support = fn.support
        latents.append(LatentSite(
            name, fn.event_shape, support, bool(support.is_discrete), bool(q["fn"].has_rsample),
            bool(s["infer"].get("enumerate")), torch.Size(value_shape), data_dim))
    observed = tuple(n for n, s in model_sites.items() if s["is_observed"])
    params = tuple(n for n, s in model_tr.nodes.items() if s["type"] == "param")
    guide_params = tuple(n for n, s in guide_tr.nodes.items() if s["type"] == "param")
    return Problem(model, guide, plate, tuple(latents), observed, auxiliary, nesting,
                   params, guide_params)


def program_of(vae: Any, guide: Callable[..., Any] | None = None
               ) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """(model, guide) of ``vae`` — an object with ``.model`` and ``.guide`` (the library's
    models, :class:`~pyro_vae.infer.trainer.ModelGuide`) — with ``guide`` replacing its guide."""
    if not hasattr(vae, "model"):
        raise ConfigError(f"expected an object with .model and .guide (a pyro_vae model or "
                          f"ModelGuide(model, guide)), got {type(vae).__name__}; wrap your "
                          "functions with pyro_vae.ModelGuide(model, guide)")
    if guide is None:
        return vae.model, vae.guide
    if Signature.of(vae.model).arity >= 4:  # a guide of its own, called as the model is
        guide = ProtocolProgram.of(guide)
    return vae.model, guide
