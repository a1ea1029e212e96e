"""A zoo of user-written Pyro models and guides, each with independent ground-truth references.

Every entry is written as a Pyro modeler writes one: plain functions ``model`` / ``guide``,
networks registered with ``pyro.module``, a plate over the data points (or deliberately none),
site names of the user's choosing. None of them uses a ``pyro_vae`` class (the one import,
:func:`pyro_vae.models.vae.kl_scale`, is the KL-weight handler of the library's protocol,
entry ``subsampled_library_protocol``). The library's tools are checked against the references:

``exact_log_px(x, y=None) -> (B,)``
    log p(x_n) per point, closed form (every model here is linear-Gaussian given its discrete
    part; the mixture sums its K Gaussian marginals).
``exact_posterior(x, y=None)``
    the exact posterior per point: a :class:`GaussianPosterior` over the concatenated latent
    sites (in ``latent_sites`` order), or a :class:`MixturePosterior` for the discrete +
    continuous mixture. Both ``sample(n)`` a dict ``site -> (n, B, ...)`` and give its
    ``log_prob`` ``(n, B)``.
``exact_elbo(x, y=None) -> (B,)``
    E_q[log p(x_n, z_n) - log q(z_n | x_n)] per point for the guide *as currently
    parameterized* (references read the modules' and the param store's current values at each
    call, so they stay valid after training). How it is computed is in ``elbo_reference``:
    ``"closed form"``, ``"enumeration + closed form"`` or ``"quadrature"`` (the flow guide:
    tensor-product Gauss-Hermite in the flow's base space, 48² nodes, converged to < 1e-4 nats
    against 96² nodes). ``tests/test_zoo.py`` checks every one against a 200k-draw Monte Carlo
    of its own trace/replay estimator.
``exact_batch_log_px(x, y=None) -> ()`` and ``exact_batch_elbo(x, y=None) -> ()``
    the same for the whole batch (sums over points where the points are independent). These are
    the only references of the two refused entries, whose points are not independent under
    the model (``global_latent``) or not declared so (``no_plate``).

All references are of the *unscaled* per-point densities at β = 1: no N/B subsampling scale,
no KL weight. They take the data as ``x`` (and labels ``y`` for ``labelled``); the entries
with non-amortized guides (``autonormal``, ``autodiagonalnormal``) have one set of variational
parameters per position of the case's batch, so their ``exact_elbo`` is for that batch only.
References are computed in float64 and returned as float64 tensors.

Call a case's model and guide as ``case.model(*case.args, **case.kwargs)``.

**Guides.** ``make_case(name, guide_init="near")`` (the default) sets each guide to the exact
posterior within its family plus small noise, like a trained guide (gaps log p(x) - ELBO of
0.05 to 1.6 nats per point); ``guide_init="random"`` leaves random weights (gaps up to ~100
nats). The model, its weights and ``x`` do not depend on ``guide_init``.

**Param store.** The networks are registered with ``pyro.module`` under common names
(``"encoder"``, ``"decoder"``, ...), as users do. Clear the param store
(``pyro.clear_param_store()``) before building a case and between cases: a stale store entry
of the same name would otherwise be loaded into the case's module by ``pyro.module``
(the references follow the module, so they stay right, but the data were drawn from the
original weights). :func:`make_case` does not touch the global RNG (it forks it).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import AffineAutoregressive
from pyro.infer import autoguide
from pyro.nn import AutoRegressiveNN
from torch import nn
from torch.distributions import constraints

from pyro_vae.models.vae import kl_scale

Tensor = torch.Tensor
Ref = Callable[..., Any]

SIGMA = 0.5  # fixed observation noise of every linear-Gaussian decoder
BATCH = 8  # points per case
LOG_2PI = math.log(2 * math.pi)

CASES = [
    "pyro_example_vae",
    "hierarchy_topdown",
    "hierarchy_bottomup",
    "code_site",
    "labelled",
    "mixture_discrete_continuous",
    "autonormal",
    "autodiagonalnormal",
    "flow_guide",
    "subsampled_library_protocol",
    "global_latent",
    "no_plate",
]


# ---------------------------------------------------------------------------------- the case
@dataclass
class ZooCase:
    """One user model and guide with its references (see the module docstring).

    :ivar name: the entry's name (one of :data:`CASES`).
    :ivar model, guide: the Pyro programs; call them with ``*args, **kwargs``.
    :ivar x: a batch of ``B`` points drawn from the model itself (float32).
    :ivar y: integer labels ``(B,)`` for ``labelled``, else ``None``.
    :ivar modules: the ``nn.Module`` s the programs register, by their ``pyro.module`` name
        (``"autoguide"`` for the AutoNormal / AutoDiagonalNormal guide objects).
    :ivar latent_sites: the model's latent sample sites in dependency (model) order.
    :ivar observed_sites: the model's observed sites.
    :ivar discrete_sites: the latent sites with a discrete support.
    :ivar data_plate: the name of the plate over the points, ``None`` if there is none.
    :ivar num_data: that plate's full size (N; B unless the plate subsamples).
    :ivar max_plate_nesting: of model and guide.
    :ivar kwargs: extra keyword arguments of both programs (``indices`` of the subsample).
    :ivar refuse_per_point: per-point tools must refuse this entry with a one-line error.
    :ivar guide_sites_outside_plate: guide sample sites outside the data plate (e.g. the
        auxiliary ``_AutoDiagonalNormal_latent``): the per-point log q is then not a sum of
        per-point site terms of the trace.
    :ivar elbo_reference: how ``exact_elbo`` is computed.
    :ivar notes: anything a generic tool must know about this entry.
    """

    name: str
    model: Callable[..., Any]
    guide: Callable[..., Any]
    x: Tensor
    y: Tensor | None
    modules: dict[str, nn.Module]
    latent_sites: tuple[str, ...]
    observed_sites: tuple[str, ...]
    data_plate: str | None
    num_data: int
    exact_log_px: Ref | None = None
    exact_posterior: Ref | None = None
    exact_elbo: Ref | None = None
    exact_batch_log_px: Ref | None = None
    exact_batch_elbo: Ref | None = None
    elbo_reference: str = "closed form"
    discrete_sites: tuple[str, ...] = ()
    max_plate_nesting: int = 1
    kwargs: dict[str, Any] = field(default_factory=dict)
    refuse_per_point: bool = False
    guide_sites_outside_plate: tuple[str, ...] = ()
    notes: str = ""

    def __post_init__(self) -> None:
        if self.exact_batch_log_px is None and self.exact_log_px is not None:
            per_point = self.exact_log_px
            self.exact_batch_log_px = lambda x, y=None: per_point(x, y).sum()
        if self.exact_batch_elbo is None and self.exact_elbo is not None:
            per_point_elbo = self.exact_elbo
            self.exact_batch_elbo = lambda x, y=None: per_point_elbo(x, y).sum()

    @property
    def args(self) -> tuple[Tensor, ...]:
        """Positional arguments of model and guide: ``(x,)`` or ``(x, y)``."""
        return (self.x,) if self.y is None else (self.x, self.y)

    @property
    def batch_size(self) -> int:
        return self.x.shape[0]


# ---------------------------------------------------------------------------------- posteriors
@dataclass
class GaussianPosterior:
    """A Gaussian per point over the concatenation of ``sites`` (each a vector of ``sizes[i]``).

    ``mean`` is ``(*batch, d)``, ``cov`` ``(*batch, d, d)``, float64, ``batch = (B,)``.
    """

    sites: tuple[str, ...]
    sizes: tuple[int, ...]
    mean: Tensor
    cov: Tensor

    def _slice(self, name: str) -> slice:
        start = sum(self.sizes[: self.sites.index(name)])
        return slice(start, start + self.sizes[self.sites.index(name)])

    def site_mean(self, name: str) -> Tensor:
        return self.mean[..., self._slice(name)]

    def site_cov(self, name: str) -> Tensor:
        s = self._slice(name)
        return self.cov[..., s, s]

    def distribution(self) -> torch.distributions.MultivariateNormal:
        return torch.distributions.MultivariateNormal(self.mean, covariance_matrix=self.cov)

    def split(self, flat: Tensor) -> dict[str, Tensor]:
        return {name: flat[..., self._slice(name)] for name in self.sites}

    def join(self, values: dict[str, Tensor]) -> Tensor:
        return torch.cat([values[name].double() for name in self.sites], -1)

    def sample(self, n: int) -> dict[str, Tensor]:
        """``n`` draws per point (global torch RNG): ``site -> (n, B, size)`` float32."""
        return {k: v.float() for k, v in self.split(self.distribution().sample((n,))).items()}

    def log_prob(self, values: dict[str, Tensor]) -> Tensor:
        return self.distribution().log_prob(self.join(values))


@dataclass
class MixturePosterior:
    """p(c | x) p(z | x, c): ``probs`` ``(B, K)``; ``components`` a :class:`GaussianPosterior`
    with batch ``(B, K)`` (the continuous posterior given each class)."""

    discrete_site: str
    probs: Tensor
    components: GaussianPosterior

    @property
    def sites(self) -> tuple[str, ...]:
        return (self.discrete_site, *self.components.sites)

    def sample(self, n: int) -> dict[str, Tensor]:
        c = torch.distributions.Categorical(probs=self.probs).sample((n,))  # (n, B)
        flat = self.components.distribution().sample((n,))  # (n, B, K, d)
        index = c[..., None, None].expand(*c.shape, 1, flat.shape[-1])
        chosen = flat.gather(-2, index).squeeze(-2)
        out = {k: v.float() for k, v in self.components.split(chosen).items()}
        out[self.discrete_site] = c
        return out

    def log_prob(self, values: dict[str, Tensor]) -> Tensor:
        c = values[self.discrete_site]
        flat = self.components.join({k: values[k] for k in self.components.sites})
        per_class = self.components.distribution().log_prob(flat.unsqueeze(-2))  # (n, B, K)
        lp = per_class + self.probs.log()
        return lp.gather(-1, c.unsqueeze(-1)).squeeze(-1)


# ---------------------------------------------------------------------------------- closed forms
def _f64(t: Tensor) -> Tensor:
    return t.detach().double()


def _mvn_logpdf(v: Tensor, mean: Tensor, cov: Tensor) -> Tensor:
    return torch.distributions.MultivariateNormal(mean, covariance_matrix=cov).log_prob(v)


def _linear_marginal(W: Tensor, b: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
    """x = W z + b + σ ε, z ~ N(0, I): the mean and covariance of x."""
    return b, W @ W.T + sigma**2 * torch.eye(W.shape[0], dtype=W.dtype)


def _linear_posterior(x: Tensor, W: Tensor, b: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
    """p(z | x) for z ~ N(0, I), x | z ~ N(W z + b, σ² I): mean (B, L), cov (L, L)."""
    L = W.shape[1]
    cov = torch.linalg.inv(torch.eye(L, dtype=W.dtype) + W.T @ W / sigma**2)
    mean = ((x - b) @ W / sigma**2) @ cov  # cov symmetric
    return mean, cov


def _expected_loglik_minus_kl(x: Tensor, W: Tensor, b: Tensor, sigma: float,
                              q_loc: Tensor, q_cov: Tensor) -> Tensor:
    """E_{q}[log N(x; W z + b, σ² I)] - KL(q ‖ N(0, I)) for q = N(q_loc, q_cov), per point.

    ``b`` may carry the batch (a class-dependent offset); ``q_cov`` is ``(..., L, L)``.
    """
    D, L = W.shape
    resid = x - q_loc @ W.T - b
    trace_term = (W @ q_cov @ W.T).diagonal(dim1=-2, dim2=-1).sum(-1)
    loglik = -0.5 * D * (LOG_2PI + math.log(sigma**2)) \
        - 0.5 * ((resid**2).sum(-1) + trace_term) / sigma**2
    kl = 0.5 * (q_cov.diagonal(dim1=-2, dim2=-1).sum(-1) + (q_loc**2).sum(-1) - L
                - torch.logdet(q_cov))
    return loglik - kl


def gaussian_joint_elbo(x: Tensor, joint_mean: Tensor, joint_cov: Tensor,
                        q_mean: Tensor, q_cov: Tensor) -> Tensor:
    """ELBO of a Gaussian q(u) = N(q_mean, q_cov) for a jointly Gaussian p(u, x).

    ``joint_mean`` / ``joint_cov`` are those of the concatenation ``(u, x)``, u first. Returns
    ``E_q[log N((u, x); joint)] + H[q]`` with the expectation in closed form:
    ``log N((q_mean, x); joint) - ½ tr(Λ_uu q_cov)``, Λ the joint precision.
    """
    d = q_mean.shape[-1]
    v = torch.cat([q_mean, x.expand(*q_mean.shape[:-1], x.shape[-1])], -1)
    precision = torch.linalg.inv(joint_cov)
    expected = _mvn_logpdf(v, joint_mean, joint_cov) \
        - 0.5 * (precision[..., :d, :d] * q_cov).sum((-1, -2))
    entropy = 0.5 * (d * (1.0 + LOG_2PI) + torch.logdet(q_cov))
    return expected + entropy


def linear_gaussian_network(blocks: list[dict[str, Any]]) -> tuple[Tensor, Tensor]:
    """Mean and covariance of a linear-Gaussian network v_k = Σ_j A_kj v_j + c_k + s_k ε_k.

    Each block: ``size``, ``parents`` (list of ``(block index, matrix (size, parent size))``,
    parents before children), ``offset`` (``(*batch, size)``) and ``var`` (``(*batch, size)``
    noise variances). Returns the mean ``(*batch, n)`` and covariance ``(*batch, n, n)`` of the
    concatenation, from v = (I - A)⁻¹ (c + ε).
    """
    sizes = [blk["size"] for blk in blocks]
    starts = np.cumsum([0, *sizes]).tolist()
    n = starts[-1]
    ref = blocks[0]["offset"]
    A = torch.zeros(n, n, dtype=ref.dtype)
    for k, blk in enumerate(blocks):
        for j, mat in blk["parents"]:
            A[starts[k]:starts[k + 1], starts[j]:starts[j + 1]] = mat
    T = torch.linalg.inv(torch.eye(n, dtype=ref.dtype) - A)
    batch = torch.broadcast_shapes(*[blk["offset"].shape[:-1] for blk in blocks],
                                   *[blk["var"].shape[:-1] for blk in blocks])
    c = torch.cat([blk["offset"].expand(*batch, blk["size"]) for blk in blocks], -1)
    var = torch.cat([blk["var"].expand(*batch, blk["size"]) for blk in blocks], -1)
    mean = c @ T.T
    cov = T @ torch.diag_embed(var) @ T.T
    return mean, cov


def condition_gaussian(mean: Tensor, cov: Tensor, d: int, x: Tensor) -> tuple[Tensor, Tensor]:
    """p(u | x) for (u, x) ~ N(mean, cov) with u the first ``d`` coordinates."""
    m_u, m_x = mean[..., :d], mean[..., d:]
    S_uu, S_ux, S_xx = cov[..., :d, :d], cov[..., :d, d:], cov[..., d:, d:]
    K = S_ux @ torch.linalg.inv(S_xx)
    post_mean = m_u + ((x - m_x).unsqueeze(-2) @ K.transpose(-1, -2)).squeeze(-2)
    post_cov = S_uu - K @ S_ux.transpose(-1, -2)
    post_cov = 0.5 * (post_cov + post_cov.transpose(-1, -2))
    return post_mean, post_cov


# ---------------------------------------------------------------------------------- networks
def _fill(module: nn.Linear, std: float, bias_std: float, bias_mean: float = 0.0) -> nn.Linear:
    with torch.no_grad():
        module.weight.normal_(0.0, std)
        module.bias.normal_(bias_mean, bias_std)
    return module


class LinearDecoder(nn.Module):
    """E[x | z] = W z + b (+ an offset per class ``c`` when ``num_classes`` is given)."""

    def __init__(self, latent_dim: int, data_dim: int, num_classes: int = 0) -> None:
        super().__init__()
        self.linear = _fill(nn.Linear(latent_dim, data_dim), 0.5, 0.5)
        self.offsets = None
        if num_classes:
            self.offsets = nn.Embedding(num_classes, data_dim)
            with torch.no_grad():
                self.offsets.weight.normal_(0.0, 1.5)

    def forward(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        out = self.linear(z)
        if self.offsets is not None:
            out = out + self.offsets(c)
        return out

    def weight64(self) -> Tensor:
        return _f64(self.linear.weight)

    def offset64(self, c: Tensor | None = None) -> Tensor:
        b = _f64(self.linear.bias)
        return b if c is None else b + _f64(self.offsets(c))


class LinearEncoder(nn.Module):
    """q(z | x [, c]) = N(E x + e [+ e_c], diag exp(F x + f [+ f_c])²): linear loc and log-scale."""

    def __init__(self, data_dim: int, latent_dim: int, num_classes: int = 0) -> None:
        super().__init__()
        self.loc = _fill(nn.Linear(data_dim, latent_dim), 0.3, 0.2)
        self.log_scale = _fill(nn.Linear(data_dim, latent_dim), 0.1, 0.1, math.log(0.5))
        self.loc_offsets = self.scale_offsets = None
        if num_classes:
            self.loc_offsets = nn.Embedding(num_classes, latent_dim)
            self.scale_offsets = nn.Embedding(num_classes, latent_dim)
            with torch.no_grad():
                self.loc_offsets.weight.normal_(0.0, 0.5)
                self.scale_offsets.weight.normal_(0.0, 0.2)

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        loc, log_scale = self.loc(x), self.log_scale(x)
        if c is not None:
            loc = loc + self.loc_offsets(c)
            log_scale = log_scale + self.scale_offsets(c)
        return loc, log_scale.exp()


def _draw_linear(dec: LinearDecoder, B: int, gen: torch.Generator,
                 c: Tensor | None = None) -> Tensor:
    """B points x = dec(z [, c]) + σ ε, z ~ N(0, I)."""
    with torch.no_grad():
        z = torch.randn(B, dec.linear.in_features, generator=gen)
        mean = dec(z, c) if c is not None else dec(z)
        return mean + SIGMA * torch.randn(mean.shape, generator=gen)


def _diag_cov(scale: Tensor) -> Tensor:
    return torch.diag_embed(_f64(scale) ** 2)


# ------------------------------------------------------------------------ near-optimal guides
NEAR_NOISE = 0.05  # std of the noise on the exact-posterior loc weights ("near")
SCALE_NOISE = 0.1  # std of the noise on the log-scales ("near")


def _regress(mean: Tensor, cov: Tensor, target: Sequence[int], given: Sequence[int]
             ) -> tuple[Tensor, Tensor, Tensor]:
    """E[v_t | v_g] = intercept + coef v_g and Cov[v_t | v_g] for v ~ N(mean, cov)."""
    t, g = list(target), list(given)
    S_gg, S_tg = cov[g][:, g], cov[t][:, g]
    coef = S_tg @ torch.linalg.inv(S_gg)
    return coef, mean[t] - coef @ mean[g], cov[t][:, t] - coef @ S_tg.T


def _perturbed(t: Tensor, gen: torch.Generator, std: float = NEAR_NOISE) -> Tensor:
    return (t + std * torch.randn(t.shape, generator=gen, dtype=t.dtype)).float()


def _set_encoder(enc: LinearEncoder, gen: torch.Generator, loc_weight: Tensor, loc_bias: Tensor,
                 var: Tensor, loc_offsets: Tensor | None = None) -> None:
    """loc = loc_weight x + loc_bias [+ loc_offsets[c]], scale = sqrt(var), each perturbed."""
    with torch.no_grad():
        enc.loc.weight.copy_(_perturbed(loc_weight, gen))
        enc.loc.bias.copy_(_perturbed(loc_bias, gen))
        enc.log_scale.weight.copy_(_perturbed(torch.zeros_like(loc_weight), gen, 0.01))
        enc.log_scale.bias.copy_(_perturbed(0.5 * var.log(), gen, SCALE_NOISE))
        if enc.loc_offsets is not None:
            enc.loc_offsets.weight.copy_(_perturbed(loc_offsets, gen))
            enc.scale_offsets.weight.zero_()


def _posterior_map(dec: LinearDecoder) -> tuple[Tensor, Tensor]:
    """p(z | x [, c]) = N(M (x - b_c), S) of z ~ N(0, I), x | z ~ N(W z + b_c, σ² I): M, S."""
    W = dec.weight64()
    S = torch.linalg.inv(torch.eye(W.shape[1], dtype=W.dtype) + W.T @ W / SIGMA**2)
    return S @ W.T / SIGMA**2, S


def _near_single(enc: LinearEncoder, dec: LinearDecoder, gen: torch.Generator,
                 extra_offset: Tensor | float = 0.0) -> None:
    """The encoder set to the exact posterior (diagonal scales), perturbed."""
    M, S = _posterior_map(dec)
    offsets = None if dec.offsets is None else -(_f64(dec.offsets.weight) @ M.T)
    _set_encoder(enc, gen, M, -M @ (dec.offset64() + extra_offset), S.diagonal(), offsets)


# ---------------------------------------------------------------------------------- references
def _single_latent_refs(dec: LinearDecoder, q_params: Callable[[Tensor, Tensor | None], Any],
                        site: str, flatten: bool = False) -> dict[str, Ref]:
    """References of z ~ N(0, I), x | z ~ N(dec(z[, y]), σ² I) with a Gaussian guide whose
    per-point (loc, cov) ``q_params(x, y)`` returns (float64)."""

    def prep(x: Tensor) -> Tensor:
        x = _f64(x)
        return x.reshape(x.shape[0], -1) if flatten else x

    def offset(y: Tensor | None) -> Tensor:
        return dec.offset64(y)

    def log_px(x: Tensor, y: Tensor | None = None) -> Tensor:
        m, C = _linear_marginal(dec.weight64(), offset(y), SIGMA)
        return _mvn_logpdf(prep(x), m, C)

    def posterior(x: Tensor, y: Tensor | None = None) -> GaussianPosterior:
        x = prep(x)
        mean, cov = _linear_posterior(x, dec.weight64(), offset(y), SIGMA)
        return GaussianPosterior((site,), (mean.shape[-1],), mean,
                                 cov.expand(x.shape[0], *cov.shape))

    def elbo(x: Tensor, y: Tensor | None = None) -> Tensor:
        q_loc, q_cov = q_params(x, y)
        return _expected_loglik_minus_kl(prep(x), dec.weight64(), offset(y), SIGMA, q_loc, q_cov)

    return {"exact_log_px": log_px, "exact_posterior": posterior, "exact_elbo": elbo}


def _amortized(enc: LinearEncoder, flatten: bool = False) -> Callable[..., Any]:
    def q_params(x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            loc, scale = enc(x.reshape(x.shape[0], -1) if flatten else x, y)
        return _f64(loc), _diag_cov(scale)

    return q_params


# ---------------------------------------------------------------------------------- entries
def _pyro_example_vae(gen: torch.Generator, near: bool, L: int = 2, D: int = 4) -> ZooCase:
    dec, enc = LinearDecoder(L, D), LinearEncoder(D, L)
    z_dim = L

    # exactly the form of pyro/examples/vae/vae.py (the decoder made linear-Gaussian)
    def model(x):
        pyro.module("decoder", dec)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], z_dim)))
            z_scale = x.new_ones(torch.Size((x.shape[0], z_dim)))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            loc_img = dec.forward(z)
            pyro.sample("obs", dist.Normal(loc_img, SIGMA).to_event(1), obs=x.reshape(-1, D))

    def guide(x):
        pyro.module("encoder", enc)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = enc.forward(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))

    x = _draw_linear(dec, BATCH, gen)
    if near:
        _near_single(enc, dec, gen)
    refs = _single_latent_refs(dec, _amortized(enc), "latent")
    return ZooCase("pyro_example_vae", model, guide, x, None,
                   {"decoder": dec, "encoder": enc}, ("latent",), ("obs",), "data", BATCH,
                   **refs, notes="model(x) / guide(x) only; sites 'latent', 'obs'")


class _Hierarchy(nn.Module):
    """z2 ~ N(0, I), z1 | z2 ~ N(A z2 + a, τ² I), x | z1 ~ N(W z1 + b, σ² I)."""

    def __init__(self, L2: int, L1: int, D: int) -> None:
        super().__init__()
        self.top = _fill(nn.Linear(L2, L1), 0.7, 0.3)
        self.bottom = _fill(nn.Linear(L1, D), 0.5, 0.5)
        self.tau = 0.6

    def joint(self) -> tuple[Tensor, Tensor]:
        """Mean and covariance of (z2, z1, x)."""
        L2, L1, D = self.top.in_features, self.top.out_features, self.bottom.out_features
        one = torch.ones((), dtype=torch.float64)
        return linear_gaussian_network([
            {"size": L2, "parents": [], "offset": torch.zeros(L2, dtype=torch.float64),
             "var": one.expand(L2)},
            {"size": L1, "parents": [(0, _f64(self.top.weight))], "offset": _f64(self.top.bias),
             "var": (self.tau**2 * one).expand(L1)},
            {"size": D, "parents": [(1, _f64(self.bottom.weight))],
             "offset": _f64(self.bottom.bias), "var": (SIGMA**2 * one).expand(D)},
        ])


class _BottomUp(nn.Module):
    """q(z1 | x) = N(E1 x + e1, diag s1(x)²), q(z2 | z1) = N(E2 z1 + e2, diag s2²)."""

    def __init__(self, D: int, L1: int, L2: int) -> None:
        super().__init__()
        self.z1 = LinearEncoder(D, L1)
        self.z2_loc = _fill(nn.Linear(L1, L2), 0.4, 0.2)
        self.z2_log_scale = nn.Parameter(torch.log(0.6 + 0.1 * torch.rand(L2)))

    def q_joint(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """q's mean and covariance of (z2, z1) per point (z2 first, the model's order)."""
        with torch.no_grad():
            loc1, scale1 = self.z1(x)
        L1, L2 = self.z2_loc.in_features, self.z2_loc.out_features
        # order the network as z1 then z2 (z2's parent), then permute to (z2, z1)
        mean, cov = linear_gaussian_network([
            {"size": L1, "parents": [], "offset": _f64(loc1), "var": _f64(scale1) ** 2},
            {"size": L2, "parents": [(0, _f64(self.z2_loc.weight))],
             "offset": _f64(self.z2_loc.bias), "var": _f64(self.z2_log_scale).exp() ** 2},
        ])
        perm = list(range(L1, L1 + L2)) + list(range(L1))
        return mean[..., perm], cov[..., perm, :][..., perm]


class _TopDown(nn.Module):
    """q(z2 | x) = N(F2 x + f2, diag t2(x)²), q(z1 | x, z2) = N(F1 x + G z2 + f1, diag t1(x)²)."""

    def __init__(self, D: int, L1: int, L2: int) -> None:
        super().__init__()
        self.z2 = LinearEncoder(D, L2)
        self.z1 = LinearEncoder(D, L1)
        self.z1_from_z2 = nn.Parameter(0.5 * torch.randn(L1, L2))

    def z1_params(self, x: Tensor, z2: Tensor) -> tuple[Tensor, Tensor]:
        loc, scale = self.z1(x)
        return loc + z2 @ self.z1_from_z2.T, scale

    def q_joint(self, x: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            loc2, scale2 = self.z2(x)
            loc1, scale1 = self.z1(x)
        L2 = self.z1_from_z2.shape[1]
        return linear_gaussian_network([
            {"size": L2, "parents": [], "offset": _f64(loc2), "var": _f64(scale2) ** 2},
            {"size": self.z1_from_z2.shape[0], "parents": [(0, _f64(self.z1_from_z2))],
             "offset": _f64(loc1), "var": _f64(scale1) ** 2},
        ])


def _hierarchy(gen: torch.Generator, near: bool, top_down: bool) -> ZooCase:
    L2, L1, D = 2, 3, 5
    hier = _Hierarchy(L2, L1, D)
    q: nn.Module = _TopDown(D, L1, L2) if top_down else _BottomUp(D, L1, L2)

    def model(x):
        pyro.module("hierarchy", hier)
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(x.new_zeros(x.shape[0], L2), 1.0).to_event(1))
            z1 = pyro.sample("z1", dist.Normal(hier.top(z2), hier.tau).to_event(1))
            pyro.sample("x", dist.Normal(hier.bottom(z1), SIGMA).to_event(1), obs=x)

    if top_down:
        def guide(x):
            pyro.module("encoder", q)
            with pyro.plate("data", x.shape[0]):
                loc2, scale2 = q.z2(x)
                z2 = pyro.sample("z2", dist.Normal(loc2, scale2).to_event(1))
                loc1, scale1 = q.z1_params(x, z2)
                pyro.sample("z1", dist.Normal(loc1, scale1).to_event(1))
    else:
        def guide(x):
            pyro.module("encoder", q)
            with pyro.plate("data", x.shape[0]):
                loc1, scale1 = q.z1(x)
                z1 = pyro.sample("z1", dist.Normal(loc1, scale1).to_event(1))
                pyro.sample("z2", dist.Normal(q.z2_loc(z1), q.z2_log_scale.exp()).to_event(1))

    with torch.no_grad():
        z2 = torch.randn(BATCH, L2, generator=gen)
        z1 = hier.top(z2) + hier.tau * torch.randn(BATCH, L1, generator=gen)
        x = hier.bottom(z1) + SIGMA * torch.randn(BATCH, D, generator=gen)

    d = L1 + L2
    if near:  # q set to the model's own conditionals (diagonal scales), perturbed
        mean, cov = hier.joint()
        z2_idx, z1_idx, x_idx = range(L2), range(L2, d), range(d, d + D)
        if top_down:
            coef, icpt, var = _regress(mean, cov, z2_idx, x_idx)
            _set_encoder(q.z2, gen, coef, icpt, var.diagonal())
            coef, icpt, var = _regress(mean, cov, z1_idx, [*z2_idx, *x_idx])
            _set_encoder(q.z1, gen, coef[:, L2:], icpt, var.diagonal())
            with torch.no_grad():
                q.z1_from_z2.copy_(_perturbed(coef[:, :L2], gen))
        else:
            coef, icpt, var = _regress(mean, cov, z1_idx, x_idx)
            _set_encoder(q.z1, gen, coef, icpt, var.diagonal())
            coef, icpt, var = _regress(mean, cov, z2_idx, z1_idx)  # z2 ⊥ x | z1
            with torch.no_grad():
                q.z2_loc.weight.copy_(_perturbed(coef, gen))
                q.z2_loc.bias.copy_(_perturbed(icpt, gen))
                q.z2_log_scale.copy_(_perturbed(0.5 * var.diagonal().log(), gen, SCALE_NOISE))

    def log_px(x, y=None):
        mean, cov = hier.joint()
        return _mvn_logpdf(_f64(x), mean[d:], cov[d:, d:])

    def posterior(x, y=None):
        mean, cov = hier.joint()
        pm, pc = condition_gaussian(mean, cov, d, _f64(x))
        return GaussianPosterior(("z2", "z1"), (L2, L1), pm, pc.expand(x.shape[0], d, d))

    def elbo(x, y=None):
        mean, cov = hier.joint()
        q_mean, q_cov = q.q_joint(x)
        return gaussian_joint_elbo(_f64(x), mean, cov, q_mean, q_cov)

    name = "hierarchy_topdown" if top_down else "hierarchy_bottomup"
    order = "q(z2|x) q(z1|x,z2)" if top_down else "q(z1|x) q(z2|z1)"
    return ZooCase(name, model, guide, x, None, {"hierarchy": hier, "encoder": q},
                   ("z2", "z1"), ("x",), "data", BATCH, exact_log_px=log_px,
                   exact_posterior=posterior, exact_elbo=elbo,
                   notes=f"two latent sites, guide {order}; exact_posterior over (z2, z1)")


def _code_site(gen: torch.Generator, near: bool) -> ZooCase:
    L, shape = 3, (2, 2)
    D = 4
    dec, enc = LinearDecoder(L, D), LinearEncoder(D, L)

    def model(x):
        pyro.module("generator", dec)
        with pyro.plate("batch", x.shape[0]):
            code = pyro.sample("code", dist.Normal(x.new_zeros(x.shape[0], L), 1.0).to_event(1))
            mean = dec(code).reshape(*code.shape[:-1], *shape)
            pyro.sample("pixels", dist.Normal(mean, SIGMA).to_event(2), obs=x)

    def guide(x):
        pyro.module("recognition", enc)
        with pyro.plate("batch", x.shape[0]):
            loc, scale = enc(x.reshape(x.shape[0], -1))
            pyro.sample("code", dist.Normal(loc, scale).to_event(1))

    x = _draw_linear(dec, BATCH, gen).reshape(BATCH, *shape)
    if near:
        _near_single(enc, dec, gen)
    refs = _single_latent_refs(dec, _amortized(enc, flatten=True), "code", flatten=True)
    return ZooCase("code_site", model, guide, x, None, {"generator": dec, "recognition": enc},
                   ("code",), ("pixels",), "batch", BATCH, **refs,
                   notes="plate 'batch', sites 'code' (L=3) and 'pixels' of event shape (2, 2)")


def _labelled(gen: torch.Generator, near: bool) -> ZooCase:
    L, D, K = 2, 4, 3
    dec, enc = LinearDecoder(L, D, num_classes=K), LinearEncoder(D, L, num_classes=K)

    def model(x, y):
        pyro.module("decoder", dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], L), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(dec(z, y), SIGMA).to_event(1), obs=x)

    def guide(x, y):
        pyro.module("encoder", enc)
        with pyro.plate("data", x.shape[0]):
            loc, scale = enc(x, y)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    y = torch.randint(0, K, (BATCH,), generator=gen)
    x = _draw_linear(dec, BATCH, gen, y)
    if near:
        _near_single(enc, dec, gen)
    refs = _single_latent_refs(dec, _amortized(enc), "z")
    for key in ("exact_log_px", "exact_posterior", "exact_elbo"):
        refs[key] = _needs_labels(refs[key])
    return ZooCase("labelled", model, guide, x, y, {"decoder": dec, "encoder": enc},
                   ("z",), ("x",), "data", BATCH, **refs,
                   notes="model(x, y) / guide(x, y); y in {0,1,2} an input, not a site; "
                         "exact_log_px is log p(x | y)")


def _needs_labels(fn: Ref) -> Ref:
    def wrapped(x, y=None):
        if y is None:
            raise ValueError("the labelled case's references need the labels y")
        return fn(x, y)

    return wrapped


class _MixturePrior(nn.Module):
    def __init__(self, K: int, L: int, D: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(0.5 * torch.randn(K))
        self.decoder = LinearDecoder(L, D, num_classes=K)


class _MixtureGuide(nn.Module):
    def __init__(self, D: int, L: int, K: int) -> None:
        super().__init__()
        self.classify = _fill(nn.Linear(D, K), 0.5, 0.3)
        self.latent = LinearEncoder(D, L, num_classes=K)


def _mixture(gen: torch.Generator, near: bool) -> ZooCase:
    K, L, D = 3, 2, 4
    prior, q = _MixturePrior(K, L, D), _MixtureGuide(D, L, K)
    dec = prior.decoder

    def model(x):
        pyro.module("mixture", prior)
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(logits=prior.logits))
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], L), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(dec(z, c), SIGMA).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", q)
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(logits=q.classify(x)))
            loc, scale = q.latent(x, c)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    with torch.no_grad():
        c = torch.multinomial(torch.softmax(prior.logits, -1), BATCH, replacement=True,
                              generator=gen)
    x = _draw_linear(dec, BATCH, gen, c)
    classes = torch.arange(K)
    if near:  # p(c | x) is a linear softmax (shared covariance), p(z | x, c) linear
        _near_single(q.latent, dec, gen)
        means = dec.offset64(classes)  # (K, D)
        W = dec.weight64()
        prec = torch.linalg.inv(W @ W.T + SIGMA**2 * torch.eye(D, dtype=W.dtype))
        weight = means @ prec
        bias = -0.5 * (weight * means).sum(-1) + torch.log_softmax(_f64(prior.logits), -1)
        with torch.no_grad():
            q.classify.weight.copy_(_perturbed(weight, gen))
            q.classify.bias.copy_(_perturbed(bias, gen))

    def log_prior():
        return torch.log_softmax(_f64(prior.logits), -1)

    def per_class_log_px(x):  # (B, K)
        W = dec.weight64()
        x = _f64(x).unsqueeze(-2)
        m, C = _linear_marginal(W, dec.offset64(classes), SIGMA)
        return _mvn_logpdf(x, m, C)

    def log_px(x, y=None):
        return torch.logsumexp(log_prior() + per_class_log_px(x), -1)

    def posterior(x, y=None):
        lp = log_prior() + per_class_log_px(x)
        probs = torch.softmax(lp, -1)
        mean, cov = _linear_posterior(_f64(x).unsqueeze(-2), dec.weight64(),
                                      dec.offset64(classes), SIGMA)
        comps = GaussianPosterior(("z",), (L,), mean, cov.expand(*mean.shape, L))
        return MixturePosterior("c", probs, comps)

    def elbo(x, y=None):
        with torch.no_grad():
            log_q_c = torch.log_softmax(_f64(q.classify(x)), -1)  # (B, K)
            loc, scale = q.latent(x.unsqueeze(-2), classes)  # (B, K, L)
        inner = _expected_loglik_minus_kl(_f64(x).unsqueeze(-2), dec.weight64(),
                                          dec.offset64(classes), SIGMA, _f64(loc),
                                          _diag_cov(scale))
        return (log_q_c.exp() * (log_prior() - log_q_c + inner)).sum(-1)

    return ZooCase("mixture_discrete_continuous", model, guide, x, None,
                   {"mixture": prior, "encoder": q}, ("c", "z"), ("x",), "data", BATCH,
                   exact_log_px=log_px, exact_posterior=posterior, exact_elbo=elbo,
                   elbo_reference="enumeration + closed form", discrete_sites=("c",),
                   notes="c ~ Categorical(K=3) not marked for enumeration (sampled, score "
                         "function under Trace_ELBO); wrap the guide in config_enumerate to "
                         "enumerate it; the programs are enumeration-safe")


def _linear_model(dec: LinearDecoder, L: int, site: str = "latent", obs: str = "obs"):
    def model(x):
        pyro.module("decoder", dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample(site, dist.Normal(x.new_zeros(x.shape[0], L), 1.0).to_event(1))
            pyro.sample(obs, dist.Normal(dec(z), SIGMA).to_event(1), obs=x)

    return model


def _autonormal(gen: torch.Generator, near: bool, diagonal: bool) -> ZooCase:
    L, D = 2, 4
    dec = LinearDecoder(L, D)
    model = _linear_model(dec, L, "z", "x")
    x = _draw_linear(dec, BATCH, gen)
    if diagonal:
        guide = autoguide.AutoDiagonalNormal(model, init_loc_fn=autoguide.init_to_sample,
                                             init_scale=0.3)
    else:
        guide = autoguide.AutoNormal(model, init_loc_fn=autoguide.init_to_sample,
                                     init_scale=0.3)
    guide(x)  # builds the prototype trace and the parameters (one per point)
    with torch.no_grad():
        if near:  # the exact posterior's means and marginal scales, perturbed
            M, S = _posterior_map(dec)
            loc = _perturbed((_f64(x) - dec.offset64()) @ M.T, gen)
            scale = S.diagonal().sqrt().float().expand(BATCH, L) \
                * (0.8 + 0.4 * torch.rand(BATCH, L, generator=gen))
        else:  # random locs (init_to_sample), scales differing per coordinate
            loc = guide.loc.reshape(BATCH, L) if diagonal else guide.locs.z
            scale = 0.3 * (0.5 + torch.rand(BATCH, L, generator=gen))
        if diagonal:
            guide.loc.copy_(loc.reshape(-1))
            guide.scale = scale.reshape(-1)
        else:
            guide.locs.z = loc
            guide.scales.z = scale

    def q_params(x, y=None):
        if x.shape[0] != BATCH:
            raise ValueError(f"the {guide.__class__.__name__} guide has parameters for exactly "
                             f"the case's {BATCH} points")
        with torch.no_grad():
            if diagonal:
                loc, scale = guide.loc, guide.scale  # the flat (B * L,) latent, row-major
                loc, scale = loc.reshape(BATCH, L), scale.reshape(BATCH, L)
            else:
                loc, scale = guide.locs.z, guide.scales.z
        return _f64(loc), _diag_cov(scale)

    refs = _single_latent_refs(dec, q_params, "z")
    if diagonal:
        name, aux = "autodiagonalnormal", "_AutoDiagonalNormal_latent"
        notes = ("guide samples one auxiliary global site '_AutoDiagonalNormal_latent' of "
                 "shape (B*L,) outside the plate (is_auxiliary), then a Delta at 'z' inside the "
                 "plate (log_density 0 for real support); per-point log q is not in the trace")
        outside: tuple[str, ...] = (aux,)
    else:
        name = "autonormal"
        notes = ("guide samples the auxiliary 'z_unconstrained' (is_auxiliary, inside the "
                 "plate) and then a Delta at 'z' carrying the log|det J| (0 here)")
        outside = ()
    return ZooCase(name, model, guide, x, None, {"decoder": dec, "autoguide": guide},
                   ("z",), ("x",), "data", BATCH, **refs, guide_sites_outside_plate=outside,
                   notes=notes)


class _FlowGuide(nn.Module):
    """q(z | x): z = T(u), u ~ N(loc(x), diag scale(x)²), T an affine autoregressive flow."""

    def __init__(self, D: int, L: int, flow_gain: float) -> None:
        super().__init__()
        self.base = LinearEncoder(D, L)
        arn = AutoRegressiveNN(L, [8], nonlinearity=nn.Tanh())
        with torch.no_grad():
            for p in arn.parameters():
                p.mul_(flow_gain)
        self.flow = AffineAutoregressive(arn)

    def distribution(self, x: Tensor) -> dist.TransformedDistribution:
        loc, scale = self.base(x)
        return dist.TransformedDistribution(dist.Normal(loc, scale).to_event(1), [self.flow])


def gauss_hermite_expectation(fn: Callable[[Tensor], Tensor], loc: Tensor, scale: Tensor,
                              num_nodes: int = 48) -> Tensor:
    """E_{u ~ N(loc, diag scale²)} fn(u) for a 2-d u by tensor-product Gauss-Hermite quadrature.

    ``loc`` / ``scale`` are ``(B, 2)`` float64; ``fn`` maps ``(n, B, 2)`` to ``(n, B)``.
    """
    t, w = np.polynomial.hermite.hermgauss(num_nodes)
    t, w = torch.as_tensor(t), torch.as_tensor(w) / math.sqrt(math.pi)
    grid = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    weights = (w[:, None] * w[None, :]).reshape(-1)
    u = loc + math.sqrt(2.0) * scale * grid[:, None, :]
    return (weights[:, None] * fn(u)).sum(0)


def _flow(gen: torch.Generator, near: bool) -> ZooCase:
    L, D = 2, 4
    dec = LinearDecoder(L, D)
    q = _FlowGuide(D, L, flow_gain=0.5 if near else 1.5)
    model = _linear_model(dec, L, "z", "x")

    def guide(x):
        pyro.module("flow_guide", q)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", q.distribution(x))

    x = _draw_linear(dec, BATCH, gen)
    if near:
        _near_single(q.base, dec, gen)
    refs = _single_latent_refs(dec, _amortized(q.base), "z")

    def elbo(x, y=None, num_nodes=48):
        src = q.flow
        flow = AffineAutoregressive(copy.deepcopy(src.arn).double(),
                                    log_scale_min_clip=src.log_scale_min_clip,
                                    log_scale_max_clip=src.log_scale_max_clip,
                                    sigmoid_bias=src.sigmoid_bias, stable=src.stable)
        with torch.no_grad():
            loc, scale = q.base(x)
        loc, scale, xd = _f64(loc), _f64(scale), _f64(x)
        W, b = dec.weight64(), dec.offset64()

        def integrand(u):  # log p(x, T(u)) + log|det dT/du| (the base entropy is added below)
            with torch.no_grad():
                z = flow(u)
                log_det = flow.log_abs_det_jacobian(u, z)
            log_pz = -0.5 * (z**2).sum(-1) - 0.5 * L * LOG_2PI
            resid = xd - z @ W.T - b
            log_px_z = -0.5 * (resid**2).sum(-1) / SIGMA**2 \
                - 0.5 * D * (LOG_2PI + math.log(SIGMA**2))
            return log_pz + log_px_z + log_det

        base_entropy = (0.5 * (1.0 + LOG_2PI) + scale.log()).sum(-1)
        return gauss_hermite_expectation(integrand, loc, scale, num_nodes) + base_entropy

    refs["exact_elbo"] = elbo
    return ZooCase("flow_guide", model, guide, x, None, {"decoder": dec, "flow_guide": q},
                   ("z",), ("x",), "data", BATCH, **refs, elbo_reference="quadrature",
                   notes="q(z|x) = TransformedDistribution(Normal(loc(x), scale(x)).to_event(1),"
                         " [AffineAutoregressive(tanh net)]); exact_elbo(x, num_nodes=48) by "
                         "Gauss-Hermite quadrature in the base space (L = 2)")


def _subsampled(gen: torch.Generator, near: bool) -> ZooCase:
    L, D, N = 2, 4, 64
    dec, enc = LinearDecoder(L, D), LinearEncoder(D, L)

    def plate(x, indices):
        if indices is not None:
            return pyro.plate("data", size=N, subsample=indices)
        return pyro.plate("data", size=N, subsample_size=x.shape[0])

    def model(x, y=None, indices=None, beta=1.0):
        pyro.module("decoder", dec)
        with plate(x, indices):
            with kl_scale(beta):
                z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], L), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(dec(z), SIGMA).to_event(1), obs=x)

    def guide(x, y=None, indices=None, beta=1.0):
        pyro.module("encoder", enc)
        with plate(x, indices):
            loc, scale = enc(x)
            with kl_scale(beta):
                pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    x = _draw_linear(dec, BATCH, gen)
    indices = torch.randperm(N, generator=gen)[:BATCH]
    if near:
        _near_single(enc, dec, gen)
    refs = _single_latent_refs(dec, _amortized(enc), "z")
    return ZooCase("subsampled_library_protocol", model, guide, x, None,
                   {"decoder": dec, "encoder": enc}, ("z",), ("x",), "data", N, **refs,
                   kwargs={"indices": indices},
                   notes="model(x, y=None, indices=None, beta=1.0), plate('data', size=64, "
                         "subsample=indices): site scale N/B = 8 (and β at 'z'); references "
                         "are per point, unscaled, β = 1")


def _global_latent(gen: torch.Generator, near: bool) -> ZooCase:
    L, D = 2, 4
    dec, enc = LinearDecoder(L, D), LinearEncoder(D, L)
    init_loc, init_scale = torch.tensor(0.3), torch.tensor(0.4)  # "random"

    def mu_params():
        return (pyro.param("mu_loc", init_loc),
                pyro.param("mu_scale", init_scale, constraint=constraints.positive))

    def model(x):
        pyro.module("decoder", dec)
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))  # a shared offset, outside the plate
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], L), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(dec(z) + mu.unsqueeze(-1), SIGMA).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", enc)
        loc, scale = mu_params()
        pyro.sample("mu", dist.Normal(loc, scale))
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = enc(x)
            pyro.sample("z", dist.Normal(z_loc, z_scale).to_event(1))

    with torch.no_grad():
        mu = torch.randn((), generator=gen)
        x = _draw_linear(dec, BATCH, gen) + mu
    if near:  # q(mu) = p(mu | x); q(z | x) = p(z | x, mu = E[mu | x]); perturbed
        m, C = _linear_marginal(dec.weight64(), dec.offset64(), SIGMA)
        ones_prec = torch.linalg.inv(C).sum(0)  # 1ᵀ C⁻¹
        post_prec = 1.0 + BATCH * ones_prec.sum()
        post_mean = ((_f64(x) - m) @ ones_prec).sum() / post_prec
        init_loc = _perturbed(post_mean, gen)
        spread = 0.8 + 0.4 * torch.rand((), generator=gen, dtype=torch.float64)
        init_scale = (post_prec.rsqrt() * spread).float()
        _near_single(enc, dec, gen, extra_offset=post_mean)

    def batch_log_px(x, y=None):
        xd = _f64(x)
        B = xd.shape[0]
        m, C = _linear_marginal(dec.weight64(), dec.offset64(), SIGMA)
        cov = torch.block_diag(*[C] * B) + torch.ones(B * D, B * D, dtype=torch.float64)
        return _mvn_logpdf(xd.reshape(-1), m.repeat(B), cov)

    def batch_elbo(x, y=None):
        xd = _f64(x)
        with torch.no_grad():
            m, s = (_f64(t) for t in mu_params())
            loc, scale = (_f64(t) for t in enc(x))
        W = dec.weight64()
        resid = xd - loc @ W.T - dec.offset64() - m
        sq = (resid**2).sum() + (scale**2 @ (W**2).T).sum() + xd.shape[0] * D * s**2
        loglik = -0.5 * xd.numel() * (LOG_2PI + math.log(SIGMA**2)) - 0.5 * sq / SIGMA**2
        kl_mu = 0.5 * (s**2 + m**2 - 1.0) - s.log()
        kl_z = (0.5 * (scale**2 + loc**2 - 1.0) - scale.log()).sum()
        return loglik - kl_mu - kl_z

    return ZooCase("global_latent", model, guide, x, None, {"decoder": dec, "encoder": enc},
                   ("mu", "z"), ("x",), "data", BATCH, exact_batch_log_px=batch_log_px,
                   exact_batch_elbo=batch_elbo, refuse_per_point=True,
                   guide_sites_outside_plate=("mu",),
                   notes="global latent 'mu' (scalar) outside the plate; guide params "
                         "pyro.param('mu_loc'), pyro.param('mu_scale'); per-point tools must "
                         "refuse; only batch references")


def _no_plate(gen: torch.Generator, near: bool) -> ZooCase:
    L, D = 2, 4
    dec, enc = LinearDecoder(L, D), LinearEncoder(D, L)

    def model(x):
        pyro.module("decoder", dec)
        z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], L), 1.0).to_event(2))
        pyro.sample("x", dist.Normal(dec(z), SIGMA).to_event(2), obs=x)

    def guide(x):
        pyro.module("encoder", enc)
        loc, scale = enc(x)
        pyro.sample("z", dist.Normal(loc, scale).to_event(2))

    x = _draw_linear(dec, BATCH, gen)
    if near:
        _near_single(enc, dec, gen)
    refs = _single_latent_refs(dec, _amortized(enc), "z")
    per_point_log_px, per_point_elbo = refs["exact_log_px"], refs["exact_elbo"]
    return ZooCase("no_plate", model, guide, x, None, {"decoder": dec, "encoder": enc},
                   ("z",), ("x",), None, BATCH,
                   exact_batch_log_px=lambda x, y=None: per_point_log_px(x).sum(),
                   exact_batch_elbo=lambda x, y=None: per_point_elbo(x).sum(),
                   max_plate_nesting=0, refuse_per_point=True,
                   notes="no plate: sites of event shape (B, L) and (B, D) (to_event(2)); "
                         "per-point tools must refuse; only batch references")


_BUILDERS: dict[str, Callable[[torch.Generator, bool], ZooCase]] = {
    "pyro_example_vae": _pyro_example_vae,
    "hierarchy_topdown": lambda g, near: _hierarchy(g, near, top_down=True),
    "hierarchy_bottomup": lambda g, near: _hierarchy(g, near, top_down=False),
    "code_site": _code_site,
    "labelled": _labelled,
    "mixture_discrete_continuous": _mixture,
    "autonormal": lambda g, near: _autonormal(g, near, diagonal=False),
    "autodiagonalnormal": lambda g, near: _autonormal(g, near, diagonal=True),
    "flow_guide": _flow,
    "subsampled_library_protocol": _subsampled,
    "global_latent": _global_latent,
    "no_plate": _no_plate,
}
assert list(_BUILDERS) == CASES


def make_case(name: str, seed: int = 0, guide_init: str = "near") -> ZooCase:
    """Build the zoo entry ``name`` (one of :data:`CASES`) with weights and data from ``seed``.

    :param guide_init: ``"near"`` (default): the guide's parameters are those of the exact
        posterior (its diagonal-scale, or per-site-conditional, version) plus small noise, like
        a trained guide: gaps log p(x) - ELBO of about 0.05 to 1.6 nats per point (seed 0).
        ``"random"``: random weights, gaps of about 0.2 to 100 nats per point. The model, its
        weights and the data ``x`` are the same for both.

    Deterministic in ``(name, seed, guide_init)`` (each entry draws from its own stream, so
    entries with the same architecture still differ); the global torch RNG is forked, not
    advanced. Clear the param store first (see the module docstring); the autoguide entries
    run their guide once here, which registers their parameters and the decoder's.
    """
    if name not in _BUILDERS:
        raise KeyError(f"no zoo case {name!r}; the cases are {', '.join(CASES)}")
    if guide_init not in ("near", "random"):
        raise ValueError(f"guide_init must be 'near' or 'random', got {guide_init!r}")
    stream = 1009 * seed + CASES.index(name)  # distinct weights and data per case and seed
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream)
        gen = torch.Generator().manual_seed(stream + 104729)
        return _BUILDERS[name](gen, guide_init == "near")
