"""Prior and posterior predictive draws of any model through Pyro's
:class:`~pyro.infer.Predictive`, returning *every* sample site (all latent sites of a hierarchy,
and the observations).

Each function is the one line a Pyro user would write, named:

* prior predictive, S times: ``Predictive(poutine.uncondition(model), num_samples=S)(*args)`` —
  every latent site drawn from the prior and every observed site from the likelihood. The
  library's models generate without data (``model(None, y, num_points=B)``); a user's
  ``model(x)`` takes a template batch ``x`` whose shape sets the number of points (its values
  are not used: ``poutine.uncondition`` samples the observed sites);
* posterior predictive (reconstructions) of a batch x:
  ``Predictive(poutine.uncondition(model), guide=guide, num_samples=S)(*args)`` — the latents
  drawn from q(z | x), then x' ~ p(x | z). ``poutine.uncondition`` makes the observed sites
  sampled instead of returning the data (plain ``Predictive(model, guide=guide)(x)`` returns the
  observed x unchanged, as Pyro defines it).

Sites are returned with a leading sample dim: ``(S, *site shape)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pyro import poutine
from pyro.infer import Predictive

from pyro_vae.errors import ConfigError, check_count
from pyro_vae.infer.problem import Signature, call_args, program_of


def _predictive(fn: Callable[..., Any], guide: Callable[..., Any] | None, num_samples: int,
                args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
    predictive = Predictive(poutine.uncondition(fn), guide=guide, num_samples=num_samples,
                            parallel=True)
    with torch.no_grad():
        return predictive(*args, **kwargs)


def prior_predictive(vae: Any, num_points: int = 1, num_samples: int = 1,
                     y: torch.Tensor | None = None, x: torch.Tensor | None = None
                     ) -> dict[str, torch.Tensor]:
    """``num_samples`` draws from the model's prior predictive: every sample site, each
    ``(S, *site shape)``.

    :param num_points: points per draw for the library's models, which generate without data
        (or one per label of ``y`` for a conditional one).
    :param x: a template batch for a model that needs its data argument to run (``model(x)``
        as in Pyro's examples): the draws have its number of points; its values are unused.
    """
    check_count("num_samples", num_samples)
    check_count("num_points", num_points)
    model = program_of(vae)[0]
    if x is not None:
        return _predictive(model, None, num_samples, call_args(model, None, x, y), {})
    if Signature.of(model).arity < 4:
        raise ConfigError("this model needs its data to run (model(x)); pass a template batch "
                          "x=... whose shape sets the points drawn")
    return _predictive(model, None, num_samples, (None, y),
                       {"num_points": None if y is not None else num_points})


def posterior_predictive(vae: Any, x: torch.Tensor, y: torch.Tensor | None = None,
                         num_samples: int = 1, guide: Callable[..., Any] | None = None
                         ) -> dict[str, torch.Tensor]:
    """Reconstructions: every latent site drawn from the guide (default ``vae.guide``) given
    x, then the observed sites from the model; every sample site, each ``(S, *site shape)``."""
    check_count("num_samples", num_samples)
    model, guide = program_of(vae, guide)
    return _predictive(model, guide, num_samples, call_args(model, guide, x, y), {})
