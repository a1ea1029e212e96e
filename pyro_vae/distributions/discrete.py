"""Distributions of discrete latent codes: enumerable products, and their Concrete relaxations.

**Binary and categorical codes.** A code of K binary units is ``Bernoulli(logits).to_event(1)``
(event shape ``(K,)``); a code of G groups of C classes is ``OneHotCategorical(logits)`` over the
last dim, ``.to_event(1)`` over the groups (event shape ``(G, C)``). Both are products over
their cells, so their joint support has 2^K or C^G states.

**Enumeration.** Pyro enumerates a site through its distribution's ``enumerate_support``;
``torch.distributions.Independent`` refuses to enumerate the cartesian product of reinterpreted
dims, so ``TraceEnum_ELBO`` cannot sum out a ``.to_event`` code as it stands.
:class:`EnumerableIndependent` is ``Independent`` with that product enumerated (every state of
the code, in lexicographic order), which makes a whole code one enumerable site: with
``config_enumerate`` on the guide, ``TraceEnum_ELBO`` computes E_q[log p(x, z) − log q(z|x)]
exactly, as a sum over all states weighted by q (refused beyond
:data:`MAX_ENUMERATED_STATES`).

**Relaxations** (Maddison, Mnih & Teh 2017; Jang, Gu & Poole 2017). The Concrete / Gumbel-softmax
distribution with temperature τ > 0 is a continuous, reparameterizable stand-in for the discrete
code: z̃ = σ((logits + L)/τ) with L ~ Logistic(0, 1) for a unit, softmax((logits + g)/τ) with
Gumbel noise g for a group; as τ → 0 it becomes the discrete distribution. The
*straight-through* variants (Bengio et al. 2013) return the hard (rounded / arg-max) code and
backpropagate through the soft one. The relaxed objective is biased for the discrete ELBO
(the decoder sees z̃, not z) with a bias that vanishes as τ → 0 and a variance that grows.

The classes below are Pyro's relaxations with one addition: the KL divergence between two of
them is **defined as the KL of the discrete distributions they relax** (closed form, summed over
cells). With ``TraceMeanField_ELBO`` the relaxed objective is then
E_q̃[log p(x | z̃)] − KL(q(z|x) ‖ p(z)), the objective of Jang et al. (2017); with ``Trace_ELBO``
it is the Concrete relaxation of Maddison et al. (2017), with relaxed log-densities for both
prior and posterior at the same temperature. :class:`RelaxedMessenger` swaps them in at a site of
the model and the guide (the "relax reparameterization" requested in Pyro issue #2689).
"""

from __future__ import annotations

import math
from typing import Any

import pyro.distributions as dist
import torch
from pyro.poutine.messenger import Messenger
from torch.distributions import kl_divergence, register_kl
from torch.distributions.utils import clamp_probs

from pyro_vae.errors import ConfigError
from pyro_vae.sites import LATENT_SITE

_EMPTY = torch.Size()

#: The most states :meth:`EnumerableIndependent.enumerate_support` builds (2^20).
MAX_ENUMERATED_STATES = 2 ** 20


class EnumerableIndependent(dist.Independent):
    """``Independent`` whose ``enumerate_support`` lists every joint state of its event (the
    cartesian product of the reinterpreted cells), for Bernoulli and one-hot categorical bases.

    ``enumerate_support()`` has shape ``(S, *batch_shape, *event_shape)`` with S = s^cells
    (s = 2 for a Bernoulli unit, C for a group of C classes); ``expand=False`` gives
    ``(S, 1, ..., 1, *event_shape)``, which is what Pyro's parallel enumeration asks for.
    """

    @property
    def has_enumerate_support(self) -> bool:
        return isinstance(self.base_dist, (dist.Bernoulli, dist.OneHotCategorical))

    @property
    def num_states(self) -> int:
        """S, the number of joint states of one event."""
        n = self.reinterpreted_batch_ndims
        cells = math.prod(self.base_dist.batch_shape[len(self.base_dist.batch_shape) - n:])
        per_cell = 2 if isinstance(self.base_dist, dist.Bernoulli) \
            else self.base_dist.event_shape[-1]
        return per_cell ** cells

    def enumerate_support(self, expand: bool = True) -> torch.Tensor:
        if not self.has_enumerate_support:
            raise NotImplementedError(f"cannot enumerate {type(self.base_dist).__name__}")
        states = self.num_states
        if states > MAX_ENUMERATED_STATES:
            raise ConfigError(
                f"the code has {states:,} joint states, more than {MAX_ENUMERATED_STATES:,} "
                "can be enumerated; use fewer latent units (or groups), or a sampling estimator")
        base = self.base_dist
        n = self.reinterpreted_batch_ndims
        cell_shape = base.batch_shape[len(base.batch_shape) - n:]
        cells = math.prod(cell_shape)
        support = base.enumerate_support(expand=False)  # (s, 1, ..., 1, *base_event)
        support = support.reshape(support.shape[0], *base.event_shape)
        s = support.shape[0]
        grids = torch.meshgrid(*[torch.arange(s, device=support.device)] * cells, indexing="ij")
        index = torch.stack(grids, -1).reshape(-1, cells)  # (S, cells), lexicographic
        values = support[index].reshape(states, *self.event_shape)
        batch = self.batch_shape
        values = values.reshape(states, *(1,) * len(batch), *self.event_shape)
        return values.expand(states, *batch, *self.event_shape) if expand else values


def bernoulli_code(logits: torch.Tensor) -> EnumerableIndependent:
    """K binary units: ``Bernoulli(logits)`` with the last dim as the event, enumerable."""
    return EnumerableIndependent(dist.Bernoulli(logits=logits), 1)


