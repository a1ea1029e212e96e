"""Prior and posterior predictive draws of a VAE through Pyro's :class:`~pyro.infer.Predictive`.

Each function is the one line a Pyro user would write, named:

* prior predictive of B points, S times: ``Predictive(vae.model, num_samples=S)(None,
  num_points=B)`` — sites ``"z"`` (S, B, L) and ``"x"`` ``(S, B, *event_shape)``;
* posterior predictive (reconstructions) of a batch x:
  ``Predictive(poutine.uncondition(vae.model), guide=vae.guide, num_samples=S)(x)`` — z drawn
  from q(z | x), then x' ~ p(x | z). ``poutine.uncondition`` makes the observed site ``"x"``
  sampled instead of returning the data (plain ``Predictive(vae.model, guide=vae.guide)(x)``
  returns the observed x unchanged, as Pyro defines it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pyro import poutine
from pyro.infer import Predictive

from pyro_vae.errors import check_count
from pyro_vae.sites import LATENT_SITE, OBS_SITE

#: "y" exists in models that draw their own class (M2); absent sites are not returned
_SITES = (LATENT_SITE, OBS_SITE, "y")


def prior_predictive(vae: Any, num_points: int = 1, num_samples: int = 1,
                     y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """``num_samples`` draws of ``num_points`` points (or one per label of ``y``) from the
    model: ``{"z": (S, B, L), "x": (S, B, *event_shape)}``."""
    check_count("num_samples", num_samples)
    check_count("num_points", num_points)
    predictive = Predictive(vae.model, num_samples=num_samples, parallel=True,
                            return_sites=_SITES)
    with torch.no_grad():
        return predictive(None, y, num_points=None if y is not None else num_points)


def posterior_predictive(vae: Any, x: torch.Tensor, y: torch.Tensor | None = None,
                         num_samples: int = 1, guide: Callable[..., Any] | None = None
                         ) -> dict[str, torch.Tensor]:
    """Reconstructions: z ~ q(z | x) (``guide``, default ``vae.guide``), then x' ~ p(x | z);
    ``{"z": (S, B, L), "x": (S, B, *event_shape)}``."""
    check_count("num_samples", num_samples)
    predictive = Predictive(poutine.uncondition(vae.model), guide=guide or vae.guide,
                            num_samples=num_samples, parallel=True, return_sites=_SITES)
    with torch.no_grad():
        return predictive(x, y)
