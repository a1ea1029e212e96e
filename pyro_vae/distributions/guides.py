"""Families of the amortized posterior q_φ(z | x): the VAE's guide draws ``"z"`` from one of them.

Every family starts from the encoder's diagonal Gaussian N(μ_φ(x), diag σ²_φ(x)) and adds:

==========  ========================================================================================
``diag``    nothing: the factorized Gaussian (FFG) of the standard VAE
``full``    a full covariance, Σ = T Tᵀ with T = diag(σ) + strictly-lower entries from a linear
            layer on the context: ``MultivariateNormal(μ, scale_tril=T)``
``iaf``     K inverse autoregressive flow steps (Kingma et al. 2016), z ← μ_k(z, c) + σ_k(z, c) ⊙ z
            with autoregressive networks conditioned on the context c
            (``pyro.distributions.transforms.conditional_affine_autoregressive``)
``planar``  K planar flow steps (Rezende & Mohamed 2015), z ← z + u tanh(wᵀz + b), u, w, b from
            the context (``conditional_planar``)
==========  ========================================================================================

The context c is a learned embedding of x (and the one-hot label of a conditional model), made
by the family's own layer from the data, so that any encoder can be combined with any family.
The flows' densities are exact by the change of variables (Pyro's ``TransformedDistribution``:
log q(z_K) = log N(z_0; μ, σ²) − Σ_k log abs(det ∂z_k/∂z_{k−1})); a flow of length 0 is ``diag``.

**Per-point parameters** (for q*, the best member of the family for one data point, that the gap
report and test-time inference fit): :meth:`GuideFamily.local_parameters` returns the tensors the
amortized q is a function of for each point, one row per point and all unconstrained, and
:meth:`GuideFamily.local_posterior` builds q from them with the family's shared weights held:

==========  ========================================================================================
``diag``    μ, log σ: every diagonal Gaussian
``full``    μ, log σ and the strictly-lower entries of T: every full-covariance Gaussian
``planar``  μ, log σ and each step's (b, u, w): every planar flow of length K (Rezende & Mohamed
            2015; Cremer et al. 2018 fit flows per point the same way)
``iaf``     μ, log σ and the context c: the autoregressive networks are shared, so q* is the best
            flow *that the trained networks can express* — an upper bound on the family's gap
==========  ========================================================================================

:func:`draw` maps fixed standard-normal draws ε through q (z and log q(z) together), so two
members of a family compared on the same ε have little Monte Carlo noise in their difference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.distributions.transforms.planar import ConditionedPlanar
from torch import nn

from pyro_vae.errors import ConfigError

GUIDE_FAMILIES = ("diag", "full", "iaf", "planar")


class GuideFamily(nn.Module):
    """q(z | x) from the encoder's (μ, σ) and the data: ``family(loc, scale, x, y_onehot)``.

    :param kind: one of :data:`GUIDE_FAMILIES`.
    :param event_shape: the shape of one data point (for the context layer).
    :param latent_dim: L.
    :param flow_length: K, flow steps (``iaf``, ``planar``).
    :param context_dim: size of the context embedding of x.
    :param cond_dim: size of the one-hot label of a conditional model (0 otherwise).
    """

    def __init__(self, kind: str, event_shape: Sequence[int], latent_dim: int,
                 flow_length: int = 2, context_dim: int = 64, cond_dim: int = 0) -> None:
        super().__init__()
        if kind not in GUIDE_FAMILIES:
            raise ConfigError(f"unknown --guide {kind!r}; choose one of: "
                              f"{', '.join(GUIDE_FAMILIES)}")
        if isinstance(flow_length, bool) or not isinstance(flow_length, int) or flow_length < 0:
            raise ConfigError(f"--flow-length must be an integer ≥ 0, got {flow_length!r}; e.g. 4")
        self.kind, self.latent_dim, self.flow_length = kind, latent_dim, flow_length
        self.context: nn.Module | None = None
        self.tril: nn.Linear | None = None
        self.flows = nn.ModuleList()
        if kind == "diag" or (kind in ("iaf", "planar") and flow_length == 0):
            return
        in_features = math.prod(event_shape) + cond_dim
        self.context = nn.Sequential(nn.Linear(in_features, context_dim), nn.ELU())
        if kind == "full":
            self.tril = nn.Linear(context_dim, latent_dim * (latent_dim - 1) // 2)
            # starts next to the diagonal Gaussian (small, not zero, weights: the context layer
            # gets a gradient from the first step)
            nn.init.normal_(self.tril.weight, std=0.01)
            nn.init.zeros_(self.tril.bias)
        elif kind == "iaf":
            hidden = [max(2 * latent_dim, 32)] * 2
            self.flows.extend(T.conditional_affine_autoregressive(latent_dim, context_dim,
                                                                  hidden_dims=hidden)
                              for _ in range(flow_length))
        else:
            self.flows.extend(T.conditional_planar(latent_dim, context_dim)
                              for _ in range(flow_length))

    @property
    def is_diagonal(self) -> bool:
        """True when q is the factorized Gaussian (no parameters of its own)."""
        return self.context is None

    def forward(self, loc: torch.Tensor, scale: torch.Tensor, x: torch.Tensor,
                y_onehot: torch.Tensor | None = None) -> dist.TorchDistribution:
        """q(z | x) with batch shape (B,) and event shape (L,)."""
        base = dist.Normal(loc, scale).to_event(1)
        if self.context is None:
            return base
        c = self._context(x, y_onehot)
        if self.tril is not None:
            return dist.MultivariateNormal(loc, scale_tril=self._tril(scale, self.tril(c)))
        return dist.TransformedDistribution(base, [f.condition(c) for f in self.flows])

    def _context(self, x: torch.Tensor, y_onehot: torch.Tensor | None) -> torch.Tensor:
        h = x.reshape(x.shape[0], -1)
        if y_onehot is not None:
            h = torch.cat([h, y_onehot.to(h.dtype)], -1)
        return self.context(h)

    def local_parameters(self, loc: torch.Tensor, scale: torch.Tensor, x: torch.Tensor,
                         y_onehot: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The per-point parameters of q(z | x) for the encoder's (μ, σ) (module docstring),
        detached: ``local_posterior(local_parameters(...))`` is the amortized q."""
        params = {"loc": loc, "log_scale": scale.log()}
        if self.context is not None:
            with torch.no_grad():
                c = self._context(x, y_onehot)
                if self.tril is not None:
                    params["offdiag"] = self.tril(c)
                elif self.kind == "iaf":
                    params["context"] = c
                else:
                    for k, flow in enumerate(self.flows):
                        bias, u, w = flow.nn(c)
                        params.update({f"flow{k}_bias": bias, f"flow{k}_u": u,
                                       f"flow{k}_w": w})
        return {k: v.detach().clone() for k, v in params.items()}

    def local_posterior(self, params: dict[str, torch.Tensor]) -> dist.TorchDistribution:
        """q from per-point parameters (see :meth:`local_parameters`), batch shape (B,)."""
        loc, scale = params["loc"], params["log_scale"].exp()
        if self.tril is not None:
            return dist.MultivariateNormal(loc, scale_tril=self._tril(scale, params["offdiag"]))
        base = dist.Normal(loc, scale).to_event(1)
        if self.context is None:
            return base
        if self.kind == "iaf":
            transforms = [f.condition(params["context"]) for f in self.flows]
        else:
            transforms = [ConditionedPlanar((params[f"flow{k}_bias"], params[f"flow{k}_u"],
                                               params[f"flow{k}_w"]))
                          for k in range(len(self.flows))]
        return dist.TransformedDistribution(base, transforms)

    def _tril(self, scale: torch.Tensor, offdiag: torch.Tensor) -> torch.Tensor:
        rows, cols = torch.tril_indices(self.latent_dim, self.latent_dim, -1,
                                        device=scale.device)
        tril = torch.diag_embed(scale)  # a new tensor: filling it keeps autograd intact
        tril[..., rows, cols] = offdiag
        return tril

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, flow_length={self.flow_length}"


def draw(q: dist.TorchDistribution, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """z and log q(z) for standard-normal draws ``eps`` of shape (S, B, L) pushed through q (a
    diagonal or full-covariance Gaussian, or a flow on a diagonal Gaussian): the
    reparameterization, with common random numbers across the members of a family."""
    if isinstance(q, dist.MultivariateNormal):
        z = q.loc + (q.scale_tril @ eps.unsqueeze(-1)).squeeze(-1)
        return z, q.log_prob(z)
    base, transforms = (q.base_dist, q.transforms) if isinstance(
        q, dist.TransformedDistribution) else (q, [])
    normal = base.base_dist if isinstance(base, dist.Independent) else base
    z = normal.loc + normal.scale * eps
    log_q = base.log_prob(z)
    for t in transforms:
        z_next = t(z)
        log_q = log_q - t.log_abs_det_jacobian(z, z_next)
        z = z_next
    return z, log_q