def categorical_code(logits: torch.Tensor) -> EnumerableIndependent:
    """G groups of C classes from logits ``(..., G, C)``: one-hot, event shape ``(G, C)``."""
    return EnumerableIndependent(dist.OneHotCategorical(logits=logits), 1)


# --------------------------------------------------------------------------- relaxations
class RelaxedBernoulliCode(dist.RelaxedBernoulli):
    """The Concrete relaxation of ``Bernoulli(logits)`` at ``temperature`` (batch of units).
    Its KL to another :class:`RelaxedBernoulliCode` is that of the Bernoulli units it relaxes."""

    def discrete(self) -> dist.Bernoulli:
        return dist.Bernoulli(logits=self.logits)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        # a straight-through value carries its relaxed sample, where the density is evaluated
        return super().log_prob(clamp_probs(getattr(value, "_relaxed", value)))


class StraightThroughBernoulliCode(RelaxedBernoulliCode):
    """:class:`RelaxedBernoulliCode` whose samples are rounded to {0, 1} in the forward pass
    and differentiated through the relaxed sample (straight-through Gumbel / Concrete)."""

    def rsample(self, sample_shape: torch.Size = _EMPTY) -> torch.Tensor:
        soft = super().rsample(sample_shape)
        hard = (soft > 0.5).to(soft.dtype)
        value = hard + soft - soft.detach()
        value._relaxed = soft  # log_prob is evaluated at the relaxed value
        return value


class RelaxedOneHotCode(dist.RelaxedOneHotCategorical):
    """The Gumbel-softmax relaxation of ``OneHotCategorical(logits)`` at ``temperature``. Its KL
    to another :class:`RelaxedOneHotCode` is that of the categoricals it relaxes."""

    def discrete(self) -> dist.OneHotCategorical:
        return dist.OneHotCategorical(logits=self.logits)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        value = clamp_probs(getattr(value, "_relaxed", value))
        return super().log_prob(value / value.sum(-1, keepdim=True))


class StraightThroughOneHotCode(RelaxedOneHotCode):
    """:class:`RelaxedOneHotCode` whose samples are the arg-max one-hot vectors in the forward
    pass, differentiated through the relaxed sample."""

    def rsample(self, sample_shape: torch.Size = _EMPTY) -> torch.Tensor:
        soft = super().rsample(sample_shape)
        hard = torch.nn.functional.one_hot(soft.argmax(-1), soft.shape[-1]).to(soft.dtype)
        value = hard + soft - soft.detach()
        value._relaxed = soft
        return value


@register_kl(RelaxedBernoulliCode, RelaxedBernoulliCode)
def _kl_relaxed_bernoulli(p: RelaxedBernoulliCode, q: RelaxedBernoulliCode) -> torch.Tensor:
    return kl_divergence(p.discrete(), q.discrete())


@register_kl(RelaxedOneHotCode, RelaxedOneHotCode)
def _kl_relaxed_onehot(p: RelaxedOneHotCode, q: RelaxedOneHotCode) -> torch.Tensor:
    # torch has no KL for OneHotCategorical; it is the Categorical KL of the same logits
    return kl_divergence(dist.Categorical(logits=p.logits), dist.Categorical(logits=q.logits))


def relax(fn: dist.TorchDistribution, temperature: torch.Tensor,
          straight_through: bool = False) -> dist.TorchDistribution:
    """The relaxation of a Bernoulli or one-hot categorical code ``fn`` (keeping its
    ``to_event`` dims)."""
    base, ndims = fn, 0
    while isinstance(base, dist.Independent):
        ndims += base.reinterpreted_batch_ndims
        base = base.base_dist
    if isinstance(base, dist.Bernoulli):
        cls = StraightThroughBernoulliCode if straight_through else RelaxedBernoulliCode
    elif isinstance(base, dist.OneHotCategorical):
        cls = StraightThroughOneHotCode if straight_through else RelaxedOneHotCode
    else:
        raise ConfigError(f"a relaxed estimator needs a Bernoulli or one-hot categorical code at "
                          f"the latent site, got {type(base).__name__}; use it with --latent "
                          "bernoulli or categorical")
    new = cls(temperature, logits=base.logits)
    return new.to_event(ndims) if ndims else new


class RelaxedMessenger(Messenger):
    """Replace the discrete code at ``site`` by its Concrete relaxation at ``temperature`` —
    in the model (the prior) and in the guide (the posterior) alike: wrap both.

    :param temperature: τ > 0; change :attr:`temperature` between steps for a schedule.
    :param straight_through: hard codes in the forward pass, relaxed gradients.
    """

    def __init__(self, temperature: float, straight_through: bool = False,
                 site: str = LATENT_SITE) -> None:
        super().__init__()
        self.temperature = check_temperature(temperature)
        self.straight_through = straight_through
        self.site = site

    def _process_message(self, msg: Any) -> None:
        if msg["type"] != "sample" or msg["name"] != self.site or msg["is_observed"]:
            return
        fn = msg["fn"]
        tau = torch.tensor(self.temperature, dtype=_leaf(fn).logits.dtype,
                           device=_leaf(fn).logits.device)
        msg["fn"] = relax(fn, tau, self.straight_through)


def _leaf(fn: dist.TorchDistribution) -> dist.TorchDistribution:
    while isinstance(fn, dist.Independent):
        fn = fn.base_dist
    return fn


def check_temperature(temperature: Any) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not 0 < temperature < math.inf:
        raise ConfigError(f"the relaxation temperature must be a finite number > 0, got "
                          f"{temperature!r}; e.g. 0.5")
    return float(temperature)
